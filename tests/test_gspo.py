"""GSPO's pure functions against hand-computed values, GSPO-token against GSPO, the identity with grpo.py at
ρ = 1, the clip acting off the policy, and one learning test on the default run (its clip fires)."""

import copy
import json
import math

import pytest
import torch
from test_grpo import RecordingOptimizer

from algos.gspo import Args, aggregate_loss, clipped_surrogate, sequence_log_ratio, validate
from common.tracking import read_jsonl

MASK = torch.tensor([[1.0, 1.0, 0.0]])  # two real tokens and one of padding


def gspo_loss(logprobs, old, advantages, mask, token=False, low=3e-4, high=4e-4, mode="seq-mean-token-mean"):
    """The file's per-token loss, aggregated as update_policy does for one mini-batch."""
    log_ratio = sequence_log_ratio(logprobs, old, mask, token)
    per_token, clipped = clipped_surrogate(log_ratio, torch.zeros_like(log_ratio), advantages, low, high)
    return aggregate_loss(per_token, mask, mode, len(mask), int(mask.sum()), mask.shape[1]), clipped


def test_sequence_log_ratio_is_the_mean_over_real_tokens():
    # log ρ = [0.3, 0.1] and 7.0 on padding: log s = (0.3 + 0.1) / 2 = 0.2 on every token; a 1-token row: its own
    logprobs = torch.tensor([[0.3, 0.1, 7.0], [-1.0, 4.0, 4.0]])
    old = torch.tensor([[0.0, 0.0, 0.0], [-0.5, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    expected = torch.tensor([[0.2, 0.2, 0.2], [-0.5, -0.5, -0.5]])
    assert torch.allclose(sequence_log_ratio(logprobs, old, mask), expected)
    assert torch.allclose(sequence_log_ratio(logprobs, old, mask, token=True), expected)


def test_gradient_of_the_sequence_ratio_is_spread_over_the_tokens():
    """∂ log s / ∂ log π_t = 1/|o| for each real token (0 on padding); GSPO-token's ∂/∂ log π_t of its own
    token's entry is 1 and 0 for the others (sg[log s_i])."""
    logprobs = torch.tensor([[0.3, 0.1, 7.0]], requires_grad=True)
    sequence_log_ratio(logprobs, torch.zeros(1, 3), MASK)[0, 0].backward()
    assert logprobs.grad.tolist() == [[0.5, 0.5, 0.0]]
    logprobs.grad = None
    sequence_log_ratio(logprobs, torch.zeros(1, 3), MASK, token=True)[0, 0].backward()
    assert logprobs.grad.tolist() == [[1.0, 0.0, 0.0]]


def test_the_sequence_clip_hand_computed():
    """log ρ = [0.3, 0.1]: s = e^0.2 = 1.2214. With A = +1 it is above 1 + 4e-4: the clipped branch, loss
    −1.0004, no gradient. With A = −1 the unclipped branch is the larger loss: s = 1.2214, gradient s/2 per
    token. A ratio inside the band, log ρ = [2e-4, 0] (s = e^1e-4), with A = 2: loss −2·s, gradient −s per token."""
    logprobs = torch.tensor([[0.3, 0.1, 0.0]], requires_grad=True)
    loss, clipped = gspo_loss(logprobs, torch.zeros(1, 3), torch.tensor([1.0]), MASK)
    loss.backward()
    assert loss.item() == pytest.approx(-1.0004) and clipped[0, :2].all() and logprobs.grad.abs().sum() == 0
    logprobs.grad = None
    loss, clipped = gspo_loss(logprobs, torch.zeros(1, 3), torch.tensor([-1.0]), MASK)
    loss.backward()
    s = math.exp(0.2)
    assert loss.item() == pytest.approx(s, rel=1e-6) and not clipped.any()
    assert logprobs.grad.tolist()[0][:2] == pytest.approx([s / 2, s / 2], rel=1e-6)
    inside = torch.tensor([[2e-4, 0.0, 0.0]], requires_grad=True)
    loss, clipped = gspo_loss(inside, torch.zeros(1, 3), torch.tensor([2.0]), MASK)
    loss.backward()
    s = math.exp(1e-4)
    assert not clipped.any() and loss.item() == pytest.approx(-2 * s, rel=1e-6)
    assert inside.grad.tolist()[0] == pytest.approx([-s, -s, 0.0], rel=1e-6)
    # the lower bound is 1 − 3e-4: s = e^-3.5e-4 < 0.9997 with A = −1 is clipped, e^-2.5e-4 is not
    for log_s, expected in ((-3.5e-4, True), (-2.5e-4, False)):
        _, clipped = gspo_loss(
            torch.tensor([[log_s, log_s, 0.0]]), torch.zeros(1, 3), torch.tensor([-1.0]), MASK
        )
        assert bool(clipped[0, 0]) is expected


def random_batch(seed: int, B: int = 6, C: int = 7):
    generator = torch.Generator().manual_seed(seed)
    old = -3 * torch.rand(B, C, generator=generator)
    new = old + 0.01 * torch.randn(B, C, generator=generator)  # some inside the band, most outside
    lengths = torch.randint(1, C + 1, (B,), generator=generator)
    mask = (torch.arange(C)[None, :] < lengths[:, None]).float()
    return new, old, torch.randn(B, generator=generator), mask


@pytest.mark.parametrize(
    "mode", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
)
def test_gspo_token_equals_gspo_with_per_sequence_advantages(mode):
    """Loss and gradient of GSPO-token equal GSPO's in every aggregation when each sequence has one advantage."""
    for seed in range(5):
        new, old, advantages, mask = random_batch(seed)
        grads, losses, clips = [], [], []
        for token in (False, True):
            logprobs = new.clone().requires_grad_()
            loss, clipped = gspo_loss(logprobs, old, advantages, mask, token, mode=mode)
            loss.backward()
            grads.append(logprobs.grad), losses.append(loss.item()), clips.append(clipped * mask)
        assert 0 < clips[0].sum() < mask.sum() and torch.equal(clips[0], clips[1])
        assert losses[0] == pytest.approx(losses[1], rel=1e-6)
        assert torch.allclose(grads[0], grads[1], atol=1e-7)


def test_gspo_token_differs_from_gspo_with_per_token_advantages():
    """Per-token advantages [2, 0] on log ρ = [0.1, 0.3] (s = e^0.2, no clip): GSPO-token's gradient is −A_t·s/|o|
    on each token = [−s, 0]; GSPO's ratio s carries the mean of the advantages to every token: −mean(A)·s/|o| =
    [−s/2, −s/2]."""
    advantages = torch.tensor([[2.0, 0.0]])
    s = math.exp(0.2)
    for token, expected in ((True, [-s, 0.0]), (False, [-s / 2, -s / 2])):
        logprobs = torch.tensor([[0.1, 0.3]], requires_grad=True)
        ratio = torch.exp(sequence_log_ratio(logprobs, torch.zeros(1, 2), torch.ones(1, 2), token))
        (-(ratio * advantages).sum(-1) / 2).sum().backward()
        assert logprobs.grad.tolist()[0] == pytest.approx(expected, rel=1e-6)


def test_bad_clip_bounds_fail_in_validate():
    for fields in ({"seq_clip_low": 1.0}, {"seq_clip_low": -1e-4}, {"seq_clip_high": -1e-4}):
        with pytest.raises(SystemExit, match="--seq-clip-low must be in"):
            validate(Args(**fields))
    validate(Args())


def test_defaults_are_the_papers_and_off_the_policy():
    args = Args()
    assert (args.seq_clip_low, args.seq_clip_high, args.num_mini_batches) == (3e-4, 4e-4, 4)
    assert args.loss_agg == "seq-mean-token-mean" and args.scale_rewards == "group" and not args.gspo_token


@pytest.fixture(scope="module")
def batch_and_model(random_model_dir):
    """A rollout of the random model (12 rows) and group z-score advantages."""
    from algos.grpo import grpo_advantages
    from common.model import load_policy
    from common.rollout import HFSampler

    model, tokenizer = load_policy(str(random_model_dir))
    torch.manual_seed(0)
    rollout = HFSampler(model, tokenizer).generate(["1+1=", "2+3=", "7-4="], n=4, max_new_tokens=6)
    rewards = torch.tensor([[1.0, 0, 0, 1], [0, 0, 0, 1], [1, 1, 0, 0]])
    return model, {"rollout": rollout, "advantages": grpo_advantages(rewards).view(-1)}


@pytest.mark.parametrize("token", [False, True])
def test_at_ratio_one_the_update_is_grpos_with_sequence_mean(batch_and_model, token):
    """The identity: one pass, one mini-batch (ρ = 1, s_i = 1, never clipped) gives grpo.py's gradient with
    --loss-agg seq-mean-token-mean, both update_policy functions called on the same batch."""
    import algos.grpo as grpo
    import algos.gspo as gspo

    model, batch = batch_and_model
    recorded = {}
    for name, module, args in (
        ("grpo", grpo, grpo.Args(loss_agg="seq-mean-token-mean", max_grad_norm=1e9)),
        ("gspo", gspo, gspo.Args(num_mini_batches=1, gspo_token=token, max_grad_norm=1e9)),
    ):
        optimizer = RecordingOptimizer(model)
        stats = module.update_policy(model, optimizer, batch, args)
        recorded[name] = optimizer.grads
        assert len(optimizer.grads) == 1 and stats["clip_frac"] == 0.0
    assert recorded["gspo"][0].abs().sum() > 0
    assert torch.allclose(recorded["gspo"][0], recorded["grpo"][0], rtol=1e-5, atol=1e-8)


def test_off_the_policy_the_update_leaves_grpos(batch_and_model):
    """The default's four mini-batches (a real AdamW moving the policy): the first step is GRPO's, later ones
    are weighted by s_i and clipped, so some steps' gradients differ from GRPO's on the same schedule."""
    import algos.grpo as grpo
    import algos.gspo as gspo

    model, batch = batch_and_model
    grads = {}
    for name, module, args in (
        ("grpo", grpo, grpo.Args(num_mini_batches=4, max_grad_norm=1e9, learning_rate=1e-2)),
        ("gspo", gspo, gspo.Args(max_grad_norm=1e9, learning_rate=1e-2)),
    ):
        copied = copy.deepcopy(model)
        adamw = torch.optim.AdamW(copied.parameters(), lr=args.learning_rate)
        recorder = RecordingOptimizer(copied)
        recorder.step = lambda r=recorder, a=adamw: (RecordingOptimizer.step(r), a.step())
        stats = module.update_policy(copied, recorder, batch, args)
        grads[name] = recorder.grads
    assert len(grads["gspo"]) == 4 and stats["clip_frac"] > 0
    assert torch.allclose(grads["gspo"][0], grads["grpo"][0], rtol=1e-5, atol=1e-8)
    assert not torch.allclose(grads["gspo"][3], grads["grpo"][3], rtol=1e-3, atol=1e-6)


@pytest.mark.slow
def test_gspo_learns_on_the_tiny_world_and_its_clip_fires(tiny_world_dir, tmp_path):
    """The defaults (4 mini-batches, ε 3e-4/4e-4) on a short budget, 15 steps of 8 prompts x 8 samples, raise
    held-out pass@1 over 60 problems x 4 samples by at least 0.05, and the sequence clip binds on a share of
    the tokens at every step: the mechanism fires in the default run. Measured (``./run.sh gspo --num-steps 15
    --prompts-per-step 8 --group-size 8 --max-new-tokens 64 --eval-problems 60 --eval-n 4 --eval-every 0
    --seed S``): seed 1 0.338 -> 0.396 (+0.058), seed 2 0.358 -> 0.500 (+0.142), seed 3 0.292 -> 0.446 (+0.154);
    clip_frac 0.19-0.55 per step; 21-25 CPU seconds each (one thread, evaluations and start-up included)."""
    from algos.gspo import main

    out = main(
        Args(num_steps=15, prompts_per_step=8, group_size=8, max_new_tokens=64, eval_problems=60, eval_n=4,
             eval_every=0, save_every=1000, output_dir=str(tmp_path), run_name="learn", seed=3)
    )  # fmt: skip
    rows = [r for r in read_jsonl(tmp_path / "learn" / "metrics.jsonl") if "clip_frac" in r]
    assert len(rows) == 15 and min(r["clip_frac"] for r in rows) > 0.05, [r["clip_frac"] for r in rows]
    gain = out["final"]["pass@1"] - out["base"]["pass@1"]
    print(json.dumps({"base": out["base"]["pass@1"], "final": out["final"]["pass@1"]}))
    assert gain >= 0.05, f"held-out pass@1 {out['base']['pass@1']:.3f} -> {out['final']['pass@1']:.3f}"

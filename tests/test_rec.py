"""REC (algos/rec.py): hand-computed truth tables of its three masks with and without the importance weight,
the identities with grpo.py (REINFORCE on the policy; GRPO's gradient for OneSide-IS off it), the mask firing
in the default run, exact resume with a stale sampler, and one learning test."""

import copy
import json
import math

import pytest
import torch
from test_faults import StopAfter
from test_grpo import RecordingOptimizer

import common.run
from algos import grpo, rec
from algos.rec import Args, rec_loss, validate
from common.tracking import read_jsonl

RATIOS = [0.5, 1.0, 1.5]  # ρ = π_θ / π_sampler; with ε_low = ε_high = 0.2 the trust region is [0.8, 1.2]
# (clip_mode, A) -> which of the three ratios the mask keeps, by hand from the definitions
KEEP = {
    ("one-side", 2.0): [True, True, False],  # A > 0: only ρ > 1.2 is dropped
    ("one-side", -1.0): [False, True, True],  # A < 0: only ρ < 0.8 is dropped
    ("two-side", 2.0): [False, True, False],
    ("two-side", -1.0): [False, True, False],
    ("none", 2.0): [True, True, True],
    ("none", -1.0): [True, True, True],
}


def _token(ratio, advantage, clip_mode, importance_weight, behavior_prob=0.2):
    """Loss, d loss / d log π and the dropped flag of one token with π_sampler = ``behavior_prob``."""
    logp = torch.tensor([[math.log(ratio * behavior_prob)]], requires_grad=True)
    behavior = torch.tensor([[math.log(behavior_prob)]])
    loss, dropped = rec_loss(
        logp, behavior, torch.tensor([advantage]), 0.2, 0.2, clip_mode, importance_weight
    )
    loss.sum().backward()
    return loss.item(), logp.grad.item(), bool(dropped.item())


@pytest.mark.parametrize("importance_weight", [False, True], ids=["NoIS", "IS"])
@pytest.mark.parametrize("clip_mode, advantage", list(KEEP), ids=[f"{m}-A{a:+g}" for m, a in KEEP])
def test_truth_table(clip_mode, advantage, importance_weight):
    """Every (mask, sign of A, ratio, weight): loss = −M·w·A·log π and gradient −M·w·A, w = 1 or ρ."""
    for ratio, keep in zip(RATIOS, KEEP[clip_mode, advantage]):
        loss, grad, dropped = _token(ratio, advantage, clip_mode, importance_weight)
        weight = ratio if importance_weight else 1.0
        want_grad = -advantage * weight if keep else 0.0
        want_loss = -advantage * weight * math.log(ratio * 0.2) if keep else 0.0
        assert dropped == (not keep), (ratio, clip_mode, advantage)
        assert grad == pytest.approx(want_grad, abs=1e-6), (ratio, grad, want_grad)
        assert loss == pytest.approx(want_loss, rel=1e-5, abs=1e-6), (ratio, loss, want_loss)


def test_truth_table_worked_numbers():
    """A few cells written out: OneSide-NoIS, A = 2, ρ = 0.5, π_sampler = 0.2: kept, loss −2·log 0.1 = 4.60517,
    gradient −2; OneSide-IS, A = −1, ρ = 1.5: kept, gradient +1.5; TwoSide-IS, A = −1, ρ = 0.5: dropped."""
    assert _token(0.5, 2.0, "one-side", False) == pytest.approx((4.605170, -2.0, False), rel=1e-5)
    assert _token(1.5, -1.0, "one-side", True)[1:] == pytest.approx((1.5, False))
    assert _token(0.5, -1.0, "two-side", True) == (0.0, 0.0, True)


def test_the_ratio_is_detached_and_to_the_sampler():
    """The gradient never flows through ρ: with A = 1 and ρ = 1.1 (kept) the gradient of −w·A·log π is −1.1
    with the weight and −1 without; the ratio uses the sampler's log-probs passed in (not π_old)."""
    _, grad_is, _ = _token(1.1, 1.0, "one-side", True)
    _, grad_nois, _ = _token(1.1, 1.0, "one-side", False)
    assert grad_is == pytest.approx(-1.1) and grad_nois == pytest.approx(-1.0)


def test_validate():
    with pytest.raises(SystemExit, match="--sync-interval must be >= 1"):
        validate(Args(sync_interval=0))
    with pytest.raises(SystemExit, match="need --rollout hf"):
        validate(Args(rollout="vllm"))  # the default sync interval 4 is the HF copy's
    validate(Args(rollout="vllm", sync_interval=1))
    with pytest.raises(SystemExit, match="--clip-low must be in"):
        validate(Args(clip_low=1.5))
    with pytest.raises(SystemExit, match="--group-size must be >= 2"):
        validate(Args(group_size=1))


# ---------------------------------------------------------------------------------------------------
# The update: identities with grpo.py
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch_and_model(random_model_dir):
    """A real rollout of the random model on the policy (12 rows, 3 prompts x 4) and its rewards."""
    from common.model import load_policy
    from common.rollout import HFSampler

    model, tok = load_policy(str(random_model_dir))
    torch.manual_seed(0)
    rollout = HFSampler(model, tok).generate(["1+1=", "2+3=", "7-4="], n=4, max_new_tokens=6)
    rewards = torch.tensor([[1.0, 0, 0, 1], [0, 0, 0, 1], [1, 1, 0, 0]])
    return model, rollout, rewards


def test_on_the_policy_onesided_nois_is_reinforce_with_the_group_mean(batch_and_model):
    """ρ = 1 (a rollout of the current weights, one optimizer step): the default REC gradient is grpo.py's with
    --scale-rewards none --loss-agg token-mean, i.e. REINFORCE −(r − mean r)·∇log π over the batch's tokens;
    grpo.py's default (std-scaled, seq-mean-token-mean) is another one."""
    model, rollout, rewards = batch_and_model
    grads = {}
    for name, module, scale, fields in [
        ("rec", rec, "none", {}),
        ("reinforce", grpo, "none", {"scale_rewards": "none", "loss_agg": "token-mean"}),
        ("grpo", grpo, "group", {}),
    ]:
        optimizer = RecordingOptimizer(model)
        batch = {"rollout": rollout, "advantages": grpo.grpo_advantages(rewards, scale).view(-1)}
        args = module.Args(max_grad_norm=1e9, micro_batch_size=5, **fields)
        stats = module.update_policy(model, optimizer, batch, args)
        assert len(optimizer.grads) == 1 and stats["clip_frac"] == 0.0
        grads[name] = optimizer.grads[0]
    assert grads["rec"].abs().sum() > 0
    assert torch.allclose(grads["rec"], grads["reinforce"], rtol=1e-4, atol=1e-7)
    assert not torch.allclose(grads["rec"], grads["grpo"], rtol=1e-2, atol=1e-5)


def test_off_the_policy_onesided_is_moves_the_weights_as_grpo(batch_and_model):
    """OneSide-IS with the group std (the variant rec-grpo): −M·sg(ρ)·A·∇log π is the gradient of PPO's clipped
    surrogate, so 2 passes x 3 mini-batches with SGD move the weights exactly as grpo.py at the same schedule
    (here the sampler is the trainer, so π_sampler = π_old up to 1e-7). NoIS moves them otherwise."""
    model, rollout, rewards = batch_and_model
    schedule = dict(updates_per_batch=2, num_mini_batches=3, max_grad_norm=1e9, loss_agg="token-mean")
    schedule.update(clip_low=0.01, clip_high=0.01, scale_rewards="group")
    batch = {"rollout": rollout, "advantages": grpo.grpo_advantages(rewards, "group").view(-1)}
    params, stats = {}, {}
    for name, module, fields in [
        ("grpo", grpo, {}),
        ("rec-is", rec, {"importance_weight": True}),
        ("rec", rec, {}),
    ]:
        moved = copy.deepcopy(model)
        optimizer = torch.optim.SGD(moved.parameters(), lr=20.0)  # large steps: ratios well outside ±1%
        stats[name] = module.update_policy(moved, optimizer, batch, module.Args(**schedule, **fields))
        params[name] = torch.cat([p.detach().flatten() for p in moved.parameters()])
    assert stats["grpo"]["clip_frac"] > 0  # the clip binds: the identity is tested where it matters
    assert stats["rec-is"]["clip_frac"] == pytest.approx(stats["grpo"]["clip_frac"])
    assert torch.allclose(params["rec-is"], params["grpo"], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(params["rec"], params["grpo"], rtol=1e-3, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------


def test_the_mask_fires_in_the_default_run(tiny_world_dir, tmp_path):
    """The default sampler syncs every 4 steps: steps 1 and 5 sample from the current weights (no token
    masked), steps 2-4 from weights 1-3 steps old, and the ratios to them leave [0.8, 1.2]. Measured with 8
    prompts per step: clip_frac 0 at steps 1-2, then 0.0018 and 0.0074 (16 prompts: 0.0041, 0.0155)."""
    args = Args(
        num_steps=4, prompts_per_step=8, eval_problems=2, eval_n=1, save_every=1000,
        output_dir=str(tmp_path), run_name="m",
    )  # fmt: skip
    assert args.sync_interval == 4 and args.clip_mode == "one-side" and not args.importance_weight
    rec.main(args)
    steps = [r for r in read_jsonl(tmp_path / "m" / "metrics.jsonl") if r["step"] > 0]
    masked = [r["clip_frac"] for r in steps]
    assert len(steps) == 4 and masked[0] == 0 and max(masked[2:]) > 0, masked
    assert steps[0]["logprob_mismatch"] < 1e-5 < steps[2]["logprob_mismatch"]  # the lag is the gap


def test_resume_with_a_stale_sampler_is_exact(random_model_dir, tmp_path, monkeypatch):
    """The registry's resume sweep runs rec.py on the policy (smoke_flags); here with --sync-interval 3: stopped
    after step 2 of 4 and resumed, the copy (synced at step 0, not yet at 3) and its step count come back from
    the checkpoint, and every logged number equals the uninterrupted run's. The random model earns no reward
    (no gradient), so AdamW's weight decay moves the weights."""
    from smoke import smoke_args

    def args(name, resume=False):
        return smoke_args(
            "rec", "--num-steps=4", "--sync-interval=3", "--weight-decay=1", "--learning-rate=0.05",
            model_name_or_path=str(random_model_dir),
            output_dir=str(tmp_path), run_name=name, resume=resume,
        )  # fmt: skip

    rec.main(args("straight"))
    monkeypatch.setattr(common.run, "StopRequest", StopAfter)
    with pytest.raises(SystemExit):
        rec.main(args("stopped"))
    monkeypatch.undo()
    rec.main(args("stopped", resume=True))
    got = read_jsonl(tmp_path / "stopped" / "metrics.jsonl")
    want = read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    assert [r["step"] for r in got] == [r["step"] for r in want] == [0, 1, 2, 3, 4]
    assert want[3]["logprob_mismatch"] > 1e-4  # step 3 samples from weights two steps old
    for g, w in zip(got, want):
        for key, value in w.items():
            if key not in ("step_time", "samples_per_s") and value is not None:
                assert g[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (g["step"], key)


@pytest.mark.slow
def test_rec_learns_on_the_tiny_world(tiny_world_dir, tmp_path):
    """20 steps of 8 prompts x 8 samples with the defaults (a sampler synced every 4 steps, seed 1) raise held-out
    pass@1 (60 problems x 4 samples); measured: 0.338 -> 0.404 (+0.067; the margin over 0.05 is thin). About 49
    CPU seconds on a loaded 2-core machine."""
    out = rec.main(
        Args(num_steps=20, prompts_per_step=8, group_size=8, max_new_tokens=64, eval_problems=60, eval_n=4,
             eval_every=0, save_every=1000, output_dir=str(tmp_path), run_name="learn", seed=1)
    )  # fmt: skip
    gain = out["final"]["pass@1"] - out["base"]["pass@1"]
    print(json.dumps({"base": out["base"]["pass@1"], "final": out["final"]["pass@1"]}))
    assert gain >= 0.05, f"held-out pass@1 {out['base']['pass@1']:.3f} -> {out['final']['pass@1']:.3f}"

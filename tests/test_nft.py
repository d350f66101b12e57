"""NFT (algos/nft.py) against hand-computed values and its gradient identities with Dr. GRPO and GRPO
(spec: more-methods.md section B4 (e)); its update against grpo.py's Dr. GRPO update (the same at one
optimizer step per batch, different at its default of several, where NFT's own terms act); plus short
end-to-end runs on the tiny world."""

import json
import math

import pytest
import torch

import algos.grpo
import algos.nft
import common.run
from algos.grpo import clipped_surrogate, grpo_advantages
from algos.nft import Args, aggregate_loss, correct_rates, floor_keep_grad, main, nft_loss, validate
from common.model import load_policy
from common.rollout_types import Rollout
from common.tracking import read_jsonl
from common.verify import VerifyResult

# ---------------------------------------------------------------------------------------------------
# Pure functions: hand-computed values
# ---------------------------------------------------------------------------------------------------


def test_correct_rates_clamp_and_filter():
    rewards = torch.tensor([[1.0, 0, 0, 0], [1, 1, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0]])
    rate, keep = correct_rates(rewards)
    assert torch.allclose(rate, torch.tensor([0.25, 0.75, 0.98, 0.02]))
    assert keep.tolist() == [True, True, False, False]
    rate, _ = correct_rates(torch.tensor([[1.0] + [0.0] * 63]))  # 1/64 < 0.02 is clamped up
    assert rate.item() == pytest.approx(0.02)


def test_floor_keeps_the_gradient_of_its_argument():
    x = torch.tensor([-3.0, 0.2, 1.0, 4.0], requires_grad=True)
    y = floor_keep_grad(x, 1.0)
    assert y.tolist() == [1.0, 1.0, 1.0, 4.0]
    (g,) = torch.autograd.grad((y * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum(), x)
    assert g.tolist() == [1.0, 2.0, 3.0, 4.0]


def test_off_policy_loss_values_by_hand():
    """R = 0.5 on a wrong token with r̂ = 0.6: argument (1 − 0.3)/0.4 = 1.75, loss −log 1.75 · 0.4 (normalize 1);
    normalize 2 weights by sqrt(0.4/0.6), normalize 0 by 1; a correct token with R = 0.5 gives +log 2 · w."""
    lp = torch.log(torch.tensor([[0.5], [0.5]]))
    correct, rate = torch.tensor([0.0, 1.0]), torch.tensor([0.6, 0.6])
    for normalize, w in [(0, 1.0), (1, 0.4), (2, math.sqrt(0.4 / 0.6))]:
        loss, floored = nft_loss(lp, torch.zeros(2, 1), correct, rate, normalize=normalize)
        assert loss[0, 0].item() == pytest.approx(-math.log(1.75) * w, rel=1e-6)
        assert loss[1, 0].item() == pytest.approx(math.log(2.0) * w, rel=1e-6)
        assert not floored.any()
    with pytest.raises(ValueError, match="normalize"):
        nft_loss(lp, torch.zeros(2, 1), correct, rate, normalize=3)


def test_huge_ratio_stays_finite_with_the_hand_computed_gradient():
    """R = 50, r̂ = 0.5: the argument (1 − 25)/0.5 = −48 (log would be NaN) is floored to 1 in value (loss 0),
    and its gradient is that of −(1 − r̂R)/(1 − r̂): d/dlog π = r̂R/(1 − r̂) = 50, × w = 1 − r̂ = 25."""
    lp = torch.tensor([[math.log(50.0)]], requires_grad=True)
    loss, floored = nft_loss(lp, torch.zeros(1, 1), torch.tensor([0.0]), torch.tensor([0.5]))
    assert loss.item() == 0.0 and floored.all()
    (g,) = torch.autograd.grad(loss.sum(), lp)
    assert torch.isfinite(g).all() and g.item() == pytest.approx(25.0, rel=1e-5)
    # the same token without the floor is NaN: the floor is what keeps it finite
    assert math.isnan(torch.log(torch.tensor(1 - 0.5 * 50) / 0.5).item())
    # beyond the ratio clamp (log-ratio 12 > 10) the value is finite and the gradient is 0
    lp = torch.tensor([[12.0], [12.0]], requires_grad=True)
    loss, _ = nft_loss(lp, torch.zeros(2, 1), torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5]))
    (g,) = torch.autograd.grad(loss.sum(), lp)
    assert torch.isfinite(loss).all() and loss[0, 0].item() == pytest.approx(-10 * 0.5)
    assert g.abs().max() == 0


# ---------------------------------------------------------------------------------------------------
# Gradient identities on a small model (autograd through shared parameters)
# ---------------------------------------------------------------------------------------------------

V, C = 8, 5  # vocabulary, completion length


class ToyPolicy(torch.nn.Module):
    """One embedding and one linear layer; the logits at position t depend only on token t − 1, so the
    model is causal by construction. Every row's log-probs share the same parameters."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = torch.nn.Embedding(V, 6)
        self.head = torch.nn.Linear(6, V)

    def completion_logprobs(self, ids: torch.Tensor) -> torch.Tensor:  # ids [B, 1 + C] -> [B, C]
        logits = self.head(torch.tanh(self.embed(ids[:, :-1])))  # [B, C, V]
        return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)


REWARDS = torch.tensor([[1.0, 0, 0, 0], [1, 1, 0, 1]])  # two groups of G = 4: r̂ = 0.25 and 0.75
IDS = torch.randint(0, V, (8, 1 + C), generator=torch.Generator().manual_seed(3))
MASK = torch.ones(8, C)
MASK[1, 3:] = 0
MASK[6, 1:] = 0  # different lengths


def grads(loss_fn) -> list[torch.Tensor]:
    model = ToyPolicy()
    loss_fn(model.completion_logprobs(IDS)).backward()
    return [p.grad.clone() for p in model.parameters()]


def nft_batch_loss(logprobs, normalize=1, neg_weight=1.0, log_ratio=0.0):
    rate, keep = correct_rates(REWARDS)
    assert keep.all()
    per_token, _ = nft_loss(
        logprobs, logprobs.detach() - log_ratio, REWARDS.view(-1), rate.repeat_interleave(4),
        neg_weight=neg_weight, normalize=normalize,
    )  # fmt: skip
    return aggregate_loss(per_token, MASK, "seq-mean-token-sum-norm", 8, int(MASK.sum()), C)


def pg_batch_loss(logprobs, advantages):
    per_token, _ = clipped_surrogate(logprobs, logprobs.detach(), advantages, 0.2, 0.2)
    return aggregate_loss(per_token, MASK, "seq-mean-token-sum-norm", 8, int(MASK.sum()), C)


def assert_same(a: list[torch.Tensor], b: list[torch.Tensor], scale: float = 1.0):
    assert all(torch.allclose(x, scale * y, atol=1e-7, rtol=1e-5) for x, y in zip(a, b))
    assert max(x.abs().max() for x in a) > 1e-3  # not 0 == 0


def test_on_policy_normalize_1_is_dr_grpo():
    """R = 1: NFT's gradient (normalize 1) equals Dr. GRPO's with A = r − r̂ (no std, constant normaliser)."""
    g_nft = grads(lambda lp: nft_batch_loss(lp, normalize=1))
    g_dr = grads(lambda lp: pg_batch_loss(lp, grpo_advantages(REWARDS, "none").view(-1)))
    assert_same(g_nft, g_dr)


def test_on_policy_normalize_2_is_grpo():
    """normalize 2 gives A = (r − r̂)/σ with the population σ = sqrt(r̂(1 − r̂)); grpo.py divides by the
    unbiased std, larger by sqrt(G/(G − 1)), so GRPO's gradient is NFT's / sqrt(4/3)."""
    g_nft = grads(lambda lp: nft_batch_loss(lp, normalize=2))
    g_grpo = grads(lambda lp: pg_batch_loss(lp, grpo_advantages(REWARDS, "group").view(-1)))
    assert_same(g_nft, g_grpo, scale=math.sqrt(4 / 3))
    population = (REWARDS - REWARDS.mean(1, keepdim=True)) / REWARDS.std(1, unbiased=False, keepdim=True)
    assert_same(g_nft, grads(lambda lp: pg_batch_loss(lp, population.view(-1))))


def test_on_policy_normalize_0_is_the_advantage_over_one_minus_rate():
    rate = REWARDS.mean(1, keepdim=True)
    adv = ((REWARDS - rate) / (1 - rate)).view(-1)  # A = 1 on positives, −r̂/(1 − r̂) on negatives
    assert_same(grads(lambda lp: nft_batch_loss(lp, normalize=0)), grads(lambda lp: pg_batch_loss(lp, adv)))


@pytest.mark.parametrize("log_ratio", [0.0, 0.3, -0.4])
def test_neg_weight_zero_zeroes_the_gradient_from_negative_tokens(log_ratio):
    """RFT: the wrong rows' log-probs get no gradient at all (on- and off-policy), and the model's
    gradient is that of the correct rows alone."""
    lp = ToyPolicy().completion_logprobs(IDS).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(nft_batch_loss(lp, neg_weight=0.0, log_ratio=log_ratio), lp)
    wrong = REWARDS.view(-1) == 0
    assert g[wrong].abs().max() == 0 and g[~wrong].abs().max() > 1e-3
    (g1,) = torch.autograd.grad(nft_batch_loss(lp, neg_weight=1.0, log_ratio=log_ratio), lp)
    assert g1[wrong].abs().max() > 1e-3  # NFT does train them
    assert torch.allclose(g[~wrong], g1[~wrong])  # and the positives' gradient is the same in both


# ---------------------------------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags,message",
    [
        ({"neg_weight": -1.0}, "--neg-weight must be >= 0"),
        ({"negative_floor": 0.0}, "--negative-floor must be > 0"),
        ({"ratio_clamp": 0.0}, "--ratio-clamp must be > 0"),
        ({"correct_rate_clamp": 0.5}, "--correct-rate-clamp must be in"),
        ({"group_size": 1}, "--group-size must be >= 2"),
    ],
)
def test_bad_flags_fail_with_one_line(flags, message):
    with pytest.raises(SystemExit) as err:
        validate(Args(**flags))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_importing_the_script_has_no_side_effects(capsys):
    import importlib

    importlib.reload(algos.nft)
    assert capsys.readouterr().out == ""


# ---------------------------------------------------------------------------------------------------
# End to end on the tiny world
# ---------------------------------------------------------------------------------------------------

SMALL = dict(
    prompts_per_step=4, group_size=4, eval_problems=8, eval_n=2, micro_batch_size=8, max_new_tokens=40
)


def test_nft_smoke_run_makes_several_optimizer_steps_and_its_own_terms_act(tiny_world_dir, tmp_path):
    """The defaults (16 mini-batches, the official count): every step with kept rows makes more than one
    optimizer step (one per kept row here, as 16 rows are sampled and fewer kept), and off the policy NFT's
    own terms act: R moves away from 1 (``ratio_dev`` > 0, where NFT's gradient is no longer Dr. GRPO's)
    and the negative loss's floor binds on some tokens. On the policy both are 0 (the update-level test
    below)."""
    out = main(
        Args(num_steps=3, eval_every=0, save_every=10, output_dir=str(tmp_path), run_name="smoke", **SMALL)
    )
    rows = [r for r in read_jsonl(tmp_path / "smoke" / "metrics.jsonl") if "reward_mean" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert Args().num_mini_batches == 16 and Args().updates_per_batch == 1
    for row in rows:
        for key in ["loss", "grad_norm", "floor_frac", "ratio_dev", "kept_frac"]:
            assert math.isfinite(row[key]), (row["step"], key)
        assert row["samples_generated"] == 16
        assert row["kept_frac"] == pytest.approx(1 - row["zero_std_frac"])  # the filter drops exactly those
        assert row["optimizer_steps"] == min(16, round(16 * row["kept_frac"]))
    trained = [r for r in rows if r["kept_frac"] > 0]
    assert trained and all(r["optimizer_steps"] > 1 for r in trained)
    assert all(r["ratio_dev"] > 1e-4 for r in trained) and any(r["floor_frac"] > 0 for r in trained)
    assert 0.0 <= out["final"]["pass@1"] <= 1.0


def scripted_batch(vocab_size: int, seed: int = 0) -> tuple[Rollout, torch.Tensor]:
    """A rollout of 2 prompts x 4 random completions of different lengths (no sampler needed) and its
    rewards [2, 4]: r̂ = 0.25 and 0.75, both groups mixed (NFT keeps every row)."""
    g = torch.Generator().manual_seed(seed)
    B, P, C = 8, 5, 6
    lengths = torch.tensor([6, 3, 5, 1, 4, 6, 2, 5])
    mask = (torch.arange(C)[None, :] < lengths[:, None]).float()  # [B, C]
    rollout = Rollout(
        torch.randint(4, vocab_size, (B, P), generator=g), torch.ones(B, P, dtype=torch.long),
        torch.randint(4, vocab_size, (B, C), generator=g), mask, torch.zeros(B, C), lengths == C, ["x"] * B,
        torch.arange(2).repeat_interleave(4),
    )  # fmt: skip
    return rollout, REWARDS


def updated_weights(module, model_dir, batch: dict, args) -> torch.Tensor:
    """All parameters (flattened) after ``module.update_policy`` on ``batch`` from the model in ``model_dir``,
    with plain SGD (lr 5, large enough for R to leave 1 on the later mini-batches)."""
    torch.manual_seed(0)
    model, _ = load_policy(str(model_dir))
    optimizer = torch.optim.SGD(model.parameters(), lr=5.0)
    stats = module.update_policy(model, optimizer, batch, args)
    return torch.cat([p.detach().flatten() for p in model.parameters()]), stats


@pytest.mark.parametrize("mini_batches", [1, 4])
def test_update_is_dr_grpo_at_one_step_and_differs_off_the_policy(random_model_dir, mini_batches):
    """nft.update_policy against grpo.update_policy with Dr. GRPO's settings (A = r − r̂, no std,
    seq-mean-token-sum-norm) and its clip opened wide (a plain policy gradient) on the same batch and the same
    mini-batches. One optimizer step per batch (on the policy, R = 1): the same weights, and neither NFT's
    floor nor R ≠ 1 appears. Four steps: from the second on, R ≠ 1 and NFT's implicit negative policy
    reweights the tokens, so the weights differ (measured: by 1.5e-3 at most, of a 0.10 move from the start;
    at one step by exactly 0)."""
    rollout, rewards = scripted_batch(200)
    rate, keep = correct_rates(rewards)
    assert keep.all()
    nft_batch = {"rollout": rollout, "correct": rewards.view(-1), "correct_rate": rate.repeat_interleave(4), "num_sampled": 8}  # fmt: skip
    nft_args = Args(num_mini_batches=mini_batches, micro_batch_size=3, device="cpu")
    dr_grpo_batch = {"rollout": rollout, "advantages": grpo_advantages(rewards, "none").view(-1)}
    dr_grpo_args = algos.grpo.Args(
        scale_rewards="none", loss_agg="seq-mean-token-sum-norm", clip_low=10.0, clip_high=10.0,
        num_mini_batches=mini_batches, micro_batch_size=3, device="cpu",
    )  # fmt: skip
    w_nft, stats = updated_weights(algos.nft, random_model_dir, nft_batch, nft_args)
    w_dr, _ = updated_weights(algos.grpo, random_model_dir, dr_grpo_batch, dr_grpo_args)
    w_0, _ = updated_weights(algos.nft, random_model_dir, {**nft_batch, "rollout": rollout.select(torch.zeros(8, dtype=torch.bool))}, nft_args)  # fmt: skip
    moved = (w_nft - w_0).abs().max().item()
    gap = (w_nft - w_dr).abs().max().item()
    assert stats["optimizer_steps"] == mini_batches and moved > 1e-3
    if mini_batches == 1:
        assert gap < 1e-6, gap  # the on-policy identity, at the level of the whole update
        assert stats["floor_frac"] == 0 and stats["ratio_dev"] == 0  # R = 1: the floor never binds
    else:
        assert gap > 1e-3 * moved, (gap, moved)  # NFT's own terms change the update
        assert stats["ratio_dev"] > 0


class AllCorrectVerifier:
    def verify_batch(self, completions, golds):
        return [VerifyResult(parsed=True, correct=True, answer=g) for g in golds]

    def close(self):
        pass


def test_all_uniform_groups_skip_the_step_and_resume_keeps_the_count(tiny_world_dir, tmp_path, monkeypatch):
    """Every group all-correct: nothing is kept, each step is skipped and counted (no 0/0), and the
    count (state this loop adds to the checkpoint) continues exactly after --resume."""
    monkeypatch.setattr(common.run, "Verifier", AllCorrectVerifier)  # the loop's verifier (common/run.py)
    small = {**SMALL, "prompts_per_step": 2, "eval_problems": 2, "eval_n": 1, "max_new_tokens": 16}
    shared = dict(eval_every=0, save_every=1, output_dir=str(tmp_path), run_name="skip", num_mini_batches=2, **small)  # fmt: skip
    main(Args(num_steps=2, **shared))
    main(Args(num_steps=3, resume=True, **shared))
    rows = [r for r in read_jsonl(tmp_path / "skip" / "metrics.jsonl") if "reward_mean" in r]
    assert [r["skipped_steps"] for r in rows] == [1, 2, 3]
    assert all(r["kept_frac"] == 0 and r["loss"] == 0 and r["grad_norm"] == 0 for r in rows)


@pytest.mark.slow
def test_nft_learns_on_the_tiny_world(tiny_world_dir, tmp_path):
    """The defaults (16 optimizer steps per batch, lr 2.5e-5) on a short budget, 15 steps of 8 prompts x 8
    samples (seed 1) without the learning-rate warm-up (5 of the 15 steps would run below the full rate),
    raise held-out pass@1 over 60 problems x 4 samples by at least 0.05. Measured with these settings
    (``./run.sh nft --num-steps 15 --prompts-per-step 8 --group-size 8 --max-new-tokens 64 --warmup-steps 0
    --eval-problems 60 --eval-n 4 --eval-every 0 --seed S``): seed 1 0.338 -> 0.454 (+0.117), seed 2 0.358 ->
    0.471 (+0.113), seed 3 0.292 -> 0.454 (+0.163); 21-27 CPU seconds each (one thread, evaluations
    included). With the warm-up the same runs gained +0.042 / +0.075 / +0.221."""
    out = main(
        Args(num_steps=15, prompts_per_step=8, group_size=8, max_new_tokens=64, warmup_steps=0,
             eval_problems=60, eval_n=4, eval_every=0, save_every=1000, output_dir=str(tmp_path),
             run_name="learn", seed=1)
    )  # fmt: skip
    gain = out["final"]["pass@1"] - out["base"]["pass@1"]
    print(json.dumps({"base": out["base"]["pass@1"], "final": out["final"]["pass@1"]}))
    assert gain >= 0.05, f"held-out pass@1 {out['base']['pass@1']:.3f} -> {out['final']['pass@1']:.3f}"

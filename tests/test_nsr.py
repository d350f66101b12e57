"""PSR / NSR / W-REINFORCE (algos/nsr.py) against hand-computed values and gradient identities
(spec: core-methods.md section 1, "CPU tests" 1-5), plus short end-to-end runs on the tiny world."""

import itertools
import math

import pytest
import torch
from safetensors.torch import load_file

import algos.nsr
import common.run
from algos.nsr import Args, aggregate_loss, clipped_surrogate, main, nsr_advantages
from common.tracking import read_jsonl
from common.verify import VerifyResult

# ---------------------------------------------------------------------------------------------------
# nsr_advantages: hand-computed values
# ---------------------------------------------------------------------------------------------------

CORRECT = torch.tensor([1, 0, 0, 1, 0])


@pytest.mark.parametrize(
    "objective,positive_weight,advantages,keep",
    [
        ("psr", 0.1, [1, 0, 0, 1, 0], [1, 0, 0, 1, 0]),
        ("nsr", 0.1, [0, -1, -1, 0, -1], [0, 1, 1, 0, 1]),
        ("w-reinforce", 0.1, [0.1, -1, -1, 0.1, -1], [1, 1, 1, 1, 1]),
        ("w-reinforce", 0.25, [0.25, -1, -1, 0.25, -1], [1, 1, 1, 1, 1]),
        ("reinforce", 0.1, [1, -1, -1, 1, -1], [1, 1, 1, 1, 1]),
    ],
)
def test_advantages_and_keep_hand_computed(objective, positive_weight, advantages, keep):
    got_adv, got_keep = nsr_advantages(CORRECT, objective, positive_weight)
    assert got_adv.dtype == torch.float32 and got_keep.dtype == torch.bool
    assert torch.allclose(got_adv, torch.tensor(advantages, dtype=torch.float32))
    assert got_keep.tolist() == [bool(k) for k in keep]


def test_advantages_accept_bool_and_reject_unknown_objective():
    adv, keep = nsr_advantages(torch.tensor([True, False]), "nsr", 0.1)
    assert adv.tolist() == [0.0, -1.0] and keep.tolist() == [False, True]
    with pytest.raises(ValueError, match="objective"):
        nsr_advantages(CORRECT, "grpo", 0.1)


# ---------------------------------------------------------------------------------------------------
# Gradient identities on a toy policy: a free logit table z[B, C, V] (one softmax per position)
# ---------------------------------------------------------------------------------------------------

TOKENS = torch.tensor([[0, 2, 1], [1, 1, 3], [3, 0, 0], [2, 2, 2]])  # [B=4, C=3], vocabulary V=4
MASK = torch.tensor(
    [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
)  # lengths 3, 2, 1, 3


def toy_logits(seed: int = 0) -> torch.Tensor:
    return torch.randn(4, 3, 4, generator=torch.Generator().manual_seed(seed)).requires_grad_(True)


def sampled_logprobs(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, -1).gather(-1, TOKENS[..., None]).squeeze(-1)  # [B, C]


def nsr_loss(logits, correct, objective, positive_weight=0.1, log_ratio=0.0):
    """The loss of one nsr.py update step (ρ ≡ 1, --loss-agg token-mean), written as main() computes it:
    keep the samples, clipped surrogate on the kept rows, token mean over the kept tokens."""
    advantages, keep = nsr_advantages(correct, objective, positive_weight)
    logprobs = sampled_logprobs(logits)[keep]  # [B_kept, C]
    mask = MASK[keep]
    old = logprobs.detach() - log_ratio  # the ratio ρ = exp(log_ratio): 1 on-policy
    per_token_loss, _ = clipped_surrogate(logprobs, old, advantages[keep], 0.2, 0.2)
    return aggregate_loss(per_token_loss, mask, "token-mean", int(keep.sum()), int(mask.sum()), 3)


def grad_of(loss_fn, seed: int = 0) -> torch.Tensor:
    logits = toy_logits(seed)
    loss_fn(logits).backward()
    return logits.grad


def token_mean_nll(logits, rows):
    """SFT loss on the given rows: −Σ log π over their tokens / their token count."""
    logprobs = sampled_logprobs(logits)[rows]
    return -(logprobs * MASK[rows]).sum() / MASK[rows].sum()


def test_nsr_on_one_wrong_sample_is_the_negated_sft_gradient():
    """Spec test 1: one wrong sample (row 1) in a batch of correct ones: ∇L_NSR = −∇ NLL(row 1)."""
    correct = torch.tensor([1, 0, 1, 1])
    g_nsr = grad_of(lambda z: nsr_loss(z, correct, "nsr"))
    g_sft = grad_of(lambda z: token_mean_nll(z, torch.tensor([1])))
    assert torch.allclose(g_nsr, -g_sft, atol=1e-7)
    assert g_nsr[[0, 2, 3]].abs().max() == 0  # the correct samples are not touched
    assert g_nsr[1, 2].abs().max() == 0  # nor the padding position of the wrong one
    assert g_nsr.abs().max() > 0.05  # and the identity is not 0 == 0


def test_psr_is_the_sft_gradient_on_the_correct_samples():
    """Spec test 2: PSR on a batch with correct rows 0 and 3 = SFT (token-mean NLL) on those rows."""
    correct = torch.tensor([1, 0, 0, 1])
    g_psr = grad_of(lambda z: nsr_loss(z, correct, "psr"))
    g_sft = grad_of(lambda z: token_mean_nll(z, torch.tensor([0, 3])))
    assert torch.allclose(g_psr, g_sft, atol=1e-7)
    assert g_psr[[1, 2]].abs().max() == 0 and g_psr.abs().max() > 0.05


def test_single_softmax_nsr_step_moves_logits_by_eta_times_prior():
    """Spec test 3: one SGD step of NSR on one sampled token y of a single softmax π = (0.5, 0.3, 0.2):
    z_y falls by η(1 − π_y), every other z_v rises by η·π_v (more for larger-prior alternatives)."""
    eta = 1.0
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2])).requires_grad_(True)
    logprob = torch.log_softmax(logits, -1)[0].view(1, 1)  # the wrong answer sampled token 0
    advantages, keep = nsr_advantages(torch.tensor([0]), "nsr", 0.1)
    per_token_loss, _ = clipped_surrogate(logprob, logprob.detach(), advantages[keep], 0.2, 0.2)
    loss = aggregate_loss(per_token_loss, torch.ones(1, 1), "token-mean", 1, 1, 1)
    optimizer = torch.optim.SGD([logits], lr=eta)
    before = logits.detach().clone()
    loss.backward()
    optimizer.step()
    delta = logits.detach() - before
    assert torch.allclose(delta, torch.tensor([-0.5, 0.3, 0.2]), atol=1e-6)  # [−η(1 − 0.5), η·0.3, η·0.2]
    pi_after = torch.softmax(logits.detach(), -1)
    assert pi_after[0] < 0.5
    # the freed mass goes to the alternatives in proportion to their prior, and more to the larger one
    assert pi_after[1] / pi_after[2] > 0.3 / 0.2 and pi_after[1] - 0.3 > pi_after[2] - 0.2 > 0


def test_single_softmax_psr_step_is_the_mirror_image():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2])).requires_grad_(True)
    logprob = torch.log_softmax(logits, -1)[0].view(1, 1)
    advantages, keep = nsr_advantages(torch.tensor([1]), "psr", 0.1)
    per_token_loss, _ = clipped_surrogate(logprob, logprob.detach(), advantages[keep], 0.2, 0.2)
    aggregate_loss(per_token_loss, torch.ones(1, 1), "token-mean", 1, 1, 1).backward()
    assert torch.allclose(-logits.grad, torch.tensor([0.5, -0.3, -0.2]), atol=1e-6)


def test_w_reinforce_lambda_one_is_reinforce():
    """Spec test 4a: λ = 1 gives the same advantages, kept samples and gradient as REINFORCE with ±1."""
    correct = torch.tensor([1, 0, 0, 1])
    assert all(torch.equal(a, b) for a, b in zip(nsr_advantages(correct, "w-reinforce", 1.0), nsr_advantages(correct, "reinforce")))  # fmt: skip
    g_w = grad_of(lambda z: nsr_loss(z, correct, "w-reinforce", positive_weight=1.0))
    g_r = grad_of(lambda z: nsr_loss(z, correct, "reinforce"))
    assert torch.equal(g_w, g_r)
    # and REINFORCE is PSR + NSR, each weighted by its share of the batch's tokens (6 + 3 of 9 tokens)
    g_psr = grad_of(lambda z: nsr_loss(z, correct, "psr"))
    g_nsr = grad_of(lambda z: nsr_loss(z, correct, "nsr"))
    assert torch.allclose(g_r, 6 / 9 * g_psr + 3 / 9 * g_nsr, atol=1e-7)


def test_w_reinforce_lambda_zero_is_nsr_up_to_the_token_share():
    """Spec test 4b: λ = 0 trains only the wrong samples, like NSR, but its token mean runs over the
    WHOLE batch (it keeps every sample): gradient = NSR's × (wrong tokens 3) / (all tokens 9)."""
    correct = torch.tensor([1, 0, 0, 1])  # wrong rows 1 and 2 hold 2 + 1 = 3 of the 9 tokens
    adv_w, _ = nsr_advantages(correct, "w-reinforce", 0.0)
    adv_n, _ = nsr_advantages(correct, "nsr")
    assert torch.equal(adv_w, adv_n)
    g_w = grad_of(lambda z: nsr_loss(z, correct, "w-reinforce", positive_weight=0.0))
    g_n = grad_of(lambda z: nsr_loss(z, correct, "nsr"))
    assert torch.allclose(g_w, 3 / 9 * g_n, atol=1e-7)
    assert not torch.allclose(g_w, g_n)  # the step-size difference is real


def test_clip_binds_for_a_negative_advantage_once_the_ratio_has_fallen():
    """Off-policy (ratio exp(−0.5) ≈ 0.61 < 0.8): NSR has already pushed the wrong tokens down enough,
    the clipped branch is taken and the kept wrong sample gives no further gradient."""
    correct = torch.tensor([1, 0, 1, 1])
    g = grad_of(lambda z: nsr_loss(z, correct, "nsr", log_ratio=-0.5))
    assert g.abs().max() == 0


def test_nsr_batch_without_negatives_keeps_nothing_and_stays_finite():
    """Spec test 5 (pure part): an all-correct batch keeps no sample under NSR; every value is finite."""
    advantages, keep = nsr_advantages(torch.ones(8), "nsr", 0.1)
    assert not keep.any() and torch.equal(advantages, torch.zeros(8))
    advantages, keep = nsr_advantages(torch.zeros(8), "psr", 0.1)  # the mirror case for PSR
    assert not keep.any() and torch.equal(advantages, torch.zeros(8))


def test_importing_the_script_has_no_side_effects(capsys):
    import importlib

    importlib.reload(algos.nsr)
    assert capsys.readouterr().out == ""


# ---------------------------------------------------------------------------------------------------
# End to end on the tiny world
# ---------------------------------------------------------------------------------------------------

SMALL = dict(
    prompts_per_step=4, group_size=4, eval_problems=12, eval_n=2, micro_batch_size=8, max_new_tokens=40
)


@pytest.mark.parametrize(
    "flags",
    [
        {},
        {
            "objective": "nsr",
            "updates_per_batch": 2,
            "num_mini_batches": 2,
            "kl_coef": 0.01,
            "entropy_coef": 1e-3,
        },
    ],
    ids=["defaults", "nsr-two-updates-two-mini-batches-kl"],
)
def test_nsr_smoke_run(tiny_world_dir, tmp_path, flags):
    """A few steps end to end: the default objective, and NSR with the off-policy (μ = 2, two mini-batches)
    and KL branches running on the kept subset of the batch."""
    out = main(Args(num_steps=3, eval_every=0, save_every=10, output_dir=str(tmp_path), run_name="smoke", **SMALL, **flags))  # fmt: skip
    rows = [r for r in read_jsonl(tmp_path / "smoke" / "metrics.jsonl") if "reward_mean" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        for key in ["loss", "grad_norm", "entropy", "kl", "clip_frac", "kept_frac", "reward_mean", "logprob_mismatch"]:  # fmt: skip
            assert math.isfinite(row[key]), (row["step"], key)
        # w-reinforce trains on every sample; NSR on exactly the wrong ones
        want_kept = 1.0 if not flags else 1.0 - row["reward_mean"]
        assert row["kept_frac"] == pytest.approx(want_kept)
        assert row["logprob_mismatch"] < 1e-4 and (row["grad_norm"] > 0 or row["kept_frac"] == 0)
    skipped = [int(r["kept_frac"] == 0) for r in rows]  # a step is skipped exactly when nothing is kept
    assert [r["skipped_steps"] for r in rows] == list(itertools.accumulate(skipped))
    if flags:
        assert any(r["kl"] > 0 for r in rows[1:])  # the policy has moved away from the reference
    assert 0.0 <= out["final"]["pass@1"] <= 1.0


class AllCorrectVerifier:
    """Every completion is right: NSR has nothing to train on."""

    def verify_batch(self, completions, golds):
        return [VerifyResult(parsed=True, correct=True, answer=g) for g in golds]

    def close(self):
        pass


def test_nsr_skips_a_batch_without_negatives(tiny_world_dir, tmp_path, monkeypatch):
    """Spec test 5 (loop part): with every sample correct, each NSR step is skipped and counted, the
    logged numbers are finite (no 0/0) and the weights do not move."""
    monkeypatch.setattr(common.run, "Verifier", AllCorrectVerifier)  # the loop's verifier (common/run.py)
    small = {**SMALL, "eval_problems": 2, "eval_n": 1, "max_new_tokens": 24}
    args = Args(objective="nsr", num_steps=2, eval_every=0, save_every=10, output_dir=str(tmp_path), run_name="skip", **small)  # fmt: skip
    main(args)
    rows = [r for r in read_jsonl(tmp_path / "skip" / "metrics.jsonl") if "reward_mean" in r]
    assert [r["skipped_steps"] for r in rows] == [1, 2]
    assert all(r["kept_frac"] == 0 and r["loss"] == 0 and r["grad_norm"] == 0 for r in rows)
    assert all(math.isfinite(v) for r in rows for v in r.values() if isinstance(v, float))
    before = load_file(tiny_world_dir / "model.safetensors")
    after = load_file(tmp_path / "skip" / "checkpoints" / "step-00000002" / "model" / "model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_w_reinforce_learns_on_the_tiny_world(tiny_world_dir, tmp_path):
    """The defaults (W-REINFORCE, λ = 0.1) on a short budget, 15 steps of 8 prompts x 8 samples (seed 1), raise
    held-out pass@1 over 60 problems x 4 samples by at least 0.05. Measured with these settings (``./run.sh nsr
    --num-steps 15 --prompts-per-step 8 --group-size 8 --max-new-tokens 64 --eval-problems 60 --eval-n 4
    --eval-every 0 --seed S``): seed 1 0.338 -> 0.488 (+0.150), seed 2 0.358 -> 0.421 (+0.063), seed 3 0.292 ->
    0.417 (+0.125); about 18 CPU seconds each (one thread, evaluations included)."""
    out = main(
        Args(num_steps=15, prompts_per_step=8, group_size=8, max_new_tokens=64, eval_problems=60, eval_n=4,
             eval_every=0, save_every=1000, output_dir=str(tmp_path), run_name="learn", seed=1)
    )  # fmt: skip
    gain = out["final"]["pass@1"] - out["base"]["pass@1"]
    assert gain >= 0.05, f"held-out pass@1 {out['base']['pass@1']:.3f} -> {out['final']['pass@1']:.3f}"

"""BNPO's pure functions against hand-computed values (specs: core-methods.md section 2, CPU tests 1-6),
the dual clip, the seq-mean-token-sum aggregation, and a short end-to-end run on the tiny world."""

import math

import pytest
import torch

from algos.bnpo import (
    Args,
    aggregate_loss,
    beta_density,
    beta_params,
    bnpo_advantages,
    decomposed_advantages,
    dual_clipped_surrogate,
    format_rewards,
    main,
    validate,
)
from algos.grpo import grpo_advantages
from common.tracking import read_jsonl
from common.verify import verify


def _random_binary_rewards(Q=32, G=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(Q, 1, generator=g)  # a different success rate per prompt
    return (torch.rand(Q, G, generator=g) < p).float()  # [Q, G]


# --- the Beta fit -------------------------------------------------------------------------------


def test_beta_params_hand_computed_with_unbiased_variance():
    # [0.25, 0.5, 0.75]: μ = 0.5, unbiased σ² = 1/16 -> k = 0.25/(1/16) − 1 = 3, a = b = 1.5 -> α = β = 1.5
    # (the population σ² = 1/24 would give k = 5, α = β = 1 + 2.5/3)
    assert beta_params(torch.tensor([0.25, 0.5, 0.75])) == pytest.approx((1.5, 1.5))
    # [0.25, 0.25, 0.25, 0.75]: μ = 0.375, σ² = 1/16 -> k = 0.234375·16 − 1 = 2.75, a = 1.03125, b = 1.71875
    assert beta_params(torch.tensor([0.25, 0.25, 0.25, 0.75])) == pytest.approx((1.34375, 1.5729166))


def test_beta_params_clamps_at_one():
    # [0, 1]: μ = 0.5, σ² = 0.5 -> k = −0.5, a = b = −0.25 -> 1 − 1/12 clamped to 1
    assert beta_params(torch.tensor([0.0, 1.0])) == (1.0, 1.0)


def test_method_of_moments_recovers_beta_2_5():
    """Spec test 3: 10k pass rates from Beta(2, 5) -> a ≈ 2, b ≈ 5 -> α ≈ 5/3, β ≈ 8/3."""
    torch.manual_seed(0)
    p = torch.distributions.Beta(torch.tensor(2.0), torch.tensor(5.0)).sample((10_000,))
    alpha, beta = beta_params(p)
    assert alpha == pytest.approx(5 / 3, abs=0.03)
    assert beta == pytest.approx(8 / 3, abs=0.06)


@pytest.mark.parametrize(
    "pass_rates",
    # σ² = 0, and Q = 1. Nine float64 copies of 1/3 have a computed σ² of ~3e-33, not 0: a `σ² == 0`
    # test would miss them and return α ≈ 1e31.
    [[0.375] * 4, [0.0] * 5, [1.0] * 5, [1 / 3] * 9, [0.5]],
)
def test_zero_variance_or_one_prompt_falls_back_to_reinforce(pass_rates):
    """Spec test 5: σ² = 0 (the official code divides by zero there) gives α = β = 1, no NaN."""
    assert beta_params(torch.tensor(pass_rates, dtype=torch.float64)) == (1.0, 1.0)


def test_zero_variance_batch_gives_finite_advantages():
    rewards = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # every p̂ = 1/3
    advantages, fits = decomposed_advantages(rewards[None])
    assert fits == [(1.0, 1.0)]
    assert torch.isfinite(advantages).all()
    assert torch.allclose(advantages, rewards - 1 / 3)


def test_beta_density_hand_computed():
    p = torch.tensor([0.25, 0.5])
    # Beta(2, 3): 12·p·(1 − p)²;  Beta(1.5, 1.5): (8/π)·sqrt(p(1 − p))
    assert torch.allclose(beta_density(p, 2.0, 3.0), 12 * p * (1 - p) ** 2)
    assert torch.allclose(beta_density(p, 1.5, 1.5), 8 / math.pi * torch.sqrt(p * (1 - p)))


# --- the advantages -----------------------------------------------------------------------------


def test_alpha_beta_one_is_reinforce_with_mean_baseline():
    """Spec test 1: α = β = 1 -> f ≡ 1 -> A = R − p̂."""
    rewards = _random_binary_rewards()
    expected = rewards - rewards.mean(dim=1, keepdim=True)
    assert torch.allclose(bnpo_advantages(rewards, 1.0, 1.0), expected, atol=1e-6)
    # hand-computed: [1, 0, 0, 0] -> p̂ = 0.25
    assert torch.allclose(
        bnpo_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), 1.0, 1.0),
        torch.tensor([[0.75, -0.25, -0.25, -0.25]]),
    )


def test_alpha_beta_three_halves_is_grpo_up_to_pi_over_8():
    """Spec test 2: α = β = 3/2 -> A = (π/8)·(R − p̂)/sqrt(p̂(1 − p̂)), i.e. GRPO with the population std."""
    rewards = _random_binary_rewards()
    p = rewards.mean(dim=1, keepdim=True)
    mixed = ((p > 0) & (p < 1)).squeeze(1)
    expected = math.pi / 8 * (rewards - p) / torch.sqrt(p * (1 - p))
    advantages = bnpo_advantages(rewards, 1.5, 1.5)
    assert mixed.sum() >= 10  # the check has mixed groups to look at
    assert torch.allclose(advantages[mixed], expected[mixed], atol=1e-5)
    # GRPO uses the unbiased std: population std = unbiased std · sqrt((G − 1)/G)
    G = rewards.shape[1]
    grpo = grpo_advantages(rewards) * math.sqrt(G / (G - 1))
    assert torch.allclose(advantages[mixed], math.pi / 8 * grpo[mixed], atol=1e-4)
    # hand-computed: [1, 1, 0, 0] -> (π/8)·(±0.5)/0.5 = ±π/8
    assert torch.allclose(
        bnpo_advantages(torch.tensor([[1.0, 1.0, 0.0, 0.0]]), 1.5, 1.5),
        torch.tensor([[1.0, 1.0, -1.0, -1.0]]) * math.pi / 8,
    )


@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (1.0, 3.0), (3.0, 1.0), (2.5, 4.0)])
def test_all_correct_or_all_wrong_groups_get_exactly_zero(alpha, beta):
    """Spec test 4: p̂ ∈ {0, 1} -> A = 0 and finite; with α or β > 1 the density there is 0 (1/f = inf),
    with α = 1 or β = 1 it is finite: both edges must give exactly 0."""
    rewards = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    advantages = bnpo_advantages(rewards, alpha, beta)
    assert torch.isfinite(advantages).all()
    assert torch.equal(advantages[:2], torch.zeros(2, 4))
    assert (advantages[2] != 0).all()


def test_weight_is_clamped_for_extreme_fits():
    # Beta(50, 50) at p̂ = 1/8: f ≈ 1e-19, so 1/f is clamped to max_weight
    advantages = bnpo_advantages(torch.tensor([[1.0] + [0.0] * 7]), 50.0, 50.0, max_weight=1e6)
    assert torch.isfinite(advantages).all()
    assert advantages[0, 0].item() == pytest.approx(1e6 * 0.875)


def test_rewards_outside_unit_interval_are_rejected():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bnpo_advantages(torch.tensor([[2.0, 0.0]]), 1.0, 1.0)


# --- advantage decomposition --------------------------------------------------------------------


def test_decomposition_with_one_component_is_plain_bnpo():
    """Spec test 6a: K = 1 equals BNPO with the batch's own fit."""
    rewards = _random_binary_rewards(seed=1)
    alpha, beta = beta_params(rewards.mean(dim=1))
    assert alpha > 1 and beta > 1  # a real fit, not the fallback
    advantages, fits = decomposed_advantages(rewards[None])
    assert fits == [(alpha, beta)]
    assert torch.allclose(advantages, bnpo_advantages(rewards, alpha, beta))


def test_decomposition_of_two_equal_components_is_plain_bnpo():
    """Spec test 6b: two equal components average to BNPO on either."""
    rewards = _random_binary_rewards(seed=2)
    single, _ = decomposed_advantages(rewards[None])
    double, fits = decomposed_advantages(torch.stack([rewards, rewards]))
    assert fits[0] == fits[1]
    assert torch.allclose(double, single)


def test_decomposition_averages_separate_fits():
    """Each component has its own p̂ and (α, β): accuracy [[1, 0], [1, 1], [0, 0]] has pass rates
    [0.5, 1, 0] (μ = 0.5, σ² = 0.25, k = 0, α = β = 1: A = ±0.5 on row 0); format is all 1 except one
    miss (pass rates [1, 0.5, 1]: μ = 5/6, σ² = 1/12, k = 2/3, a = 5/9, b = 1/9, α = 1 + 5/27,
    β = 1 + 1/27)."""
    accuracy = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    fmt = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    advantages, fits = decomposed_advantages(torch.stack([accuracy, fmt]))
    assert fits[0] == pytest.approx((1.0, 1.0))
    assert fits[1] == pytest.approx((1 + 5 / 27, 1 + 1 / 27))
    weight = 1 / beta_density(torch.tensor(0.5), *fits[1]).item()
    expected = torch.tensor([[0.5, -0.5], [0.5 * weight, -0.5 * weight], [0.0, 0.0]]) / 2
    assert torch.allclose(advantages, expected, atol=1e-6)


def test_format_reward_is_a_parseable_boxed_answer():
    completions = [
        "1+2=3\n\\boxed{3}",  # boxed, right
        "1+2=4\n\\boxed{4}",  # boxed, wrong: still well formatted
        "so the answer is 3",  # parsed by the fallback number, no box
        "#### 3",  # parsed GSM8K style, no box
        "\\boxed{}",  # empty box: not parsed
        "\\boxed{3",  # unclosed (truncated) box: not parsed
    ]
    parsed = [verify(c, "3").parsed for c in completions]
    assert parsed == [True, True, True, True, False, False]
    assert format_rewards(completions, parsed).tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


# --- the loss: dual clip and seq-mean-token-sum -------------------------------------------------


def _grad(ratio: float, adv: float, dual_clip: float):
    logp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss, clipped = dual_clipped_surrogate(logp, torch.zeros(1, 1), torch.tensor([adv]), 0.2, 0.28, dual_clip)
    loss.sum().backward()
    return loss.item(), logp.grad.item(), bool(clipped.item())


def test_dual_clip_caps_negative_advantage_losses():
    # A = −1, ρ = 20: −min(ρA, clip(ρ)A) = 20, capped at c·|A| = 10, no gradient
    assert _grad(20.0, -1.0, 10.0) == pytest.approx((10.0, 0.0, True))
    # without the dual clip: loss 20, gradient d(−ρA)/dlogπ = −ρA = 20
    assert _grad(20.0, -1.0, 0.0) == pytest.approx((20.0, 20.0, False))
    # ρ = 5 < c: untouched, gradient 5
    assert _grad(5.0, -1.0, 10.0) == pytest.approx((5.0, 5.0, False))
    # A = −0.5, ρ = 30: capped at 10·0.5 = 5
    assert _grad(30.0, -0.5, 10.0) == pytest.approx((5.0, 0.0, True))


def test_dual_clip_leaves_positive_advantages_to_the_ordinary_clip():
    # A = +1, ρ = 20: clip-high 0.28 gives loss −1.28 and no gradient, with or without the dual clip
    assert _grad(20.0, 1.0, 10.0) == pytest.approx((-1.28, 0.0, True))
    assert _grad(20.0, 1.0, 0.0) == pytest.approx((-1.28, 0.0, True))
    # ρ = 1.25 < 1.28: not clipped, gradient −ρA
    assert _grad(1.25, 1.0, 10.0) == pytest.approx((-1.25, -1.25, False))


def test_dual_clip_flag_is_validated():
    with pytest.raises(SystemExit, match="dual-clip"):
        validate(Args(dual_clip=0.5))
    validate(Args(dual_clip=0.0))
    validate(Args())


LOSSES = torch.tensor([[1.0, 1.0, 0.0], [4.0, 0.0, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def test_seq_mean_token_sum_hand_computed_and_default():
    assert Args().loss_agg == "seq-mean-token-sum"
    # ((1 + 1) + 4) / 2 sequences
    assert aggregate_loss(LOSSES, MASK, "seq-mean-token-sum", 2, 3, 3).item() == pytest.approx(3.0)


def test_seq_mean_token_sum_micro_batches_sum_to_the_batch_loss():
    torch.manual_seed(0)
    losses, mask = torch.randn(6, 5), (torch.rand(6, 5) > 0.3).float()
    full = aggregate_loss(losses, mask, "seq-mean-token-sum", 6, int(mask.sum()), 5)
    parts = sum(
        aggregate_loss(losses[i : i + 2], mask[i : i + 2], "seq-mean-token-sum", 6, int(mask.sum()), 5)
        for i in range(0, 6, 2)
    )
    assert parts.item() == pytest.approx(full.item(), rel=1e-6)


def test_on_policy_gradient_is_reinforce_with_beta_weights():
    """At ρ = 1 (one update per batch) the loss gradient on every token of completion i is −A_i/B:
    REINFORCE, with no length normalization (a 10-token and a 100-token completion weigh each token alike)."""
    rewards = torch.tensor([[1.0, 0.0]])
    advantages = bnpo_advantages(rewards, 2.0, 2.0).view(-1)  # ±1/3
    mask = torch.zeros(2, 100)
    mask[0, :10] = 1
    mask[1, :100] = 1
    logp = torch.zeros(2, 100, requires_grad=True)
    per_token, _ = dual_clipped_surrogate(logp, logp.detach(), advantages, 0.2, 0.28, 10.0)
    aggregate_loss(per_token, mask, "seq-mean-token-sum", 2, int(mask.sum()), 100).backward()
    assert torch.allclose(logp.grad, -advantages[:, None] / 2 * mask)
    assert logp.grad[0, 0].item() == pytest.approx(-1 / 6)


def test_importing_the_script_has_no_side_effects(capsys):
    import importlib

    import algos.bnpo

    importlib.reload(algos.bnpo)
    assert capsys.readouterr().out == ""


# --- end to end on the tiny world ---------------------------------------------------------------

SMALL = dict(
    prompts_per_step=4, group_size=4, eval_problems=12, eval_n=2, micro_batch_size=8, max_new_tokens=40
)


def test_bnpo_smoke_run_logs_the_beta_fit(tiny_world_dir, tmp_path):
    """Two steps with the format reward on (K = 2 components): α and β of each are logged every step."""
    out = main(
        Args(num_steps=2, eval_every=0, save_every=100, output_dir=str(tmp_path), run_name="smoke",
             format_reward=True, **SMALL)
    )  # fmt: skip
    rows = [r for r in read_jsonl(tmp_path / "smoke" / "metrics.jsonl") if "reward_mean" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        for key in ["alpha", "beta", "alpha_format", "beta_format"]:
            assert math.isfinite(row[key]) and row[key] >= 1.0, (key, row[key])
        for key in ["loss", "grad_norm", "pass_rate_var", "adv_abs_max", "format_reward_mean"]:
            assert math.isfinite(row[key]), key
    assert 0.0 <= out["final"]["pass@1"] <= 1.0


@pytest.mark.slow
def test_bnpo_learns_on_the_tiny_world(tiny_world_dir, tmp_path):
    """The defaults on a short budget, 15 steps of 8 prompts x 8 samples (seed 1), raise held-out pass@1 over 60
    problems x 4 samples by at least 0.05. Measured with these settings (``./run.sh bnpo --num-steps 15
    --prompts-per-step 8 --group-size 8 --max-new-tokens 64 --eval-problems 60 --eval-n 4 --eval-every 0
    --seed S``): seed 1 0.338 -> 0.421 (+0.083), seed 2 0.358 -> 0.471 (+0.113), seed 3 0.292 -> 0.404
    (+0.113); about 18 CPU seconds each (one thread, evaluations included)."""
    out = main(
        Args(num_steps=15, prompts_per_step=8, group_size=8, max_new_tokens=64, eval_problems=60, eval_n=4,
             eval_every=0, save_every=1000, output_dir=str(tmp_path), run_name="learn", seed=1)
    )  # fmt: skip
    gain = out["final"]["pass@1"] - out["base"]["pass@1"]
    assert gain >= 0.05, f"held-out pass@1 {out['base']['pass@1']:.3f} -> {out['final']['pass@1']:.3f}"

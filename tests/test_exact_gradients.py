"""Issue 24, part 3: each method's expected gradient, exactly, against what its METHOD block claims.

The maths is ``bench/gradients.py``'s (its docstring derives it): E[ĝ] = Σ_c coef_c ∇q_c over the classes c of
outcomes, each method's sample weight taken from its own file. Here:
- every tier-1 and tier-2 method of the registry has an exact entry, every tier-3 one says why it has none;
- the enumeration equals autograd's true gradient on a tabular softmax over 64 completions (RLOO: unbiased);
- each configuration's factor c(p) (E[ĝ] = c(p)·∇p for 0/1 rewards) equals the hand-derived value its claim
  states: 1 (unbiased), (G − 1)/G (a group mean with the sample), a stated bias (GRPO's 1/std, MaxRL's
  truncated likelihood, NSR's weights, DAPO's filter), or an identity (NFT = Dr. GRPO; CISPO, GMPO, GSPO,
  SAPO = GRPO at ρ = 1);
- Monte-Carlo through eighteen files' own ``update_policy`` (and DAPO's filter and Reinforce-Ada's own
  rounds) on a real (random, one-layer) model whose completions of two tokens are enumerated: 16384
  completions in groups of 4, micro-batched, within 5 standard errors of the exact expectation; and a
  factor-2 normalisation bug in the aggregation is caught.
"""

import math
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch

from bench.gradients import (
    BEGIN,
    DOC,
    END,
    Estimator,
    binary,
    enumerate_groups,
    estimators,
    pattern_coefficients,
    per_group,
    reinforce_ada_moments,
    table,
    tier1_coefficients,
)
from common.registry import GRADIENT_TIERS, MethodInfo, load_method, methods

P_VALUES = (0.1, 0.3, 0.5, 0.8)

# ------------------------------------------------------------------------------------------------------------
# The registry: every tier-1/2 method has an exact entry, every tier-3 method a reason


def test_every_tier_one_and_two_method_has_an_exact_entry():
    registry = methods()
    exact = {est.key for est in estimators()}
    needed = {key for key, m in registry.items() if m.info.gradient_tier in (1, 2)}
    assert needed - exact == set(), (
        f"tier-1/2 methods without an entry in bench/gradients.py: {needed - exact}"
    )
    assert all(registry[key].info.gradient_tier in (1, 2) for key in exact)


def test_tier_three_methods_say_why_no_exact_form_applies():
    for key, method in methods().items():
        if method.info.gradient_tier == 3:
            assert "no exact form" in method.info.gradient_claim, key


def test_a_registry_entry_without_a_valid_tier_fails(monkeypatch):
    with pytest.raises(TypeError):
        MethodInfo(name="X", paper="p", arxiv="0", change="c", gradient_claim="unbiased")  # no gradient_tier
    fake = types.ModuleType("algos._no_tier")
    fake.METHOD = MethodInfo(name="X", paper="p", arxiv="0", change="c", gradient_tier=4, gradient_claim="?")
    monkeypatch.setitem(sys.modules, "algos._no_tier", fake)
    with pytest.raises(ValueError, match="gradient_tier"):
        load_method("_no_tier")
    assert all(m.info.gradient_tier in GRADIENT_TIERS and m.info.gradient_claim for m in methods().values())


def test_the_docs_table_is_the_generated_one():
    """docs/gradients.md holds what ``python -m bench.gradients`` writes (rerun it after changing a claim)."""
    text = DOC.read_text()
    assert text[text.index(BEGIN) + len(BEGIN) : text.index(END)].strip() == table()


# ------------------------------------------------------------------------------------------------------------
# The enumeration against autograd on a tabular policy


def tabular(K=64, seed=0):
    """Logits θ [K] (K completions), rewards in {0, 0.5, 1} and lengths in {1, 2}: the classes, their q_c as
    differentiable sums of π, and J = Σ π r."""
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(K, generator=gen, dtype=torch.float64, requires_grad=True)
    reward = torch.randint(0, 3, (K,), generator=gen).double() / 2
    length = torch.randint(1, 3, (K,), generator=gen).double()
    pi = torch.softmax(theta, 0)
    pairs = sorted({(float(r), float(n)) for r, n in zip(reward, length)})
    member = torch.stack([(reward == r) & (length == n) for r, n in pairs]).double()  # [V, K]
    q = member @ pi  # [V]
    rewards, lengths = torch.tensor(pairs, dtype=torch.float64).T
    return theta, pi, reward, rewards, lengths, q


def expected_gradient(coef, q, theta):
    return torch.autograd.grad((coef.detach() * q).sum(), theta, retain_graph=True)[0]


def test_rloo_is_unbiased_for_the_gradient_of_expected_reward_on_64_completions():
    """E[ĝ] by conditioning equals ∇J by autograd (RLOO, rewards 0/0.5/1); Dr. GRPO gives (G − 1)/G of it; the
    seq-mean-token-mean weight 1/|o| breaks RLOO's unbiasedness (its claim names seq-mean-token-sum)."""
    theta, pi, reward, rewards, lengths, q = tabular()
    true = torch.autograd.grad((pi * reward).sum(), theta, retain_graph=True)[0]
    a = {k: m.module for k, m in methods().items()}
    for G in (2, 3, 4):
        rloo = tier1_coefficients(per_group(a["rloo"].rloo_advantages), rewards, lengths, q, G)
        assert torch.allclose(expected_gradient(rloo, q, theta), true, atol=1e-12)
        dr = tier1_coefficients(per_group(a["dr_grpo"].dr_grpo_advantages), rewards, lengths, q, G)
        assert torch.allclose(expected_gradient(dr, q, theta), (G - 1) / G * true, atol=1e-12)

        def per_token_mean(r, n):
            return per_group(a["rloo"].rloo_advantages)(r, n) / n

        biased = expected_gradient(tier1_coefficients(per_token_mean, rewards, lengths, q, G), q, theta)
        assert (biased - true).norm() > 0.1 * true.norm()


def test_rlcr_gives_g_minus_one_over_g_of_the_gradient_of_its_calibrated_reward():
    """RLCR's reward (format + accuracy + Brier of the stated confidence, the file's ``rlcr_rewards``) on 64
    completions that differ in correctness and stated confidence: E[ĝ] = (G − 1)/G ∇E[R]; and the Brier term's
    expectation is maximised by stating the true probability of being right (a proper scoring rule)."""
    rlcr = methods()["rlcr"].module
    gen = torch.Generator().manual_seed(1)
    theta = torch.randn(64, generator=gen, dtype=torch.float64, requires_grad=True)
    correct = torch.arange(64) % 2 == 0
    confidence = (torch.arange(64) // 2 % 4).double() / 4  # 0, 0.25, 0.5, 0.75
    confidence[-1] = float("nan")  # one completion fails the format
    reward = rlcr.rlcr_rewards(correct, confidence).double()
    pi = torch.softmax(theta, 0)
    values = sorted(set(reward.tolist()))
    q = torch.stack([pi[reward == v].sum() for v in values])
    true = torch.autograd.grad((pi * reward).sum(), theta, retain_graph=True)[0]
    weights = per_group(lambda r: rlcr.grpo_advantages(r, rlcr.Args().scale_rewards))
    for G in (2, 4):
        coef = tier1_coefficients(weights, torch.tensor(values), torch.ones(len(values)), q, G)
        assert torch.allclose(expected_gradient(coef, q, theta), (G - 1) / G * true, atol=1e-12)
    grid = torch.linspace(0, 1, 101)
    for p in (0.2, 0.7):  # E[Brier term] = p·R(1, q) + (1 − p)·R(0, q), maximised at q = p
        expected = p * rlcr.rlcr_rewards(torch.ones(101, dtype=torch.bool), grid) + (
            1 - p
        ) * rlcr.rlcr_rewards(torch.zeros(101, dtype=torch.bool), grid)
        assert grid[expected.argmax()].item() == pytest.approx(p)


@pytest.mark.parametrize("G", [2, 3, 4])
def test_conditioning_equals_enumerating_every_pattern(G):
    """Tier 1's conditioning on one sample (binomial over the others) and tier 2's enumeration of every
    G-pattern give the same coefficients for every tier-1 estimator."""
    registry = methods()
    for est in estimators():
        if est.weights is None or registry[est.key].info.gradient_tier != 1:
            continue
        for p in (0.2, 0.6):
            args = (*binary(p), G)
            assert torch.allclose(
                tier1_coefficients(est.weights, *args), pattern_coefficients(est.weights, *args), atol=1e-10
            ), est.label


# ------------------------------------------------------------------------------------------------------------
# Each configuration's factor c(p) against its claim, derived by hand


def binom(m, n, p):
    return math.comb(n, m) * p**m * (1 - p) ** (n - m)


def group_mean_factor(G, p, scale):
    """c(p) of A = (r − mean)/scale(k) (k: the group's successes; 0 where k ∈ {0, G}): conditioning on a
    success (k = m + 1) and on a failure (k = m), m ~ Bin(G − 1, p) the others' successes."""
    total = 0.0
    for m in range(G):
        success = (1 - (m + 1) / G) / scale(m + 1) if m + 1 < G else 0.0
        failure = (m / G) / scale(m) if m > 0 else 0.0
        total += binom(m, G - 1, p) * (success + failure)
    return total


def std(G, eps=1e-6):  # the unbiased std of k ones in G, plus GRPO's ε
    return lambda k: math.sqrt(k * (G - k) / (G * (G - 1))) + eps


def whitened(G, eps=1e-8):  # REINFORCE++'s batch whitening: rsqrt(unbiased var + ε)
    return lambda k: math.sqrt(k * (G - k) / (G * (G - 1)) + eps)


def kept(G, p):  # DAPO's filter: P(0 < k < G)
    return 1 - p**G - (1 - p) ** G


CLAIMS = {  # label -> (hand-derived c(p, G), the words of the METHOD block's claim this checks)
    "rloo": (lambda p, G: 1.0, "unbiased"),
    "dr_grpo": (lambda p, G: (G - 1) / G, "(G - 1)/G"),
    "grpo --scale-rewards none": (lambda p, G: (G - 1) / G, "(G - 1)/G"),
    "grpo": (lambda p, G: group_mean_factor(G, p, std(G)), "1/std"),
    "cispo (ρ = 1)": (lambda p, G: group_mean_factor(G, p, std(G)), "equals GRPO"),
    "gmpo (ρ = 1)": (lambda p, G: group_mean_factor(G, p, std(G)), "equals GRPO"),
    "gspo (ρ = 1)": (lambda p, G: group_mean_factor(G, p, std(G)), "equals GRPO"),
    "sapo (ρ = 1)": (lambda p, G: group_mean_factor(G, p, std(G)), "the gradient is GRPO's"),
    "dppo (ρ = 1)": (lambda p, G: (G - 1) / G, "REINFORCE with the mean baseline"),
    "kimi (ρ = 1)": (lambda p, G: (G - 1) / G, "(G − 1)/G"),
    "rec (ρ = 1)": (lambda p, G: (G - 1) / G, "(G − 1)/G"),
    "nft (R = 1)": (lambda p, G: (G - 1) / G, "exactly Dr. GRPO"),
    "bnpo (one prompt: the fit's α = β = 1)": (lambda p, G: (G - 1) / G, "(G - 1)/G"),
    "bnpo, α = β = 2 fixed": (
        lambda p, G: group_mean_factor(G, p, lambda k: 6 * k / G * (1 - k / G)),
        "Beta density",
    ),
    "maxrl": (lambda p, G: (1 - (1 - p) ** G) / p - (1 - p) ** (G - 1), "((1 - (1-p)^N)/p - (1-p)^(N-1))"),
    "nsr --objective psr": (lambda p, G: 1.0, "PSR and NSR each estimate"),
    "nsr --objective nsr": (lambda p, G: 1.0, "PSR and NSR each estimate"),
    "nsr --objective w-reinforce": (lambda p, G: 1.1, "W-REINFORCE (1 + λ)"),
    "nsr --objective reinforce": (lambda p, G: 2.0, "no baseline needed"),
    "reinforce_pp (batch = one group)": (lambda p, G: group_mean_factor(G, p, whitened(G)), "batch std"),
    "reinforce_pp --baseline group": (lambda p, G: group_mean_factor(G, p, whitened(G)), "batch std"),
    "rlcr (0/1 correctness, fixed confidence)": (lambda p, G: (G - 1) / G, "(G − 1)/G"),
    "topr (π = μ, c = 0)": (lambda p, G: 2.0, "unbiased there"),  # R = ±1: ∇E[R] = 2∇p
    "dapo (per kept group)": (
        lambda p, G: group_mean_factor(G, p, std(G, 5e-7)) / kept(G, p),
        "P(0 < correct < G)",
    ),
    "reinforce_ada, one round of M = n": (lambda p, G: (G - 1) / G, "pool"),
}


def test_every_configuration_has_a_claim():
    assert {est.label for est in estimators()} - {"reinforce_ada (N = 4, M = 8, n = 4)"} == set(CLAIMS)


@pytest.mark.parametrize("est", [e for e in estimators() if e.label in CLAIMS], ids=lambda e: e.label)
def test_the_factor_is_what_the_claim_states(est: Estimator):
    expected, words = CLAIMS[est.label]
    assert words in methods()[est.key].info.gradient_claim
    for G in (2, 3, 4) if est.factor_fn is None else (4,):
        for p in P_VALUES:
            assert est.factor(p, G) == pytest.approx(expected(p, G), rel=1e-5), (G, p)


def test_grpo_std_scaling_reweights_prompts_and_dapo_keeps_grpo_gradient_per_group():
    """GRPO's factor over Dr. GRPO's varies with p (a reweighting of prompts, not a constant); DAPO's gradient
    times P(kept) is GRPO's (the filter only drops groups with zero advantages)."""
    by_label = {est.label: est for est in estimators()}
    ratio = [by_label["grpo"].factor(p) / by_label["dr_grpo"].factor(p) for p in (0.05, 0.5)]
    assert ratio[0] > ratio[1] * 1.05
    for p in P_VALUES:
        assert by_label["dapo (per kept group)"].factor(p) * kept(4, p) == pytest.approx(
            by_label["grpo"].factor(p), rel=1e-5
        )


def test_reinforce_ada_is_biased_by_its_rounds():
    """The default rounds (N = 4, M = 8, n = 4, balanced exit) are not the on-policy (n − 1)/n: c(p) grows
    as p leaves 1/2 (rare outcomes are sought and kept at half the group); one round of M = n is Dr.
    GRPO's."""
    est = next(e for e in estimators() if e.label == "reinforce_ada (N = 4, M = 8, n = 4)")
    assert est.factor(0.1) > 2 * est.factor(0.5) and abs(est.factor(0.5) - 0.75) > 0.1
    assert "biased by design" in methods()["reinforce_ada"].info.gradient_claim


# ------------------------------------------------------------------------------------------------------------
# Monte-Carlo through the files' own update_policy on a real model whose completions are enumerated

B, G, CHUNKS, L_MAX = 16384, 4, 16, 2


class RecordingOptimizer:
    """Takes no step: records the gradient of every step."""

    def __init__(self, model):
        self.model, self.grads = model, []

    def step(self):
        self.grads.append(torch.cat([p.grad.flatten().clone() for p in self.model.parameters()]))

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=set_to_none)


@pytest.fixture(scope="module")
def world(random_model_dir):
    """The random model, one prompt, every completion of at most 2 tokens (EOS ends one early) with its exact
    probability, a reward r = [t1 + t2 ≡ 0 mod 3] (0 when EOS comes first), and B completions sampled from
    them."""
    from common.model import load_policy
    from common.rollout_types import Rollout

    model, tok = load_policy(str(random_model_dir))
    eos = tok.eos_token_id
    prompt = torch.tensor(tok("1+1=")["input_ids"])  # [P]
    V = model.get_output_embeddings().weight.shape[0]
    logp1 = torch.log_softmax(model(prompt[None]).logits[0, -1].float(), -1)  # [V]
    second = torch.cat([prompt.expand(V, -1), torch.arange(V)[:, None]], dim=1)  # [V, P + 1]
    logp2 = torch.log_softmax(model(second).logits[:, -1].float(), -1)  # [V, V]
    first_is_eos = torch.arange(V) == eos
    seq_logp = torch.where(first_is_eos[:, None], logp1[:, None], logp1[:, None] + logp2)  # [V, V]
    seq_logp = torch.where(first_is_eos[:, None] & (torch.arange(V) != eos)[None], -math.inf, seq_logp)
    ids = torch.arange(V)
    reward = (((ids[:, None] + ids[None]) % 3 == 0) & ~first_is_eos[:, None]).double()  # [V, V]
    length = torch.where(first_is_eos[:, None], 1.0, 2.0).expand(V, V).double()
    pi = seq_logp.exp()
    pairs = [(r, n) for r in (0.0, 1.0) for n in (1.0, 2.0) if (pi[(reward == r) & (length == n)].sum() > 0)]
    q = torch.stack([pi[(reward == r) & (length == n)].sum() for r, n in pairs]).double()
    rewards, lengths = torch.tensor(pairs, dtype=torch.float64).T

    def draw(count, n, generator):
        """``count`` completions drawn from π as a Rollout in groups of ``n``, each decoded as its reward."""
        drawn = torch.multinomial(pi.detach().flatten(), count, replacement=True, generator=generator)
        t1, t2 = drawn // V, drawn % V
        completion = torch.stack([t1, t2], dim=1)  # [count, 2]: after an EOS the pad token (= EOS)
        mask = torch.stack([torch.ones(count), (t1 != eos).float()], dim=1)  # [count, 2]
        behavior = torch.stack([logp1[t1], torch.where(t1 != eos, logp2[t1, t2], 0.0)], dim=1).detach()
        return Rollout(
            prompt.expand(count, -1).clone(),
            torch.ones(count, len(prompt), dtype=torch.long),
            completion,
            mask,
            behavior,
            (t1 != eos) & (t2 != eos),
            [str(int(r)) for r in reward[t1, t2].tolist()],
            torch.arange(count // n).repeat_interleave(n),
        )

    rollout = draw(B, G, torch.Generator().manual_seed(0))
    return {
        "model": model,
        "q": q,
        "rewards": rewards,
        "lengths": lengths,
        "rollout": rollout,
        "true": flat_grad(model, (q * rewards).sum()),
        "sample_rewards": torch.tensor([float(c) for c in rollout.completions]).view(-1, G),
        "draw": draw,
        "pad_id": tok.pad_token_id,
    }


def flat_grad(model, scalar):
    grads = torch.autograd.grad(scalar, list(model.parameters()), retain_graph=True, allow_unused=True)
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, model.parameters())]
    ).double()


def monte_carlo(case, module, world, args):
    """ĝ of one update on the whole batch (micro-batched), and ``CHUNKS`` independent updates on its parts
    (whole groups each) for the standard error; both as the ascent direction −∇loss."""
    rollout, rewards = world["rollout"], world["sample_rewards"]

    def batch_for(groups):
        rows = (groups[:, None] * G + torch.arange(G)).view(-1)
        return case.build(module, rollout.select(rows), rewards[groups])

    return updates(module, world["model"], args, batch_for)


def updates(module, model, args, batch_for):
    """The file's update on ``batch_for(every group)``, and on ``CHUNKS`` parts of whole groups."""

    def one_update(groups):
        recorder = RecordingOptimizer(model)
        module.update_policy(model, recorder, batch_for(groups), args)
        assert len(recorder.grads) == 1
        return -recorder.grads[0].double()

    groups = torch.arange(B // G)
    return one_update(groups), torch.stack([one_update(part) for part in groups.tensor_split(CHUNKS)])


def z_scores(estimate, parts, exact, true):
    """(ĝ − E[ĝ])·u / se(ĝ·u) along E[ĝ], ∇J and two random directions."""
    gen = torch.Generator().manual_seed(1)
    directions = [exact, true, *torch.randn(2, len(exact), generator=gen, dtype=torch.float64)]
    out = []
    for u in directions:
        u = u / u.norm()
        se = (parts @ u).std() / math.sqrt(len(parts))
        out.append(float((estimate - exact) @ u / se))
    return out


def advantages_of(advantage):
    """The batch of an advantage file: ``advantage(module, rewards [Q, G]) -> [Q, G]``."""
    return lambda module, rollout, rewards: {
        "rollout": rollout,
        "advantages": advantage(module, rewards).view(-1),
    }


def nft_batch(module, rollout, rewards):
    """nft.py's batch as its main() builds it: the mixed groups' rows, their correctness and correct rate."""
    rate, keep_group = module.correct_rates(rewards)
    keep = keep_group.repeat_interleave(G)
    return {
        "rollout": rollout.select(keep),
        "correct": rewards.reshape(-1)[keep],
        "correct_rate": rate.repeat_interleave(G)[keep],
        "num_sampled": len(keep),
    }


@dataclass(frozen=True)
class MCCase:
    key: str
    build: Callable
    """(module, rollout, rewards [Q, G]) -> the batch its update_policy reads"""
    weight: Callable
    """(module, rewards [N, G], lengths [N, G], mean length) -> w [N, G]: the advantage (the file's own
    function) times its aggregation's weight; token-mean's 1/Σ|o| is taken at its large-batch limit
    1/(B·E|o|), a relative bias O(1/B) far below the standard error"""
    flags: dict = field(default_factory=dict)
    coefficients: Callable | None = None
    """(module, world) -> coef [V] over the world's classes, in place of ``weight``'s conditioning (tier 2's
    patterns; a fit to the whole batch)"""


def dr_grpo_weight(module, r, n, mean_length):
    return methods()["dr_grpo"].module.dr_grpo_advantages(r.float()).double() / (G * L_MAX)


MC_CASES = {
    # GRPO's default seq-mean-token-mean: A/(G·|o|)
    "grpo": MCCase(
        "grpo",
        advantages_of(lambda m, r: m.grpo_advantages(r)),
        lambda m, r, n, e: m.grpo_advantages(r.float()).double() / (G * n),
    ),
    # Dr. GRPO's seq-mean-token-sum-norm: A/(G·L_max)
    "dr_grpo": MCCase("dr_grpo", advantages_of(lambda m, r: m.dr_grpo_advantages(r)), dr_grpo_weight),
    # RLOO with seq-mean-token-sum: unbiased, E[ĝ] = ∇J
    "rloo": MCCase(
        "rloo",
        advantages_of(lambda m, r: m.rloo_advantages(r)),
        lambda m, r, n, e: m.rloo_advantages(r.float()).double() / G,
        {"loss_agg": "seq-mean-token-sum"},
    ),
    # Kimi's own loss at ρ = 1 (one mini-batch), seq-mean-token-sum, the group mean without std: A/G
    "kimi": MCCase(
        "kimi",
        advantages_of(lambda m, r: m.grpo_advantages(r, "none")),
        lambda m, r, n, e: m.grpo_advantages(r.float(), "none").double() / G,
        {"num_mini_batches": 1},
    ),
    # DPPO's masked surrogate at ρ = 1 (one mini-batch), seq-mean-token-sum-norm: A/(G·L_max)
    "dppo": MCCase(
        "dppo",
        advantages_of(lambda m, r: m.grpo_advantages(r, "none")),
        dr_grpo_weight,
        {"num_mini_batches": 1},
    ),
    # GSPO's sequence ratio at ρ = 1 (one mini-batch): GRPO's gradient, seq-mean-token-mean
    "gspo": MCCase(
        "gspo",
        advantages_of(lambda m, r: m.grpo_advantages(r)),
        lambda m, r, n, e: m.grpo_advantages(r.float()).double() / (G * n),
        {"num_mini_batches": 1},
    ),
    # GMPO's geometric mean at ρ = 1 (one mini-batch) and SAPO's gate at ρ = 1: GRPO's, seq-mean-token-mean
    **{
        key: MCCase(
            key,
            advantages_of(lambda m, r: m.grpo_advantages(r)),
            lambda m, r, n, e: m.grpo_advantages(r.float()).double() / (G * n),
            {"num_mini_batches": 1},
        )
        for key in ("gmpo", "sapo")
    },
    # CISPO's detached weight at ρ = 1 (one mini-batch): GRPO's advantage, token-mean
    "cispo": MCCase(
        "cispo",
        advantages_of(lambda m, r: m.grpo_advantages(r)),
        lambda m, r, n, e: m.grpo_advantages(r.float()).double() / (G * e),
        {"num_mini_batches": 1},
    ),
    # REC's default OneSide-NoIS on the policy (the sampler synced every step): −(r − mean) log π, token-mean
    "rec": MCCase(
        "rec",
        advantages_of(lambda m, r: m.grpo_advantages(r, "none")),
        lambda m, r, n, e: m.grpo_advantages(r.float(), "none").double() / (G * e),
        {"sync_interval": 1},
    ),
    # MaxRL: (r − μ)/μ, token-mean
    "maxrl": MCCase(
        "maxrl",
        advantages_of(lambda m, r: m.maxrl_advantages(r)),
        lambda m, r, n, e: m.maxrl_advantages(r.float()).double() / (G * e),
    ),
    # NSR's default W-REINFORCE (every sample kept): λ or −1, token-mean
    "nsr": MCCase(
        "nsr",
        advantages_of(lambda m, r: m.nsr_advantages(r.view(-1), "w-reinforce", 0.1)[0]),
        lambda m, r, n, e: (
            m.nsr_advantages(r.reshape(-1), "w-reinforce", 0.1)[0].view(r.shape).double() / (G * e)
        ),
    ),
    # NFT at R = 1 (one mini-batch) through its own batch: the identity with Dr. GRPO's expectation
    "nft": MCCase("nft", nft_batch, dr_grpo_weight, {"num_mini_batches": 1}),
    # TOPR at π = μ (one pass, one mini-batch), its own dataset of ±1 rewards, seq-mean-token-sum: (R − c)/G
    "topr": MCCase(
        "topr",
        lambda m, rollout, r: m.build_dataset(rollout, r.bool(), m.Args()),
        lambda m, r, n, e: (2 * r - 1 - m.Args().reward_baseline) / G,
        {"updates_per_batch": 1, "num_mini_batches": 1},
    ),
    # DAPO (tier 2): the filter, ±1 rewards, GRPO's advantage of the kept groups, token-mean over their tokens
    "dapo": MCCase(
        "dapo",
        lambda m, rollout, r: dapo_batch(m, rollout, r),
        None,
        coefficients=lambda m, w: dapo_coefficients(m, w["rewards"], w["lengths"], w["q"].detach()),
    ),
    # BNPO: (α, β) fitted to the batch's pass rates (each part of the batch fits its own), seq-mean-token-sum;
    # exact at the fit of the whole batch (its large-batch limit α = 1 + p, β = 2 − p for G = 4)
    "bnpo": MCCase(
        "bnpo",
        advantages_of(lambda m, r: m.decomposed_advantages(r[None])[0]),
        None,
        coefficients=lambda m, w: bnpo_coefficients(m, w),
    ),
    # REINFORCE++ (no reference model: no KL reward): returns whitened over every token of the batch (each
    # part whitens over its own), seq-mean-token-mean; exact at the whole batch's whitening
    "reinforce_pp": MCCase(
        "reinforce_pp",
        lambda m, rollout, r: {"rollout": rollout, "advantages": reinforce_pp_advantages(m, rollout, r)},
        None,
        coefficients=lambda m, w: reinforce_pp_coefficients(m, w),
    ),
    # RLCR: its calibrated reward (every completion states confidence 0.7), Dr. GRPO's advantage, token-mean
    "rlcr": MCCase(
        "rlcr",
        advantages_of(lambda m, r: m.grpo_advantages(rlcr_reward(m, r), m.Args().scale_rewards)),
        lambda m, r, n, e: m.grpo_advantages(rlcr_reward(m, r), m.Args().scale_rewards).double() / (G * e),
    ),
}


def rlcr_reward(module, correct):
    """rlcr.py's reward of 0/1 correctness ``[N, G]`` with a stated confidence of 0.7 everywhere."""
    confidence = torch.full(correct.shape, 0.7, dtype=torch.float64).view(-1)
    return module.rlcr_rewards(correct.bool().view(-1), confidence).float().view(correct.shape)


def reinforce_pp_advantages(module, rollout, rewards):
    """reinforce_pp.py's advantages ``[B, C]`` as its main() builds them without a reference model."""
    mask = rollout.completion_mask
    token_rewards = module.kl_folded_rewards(rewards.view(-1), torch.zeros_like(mask), mask, 0.0)
    return module.reinforce_pp_advantages(token_rewards, mask, module.Args().gamma)


def reinforce_pp_coefficients(module, world):
    """The whole batch's whitened advantage of a right and a wrong answer (a function of the own reward
    only, at its large-batch limit), over G·|o| (seq-mean-token-mean)."""
    full = reinforce_pp_advantages(module, world["rollout"], world["sample_rewards"])[:, 0].double()  # [B]
    right = world["sample_rewards"].view(-1) == 1
    value = {1.0: float(full[right][0]), 0.0: float(full[~right][0])}

    def weights(r, n):
        return torch.where(r == 1, value[1.0], value[0.0]) / (G * n)

    return tier1_coefficients(weights, world["rewards"], world["lengths"], world["q"], G)


def bnpo_coefficients(module, world):
    alpha, beta = module.beta_params(world["sample_rewards"].mean(dim=1))

    def weights(r, n):
        return module.bnpo_advantages(r.float(), alpha, beta).double() / G

    return tier1_coefficients(weights, world["rewards"], world["lengths"], world["q"], G)


def dapo_batch(module, rollout, correct):
    """dapo.py's batch as its main() builds it from one round: the groups of mixed outcome, their ±1 rewards'
    GRPO advantages (no length penalty: cache 0)."""
    lengths = rollout.completion_mask.sum(-1).view(-1, G)  # [Q, G]
    keep = module.keep_groups(correct)  # [Q]
    rewards = module.dapo_rewards(correct, lengths, L_MAX, 0)  # [Q, G]
    advantages = module.grpo_advantages(rewards[keep]).view(-1)
    return {"rollout": rollout.select(keep.repeat_interleave(G)), "advantages": advantages}


def dapo_coefficients(module, rewards, lengths, q):
    """E[ĝ] over the group's patterns at the large-batch limit of token-mean over the kept groups' tokens:
    E[Σ_i A_i 1{kept} ∇log π(y_i)] / E[Σ_i |o_i| 1{kept}] (the numerator by pattern_coefficients)."""
    groups, prob = enumerate_groups(q, G)
    kept_tokens = float((prob * module.keep_groups(rewards[groups]) * lengths[groups].sum(1)).sum().detach())

    def weights(r, n):
        correct = r > 0
        keep = module.keep_groups(correct.float())[:, None]
        shaped = module.dapo_rewards(correct, n.long(), L_MAX, 0)
        return module.grpo_advantages(shaped.float()).double() * keep

    return pattern_coefficients(weights, rewards, lengths, q, G) / kept_tokens


def exact_expectation(case, module, world):
    q, lengths = world["q"], world["lengths"]
    if case.coefficients is not None:
        coef = case.coefficients(module, world)
    else:
        mean_length = float((q * lengths).sum().detach() / q.sum().detach())
        weights = lambda r, n: case.weight(module, r, n, mean_length)  # noqa: E731
        coef = tier1_coefficients(weights, world["rewards"], lengths, q, G)
    return flat_grad(world["model"], (coef.detach() * q).sum())


@pytest.mark.parametrize("name", list(MC_CASES))
def test_update_policy_matches_the_exact_expectation(world, name):
    case = MC_CASES[name]
    module = methods()[case.key].module
    args = module.Args(max_new_tokens=L_MAX, micro_batch_size=1000, max_grad_norm=1e9, **case.flags)
    estimate, parts = monte_carlo(case, module, world, args)
    exact = exact_expectation(case, module, world)
    z = z_scores(estimate, parts, exact, world["true"])
    assert max(abs(v) for v in z) < 5, z
    if name == "rloo":  # the claim itself: unbiased for ∇J
        assert torch.allclose(exact, world["true"], atol=1e-6 * world["true"].norm())
    if name == "rlcr":  # (G − 1)/G of ∇E[R] = (R₁ − R₀)∇J, over E|o| (token-mean)
        rlcr = methods()["rlcr"].module
        span = float(rlcr_reward(rlcr, torch.ones(1, 1)) - rlcr_reward(rlcr, torch.zeros(1, 1)))
        q, lengths = world["q"].detach(), world["lengths"]
        expected = (G - 1) / G * span * world["true"] / float((q * lengths).sum() / q.sum())
        assert (exact - expected).norm() < 1e-4 * expected.norm()
    if name == "topr":  # unbiased at π = μ for ∇E[R] with R = ±1, i.e. 2∇J
        assert (exact - 2 * world["true"]).norm() < 1e-4 * world["true"].norm()  # Σ_c ∇q_c = 0 in float32


def test_a_factor_two_normalisation_bug_is_caught(world, monkeypatch):
    """grpo.py with its aggregation dividing by twice the sequences (as a mini-batch normalised by a wrong
    count would): the same check rejects it by far more than 5 standard errors."""
    case = MC_CASES["grpo"]
    module = methods()["grpo"].module
    right = module.aggregate_loss
    monkeypatch.setattr(module, "aggregate_loss", lambda *a, **k: right(*a, **k) / 2)
    args = module.Args(max_new_tokens=L_MAX, micro_batch_size=1000, max_grad_norm=1e9)
    estimate, parts = monte_carlo(case, module, world, args)
    z = z_scores(estimate, parts, exact_expectation(case, module, world), world["true"])
    assert abs(z[0]) > 5, z  # about 18 at this batch (the check itself: within 5)


class EnumeratedSampler:
    """The sampler interface (``generate``) drawing from the enumerated π (Reinforce-Ada's rounds use it)."""

    def __init__(self, draw, seed=0):
        self.draw, self.generator = draw, torch.Generator().manual_seed(seed)

    def generate(self, prompts, n, max_new_tokens, temperature=1.0, top_p=1.0):
        return self.draw(len(prompts) * n, n, self.generator)


class RewardVerifier:
    """A verifier of the sampler's completions, which are their own rewards ("1" or "0")."""

    def verify_batch(self, completions, golds):
        return [types.SimpleNamespace(correct=c == "1") for c in completions]


def test_reinforce_ada_rounds_and_update_match_the_enumerated_chain(world):
    """Tier 2 through reinforce_ada.py's own ``adaptive_rollout`` (rounds of M = 8 until a balanced pool, then
    down-sampling to n = 4 and the pool-mean advantage) and ``update_policy`` (token-mean): within 5 standard
    errors of the exact chain of ``bench.gradients.reinforce_ada_moments``, with each kept positive a draw of
    π restricted to the positives and token-mean at its large-batch limit E[Σ_kept |o|]."""
    ada = methods()["reinforce_ada"].module
    args = ada.Args(max_new_tokens=L_MAX, micro_batch_size=1000, max_grad_norm=1e9, num_mini_batches=1)
    assert args.group_size == G and args.updates_per_batch == 1
    Q = B // G
    rollout, rewards, _, pool = ada.adaptive_rollout(
        EnumeratedSampler(world["draw"]), RewardVerifier(), ["1+1="] * Q, ["1"] * Q, args, world["pad_id"]
    )
    advantages = ada.pool_mean_advantages(
        rewards, pool["positives"][:, None], pool["seen"][:, None]
    )  # [Q, G]

    def batch_for(groups):
        rows = (groups[:, None] * G + torch.arange(G)).view(-1)
        return {"rollout": rollout.select(rows), "advantages": advantages[groups].view(-1)}

    estimate, parts = updates(ada, world["model"], args, batch_for)

    q, classes, lengths = world["q"].detach(), world["rewards"], world["lengths"]
    p = float(q[classes == 1].sum())
    m = reinforce_ada_moments(p, G, args.rounds, args.round_repeat, args.exit_rule)
    coef = torch.where(classes == 1, m["positive_advantage"] / p, m["negative_advantage"] / (1 - p))
    mean_length = {r: float((q * lengths)[classes == r].sum() / q[classes == r].sum()) for r in (0, 1)}
    tokens = m["positives"] * mean_length[1] + m["negatives"] * mean_length[0]  # E[Σ_kept |o|] per prompt
    exact = flat_grad(world["model"], (coef * world["q"]).sum() / tokens)
    z = z_scores(estimate, parts, exact, world["true"])
    assert max(abs(v) for v in z) < 5, z
    on_policy = (
        (G - 1) / G * world["true"] * G / tokens
    )  # what n on-policy samples with their mean would give
    assert abs(z_scores(estimate, parts, on_policy, world["true"])[0]) > 5  # the rounds' bias is measurable

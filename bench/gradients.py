"""Exact expected gradients of the tier-1 and tier-2 methods on a policy small enough to enumerate (issue 24).

    PYTHONPATH=. .venv/bin/python -m bench.gradients      # rewrites the generated table of docs/gradients.md

The setting: one prompt, a completion y drawn from π_θ with a reward r(y) and a length ℓ(y); G i.i.d. draws
per group. A *class* c is a distinct (reward, length) pair and q_c = P(class c) under π_θ. Every estimator
here is an ascent direction ĝ = Σ_i w_i ∇log π(y_i) (−∇ of the loss), w_i the sample's advantage times its
aggregation weight (1/G for a mean over sequences), a function of the outcomes only. Given the outcomes, a
sample of class c is a draw of π restricted to c, so E[∇log π(y) | c] = ∇q_c / q_c and

    E[ĝ] = Σ_c coef_c ∇q_c,      coef_c = E[Σ_i w_i 1{c_i = c}] / q_c,       ∇J = Σ_c r_c ∇q_c.

Tier 1 (an advantage from the group's rewards): coef_c = G · E[w_1 | c_1 = c], the other G − 1 samples
enumerated over the classes (for 0/1 rewards of one length: the binomial over the others' successes).
Tier 2 (sampling that depends on outcomes): the outcome patterns of the sampler are enumerated (DAPO's filter:
the classes of the whole group; Reinforce-Ada: the pool's counts, round by round).

With 0/1 rewards and one length, ∇q_1 = ∇p = −∇q_0, so E[ĝ] = c(p)·∇p, the *factor* c(p) = coef_1 − coef_0:
the whole bias of a method on one prompt is that scalar (1: unbiased; a factor that varies with p reweights
prompts, as GRPO's 1/std). ``estimators()`` holds each method's w from its own file's functions (at ρ = 1 for
the methods whose loss is not an advantage times log π: the weight is −∂loss/∂log π at log π = log π_old).
"""

from __future__ import annotations

import itertools
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from common.registry import methods

DOC = Path(__file__).resolve().parent.parent / "docs" / "gradients.md"
P_GRID = (0.1, 0.25, 0.5, 0.75, 0.9)

# ------------------------------------------------------------------------------------------------------------
# The enumeration


def enumerate_groups(q: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every tuple of ``size`` classes and its probability: ``q [V]`` -> ``(classes [T, size], prob [T])``,
    T = V^size.

    >>> enumerate_groups(torch.tensor([0.25, 0.75], dtype=torch.float64), 2)[1].tolist()
    [0.0625, 0.1875, 0.1875, 0.5625]
    """
    classes = torch.tensor(list(itertools.product(range(len(q)), repeat=size)), dtype=torch.long)
    classes = classes.view(-1, size)  # [V^size, size] (size 0: one empty tuple)
    return classes, q[classes].prod(dim=1)


WeightFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(rewards [N, G], lengths [N, G]) -> w [N, G]``: each sample's weight in ĝ = Σ_i w_i ∇log π(y_i)."""


def tier1_coefficients(
    weights: WeightFn, rewards: torch.Tensor, lengths: torch.Tensor, q: torch.Tensor, G: int
):
    """coef_c = G · E[w_1 | c_1 = c], conditioning on the first sample's class, the other G − 1 enumerated.
    ``rewards [V]``, ``lengths [V]``, ``q [V]`` of the classes -> ``coef [V]``."""
    others, prob = enumerate_groups(q, G - 1)  # [T, G − 1], [T]
    V, T = len(q), len(prob)
    first = torch.arange(V).repeat_interleave(T)[:, None]  # [V·T, 1]
    groups = torch.cat([first, others.repeat(V, 1)], dim=1)  # [V·T, G]
    w = weights(rewards[groups], lengths[groups])[:, 0].view(V, T)  # [V, T] the first sample's weight
    return G * (w * prob).sum(dim=1)


def pattern_coefficients(
    weights: WeightFn, rewards: torch.Tensor, lengths: torch.Tensor, q: torch.Tensor, G: int
):
    """coef_c = E[Σ_i w_i 1{c_i = c}] / q_c over every pattern of G classes (the tier-2 form; for a tier-1
    weight it equals ``tier1_coefficients``). Returns ``coef [V]``."""
    groups, prob = enumerate_groups(q, G)  # [V^G, G], [V^G]
    w = weights(rewards[groups], lengths[groups])  # [V^G, G]
    onehot = torch.nn.functional.one_hot(groups, len(q)).to(w.dtype)  # [V^G, G, V]
    return torch.einsum("n,ng,ngv->v", prob, w, onehot) / q


def binary(p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The classes of 0/1 rewards of one length: ``(rewards, lengths, q)`` = ([0, 1], [1, 1], [1 − p, p])."""
    return (
        torch.tensor([0.0, 1.0], dtype=torch.float64),
        torch.ones(2, dtype=torch.float64),
        torch.tensor([1 - p, p], dtype=torch.float64),
    )


# ------------------------------------------------------------------------------------------------------------
# Each method's sample weight, from its own file (Q = 1: the batch is one group; one token per completion)


def per_group(fn: Callable[[torch.Tensor], torch.Tensor]) -> WeightFn:
    """A weight from an advantage function of one batch ``[1, G] -> [1, G]`` (a batch-level fit such as BNPO's
    Beta or REINFORCE++'s whitening sees one prompt's group), divided by G (the mean over sequences)."""

    def weights(rewards: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        rows = [fn(r[None].float()).double().view(-1) for r in rewards]
        return torch.stack(rows) / rewards.shape[1]

    return weights


def at_ratio_one(loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> WeightFn:
    """w = −∂loss/∂log π at log π = log π_old (ρ = 1), one token per completion, over G (the sequence mean):
    ``loss(logprobs [N·G, 1], old [N·G, 1], rewards [N, G]) -> per-token loss [N·G, 1]``."""

    def weights(rewards: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        N, G = rewards.shape
        logprobs = torch.full((N * G, 1), -1.0, requires_grad=True)
        loss(logprobs, logprobs.detach(), rewards.float()).sum().backward()
        return -logprobs.grad.double().view(N, G) / G

    return weights


def _algos():
    return {key: method.module for key, method in methods().items()}


def dapo_weights(rewards: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """DAPO on one prompt's group: ±1 rewards (no length penalty at these lengths), GRPO's advantage, and the
    dynamic-sampling filter (a group of equal outcomes weighs 0). The batch is refilled from kept groups:
    divide by P(kept) for the gradient per kept group (``dapo_kept_probability``)."""
    dapo = _algos()["dapo"]
    correct = rewards > 0
    shaped = dapo.dapo_rewards(correct, lengths.long(), max_len=80, cache_len=0)  # [N, G]
    keep = dapo.keep_groups(correct.float())  # [N]
    return (dapo.grpo_advantages(shaped.float()).double() * keep[:, None]) / rewards.shape[1]


def dapo_kept_probability(q: torch.Tensor, G: int) -> float:
    """P(the filter keeps a group) = P(0 < correct < G), by enumerating the group's patterns."""
    groups, prob = enumerate_groups(q, G)
    return float((prob * _algos()["dapo"].keep_groups(groups.double())).sum())


def reinforce_ada_moments(
    p: float, n: int = 4, rounds: int = 4, per_round: int = 8, exit_rule: str = "balanced"
) -> dict[str, float]:
    """Reinforce-Ada on one prompt of pass rate p, exactly: the pool's (positives, negatives, exited) over the
    rounds (each round draws M = ``per_round`` more while the prompt has not exited: a binomial), then the
    file's down-sampling and pool-mean advantage. Returns the expectations of the kept positives' and
    negatives' advantage sums (``positive_advantage``, ``negative_advantage``) and counts (``positives``,
    ``negatives``)."""
    ada = _algos()["reinforce_ada"]
    states = {(0, 0, False): 1.0}
    for _ in range(rounds):
        nxt: dict[tuple[int, int, bool], float] = {}
        for (pos, neg, exited), prob in states.items():
            if exited:
                nxt[(pos, neg, True)] = nxt.get((pos, neg, True), 0.0) + prob
                continue
            for k in range(per_round + 1):
                pk = prob * math.comb(per_round, k) * p**k * (1 - p) ** (per_round - k)
                P, N = pos + k, neg + per_round - k
                key = (P, N, ada.exit_reached(P, N, n, exit_rule))
                nxt[key] = nxt.get(key, 0.0) + pk
        states = nxt
    out = dict.fromkeys(("positive_advantage", "negative_advantage", "positives", "negatives"), 0.0)
    for (P, N, exited), prob in states.items():
        k_pos, k_neg = ada.downsample_counts(P, N, n, exit_rule, exited)
        kept = torch.tensor([1.0] * k_pos + [0.0] * k_neg)
        adv = ada.pool_mean_advantages(kept, torch.full_like(kept, P), torch.full_like(kept, P + N)).double()
        out["positive_advantage"] += prob * float(adv[:k_pos].sum())
        out["negative_advantage"] += prob * float(adv[k_pos:].sum())
        out["positives"] += prob * k_pos
        out["negatives"] += prob * k_neg
    return out


def reinforce_ada_factor(p: float, n: int = 4, **rounds) -> float:
    """Reinforce-Ada's factor c(p): a kept positive is a draw of π restricted to the positives (the first ones
    drawn, whatever they are), so E[ĝ] = (E[Σ_pos A]/p − E[Σ_neg A]/(1 − p)) / n · ∇p (token-mean over n kept
    completions of one length: the mean over sequences)."""
    m = reinforce_ada_moments(p, n, **rounds)
    return (m["positive_advantage"] / p - m["negative_advantage"] / (1 - p)) / n


@dataclass(frozen=True)
class Estimator:
    key: str
    """the registry key (the file's stem)"""
    label: str
    """the configuration, as the table shows it"""
    weights: WeightFn | None = None
    """the tier-1 (or tier-2 pattern) sample weight; None where ``factor`` is computed directly"""
    factor_fn: Callable[[float, int], float] | None = None
    """a direct c(p, G) (Reinforce-Ada's rounds)"""
    conditional_on_kept: bool = False
    """tier 2, DAPO: the gradient per kept group (divided by P(kept))"""

    def coefficients(self, rewards, lengths, q, G) -> torch.Tensor:
        """coef [V] of E[ĝ] = Σ_c coef_c ∇q_c: tier 1 by conditioning, DAPO by its patterns over P(kept)."""
        if not self.conditional_on_kept:
            return tier1_coefficients(self.weights, rewards, lengths, q, G)
        return pattern_coefficients(self.weights, rewards, lengths, q, G) / dapo_kept_probability(q, G)

    def factor(self, p: float, G: int = 4) -> float:
        """c(p): E[ĝ] = c(p)·∇p for 0/1 rewards of one length."""
        if self.factor_fn is not None:
            return self.factor_fn(p, G)
        coef = self.coefficients(*binary(p), G)
        return float(coef[1] - coef[0])


def estimators() -> list[Estimator]:
    """Every tier-1 and tier-2 method's estimator, by the file's own functions and defaults (and a few
    variants its claim names)."""
    a = _algos()

    def grpo_adv(module, scale="group"):
        return per_group(lambda r: module.grpo_advantages(r, scale))

    def loss_of(key, make):  # make(module, args, logprobs, old, rewards) -> per-token loss
        module = a[key]
        return at_ratio_one(lambda lp, old, r: make(module, module.Args(), lp, old, r))

    def flat(adv):  # [N, G] -> [N·G] per-completion advantages
        return adv.reshape(-1)

    def nsr(objective):
        return per_group(
            lambda r: (
                a["nsr"].nsr_advantages(r.view(-1), objective, a["nsr"].Args().positive_weight)[0].view(1, -1)
            )
        )

    def rpp(r):
        return a["reinforce_pp"].reinforce_pp_advantages(r.view(-1, 1), torch.ones(r.numel(), 1)).view(1, -1)

    def rpp_group(r):
        return a["reinforce_pp"].reinforce_pp_baseline_advantages(r, torch.ones(r.numel(), 1)).view(1, -1)

    def bnpo(r, fixed=None):
        alpha, beta = fixed or a["bnpo"].beta_params(r.mean(dim=1))  # Q = 1: the fit's fallback α = β = 1
        return a["bnpo"].bnpo_advantages(r, alpha, beta)

    def nft(module, args, lp, old, r):
        rate, keep = module.correct_rates(r)  # [N], [N]
        loss, _ = module.nft_loss(
            lp, old, r.reshape(-1), rate.repeat_interleave(r.shape[1]), args.neg_weight, args.normalize
        )
        return loss * keep.repeat_interleave(r.shape[1])[:, None]  # the filtered groups leave the update

    def dppo(module, args, lp, old, r):
        delta = {"tv": args.tv_threshold, "kl": args.kl_threshold}.get(args.divergence)
        low, high = (args.clip_low, args.clip_high) if delta is None else (delta, delta)
        adv = flat(module.grpo_advantages(r, args.scale_rewards))
        return module.dppo_surrogate(lp, old, adv, args.divergence, low, high)[0]

    def gspo(module, args, lp, old, r):
        log_ratio = module.sequence_log_ratio(lp, old, torch.ones_like(lp), args.gspo_token)
        adv = flat(module.grpo_advantages(r, args.scale_rewards))
        return module.clipped_surrogate(
            log_ratio, torch.zeros_like(log_ratio), adv, args.seq_clip_low, args.seq_clip_high
        )[0]

    def topr(module, args, lp, old, r):
        signed = torch.where(r.reshape(-1) > 0, 1.0, -1.0)  # ±1 rewards; uniform curation keeps every row
        return module.topr_token_loss(lp, module.topr_weights(lp, old, signed), signed, args.reward_baseline)

    return [
        Estimator("bnpo", "bnpo (one prompt: the fit's α = β = 1)", per_group(bnpo)),
        Estimator("bnpo", "bnpo, α = β = 2 fixed", per_group(lambda r: bnpo(r, (2.0, 2.0)))),
        Estimator(
            "cispo",
            "cispo (ρ = 1)",
            loss_of(
                "cispo",
                lambda m, s, lp, old, r: m.cispo_loss(
                    lp, old, flat(m.grpo_advantages(r, s.scale_rewards)), s.is_clip_low, s.is_clip_high
                )[0],
            ),
        ),
        Estimator("dapo", "dapo (per kept group)", dapo_weights, conditional_on_kept=True),
        Estimator("dppo", "dppo (ρ = 1)", loss_of("dppo", dppo)),
        Estimator("dr_grpo", "dr_grpo", per_group(a["dr_grpo"].dr_grpo_advantages)),
        Estimator(
            "gmpo",
            "gmpo (ρ = 1)",
            loss_of(
                "gmpo",
                lambda m, s, lp, old, r: m.geometric_mean_surrogate(
                    lp, old, flat(m.grpo_advantages(r, s.scale_rewards)), torch.ones_like(lp), s.log_clip
                )[0],
            ),
        ),
        Estimator("grpo", "grpo", grpo_adv(a["grpo"])),
        Estimator("grpo", "grpo --scale-rewards none", grpo_adv(a["grpo"], "none")),
        Estimator("gspo", "gspo (ρ = 1)", loss_of("gspo", gspo)),
        Estimator(
            "kimi",
            "kimi (ρ = 1)",
            loss_of(
                "kimi",
                lambda m, s, lp, old, r: m.kimi_loss(
                    lp, old, flat(m.grpo_advantages(r, s.scale_rewards)), s.kimi_tau
                )[0],
            ),
        ),
        Estimator("maxrl", "maxrl", per_group(a["maxrl"].maxrl_advantages)),
        Estimator(
            "rec",
            "rec (ρ = 1)",
            loss_of(
                "rec",
                lambda m, s, lp, old, r: m.rec_loss(
                    lp,
                    old,
                    flat(m.grpo_advantages(r, s.scale_rewards)),
                    s.clip_low,
                    s.clip_high,
                    s.clip_mode,
                    s.importance_weight,
                )[0],
            ),
        ),
        Estimator("nft", "nft (R = 1)", loss_of("nft", nft)),
        *[
            Estimator("nsr", f"nsr --objective {o}", nsr(o))
            for o in ("w-reinforce", "psr", "nsr", "reinforce")
        ],
        Estimator("reinforce_pp", "reinforce_pp (batch = one group)", per_group(rpp)),
        Estimator("reinforce_pp", "reinforce_pp --baseline group", per_group(rpp_group)),
        Estimator(
            "reinforce_ada",
            "reinforce_ada (N = 4, M = 8, n = 4)",
            factor_fn=lambda p, G: reinforce_ada_factor(p, n=G),
        ),
        Estimator(
            "reinforce_ada",
            "reinforce_ada, one round of M = n",
            factor_fn=lambda p, G: reinforce_ada_factor(p, n=G, rounds=1, per_round=G),
        ),
        Estimator(
            "rlcr",
            "rlcr (0/1 correctness, fixed confidence)",
            grpo_adv(a["rlcr"], a["rlcr"].Args().scale_rewards),
        ),
        Estimator("rloo", "rloo", per_group(a["rloo"].rloo_advantages)),
        Estimator(
            "sapo",
            "sapo (ρ = 1)",
            loss_of(
                "sapo",
                lambda m, s, lp, old, r: m.soft_gated_surrogate(
                    lp, old, flat(m.grpo_advantages(r, s.scale_rewards)), s.tau_pos, s.tau_neg
                )[0],
            ),
        ),
        Estimator("topr", "topr (π = μ, c = 0)", loss_of("topr", topr)),
    ]


# ------------------------------------------------------------------------------------------------------------
# The table of docs/gradients.md


def table(G: int = 4) -> str:
    """Markdown: each configuration's tier and factor c(p) at G, then each tier-3 method's reason."""
    registry = methods()
    head = " | ".join(f"c({p})" for p in P_GRID)
    lines = [f"| configuration | tier | {head} |", "|---|---|" + "---|" * len(P_GRID)]
    for est in estimators():
        cells = " | ".join(f"{est.factor(p, G):.3f}" for p in P_GRID)
        lines.append(f"| `{est.label}` | {registry[est.key].info.gradient_tier} | {cells} |")
    lines += ["", "| method | tier | claim (the METHOD block's `gradient_claim`) |", "|---|---|---|"]
    for key, method in registry.items():
        claim = method.info.gradient_claim.replace("|", "\\|")  # a bar inside a cell would end it
        lines.append(f"| `{key}` | {method.info.gradient_tier} | {claim} |")
    return "\n".join(lines)


BEGIN, END = (
    "<!-- generated by bench/gradients.py: begin -->",
    "<!-- generated by bench/gradients.py: end -->",
)


def main() -> None:
    text = DOC.read_text()
    generated = f"{BEGIN}\n{table()}\n{END}"
    new = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: generated, text, flags=re.S)
    DOC.write_text(new)
    print(table())
    sys.stdout.flush()


if __name__ == "__main__":
    main()

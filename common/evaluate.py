"""Evaluation: the unbiased pass@k estimator, pass@k curves, and ``evaluate_policy`` (held-out pass@k of a
policy). Saving curves as JSON and PNG is ``common.tracking.save_pass_at_k``.

pass@k is the chance that at least one of k samples drawn (without replacement) from the n samples we
generated for a problem is correct. With c correct samples out of n, the unbiased estimator is
(Chen et al. 2021, "Evaluating Large Language Models Trained on Code", arXiv 2107.03374):

    pass@k = 1 - C(n - c, k) / C(n, k)

which we compute as a product of k-free factors so that large n (e.g. 1000) never overflows.

pass^k is the chance that ALL of k samples drawn (without replacement) from the n are correct: how
reliably a policy solves a problem rather than whether it can (Yao et al. 2024, "τ-bench", arXiv
2406.12045). Its unbiased estimator is

    pass^k = C(c, k) / C(n, k)

pass@1 = pass^1 is the plain success rate; as k grows, pass@k rises and pass^k falls.
"""

import math

from common.data import build_prompt
from common.rollout import HFSampler
from common.tracking import Progress
from common.verify import Verifier


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k for one problem with `c` correct out of `n` samples.

    Computes 1 - C(n-c, k) / C(n, k) as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which stays finite for any n.
    Returns 1.0 when n - c < k (every k-subset contains a correct sample).

    >>> pass_at_k(n=4, c=1, k=1)
    0.25
    >>> pass_at_k(n=4, c=1, k=2)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    0.5
    >>> pass_at_k(n=4, c=3, k=2)
    1.0
    """
    if n < 1 or c < 0 or k < 1:
        raise ValueError(f"pass_at_k needs n >= 1, c >= 0, k >= 1; got n={n}, c={c}, k={k}")
    if c > n:
        raise ValueError(f"pass_at_k: more correct samples than samples (c={c} > n={n})")
    if k > n:
        raise ValueError(f"pass_at_k: cannot draw k={k} samples out of n={n}; generate at least k samples")
    if n - c < k:
        return 1.0
    prob_all_wrong = math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))
    return 1.0 - prob_all_wrong


def pass_hat_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass^k for one problem with `c` correct out of `n` samples: the chance that
    k samples drawn without replacement are all correct.

    Computes C(c, k) / C(n, k) as prod_{i=0}^{k-1} (c - i) / (n - i). Returns 0.0 when c < k.

    >>> pass_hat_k(n=4, c=3, k=2)  # C(3,2)/C(4,2) = 3/6
    0.5
    >>> pass_hat_k(n=4, c=1, k=1), pass_hat_k(n=4, c=1, k=2), pass_hat_k(n=4, c=4, k=4)
    (0.25, 0.0, 1.0)
    """
    if n < 1 or c < 0 or k < 1:
        raise ValueError(f"pass_hat_k needs n >= 1, c >= 0, k >= 1; got n={n}, c={c}, k={k}")
    if c > n:
        raise ValueError(f"pass_hat_k: more correct samples than samples (c={c} > n={n})")
    if k > n:
        raise ValueError(f"pass_hat_k: cannot draw k={k} samples out of n={n}; generate at least k samples")
    return math.prod((c - i) / (n - i) for i in range(k)) if c >= k else 0.0


def default_ks(n: int) -> list[int]:
    """The k values of a pass@k curve: powers of two up to n, plus n itself.

    >>> default_ks(8)
    [1, 2, 4, 8]
    >>> default_ks(10)
    [1, 2, 4, 8, 10]
    """
    if n < 1:
        raise ValueError(f"default_ks needs n >= 1 samples per problem; got n={n}")
    ks = [2**j for j in range(n.bit_length())]
    if ks[-1] != n:
        ks.append(n)
    return ks


def pass_at_k_curve(correct_counts: list[int], n: int, ks: list[int] | None = None) -> dict[int, float]:
    """Mean pass@k over problems, for each k in `ks` (default: 1, 2, 4, ..., n).

    `correct_counts[j]` is the number of correct samples among the `n` generated for problem j.

    >>> pass_at_k_curve([0, 2], n=2)  # problem 0 never solved, problem 1 always
    {1: 0.5, 2: 0.5}
    >>> pass_at_k_curve([1, 1], n=2)
    {1: 0.5, 2: 1.0}
    """
    if not correct_counts:
        raise ValueError("pass_at_k_curve: correct_counts is empty (no problems were evaluated)")
    ks = default_ks(n) if ks is None else ks
    return {k: sum(pass_at_k(n, c, k) for c in correct_counts) / len(correct_counts) for k in ks}


def pass_hat_k_curve(correct_counts: list[int], n: int, ks: list[int] | None = None) -> dict[int, float]:
    """Mean pass^k over problems, for each k in `ks` (default: 1, 2, 4, ..., n).

    >>> pass_hat_k_curve([1, 2], n=2)  # problem 0 right once in 2, problem 1 always right
    {1: 0.75, 2: 0.5}
    """
    if not correct_counts:
        raise ValueError("pass_hat_k_curve: correct_counts is empty (no problems were evaluated)")
    ks = default_ks(n) if ks is None else ks
    return {k: sum(pass_hat_k(n, c, k) for c in correct_counts) / len(correct_counts) for k in ks}


def evaluate_policy(
    model,
    tokenizer,
    examples: list,
    n: int = 8,
    template: str = "plain",
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    top_p: float = 1.0,
    sampler=None,
    verifier=None,
    desc: str = "eval",
) -> dict:
    """Sample ``n`` completions per held-out example and report pass@k, overall and per category.

    ``examples`` are ``common.data.Example`` objects or dicts with ``question``/``answer``/``category``.
    Returns ``{"pass@1": .., "pass@2": .., ..., "pass@n": .., "mean_reward": .., "parsed_rate": ..,
    "truncated_rate": .., "curve": {k: pass@k}, "pass_hat_curve": {k: pass^k}, "per_category": {cat:
    {"pass@1", "pass@n", "count"}}, "correct_counts": [c per example, in order], "n": n, "num_problems":
    len(examples)}``. pass@1 equals the mean reward: it is the expected accuracy of one sample at this
    temperature.
    """

    def field(e, name):
        return e[name] if isinstance(e, dict) else getattr(e, name)

    sampler = sampler or HFSampler(model, tokenizer, compute_logprobs=False)
    own_verifier = verifier is None
    verifier = verifier or Verifier()
    correct_counts, parsed, truncated = [], 0, 0
    per_cat: dict[str, list[int]] = {}
    chunk = max(1, 512 // n)  # prompts per generate call
    progress = Progress(len(examples), desc=desc)
    try:
        for start in range(0, len(examples), chunk):
            batch = examples[start : start + chunk]
            prompts = [build_prompt(field(e, "question"), template, tokenizer) for e in batch]
            rollout = sampler.generate(
                prompts, n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p
            )
            golds = [field(e, "answer") for e in batch for _ in range(n)]
            results = verifier.verify_batch(rollout.completions, golds)
            parsed += sum(r.parsed for r in results)
            truncated += int(rollout.truncated.sum())
            for i, e in enumerate(batch):
                c = sum(r.correct for r in results[i * n : (i + 1) * n])
                correct_counts.append(c)
                per_cat.setdefault(field(e, "category") or "all", []).append(c)
            progress.update(len(batch))
    finally:
        progress.close()
        if own_verifier:
            verifier.close()
    curve = pass_at_k_curve(correct_counts, n)
    total = len(examples) * n
    out = {f"pass@{k}": v for k, v in curve.items()}
    out.update(
        mean_reward=sum(correct_counts) / total,
        parsed_rate=parsed / total,
        truncated_rate=truncated / total,
        curve=curve,
        pass_hat_curve=pass_hat_k_curve(correct_counts, n),
        per_category={
            cat: {
                "pass@1": sum(cs) / (len(cs) * n),
                f"pass@{n}": pass_at_k_curve(cs, n, [n])[n],
                "count": len(cs),
            }
            for cat, cs in sorted(per_cat.items())
        },
        correct_counts=correct_counts,
        n=n,
        num_problems=len(examples),
    )
    return out

"""How long right and wrong answers are, per policy: the measurement behind Dr. GRPO's length claim.

Dr. GRPO (arXiv 2503.20783) argues that GRPO's per-sequence length normalisation (each completion's token
losses averaged over its own length) penalises a long wrong answer less per token than a short one, so
wrong answers grow longer during training, and that the constant normaliser removes that bias. This
script samples held-out problems from each policy and reports the mean completion length (tokens, EOS
included) of the right and of the wrong completions:

    PYTHONPATH=. .venv/bin/python -m bench.lengths tiny \\
        runs/compare-all/runs/{grpo,dr_grpo}__{1,2,3}/checkpoints/step-00000030/model --problems 120 --n 16

A policy given as ``.../METHOD__SEED/checkpoints/...`` (a ``./run.sh compare`` run) is grouped under
METHOD, and a second table gives each method's mean ± std over its seeds. Sampling: temperature 1.0,
``--max-new-tokens`` (80, the comparison's), seed 0 for every policy (the same prompts, in the same order).
"""

from __future__ import annotations

import argparse
import re
import statistics

import torch

from common.data import build_prompt, load_examples
from common.model import load_policy
from common.rollout import HFSampler
from common.tracking import markdown_table
from common.verify import Verifier


def method_of(path: str) -> str:
    """The comparison's method name in a run's checkpoint path, else the path itself.

    >>> method_of("runs/compare-all/runs/dr_grpo__2/checkpoints/step-00000030/model"), method_of("tiny")
    ('dr_grpo', 'tiny')
    """
    match = re.search(r"([^/]+)__\d+/checkpoints/", path)
    return match.group(1) if match else path


def length_stats(lengths: list[int], correct: list[bool], truncated: list[bool]) -> dict:
    """Accuracy, mean length of the right and of the wrong completions, and the truncated share.

    >>> length_stats([10, 20, 30, 40], [True, False, False, True], [False, False, True, False])
    {'samples': 4, 'accuracy': 0.5, 'len_right': 25.0, 'len_wrong': 25.0, 'truncated': 0.25}
    """
    right = [n for n, c in zip(lengths, correct) if c]
    wrong = [n for n, c in zip(lengths, correct) if not c]
    return {
        "samples": len(lengths),
        "accuracy": len(right) / len(lengths),
        "len_right": sum(right) / len(right) if right else float("nan"),
        "len_wrong": sum(wrong) / len(wrong) if wrong else float("nan"),
        "truncated": sum(truncated) / len(lengths),
    }


def measure(model_path: str, dataset: str, problems: int, n: int, max_new_tokens: int) -> dict:
    torch.manual_seed(0)
    model, tokenizer = load_policy(model_path)
    model.eval()
    examples = load_examples(dataset, "test", limit=problems)
    sampler = HFSampler(model, tokenizer, compute_logprobs=False)
    lengths, correct, truncated = [], [], []
    with Verifier() as verifier:
        chunk = max(1, 512 // n)
        for start in range(0, len(examples), chunk):
            batch = examples[start : start + chunk]
            prompts = [build_prompt(e.question, "plain", tokenizer) for e in batch]
            rollout = sampler.generate(prompts, n=n, max_new_tokens=max_new_tokens, temperature=1.0)
            results = verifier.verify_batch(rollout.completions, [e.answer for e in batch for _ in range(n)])
            lengths += rollout.completion_mask.sum(-1).long().tolist()
            correct += [r.correct for r in results]
            truncated += rollout.truncated.tolist()
    return length_stats(lengths, correct, truncated)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help='model directories, or "tiny" for the base policy')
    parser.add_argument("--dataset", default="tiny", help='held-out problems ("tiny", "tiny:long", ...)')
    parser.add_argument("--problems", type=int, default=120)
    parser.add_argument("--n", type=int, default=16, help="samples per problem")
    parser.add_argument("--max-new-tokens", type=int, default=80)
    args = parser.parse_args()

    rows, by_method = [], {}
    for path in args.models:
        stats = measure(path, args.dataset, args.problems, args.n, args.max_new_tokens)
        print(f"{path}: {stats}", flush=True)
        rows.append([path, stats["samples"], f"{stats['accuracy']:.3f}", f"{stats['len_right']:.1f}",
                     f"{stats['len_wrong']:.1f}", f"{stats['truncated']:.3f}"])  # fmt: skip
        by_method.setdefault(method_of(path), []).append(stats)
    header = ["policy", "samples", "accuracy", "mean length, right", "mean length, wrong", "truncated"]
    print(markdown_table(rows, header, max_chars=None))

    def cell(values: list[float]) -> str:
        if len(values) < 2:
            return f"{values[0]:.1f}"
        return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"

    print()
    rows = [
        [method, len(runs), cell([r["accuracy"] * 100 for r in runs]) + " %",
         cell([r["len_right"] for r in runs]), cell([r["len_wrong"] for r in runs])]
        for method, runs in by_method.items()
    ]  # fmt: skip
    header = ["method", "policies", "accuracy", "mean length, right", "mean length, wrong"]
    print(markdown_table(rows, header, max_chars=None))


if __name__ == "__main__":
    main()

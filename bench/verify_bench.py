"""Verifier benchmark: graded completions per second on one worker, the implementation on ``main`` against
this one, in the same run.

The old implementation is read with ``git show main:common/verify.py`` into a temporary module, so both
run in one process on the same inputs. Each workload is cut into chunks; each chunk is graded several
times by each, the two taking turns, and counts with its fastest time for each, so a change in a shared
machine's load hits both alike. Two workloads:

  synthetic   what a training step grades: short worked solutions ending in a box, a GSM8K "####" line or
              a bare number, against number golds, about a third of them wrong; every item takes the
              in-process path (a plain-number gold never starts a math-verify worker), which is where
              nearly all completions of GSM8K and MATH go
  real        every graded case of ``bench/verify_real.py``: MATH-500 golds against rewrites and wrong
              answers (symbolic golds go to the math-verify worker), GSM8K references and the completions
              of four models

Both verifiers' workers start before the clock (their start-up is not timed). Reported: completions per
second for each, and new / old. ``--agreement`` also scores the graded
style cases of ``tests/test_verify_styles.py`` with both, and with plain math-verify
(``verify(parse(gold), parse(completion))``) for reference, and prints, per kind, how many agree with the
expected label.

    PYTHONPATH=. .venv/bin/python bench/verify_bench.py
    PYTHONPATH=. .venv/bin/python bench/verify_bench.py --agreement
    PYTHONPATH=. .venv/bin/python bench/verify_bench.py --record-unchanged   # tests/test_verify_real.py's record

This is a benchmark, not a test: numbers depend on the machine and its load. It is not run by CI.
"""

import importlib.util
import math
import random
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import tyro

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Args:
    num_completions: int = 20_000
    """completions per timed repetition"""
    repeats: int = 5
    """timed repetitions of each chunk per implementation; each chunk counts with its best"""
    chunk: int = 1000
    """completions per timed chunk (the implementations take turns chunk by chunk)"""
    base: str = "main"
    """git revision whose common/verify.py is the "before" implementation"""
    agreement: bool = False
    """also score the graded cases of tests/test_verify_styles.py with both implementations"""
    seed: int = 0
    """workload seed"""
    workloads: tuple[str, ...] = ("synthetic", "real")
    """which workloads to time: synthetic, real (see the module docstring)"""
    record_unchanged: bool = False
    """only write UNCHANGED_PATH: the tiny world's golds and sampled demo completions, scored by --base"""


def make_workload(num_completions: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(completions, golds) in the styles a training step sees; about a third of the answers are wrong.

    >>> completions, golds = make_workload(6)
    >>> len(completions), len(golds), all(isinstance(gold, str) for gold in golds)
    (6, 6, True)
    """
    rng = random.Random(seed)
    completions, golds = [], []
    for i in range(num_completions):
        value = rng.randint(1, 50_000)
        answer = value if rng.random() < 0.67 else value + rng.randint(1, 9)
        reasoning = (
            f"First, ${value // 2} + {value - value // 2} = {value}$. We check it: "
            f"\\({value} - {value // 3} = {value - value // 3}\\), so the steps agree. "
        )
        style = i % 6
        if style == 0:
            completion = reasoning + f"The answer is $\\boxed{{{answer}}}$."
        elif style == 1:
            completion = reasoning + f"So the total is \\boxed{{{answer:,}}} dollars."
        elif style == 2:
            completion = reasoning + f"She pays {answer} in all.\n#### {answer}"
        elif style == 3:
            completion = reasoning + f"Therefore the final answer is {answer}."
        elif style == 4:
            completion = reasoning + f"\\boxed{{\\frac{{{answer}}}{{2}}}}"
            answer = answer / 2
        else:
            completion = reasoning + f"\\boxed{{{answer} \\text{{ cm}}}}"
        gold = f"#### {value}" if style == 2 else (f"\\frac{{{value}}}{{2}}" if style == 4 else str(value))
        completions.append(completion)
        golds.append(gold)
    return completions, golds


def load_base_verifier(revision: str, directory: str):
    """common/verify.py at `revision` as a module of its own (its workers import it by that name)."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{revision}:common/verify.py"], capture_output=True, text=True
    )
    if source.returncode != 0:
        sys.exit(f"--base {revision}: git show failed: {source.stderr.strip()}")
    path = Path(directory) / "verify_base.py"
    path.write_text(source.stdout)
    spec = importlib.util.spec_from_file_location("verify_base", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["verify_base"] = module
    spec.loader.exec_module(module)
    return module


def paired_rates(
    old, new, completions: list[str], golds: list[str], repeats: int, chunk: int
) -> tuple[float, float]:
    """Completions graded per second by `old.Verifier` and `new.Verifier` (one worker each, started before
    the clock). The workload is cut into chunks of `chunk` completions; each chunk is graded `repeats`
    times by each implementation, the two taking turns (which goes first alternates), and a chunk counts
    with its fastest time for each. A change in a shared machine's load then hits both alike, even when
    it changes within one pass."""
    best = {"old": [], "new": []}
    with old.Verifier(num_workers=1) as old_verifier, new.Verifier(num_workers=1) as new_verifier:
        verifiers = {"old": old_verifier, "new": new_verifier}
        for verifier in verifiers.values():  # start and warm each worker
            verifier.verify_batch(["\\boxed{\\sqrt{8}}"], ["2\\sqrt{2}"])
        for index, start in enumerate(range(0, len(completions), chunk)):
            pieces = completions[start : start + chunk], golds[start : start + chunk]
            times = {"old": math.inf, "new": math.inf}
            for repeat in range(repeats):
                order = ("old", "new") if (index + repeat) % 2 == 0 else ("new", "old")
                for name in order:
                    clock = time.perf_counter()
                    verifiers[name].verify_batch(*pieces)
                    times[name] = min(times[name], time.perf_counter() - clock)
            for name in times:
                best[name].append(times[name])
    return len(completions) / sum(best["old"]), len(completions) / sum(best["new"])


def agreement(module) -> dict[str, tuple[int, int]]:
    """Per kind of graded case: (cases whose score equals the expected label, cases)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_verify_styles import KINDS

    counts = {}
    with module.Verifier(timeout=10.0, num_workers=1) as verifier:
        for kind, cases in KINDS.items():
            completions, golds, expected = zip(*cases)
            results = verifier.verify_batch(list(completions), list(golds))
            counts[kind] = (sum(r.correct == e for r, e in zip(results, expected)), len(cases))
    return counts


def agreement_math_verify_alone() -> dict[str, tuple[int, int]]:
    """The same counts for plain math-verify (`verify(parse(gold), parse(completion))`, its defaults)."""
    import logging

    import math_verify

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    sys.path.insert(0, str(ROOT / "tests"))
    from test_verify_styles import KINDS

    counts = {}
    for kind, cases in KINDS.items():
        agree = 0
        for completion, gold, expected in cases:
            try:
                correct = bool(math_verify.verify(math_verify.parse(gold), math_verify.parse(completion)))
            except Exception:  # a crash inside math-verify counts as "not correct"
                correct = False
            agree += correct == expected
        counts[kind] = (agree, len(cases))
    return counts


UNCHANGED_PATH = ROOT / "bench" / "data" / "verify" / "unchanged.json"
DEMO_PROMPTS_PER_TIER = 32  # test problems per warm-up tier whose demo completions are recorded
DEMO_SAMPLES = 8  # completions per problem, sampled as the demo samples them (temperature 1.0, 80 tokens)


def tiny_cases() -> dict[str, list[tuple[str, str]]]:
    """Every tiny-world gold (both splits, every tier, the default sizes), each against its worked solution
    and against that solution with slips (a wrong answer, written the same way): (completion, gold) lists
    keyed "split/tier"."""
    from common.tiny_task import TIER_STEPS, Problem, tiny_examples, worked_solution

    cases = {}
    for split in ("train", "test"):
        for tier in TIER_STEPS:
            rows, rng = tiny_examples(split, tiers=(tier,)), random.Random(f"unchanged-{split}-{tier}")
            pairs = []
            for row in rows:
                steps = _steps_of(row["question"])
                slipped = worked_solution(Problem(row["question"], 0, tier, steps), rng, slip_rate=0.5)
                pairs += [(row["solution"], row["answer"]), (slipped, row["answer"])]
            cases[f"{split}/{tier}"] = pairs
    return cases


def _steps_of(question: str) -> tuple[tuple[int, str, int], ...]:
    """The steps of "Compute 3+5-4." as `common.tiny_task.Problem` holds them: ((3, "+", 5), (8, "-", 4))."""
    numbers = re.findall(r"[+-]?[0-9]+", question.removeprefix("Compute ").rstrip("."))
    value, steps = int(numbers[0]), []
    for token in numbers[1:]:
        op, operand = token[0], int(token[1:])
        steps.append((value, op, operand))
        value = value + operand if op == "+" else value - operand
    return tuple(steps)


def demo_cases(seed: int = 0) -> list[tuple[str, str]]:
    """(completion, gold) for completions the shipped tiny world samples on the demo's held-out problems
    (the "plain" template, temperature 1.0, at most 80 new tokens, as ./run.sh's GRPO evaluation)."""
    import torch

    from common.data import build_prompt
    from common.model import load_policy
    from common.rollout import HFSampler
    from common.tiny_task import TIERS, tiny_examples
    from common.tiny_world import ensure_world

    torch.manual_seed(seed)
    model, tokenizer = load_policy(str(ensure_world()))
    rows = [row for tier in TIERS for row in tiny_examples("test", tiers=(tier,))[:DEMO_PROMPTS_PER_TIER]]
    sampler = HFSampler(model, tokenizer, compute_logprobs=False)
    prompts = [build_prompt(row["question"], "plain") for row in rows]
    completions = sampler.generate(prompts, DEMO_SAMPLES, max_new_tokens=80, temperature=1.0).completions
    golds = [row["answer"] for row in rows for _ in range(DEMO_SAMPLES)]
    return list(zip(completions, golds))


def record_unchanged(module, revision: str) -> None:
    """Score the tiny world's golds and the demo completions with `module` (the verifier at `revision`) and
    write them, with the scores, to UNCHANGED_PATH; tests/test_verify_real.py checks that they still
    score the same. The tiny cases are regenerated by `tiny_cases`, so only their scores are stored."""
    import json

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", revision], capture_output=True, text=True)
    record = {"revision": commit.stdout.strip(), "tiny": {}, "demo": []}
    with module.Verifier(timeout=10.0, num_workers=1) as verifier:
        for key, pairs in tiny_cases().items():
            completions, golds = zip(*pairs)
            results = verifier.verify_batch(list(completions), list(golds))
            normalized = [module.normalize_gold(gold) for gold in golds[::2]]
            scores = [[result.answer, result.correct] for result in results]
            record["tiny"][key] = {"golds": normalized, "scores": scores}
        demo = demo_cases()
        results = verifier.verify_batch([c for c, _ in demo], [g for _, g in demo])
        record["demo"] = [
            {
                "completion": completion,
                "gold": gold,
                "parsed": r.parsed,
                "correct": r.correct,
                "answer": r.answer,
            }
            for (completion, gold), r in zip(demo, results)
        ]
    UNCHANGED_PATH.parent.mkdir(parents=True, exist_ok=True)
    UNCHANGED_PATH.write_text(json.dumps(record, indent=None, separators=(",", ":")) + "\n")
    tiny_total = sum(len(value["scores"]) for value in record["tiny"].values())
    print(f"wrote {UNCHANGED_PATH}: {tiny_total} tiny-world cases, {len(record['demo'])} demo completions")


def main(args: Args) -> None:
    from common import verify as new

    if args.record_unchanged:
        with tempfile.TemporaryDirectory() as directory:
            record_unchanged(load_base_verifier(args.base, directory), args.base)
        return
    sys.path.insert(0, str(ROOT / "bench"))
    from verify_real import build_cases

    real = build_cases()
    workloads = {
        "synthetic": make_workload(args.num_completions, args.seed),
        "real": ([case.completion for case in real], [case.gold for case in real]),
    }
    with tempfile.TemporaryDirectory() as directory:
        old = load_base_verifier(args.base, directory)
        for name in args.workloads:
            completions, golds = workloads[name]
            best_old, best_new = paired_rates(old, new, completions, golds, args.repeats, args.chunk)
            print(
                f"workload {name}: {len(completions)} completions in chunks of {args.chunk}, each chunk's best"
                f" of {args.repeats}, one process"
            )
            print(f"  before ({args.base}): {best_old:,.0f} completions/s")
            print(f"  after (this tree):   {best_new:,.0f} completions/s")
            print(f"  after / before: {best_new / best_old:.2f}")
        if not args.agreement:
            return
        columns = {
            "before": agreement(old),
            "after": agreement(new),
            "math-verify": agreement_math_verify_alone(),
        }
    print("agreement with the expected labels of tests/test_verify_styles.py")
    print(f"{'kind':<16}" + "".join(f"{name:>16}" for name in columns))
    for kind in columns["before"]:
        cells = [f"{counts[kind][0]}/{counts[kind][1]}" for counts in columns.values()]
        print(f"{kind:<16}" + "".join(f"{cell:>16}" for cell in cells))
    totals = [(sum(n for n, _ in c.values()), sum(m for _, m in c.values())) for c in columns.values()]
    print(f"{'all':<16}" + "".join(f"{f'{n}/{m} ({n / m:.0%})':>16}" for n, m in totals))


if __name__ == "__main__":
    main(tyro.cli(Args))

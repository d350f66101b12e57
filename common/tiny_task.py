"""The tiny world's task: seeded multi-step arithmetic problems, their worked solutions and the split.

Pure Python (no torch, nothing else of ``common``), so every helper can use it; the tokenizer, the model and
the warm-up that make a world out of it are in ``common/tiny_world.py``.

Multi-step arithmetic written like a math problem, answered in ``\\boxed{}``. The working rewrites the
expression with its first operation done, one line per step:

    Compute 3+5-4+2.           ->   8-4+2
                                    4+2
                                    6
                                    \\boxed{6}

Three difficulty tiers (the ``category`` of each example), usable as curriculum categories: ``easy``
(three steps), ``medium`` (four steps) and ``hard`` (six steps), all single-digit + and -. The model has
no way to produce the answer except by carrying each intermediate result forward, and a slip anywhere in
the chain makes the answer wrong, so longer chains are harder. A fourth tier, ``long`` (eight steps), is
never seen in the warm-up of the default world. Select tiers with the dataset name: ``"tiny"`` is the
three warm-up tiers, ``"tiny:easy,medium,hard,long"`` adds the long tier, ``"tiny:long"`` is it alone.
The ``wide-*`` tiers (``wide-easy`` ... ``wide-long``, three to eight steps) are the same chains on
two-digit numbers, one digit changed per step and never a carry (``47+20-3`` -> ``67-3`` -> ``64``):
each line is still a single-digit sum, but the answer is one of a hundred, so a guess is rarely right.

The worlds a model name selects (``WORLD_NAMES``: ``tiny``, ``tiny-hinted-long``, ``tiny-wide``) and where
each is cached (``world_dir``) are named here too, so that resolving ``--model-name-or-path tiny`` to a
directory needs no builder; ``common.tiny_world`` holds their configurations and builds them.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path

WORLD_VERSION = "v5"
TIER_STEPS = {"easy": 3, "medium": 4, "hard": 6, "long": 8}  # operations per problem
# The "wide" tiers: the same chains on two-digit numbers (0..99), one digit changed per operation and never
# a carry ("47+20-3" -> "67-3" -> "64"), so each line is the same single-digit sum as in the tiers above,
# but an answer is one of a hundred and a guess is rarely right. Only the world "tiny-wide" warms up on them.
TIER_STEPS.update({"wide-easy": 3, "wide-medium": 4, "wide-hard": 6, "wide-long": 8})
WIDE_TIERS = ("wide-easy", "wide-medium", "wide-hard")
TIERS = ("easy", "medium", "hard")  # the warm-up tiers, and the tiers of the dataset "tiny"
HINT_TEMPLATE = "{question} The answer is {answer}. Show the working."
CONFIDENCE_SUFFIX = " State your confidence."

# --------------------------------------------------------------------------------------------------
# Task: problems, worked solutions and the train/test split
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    question: str  # "Compute 23+7-5."
    answer: int  # 25
    category: str  # "easy" | "medium" | "hard"
    steps: tuple[
        tuple[str, str, int], ...
    ]  # ((left, op, right), ...) applied left to right, e.g. (("23","+",7), ("30","-",5))


def _apply(value: int, op: str, operand: int) -> int:
    return {"+": value + operand, "-": value - operand, "*": value * operand}[op]


def sample_problem(rng: random.Random, category: str) -> Problem:
    """Draw one problem of a tier: ``easy`` has three steps, ``medium`` four, ``hard`` six, ``long``
    eight. Every number, operand and intermediate result is a single digit (0..9), so a small model learns
    the arithmetic itself perfectly; what it must learn to do reliably is to carry each result forward
    without a slip, and slips compound over longer chains. In the ``wide-*`` tiers numbers have two digits
    and each operation adds or subtracts 1..9 units or 10..90 tens without a carry.

    >>> p = sample_problem(random.Random(0), "easy"); p.question.startswith("Compute "), p.category
    (True, 'easy')
    """
    if category.startswith("wide-"):
        return _sample_wide_problem(rng, category)
    num_ops = TIER_STEPS[category]
    start = value = rng.randint(0, 9)
    steps = []
    for _ in range(num_ops):
        op = rng.choice([o for o, ok in (("+", value <= 8), ("-", value >= 1)) if ok])
        operand = rng.randint(1, 9 - value) if op == "+" else rng.randint(1, value)
        steps.append((value, op, operand))
        value = _apply(value, op, operand)
    question = f"Compute {start}" + "".join(f"{op}{x}" for _, op, x in steps) + "."
    return Problem(question, value, category, tuple(steps))


def _sample_wide_problem(rng: random.Random, category: str) -> Problem:
    start = value = rng.randint(10, 99)
    steps = []
    for _ in range(TIER_STEPS[category]):
        place = rng.choice((1, 10))  # change the units or the tens digit
        digit = value // place % 10
        op = rng.choice([o for o, ok in (("+", digit <= 8), ("-", digit >= 1)) if ok])
        operand = place * (rng.randint(1, 9 - digit) if op == "+" else rng.randint(1, digit))
        steps.append((value, op, operand))
        value = _apply(value, op, operand)
    question = f"Compute {start}" + "".join(f"{op}{x}" for _, op, x in steps) + "."
    return Problem(question, value, category, tuple(steps))


def is_test_question(question: str) -> bool:
    """Deterministic held-out split: one question in ten (by hash) is reserved for evaluation."""
    return int(hashlib.sha256(question.encode()).hexdigest(), 16) % 10 == 0


def generate_problems(num: int, split: str, seed: int, categories: tuple[str, ...] = TIERS) -> list[Problem]:
    """``num`` distinct problems of ``split`` ("train" or "test"), cycling through the categories."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"tiny-{split}-{seed}")
    seen, out = set(), []
    for _ in range(num * 200):
        if len(out) == num:
            break
        p = sample_problem(rng, categories[len(out) % len(categories)])
        if p.question in seen or is_test_question(p.question) != (split == "test"):
            continue
        seen.add(p.question)
        out.append(p)
    else:  # pragma: no cover - the problem space is far larger than any split we ask for
        raise RuntimeError(f"could only draw {len(out)} distinct {split} problems")
    return out


def worked_solution(problem: Problem, rng: random.Random | None = None, slip_rate: float = 0.0) -> str:
    """The written working: each line rewrites the expression with its first operation done, until one
    number is left; then the boxed result.

    With probability ``slip_rate`` per line (``rng`` given) the line's leading result is off by one (in
    the wide tiers: the digit the step changed is another digit, so two slips rarely cancel); later lines
    carry the slip, so the working stays internally consistent but the final answer is wrong. Each line
    depends only on the line above it (the rest of the expression is copied), so a small model learns the
    method itself quickly.

    >>> p = Problem("Compute 3+5-4.", 4, "easy", ((3, "+", 5), (8, "-", 4)))
    >>> worked_solution(p)
    '8-4\\n4\\n\\\\boxed{4}'
    >>> worked_solution(p, random.Random(0), slip_rate=1.0)
    '9-4\\n6\\n\\\\boxed{6}'
    """
    lines, value = [], problem.steps[0][0]
    for i, (_, op, operand) in enumerate(problem.steps):
        value = _apply(value, op, operand)
        if rng is not None and rng.random() < slip_rate:
            if problem.category.startswith("wide-"):  # the digit just changed is written as another digit
                place = 10 if operand >= 10 else 1
                digit = value // place % 10
                value += place * (rng.choice([d for d in range(10) if d != digit]) - digit)
            else:
                value = max(0, value + rng.choice((-1, 1)))
        rest = "".join(f"{o}{x}" for _, o, x in problem.steps[i + 1 :])
        lines.append(f"{value}{rest}")
    lines.append(f"\\boxed{{{value}}}")
    return "\n".join(lines)


def parse_tiers(spec: str) -> tuple[str, ...]:
    """The tiers named by a dataset argument: ``"tiny"`` -> the warm-up tiers, ``"tiny:hard,long"`` ->
    ``("hard", "long")``.

    >>> parse_tiers("tiny:long")
    ('long',)
    >>> parse_tiers("tiny:hard,huge")
    Traceback (most recent call last):
    ValueError: dataset 'tiny:hard,huge': unknown tier 'huge'; tiers are easy, medium, hard, long, wide-easy, wide-medium, wide-hard, wide-long
    """
    if spec == "tiny":
        return TIERS
    names = tuple(t.strip() for t in spec.removeprefix("tiny:").split(","))
    for name in names:
        if name not in TIER_STEPS:
            raise ValueError(f"dataset {spec!r}: unknown tier {name!r}; tiers are {', '.join(TIER_STEPS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"dataset {spec!r}: a tier is named twice")
    return names


def tiny_examples(
    split: str = "train", num: int | None = None, seed: int = 0, tiers: tuple[str, ...] = TIERS
) -> list[dict]:
    """Rows for ``common.data``: ``{"question", "answer", "category", "solution"}`` (the slip-free worked
    solution), cycling through ``tiers``. Default sizes: 1,000 train problems and 100 test problems per tier."""
    num = num if num is not None else (1000 if split == "train" else 100) * len(tiers)
    return [
        {
            "question": p.question,
            "answer": str(p.answer),
            "category": p.category,
            "solution": worked_solution(p),
        }
        for p in generate_problems(num, split, seed, tiers)
    ]


# The worlds a model name selects (their configurations: common.tiny_world.WORLDS, which a test keeps equal).
WORLD_NAMES = ("tiny", "tiny-hinted-long", "tiny-wide")


def world_dir(name: str = "tiny") -> Path:
    """Where the world ``name`` is cached: ``$RLVR_CACHE_DIR/<name>-world-<version>`` (default: ``cache/``
    at the repository root), e.g. ``cache/tiny-world-v5``.

    >>> world_dir("tiny-wide").name
    'tiny-wide-world-v5'
    """
    root = Path(os.environ.get("RLVR_CACHE_DIR", Path(__file__).resolve().parent.parent / "cache"))
    return root / f"{name}-world-{WORLD_VERSION}"

r"""The verifier on real data: graded cases built mechanically from MATH-500 and GSM8K (issue 22), scored by
common/verify.py and by plain math-verify, side by side, per kind.

The data (bench/data/verify/README.md says where each file is from) is nobody's here: the MATH-500 test
split, GSM8K's test split with its reference solutions, and GSM8K completions of four models with their
`is_correct` labels. From it `build_cases` makes these kinds, each case with its expected label:

  self                  a MATH-500 gold, boxed, against itself (right)
  no-spaces             the gold with its spaces removed (right); a space that ends a command name
                        (`\pi r`) and the text inside `\text{}` are kept
  fractions             `\dfrac` <-> `\frac` <-> `a/b`, inside matrices too (right)
  left-right            `\left` and `\right` removed, or added around the gold's parentheses and brackets
                        where it has none (right)
  text                  `\text{...}` replaced by its content, or by `\textbf{...}` or `\mbox{...}` (right)
  x-prefix              `x = ` before a gold that is one value (right)
  thousands             a whole-number gold of 4+ digits with its separators removed, or added in every
                        LaTeX form: `,`, `{,}`, `,\!`, `,\! ` (with a space), `\,`, a space (right)
  unboxed               the gold in a final sentence, `The final answer is $gold$.`, after a sentence
                        with other math in it, no box anywhere (right)
  base                  a number in a base (`52_8`): written `52_{8}` (right); in another base, or with
                        its last digit changed (wrong)
  nested-box            `\boxed{\boxed{gold}}` (right); `\boxed{\boxed{gold} \text{ or } other}` (wrong)
  last-integer          the gold with its last integer increased by one (wrong)
  reordered-vector      the entries of a vector, matrix or tuple gold in reverse order (wrong)
  other-gold            another problem's gold (wrong)
  gsm8k-reference       a GSM8K reference solution against its own "####" number (right)
  gsm8k-model           a model's GSM8K solution against the gold, labelled with its `is_correct`

A rewrite is kept only where it changes the gold's text. Wrong answers are deduplicated by value: one whose
text or value equals the gold's (`same_value`) is dropped, so none is secretly right. A (gold, completion)
pair that comes up twice (MATH-500 repeats some golds; a model may write the same solution as another)
is one case, of the kind it first came up in. The golds are passed as the project's loaders pass them
(MATH-500's `answer` field, GSM8K's number after "####"). Plain math-verify is `plain_math_verify`, as the
issue pins it.

    PYTHONPATH=. .venv/bin/python bench/verify_real.py                   # the per-kind table
    PYTHONPATH=. .venv/bin/python bench/verify_real.py --show 20         # and 20 disagreements per kind
    PYTHONPATH=. .venv/bin/python bench/verify_real.py --subset          # only the CI subset
    PYTHONPATH=. .venv/bin/python bench/verify_real.py --rules           # the deliberate rules' cases

This is a benchmark, not a test (tests/test_verify_real.py runs the fixed CI subset).
"""

import gzip
import hashlib
import json
import logging
import re
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import tyro

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data" / "verify"
TIMEOUT = 5.0  # seconds per item, for both verifiers (common.verify's default, math-verify's default)
CI_CASES_PER_KIND = 24  # cases per kind in the CI subset (every case of a kind that has fewer)


@dataclass(frozen=True)
class Case:
    kind: str
    completion: str
    gold: str
    """The gold as the project's data loaders pass it (MATH-500's `answer`, GSM8K's "####" number)."""
    expected: bool
    source: str
    """Where it is from: "math500:17" (0-based row), "gsm8k:12" or "gsm8k:12:175b_verification"."""


@dataclass
class Args:
    show: int = 0
    """print up to this many cases per kind where a verifier disagrees with the label"""
    subset: bool = False
    """score only the fixed CI subset (`ci_subset`), as tests/test_verify_real.py does"""
    rules: bool = False
    """instead, print the deliberate rules' cases (`DELIBERATE`), scored here and by plain math-verify"""


# The rules this project keeps on purpose, each with a case that shows the reward hack it prevents:
# (rule, completion, gold, the right score). docs/verifier.md prints them with `--rules`.
DELIBERATE = [
    ("the last box counts", r"\boxed{6} or maybe \boxed{7}", "6", 0),
    ("an empty last box is no answer", r"the answer is 6, so \boxed{}", "6", 0),
    ("a number is answered by a number", r"Compute 3+5-4+2. So \boxed{3+5-4+2}", "6", 0),
    ("a number is answered by a number", r"\boxed{\sqrt{36}}", "6", 0),
    ("no float tolerance for exact golds", r"\boxed{0.3333333}", r"\frac{1}{3}", 0),
    ("no float tolerance for exact golds", r"\boxed{\frac{1}{101!}}", r"\frac{1}{100!}", 0),
    ("an equality chain must be true", r"\boxed{x = 5+5+1 = 7 = 11}", "11", 0),
    ("a hedge is no answer", r"\boxed{6 \text{ (or 7)}}", "6", 0),
    ("only ASCII digits are digits", "\\boxed{\uff16}", "6", 0),
    ("a percent sign is dropped, never divided by 100", r"\boxed{0.18}", r"18\%", 0),
    ("words and times are decided by their text", r"\boxed{lyEven}", "Evelyn", 0),
    ("words and times are decided by their text", r"\boxed{1:00}", "12:00", 0),
    ("a sequence with an ellipsis is ordered", r"\boxed{2, 4, \ldots, 2n}", r"1, 2, \ldots, n", 0),
    ("the gold goes first to math-verify", r"\boxed{x^2-3x+2<0}", "(1,2)", 0),
    (
        "a matrix or vector is ordered",
        r"\boxed{\begin{pmatrix} -7 \\ -14 \\ -2 \end{pmatrix}}",
        r"\begin{pmatrix} -2 \\ -14 \\ -7 \end{pmatrix}",
        0,
    ),
    ("a number in a base keeps its base", r"\boxed{52_9}", "52_8", 0),
    ("a box in a box is read whole", r"\boxed{\boxed{7} \text{ or } 8}", "7", 0),
    (
        "closed forms to 40 digits, no tolerance",
        r"\boxed{\frac{\sqrt{3}}{10^{30}}}",
        r"\frac{\sqrt{2}}{10^{30}}",
        0,
    ),
    ("a comma without \\! is a list separator", r"\boxed{1, 234}", "1234", 0),
    ("no decimal comma", r"\boxed{3,5}", "3.5", 0),
]


# ----------------------------------------------------------------------------------------------
# The data
# ----------------------------------------------------------------------------------------------


def read_jsonl_gz(name: str) -> list[dict]:
    with gzip.open(DATA / name, "rt", encoding="utf-8") as file:
        return [json.loads(line) for line in file]


def gsm8k_number(answer: str) -> str:
    """GSM8K's gold: the text after "####", thousands separators removed ("#### 1,072" -> "1072")."""
    return answer.split("####")[-1].strip().replace(",", "")


# ----------------------------------------------------------------------------------------------
# Mechanical rewrites of a MATH-500 gold
# ----------------------------------------------------------------------------------------------


def braced_end(text: str, start: int) -> int:
    """Index just past the brace group opening at `text[start] == "{"` (len(text) if it never closes)."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "\\":
            continue
        if text[i] == "{" and (i == 0 or text[i - 1] != "\\"):
            depth += 1
        elif text[i] == "}" and (i == 0 or text[i - 1] != "\\"):
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def remove_spaces(gold: str) -> str:
    r"""Spaces removed, except inside `\text{...}` and after a command name that a letter follows.

    >>> remove_spaces(r"2 \pi r + \text{ cm} - 1")
    '2\\pi r+\\text{ cm}-1'
    """
    out, i = [], 0
    while i < len(gold):
        text = re.match(r"\\(?:text|textbf|mbox|mathrm)\{", gold[i:])
        if text:
            end = braced_end(gold, i + text.end() - 1)
            out.append(gold[i:end])
            i = end
            continue
        if gold[i] == " ":
            before = "".join(out)
            command_before_letter = re.search(r"\\[a-zA-Z]+$", before) and re.match(r" +[a-zA-Z]", gold[i:])
            control_space = (len(before) - len(before.rstrip("\\"))) % 2  # "\ ", not a row break "\\\\ "
            if command_before_letter or control_space:
                out.append(" ")
            i += 1
            continue
        out.append(gold[i])
        i += 1
    return "".join(out)


_FRACTION = re.compile(r"\\[dt]?frac(?=\{)")


def fractions_to_slashes(gold: str) -> str:
    r"""Every `\frac{a}{b}` (also `\dfrac`) written `a/b`, parenthesised where needed.

    >>> fractions_to_slashes(r"\begin{pmatrix} \frac{16}{49} \\ -\dfrac{48}{49} \end{pmatrix}")
    '\\begin{pmatrix} 16/49 \\\\ -48/49 \\end{pmatrix}'
    >>> fractions_to_slashes(r"\frac{\sqrt{3}}{2}x"), fractions_to_slashes(r"\frac{1}{x+1}")
    ('((\\sqrt{3})/2)x', '1/(x+1)')
    """
    match = _FRACTION.search(gold)
    if match is None:
        return gold
    numerator_end = braced_end(gold, match.end())
    if numerator_end >= len(gold) or gold[numerator_end] != "{":
        return gold
    denominator_end = braced_end(gold, numerator_end)
    numerator = fractions_to_slashes(gold[match.end() + 1 : numerator_end - 1].strip())
    denominator = fractions_to_slashes(gold[numerator_end + 1 : denominator_end - 1].strip())

    def operand(part: str) -> str:
        return part if re.fullmatch(r"[0-9]+|[a-zA-Z]", part) else f"({part})"

    slash = f"{operand(numerator)}/{operand(denominator)}"
    before, after = gold[: match.start()], gold[denominator_end:]
    alone_before = re.search(r"(?:^|[\s&{(\[,=-]|\\\\)$", before) is not None
    alone_after = re.match(r"(?:$|[\s&})\],]|\\\\|\\end|\\right)", after) is not None
    if not (alone_before and alone_after):
        slash = f"({slash})"
    return before + slash + fractions_to_slashes(after)


_SLASH = re.compile(r"(?<![0-9a-zA-Z}^_.])(-?)([0-9]+)/([0-9]+)(?![0-9.])")


def fraction_forms(gold: str) -> list[str]:
    r"""The gold with `\dfrac` -> `\frac`, with `\frac` -> `\dfrac`, with every fraction as `a/b`, and with
    every `a/b` of integers as `\frac{a}{b}` and as `\dfrac{a}{b}`.

    >>> fraction_forms("\\begin{pmatrix} 16/49 \\\\ -48/49 \\end{pmatrix}")[0]
    '\\begin{pmatrix} \\frac{16}{49} \\\\ -\\frac{48}{49} \\end{pmatrix}'
    """
    forms = []
    if "frac" in gold:
        forms += [gold.replace("\\dfrac", "\\frac"), re.sub(r"\\frac(?![a-zA-Z])", r"\\dfrac", gold)]
        forms.append(fractions_to_slashes(gold))
    if _SLASH.search(gold):
        forms += [_SLASH.sub(rf"\1\\{command}{{\2}}{{\3}}", gold) for command in ("frac", "dfrac")]
    return forms


def left_right_forms(gold: str) -> list[str]:
    r"""`\left` and `\right` removed (a null delimiter `\left.` with its command), or, where the gold has
    none, put before every pair of parentheses and brackets.

    >>> left_right_forms(r"\left( 3, \frac{\pi}{2} \right)"), left_right_forms("(3,4] \\cup [5, 6)")
    (['( 3, \\frac{\\pi}{2} )'], ['\\left(3,4\\right] \\cup \\left[5, 6\\right)'])
    """
    if "\\text" in gold:  # a parenthesis in text is a character, not a delimiter
        return []
    if "\\left" in gold or "\\right" in gold:
        gold = re.sub(r"\\(?:left|right)\.", "", gold)
        return [re.sub(r"\\(?:left|right)(?![a-zA-Z])\s*", "", gold)]
    opened, pairs = [], []
    for i, char in enumerate(gold):
        if char in "([" and not re.search(r"\\[a-zA-Z]+$", gold[:i]):  # not \sqrt[3]
            opened.append(i)
        elif char in ")]" and opened:
            pairs.append((opened.pop(), i))
    if not pairs or opened:
        return []
    positions = sorted(position for pair in pairs for position in pair)
    out, previous = [], 0
    for position in positions:
        out.append(gold[previous:position] + ("\\left" if gold[position] in "([" else "\\right"))
        previous = position
    return ["".join(out) + gold[previous:]]


def remove_text(gold: str) -> str:
    r"""`\text{...}` (and `\textbf`, `\mbox`, `\mathrm`) replaced by its content: `5\text{ cm}` -> `5 cm`."""
    return re.sub(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}", r"\1", gold)


def text_forms(gold: str) -> list[str]:
    r"""`\text{...}` replaced by its content, and written with `\textbf{...}` and `\mbox{...}` instead."""
    if not re.search(r"\\text\{", gold):
        return []
    return [remove_text(gold)] + [
        re.sub(r"\\text(?=\{)", command.replace("\\", "\\\\"), gold) for command in ("\\textbf", "\\mbox")
    ]


_ONE_VALUE_EXCLUDES = ("=", ",", "\\text", "\\in", "<", ">", "\\le", "\\ge", "\\cup", "\\begin", "\\pm", ":")


def x_prefixed(gold: str) -> str | None:
    """`x = gold` for a gold that is one value (no list, relation, text or matrix)."""
    if any(token in gold for token in _ONE_VALUE_EXCLUDES) or not re.search(r"[0-9a-zA-Z]", gold):
        return None
    return f"x = {gold}"


_SEPARATORS = (",", "{,}", ",\\!", ",\\! ", "\\,", " ")
_SEPARATED = re.compile(r"(\\\$)?(-?[0-9]{1,3}(?:(?:,\\! |,\\!|\{,\}|,|\\,| )[0-9]{3})+|-?[0-9]{4,})")


def thousands_forms(gold: str) -> list[str]:
    r"""A whole-number gold of four digits or more, written with every separator and with none.

    >>> thousands_forms(r"10,\!080")[:3]
    ['10080', '10,080', '10{,}080']
    """
    match = _SEPARATED.fullmatch(gold)
    if match is None:
        return []
    money, number = match.group(1) or "", match.group(2)
    digits = re.sub(r"[^0-9-]", "", number)
    sign, digits = ("-", digits[1:]) if digits.startswith("-") else ("", digits)
    groups = [digits[max(0, end - 3) : end] for end in range(len(digits), 0, -3)][::-1]
    forms = [money + sign + digits] + [money + sign + separator.join(groups) for separator in _SEPARATORS]
    return [form for form in dict.fromkeys(forms) if form != gold]


def unboxed_sentence(gold: str) -> str:
    """The gold in a final sentence, after one with a dollar amount (a lone "$") and other math in it."""
    return f"Each ticket costs $5, and $2 + 3 = 5$ along the way.\nThe final answer is ${gold}$."


_BASE = re.compile(r"([0-9A-Z]+)_\{?([0-9]+)\}?")


def base_cases(gold: str) -> list[tuple[str, bool]]:
    """A number in a base: the same with braces toggled (right); in the next bases up that its digits
    allow, in a lower base that still allows them, or with the last digit changed (wrong)."""
    match = _BASE.fullmatch(gold)
    if match is None:
        return []
    digits, base = match.group(1), int(match.group(2))
    braced = f"{digits}_{{{base}}}" if "{" not in gold else f"{digits}_{base}"
    cases = [(braced, True)]
    largest = max(int(digit, 36) for digit in digits)
    for other in dict.fromkeys((base + 1, base + 2, base - 1, 10)):
        if other != base and largest < other <= 36:
            cases.append((f"{digits}_{{{other}}}", False))
    last = (int(digits[-1], 36) + 1) % base
    changed = digits[:-1] + "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"[last]
    cases.append((f"{changed}_{{{base}}}", False))
    return cases


def last_integer_changed(gold: str) -> str | None:
    """The gold with its last integer increased by one ("\\frac{3}{56}" -> "\\frac{3}{57}")."""
    matches = list(re.finditer(r"[0-9]+", gold))
    if not matches:
        return None
    last = matches[-1]
    return gold[: last.start()] + str(int(last.group()) + 1) + gold[last.end() :]


def reordered(gold: str) -> str | None:
    r"""The entries of a matrix (`pmatrix`, `bmatrix`) or of a parenthesised tuple in reverse order."""
    matrix = re.fullmatch(r"(\\begin\{([pb]matrix)\})(.*)(\\end\{\2\})", gold.strip(), re.DOTALL)
    if matrix:
        rows = [row.split("&") for row in re.split(r"\\\\", matrix.group(3))]
        entries = [entry.strip() for row in rows for entry in row][::-1]
        it = iter(entries)
        body = " \\\\ ".join(" & ".join(next(it) for _ in row) for row in rows)
        return f"{matrix.group(1)} {body} {matrix.group(4)}"
    tuple_ = re.fullmatch(r"(\\left)?\s*([(\[])(.*?)(\\right)?\s*([)\]])", gold.strip())
    if tuple_ is None or "\\cup" in gold or tuple_.group(3).count(",") < 1:
        return None
    items = [item.strip() for item in split_top_level(tuple_.group(3))]
    if len(items) < 2:
        return None
    opening = (tuple_.group(1) or "") + tuple_.group(2)
    closing = (tuple_.group(4) or "") + tuple_.group(5)
    return f"{opening}{', '.join(items[::-1])}{closing}"


def split_top_level(text: str) -> list[str]:
    """Split on commas outside braces and brackets."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char in "{([":
            depth += 1
        elif char in "})]":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return items


# ----------------------------------------------------------------------------------------------
# Deduplication of wrong answers by value
# ----------------------------------------------------------------------------------------------


def _canonical(text: str) -> str:
    text = text.replace("\\dfrac", "\\frac").replace("\\!", "").replace("{,}", ",").replace("\\,", "")
    text = re.sub(r"\\(?:left|right)(?![a-zA-Z])|\\\$|\$|\s", "", text)
    return remove_text(text).casefold()


def same_value(gold: str, other: str) -> bool:
    r"""True if `other` might be the gold: the same text up to spacing and separators, or, where sympy can
    read both, values that agree to 30 digits or a difference that simplifies to zero (entry by entry for
    tuples and matrices). Errs on the side of "same", so a wrong answer kept is wrong.

    >>> same_value("\\frac{1}{2}", "0.5"), same_value("2", "\\frac{4}{2}"), same_value("2", "3")
    (True, True, False)
    """
    if _canonical(gold) == _canonical(other):
        return True
    values = [_sympy_value(gold), _sympy_value(other)]
    if any(value is None for value in values):
        return False  # text that differs, or maths sympy cannot read: the texts decide
    return _values_agree(*values)


def _sympy_value(text: str):
    import math_verify

    try:
        parsed = math_verify.parse(f"${text}$")
    except Exception:
        return None
    values = [item for item in parsed if not isinstance(item, str)]
    return values[0] if values else None


def _values_agree(left, right) -> bool:
    import sympy

    try:
        if isinstance(left, sympy.MatrixBase) or isinstance(right, sympy.MatrixBase):
            left, right = sympy.Matrix(left), sympy.Matrix(right)
            if left.shape != right.shape:
                return False
            return all(_values_agree(a, b) for a, b in zip(left, right))
        if isinstance(left, sympy.Tuple | tuple) and isinstance(right, sympy.Tuple | tuple):
            return len(left) == len(right) and all(_values_agree(a, b) for a, b in zip(left, right))
        if left == right:
            return True
        if isinstance(left, sympy.Expr) and isinstance(right, sympy.Expr):
            difference = left - right
            if not difference.free_symbols:
                return abs(complex(sympy.N(difference, 30))) < 1e-25 * max(
                    1.0, abs(complex(sympy.N(left, 30)))
                )
            return sympy.simplify(difference) == 0
    except Exception:
        return True  # could not tell: count it as the same, so it is not used as a wrong answer
    return False


# ----------------------------------------------------------------------------------------------
# The graded set
# ----------------------------------------------------------------------------------------------


def boxed(answer: str) -> str:
    return f"So the answer is $\\boxed{{{answer}}}$."


def build_cases() -> list[Case]:
    """Every graded case, in a fixed order (see the module docstring for the kinds)."""
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    logging.getLogger("latex2sympy2_extended").setLevel(logging.CRITICAL)
    math500 = read_jsonl_gz("math500_test.jsonl.gz")
    golds = [row["answer"] for row in math500]
    cases: dict[tuple[str, str], Case] = {}  # (gold, completion) -> the case; a repeated pair counts once

    def add(kind: str, completion: str, gold: str, expected: bool, source: str) -> None:
        cases.setdefault((gold, completion), Case(kind, completion, gold, expected, source))

    for i, gold in enumerate(golds):
        source = f"math500:{i}"
        add("self", boxed(gold), gold, True, source)
        rewrites = {
            "no-spaces": [remove_spaces(gold)],
            "fractions": fraction_forms(gold),
            "left-right": left_right_forms(gold),
            "text": text_forms(gold),
            "x-prefix": [x_prefixed(gold)],
            "thousands": thousands_forms(gold),
        }
        for kind, forms in rewrites.items():
            for form in dict.fromkeys(forms):
                if form is not None and form != gold:
                    add(kind, boxed(form), gold, True, source)
        add("unboxed", unboxed_sentence(gold), gold, True, source)
        for form, expected in base_cases(gold):  # the digits and the base are the answer: no dedup by value
            add("base", boxed(form), gold, expected, source)
        wrong = last_integer_changed(gold)
        if wrong is not None and not same_value(gold, wrong):
            add("last-integer", boxed(wrong), gold, False, source)
        add("nested-box", f"So the answer is $\\boxed{{\\boxed{{{gold}}}}}$.", gold, True, source)
        if wrong is not None and not same_value(gold, wrong):
            hedge = f"So the answer is $\\boxed{{\\boxed{{{gold}}} \\text{{ or }} {wrong}}}$."
            add("nested-box", hedge, gold, False, source)
        wrong = reordered(gold)
        if wrong is not None and not same_value(gold, wrong):
            add("reordered-vector", boxed(wrong), gold, False, source)
        for offset in range(250, 500):  # the first other gold, half the set away, with another value
            other = golds[(i + offset) % len(golds)]
            if not same_value(gold, other):
                add("other-gold", boxed(other), gold, False, source)
                break

    gsm8k = read_jsonl_gz("gsm8k_test.jsonl.gz")
    gold_of = {row["question"]: gsm8k_number(row["answer"]) for row in gsm8k}
    for i, row in enumerate(gsm8k):
        add("gsm8k-reference", row["answer"], gsm8k_number(row["answer"]), True, f"gsm8k:{i}")
    for i, row in enumerate(read_jsonl_gz("gsm8k_example_model_solutions.jsonl.gz")):
        for model in ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification"):
            sample = row[model]
            add(
                "gsm8k-model",
                sample["solution"],
                gold_of[row["question"]],
                sample["is_correct"],
                f"gsm8k:{i}:{model}",
            )
    return list(cases.values())


def ci_subset(cases: list[Case], per_kind: int = CI_CASES_PER_KIND) -> list[Case]:
    """A fixed, stratified subset: per kind, `per_kind` cases (all of a smaller kind), half right and half
    wrong where the kind has both (more of one label where the other has too few), each chosen by a hash
    of the case, so the choice never moves."""

    def key(case: Case) -> str:
        return hashlib.sha256(f"{case.source}\n{case.completion}".encode()).hexdigest()

    by_kind = defaultdict(lambda: {True: [], False: []})
    for case in cases:
        by_kind[case.kind][case.expected].append(case)
    subset = []
    for labels in by_kind.values():
        right, wrong = sorted(labels[True], key=key), sorted(labels[False], key=key)
        take_right = min(len(right), max(per_kind // 2, per_kind - len(wrong)))
        subset += right[:take_right] + wrong[: per_kind - take_right]
    return subset


# ----------------------------------------------------------------------------------------------
# The two verifiers
# ----------------------------------------------------------------------------------------------


def plain_math_verify(completion: str, gold: str) -> bool:
    """The baseline, as issue 22 pins it: `parse(gold)` and `parse(completion)` with math-verify's default
    extraction configs, then `verify(gold, answer)`, with its default 5-second time-outs. The gold is given
    as a LaTeX math span (`$gold$`), the form math-verify's own documentation uses for golds: without the
    dollars it reads a bare MATH answer such as `\\left( 3, \\frac{\\pi}{2} \\right)` as 3."""
    import math_verify

    try:
        return bool(math_verify.verify(math_verify.parse(f"${gold}$"), math_verify.parse(completion)))
    except Exception:  # a crash inside math-verify counts as "not correct"
        return False


def score_project(cases: list[Case]) -> list[bool]:
    from common.verify import Verifier

    with Verifier(timeout=TIMEOUT, num_workers=1) as verifier:
        results = verifier.verify_batch([case.completion for case in cases], [case.gold for case in cases])
    return [result.correct for result in results]


def score_math_verify(cases: list[Case]) -> list[bool]:
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    return [plain_math_verify(case.completion, case.gold) for case in cases]


def errors_by_kind(cases: list[Case], scores: list[bool]) -> dict[str, tuple[int, int]]:
    """Per kind: (false negatives, false positives)."""
    counts = defaultdict(lambda: [0, 0])
    for case, score in zip(cases, scores):
        counts[case.kind][0] += case.expected and not score
        counts[case.kind][1] += score and not case.expected
    return {kind: tuple(value) for kind, value in counts.items()}


def table(cases: list[Case], ours: list[bool], baseline: list[bool]) -> str:
    """The per-kind table in markdown: cases, right and wrong ones, and each verifier's errors."""
    kinds = list(dict.fromkeys(case.kind for case in cases))
    ours_errors, baseline_errors = errors_by_kind(cases, ours), errors_by_kind(cases, baseline)
    lines = [
        "| kind | cases | right | wrong | FN here | FN math-verify | FP here | FP math-verify |",
        "|---|---|---|---|---|---|---|---|",
    ]
    totals = [0] * 7
    for kind in kinds:
        members = [case for case in cases if case.kind == kind]
        right = sum(case.expected for case in members)
        row = [len(members), right, len(members) - right, ours_errors[kind][0], baseline_errors[kind][0]]
        row += [ours_errors[kind][1], baseline_errors[kind][1]]
        totals = [total + value for total, value in zip(totals, row)]
        lines.append(f"| {kind} | " + " | ".join(f"{value:,}" for value in row) + " |")
    lines.append("| **all** | " + " | ".join(f"**{value:,}**" for value in totals) + " |")
    return "\n".join(lines)


def rules_table() -> str:
    """The deliberate rules' cases in markdown: the right score, this verifier's and plain math-verify's."""
    from common.verify import Verifier

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    with Verifier(timeout=TIMEOUT, num_workers=1) as verifier:
        scores = verifier.verify_batch([case[1] for case in DELIBERATE], [case[2] for case in DELIBERATE])
    lines = [
        "| rule | completion | gold | right score | here | plain math-verify |",
        "|---|---|---|---|---|---|",
    ]
    for (rule, completion, gold, right), score in zip(DELIBERATE, scores):
        cells = [rule, f"`{completion}`", f"`{gold}`", right, int(score.correct)]
        cells.append(int(plain_math_verify(completion, gold)))
        lines.append("| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def main(args: Args) -> None:
    if args.rules:
        print(rules_table())
        return
    start = time.perf_counter()
    cases = build_cases()
    if args.subset:
        cases = ci_subset(cases)
    print(f"{len(cases):,} graded cases built in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    start = time.perf_counter()
    ours = score_project(cases)
    print(f"common/verify.py: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    start = time.perf_counter()
    baseline = score_math_verify(cases)
    print(f"plain math-verify: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    print(table(cases, ours, baseline))
    if args.show:
        for kind in dict.fromkeys(case.kind for case in cases):
            shown = 0
            for case, here, there in zip(cases, ours, baseline):
                if (
                    case.kind == kind
                    and (here != case.expected or there != case.expected)
                    and shown < args.show
                ):
                    shown += 1
                    print(f"[{kind}] expected={case.expected} here={here} math-verify={there} {case.source}")
                    print(f"    gold: {case.gold!r}\n    completion: {case.completion!r}")


if __name__ == "__main__":
    main(tyro.cli(Args))

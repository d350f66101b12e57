r"""Verifiable reward for math answers: extract the final answer, compare it with the gold answer.

Extraction (`extract_answer`), first rule that applies wins:
  1. the LAST `\boxed{...}` or `\fbox{...}` (also `\boxed 5` without braces). Braces are matched by
     counting, so `\boxed{\frac{1}{2}}` works. Once the text has a box, the box decides: an empty or
     blank last box (only whitespace, braces, `$`, LaTeX spacing such as `\quad` or an empty `\text{}`)
     or an unclosed (truncated) one is "not parsed", and we do not fall back to an earlier box or to a
     number elsewhere in the text. Several boxes with different answers: only the last one counts. A box
     inside a box is read with the box around it: `\boxed{\boxed{7}}` is 7, but `\boxed{\boxed{7} \text{ or }
     8}` is the hedge "7 \text{ or } 8", not 7.
  2. GSM8K style: the rest of the line after the last `####` that is followed by a number or math
     (a markdown heading such as "#### Step 2" is not an answer).
  3. only if `fallback=True`: the math span or number right after the last "answer is" or "answer:"
     ("The final answer is $10,455$.", "Answer: \$32"); else the last complete math span (`$...$`,
     `$$...$$`, `\(...\)`, `\[...\]`) as one answer, unless a plain number follows it ("$\frac{5}{6}$." is
     5/6, not 6; "$14{,}916$" is 14916; "we get $3+4$, which is 7" is 7); else the last plain number
     ("1,234" -> "1234", "-3", "0.5", "3/4"). A lone "$" is money, not math; "\$" is a dollar sign, also
     inside a span (`$\$32,\!348$` is 32348, not 348).

Gold (`normalize_gold`): the box or "####" answer of a gold that has one; a gold with several boxes is
all of them, joined by ", " (`$\boxed{2}$ and $\boxed{3}$` is "2, 3", answered by `\boxed{2, 3}`); an
unclosed gold box runs to the end of the gold.

Cleanup (`_clean`, both sides): unicode minus -> "-"; "$", "\$" removed; "%", "\%" and a final "percent",
"percentage" or "pct" removed, so "18 percent" equals "18" but NOT "0.18" (no percent leniency, a known
false-positive source); `\dfrac`, `\tfrac`, `\cfrac` -> `\frac`; `\left`, `\right` removed; `\text{13}`
-> "13"; thousands separators in every LaTeX form: "12,345", "12,\!345", "12,\! 345" (a space after it),
"12{,}345", "12\,345", "12 345" -> "12345". There is no decimal comma: "3,5" is a pair, never 3.5, and a
comma with a space but no `\!` separates items ("1, 234" is a pair). A control space `\ ` is a space; a
row break `\\` stays a row break, also with a space after it.

Equivalence (`verify`), first rule that applies wins; only the last is not decided in this process:
  * a gold that is a number in a base from 2 to 36 (`52_8`, `4210_{5}`: digits 0-9 and A-Z valid in the
    base, at least one of them 0-9 or two letters, so never `x_1` or `a_{10}`) is answered by the same
    number in the same base (`52_{8}`) or by its digits alone (`52`: the question names the base); never
    in another base (`52_9`) or in decimal (`42`).
  * a gold that is a matrix or vector (`pmatrix`, `bmatrix`, `matrix`, an `array` in parentheses) is
    answered by a matrix of the same shape, equal entry by entry and in order, each pair of entries
    compared as a gold and an answer by these rules (`16/49` equals `\frac{16}{49}`; a reordered vector
    is wrong); an entry that needs math-verify is compared in the worker, one entry at a time.
  * a plain-number gold (integer, decimal, `a/b`, `\frac{a}{b}`, `\frac34`, `\frac3{4}`) is answered only
    by a plain number, compared exactly as `fractions.Fraction` (no float tolerance: "0.333" is not 1/3).
    Around the number we accept a sign, "x =" before, and after it a degree sign, a unit in `\text{}`,
    `\textbf{}`, `\mbox{}` (`5 \text{ cm}`, `15\mbox{ cm}^2`) or in plain words of two letters or more
    ("5 meters"; not a hedge or a scale word: "6 or more", "5 million"), and one pair of parentheses
    (`\left( \frac{1}{4} \right)`). An equality chain answers with its last side (`x = 2+3 = 5` is 5), and
    an ending `A \approx B` with B and with A (`\frac{1}{3} \approx 0.33`); a chain is wrong as a whole
    if two sides joined by "=" have different exact values (`2+3 = 6`, `7 = 11`) or B is not a rounding
    of A within one unit of its last digit (`7 \approx 6`). An expression that merely evaluates to the
    number is not an answer: restating "Compute 3+5-4+2." as `\boxed{3+5-4+2}` (which math-verify would
    evaluate to 6), `\sqrt{36}` for 6, or a hedge such as `6 \text{ (or 7)}` earn nothing. Only ASCII
    digits count: look-alikes (fullwidth "６", mathematical "𝟔", superscripts) are not numbers. This
    covers nearly all GSM8K / MATH answers, so 2,000 of them verify in milliseconds.
  * an empty answer after cleanup (`\boxed{\$}`) is wrong.
  * a sequence with an ellipsis (`\ldots`, `\dots`, `\cdots`, "...") on either side: equal item by item,
    in order (`1, 2, \ldots, n` is not `2, 4, \ldots, 2n`, which math-verify calls equal). A list without
    an ellipsis is a set (math-verify's rule): "2, 3" equals "3, 2".
  * a text gold (a word, a name, a time like "3:15 p.m.", or anything in `\text{}` that has no other
    LaTeX): equal if the text forms are, up to whitespace, `\text{}`/`\textbf{}`/`\mbox{}` wrappers,
    case, final punctuation and parentheses around a lone choice (`\text{(B)}` = "b"). Words (in `\text{}`
    or four letters or more, no digits or operators) and times are decided by the text alone: as
    products of letters, "Evelyn" and its anagrams agree in math-verify, and it calls "12:00" equal to
    "1:00". Short runs of letters ("xy", compared case-sensitively: they may be products) and text with
    mathematics in it ("x = 5 \text{ or } x = 7") go on to math-verify when the texts differ.
  * a gold that is an exact arithmetic expression (integers, decimals, `\frac`, + - * / `\cdot`, integer
    powers, factorials: `\frac{1}{2^{50}}`, `\frac{1}{100!}`, `2^{10}`) against an answer that is one too
    (after the chain rules): exact `Fraction` values compared here, so `\frac{1}{2^{51}}` is wrong,
    where math-verify's float tolerance calls it equal.
  * any other gold goes to math-verify: `parse("\boxed{" + gold + "}")`, the same for the prediction, and
    `math_verify.verify(gold, prediction)` with the GOLD FIRST. math-verify is asymmetric on purpose,
    so that restating the question (e.g. the inequality to solve) is not rewarded; swapped arguments
    are a known bug in other repos (open-r1 #557). Before math-verify compares them, two closed-form
    numbers (no symbol, no float: radicals, pi, e, trigonometric values; at most 200 nodes each) are
    compared numerically at 50 digits and are equal when they agree to 40 significant digits
    (`_closed_forms_equal`): fast where sympy's simplification is slow (a nested radical), and without
    a float tolerance, so `\frac{\sqrt{3}}{10^{30}}` is not `\frac{\sqrt{2}}{10^{30}}`. This runs in the
    worker, under its time-out: a pathological expression still costs at most one time-out. When
    math-verify says equal and both sides are exact finite numbers (no float, no symbol: radicals, pi,
    powers, factorials), they must also be equal by sympy's exact test, or agree to 40 significant
    digits where it cannot tell (`_exactly_equal`).
  * no substring or partial credit anywhere: "12" vs "2" is wrong, `\boxed{7+1}` vs "7" is wrong.

Known limits: the last side of an equation counts, so restating an equation that ends in the gold
(`x^2-4=0` for the gold 0) is rewarded, as in math-verify; one-letter plain-word units ("5 m") are not
units (`5 \text{ m}` is); tuples and sets of tiny exact numbers keep math-verify's tolerance; a closed
form that differs from the gold only past its 40th significant digit (`\pi + 10^{-50}` for `\pi`) is
taken as equal; a vector written as a tuple (`(-2, -14, -7)`) does not answer a `pmatrix` gold, as in
math-verify; a mixed number with a slash (`137 1/2`) is not read as one (`137 \frac{1}{2}` is).

Timeout design. math-verify's own timeout uses `signal.alarm`, which raises outside the main
thread (Math-Verify #50, #55) and cannot stop C code. So we call math-verify with its timeouts off
(`parsing_timeout=None`, `timeout_seconds=None`) inside child processes that we own, and enforce a
hard per-item timeout from here: an item that runs past `timeout` seconds gets its worker killed and
restarted, and counts as parsed=True, correct=False. The timeout holds wherever `verify` is called
from: the main thread, a worker thread, or a child process (a forked child starts workers of its own
and never touches its parent's). Each worker is a fresh interpreter
(`subprocess` running `_worker_loop`, talking over a socket with `multiprocessing.connection`): we never
fork a parent that holds torch/CUDA state, and unlike multiprocessing's 'spawn' the child does not
re-import the caller's `__main__` (no torch import per restart, no crash in scripts without an
`if __name__ == "__main__"` guard). A worker imports math-verify and runs a few warm-up comparisons
before it reports ready, so the lazy first-use costs of the parser and sympy (seconds on a busy machine)
never count against an item's timeout. After the first timeout a spare worker is kept started, so a
killed worker is replaced at once and one pathological answer costs the batch `timeout` seconds, not
a worker start-up as well. `verify()` uses one lazily created, module-level `Verifier`, so it also works
from any thread.

    >>> extract_answer("so x = 3, and the answer is \\boxed{\\frac{1}{2}}.")
    '\\frac{1}{2}'
    >>> verify("... \\boxed{0.5}", "\\frac{1}{2}")
    VerifyResult(parsed=True, correct=True, answer='0.5')
"""

import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from multiprocessing.connection import Connection, wait
from pathlib import Path


@dataclass(frozen=True)
class VerifyResult:
    parsed: bool
    """An answer could be extracted from the completion (a box, "####", or a fallback number)."""
    correct: bool
    """The extracted answer is equivalent to the gold answer. Never True when `parsed` is False."""
    answer: str | None
    """The extracted answer string, None if not parsed."""


# ----------------------------------------------------------------------------------------------
# Extraction
# ----------------------------------------------------------------------------------------------

_BOX = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")  # not \boxedfoo, a different command
_GSM8K = re.compile(r"####[ \t]*([-$\\.(0-9][^\n]*)")  # starts like a number or LaTeX, not a word
_NUMBER = re.compile(r"(?<![\w.])-?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?(?:/[0-9]+)?")
# A complete math span: $$...$$ and \[...\] may cross lines, $...$ and \(...\) may not; "\$" is a dollar,
# also inside a span ("$\$32$").
# Spans are at most 1,000 characters, so a text full of unclosed openers is still scanned in linear time.
_MATH_SPAN = re.compile(
    r"(?<!\\)\$\$(.{1,1000}?)(?<!\\)\$\$|\\\[(.{1,1000}?)\\\]|(?<!\\)\$((?:\\\$|[^$\n]){1,1000}?)(?<!\\)\$"
    r"|\\\(([^\n]{1,1000}?)\\\)",
    re.DOTALL,
)


# "The final answer is $x$." / "Answer: 12": in text without a box, the span or number right after it
# (a number may follow a money sign: "The answer is \$1,200.").
_FINAL_ANSWER = re.compile(r"\banswer\s*(?:is\s*:?|:)[ \t]*(?:\*\*)?[ \t]*", re.IGNORECASE)
_MONEY_SIGN = re.compile(r"\\?\$?")


def _last_match(pattern: re.Pattern, text: str) -> re.Match | None:
    match = None
    for match in pattern.finditer(text):  # noqa: B007 -- keep the last one
        pass
    return match


def _braced(text: str, start: int) -> str | None:
    r"""Content of the brace group opening at `text[start] == "{"`, None if it never closes.

    Escaped braces (`\{`, `\}`, as in a set `\{1, 2\}`) do not count.

    >>> _braced("{\\frac{1}{2}} rest", 0)
    '\\frac{1}{2}'
    """
    depth = 0
    i = start
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2  # skip the escaped character (\{, \}, \\)
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
        i += 1
    return None


_BLANK = re.compile(
    r"(?:\s|[{}$~]|\\(?:quad|qquad|[,;:! ]|(?:text|textrm|textbf|mbox|mathrm|mathbf|hspace|phantom)(?![a-zA-Z])))*"
)


def _is_blank(content: str) -> bool:
    r"""True if a box holds nothing but whitespace, braces, "$", "~", LaTeX spacing and empty wrappers.

    >>> _is_blank("{}"), _is_blank("\\quad\\text{ }"), _is_blank("\\,$ $"), _is_blank("{0}")
    (True, True, True, False)
    """
    return _BLANK.fullmatch(content) is not None


def _box_content(text: str, match: re.Match) -> str | None:
    """Content of the box that `match` (a `_BOX` match) opens; None if it is unclosed."""
    rest = text[match.end() :].lstrip()
    if rest.startswith("{"):
        return _braced(rest, 0)
    return re.match(r"[^\s$]*", rest).group().rstrip(".,;")  # "\boxed 5": one token, up to space or "$"


def _outermost_box(text: str, inner: re.Match) -> re.Match:
    r"""The outermost box whose braces hold the box `inner` opens (`inner` itself if none does): one
    pass over the text before it, counting braces.

    >>> text = "\\boxed{\\boxed{7} \\text{ or } 8}"
    >>> _outermost_box(text, _last_match(_BOX, text)).start()
    0
    """
    open_boxes: list[re.Match | None] = []  # one entry per open brace: the box it opens, or None
    i = 0
    while i < inner.start():
        char = text[i]
        if char == "\\":
            box = _BOX.match(text, i)
            if box is not None:
                rest = text[box.end() : inner.start()]
                if rest.lstrip().startswith("{"):  # this box's brace opens after optional spaces
                    brace = box.end() + len(rest) - len(rest.lstrip())
                    open_boxes.append(box)
                    i = brace + 1
                    continue
            i += 2  # an escaped character (\{, \}) or a command's first letter
            continue
        if char == "{":
            open_boxes.append(None)
        elif char == "}" and open_boxes:
            open_boxes.pop()
        i += 1
    return next((box for box in open_boxes if box is not None), inner)


def _unbox(content: str) -> str:
    r"""A box's content with every box inside it replaced by that box's content.

    >>> _unbox("\\boxed{7}"), _unbox("\\boxed{7} \\text{ or } 8")
    ('7', '7 \\text{ or } 8')
    """
    for _ in range(8):  # a bound: a pathological answer nests deeper
        inner = _BOX.search(content)
        if inner is None:
            break
        inner_content = _box_content(content, inner)
        if inner_content is None:
            break
        rest = content[inner.end() :]
        start = inner.end() + len(rest) - len(rest.lstrip())  # where "{" or the brace-less token opens
        end = start + len(inner_content) + (2 if content.startswith("{", start) else 0)
        content = content[: inner.start()] + inner_content + content[end:]
    return content


def _last_box(text: str) -> tuple[bool, str | None]:
    r"""(text has a box, content of its last box or None if that box is blank or unclosed).

    A box inside a box is read with the box around it: `\boxed{\boxed{7}}` is 7, and
    `\boxed{\boxed{7} \text{ or } 8}` is "7 \text{ or } 8", a hedge, not 7.
    """
    last = _last_match(_BOX, text)
    if last is None:
        return False, None
    if last.start() > 0 and _BOX.search(text, 0, last.start()):  # more than one box: is it inside one?
        last = _outermost_box(text, last)
    content = _box_content(text, last)
    if content is None or _is_blank(content):
        return True, None
    if _BOX.search(content):
        content = _unbox(content)
        if _is_blank(content):
            return True, None
    return True, content.strip()


def _last_math_span(text: str) -> tuple[int, str] | None:
    r"""(end position, content) of the last complete, non-blank math span, or None.

    >>> _last_math_span("so $x = \\frac{5}{6}$.")
    (20, 'x = \\frac{5}{6}')
    >>> _last_math_span("It costs $5 in total.") is None  # a lone dollar sign is money, not math
    True
    """
    if "$" not in text and "\\(" not in text and "\\[" not in text:  # the common case, kept cheap
        return None
    last = None
    for match in _MATH_SPAN.finditer(text):
        content = next(group for group in match.groups() if group is not None)
        if not _is_blank(content):
            last = (match.end(), content.strip())
    return last


def extract_answer(text: str, fallback: bool = True) -> str | None:
    r"""The final answer in a completion, or None. See the module docstring for the order.

    >>> extract_answer("\\boxed{7} no wait, \\boxed{8}")
    '8'
    >>> extract_answer("\\boxed{}") is None  # an empty box is never an answer
    True
    >>> extract_answer("She pays 3 * 24 = 72 dollars.\n#### 72")
    '72'
    >>> extract_answer("It costs $1,234 in total.")
    '1234'
    >>> extract_answer("It costs $1,234 in total.", fallback=False) is None
    True
    >>> extract_answer("The probability is $\\frac{5}{6}$.")  # the whole math span, not its last number
    '\\frac{5}{6}'
    >>> extract_answer("We get $3+4$, which is 7.")  # a plain number after the last span wins
    '7'
    >>> extract_answer("It costs $5 and $2+3=5$.\nThe final answer is $\\$32,\\!348$.")  # the stated answer
    '\\$32,\\!348'
    """
    text = text.replace("\u2212", "-")  # unicode minus
    has_box, boxed = _last_box(text)
    if has_box:
        return boxed
    if gsm8k := _last_match(_GSM8K, text):
        return gsm8k.group(1).strip().rstrip(".") or None  # "#### ." is no answer
    if not fallback:
        return None
    if (final := _last_match(_FINAL_ANSWER, text)) is not None:
        money = _MONEY_SIGN.match(text, final.end()).end()
        stated = _MATH_SPAN.match(text, final.end()) or _NUMBER.match(text, money)
        if stated is not None and stated.re is _NUMBER:
            return stated.group().replace(",", "")
        if stated is not None and not _is_blank(content := next(g for g in stated.groups() if g is not None)):
            return content.strip()
    span = _last_math_span(text)
    number = _last_match(_NUMBER, text)
    if span is not None and (number is None or number.start() < span[0]):
        return span[1]
    if number is not None:
        return number.group().replace(",", "")
    return None


def parse_tag(text: str, tag: str) -> str | None:
    """Content of the LAST `<tag>...</tag>`, stripped; None if there is none.

    >>> parse_tag("<confidence>0.2</confidence> ... <confidence> 0.9 </confidence>", "confidence")
    '0.9'
    >>> parse_tag("no tag here", "confidence") is None
    True
    """
    matches = re.findall(rf"<{re.escape(tag)}>(.*?)</{re.escape(tag)}>", text, flags=re.DOTALL)
    return matches[-1].strip() if matches else None


# ----------------------------------------------------------------------------------------------
# Normalization and the exact, in-process comparisons
# ----------------------------------------------------------------------------------------------

_TEXT_COMMANDS = r"\\(?:text|textrm|textbf|textit|textnormal|mbox|mathrm|mathbf|mathit)"
_WHOLE_TEXT = re.compile(_TEXT_COMMANDS + r"\{([^{}]*)\}")
_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?![a-zA-Z])\s*")  # \left( -> (, never \rightarrow
_PERCENT_WORD = re.compile(r"\s*(?:" + _TEXT_COMMANDS + r"\{\s*)?(?:percent(?:age)?|pct)\.?\s*\}?$")
_THOUSANDS = re.compile(r"-?[0-9]{1,3}(?:(?:,[0-9]{3})+|(?: [0-9]{3})+)(?:\.[0-9]+)?")  # 12,345 / 12 345
_TRAILING_UNIT = re.compile(r"\s*" + _TEXT_COMMANDS + r"\{([^{}0-9]*)\}(?:\^\{?[23]\}?)?$")  # \text{ cm}^2
_SPACED_SEPARATOR = re.compile(r"(?<=[0-9]),\\!\s*(?=[0-9]{3}(?![0-9]))")  # "11,\! 111" -> "11,111"
_CONTROL_SPACE = re.compile(r"\\[\\ ]")  # a backslash pair, left to right: a row break or a control space
_UNIT_WORDS = re.compile(r"\s+([a-zA-Z]{2,}(?:\s+[a-zA-Z]{2,})*)\.?(?:\^\{?[23]\}?)?$")  # 5 meters
# Words that turn "6 <words>" into a hedge or a range, never a unit: "6 or more", "6 at least".
_HEDGE_WORDS = frozenset(
    re.findall(
        r"\w+",
        "or and nor not plus minus times over than more less fewer at least most about approximately around "
        "roughly nearly almost maybe perhaps possibly probably either to through up down half quarter third "
        "dozen hundred hundreds thousand thousands million millions billion billions trillion one two three "
        "four five six seven eight nine ten eleven twelve",
    )
)
_DECIMAL = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_SLASH_FRACTION = re.compile(r"(-?[0-9]+)/([0-9]+)")
_LATEX_FRACTION = re.compile(
    r"(-?)\\frac\s*(?:\{\s*(-?[0-9]+)\s*\}|([0-9]))\s*(?:\{\s*([0-9]+)\s*\}|([0-9]))"
)
_RELATION = re.compile(r"\\approx(?![a-zA-Z])|\u2248|(?<![<>!\\])=(?!=)")  # "=" and "\approx" split sides
_ELLIPSIS = re.compile(r"\\[lc]?dots(?![a-zA-Z])|\.\.\.|\u2026")


def _clean(answer: str) -> str:
    r"""Light, meaning-preserving cleanup applied to both prediction and gold before comparing.

    >>> _clean("\\$1,000")
    '1000'
    >>> _clean("18\\%"), _clean("18 percent"), _clean("18 \\text{pct}"), _clean("\\text{18 percent}")
    ('18', '18', '18', '18')
    >>> _clean("\\dfrac{3}{4}"), _clean("\\cfrac{3}{4}"), _clean("\\left( \\frac{1}{4} \\right)")
    ('\\frac{3}{4}', '\\frac{3}{4}', '( \\frac{1}{4} )')
    >>> _clean("12,\\!345"), _clean("12{,}345"), _clean("12\\,345"), _clean("12 345")
    ('12345', '12345', '12345', '12345')
    >>> _clean("11,\\! 111,\\! 100")  # a separator with a space after it
    '11111100'
    >>> _clean("\\begin{pmatrix} -2 \\\\ -14 \\end{pmatrix}"), _clean("5\\ \\text{cm}")  # a row break stays
    ('\\begin{pmatrix} -2 \\\\ -14 \\end{pmatrix}', '5 \\text{cm}')
    """
    answer = answer.replace("\u2212", "-").replace("\\$", "").replace("$", "")
    answer = answer.replace("\\%", "").replace("%", "")
    answer = answer.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\cfrac", "\\frac")
    answer = answer.replace("{,}", ",")
    if "\\!" in answer:  # a separator with a space after it ("11,\! 111") is still a separator
        answer = _SPACED_SEPARATOR.sub(",", answer).replace("\\!", "")
    answer = answer.replace("\\,", "")
    if "\\ " in answer:  # a control space is a space; a row break followed by a space stays a row break
        answer = _CONTROL_SPACE.sub(lambda match: match.group() if match.group() == "\\\\" else " ", answer)
    answer = answer.replace("~", " ").strip()
    if "\\left" in answer or "\\right" in answer:
        answer = _LEFT_RIGHT.sub("", answer)
    whole_text = _WHOLE_TEXT.fullmatch(answer)
    if whole_text:  # \text{13} -> 13
        answer = whole_text.group(1).strip()
    if "per" in answer or "pct" in answer:
        answer = _PERCENT_WORD.sub("", answer)
    if _THOUSANDS.fullmatch(answer):  # 1,234 -> 1234 (a whole-number answer only, not "(1,234)")
        answer = answer.replace(",", "").replace(" ", "")
    return answer


def _as_number(answer: str) -> Fraction | None:
    r"""The exact value of a cleaned plain-number answer, None if it is anything else.

    Also accepts a sign, "x = " before, and after the number a degree sign, a unit in `\text{}`,
    `\textbf{}` or `\mbox{}` (`\text{ cm}`, `\mbox{ m}^2`) or in plain words of two letters or more
    (`5 meters`, but not a hedge: `6 or more`), and one pair of parentheses around it; a unit is only
    removed next to a plain number, so `3+2\text{i}` is never "3+2". Anything with arithmetic left in it
    (`7+1`, `2^3`, `\sqrt{36}`) or non-ASCII digits is not a plain number.

    >>> _as_number("x = -0.5"), _as_number("\\frac12"), _as_number("30^\\circ"), _as_number("5\\text{ cm}")
    (Fraction(-1, 2), Fraction(1, 2), Fraction(30, 1), Fraction(5, 1))
    >>> _as_number("5 meters"), _as_number("\\frac3{4}"), _as_number("(\\frac{1}{4} )"), _as_number("12,345")
    (Fraction(5, 1), Fraction(3, 4), Fraction(1, 4), Fraction(12345, 1))
    >>> _as_number("7+1") is None, _as_number("\\sqrt{36}") is None, _as_number("\uff16") is None
    (True, True, True)
    >>> _as_number("6 or more") is None, _as_number("(1,234)") is None  # a hedge; a point, not a number
    (True, True)
    """
    if len(answer) > 100:  # also keeps clear of int()'s 4300-digit limit
        return None
    answer = answer.strip()
    if "=" in answer:
        answer = re.sub(r"^[a-zA-Z]\s*=\s*", "", answer)  # x = 5
    answer = re.sub(r"^\+?(-?)\s*", r"\1", answer)  # "+5" -> "5", "- 5" -> "-5"
    if "circ" in answer or "°" in answer:
        answer = re.sub(r"\s*(?:\^\{?\\circ\}?|°)$", "", answer)  # 30^\circ
    for unit_pattern in (_TRAILING_UNIT, _UNIT_WORDS):  # 5\text{ cm}, 5 meters
        unit = unit_pattern.search(answer) if ("\\" in answer or " " in answer) else None
        if unit and _HEDGE_WORDS.isdisjoint(unit.group(1).lower().split()):
            answer = answer[: unit.start()]
    if answer.startswith("(") and answer.endswith(")") and "," not in answer:  # (5), \left( 5 \right)
        answer = answer[1:-1].strip()
    if _THOUSANDS.fullmatch(answer):  # "x = 12,345" or "12 345 cm" (the whole answer is done in _clean)
        answer = answer.replace(",", "").replace(" ", "")
    try:
        if _DECIMAL.fullmatch(answer):
            return Fraction(answer)
        if match := _SLASH_FRACTION.fullmatch(answer):
            return Fraction(int(match.group(1)), int(match.group(2)))
        if match := _LATEX_FRACTION.fullmatch(answer):
            sign, num, num_digit, den, den_digit = match.groups()
            value = Fraction(int(num or num_digit), int(den or den_digit))
            return -value if sign else value
    except (ValueError, ZeroDivisionError):
        return None
    return None


# The exact evaluator: +, -, *, \cdot, \times, /, \div, ^ (integer exponents), ! and \frac over integers
# and decimals, in Fraction arithmetic. Anything else (a symbol, \sqrt, \pi) makes it answer None.
_EXACT_TOKEN = re.compile(
    r"\s*(?:([0-9]+(?:\.[0-9]+)?)|(\\frac|\\cdot|\\times|\\div)(?![a-zA-Z])|([-+*/^!(){}]))"
)
_MAX_BITS = 40_000  # a bigger intermediate value is not evaluated exactly here (math-verify gets it)
_MAX_FACTORIAL = 3_000


def _exact_value(expression: str) -> Fraction | None:
    r"""The exact rational value of an arithmetic expression, None if it is not one or too big.

    Used where the gold is an exact expression rather than a plain number (`\frac{1}{2^{50}}`, `10!`), so
    tiny or huge values are compared exactly, never within a float tolerance.

    >>> _exact_value("\\frac{1}{2^{50}}") == Fraction(1, 2**50), _exact_value("\\frac{1}{100!}") == Fraction(1, math.factorial(100))
    (True, True)
    >>> _exact_value("2 \\cdot 3 - 4/8"), _exact_value("-2^{2}"), _exact_value("(1+2)^{-1}")
    (Fraction(11, 2), Fraction(-4, 1), Fraction(1, 3))
    >>> _exact_value("2x") is None, _exact_value("\\sqrt{2}") is None, _exact_value("10^{10^{10}}") is None
    (True, True, True)
    """
    if len(expression) > 200:
        return None
    tokens, position = [], 0
    while position < len(expression):
        match = _EXACT_TOKEN.match(expression, position)
        if match is None:
            return None if expression[position:].strip() else _evaluate(tokens)
        tokens.append(match.group(match.lastindex))
        position = match.end()
    return _evaluate(tokens)


class _NotExact(Exception):
    pass


def _evaluate(tokens: list[str]) -> Fraction | None:
    """Recursive descent over `_exact_value`'s tokens; None on a syntax error or a too-big value."""
    position = 0

    def peek() -> str | None:
        return tokens[position] if position < len(tokens) else None

    def take() -> str:
        nonlocal position
        if position >= len(tokens):
            raise _NotExact
        position += 1
        return tokens[position - 1]

    def check(value: Fraction) -> Fraction:
        if value.numerator.bit_length() > _MAX_BITS or value.denominator.bit_length() > _MAX_BITS:
            raise _NotExact
        return value

    def expression() -> Fraction:  # term (("+" | "-") term)*
        value = term()
        while peek() in ("+", "-"):
            value = check(value + term() if take() == "+" else value - term())
        return value

    def term() -> Fraction:  # unary (("*" | "/" | ...) unary)*
        value = unary()
        while peek() in ("*", "\\cdot", "\\times", "/", "\\div"):
            operator, right = take(), unary()
            if operator in ("/", "\\div"):
                if right == 0:
                    raise _NotExact
                value = check(value / right)
            else:
                value = check(value * right)
        return value

    def unary() -> Fraction:  # ("-" | "+") unary | power
        if peek() in ("-", "+"):
            return -unary() if take() == "-" else unary()
        return power()

    def power() -> Fraction:  # postfix ("^" exponent)?, right-associative
        base = postfix()
        if peek() != "^":
            return base
        take()
        if peek() in ("{", "("):
            exponent = group()
        else:
            digit = take()
            if not digit.isdigit() or len(digit) != 1:  # "2^10" is 2^1 0 in LaTeX: not guessed
                raise _NotExact
            exponent = Fraction(int(digit))
        if exponent.denominator != 1 or (base == 0 and exponent < 0):
            raise _NotExact
        bits = max(base.numerator.bit_length(), base.denominator.bit_length())
        if bits * abs(exponent.numerator) > _MAX_BITS:
            raise _NotExact
        return base**exponent.numerator

    def postfix() -> Fraction:  # atom "!"*
        value = atom()
        while peek() == "!":
            take()
            if value.denominator != 1 or not 0 <= value <= _MAX_FACTORIAL:
                raise _NotExact
            value = check(Fraction(math.factorial(value.numerator)))
        return value

    def group() -> Fraction:
        opening = take()
        value = expression()
        if take() != {"(": ")", "{": "}"}[opening]:
            raise _NotExact
        return value

    def argument() -> Fraction:  # \frac's argument: {expression} or one digit
        if peek() == "{":
            return group()
        token = take()
        if not token.isdigit() or len(token) != 1:
            raise _NotExact
        return Fraction(int(token))

    def atom() -> Fraction:
        token = peek()
        if token in ("(", "{"):
            return group()
        if token == "\\frac":
            take()
            if (peek() or "").isdigit() and len(peek()) == 2:
                digits = take()  # \frac34
                numerator, denominator = Fraction(int(digits[0])), Fraction(int(digits[1]))
            else:
                numerator, denominator = argument(), argument()
            if denominator == 0:
                raise _NotExact
            return check(numerator / denominator)
        token = take()
        if token[0].isdigit():
            return Fraction(token)
        raise _NotExact

    try:
        value = expression()
    except (_NotExact, ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None
    return value if position == len(tokens) else None


def _sides(answer: str) -> list[tuple[str, str]]:
    r"""The sides of an equality or approximation chain, each with the relation before it ("" first).

    >>> _sides("x = 2+3 \\approx 5")
    [('', 'x'), ('=', '2+3'), ('\\approx', '5')]
    """
    sides, start, relation = [], 0, ""
    for match in _RELATION.finditer(answer):
        sides.append((relation, answer[start : match.start()].strip()))
        relation = "=" if match.group() == "=" else "\\approx"
        start = match.end()
    sides.append((relation, answer[start:].strip()))
    return sides


def _is_rounding(value: Fraction, rounded: Fraction, rounded_text: str) -> bool:
    r"""True if `rounded` (written `rounded_text`) is within one unit of its last digit of `value`.

    >>> _is_rounding(Fraction(1, 3), Fraction(33, 100), "0.33"), _is_rounding(Fraction(7), Fraction(6), "6")
    (True, False)
    """
    decimals = (
        len(rounded_text.rsplit(".", 1)[1]) if _DECIMAL.fullmatch(rounded_text) and "." in rounded_text else 0
    )
    return abs(value - rounded) < Fraction(1, 10**decimals)


def _chain_answers(answer: str, value_of) -> list[Fraction] | None:
    r"""The values an equality chain answers with: its last side, and the side before an `\approx` that
    ends it (the exact value before its rounding). None if a side is empty, if two sides joined by "="
    have different exact values (`2+3 = 6`, `7 = 11`: a false statement or a hedge), or if a side after
    `\approx` is not a rounding of the exact value before it (`7 \approx 6`, `1/3 \approx 1.3`).

    >>> _chain_answers("x = 2+3 = 5", _as_number)
    [Fraction(5, 1)]
    >>> _chain_answers("\\frac{1}{3} \\approx 0.33", _as_number)
    [Fraction(33, 100), Fraction(1, 3)]
    >>> _chain_answers("x = 7 = 11", _as_number) is None, _chain_answers("2+3 = 6", _as_number) is None
    (True, True)
    >>> _chain_answers("7 \\approx 6", _as_number) is None
    True
    """
    sides = _sides(answer)
    if any(not side for _, side in sides[1:]):
        return None
    previous = None  # the exact value of the previous side, if it has one
    for relation, side in sides:
        value = _as_number(side)
        if value is None:
            value = _exact_value(side)
        if value is not None and previous is not None:
            if relation == "=" and value != previous:
                return None
            if relation == "\\approx" and not _is_rounding(previous, value, side.strip()):
                return None
        previous = value if value is not None else (previous if relation == "=" else None)
    answers = [value_of(sides[-1][1])]
    if sides[-1][0] == "\\approx":
        answers.append(value_of(sides[-2][1]))
    return [value for value in answers if value is not None]


def _matches_number(answer: str, gold_value: Fraction) -> bool:
    r"""A cleaned answer states the number `gold_value`: as a plain number, or as the last side of an
    equality chain or the value around a final `\approx` (`x = 2+3 = 5`, `\pi \approx 3.14`).

    >>> _matches_number("x = 2+3 = 5", Fraction(5)), _matches_number("\\pi \\approx 3.14", Fraction(314, 100))
    (True, True)
    >>> _matches_number("3+5-4+2", Fraction(6)), _matches_number("5 = 6", Fraction(6))
    (False, False)
    """
    if "=" not in answer and "approx" not in answer and "\u2248" not in answer:
        return _as_number(answer) == gold_value
    answers = _chain_answers(answer, _as_number)
    return answers is not None and gold_value in answers


def _matches_exact(answer: str, gold_value: Fraction) -> bool | None:
    r"""For a gold that is an exact expression: True/False when the answer's value is exact too, None
    when it is not (math-verify decides then).

    >>> _matches_exact("\\frac{1}{2^{51}}", _exact_value("\\frac{1}{2^{50}}"))
    False
    >>> _matches_exact("1024", _exact_value("2^{10}")), _matches_exact("2^{x}", _exact_value("2^{10}")) is None
    (True, True)
    """

    def value_of(side: str) -> Fraction | None:
        value = _as_number(side)
        return value if value is not None else _exact_value(side)

    if "=" not in answer and "approx" not in answer and "\u2248" not in answer:
        value = value_of(answer)
        return None if value is None else value == gold_value
    answers = _chain_answers(answer, value_of)
    if answers is None:  # a false or self-contradicting chain
        return False
    if gold_value in answers:
        return True
    return False if answers else None


def _sequence_items(answer: str) -> list[str]:
    """The comma-separated items of a sequence, outer braces or brackets removed, spacing dropped."""
    answer = _ELLIPSIS.sub("...", answer).replace(" ", "")
    for opening, closing in (("\\{", "\\}"), ("(", ")"), ("[", "]"), ("{", "}")):
        if answer.startswith(opening) and answer.endswith(closing):
            answer = answer[len(opening) : -len(closing)]
            break
    return answer.split(",")


def _sequences_equal(gold: str, answer: str) -> bool:
    r"""Sequences with an ellipsis are equal only item by item, in order: the same pattern.

    >>> _sequences_equal("1, 2, \\ldots, n", "1,2,\\dots,n"), _sequences_equal("1, 2, \\ldots, n", "2, 4, \\ldots, 2n")
    (True, False)
    """
    gold_items, answer_items = _sequence_items(gold), _sequence_items(answer)
    if len(gold_items) != len(answer_items):
        return False
    for gold_item, answer_item in zip(gold_items, answer_items):
        if gold_item == answer_item:
            continue
        gold_number = _as_number(gold_item)
        if gold_number is None or _as_number(answer_item) != gold_number:
            return False
    return True


_TEXT_WRAPPER = re.compile(_TEXT_COMMANDS + r"\s*\{([^{}]*)\}")
_WORD = re.compile(r"[a-zA-Z]{2,}|(?:[a-zA-Z]\.){2,}")  # "Monday", "p.m."
_TIME = re.compile(r"(?<![0-9])[0-9]{1,2}:[0-9]{2}(?![0-9])")  # "12:00", a clock time


def _text_form(answer: str, fold_case: bool = True) -> str:
    r"""A text answer as compared: `\text{}` wrappers and all whitespace removed, case folded (for words:
    `fold_case`), final punctuation and one pair of parentheses around a lone word or letter dropped.

    >>> _text_form("\\text{3:15 P.M.}"), _text_form("\\textbf{(B)}"), _text_form(" Evelyn. "), _text_form("AB", False)
    ('3:15p.m', 'b', 'evelyn', 'AB')
    """
    answer = _TEXT_WRAPPER.sub(r"\1", answer)
    answer = "".join(answer.split()).rstrip(".!;,:")
    answer = answer.casefold() if fold_case else answer
    if re.fullmatch(r"\([a-zA-Z0-9]+\)", answer):
        answer = answer[1:-1]
    return answer


def _is_text_gold(gold: str) -> bool:
    r"""True for a gold that only reads as text: a word, a name, a time, a choice in `\text{}`.

    >>> _is_text_gold("3:15 p.m."), _is_text_gold("\\text{(B)}"), _is_text_gold("Evelyn"), _is_text_gold("12:00")
    (True, True, True, True)
    >>> _is_text_gold("x+1"), _is_text_gold("\\frac{\\pi}{2}"), _is_text_gold("2\\sqrt{2}\\text{ cm}")
    (False, False, False)
    """
    has_wrapper = "\\" in gold and _TEXT_WRAPPER.search(gold) is not None
    text = _TEXT_WRAPPER.sub(r"\1", gold) if has_wrapper else gold
    if any(char in text for char in "\\{}^_"):
        return False
    if not any(char.isalnum() for char in text):  # "???" is no answer at all
        return False
    return has_wrapper or _WORD.search(text) is not None or _TIME.search(text) is not None


def _gold_parts(gold: str, depth: int = 0) -> list[str]:
    r"""The contents of a gold's boxes, in order, repeats dropped; a box inside a box counts once, and an
    unclosed box runs to the end of the gold.

    >>> _gold_parts("$\\boxed{1}$ or $\\boxed{-1}$"), _gold_parts("\\boxed{\\boxed{2}} and \\boxed{2"), _gold_parts("\\boxed{}")
    (['1', '-1'], ['2'], [])
    """
    parts, covered_until = [], 0
    for match in _BOX.finditer(gold):
        if match.start() < covered_until:  # inside the previous box
            continue
        start = len(gold) - len(gold[match.end() :].lstrip())  # where the box's content opens
        content = _box_content(gold, match)
        if content is None:  # unclosed: the rest of the gold
            content, covered_until = gold[start:].lstrip("{").rstrip("$. "), len(gold)
        else:
            covered_until = start + len(content) + (2 if gold.startswith("{", start) else 0)
        nested = depth < 8 and _BOX.search(content)  # (a bound keeps a pathological gold from recursing deep)
        contents = _gold_parts(content, depth + 1) if nested else [content.strip()]
        parts += [part for part in contents if part and not _is_blank(part) and part not in parts]
    return parts


def _is_words_gold(gold: str) -> bool:
    r"""True for a text gold that the text alone decides: a time, or words (a `\text{}` wrapper or a run of
    four letters or more) with no digits or operators. Short runs of letters ("xy", "ab") may be products.

    >>> _is_words_gold("3:15 p.m."), _is_words_gold("\\text{(B)}"), _is_words_gold("Evelyn"), _is_words_gold("xy")
    (True, True, True, False)
    """
    text = _TEXT_WRAPPER.sub(r"\1", gold)
    if _TIME.search(text):
        return True
    if any(char in text for char in "0123456789=+-*/<>"):
        return False
    return text != gold or re.search(r"[a-zA-Z]{4,}", text) is not None


def normalize_gold(gold: str) -> str | None:
    r"""A dataset's gold answer as the canonical string we compare against; None if empty.

    Takes the box or the GSM8K "####" answer if there is one (so a MATH solution with its one box, or a
    whole GSM8K answer field, works), then applies the same cleanup as to predictions. A gold with
    several boxes is all of them, joined by ", " (an answer in several parts); an unclosed box runs to
    the end of the gold. (A completion is different: only its last, closed box counts.)

    >>> normalize_gold("Natalia sold 48/2 = 24 clips in May.\n#### 1,072")
    '1072'
    >>> normalize_gold("$\\boxed{\\dfrac{1}{2}}$")
    '\\frac{1}{2}'
    >>> normalize_gold("$\\boxed{2}$ and $\\boxed{3}$"), normalize_gold("\\boxed{\\frac{1}{2}$")
    ('2, 3', '\\frac{1}{2}')
    >>> normalize_gold("\\boxed{\\boxed{2}}")  # a box inside a box is one answer
    '2'

    >>> normalize_gold("  ") is None
    True
    """
    if _BOX.search(gold):
        gold = ", ".join(_gold_parts(gold))
    elif _GSM8K.search(gold):
        gold = extract_answer(gold, fallback=False) or ""
    gold = _clean(gold)
    return gold or None


_IN_BASE = re.compile(r"\(?([0-9A-Z]+)\)?_(?:\{\s*\(?([0-9]{1,2})\)?\s*\}|([0-9]))")
_TEXT_DIGITS = re.compile(r"\\(?:text|textrm|mathrm)\{\s*([0-9A-Z]+)\s*\}")  # \text{52}_8, 52_{\text{8}}
_VARIABLE_PREFIX = re.compile(r"^[a-zA-Z]\s*=\s*")


def _in_base(answer: str) -> tuple[int, int] | None:
    r"""(value, base) of a number written in a base from 2 to 36 (`52_8`, `4210_{5}`, `A2_{11}`, `(52)_8`,
    `52_{\text{8}}`), None for anything else. Its digits are 0-9 and A-Z, each valid in the base, with at
    least one 0-9 digit or two letters, so a variable with an index (`x_1`, `a_{10}`, `A_{10}`) is never a
    number in a base.

    >>> _in_base("52_8"), _in_base("4210_{5}"), _in_base("A2_{11}"), _in_base("x = 101_2")
    ((42, 8), (555, 5), (112, 11), (5, 2))
    >>> _in_base("(52)_8"), _in_base("52_{\\text{8}}"), _in_base("\\text{52}_{(8)}")
    ((42, 8), (42, 8), (42, 8))
    >>> _in_base("x_1"), _in_base("a_{10}"), _in_base("A_{10}"), _in_base("59_8"), _in_base("10_1")
    (None, None, None, None, None)
    """
    if "\\" in answer:
        answer = _TEXT_DIGITS.sub(r"\1", answer)
    match = _IN_BASE.fullmatch(_VARIABLE_PREFIX.sub("", answer.strip()))
    if match is None:
        return None
    digits, base = match.group(1), int(match.group(2) or match.group(3))
    if not 2 <= base <= 36 or not (any(char.isdigit() for char in digits) or len(digits) >= 2):
        return None
    if any(int(char, 36) >= base for char in digits):
        return None
    return int(digits, base), base


def _matches_in_base(answer: str, value: int, base: int) -> bool:
    r"""A number in a base is answered by the same number in the same base (`52_{8}` for `52_8`), or by its
    digits alone (`52`: the question names the base); never in another base (`52_9`) or in decimal (`42`).

    >>> _matches_in_base("52_{8}", 42, 8), _matches_in_base("52", 42, 8), _matches_in_base("52_9", 42, 8)
    (True, True, False)
    >>> _matches_in_base("42", 42, 8), _matches_in_base("42_{10}", 42, 8)
    (False, False)
    """
    in_base = _in_base(answer)
    if in_base is not None:
        return in_base == (value, base)
    digits = _VARIABLE_PREFIX.sub("", answer.strip())
    if not re.fullmatch(r"[0-9A-Z]+", digits) or any(int(char, 36) >= base for char in digits):
        return False
    return int(digits, base) == value


_MATRIX = re.compile(
    r"\s*[(\[]?\s*\\begin\{(pmatrix|bmatrix|Bmatrix|matrix|smallmatrix|array)\}(?:\{[^{}]*\})?"
    r"(.*?)\\end\{\1\}\s*[)\]]?\s*",
    re.DOTALL,
)


def _matrix(answer: str) -> list[list[str]] | None:
    r"""The entries of a matrix or vector (`pmatrix`, `bmatrix`, `matrix`, an `array` in parentheses), row
    by row; None for anything else. An equation's last side counts (`\mathbf{v} = \begin{pmatrix}...`).
    A determinant (`vmatrix`) is a number, not a matrix.

    >>> _matrix("\\begin{pmatrix} -2 \\\\ \\frac{1}{2} \\end{pmatrix}")
    [['-2'], ['\\frac{1}{2}']]
    >>> _matrix("v = \\begin{bmatrix} 1 & 2 \\end{bmatrix}")
    [['1', '2']]
    >>> _matrix("(-2, 1)") is None, _matrix("\\begin{vmatrix} 1 & 2 \\\\ 3 & 4 \\end{vmatrix}") is None
    (True, True)
    """
    if "=" in answer:
        answer = _sides(answer)[-1][1]
    match = _MATRIX.fullmatch(answer)
    if match is None:
        return None
    body = match.group(2).replace("\\hline", "")
    rows = [row for row in re.split(r"\\\\(?![a-zA-Z])", body) if row.strip()]
    return [[entry.strip() for entry in row.split("&")] for row in rows] or None


def _matrices_equal_here(gold: list[list[str]], answer: list[list[str]]) -> bool | None:
    r"""Matrices are equal entry by entry, in order, with the same shape; each pair of entries compared as
    a gold and an answer (`_compare_here`). None when an entry needs math-verify (the worker then compares
    the entries one by one).

    >>> _matrices_equal_here([["-2"], ["\\frac{16}{49}"]], [["-2"], ["16/49"]])
    True
    >>> _matrices_equal_here([["-2"], ["-14"]], [["-14"], ["-2"]])  # reordered
    False
    >>> _matrices_equal_here([["1", "2"]], [["1"], ["2"]])  # a row is not a column
    False
    """
    if [len(row) for row in gold] != [len(row) for row in answer]:
        return False
    verdicts = [_compare_here(g, a) for g, a in zip(sum(gold, []), sum(answer, []))]
    if False in verdicts:
        return False
    return None if None in verdicts else True


def _compare_here(gold: str, answer: str) -> bool | None:
    r"""Compare a normalized gold and a cleaned answer in this process; None hands the pair to math-verify.

    In order: a number in a base (the same digits and base); a matrix or vector (entry by entry, in
    order); a plain-number gold (exact, plain number answers only); an empty answer (wrong); a sequence
    with an ellipsis (item by item, in order); a text gold (text forms equal; words and times decided
    here); an exact-expression gold (exact values equal, when the answer has one).

    >>> _compare_here("5", "x = 2+3 = 5"), _compare_here("5", "2+3"), _compare_here("3:15 p.m.", "3:15 PM")
    (True, False, False)
    >>> _compare_here("Evelyn", "evelyn"), _compare_here("Evelyn", "lyEven"), _compare_here("xy", "yx") is None
    (True, False, True)
    >>> _compare_here("\\frac{1}{100!}", "\\frac{1}{101!}"), _compare_here("\\sqrt{2}", "\\frac{2}{\\sqrt{2}}") is None
    (False, True)
    >>> _compare_here("52_8", "52_{8}"), _compare_here("52_8", "52_9")  # a number in a base
    (True, False)
    >>> _compare_here("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}")
    False
    """
    if "_" in gold and (in_base := _in_base(gold)) is not None:  # a number in a base: digits and base
        return _matches_in_base(answer, *in_base)
    if "\\begin" in gold and (gold_matrix := _matrix(gold)) is not None:  # entry by entry, in order
        answer_matrix = _matrix(answer)
        return False if answer_matrix is None else _matrices_equal_here(gold_matrix, answer_matrix)
    gold_value = _as_number(gold)
    if gold_value is not None:  # a number is answered by a number, compared exactly, here
        return _matches_number(answer, gold_value)
    if not answer:  # e.g. "\boxed{\$}": nothing left to compare
        return False
    if _ELLIPSIS.search(gold) or _ELLIPSIS.search(answer):
        return _sequences_equal(gold, answer)
    if _is_text_gold(gold):
        words = _is_words_gold(gold)
        if _text_form(gold, fold_case=words) == _text_form(answer, fold_case=words):
            return True
        if words:  # a name, a word, a time: the text decides (as products of letters, anagrams agree)
            return False
        # letters that may be a product ("xy"), text with mathematics ("x = 5 \text{ or } x = 7"): math-verify
    exact = _exact_value(gold)
    if exact is not None:
        return _matches_exact(answer, exact)
    return None


# ----------------------------------------------------------------------------------------------
# math-verify in child processes, with a hard per-item timeout
# ----------------------------------------------------------------------------------------------

_STARTUP_TIMEOUT = 120.0  # seconds a new worker may take to import and warm up math-verify on a busy machine
# Run once by every worker before it reports ready: the parser and sympy initialize lazily on first use
# (several seconds on a busy machine), and that must not be charged to the first real item's timeout.
_WARM_UP = [
    ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2"),
    ("x^2-3x+2<0", "(1, 2]"),
    ("\\{1, 2\\}", "x = \\pi"),
    ("\\text{(B)}", "B"),
]


def _math_verify_equal(gold: str, prediction: str | None) -> bool:
    """Runs in the worker. Gold first; `prediction=None` asks only "does the gold parse?".

    A gold that math-verify cannot turn into an expression is never matched, not even by an
    identical string, so `gold_is_usable(gold) == False` implies `correct == False`.
    """
    import math_verify

    try:
        if prediction is not None and "\\begin" in gold and (gold_matrix := _matrix(gold)) is not None:
            return _matrices_equal(gold_matrix, _matrix(prediction))
        gold_parsed = math_verify.parse("\\boxed{" + gold + "}", parsing_timeout=None)
        gold_usable = any(not isinstance(item, str) for item in gold_parsed)  # not only a raw string
        if prediction is None:  # the gold_is_usable question
            return gold_usable
        if not gold_usable:
            return False
        prediction_parsed = math_verify.parse("\\boxed{" + prediction + "}", parsing_timeout=None)
        if (
            prediction_parsed
            and (closed := _closed_forms_equal(gold_parsed[0], prediction_parsed[0])) is not None
        ):
            return closed
        if not math_verify.verify(gold_parsed, prediction_parsed, timeout_seconds=None):
            return False
        return _exactly_equal(gold_parsed[0], prediction_parsed[0]) if prediction_parsed else True
    except Exception:  # any failure inside math-verify/sympy is "not equal", never a crash
        return False


def _matrices_equal(gold: list[list[str]], prediction: list[list[str]] | None) -> bool:
    """Runs in the worker: entry by entry, in order, each pair decided here or by `_math_verify_equal`."""
    if prediction is None or [len(row) for row in gold] != [len(row) for row in prediction]:
        return False
    for gold_entry, prediction_entry in zip(sum(gold, []), sum(prediction, [])):
        verdict = _compare_here(gold_entry, prediction_entry)
        if verdict is None:
            verdict = _math_verify_equal(gold_entry, prediction_entry)
        if not verdict:
            return False
    return True


_MAX_CLOSED_FORM_NODES = 200  # a bigger expression is left to math-verify (and the time-out)
_CLOSED_FORM_DIGITS = 50


def _closed_forms_equal(gold, prediction) -> bool | None:
    r"""Runs in the worker, before math-verify's comparison: two closed-form numbers (no symbol, no float:
    radicals, pi, e, trigonometric values; each at most 200 nodes) are compared numerically at 50 digits,
    equal when they agree to 40 significant digits. None for anything else (math-verify decides). Fast
    where sympy's simplification is slow, and exact in practice: no float tolerance. `x = value` counts as
    its value.

    >>> import sympy
    >>> _closed_forms_equal(1 + sympy.sqrt(2), sympy.sqrt(3 + 2 * sympy.sqrt(2)))
    True
    >>> _closed_forms_equal(sympy.sqrt(3) / 10**30, sympy.sqrt(2) / 10**30)
    False
    >>> _closed_forms_equal(sympy.Symbol("x"), 1) is None  # not a closed-form number: math-verify decides
    True
    """
    import sympy

    if isinstance(prediction, sympy.Eq) and isinstance(prediction.lhs, sympy.Symbol):
        prediction = prediction.rhs
    if not (isinstance(gold, sympy.Expr) and isinstance(prediction, sympy.Expr)):
        return None
    if not (gold.is_number and prediction.is_number) or gold.has(sympy.Float) or prediction.has(sympy.Float):
        return None
    for expression in (gold, prediction):
        for count, _ in enumerate(sympy.preorder_traversal(expression)):
            if count > _MAX_CLOSED_FORM_NODES:
                return None
    try:
        difference = abs(sympy.N(gold - prediction, _CLOSED_FORM_DIGITS))
        scale = max(abs(sympy.N(gold, _CLOSED_FORM_DIGITS)), abs(sympy.N(prediction, _CLOSED_FORM_DIGITS)))
        if not (difference.is_Number and scale.is_Number) or not (difference.is_finite and scale.is_finite):
            return None
        if scale == 0:
            return bool(difference == 0)
        return bool(difference <= scale * sympy.Rational(1, 10**40))
    except Exception:  # evaluation failed: math-verify decides
        return None


def _exactly_equal(gold, prediction) -> bool:
    """Runs in the worker, after math-verify said "equal": where both sides are exact numbers (no float,
    no symbol: radicals, powers, factorials, pi) and finite, they must be equal by sympy's exact test
    (`Expr.equals`) or, where it cannot tell, agree to 40 significant digits; never within math-verify's
    float tolerance, so `1/100!` is not `1/101!`. Anything else keeps math-verify's verdict.

    >>> import sympy
    >>> _exactly_equal(sympy.sqrt(3) / 10**30, sympy.sqrt(2) / 10**30), _exactly_equal(sympy.sqrt(8), 2 * sympy.sqrt(2))
    (False, True)
    """
    import sympy

    if not (isinstance(gold, sympy.Expr) and isinstance(prediction, sympy.Expr)):
        return True
    if gold.free_symbols or prediction.free_symbols or gold.has(sympy.Float) or prediction.has(sympy.Float):
        return True
    if not (gold.is_finite and prediction.is_finite):  # infinities (and unknowns): math-verify's verdict
        return True
    equal = gold.equals(prediction)  # sympy's own exact test: True, False or None (cannot tell)
    if equal is not None:
        return bool(equal)
    difference = abs(sympy.N(gold - prediction, 50))
    scale = max(abs(sympy.N(gold, 50)), abs(sympy.N(prediction, 50)))
    return bool(difference <= scale * sympy.Rational(1, 10**40)) if scale != 0 else bool(difference == 0)


def _worker_loop(fd: int) -> None:
    """Child process: answer (gold, prediction) requests on socket `fd`, one at a time, until it closes."""
    conn = Connection(fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the parent
    for name in ("math_verify", "latex2sympy2_extended"):  # "timeout disabled" and parse-error noise
        logging.getLogger(name).setLevel(logging.CRITICAL)
    for gold, prediction in _WARM_UP:  # import and first-use costs before "ready": items pay only their work
        _math_verify_equal(gold, prediction)
    conn.send("ready")
    while True:
        try:
            gold, prediction = conn.recv()
        except (EOFError, OSError):
            return
        conn.send(_math_verify_equal(gold, prediction))


# The child imports this module by name, from the directory that holds its package ("common/").
_WORKER_CODE = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    f"from {__name__} import _worker_loop; _worker_loop(int(sys.argv[2]))"
)
_IMPORT_ROOT = str(Path(__file__).resolve().parents[__name__.count(".")])


class _Worker:
    """One math-verify child process, the socket to it, and the job it is working on."""

    def __init__(self):
        parent_socket, child_socket = socket.socketpair()
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_CODE, _IMPORT_ROOT, str(child_socket.fileno())],
            pass_fds=(child_socket.fileno(),),
            stdin=subprocess.DEVNULL,
        )
        child_socket.close()  # so that a dead child shows up as EOF here
        self.conn = Connection(parent_socket.detach())
        self.ready = False
        self.started_at = time.monotonic()
        self.job: int | None = None  # index into the current job list
        self.deadline = math.inf

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=5)
        self.conn.close()


def _kill_all(workers: list[_Worker], owner_pid: int | None = None) -> None:
    """Kill the workers and empty the list; in a forked child (pid != owner_pid) only forget them."""
    for worker in workers:
        if owner_pid is None or owner_pid == os.getpid():
            worker.kill()
        else:  # the parent's workers: close our copy of the socket, leave the process to its owner
            worker.conn.close()
    workers.clear()


class Verifier:
    r"""Verifies batches: exact fast path in-process, math-verify in `num_workers` child processes.

    Results keep the input order. An item whose math-verify work (parsing gold and prediction,
    then comparing) runs past `timeout` seconds is scored parsed=True, correct=False, and its
    worker is killed and replaced by a spare one (started after the first kill). Workers start on the
    first item that needs them. Thread-safe (batches are served one at a time); usable in a forked
    child, which starts workers of its own.

        with Verifier(timeout=5.0, num_workers=2) as verifier:
            results = verifier.verify_batch(["\\boxed{72}", "no answer"], ["72", "3"])
            # [VerifyResult(True, True, '72'), VerifyResult(False, False, None)]
    """

    def __init__(self, timeout: float = 5.0, num_workers: int = 1, fallback: bool = True):
        if num_workers < 1:
            raise ValueError(f"num_workers must be at least 1, got {num_workers}")
        self.timeout = timeout
        self.num_workers = num_workers
        self.fallback = fallback
        self._workers: list[_Worker] = []  # started on first use, replaced in place
        self._spares: list[_Worker] = []  # at most one, started after the first kill
        self._lock = threading.Lock()
        self._owner_pid = os.getpid()
        self._finalizers = [
            weakref.finalize(self, _kill_all, workers, self._owner_pid)  # at garbage collection or exit
            for workers in (self._workers, self._spares)
        ]

    def verify_batch(self, completions: list[str], golds: list[str]) -> list[VerifyResult]:
        return self._verify_batch(completions, golds, self.timeout, self.fallback)

    def _verify_batch(
        self, completions: list[str], golds: list[str], timeout: float, fallback: bool
    ) -> list[VerifyResult]:
        if len(completions) != len(golds):
            raise ValueError(f"{len(completions)} completions but {len(golds)} golds")
        results: list[VerifyResult | None] = [None] * len(completions)
        slow_items, slow_jobs = [], []  # (index, answer) and (gold, cleaned answer) for math-verify
        for i, (completion, gold) in enumerate(zip(completions, golds)):
            answer = extract_answer(completion, fallback=fallback)
            if answer is None:
                results[i] = VerifyResult(parsed=False, correct=False, answer=None)
                continue
            gold_normalized = normalize_gold(gold)
            if gold_normalized is None:
                results[i] = VerifyResult(parsed=True, correct=False, answer=answer)
                continue
            answer_cleaned = _clean(answer)
            correct = _compare_here(gold_normalized, answer_cleaned)
            if correct is None:  # a symbolic gold: math-verify, in a worker
                slow_items.append((i, answer))
                slow_jobs.append((gold_normalized, answer_cleaned))
            else:
                results[i] = VerifyResult(parsed=True, correct=correct, answer=answer)
        for (i, answer), correct in zip(slow_items, self._run_math_verify(slow_jobs, timeout)):
            results[i] = VerifyResult(parsed=True, correct=correct, answer=answer)
        return results

    def _run_math_verify(self, jobs: list[tuple[str, str | None]], timeout: float) -> list[bool]:
        """math-verify on each (gold, prediction) job in the workers; False for any job that times out."""
        results = [False] * len(jobs)
        if not jobs:
            return results
        if self._owner_pid != os.getpid():
            self._adopt_after_fork()
        todo = deque(range(len(jobs)))
        with self._lock:
            while len(self._workers) < self.num_workers:
                self._workers.append(_Worker())
            try:
                self._schedule(jobs, todo, results, timeout)
            except BaseException:  # e.g. Ctrl-C: workers may hold jobs of this batch, drop them all
                _kill_all(self._workers)
                raise
        return results

    def _schedule(self, jobs: list, todo: deque, results: list[bool], timeout: float) -> None:
        """Feed `todo` job indices to the workers, write answers into `results`, kill on timeout."""
        while todo or any(worker.job is not None for worker in self._workers):
            # hand a job to every idle, ready worker
            for slot, worker in enumerate(self._workers):
                if worker.ready and worker.job is None and todo:
                    job = todo.popleft()
                    try:
                        worker.conn.send(jobs[job])
                    except OSError:  # the worker died while idle: replace it, retry the job
                        self._restart(slot)
                        todo.appendleft(job)
                        continue
                    worker.job, worker.deadline = job, time.monotonic() + timeout
            # wait for an answer, a "ready", or the next deadline
            waiting = [worker for worker in self._workers if not worker.ready or worker.job is not None]
            next_deadline = min(
                worker.deadline if worker.ready else worker.started_at + _STARTUP_TIMEOUT
                for worker in waiting
            )
            answered = wait(
                [worker.conn for worker in waiting], timeout=max(0.0, next_deadline - time.monotonic())
            )
            for slot, worker in enumerate(self._workers):
                if worker.conn not in answered:
                    continue
                try:
                    message = worker.conn.recv()
                except (EOFError, OSError):  # the worker died (e.g. out of memory)
                    message = None
                if not worker.ready:
                    if message != "ready":
                        worker.process.wait(timeout=1)
                        raise RuntimeError(
                            f"math-verify worker exited at start ({worker.process.returncode})"
                        )
                    worker.ready = True
                elif message is None:
                    results[worker.job] = False
                    self._restart(slot)
                else:
                    results[worker.job] = bool(message)
                    worker.job, worker.deadline = None, math.inf
            # enforce the hard timeout
            now = time.monotonic()
            for slot, worker in enumerate(self._workers):
                if worker.job is not None and now >= worker.deadline:
                    results[worker.job] = False
                    self._restart(slot)
                elif not worker.ready and now >= worker.started_at + _STARTUP_TIMEOUT:
                    raise RuntimeError(f"math-verify worker did not start within {_STARTUP_TIMEOUT} s")

    def _restart(self, slot: int) -> None:
        """Kill the worker in `slot`; the spare takes its place at once and a new spare starts."""
        self._workers[slot].kill()
        if self._spares:
            spare = self._spares.pop()
            if not spare.ready and spare.conn.poll():  # it finished starting (or died) while it waited
                try:
                    message = spare.conn.recv()
                except (EOFError, OSError):
                    message = None
                if message == "ready":
                    spare.ready = True
                else:
                    spare.kill()
                    spare = _Worker()
            spare.started_at = time.monotonic()  # a late starter gets a full start-up allowance from now
            self._workers[slot] = spare
        else:
            self._workers[slot] = _Worker()  # starts importing now, ready by the next job
        self._spares.append(_Worker())

    def _adopt_after_fork(self) -> None:
        """In a forked child: forget the parent's workers (never kill them) and start afresh."""
        for finalizer in self._finalizers:
            finalizer.detach()
        _kill_all(self._workers, self._owner_pid)
        _kill_all(self._spares, self._owner_pid)
        self._lock = threading.Lock()  # the parent's may have been held by another thread at fork time
        self._owner_pid = os.getpid()
        self._finalizers = [
            weakref.finalize(self, _kill_all, workers, self._owner_pid)
            for workers in (self._workers, self._spares)
        ]

    def close(self) -> None:
        if self._owner_pid != os.getpid():
            self._adopt_after_fork()
        with self._lock:
            _kill_all(self._workers)
            _kill_all(self._spares)

    def __enter__(self) -> "Verifier":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------
# Single-item API, on one shared, lazily created Verifier
# ----------------------------------------------------------------------------------------------

_shared_verifier: Verifier | None = None
_shared_verifier_lock = threading.Lock()


def _get_shared_verifier() -> Verifier:
    global _shared_verifier
    with _shared_verifier_lock:
        if _shared_verifier is None:
            _shared_verifier = Verifier(num_workers=1)
        return _shared_verifier


def verify(completion: str, gold: str, timeout: float = 5.0, fallback: bool = True) -> VerifyResult:
    r"""Score one completion against one gold answer. Safe from any thread; never raises on content.

    >>> verify("The answer is \\boxed{12}.", "2")  # no substring credit
    VerifyResult(parsed=True, correct=False, answer='12')
    >>> verify("I think it is 1,000", "$1000$")
    VerifyResult(parsed=True, correct=True, answer='1000')
    >>> verify("\\boxed{}", "0")
    VerifyResult(parsed=False, correct=False, answer=None)
    """
    return _get_shared_verifier()._verify_batch([completion], [gold], timeout, fallback)[0]


def gold_is_usable(gold: str) -> bool:
    r"""True if the gold answer normalizes to something we can compare against.

    Plain numbers are checked here; anything else must give math-verify at least one parsed
    (non-string) expression within 5 s. Data loaders use this to skip, and count, unusable rows:
    an unparseable gold would otherwise score every completion 0 and hide a dataset bug.

    >>> gold_is_usable("#### 72"), gold_is_usable("\\frac{\\pi}{2}"), gold_is_usable(""), gold_is_usable("???")
    (True, True, False, False)
    >>> gold_is_usable("3:15 p.m."), gold_is_usable("\\frac{1}{2^{50}}")  # text; an exact expression
    (True, True)
    """
    gold_normalized = normalize_gold(gold)
    if gold_normalized is None:
        return False
    if _as_number(gold_normalized) is not None or _is_text_gold(gold_normalized):
        return True
    if _exact_value(gold_normalized) is not None:
        return True
    return _get_shared_verifier()._run_math_verify([(gold_normalized, None)], timeout=5.0)[0]

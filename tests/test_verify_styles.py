r"""Graded answer styles for common/verify.py: every accepted way of writing a right answer scores 1, and
nothing else does (issue 12).

Each case is (completion, gold, expected). The expected label is written from the mathematics, not from
any grader's output; where a source grader labels a case differently, the comment says so. Sources:

  MV-all Lnnn   huggingface/Math-Verify, tests/test_all.py at commit 5d148cf, line nnn
  MV#14         huggingface/Math-Verify issue 14 ("Some possible error cases")
  MV#37         huggingface/Math-Verify issue 37 (`\text{13}` vs `13`)
  HM name       hendrycks/math, modeling/math_equivalence_test.py, test `name` (the MATH `is_equiv` normaliser)
  HM-norm       hendrycks/math, modeling/math_equivalence.py, `_strip_string` (the rule that case exercises)
  QW            QwenLM/Qwen2.5-Math, evaluation/grader.py, `_test_math_equal` / `numeric_equal` (rel_tol 1e-4)
  issue 12      this project's issue 12, which lists the styles (its own examples)
  rule          a variant built here to pin one documented rule of common/verify.py

`bench/verify_bench.py --agreement` scores the same cases with the implementation on `main` and this one.
"""

import pytest

from common.verify import Verifier

THOUSANDS = [
    (r"Therefore, $\boxed{14{,}916}$ is our answer.", "14916", True),  # MV-all L201
    (r"worth $\boxed{\$16,\!386.20}$ at the end", "16386.2", True),  # MV-all L653
    (r"\boxed{12\,345}", "12345", True),  # issue 12
    (r"\boxed{12 345}", "12,345", True),  # issue 12
    (r"\boxed{12345}", r"12,\!345", True),  # issue 12; HM-norm drops "\!"
    (r"\boxed{12{,}345}", r"12\,345", True),  # issue 12, both sides separated
    (r"\boxed{x = 10,\!000}", "10000", True),  # issue 12 + MV-all L156 ("x =" before the number)
    (r"\boxed{12{,}346}", "12345", False),  # rule: a different number
    (r"\boxed{1,2}", "12", False),  # rule: a pair, not a thousands group
    (r"\boxed{3,5}", "3.5", False),  # rule: no decimal comma (documented choice)
    (r"\boxed{1,0000}", "10000", False),  # rule: a group of four digits is not a thousands group
    (r"\boxed{12 34}", "1234", False),  # rule: nor is a group of two
    (r"\boxed{12,345}", "12.345", False),  # rule: the comma is a separator, not a decimal point
]

FRACTIONS = [
    (r"\boxed{\cfrac{1}{3}}", "1/3", True),  # MV-all L145
    (r"\boxed{\tfrac{1}{3}}", "1/3", True),  # MV-all L147
    (r"\boxed{\frac13}", "1/3", True),  # MV-all L140
    (r"\boxed{\frac3{3}}", "1", True),  # MV-all L141
    (r"\boxed{\left( \frac{1}{3} \right)}", "1/3", True),  # MV-all L151
    (r"\boxed{\tfrac83}", r"\frac{8}{3}", True),  # HM test_tfrac
    (r"\boxed{\tfrac{1}{2} +\! \frac1{72}}", r"\dfrac{1}{2} +\frac{1}{72}", True),  # HM test_dfrac
    (r"\boxed{-\frac{10}{9}}", "-10/9", True),  # MV-all L100
    (r"\boxed{\frac{-1}{2}}", "-0.5", True),  # rule: the sign inside the numerator
    (r"\boxed{\cfrac{1}{4}}", "1/3", False),  # rule
    (r"\boxed{\frac31}", "1/3", False),  # rule: upside down
    (r"\boxed{\frac134}", r"\frac{13}{4}", False),  # rule: LaTeX reads \frac134 as \frac{1}{3}4
    (r"\boxed{\left( \frac{1}{3} \right)^2}", "1/3", False),  # rule: the square of the gold
    (r"\boxed{\tfrac{1}{2} + \frac1{72}}", r"\frac{1}{2} + 2/3", False),  # HM test_fractions
    (r"\boxed{\frac{1}{3}}", "0.33333", False),  # QW: exact, no tolerance (its rel_tol 1e-4 says 1)
    (r"\boxed{\frac{100}{3}}", "33.3", False),  # QW _test_math_equal: a rounding is not the value
]

UNITS = [
    (r"\boxed{\frac{1}{3} \text{meters}}", "1/3", True),  # MV-all L153
    (r"\boxed{\frac{1}{3} \textbf{meters}}", "1/3", True),  # MV-all L154
    (r"$$\frac{1}{2}\times 3 \times 10 = \boxed{15\mbox{ cm}^2}.$$", r"15", True),  # MV-all L248-249
    (r"\boxed{10\text{ units}}", "10", True),  # HM test_units
    (r"\boxed{10}", r"10\text{ units}", True),  # HM test_units, the other way round
    (r"\boxed{5 meters}", "5", True),  # issue 12
    (r"\boxed{5 \text{ cm}}", r"5\text{ cm}", True),  # issue 12
    (r"\boxed{100 \text{ units}}", r"10\text{ units}", False),  # HM test_units2
    (r"\boxed{6 \text{ or more}}", "6", False),  # rule: a hedge is not a unit
    (r"\boxed{5 million}", "5", False),  # rule: a scale word is not a unit
    (r"\boxed{5 x}", "5", False),  # rule: one letter is a variable, not a unit
    (r"\boxed{12\text{ and }13}", "12", False),  # MV-all L206 (the answer "between 12 and 13")
    (r"\boxed{5 \text{ cm or } 6 \text{ cm}}", "5", False),  # rule: hedge
]

PERCENT = [
    (r"\boxed{28 percent}", r"28\%", True),  # MV-all L174
    (r"\boxed{28 pct}", r"28\%", True),  # MV-all L173
    (r"\boxed{28 percentage}", r"28\%", True),  # MV-all L175
    (r"\boxed{28 \%}", r"28\%", True),  # MV-all L169
    (r"$\boxed{28}$ pct", r"28\%", True),  # MV-all L172
    (r"so $x=1/5$, or $\boxed{20}$ percent.", "20", True),  # MV-all L702
    (r"\boxed{10\%}", "10", True),  # HM test_percentage
    (r"\boxed{28 \text{ percent}}", "28", True),  # issue 12
    (r"\boxed{0.28}", r"28\%", False),  # rule: the sign is dropped, never divided by 100
    (r"\boxed{28\%}", "0.28", False),  # rule: the same, the other way round
    (r"\boxed{29 percent}", r"28\%", False),  # rule
    (r"\boxed{2.8\%}", r"28\%", False),  # rule
    (r"\boxed{28 percent or 30 percent}", r"28\%", False),  # rule: hedge
    (r"\boxed{280 pct}", r"28\%", False),  # rule
]

CHAINS = [
    (r"\boxed{x = 5+5+1 = 11}", "11", True),  # MV-all L401 without its false step
    (r"\boxed{k = \frac{1}{3}}", "1/3", True),  # MV-all L156
    (r"\boxed{x\approx11}", "11", True),  # MV-all L419
    (r"$x=1/3\approx0.33$", "1/3", True),  # MV-all L425 with a true rounding: the exact value counts
    (r"\boxed{\frac{1}{3} \approx 0.33}", "0.33", True),  # rule: and so does the rounding
    (r"\boxed{x = 2+3 = 5}", "5", True),  # issue 12
    (r"\boxed{\pi \approx 3.14}", "3.14", True),  # issue 12
    (r"so $x = 2+3 = 5$.", "5", True),  # issue 12, no box
    (r"\boxed{x = 5+5+1 = 7 =11}", "11", False),  # MV-all L401: "7 = 11" is false (math-verify says 1)
    (r"\boxed{x = 5+5+1 = 1/3 \approx 11}", "1/3", False),  # MV-all L407: "5+5+1 = 1/3" is false (MV: 1)
    (r"\boxed{2+3 = 6}", "6", False),  # rule: a false equation
    (r"\boxed{x = 6 = 7}", "6", False),  # rule: a hedge
    (r"\boxed{x = 5}", "6", False),  # rule
    (r"\boxed{x^2 = 25}", "5", False),  # rule: the last side is 25
    (r"\boxed{x \approx 3.14}", "3.15", False),  # rule
    (r"$x=1/3\approx1.3$", "1/3", False),  # MV-all L425: 1.3 is no rounding of 1/3 (math-verify says 1)
    (r"\boxed{7 \approx 6}", "6", False),  # rule: two guesses joined by \approx are a hedge
]

TEXT = [
    (r"\boxed{\text{3:15 p.m.}}", "3:15 p.m.", True),  # issue 12 (a time)
    (r"\boxed{3:15 P.M.}", r"\text{3:15 p.m.}", True),  # issue 12: case
    (r"\boxed{\text{Evelyn}}", "Evelyn", True),  # issue 12 (a name)
    (r"\boxed{evelyn.}", r"\text{Evelyn}", True),  # issue 12: case, final punctuation
    (r"\boxed{(B)}", r"\text{(B)}", True),  # issue 12 (a choice)
    (r"\boxed{\textbf{Monday}}", "Monday", True),  # issue 12 (a word)
    (r"\boxed{ yes }", r"\text{Yes}", True),  # issue 12: whitespace and case
    (r"\boxed{12:00}", "12:00", True),  # MV#14 (a time)
    (r"\boxed{x = 5 \text{ or } x = 7}", r"x=5 \text{ or } x=7", True),  # rule: text up to whitespace
    (r"\boxed{yx}", "xy", True),  # rule: two letters may be a product, and xy = yx (math-verify)
    (r"\boxed{3:16 p.m.}", "3:15 p.m.", False),  # rule
    (r"\boxed{1:00}", "12:00", False),  # MV#14 (math-verify says 1)
    (r"\boxed{Evelyn or Bob}", "Evelyn", False),  # rule: hedge
    (r"\boxed{\text{Tuesday}}", r"\text{Monday}", False),  # rule
    (r"\boxed{lyEven}", "Evelyn", False),  # rule: an anagram (as products of letters the two are equal)
    (r"\boxed{\text{(C)}}", r"\text{(B)}", False),  # rule
    (r"\boxed{\text{(B) or (C)}}", r"\text{(B)}", False),  # rule: hedge
    (
        r"\boxed{x = 5 \text{ or } x = 8}",
        r"x=5 \text{ or } x=7",
        False,
    ),  # rule (text with maths: math-verify)
    (r"\boxed{xz}", "xy", False),  # rule: a different product
]

MULTI_BOX_GOLDS = [
    (r"\boxed{2, 3}", r"$\boxed{2}$ and $\boxed{3}$", True),  # issue 12
    (r"\boxed{3, 2}", r"$\boxed{2}$, $\boxed{3}$", True),  # issue 12: the same set
    (r"\boxed{\{2, 3\}}", r"\boxed{2}, \boxed{3}", True),  # issue 12
    (r"\boxed{\frac{1}{2}}", r"\boxed{\frac{1}{2}", True),  # issue 12: unclosed box in the gold
    (r"\boxed{5}", r"\boxed{5}\boxed{5}", True),  # rule: repeated boxes are one answer
    (r"\boxed{-1, 1}", r"$\boxed{1}$ or $\boxed{-1}$", True),  # issue 12
    (r"\boxed{3}", r"$\boxed{2}$ and $\boxed{3}$", False),  # rule: only part of the answer
    (
        r"\boxed{2} and \boxed{3}",
        r"$\boxed{2}$ and $\boxed{3}$",
        False,
    ),  # rule: a completion's last box counts
    (r"\boxed{2, 4}", r"$\boxed{2}$ and $\boxed{3}$", False),  # rule
    (r"\boxed{2, 3, 4}", r"\boxed{2}, \boxed{3}", False),  # rule: an extra element
    (r"\boxed{\frac{1}{3}}", r"\boxed{\frac{1}{2}", False),  # rule
]

FALLBACK_SPANS = [
    (r"The probability is $\frac{5}{6}$.", r"\frac{5}{6}", True),  # issue 12
    (r"the smallest such number is $14{,}916$.", "14916", True),  # issue 12, MV-all L201
    (r"Answer \[ 9 \]", "9", True),  # MV-all L125
    (r"Answer \( 9 \)", "9", True),  # MV-all L128
    ("Answer $$ \n 9 \n $$", "9", True),  # MV-all L136
    (r"so $x = \frac{1}{4}$", "1/4", True),  # rule
    (r"We get $3+4$, which is 7.", "7", True),  # rule: a later plain number wins over the span
    (r"The probability is $\frac{5}{6}$.", "6", False),  # issue 12: not its last number
    (r"so the answer is $14{,}916$", "916", False),  # issue 12
    (r"We get $3+4$.", "7", False),  # rule: unevaluated arithmetic for a number gold
    (r"It is $\frac{1}{2}$ or $\frac{1}{3}$", r"\frac{1}{2}", False),  # rule: the last span counts
    (r"$x = 6$, no wait, $x = 7$", "6", False),  # rule
    (r"The area is $\frac{5}{6}$", r"\frac{6}{5}", False),  # rule
]

EXACT = [
    (r"\boxed{\frac{1}{2^{50}}}", r"\frac{1}{2^{50}}", True),  # issue 12
    (r"\boxed{2^{-50}}", r"\frac{1}{2^{50}}", True),  # issue 12
    (r"\boxed{1024}", "2^{10}", True),  # rule
    (r"\boxed{\frac{1}{3628800}}", r"\frac{1}{10!}", True),  # rule
    (r"\boxed{\frac{1 + 2^{2005}}{3 \cdot 2^{2006}}}", r"\frac{2^{2005}+1}{3 \cdot 2^{2006}}", True),  # MV#14
    (r"\boxed{\sqrt{8}}", r"2\sqrt{2}", True),  # rule (radicals: math-verify, then the exact check)
    (r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{1}{\sqrt{2}}", True),  # rule
    (r"\boxed{\sqrt{3+2\sqrt{2}}}", r"1+\sqrt{2}", True),  # rule: a nested radical, denested
    (r"\boxed{\infty}", r"\infty", True),  # rule: infinities keep math-verify's verdict
    (r"\boxed{\frac{1}{2^{51}}}", r"\frac{1}{2^{50}}", False),  # issue 12
    (r"\boxed{\frac{1}{101!}}", r"\frac{1}{100!}", False),  # issue 12 (math-verify says 1)
    (r"\boxed{\frac{1}{2006!}}", r"\frac{1}{2004!}", False),  # MV#14
    (r"\boxed{\frac{1}{2^{98}}}", r"\frac{1}{2^{99}}", False),  # MV#14
    (r"\boxed{\frac{1}{3 \cdot 2^{2006}}}", r"\frac{2^{2005}+1}{3 \cdot 2^{2006}}", False),  # MV#14
    (r"\boxed{\frac{\sqrt{3}}{10^{30}}}", r"\frac{\sqrt{2}}{10^{30}}", False),  # rule: radicals, tiny
    (r"\boxed{0.00000000000000088817841970012523}", r"\frac{1}{2^{50}}", False),  # rule: a rounding
]

SEQUENCES = [
    (r"\boxed{1, 2, \ldots, n}", r"1, 2, \ldots, n", True),  # issue 12
    (r"\boxed{1,2,\dots,n}", r"1, 2, \ldots, n", True),  # issue 12: spacing, \dots
    (r"\boxed{1, 2, \cdots, n}", r"1, 2, \ldots, n", True),  # rule: \cdots
    (r"\boxed{1, 3, 5, \ldots, 2n-1}", r"1, 3, 5, \ldots, 2n - 1", True),  # MV#14
    (r"\boxed{2, 4, ..., 2n}", r"2, 4, \ldots, 2n", True),  # rule: "..."
    (r"\boxed{\frac{1}{2}, \frac{1}{4}, \ldots}", r"0.5, 0.25, \ldots", True),  # rule: items as numbers
    (r"\boxed{2, 4, \ldots, 2n}", r"1, 2, \ldots, n", False),  # issue 12 (math-verify says 1)
    (r"\boxed{1, 3, 5, \ldots, 2n-1}", r"1, 2, \ldots, n", False),  # MV#14
    (r"\boxed{1:4:9:\ldots}", r"1:2:3:\ldots", False),  # MV#14
    (r"\boxed{1, 2, \ldots, n-1}", r"1, 2, \ldots, n", False),  # rule
    (r"\boxed{2, 1, \ldots, n}", r"1, 2, \ldots, n", False),  # rule: a sequence is ordered
    (r"\boxed{1, 2, 3}", r"1, 2, \ldots, n", False),  # rule
]

BY_DESIGN = [
    (r"\boxed{7} no, \boxed{6}", "6", True),  # control: the last box counts
    (r"\boxed{6}", "6", True),  # control
    (r"\boxed{x = 6}", "6", True),  # control
    (r"\boxed{6.0}", "6", True),  # control
    ("so she has 6.\n#### 6", "6", True),  # control
    (r"Compute 3+5-4+2. So \boxed{3+5-4+2}", "6", False),  # restated question
    (r"\boxed{6} or maybe \boxed{7}", "6", False),  # several different boxes
    (r"\boxed{6 \text{ (or 7)}}", "6", False),  # hedge
    (r"\boxed{2 \cdot 3}", "6", False),  # unevaluated arithmetic for a number gold
    (r"\boxed{}", "0", False),  # empty box
    ("\\boxed{\uff16}", "6", False),  # look-alike digit (fullwidth 6)
    (r"\boxed{\pm 2021}", "2021", False),  # MV#14
    (r"\boxed{x+1}", "x+2n+1", False),  # QW _test_math_equal
]

KINDS = {
    "thousands": THOUSANDS,
    "fractions": FRACTIONS,
    "units": UNITS,
    "percent": PERCENT,
    "chains": CHAINS,
    "text": TEXT,
    "multi_box_golds": MULTI_BOX_GOLDS,
    "fallback_spans": FALLBACK_SPANS,
    "exact": EXACT,
    "sequences": SEQUENCES,
    "by_design": BY_DESIGN,
}
CASES = [(kind, *case) for kind, cases in KINDS.items() for case in cases]


@pytest.fixture(scope="module")
def verifier():
    with Verifier(timeout=10.0, num_workers=1) as shared:
        yield shared


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_has_five_positive_and_five_negative_cases(kind):
    labels = [expected for _, _, expected in KINDS[kind]]
    assert labels.count(True) >= 5 and labels.count(False) >= 5


@pytest.mark.parametrize(("kind", "completion", "gold", "expected"), CASES)
def test_graded_case(verifier, kind, completion, gold, expected):
    result = verifier.verify_batch([completion], [gold])[0]
    assert result.correct == expected, (kind, completion, gold, result)

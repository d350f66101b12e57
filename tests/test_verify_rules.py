r"""The round-two rules of common/verify.py (issue 22), at least five right and five wrong answers each.

Each case is (completion, gold, expected), the label written from the mathematics. Golds marked "M500"
are MATH-500 golds (bench/data/verify/math500_test.jsonl.gz); the others are variants built here to pin
one rule. docs/verifier.md lists the rules and the reward hack each deliberate one prevents.
"""

import pytest

from common.verify import Verifier, extract_answer

COLUMN = r"\begin{pmatrix} -2 \\ -14 \\ -7 \end{pmatrix}"  # M500
FRACTIONS = r"\begin{pmatrix} 16/49 \\ 48/49 \\ 24/49 \end{pmatrix}"  # M500
SQUARE = r"\begin{pmatrix} -1 & 0 \\ 0 & -1 \end{pmatrix}"  # M500
SYMBOLIC = r"\begin{pmatrix} \sqrt{2}/2 \\ 1 \end{pmatrix}"

MATRICES = [  # entry by entry, in order; the row break "\\" survives the cleanup of "\ "
    (rf"\boxed{{{COLUMN}}}", COLUMN, True),
    (r"\boxed{\begin{pmatrix}-2\\-14\\-7\end{pmatrix}}", COLUMN, True),  # spacing
    (r"\boxed{\begin{bmatrix} -2 \\ -14 \\ -7 \end{bmatrix}}", COLUMN, True),  # brackets
    (r"\boxed{\left(\begin{array}{c} -2 \\ -14 \\ -7 \end{array}\right)}", COLUMN, True),  # an array
    (r"\boxed{\mathbf{v} = \begin{pmatrix} -2 \\ -14 \\ -7 \end{pmatrix}}", COLUMN, True),  # named
    (
        r"\boxed{\begin{pmatrix} \frac{16}{49} \\ \dfrac{48}{49} \\ \frac{24}{49} \end{pmatrix}}",
        FRACTIONS,
        True,
    ),
    (r"\boxed{\begin{pmatrix}-1&0\\0&-1\end{pmatrix}}", SQUARE, True),
    (r"\boxed{\begin{pmatrix} \frac{\sqrt{2}}{2} \\ 1 \end{pmatrix}}", SYMBOLIC, True),  # per entry
    (r"\boxed{\begin{pmatrix} -7 \\ -14 \\ -2 \end{pmatrix}}", COLUMN, False),  # reordered
    (r"\boxed{\begin{pmatrix} -2 & -14 & -7 \end{pmatrix}}", COLUMN, False),  # a row, not a column
    (r"\boxed{\begin{pmatrix} -2 \\ -14 \end{pmatrix}}", COLUMN, False),  # an entry short
    (r"\boxed{\begin{pmatrix} -2 \\ -14 \\ 7 \end{pmatrix}}", COLUMN, False),  # one sign
    (r"\boxed{\begin{pmatrix} 48/49 \\ 16/49 \\ 24/49 \end{pmatrix}}", FRACTIONS, False),  # reordered
    (r"\boxed{\begin{pmatrix} 0 & -1 \\ -1 & 0 \end{pmatrix}}", SQUARE, False),  # reordered
    (r"\boxed{-23}", COLUMN, False),  # the entries combined
    (r"\boxed{\begin{pmatrix} \frac{\sqrt{3}}{2} \\ 1 \end{pmatrix}}", SYMBOLIC, False),
]

BASES = [  # a number in a base: the digits and the base are the answer
    (r"\boxed{52_{8}}", "52_8", True),  # M500
    (r"\boxed{4210_5}", "4210_{5}", True),  # M500
    (r"\boxed{52}", "52_8", True),  # the digits alone: the question names the base
    (r"\boxed{x = 101_2}", "101_2", True),
    (r"\boxed{A2_{11}}", "A2_{11}", True),
    (r"\boxed{a_{10}}", "a_{10}", True),  # an indexed variable, not a number in a base
    (r"\boxed{(52)_8}", "52_8", True),
    (r"\boxed{52_{\text{8}}}", "52_8", True),
    (r"\boxed{52_9}", "52_8", False),  # another base
    (r"\boxed{42}", "52_8", False),  # the value in decimal: not what was asked
    (r"\boxed{53_8}", "52_8", False),
    (r"\boxed{4210_{10}}", "4210_{5}", False),
    (r"\boxed{2517_8}", "2516_8", False),  # M500 gold
    (r"\boxed{x_2}", "x_1", False),  # an indexed variable, compared as one (math-verify)
    (r"\boxed{a_{11}}", "a_{10}", False),
    (r"\boxed{(52)_9}", "52_8", False),
]

SEPARATORS = [  # thousands separators with a space after them
    (r"\boxed{11111111100}", r"11,\! 111,\! 111,\! 100", True),  # M500
    (r"\boxed{11,111,111,100}", r"11,\! 111,\! 111,\! 100", True),
    (r"\boxed{11{,}111{,}111{,}100}", r"11,\! 111,\! 111,\! 100", True),
    (r"\boxed{10,\! 080}", r"10,\!080", True),  # M500 gold
    (r"\boxed{\$32,\! 348}", r"\$32,\!348", True),  # M500 gold
    (r"\boxed{11,\! 111,\! 111,\! 101}", r"11,\! 111,\! 111,\! 100", False),
    (r"\boxed{1,\! 2}", "12", False),  # two digits after the comma: a pair
    (r"\boxed{10,\! 08}", "1008", False),
    (r"\boxed{3,\! 5}", "35", False),
    (r"\boxed{12,\! 345}", "12.345", False),  # a separator, not a decimal point
]

FREE_TEXT = [  # no box: money inside a math span, and the stated final answer
    (r"The final answer is $\$32,\!348$.", r"\$32,\!348", True),  # M500 gold
    ("Each ticket costs $5, and $2 + 3 = 5$.\nThe final answer is $10,455$.", "10455", True),
    ("She had $3 and $7 left. The final answer is $10,\\!455$.", "10455", True),
    ("Answer: 12", "12", True),
    ("It costs $3. The final answer is $10,\\!455$.", "10455", True),  # a lone "$" before it
    (r"The answer is $\frac{1}{2}$. Check: 1 + 1 = 2.", r"\frac{1}{2}", True),
    (r"It costs $\$5$ in all.", "5", True),
    (r"The final answer is $\$32,\!348$.", "348", False),
    ("Each ticket costs $5, and $2 + 3 = 5$.\nThe final answer is $10,455$.", "455", False),
    ("She had $3 and $7 left. The final answer is $10,\\!455$.", "255", False),
    (r"The answer is $\frac{1}{2}$. Check: 1 + 1 = 2.", "2", False),
    ("Answer: 12", "2", False),
    ("It costs $3. The final answer is $10,\\!455$.", "455", False),
]

NESTED_BOXES = [  # a box inside a box is read with the box around it
    (r"\boxed{\boxed{7}}", "7", True),
    (r"\boxed{ \boxed{\frac{1}{2}} }", "0.5", True),
    (r"\fbox{\boxed{7}}", "7", True),
    (r"\boxed{3} no, \boxed{\boxed{7}}", "7", True),
    (r"\boxed{\boxed{\boxed{7}}}", "7", True),
    (r"\boxed{\boxed{7} \text{ or } 8}", "7", False),  # a hedge around a box
    (r"\boxed{8 \text{ or } \boxed{7}}", "7", False),
    (r"\boxed{\boxed{7}, 8}", "7", False),
    (r"\boxed{\boxed{7} \pm 1}", "7", False),
    (r"\boxed{\boxed{7}}", "8", False),
    (r"\boxed{\boxed{x+1} \text{ or } x+2}", "x+1", False),
]

CLOSED_FORMS = [  # closed-form numbers compared at 50 digits in the worker
    (r"\boxed{\sqrt{3+2\sqrt{2}}}", r"1+\sqrt{2}", True),
    (r"\boxed{\cos\frac{\pi}{12}}", r"\frac{\sqrt{6}+\sqrt{2}}{4}", True),
    (r"\boxed{\sin\frac{\pi}{10}}", r"\frac{\sqrt{5}-1}{4}", True),
    (r"\boxed{\sqrt[3]{24}}", r"2\sqrt[3]{3}", True),
    (r"\boxed{x = \sqrt{8+2\sqrt{15}}}", r"\sqrt{5}+\sqrt{3}", True),
    (r"\boxed{\frac{1}{3-2\sqrt{2}}}", r"3+2\sqrt{2}", True),
    (r"\boxed{\frac{\sqrt{6}+\sqrt{2}}{3}}", r"\sqrt{2+\sqrt{3}}", False),
    (r"\boxed{\sqrt{10+2\sqrt{6}+2\sqrt{10}+2\sqrt{14}}}", r"\sqrt{2}+\sqrt{3}+\sqrt{5}", False),
    (r"\boxed{\frac{\sqrt{3}}{10^{30}}}", r"\frac{\sqrt{2}}{10^{30}}", False),
    (r"\boxed{\cos\frac{\pi}{11}}", r"\frac{\sqrt{6}+\sqrt{2}}{4}", False),
    (r"\boxed{3-2\sqrt{2}}", r"3+2\sqrt{2}", False),
]

RULES = {
    "matrices": MATRICES,
    "bases": BASES,
    "separators": SEPARATORS,
    "free_text": FREE_TEXT,
    "nested_boxes": NESTED_BOXES,
    "closed_forms": CLOSED_FORMS,
}
CASES = [(rule, *case) for rule, cases in RULES.items() for case in cases]


@pytest.fixture(scope="module")
def verifier():
    with Verifier(timeout=10.0, num_workers=1) as shared:
        yield shared


@pytest.mark.parametrize("rule", sorted(RULES))
def test_every_rule_has_five_right_and_five_wrong_answers(rule):
    labels = [expected for _, _, expected in RULES[rule]]
    assert labels.count(True) >= 5 and labels.count(False) >= 5


@pytest.mark.parametrize(("rule", "completion", "gold", "expected"), CASES)
def test_rule_case(verifier, rule, completion, gold, expected):
    result = verifier.verify_batch([completion], [gold])[0]
    assert result.parsed and result.correct == expected, (rule, completion, gold, result)


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        (r"\boxed{\boxed{7} \text{ or } 8}", r"7 \text{ or } 8"),
        (r"\boxed{\boxed{7}}", "7"),
        (r"\boxed{\boxed{}}", None),  # still blank
        (r"The final answer is $\$32,\!348$.", r"\$32,\!348"),
        ("Each ticket costs $5, and $2 + 3 = 5$.\nThe final answer is $10,455$.", "10,455"),
    ],
)
def test_extracted_answer(completion, answer):
    assert extract_answer(completion) == answer

"""Tests for common/verify.py: extraction, normalization, equivalence, timeouts, threads, batches."""

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.verify import (
    Verifier,
    VerifyResult,
    extract_answer,
    gold_is_usable,
    normalize_gold,
    parse_tag,
    verify,
)


@pytest.fixture(scope="module")
def verifier():
    with Verifier(timeout=2.0, num_workers=2) as shared:
        yield shared


# ----------------------------------------------------------------------------------------------
# extract_answer
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so the answer is \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),  # nested braces
        (r"\boxed{\left\{1, 2\right\}}", r"\left\{1, 2\right\}"),  # escaped braces do not count
        (r"\boxed{ 42 }", "42"),
        (r"the answer is $\boxed 5$.", "5"),  # no braces
        (r"\fbox{3}", "3"),
        (r"first \boxed{7}, no wait, \boxed{8}", "8"),  # the last box counts
        (r"\boxed{7} and the final count is 9", "7"),  # a box beats a later plain number
        ("She pays 3 * 24 = 72 dollars.\n#### 72", "72"),  # GSM8K
        ("#### 1\n#### 2\nthat's all", "2"),
        ("#### Step 1\nadd 3 and 4 to get 7\n#### Final answer\nIt is 7.", "7"),  # markdown headings
        ("so x = -3", "-3"),  # fallback: the last plain number
        ("so x = \u22123", "-3"),  # unicode minus
        ("It costs $1,234 in total.", "1234"),  # thousands separator
        ("it is 0.5 or maybe 3/4", "3/4"),
        ("10-5 = 5 apples, 2.5 each", "2.5"),  # "10-5" is not "-5"
        (r"The probability is $\frac{5}{6}$.", r"\frac{5}{6}"),  # the last math span, whole
        (r"so it is $14{,}916$", "14{,}916"),
        (r"Answer \( x = 9 \) and \[ 10 \]", "10"),
        (r"we get $3+4$, which is 7", "7"),  # a plain number after the last span wins
        (r"costs \$5 and \$6", "6"),  # escaped dollars are money
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "I do not know.",
        r"\boxed{}",  # empty box
        r"\boxed{   }",  # whitespace-only box
        r"the answer is 5, so \boxed{}",  # an empty last box is not rescued by an earlier number
        r"\boxed{7} and then \boxed{",  # unclosed (truncated) last box: not parsed, no earlier box
        r"\boxed{\frac{1}{2}",
        "#### ",
        "#### Final answer",
    ],
)
def test_extract_answer_not_parsed(text):
    assert extract_answer(text) is None


def test_extract_answer_fallback_disabled():
    assert extract_answer("the answer is 12", fallback=False) is None
    assert extract_answer(r"\boxed{12}", fallback=False) == "12"
    assert extract_answer("#### 12", fallback=False) == "12"


# ----------------------------------------------------------------------------------------------
# parse_tag
# ----------------------------------------------------------------------------------------------


def test_parse_tag():
    text = "<confidence>0.2</confidence> hmm <confidence>\n 0.9 \n</confidence> done"
    assert parse_tag(text, "confidence") == "0.9"  # the last tag wins, content stripped
    assert parse_tag("<confidence></confidence>", "confidence") == ""
    assert parse_tag("no tag", "confidence") is None
    assert parse_tag("<confidence>0.5", "confidence") is None  # unclosed
    assert parse_tag("<answer>4</answer>", "confidence") is None


# ----------------------------------------------------------------------------------------------
# normalize_gold and gold_is_usable
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gold", "expected"),
    [
        ("72", "72"),
        ("$18$", "18"),
        ("\\$18", "18"),
        ("1,000", "1000"),
        ("#### 1,072", "1072"),
        ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),  # a whole GSM8K answer field
        (r"$\boxed{\dfrac{1}{2}}$", r"\frac{1}{2}"),
        (r"so the area is $\boxed{12\pi}$.", r"12\pi"),  # a whole MATH solution
        (r"18\%", "18"),  # the percent sign is dropped, the number is kept
        (r"\text{13}", "13"),
        (r"\text{(B)}", "(B)"),
        ("\u22123", "-3"),
        ("(1,234)", "(1,234)"),  # not a bare number: the comma stays
        ("", None),
        ("   ", None),
        ("$$", None),
        (r"\boxed{}", None),
        (r"$\boxed{2}$ and $\boxed{3}$", "2, 3"),  # several boxes: the whole answer
        (r"\boxed{5} or \boxed{5}", "5"),
        (r"\boxed{\frac{1}{2}", r"\frac{1}{2}"),  # an unclosed gold box runs to the end
        (r"12,\!345", "12345"),
        (r"12{,}345", "12345"),
        ("12 345", "12345"),
        ("28 percent", "28"),
        (r"\cfrac{1}{2}", r"\frac{1}{2}"),
    ],
)
def test_normalize_gold(gold, expected):
    assert normalize_gold(gold) == expected
    if expected is not None:  # data loaders store normalized golds; verify() normalizes again
        assert normalize_gold(expected) == expected


def test_gold_is_usable():
    assert gold_is_usable("72")
    assert gold_is_usable("#### 1,072")
    assert gold_is_usable(r"\frac{\pi}{2}")  # needs math-verify
    assert gold_is_usable(r"\text{(B)}")
    assert not gold_is_usable("")
    assert not gold_is_usable("  ")
    assert not gold_is_usable(r"\boxed{}")
    assert not gold_is_usable("???")  # garbage: math-verify finds no expression
    assert not gold_is_usable(r"\frac{1}{")
    assert gold_is_usable("3:15 p.m.")  # a text gold
    assert gold_is_usable(r"\frac{1}{2^{50}}")  # an exact expression


# ----------------------------------------------------------------------------------------------
# verify: known right and wrong answers
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "gold"),
    [
        (r"\boxed{0.5}", r"\frac{1}{2}"),
        (r"\boxed{\dfrac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\tfrac12}", "0.5"),
        (r"\boxed{\frac12}", r"\frac{1}{2}"),
        (r"\boxed{1/2}", r"\dfrac{1}{2}"),
        (r"\boxed{2.50}", "2.5"),
        (r"\boxed{72.0}", "#### 72"),
        (r"\boxed{-3}", "\u22123"),
        ("\\boxed{\u22123}", "-3"),
        (r"\boxed{1,000}", "1000"),
        ("I think it is 1,000", "$1000$"),
        (r"\boxed{\$18}", "18"),
        (r"\boxed{18}", r"18\%"),  # percent sign dropped on both sides ...
        (r"\boxed{18\%}", "18"),
        (r"\boxed{5 \text{ cm}}", "5"),
        (r"\boxed{5}", r"5\text{ cm}"),
        (r"\boxed{12\text{ inches}^2}", "12"),  # a unit next to a plain number is dropped
        (r"\boxed{+12}", "12"),
        (r"\boxed{\textbf{12}}", "12"),
        (r"\boxed{12\ \text{cm}}", "12"),
        (r"\boxed{x = 5}", "5"),
        (r"\boxed{30^\circ}", "30"),
        (r"\boxed{\frac{\sqrt2}{2}}", r"\sqrt{2}/2"),  # math-verify
        (r"\boxed{(1,2)}", "x^2-3x+2<0"),  # math-verify: a set answers an inequality
        (r"\boxed{\text{(B)}}", "B"),
        (r"\boxed{\{1, 2\}}", r"\{2, 1\}"),
    ],
)
def test_verify_correct(completion, gold):
    assert verify(completion, gold) == VerifyResult(
        parsed=True, correct=True, answer=extract_answer(completion)
    )


@pytest.mark.parametrize(
    ("completion", "gold"),
    [
        ("the answer is 12", "2"),  # no substring credit
        (r"\boxed{12}", "2"),
        (r"\boxed{7} no wait \boxed{8}", "7"),  # the last box counts
        (r"\boxed{7+1}", "7"),  # the gold inside a longer expression
        (r"\boxed{7 or 8}", "7"),
        (r"\boxed{0.18}", r"18\%"),  # ... but no percent leniency: 0.18 is not 18%
        (r"\boxed{18\%}", "0.18"),
        (r"\boxed{0.333}", r"\frac{1}{3}"),  # exact: no float tolerance on plain numbers
        (r"\boxed{3+2i}", "5"),
        (r"\boxed{x^2-3x+2<0}", "(1,2)"),  # restating the question is not an answer (gold first)
        ("\\boxed{\uff17}", "7"),  # fullwidth digit 7
        ("\\boxed{\u0443}", "y"),  # Cyrillic u, looks like y
        (r"\boxed{" + "9" * 5000 + "}", "9"),  # beyond int()'s digit limit: no crash
    ],
)
def test_verify_wrong(completion, gold):
    result = verify(completion, gold)
    assert result.parsed and not result.correct


def test_verify_not_parsed_is_never_correct():
    assert verify("I give up.", "3") == VerifyResult(parsed=False, correct=False, answer=None)
    assert verify(r"\boxed{}", "0") == VerifyResult(parsed=False, correct=False, answer=None)
    assert verify(r"\boxed{ }", "") == VerifyResult(parsed=False, correct=False, answer=None)
    assert verify("the answer is 3", "3", fallback=False) == VerifyResult(False, False, None)


def test_verify_unusable_gold_is_never_correct():
    assert verify(r"\boxed{5}", "") == VerifyResult(parsed=True, correct=False, answer="5")
    assert verify(r"\boxed{???}", "???") == VerifyResult(parsed=True, correct=False, answer="???")


def test_verify_pathological_expression_times_out():
    start = time.monotonic()
    result = verify(r"\boxed{9^{9^{9^{9}}}}", r"2\sqrt{2}", timeout=2.0)  # symbolic gold: math-verify
    elapsed = time.monotonic() - start
    assert result == VerifyResult(parsed=True, correct=False, answer="9^{9^{9^{9}}}")
    assert elapsed < 2.0 + 60.0  # it did stop (at worst one worker start on a busy machine on top)
    assert verify(r"\boxed{\sqrt{8}}", r"2\sqrt{2}").correct  # the restarted worker answers again


def test_verify_from_worker_thread():
    results = []
    errors = []

    def run():
        try:
            results.append(verify(r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{1}{\sqrt{2}}"))  # math-verify path
            results.append(verify(r"\boxed{4}", "4"))  # fast path
        except Exception as error:  # surface it in the main thread
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=60)
    assert not errors
    assert [result.correct for result in results] == [True, True]


# ----------------------------------------------------------------------------------------------
# Verifier
# ----------------------------------------------------------------------------------------------


def test_verify_batch_keeps_order(verifier, monkeypatch):
    """Results come back in input order, the pathological item included: it is cut off by killing its
    worker (counted through ``_restart``; no wall-clock bound, which a loaded machine would break)."""
    restarts = []
    real_restart = verifier._restart
    monkeypatch.setattr(verifier, "_restart", lambda slot: (restarts.append(slot), real_restart(slot)))
    items = [
        (r"\boxed{3}", "3", True),  # fast path
        (r"\boxed{\sqrt{2}}", r"\sqrt{2}", True),  # math-verify
        (r"\boxed{9^{9^{9^{9}}}}", "x+1", False),  # times out
        ("no answer here", "5", False),  # not parsed
        (r"\boxed{\frac{\pi}{2}}", r"\pi/2", True),  # math-verify
        (r"\boxed{4}", "5", False),  # fast path
        (r"\boxed{2x+2}", "2(x+1)", True),  # math-verify
        (r"\boxed{x+1}", "x+2", False),  # math-verify
    ]
    completions, golds, expected = zip(*items)
    results = verifier.verify_batch(list(completions), list(golds))
    assert len(restarts) >= 1  # the item that would never finish was stopped by a kill
    assert [result.correct for result in results] == list(expected)
    assert [result.parsed for result in results] == [True, True, True, False, True, True, True, True]
    assert [result.answer for result in results] == [extract_answer(completion) for completion in completions]


def test_verify_batch_fast_path_is_fast():
    completions = [f"so the total is {3 * i} apples. \\boxed{{{3 * i:,}}}" for i in range(2000)]
    golds = [f"#### {3 * i}" if i % 2 else str(3 * i) for i in range(2000)]
    with Verifier() as fresh:
        results = fresh.verify_batch(completions, golds)
        # plain numbers never start a math-verify worker (its speed: bench/verify_bench.py, as a ratio)
        assert fresh._workers == [] and fresh._spares == []
    assert all(result.correct for result in results)


def test_verifier_survives_a_dead_worker():
    with Verifier(timeout=5.0) as fresh:
        assert fresh.verify_batch([r"\boxed{\sqrt{8}}"], [r"2\sqrt{2}"])[0].correct
        fresh._workers[0].process.kill()  # e.g. the OOM killer
        fresh._workers[0].process.wait()
        assert fresh.verify_batch([r"\boxed{\sqrt{18}}"], [r"3\sqrt{2}"])[
            0
        ].correct  # retried on a new worker


def test_verify_batch_length_mismatch(verifier):
    with pytest.raises(ValueError):
        verifier.verify_batch(["1", "2"], ["1"])


def test_verify_batch_empty(verifier):
    assert verifier.verify_batch([], []) == []


# ----------------------------------------------------------------------------------------------
# Fuzz: nothing raises
# ----------------------------------------------------------------------------------------------

latex_tokens = st.sampled_from(
    [
        "\\boxed",
        "\\fbox",
        "{",
        "}",
        "\\{",
        "\\}",
        "\\frac",
        "\\sqrt",
        "\\text{",
        "####",
        "\n",
        " ",
        "$",
        "\\$",
    ]
    + [
        "-",
        "\u2212",
        ",",
        ".",
        "/",
        "%",
        "\\%",
        "=",
        "x",
        "\uff17",
        "(",
        ")",
        "\\pi",
        "1",
        "23",
        "0.5",
        "1,000",
    ]
)
latex_like = st.lists(latex_tokens, max_size=30).map("".join)


@settings(max_examples=200, deadline=None)
@given(text=st.one_of(st.text(max_size=200), latex_like))
def test_extract_answer_never_raises(text):
    for fallback in (True, False):
        answer = extract_answer(text, fallback=fallback)
        assert answer is None or (isinstance(answer, str) and answer.strip() == answer and answer)
    parse_tag(text, "confidence")
    normalize_gold(text)


@settings(max_examples=20, deadline=None)
@given(
    completion=latex_like,
    gold=st.one_of(latex_like, st.sampled_from(["3", r"\frac{1}{2}", "x+1", "#### 72"])),
)
def test_verify_never_raises(verifier, completion, gold):
    result = verifier.verify_batch([completion], [gold])[0]
    assert result.parsed == (result.answer is not None)
    assert not (result.correct and not result.parsed)


# ----------------------------------------------------------------------------------------------
# Under attack: answers that try to game the reward earn nothing, and nothing stalls
# ----------------------------------------------------------------------------------------------

BIG = "9" * 5000


@pytest.mark.parametrize(
    ("completion", "gold"),
    [
        # the question restated: an unevaluated expression is not an answer to a number
        (r"Compute 3+5-4+2. So \boxed{3+5-4+2}", "6"),
        (r"\boxed{2 \cdot 3}", "6"),
        (r"\boxed{\sqrt{36}}", "6"),
        (r"\boxed{x^2-5x+6=0}", "2, 3"),  # the equation to solve, for its roots
        (r"\boxed{x^2-3x+2<0}", "(1,2)"),
        # the gold inside a longer, wrong expression, or hedged
        (r"\boxed{6 + 1}", "6"),
        (r"\boxed{16}", "6"),
        (r"\boxed{6x}", "6"),
        (r"\boxed{6, 7}", "6"),
        (r"\boxed{6 \pm 1}", "6"),
        (r"\boxed{6 \text{ or } 7}", "6"),
        (r"\boxed{6 \text{ (or 7)}}", "6"),
        (r"\boxed{\{6, 7\}}", "6"),
        (r"\boxed{x+1, x+2}", "x+1"),
        (r"\boxed{x+1 \text{ or } x+2}", "x+1"),
        (r"\boxed{\frac{\pi}{2}, \pi}", r"\frac{\pi}{2}"),
        (r"\boxed{2, 3, 4}", "2, 3"),
        (r"\boxed{\text{(B) or (C)}}", "B"),
        # several boxes: the last one counts
        (r"\boxed{6} or maybe \boxed{7}", "6"),
        (r"\boxed{6}, \boxed{6}, \boxed{7}", "6"),
        # enormous numbers and nested powers
        (r"\boxed{10^{10^{10}}}", "6"),
        (r"\boxed{9^{9^{9^{9}}}}", "6"),
        (r"\boxed{" + BIG + "}", "6"),
        (r"\boxed{" + BIG + "}", BIG),  # beyond the exact path's 100 characters: math-verify, no crash
        (r"\boxed{1e400}", "6"),
        (r"\boxed{(10^{100})!}", "6"),
        (r"\boxed{9^{9^{9^{9}}}}", r"2\sqrt{2}"),  # symbolic gold: math-verify, which times out
        # unicode look-alikes
        ("\\boxed{\uff16}", "6"),  # fullwidth 6
        ("\\boxed{\U0001d7d4}", "6"),  # mathematical bold 6
        ("\\boxed{\u0666}", "6"),  # Arabic-Indic 6
        ("\\boxed{\u2076}", "6"),  # superscript 6
        ("\\boxed{\u2165}", "6"),  # Roman numeral six
        ("\\boxed{2\u2076}", "26"),  # 2 to the 6th, not 26
        (r"\boxed{O}", "0"),  # the letter O
        (r"\boxed{l}", "1"),  # the letter l
        ("\\boxed{\u0443}", "y"),  # Cyrillic u
    ],
)
def test_attack_earns_no_reward(verifier, completion, gold):
    start = time.monotonic()
    result = verifier.verify_batch([completion], [gold])[0]
    assert not result.correct, result
    assert time.monotonic() - start < verifier.timeout + 60.0  # at worst one worker start on a busy machine


@pytest.mark.parametrize(
    "completion",
    [r"\boxed{}", r"\boxed{ }", r"\boxed{{}}", r"\boxed{\quad}", r"\boxed{\text{ }}", r"\boxed{$ $}",
     r"\boxed{~\,}", r"\boxed{\mbox{}}", r"\boxed{7} then \boxed{\qquad}", r"\boxed $"],
)  # fmt: skip
def test_blank_box_is_not_an_answer(verifier, completion):
    """A blank box is "not parsed": no reward, and no format reward for a parseable box (BNPO)."""
    assert verifier.verify_batch([completion], ["0"])[0] == VerifyResult(
        parsed=False, correct=False, answer=None
    )


def test_the_last_box_counts():
    assert verify(r"\boxed{7} no, \boxed{6}", "6").correct
    assert not verify(r"\boxed{6} no, \boxed{7}", "6").correct


def _wait_until_ready(worker, timeout=180.0):
    deadline = time.monotonic() + timeout
    while not worker.ready and time.monotonic() < deadline:
        if worker.conn.poll(0.2):
            worker.ready = worker.conn.recv() == "ready"
    assert worker.ready


def test_a_killed_worker_is_replaced_by_a_warm_spare():
    """After the first timeout a spare is kept started: the next pathological item costs `timeout`, and
    the item after it is answered by the spare at once, not after a worker start-up."""
    with Verifier(timeout=1.5) as fresh:
        hang = [r"\boxed{9^{9^{9^{9}}}}"], [r"2\sqrt{2}"]
        assert not fresh.verify_batch(*hang)[0].correct  # the first kill starts a spare
        assert len(fresh._spares) == 1
        _wait_until_ready(fresh._workers[0])
        _wait_until_ready(fresh._spares[0])
        spare_pid = fresh._spares[0].process.pid
        assert not fresh.verify_batch(*hang)[0].correct
        # the warm spare took the killed worker's place (no wall-clock bound: a loaded machine breaks those)
        assert fresh._workers[0].process.pid == spare_pid and fresh._workers[0].ready
        assert fresh.verify_batch([r"\boxed{\sqrt{8}}"], [r"2\sqrt{2}"])[0].correct
        assert fresh._workers[0].process.pid == spare_pid  # the warm spare answered it


def test_timeout_holds_in_a_worker_thread():
    results, errors = [], []

    def run():
        try:
            start = time.monotonic()
            results.append(verify(r"\boxed{9^{9^{9^{9}}}}", r"2\sqrt{2}", timeout=1.5))
            results.append(time.monotonic() - start)
        except Exception as error:  # surface it in the main thread
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=300)
    assert not errors and not thread.is_alive()
    assert not results[0].correct and results[0].parsed
    assert results[1] < 1.5 + 60.0


def _verify_in_child(queue):
    start = time.monotonic()
    hang = verify(r"\boxed{9^{9^{9^{9}}}}", r"2\sqrt{2}", timeout=1.5)
    ok = verify(r"\boxed{\sqrt{8}}", r"2\sqrt{2}")
    queue.put((hang.correct, ok.correct, time.monotonic() - start))


def test_timeout_holds_in_a_forked_child_that_leaves_the_parents_workers_alone():
    import multiprocessing

    assert verify(r"\boxed{\sqrt{8}}", r"2\sqrt{2}").correct  # the parent's shared verifier has a worker
    from common import verify as verify_module

    parent_worker = verify_module._shared_verifier._workers[0]
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_verify_in_child, args=(queue,))
    child.start()
    hang_correct, ok_correct, elapsed = queue.get(timeout=400)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert (hang_correct, ok_correct) == (False, True)
    assert elapsed < 1.5 + 2 * 120.0  # the child started its own workers (their start-up is not timed)
    assert parent_worker.process.poll() is None  # still running: the child neither used nor killed it
    assert verify_module._shared_verifier._workers[0] is parent_worker
    assert verify(r"\boxed{\sqrt{18}}", r"3\sqrt{2}").correct


attack_tokens = st.sampled_from(
    ["^{9^{9^{9}}}", "^{10^{10}}", "!", "\\sum_{n=1}^{\\infty}", "\\int_0^1", "9" * 120, "\\left(", "\\right)",
     "\\sqrt{", "\\frac{", "\\lor", "\\pm", "\\infty", "\\text{ or }", "\\{", "\\}", "x", "=", "<", "\\quad",
     "\uff16", "\u2076", "\u0443", "6", "7", "+", ",", "(", ")", "{", "}", " "]
)  # fmt: skip
attack_like = st.lists(attack_tokens, max_size=12).map(lambda tokens: "\\boxed{" + "".join(tokens) + "}")


@settings(max_examples=25, deadline=None)
@given(
    completion=st.one_of(attack_like, latex_like),
    gold=st.sampled_from(["6", r"2\sqrt{2}", "x+1", r"\frac{\pi}{2}", "(1,2)", "2, 3"]),
)
def test_fuzz_extraction_and_verification_return_within_the_timeout(fuzz_verifier, completion, gold):
    """No exception escapes, and no call runs longer than the timeout plus, at worst, one worker start."""
    from common.verify import _STARTUP_TIMEOUT

    start = time.monotonic()
    result = fuzz_verifier.verify_batch([completion], [gold])[0]
    assert time.monotonic() - start < fuzz_verifier.timeout + _STARTUP_TIMEOUT
    assert result.parsed == (result.answer is not None)
    assert not (result.correct and not result.parsed)


@pytest.fixture(scope="module")
def fuzz_verifier():
    with Verifier(timeout=1.0, num_workers=1) as shared:
        yield shared

r"""Verifiable reward for math answers: extract the final answer, compare it with the gold answer.

Extraction (`extract_answer`), first rule that applies wins:
  1. the LAST `\boxed{...}` or `\fbox{...}` (also `\boxed 5` without braces). Braces are matched by
     counting, so `\boxed{\frac{1}{2}}` works. Once the text has a box, the box decides: an empty or
     blank last box (only whitespace, braces, `$`, LaTeX spacing such as `\quad` or an empty `\text{}`)
     or an unclosed (truncated) one is "not parsed", and we do not fall back to an earlier box or to a
     number elsewhere in the text. Several boxes with different answers: only the last one counts.
  2. GSM8K style: the rest of the line after the last `####` that is followed by a number or math
     (a markdown heading such as "#### Step 2" is not an answer).
  3. only if `fallback=True`: the last plain number in the text ("1,234" -> "1234", "-3", "0.5", "3/4").

Equivalence (`verify`):
  * both sides are first cleaned the same way (`_clean`): unicode minus -> "-", "$" and "\$" removed,
    "%" removed (so "18\%" equals "18" but NOT "0.18": no percent leniency, a known false-positive
    source), `\dfrac`/`\tfrac` -> `\frac`, `\text{13}` -> "13", "1,000" -> "1000".
  * a gold that is a plain number (integer, decimal, `a/b`, `\frac{a}{b}`) is answered only by a plain
    number, optionally after "x =", or before "^\circ" or a unit `\text{ cm}`; the two are compared
    exactly, in this process, as `fractions.Fraction` (no float tolerance: "0.333" is not 1/3). An
    expression that merely evaluates to the number is not an answer: restating "Compute 3+5-4+2." as
    `\boxed{3+5-4+2}` (which math-verify would evaluate to 6), `\sqrt{36}` for 6, or a hedge such as
    `6 \text{ (or 7)}` earn nothing. Only ASCII digits count: look-alikes (fullwidth "６",
    mathematical "𝟔", superscripts) are not numbers. This covers nearly all GSM8K / MATH integer
    answers, so 2,000 of them verify in milliseconds.
  * any other gold goes to math-verify: `parse("\boxed{" + gold + "}")`, the same for the prediction, and
    `math_verify.verify(gold, prediction)` with the GOLD FIRST. math-verify is asymmetric on purpose,
    so that restating the question (e.g. the inequality to solve) is not rewarded; swapped arguments
    are a known bug in other repos (open-r1 #557).
  * no substring or partial credit anywhere: "12" vs "2" is wrong, `\boxed{7+1}` vs "7" is wrong.

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


def _last_box(text: str) -> tuple[bool, str | None]:
    """(text has a box, content of its last box or None if that box is blank or unclosed)."""
    last = _last_match(_BOX, text)
    if last is None:
        return False, None
    rest = text[last.end() :].lstrip()
    if rest.startswith("{"):
        content = _braced(rest, 0)
    else:  # "\boxed 5" or "\boxed5": one token, up to whitespace or "$"
        content = re.match(r"[^\s$]*", rest).group().rstrip(".,;")
    if content is None or _is_blank(content):
        return True, None
    return True, content.strip()


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
    """
    text = text.replace("\u2212", "-")  # unicode minus
    has_box, boxed = _last_box(text)
    if has_box:
        return boxed
    if gsm8k := _last_match(_GSM8K, text):
        return gsm8k.group(1).strip().rstrip(".") or None  # "#### ." is no answer
    if fallback and (number := _last_match(_NUMBER, text)):
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
# Normalization and the exact fast path
# ----------------------------------------------------------------------------------------------

_THOUSANDS = re.compile(r"-?[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?")
_TRAILING_UNIT = re.compile(
    r"\s*\\(?:text|textrm|mbox|mathrm)\{[^{}0-9]*\}(?:\^\{?[23]\}?)?$"
)  # \text{ cm}^2
_WHOLE_TEXT = re.compile(r"\\(?:text|textrm|textbf|mbox|mathrm|mathbf)\{([^{}]*)\}")
_DECIMAL = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_SLASH_FRACTION = re.compile(r"(-?[0-9]+)/([0-9]+)")
_LATEX_FRACTION = re.compile(r"(-?)\\frac(?:\{(-?[0-9]+)\}\{([0-9]+)\}|([0-9])([0-9]))")


def _clean(answer: str) -> str:
    r"""Light, meaning-preserving cleanup applied to both prediction and gold before comparing.

    >>> _clean("\\$1,000")
    '1000'
    >>> _clean("18\\%")  # the percent sign is dropped, the number is NOT divided by 100
    '18'
    >>> _clean("\\dfrac{3}{4}")
    '\\frac{3}{4}'
    """
    answer = answer.replace("\u2212", "-").replace("\\$", "").replace("$", "")
    answer = answer.replace("\\%", "").replace("%", "")
    answer = answer.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    answer = answer.replace("{,}", ",").replace("\\!", "").replace("\\,", "")
    answer = answer.replace("\\ ", " ").replace("~", " ").strip()
    whole_text = _WHOLE_TEXT.fullmatch(answer)
    if whole_text:  # \text{13} -> 13
        answer = whole_text.group(1).strip()
    if _THOUSANDS.fullmatch(answer):  # 1,234 -> 1234 (a whole-number answer only, not "(1,234)")
        answer = answer.replace(",", "")
    return answer


def _as_number(answer: str) -> Fraction | None:
    r"""The exact value of a cleaned plain-number answer, None if it is anything else.

    Also accepts a sign, "x = " before and a unit (`\text{ cm}`, `\text{ m}^2`) or a degree sign after the
    number; a unit is only removed next to a plain number, so `3+2\text{i}` is never "3+2". Anything
    with arithmetic left in it (`7+1`, `2^3`, `\sqrt{36}`) or non-ASCII digits is not a plain number.

    >>> _as_number("x = -0.5"), _as_number("\\frac12"), _as_number("30^\\circ"), _as_number("5\\text{ cm}")
    (Fraction(-1, 2), Fraction(1, 2), Fraction(30, 1), Fraction(5, 1))
    >>> _as_number("7+1") is None, _as_number("\\sqrt{36}") is None, _as_number("\uff16") is None
    (True, True, True)
    """
    if len(answer) > 100:  # also keeps clear of int()'s 4300-digit limit
        return None
    answer = re.sub(r"^[a-zA-Z]\s*=\s*", "", answer)  # x = 5
    answer = re.sub(r"^\+?(-?)\s*", r"\1", answer)  # "+5" -> "5", "- 5" -> "-5"
    answer = re.sub(r"\s*(?:\^\{?\\circ\}?|°)$", "", answer)  # 30^\circ
    answer = _TRAILING_UNIT.sub("", answer)  # 5\text{ cm}
    try:
        if _DECIMAL.fullmatch(answer):
            return Fraction(answer)
        if match := _SLASH_FRACTION.fullmatch(answer):
            return Fraction(int(match.group(1)), int(match.group(2)))
        if match := _LATEX_FRACTION.fullmatch(answer):
            sign, num, den, num_digit, den_digit = match.groups()
            value = Fraction(int(num or num_digit), int(den or den_digit))
            return -value if sign else value
    except (ValueError, ZeroDivisionError):
        return None
    return None


def normalize_gold(gold: str) -> str | None:
    r"""A dataset's gold answer as the canonical string we compare against; None if empty.

    Takes the last box or the GSM8K "####" answer if there is one (so a whole MATH solution or a
    whole GSM8K answer field works), then applies the same cleanup as to predictions.

    >>> normalize_gold("Natalia sold 48/2 = 24 clips in May.\n#### 1,072")
    '1072'
    >>> normalize_gold("$\\boxed{\\dfrac{1}{2}}$")
    '\\frac{1}{2}'
    >>> normalize_gold("  ") is None
    True
    """
    if _BOX.search(gold) or _GSM8K.search(gold):
        gold = extract_answer(gold, fallback=False) or ""
    gold = _clean(gold)
    return gold or None


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
        gold_parsed = math_verify.parse("\\boxed{" + gold + "}", parsing_timeout=None)
        gold_usable = any(not isinstance(item, str) for item in gold_parsed)  # not only a raw string
        if prediction is None:  # the gold_is_usable question
            return gold_usable
        if not gold_usable:
            return False
        prediction_parsed = math_verify.parse("\\boxed{" + prediction + "}", parsing_timeout=None)
        return bool(math_verify.verify(gold_parsed, prediction_parsed, timeout_seconds=None))
    except Exception:  # any failure inside math-verify/sympy is "not equal", never a crash
        return False


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
            gold_value = _as_number(gold_normalized)
            if gold_value is not None:  # a number is answered by a number, compared exactly, here
                correct = _as_number(answer_cleaned) == gold_value
                results[i] = VerifyResult(parsed=True, correct=correct, answer=answer)
            elif not answer_cleaned:  # e.g. "\boxed{\$}": nothing left to compare
                results[i] = VerifyResult(parsed=True, correct=False, answer=answer)
            else:
                slow_items.append((i, answer))
                slow_jobs.append((gold_normalized, answer_cleaned))
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
    """
    gold_normalized = normalize_gold(gold)
    if gold_normalized is None:
        return False
    if _as_number(gold_normalized) is not None:
        return True
    return _get_shared_verifier()._run_math_verify([(gold_normalized, None)], timeout=5.0)[0]

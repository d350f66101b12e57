"""common/verify.py on real data (issue 22): a fixed stratified subset of bench/verify_real.py's graded
MATH-500 and GSM8K cases, scored against their labels and against plain math-verify; and "nothing else
moves": the tiny world's golds and sampled demo completions score exactly as main's verifier scored them
before the round-two rules (bench/data/verify/unchanged.json, written by
`bench/verify_bench.py --record-unchanged`)."""

import hashlib
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from common.verify import Verifier, normalize_gold

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from verify_bench import UNCHANGED_PATH, tiny_cases  # noqa: E402
from verify_real import DELIBERATE, build_cases, ci_subset, errors_by_kind, plain_math_verify  # noqa: E402

# The whole set as built from the shipped data: a change to the data or to a rewrite shows up here.
CASES_PER_KIND = {
    "self": 301, "no-spaces": 43, "fractions": 117, "left-right": 21, "text": 30, "x-prefix": 250,
    "thousands": 143, "unboxed": 301, "base": 31, "last-integer": 276, "nested-box": 577,
    "reordered-vector": 22, "other-gold": 489, "gsm8k-reference": 1319, "gsm8k-model": 5268,
}  # fmt: skip
NO_FALSE_POSITIVES = ("base", "reordered-vector", "nested-box")  # the zero-FP kinds


@pytest.fixture(scope="module")
def cases():
    return build_cases()


@pytest.fixture(scope="module")
def subset(cases):
    return ci_subset(cases)


@pytest.fixture(scope="module")
def verifier():
    with Verifier(timeout=10.0, num_workers=1) as shared:
        yield shared


def test_the_set_is_built_mechanically_with_every_kind(cases):
    assert Counter(case.kind for case in cases) == CASES_PER_KIND
    assert sum(case.expected for case in cases) == 4826
    assert len({(case.gold, case.completion) for case in cases}) == len(cases)  # no case twice


def test_the_ci_subset_is_fixed_and_stratified(cases, subset):
    per_kind = Counter(case.kind for case in subset)
    assert set(per_kind) == set(CASES_PER_KIND)
    assert min(per_kind.values()) >= 20
    for kind in ("base", "nested-box", "gsm8k-model"):  # the kinds with both labels have both here
        assert {case.expected for case in subset if case.kind == kind} == {True, False}
    assert sorted(ci_subset(cases[::-1]), key=repr) == sorted(
        subset, key=repr
    )  # chosen by content, not order
    listing = "\n".join(f"{case.source}|{case.completion}|{case.expected}" for case in subset)
    assert hashlib.sha256(listing.encode()).hexdigest()[:16] == "f0f44e773d03a5a5"  # the same cases every run


def test_the_ci_subset_scores_its_labels_and_beats_plain_math_verify(verifier, subset):
    completions, golds = [case.completion for case in subset], [case.gold for case in subset]
    ours = [result.correct for result in verifier.verify_batch(completions, golds)]
    wrong = [
        (case.kind, case.gold, case.completion) for case, score in zip(subset, ours) if score != case.expected
    ]
    assert wrong == []
    baseline = [plain_math_verify(case.completion, case.gold) for case in subset]
    ours_errors, baseline_errors = errors_by_kind(subset, ours), errors_by_kind(subset, baseline)
    for kind, (false_negatives, _) in ours_errors.items():
        assert false_negatives <= baseline_errors[kind][0], kind
    assert sum(fp for _, fp in ours_errors.values()) < sum(fp for _, fp in baseline_errors.values())
    for kind in NO_FALSE_POSITIVES:
        assert ours_errors[kind][1] == 0
    assert baseline_errors["nested-box"][1] > 0 and baseline_errors["base"][1] > 0  # what the rules prevent


@pytest.mark.parametrize(("rule", "completion", "gold", "score"), DELIBERATE)
def test_each_deliberate_rule_holds_on_its_case(verifier, rule, completion, gold, score):
    """The cases docs/verifier.md shows for the rules kept on purpose score what the docs say."""
    assert verifier.verify_batch([completion], [gold])[0].correct == bool(score), rule


def test_plain_math_verify_is_the_pinned_baseline():
    assert plain_math_verify(r"so $\boxed{\frac{1}{2}}$", "0.5")
    assert plain_math_verify(r"\boxed{\boxed{7} \text{ or } 8}", "7")  # its false positive, kept as it is
    assert not plain_math_verify(r"\boxed{8}", "7")


# ----------------------------------------------------------------------------------------------
# Nothing else moves
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recorded():
    return json.loads(UNCHANGED_PATH.read_text())


def test_every_tiny_world_gold_scores_as_before(verifier, recorded):
    cases = tiny_cases()
    assert set(cases) == set(recorded["tiny"])
    for key, pairs in cases.items():
        completions, golds = zip(*pairs)
        results = verifier.verify_batch(list(completions), list(golds))
        assert [[result.answer, result.correct] for result in results] == recorded["tiny"][key]["scores"], key
        assert [normalize_gold(gold) for gold in golds[::2]] == recorded["tiny"][key]["golds"], key
    assert sum(len(value["scores"]) for value in recorded["tiny"].values()) == 17_600


def test_the_demo_completions_score_as_before(verifier, recorded):
    demo = recorded["demo"]
    results = verifier.verify_batch([row["completion"] for row in demo], [row["gold"] for row in demo])
    assert [(r.parsed, r.correct, r.answer) for r in results] == [
        (row["parsed"], row["correct"], row["answer"]) for row in demo
    ]
    assert len(demo) == 768 and 0 < sum(row["correct"] for row in demo) < len(demo)  # right and wrong ones

import itertools
import json
import math

import pytest

from common.evaluate import default_ks, pass_at_k, pass_at_k_curve, pass_hat_k, pass_hat_k_curve
from common.tracking import save_pass_at_k


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of n samples (the first c correct) that contain a correct sample."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in subset) for subset in subsets) / len(subsets)


def test_pass_at_k_matches_brute_force_enumeration():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12), (
                    n,
                    c,
                    k,
                )


def test_pass_at_k_matches_binomial_formula():
    for n, c, k in [(16, 3, 5), (64, 10, 8), (100, 1, 50)]:
        expected = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-12)


def test_pass_at_k_edge_cases():
    assert pass_at_k(5, 0, 3) == 0.0  # never correct
    assert pass_at_k(5, 5, 1) == 1.0  # always correct
    assert pass_at_k(5, 3, 3) == 1.0  # n - c = 2 < k: every 3-subset holds a correct one
    assert pass_at_k(1, 1, 1) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)  # pass@1 is the plain success rate


@pytest.mark.parametrize(
    ("n", "c", "k", "message"),
    [
        (4, 1, 5, "k=5"),
        (4, 5, 1, "c=5"),
        (4, -1, 1, "c=-1"),
        (4, 1, -2, "k=-2"),
        (0, 0, 1, "n=0"),
        (4, 1, 0, "k=0"),
    ],
)
def test_pass_at_k_rejects_invalid_arguments(n, c, k, message):
    with pytest.raises(ValueError, match=message):
        pass_at_k(n, c, k)


def test_pass_at_k_large_n_is_finite():
    value = pass_at_k(1000, 3, 500)
    assert math.isfinite(value) and 0.0 <= value <= 1.0
    assert value == pytest.approx(1 - (500 * 499 * 498) / (1000 * 999 * 998))
    assert 0.0 < pass_at_k(100_000, 1, 1) < 1e-4


def test_default_ks():
    assert default_ks(1) == [1]
    assert default_ks(8) == [1, 2, 4, 8]
    assert default_ks(10) == [1, 2, 4, 8, 10]
    assert default_ks(256)[-2:] == [128, 256]


def test_pass_at_k_curve():
    curve = pass_at_k_curve([0, 1, 4], n=4)
    assert list(curve) == [1, 2, 4]
    assert curve[1] == pytest.approx((0 + 0.25 + 1) / 3)
    assert curve[4] == pytest.approx(2 / 3)
    assert list(pass_at_k_curve([1, 2], n=6)) == [1, 2, 4, 6]
    assert list(pass_at_k_curve([1, 2], n=6, ks=[3])) == [3]
    values = list(curve.values())
    assert values == sorted(values)  # pass@k never decreases with k
    with pytest.raises(ValueError, match="empty"):
        pass_at_k_curve([], n=4)


def test_save_pass_at_k_writes_json_and_png(tmp_path):
    curves = {"base": pass_at_k_curve([0, 1, 3], n=4), "grpo": pass_at_k_curve([1, 2, 4], n=4)}
    json_path, png_path = tmp_path / "eval" / "pass_at_k.json", tmp_path / "plots" / "pass_at_k.png"
    save_pass_at_k(curves, json_path, png_path, title="MATH-500")
    assert png_path.stat().st_size > 0
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loaded = json.loads(json_path.read_text())
    assert {name: {int(k): v for k, v in curve.items()} for name, curve in loaded.items()} == curves


def test_length_measurement_counts_every_sample_and_splits_right_from_wrong(tiny_world_dir):
    """bench/lengths.py (Dr. GRPO's length claim): every sample is counted once, the two means are of
    the right and of the wrong completions, and no length exceeds --max-new-tokens."""
    from bench.lengths import measure

    stats = measure(str(tiny_world_dir), "tiny", problems=6, n=4, max_new_tokens=40)
    assert stats["samples"] == 24 and 0.0 <= stats["accuracy"] <= 1.0 and 0.0 <= stats["truncated"] <= 1.0
    for key in ("len_right", "len_wrong"):
        assert math.isnan(stats[key]) or 1 <= stats[key] <= 40, stats


def brute_force_pass_hat_k(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of n samples (the first c correct) in which every sample is correct."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(all(i < c for i in subset) for subset in subsets) / len(subsets)


def test_pass_hat_k_hand_computed():
    assert pass_hat_k(4, 3, 2) == pytest.approx(3 / 6)  # C(3,2) / C(4,2)
    assert pass_hat_k(10, 5, 3) == pytest.approx(10 / 120)  # C(5,3) / C(10,3)
    assert pass_hat_k(16, 12, 4) == pytest.approx(495 / 1820)  # C(12,4) / C(16,4)
    assert pass_hat_k(4, 1, 1) == 0.25  # pass^1 = pass@1, the plain success rate
    assert pass_hat_k(5, 2, 3) == 0.0  # fewer right samples than k
    assert pass_hat_k(5, 5, 5) == 1.0
    assert pass_hat_k(5, 0, 1) == 0.0


def test_pass_hat_k_matches_brute_force_and_never_exceeds_pass_at_k():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_hat_k(n, c, k) == pytest.approx(brute_force_pass_hat_k(n, c, k), abs=1e-12)
                assert pass_hat_k(n, c, k) <= pass_at_k(n, c, k) + 1e-12
            assert pass_hat_k(n, c, 1) == pytest.approx(pass_at_k(n, c, 1))


@pytest.mark.parametrize(("n", "c", "k", "message"), [(4, 1, 5, "k=5"), (4, 5, 1, "c=5"), (0, 0, 1, "n=0")])
def test_pass_hat_k_rejects_invalid_arguments(n, c, k, message):
    with pytest.raises(ValueError, match=message):
        pass_hat_k(n, c, k)


def test_pass_hat_k_curve():
    curve = pass_hat_k_curve([0, 1, 4], n=4)
    assert list(curve) == [1, 2, 4]
    assert curve[1] == pytest.approx((0 + 0.25 + 1) / 3)
    assert curve[2] == pytest.approx((0 + 0 + 1) / 3)
    assert curve[4] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="empty"):
        pass_hat_k_curve([], n=4)

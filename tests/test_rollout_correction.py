"""common/rollout_correction.py against hand-computed tensors: every --rollout-is and --rollout-rs mode,
TRL's four importance-sampling modes, the statistics, padding that holds garbage, [B] and [B, C]
advantages, micro-batches, and check_args. (verl's and TRL's own functions are the oracles in
tests/test_verl.py and tests/test_trl.py.)

The running example: three sequences (and, where said, a fourth that is all padding), ratios
ρ = π_old / π_sampler per real token

    sequence 0: ρ = (3, 0.6, 1)    product 1.8    three real tokens
    sequence 1: ρ = (2.5, 1.8)     product 4.5    two real tokens, one padding
    sequence 2: ρ = (0.25,)        product 0.25   one real token, two padding
"""

import math
import textwrap
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Literal

import pytest
import torch

import common.rollout_correction as rc
from common.rollout_correction import IS_MODES, RS_MODES, check_args, rollout_correction

MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
RATIOS = torch.tensor([[3.0, 0.6, 1.0], [2.5, 1.8, 1.0], [0.25, 1.0, 1.0]])  # 1.0 on padding, never read
BEHAVIOR = torch.log(torch.tensor([[0.2, 0.3, 0.5], [0.1, 0.25, 0.7], [0.8, 0.4, 0.05]]))  # [3, 3]
OLD = BEHAVIOR + torch.log(RATIOS)  # log π_old = log π_sampler + log ρ


def flags(**overrides):
    """Args as an algorithm file declares them (the defaults of the module docstring)."""
    fields = dict(
        rollout_is="none",
        rollout_is_threshold=2.0,
        rollout_is_threshold_low=None,
        rollout_rs="none",
        rollout_rs_threshold=None,
        temperature=1.0,
    )
    return SimpleNamespace(**{**fields, **overrides})


def weights_of(old=OLD, behavior=BEHAVIOR, mask=MASK, advantages=None, **overrides):
    advantages = -torch.ones(len(mask)) if advantages is None else advantages
    return rollout_correction(old, behavior, mask, advantages, flags(**overrides))


def close(actual, expected, atol=1e-6):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    assert torch.allclose(actual, expected, atol=atol, rtol=1e-5), f"\n{actual}\n!=\n{expected}"


def real(values):
    """The weights on real tokens, padding written as 1 (as the module returns it)."""
    return torch.where(MASK > 0, torch.as_tensor(values, dtype=torch.float32), 1.0)


# ------------------------------------------------------------------------------------------------------
# --rollout-is, every mode, by hand
# ------------------------------------------------------------------------------------------------------

IS_CASES = {
    # mode, C, lo: weights [3, 3] (padding filled in by `real`)
    ("token-tis", 2.0, None): [[2.0, 0.6, 1.0], [2.0, 1.8, 0], [0.25, 0, 0]],  # min(ρ, 2)
    ("seq-tis", 2.0, None): [[1.8] * 3, [2.0] * 3, [0.25] * 3],  # min(Πρ, 2) on every token
    ("token-mis", 2.0, None): [[0.0, 0.6, 1.0], [0.0, 1.8, 0], [0.25, 0, 0]],  # ρ > 2 -> 0, no lower bound
    ("token-mis", 2.0, 0.4): [[0.0, 0.6, 1.0], [0.0, 1.8, 0], [0.0, 0, 0]],  # and ρ < 0.4 -> 0
    ("seq-mis", 2.0, None): [[1.8] * 3, [0.0] * 3, [0.25] * 3],  # Πρ = 4.5 > 2 -> 0
    ("seq-mis", 2.0, 0.5): [[1.8] * 3, [0.0] * 3, [0.0] * 3],  # and Πρ = 0.25 < 0.5 -> 0
    ("icepop", 2.0, None): [[0.0, 0.6, 1.0], [0.0, 1.8, 0], [0.0, 0, 0]],  # [1/C, C] = [0.5, 2]
    ("icepop", 5.0, 0.5): [[3.0, 0.6, 1.0], [2.5, 1.8, 0], [0.0, 0, 0]],  # verl's IcePop preset [0.5, 5]
}


@pytest.mark.parametrize(
    ("mode", "cap", "low"), list(IS_CASES), ids=[f"{m}-{c}-{lo}" for m, c, lo in IS_CASES]
)
def test_importance_weights_by_hand(mode, cap, low):
    weights, stats = weights_of(rollout_is=mode, rollout_is_threshold=cap, rollout_is_threshold_low=low)
    close(weights, real(IS_CASES[mode, cap, low]))
    assert stats["correction/rs_rejected_token_frac"] == 0.0


# TRL 1.16.0's vllm_importance_sampling_mode, (C_min, C_max), by hand, and the mode here that is the same
TRL_CASES = {
    ("token_truncate", None, 2.0): ("token-tis", [[2.0, 0.6, 1.0], [2.0, 1.8, 0], [0.25, 0, 0]]),
    ("token_mask", None, 2.0): ("token-mis", [[0.0, 0.6, 1.0], [0.0, 1.8, 0], [0.25, 0, 0]]),
    ("token_mask", 0.5, 2.0): ("token-mis", [[0.0, 0.6, 1.0], [0.0, 1.8, 0], [0.0, 0, 0]]),
    ("sequence_truncate", None, 2.0): ("seq-tis", [[1.8] * 3, [2.0] * 3, [0.25] * 3]),
    ("sequence_mask", None, 3.0): ("seq-mis", [[1.8] * 3, [0.0] * 3, [0.25] * 3]),  # TRL's default mode and C
    ("sequence_mask", 0.5, 5.0): ("seq-mis", [[1.8] * 3, [4.5] * 3, [0.0] * 3]),
}


@pytest.mark.parametrize(
    ("trl_mode", "clip_min", "clip_max"), list(TRL_CASES), ids=[f"{m}-{lo}-{c}" for m, lo, c in TRL_CASES]
)
def test_trl_importance_sampling_modes_by_hand(trl_mode, clip_min, clip_max):
    """TRL: truncate = clamp(ρ, C_min, C_max); mask = ρ, zeroed outside [C_min, C_max]; sequence = exp of
    the sum of the log-ratios over the real tokens. Each equals one mode here."""
    mode, expected = TRL_CASES[trl_mode, clip_min, clip_max]
    weights, _ = weights_of(rollout_is=mode, rollout_is_threshold=clip_max, rollout_is_threshold_low=clip_min)
    close(weights, real(expected))


def test_icepop_is_token_mis_with_a_lower_bound():
    """One formula: icepop with lo = 1/C is token-mis given lo = 1/C, but token-mis has no lower bound by default."""
    icepop, _ = weights_of(rollout_is="icepop", rollout_is_threshold=2.0)
    close(
        icepop, weights_of(rollout_is="token-mis", rollout_is_threshold=2.0, rollout_is_threshold_low=0.5)[0]
    )
    assert not torch.equal(icepop, weights_of(rollout_is="token-mis", rollout_is_threshold=2.0)[0])


# ------------------------------------------------------------------------------------------------------
# --rollout-rs, every mode, by hand
# ------------------------------------------------------------------------------------------------------


def k3(r: float) -> float:
    return r - 1 - math.log(r)


def test_geo_mean_and_k3_rejection_by_hand():
    # geometric means: 1.8^(1/3) = 1.216, 4.5^(1/2) = 2.121, 0.25; τ = 1.5 keeps [0.667, 1.5]: only sequence 0
    assert 1 / 1.5 < 1.8 ** (1 / 3) < 1.5 and 4.5**0.5 > 1.5 and 0.25 < 1 / 1.5
    weights, _ = weights_of(rollout_rs="geo-mean", rollout_rs_threshold=1.5)
    close(weights, real([[1.0] * 3, [0.0] * 3, [0.0] * 3]))
    # τ = 2.2 keeps sequence 1 too (2.121 < 2.2)
    close(
        weights_of(rollout_rs="geo-mean", rollout_rs_threshold=2.2)[0],
        real([[1.0] * 3, [1.0] * 3, [0.0] * 3]),
    )
    # mean k3 over real tokens: 0.337, 0.398, 0.636 (a mean over all three slots would give 0.199 and 0.212)
    means = [(k3(3) + k3(0.6) + k3(1)) / 3, (k3(2.5) + k3(1.8)) / 2, k3(0.25)]
    assert means[0] < 0.35 < means[1] < 0.5 < means[2]
    close(weights_of(rollout_rs="k3", rollout_rs_threshold=0.35)[0], real([[1.0] * 3, [0.0] * 3, [0.0] * 3]))
    close(weights_of(rollout_rs="k3", rollout_rs_threshold=0.5)[0], real([[1.0] * 3, [1.0] * 3, [0.0] * 3]))


# OPSM: sequences with ρ = (0.5, 0.5), (0.9, 1.0) and (0.5, padding); KL to the sampler = mean(−log ρ)
# over real tokens: log 2 = 0.693, −log(0.9)/2 = 0.053, and log 2 again (not 0.347: padding is not a token)
OPSM_MASK = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
OPSM_BEHAVIOR = torch.log(torch.tensor([[0.4, 0.6], [0.5, 0.3], [0.8, 0.9]]))
OPSM_OLD = OPSM_BEHAVIOR + torch.log(torch.tensor([[0.5, 0.5], [0.9, 1.0], [0.5, 1.0]]))


@pytest.mark.parametrize(
    ("advantages", "delta", "kept"),
    [
        ([-1.0, -1.0, -1.0], 0.5, [0, 1, 0]),  # both high-KL negatives go
        ([-1.0, -1.0, -1.0], 0.05, [0, 0, 0]),  # 0.053 > 0.05: the low-KL one goes too
        ([-1.0, -1.0, -1.0], 0.7, [1, 1, 1]),  # log 2 = 0.693 < 0.7
        ([1.0, -1.0, -1.0], 0.5, [1, 1, 0]),  # a positive advantage is never rejected
        ([0.0, -1.0, -1.0], 0.5, [1, 1, 0]),  # nor a zero one (TRL keeps A >= 0)
        (
            [[-2.0, 1.0], [5.0, -1.0], [-1.0, 100.0]],
            0.5,
            [0, 1, 0],
        ),  # [B, C]: means -0.5, 2, -1 (padding's 100 unread)
        ([[-1.0, 2.0], [-1.0, -1.0], [1.0, -100.0]], 0.5, [1, 1, 1]),  # means 0.5, -1 (but KL 0.053), 1
    ],
)
def test_opsm_by_hand(advantages, delta, kept):
    advantages = torch.tensor(advantages)
    weights, stats = weights_of(
        OPSM_OLD, OPSM_BEHAVIOR, OPSM_MASK, advantages, rollout_rs="opsm", rollout_rs_threshold=delta
    )
    expected = torch.tensor(kept, dtype=torch.float32)[:, None].expand(3, 2)
    close(weights, torch.where(OPSM_MASK > 0, expected, 1.0))
    rejected_tokens = float(((1 - expected) * OPSM_MASK).sum() / OPSM_MASK.sum())
    assert stats["correction/rs_rejected_token_frac"] == pytest.approx(rejected_tokens)
    assert stats["correction/rs_rejected_seq_frac"] == pytest.approx(1 - sum(kept) / 3)


def test_opsm_per_sequence_and_per_token_advantages_agree_when_constant():
    sequence = torch.tensor([-1.0, 0.5, -0.2])
    for delta in (0.05, 0.5):
        a, _ = weights_of(
            OPSM_OLD, OPSM_BEHAVIOR, OPSM_MASK, sequence, rollout_rs="opsm", rollout_rs_threshold=delta
        )
        b, _ = weights_of(
            OPSM_OLD,
            OPSM_BEHAVIOR,
            OPSM_MASK,
            sequence[:, None].expand(3, 2),
            rollout_rs="opsm",
            rollout_rs_threshold=delta,
        )
        assert torch.equal(a, b)


def test_rs_thresholds_default_to_the_documented_values():
    """None: opsm δ = 0.1, geo-mean τ = 1.001, k3 τ = 0.01 (module docstring, and the help text below)."""
    assert rc.RS_DEFAULT_THRESHOLDS == {"opsm": 0.1, "geo-mean": 1.001, "k3": 0.01}
    for mode, threshold in rc.RS_DEFAULT_THRESHOLDS.items():
        for old, behavior, mask in ((OLD, BEHAVIOR, MASK), (OPSM_OLD, OPSM_BEHAVIOR, OPSM_MASK)):
            default, _ = weights_of(old, behavior, mask, rollout_rs=mode)
            assert torch.equal(
                default, weights_of(old, behavior, mask, rollout_rs=mode, rollout_rs_threshold=threshold)[0]
            )
    # at its default 0.01, k3 rejects all three running-example sequences; OPSM's δ = 0.1 the two with KL log 2
    close(weights_of(rollout_rs="k3")[0], real([[0.0] * 3] * 3))
    opsm, _ = weights_of(OPSM_OLD, OPSM_BEHAVIOR, OPSM_MASK, -torch.ones(3), rollout_rs="opsm")
    close(opsm, torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0]]))


# ------------------------------------------------------------------------------------------------------
# Both at once, and the statistics
# ------------------------------------------------------------------------------------------------------


def test_statistics_by_hand():
    """token-tis at C = 2 with geo-mean at τ = 1.5, plus a fourth sequence that is all padding (it counts in
    no share). Weights: sequence 0 (2, 0.6, 1); 1 and 2 rejected."""
    mask = torch.cat([MASK, torch.zeros(1, 3)])
    old = torch.cat([OLD, torch.full((1, 3), float("nan"))])
    behavior = torch.cat([BEHAVIOR, torch.zeros(1, 3)])
    weights, stats = weights_of(
        old, behavior, mask, rollout_is="token-tis", rollout_rs="geo-mean", rollout_rs_threshold=1.5
    )
    close(weights, torch.tensor([[2.0, 0.6, 1.0], [0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 1.0]]))
    logs = [math.log(r) for r in (3, 0.6, 1, 2.5, 1.8, 0.25)]  # the six real tokens' log-ratios
    expected = {
        "correction/is_truncated_token_frac": 2 / 6,  # ρ = 3 and 2.5
        "correction/is_truncated_seq_frac": 2 / 3,  # sequences 0 and 1, of three with a real token
        "correction/is_masked_token_frac": 0.0,
        "correction/is_masked_seq_frac": 0.0,
        "correction/rs_rejected_token_frac": 3 / 6,  # sequence 1's two tokens and sequence 2's one
        "correction/rs_rejected_seq_frac": 2 / 3,
        "correction/weight_mean": (2 + 0.6 + 1) / 6,
        "correction/logprob_gap": sum(abs(x) for x in logs) / 6,
        "correction/sampler_kl": -sum(logs) / 6,
    }
    assert stats == pytest.approx(expected)


def test_masked_shares_by_hand():
    _, stats = weights_of(rollout_is="seq-mis", rollout_is_threshold_low=0.5)  # sequences 1 and 2 masked
    assert stats["correction/is_masked_token_frac"] == pytest.approx(3 / 6)
    assert stats["correction/is_masked_seq_frac"] == pytest.approx(2 / 3)
    _, stats = weights_of(rollout_is="icepop")  # ρ = 3, 2.5 and 0.25 masked, one in each sequence
    assert stats["correction/is_masked_token_frac"] == pytest.approx(3 / 6)
    assert stats["correction/is_masked_seq_frac"] == pytest.approx(1.0)
    assert stats["correction/is_truncated_token_frac"] == 0.0
    assert stats["correction/weight_mean"] == pytest.approx((0.6 + 1 + 1.8) / 6)


def test_all_none_gives_exactly_ones():
    weights, stats = rollout_correction(None, BEHAVIOR, MASK, torch.zeros(3), flags())
    assert torch.equal(weights, torch.ones(3, 3)) and weights.dtype == torch.float32
    assert all(
        stats[f"correction/{name}_{level}_frac"] == 0.0
        for name in rc.MECHANISMS
        for level in ("token", "seq")
    )
    assert stats["correction/weight_mean"] == 1.0 and "correction/logprob_gap" not in stats
    weights, stats = weights_of()  # with π_old: still ones, and the gap is measured
    assert torch.equal(weights, torch.ones(3, 3))
    assert stats["correction/sampler_kl"] == pytest.approx(-math.log(1.8 * 4.5 * 0.25) / 6)


def test_a_mode_without_old_logprobs_is_an_error():
    with pytest.raises(ValueError, match="old_logprobs"):
        rollout_correction(None, BEHAVIOR, MASK, torch.zeros(3), flags(rollout_rs="k3"))


EVERY_COMBINATION = [(i, r) for i in IS_MODES for r in RS_MODES]


@pytest.mark.parametrize(("is_mode", "rs_mode"), EVERY_COMBINATION)
def test_padding_garbage_changes_nothing(is_mode, rs_mode):
    """NaN, ±inf and huge values in the padding's log-probs: the same weights and statistics, all finite."""
    clean_weights, clean_stats = weights_of(rollout_is=is_mode, rollout_rs=rs_mode)
    padding = MASK == 0
    for garbage_old, garbage_behavior in (
        (float("nan"), 0.0),
        (float("inf"), float("inf")),
        (-float("inf"), 1e30),
        (0.0, float("nan")),
        (1e30, -1e30),
    ):
        old = torch.where(padding, garbage_old, OLD)
        behavior = torch.where(padding, garbage_behavior, BEHAVIOR)
        weights, stats = weights_of(old, behavior, rollout_is=is_mode, rollout_rs=rs_mode)
        assert torch.equal(weights, clean_weights) and torch.isfinite(weights).all()
        assert stats == clean_stats and all(math.isfinite(v) for v in stats.values())


def random_batch(seed: int, B: int = 10, C: int = 7):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, C + 1, (B,), generator=generator)
    mask = (torch.arange(C)[None, :] < lengths[:, None]).float()
    behavior = -3 * torch.rand(B, C, generator=generator)
    old = behavior + 0.6 * torch.randn(B, C, generator=generator)
    advantages = torch.randn(B, generator=generator)
    return old, behavior, mask, advantages


@pytest.mark.parametrize(("is_mode", "rs_mode"), EVERY_COMBINATION)
def test_weights_are_per_row_so_micro_batches_change_nothing(is_mode, rs_mode):
    """The weights of a micro-batch are the whole batch's weights of those rows; they are detached."""
    for seed in range(3):
        old, behavior, mask, advantages = random_batch(seed)
        old.requires_grad_()
        args = flags(
            rollout_is=is_mode,
            rollout_rs=rs_mode,
            rollout_rs_threshold=None if rs_mode != "geo-mean" else 1.3,
        )
        whole, _ = rollout_correction(old, behavior, mask, advantages, args)
        parts = [
            rollout_correction(old[h], behavior[h], mask[h], advantages[h], args)[0]
            for h in (slice(0, 3), slice(3, 10))
        ]
        assert torch.equal(whole, torch.cat(parts)) and not whole.requires_grad


def test_rejection_keeps_the_token_in_the_normaliser():
    """A rejected sequence's tokens get weight 0, and token-mean still divides by all real tokens."""
    weights, _ = weights_of(rollout_rs="geo-mean", rollout_rs_threshold=1.5)
    per_token_loss = torch.ones(3, 3)
    loss = (per_token_loss * weights * MASK).sum() / MASK.sum()
    assert loss.item() == pytest.approx(3 / 6)  # sequence 0's three tokens over all six


# ------------------------------------------------------------------------------------------------------
# The flags
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "flag"),
    [
        ({"rollout_is": "tis"}, "--rollout-is must be one of"),
        ({"rollout_rs": "opsm-k3"}, "--rollout-rs must be one of"),
        ({"rollout_is": "token-tis", "rollout_is_threshold": 0.0}, "--rollout-is-threshold must be > 0"),
        (
            {"rollout_is": "token-tis", "rollout_is_threshold": float("nan")},
            "--rollout-is-threshold must be > 0",
        ),
        (
            {"rollout_is": "token-mis", "rollout_is_threshold_low": -0.1},
            "--rollout-is-threshold-low must be > 0",
        ),
        (
            {"rollout_is": "token-mis", "rollout_is_threshold_low": 2.0},
            "--rollout-is-threshold-low (2.0) must be below",
        ),
        (
            {"rollout_is": "icepop", "rollout_is_threshold_low": 3.0},
            "--rollout-is-threshold-low (3.0) must be below",
        ),
        (
            {"rollout_is": "token-tis", "rollout_is_threshold_low": 0.5},
            "--rollout-is-threshold-low is the lower bound",
        ),
        ({"rollout_is": "icepop", "rollout_is_threshold": 0.8}, "--rollout-is icepop's default lower bound"),
        ({"rollout_rs_threshold": 0.5}, "--rollout-rs-threshold is set but --rollout-rs is none"),
        ({"rollout_rs": "opsm", "rollout_rs_threshold": 0.0}, "--rollout-rs-threshold must be > 0"),
        (
            {"rollout_rs": "geo-mean", "rollout_rs_threshold": 0.999},
            "--rollout-rs-threshold must be > 1 for geo-mean",
        ),
        ({"rollout_is": "seq-tis", "temperature": 0.0}, "--temperature 0"),
    ],
)
def test_check_args_names_the_flag_in_one_line(overrides, flag):
    with pytest.raises(SystemExit) as error:
        check_args(flags(**overrides))
    message = str(error.value)
    assert message.startswith(flag) or flag in message, message
    assert "\n" not in message


@pytest.mark.parametrize(("is_mode", "rs_mode"), EVERY_COMBINATION)
def test_check_args_accepts_every_mode_at_its_defaults(is_mode, rs_mode):
    check_args(flags(rollout_is=is_mode, rollout_rs=rs_mode))
    if is_mode == rs_mode == "none":
        check_args(flags(temperature=0.0))  # greedy sampling is fine when nothing needs behaviour log-probs


def documented_args():
    """The Args fields of the module docstring, as a dataclass (the block is code every file pastes)."""
    doc = rc.__doc__
    block = doc.split("call in its ``validate()``:\n", 1)[1].split("\n    check_args(args)", 1)[0]
    source = "@dataclass\nclass Args:\n" + textwrap.indent(textwrap.dedent(block).strip("\n"), "    ") + "\n"
    namespace = {"dataclass": dataclass, "Literal": Literal}
    exec(source, namespace)
    return namespace["Args"]


def test_the_documented_args_fields_parse_with_tyro():
    import tyro

    Args = documented_args()
    defaults = tyro.cli(Args, args=[])
    assert vars(defaults) == {
        "rollout_is": "none",
        "rollout_is_threshold": 2.0,
        "rollout_is_threshold_low": None,
        "rollout_rs": "none",
        "rollout_rs_threshold": None,
    }
    check_args(defaults)
    parsed = tyro.cli(
        Args,
        args=[
            "--rollout-is",
            "icepop",
            "--rollout-is-threshold",
            "5",
            "--rollout-is-threshold-low",
            "0.5",
            "--rollout-rs",
            "opsm",
            "--rollout-rs-threshold",
            "0.2",
        ],
    )
    assert (parsed.rollout_is, parsed.rollout_is_threshold, parsed.rollout_is_threshold_low) == (
        "icepop",
        5.0,
        0.5,
    )
    assert (parsed.rollout_rs, parsed.rollout_rs_threshold) == ("opsm", 0.2)
    assert tuple(Args.__annotations__["rollout_is"].__args__) == IS_MODES
    assert tuple(Args.__annotations__["rollout_rs"].__args__) == RS_MODES
    help_line = rc.__doc__.split("rollout_rs_threshold: float | None = None", 1)[1].splitlines()[1]
    assert "(None: 0.1, 1.001, 0.01)" in help_line  # RS_DEFAULT_THRESHOLDS, in its order

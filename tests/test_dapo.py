"""DAPO (algos/dapo.py) against hand-computed values (spec: more-methods.md A5 (e)): the soft overlong
punishment, the ±1 reward, the group filter, the decoupled clip, overlong filtering, the dynamic-sampling
loop (a scripted sampler with fixed accuracy per prompt, in the pure function and in the real loop), bad
flags, exact resume of the prompt stream, and (marked slow) a learning run on the tiny world."""

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import algos.dapo
import common.run
from algos.dapo import (
    Args,
    aggregate_loss,
    clipped_surrogate,
    dapo_rewards,
    dynamic_sampling,
    grpo_advantages,
    keep_groups,
    main,
    overlong_penalty,
    validate,
)
from common.data import load_examples
from common.tracking import read_jsonl
from common.verify import VerifyResult

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------------------
# Soft overlong punishment and the ±1 reward
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "max_len,cache_len,length,expected",
    [
        (80, 16, 64, 0.0),  # |y| = L_max − L_cache: the last length without penalty
        (80, 16, 72, -0.5),  # the middle of the cache zone
        (80, 16, 68, -0.25),  # a quarter of the way in: (64 − 68) / 16
        (80, 16, 80, -1.0),  # |y| = L_max (a truncated completion has exactly this length)
        (80, 16, 81, -1.0),  # beyond L_max
        (80, 16, 30, 0.0),
        (80, 16, 1, 0.0),
        (20480, 4096, 16384, 0.0),  # the paper's setting: 16384 expected + 4096 cache
        (20480, 4096, 18432, -0.5),
        (20480, 4096, 20481, -1.0),
        (80, 0, 80, 0.0),  # L_cache = 0: no soft punishment at all
    ],
)
def test_overlong_penalty_hand_computed(max_len, cache_len, length, expected):
    got = overlong_penalty(torch.tensor([length]), max_len, cache_len)
    assert got.tolist() == [pytest.approx(expected, abs=1e-7)]


def test_overlong_penalty_keeps_the_shape_and_is_monotone():
    lengths = torch.arange(0, 100).view(4, 25)
    penalty = overlong_penalty(lengths, max_len=80, cache_len=16)
    assert penalty.shape == (4, 25) and (penalty <= 0).all() and (penalty >= -1).all()
    assert (penalty.view(-1).diff() <= 0).all()  # longer is never better


def test_dapo_reward_is_plus_minus_one_plus_the_length_penalty():
    correct = torch.tensor([[1, 0, 1, 0, 1]])
    lengths = torch.tensor([[30, 30, 72, 80, 80]])  # short, short, mid-cache, truncated, truncated
    rewards = dapo_rewards(correct, lengths, max_len=80, cache_len=16)
    assert rewards.tolist() == [[1.0, -1.0, 0.5, -2.0, 0.0]]
    assert dapo_rewards(correct.bool(), lengths, 80, 0).tolist() == [[1.0, -1.0, 1.0, -1.0, 1.0]]


def test_without_the_penalty_plus_minus_one_gives_the_advantages_of_zero_one():
    """The z-score ignores r -> 2r − 1, so the ±1 reward trains exactly as grpo.py's 0/1 (up to its ε)."""
    correct = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 1.0]])
    pm_one = grpo_advantages(dapo_rewards(correct, torch.full((2, 4), 10), 80, 16))
    assert torch.allclose(pm_one, grpo_advantages(correct), atol=1e-5)
    assert torch.allclose(pm_one[0], torch.tensor([1.5, -0.5, -0.5, -0.5]), atol=1e-5)
    # Dr. GRPO's (no std) advantage doubles: it is the one that reads the reward's scale
    assert torch.allclose(grpo_advantages(2 * correct - 1, "none"), 2 * grpo_advantages(correct, "none"))


# ---------------------------------------------------------------------------------------------------
# The group filter
# ---------------------------------------------------------------------------------------------------


def test_filter_drops_groups_whose_accuracy_is_zero_or_one_and_keeps_the_rest():
    accuracy = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0],  # p̂ = 0
            [1.0, 0.0, 0.0, 0.0],  # 1/4
            [1.0, 1.0, 0.0, 0.0],  # 1/2
            [0.0, 1.0, 1.0, 1.0],  # 3/4
            [1.0, 1.0, 1.0, 1.0],  # p̂ = 1
        ]
    )
    assert keep_groups(accuracy).tolist() == [False, True, True, True, False]
    assert keep_groups(2 * accuracy - 1).tolist() == [False, True, True, True, False]  # ±1 alike
    assert keep_groups(torch.tensor([[0.0, 1.0], [1.0, 1.0]])).tolist() == [True, False]  # G = 2


def test_kept_groups_are_exactly_those_with_a_gradient():
    """What the filter drops is what GRPO cannot learn from: every advantage of those groups is 0."""
    accuracy = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    zero_advantage = (grpo_advantages(accuracy) == 0).all(dim=1)
    assert torch.equal(keep_groups(accuracy), ~zero_advantage)


# ---------------------------------------------------------------------------------------------------
# The decoupled clip (ε_low 0.2, ε_high 0.28)
# ---------------------------------------------------------------------------------------------------


def surrogate_grad(ratio: float, advantage: float) -> float:
    """d loss / d log π_θ of one token, at the given ratio and advantage, with dapo.py's default clip."""
    args = Args()
    logprob = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss, _ = clipped_surrogate(
        logprob, torch.zeros(1, 1), torch.tensor([advantage]), args.clip_low, args.clip_high
    )
    loss.sum().backward()
    return logprob.grad.item()


def test_default_clip_is_decoupled():
    assert (Args().clip_low, Args().clip_high) == (0.2, 0.28)


@pytest.mark.parametrize(
    "ratio,advantage,expected",
    [
        (1.25, 1.0, -1.25),  # A > 0: within 1 + ε_high = 1.28, the gradient is −A·ρ
        (1.30, 1.0, 0.0),  # A > 0: past 1.28, clipped, no gradient (GRPO's 1.2 would clip 1.25 too)
        (0.79, 1.0, -0.79),  # A > 0 below 1 − ε_low: no lower clip for a positive advantage
        (0.81, -1.0, 0.81),  # A < 0: above 1 − ε_low = 0.8, the gradient is −A·ρ
        (0.79, -1.0, 0.0),  # A < 0: below 0.8, clipped
        (1.30, -1.0, 1.30),  # A < 0: no upper clip for a negative advantage
        (1.25, 2.0, -2.5),
    ],
)
def test_clip_higher_bounds_hand_computed(ratio, advantage, expected):
    assert surrogate_grad(ratio, advantage) == pytest.approx(expected, rel=1e-5, abs=1e-7)


# ---------------------------------------------------------------------------------------------------
# Token-mean loss and overlong filtering
# ---------------------------------------------------------------------------------------------------

LOGPROBS = torch.log(torch.tensor([[0.5, 0.4, 0.3, 0.2], [0.6, 0.5, 0.0, 0.0], [0.9, 0.8, 0.7, 0.6]]))
MASK = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])  # lengths 4, 2, 4
TRUNCATED = torch.tensor([True, False, True])  # rows 0 and 2 hit the limit (4 tokens, no EOS)
ADVANTAGES = torch.tensor([1.0, -1.0, 0.5])


def token_grads(mask: torch.Tensor, rows=slice(None)) -> torch.Tensor:
    logprobs = LOGPROBS[rows].clone().clamp(min=-30).requires_grad_(True)
    loss, _ = clipped_surrogate(logprobs, logprobs.detach(), ADVANTAGES[rows], 0.2, 0.28)
    aggregate_loss(loss, mask, "token-mean", len(mask), int(mask.sum()), 4).backward()
    return logprobs.grad


def test_token_mean_gives_every_token_the_same_weight():
    """On-policy (ρ = 1) the gradient of a token is −A_i / (all tokens) = −A_i / 10, whatever its length."""
    grads = token_grads(MASK)
    assert torch.allclose(grads, -ADVANTAGES[:, None] * MASK / 10)
    assert Args().loss_agg == "token-mean"


def test_overlong_filtering_zeroes_the_truncated_samples_gradient():
    """Masking the truncated rows: their gradient is exactly 0, and the rest train as if they were alone
    (the token mean runs over the 2 tokens left, not the 10 of the batch)."""
    filtered = MASK * (~TRUNCATED)[:, None]
    grads = token_grads(filtered)
    assert (grads[TRUNCATED] == 0).all()
    assert torch.allclose(grads[1], torch.tensor([0.5, 0.5, 0.0, 0.0]))  # −(−1) / 2 on its 2 tokens
    assert torch.allclose(grads[~TRUNCATED], token_grads(MASK[~TRUNCATED], ~TRUNCATED))


# ---------------------------------------------------------------------------------------------------
# The dynamic-sampling loop, with a scripted sampler: fixed accuracy per prompt
# ---------------------------------------------------------------------------------------------------


class ScriptedRounds:
    """Prompts 0, 1, 2, ... drawn in rounds of ``size``; prompt k's group of G is all wrong if k % 3 == 0,
    all right if k % 3 == 1 and mixed (one right) if k % 3 == 2. Counts rounds and samples."""

    def __init__(self, size: int, G: int = 4, pattern=None):
        self.size, self.G, self.cursor, self.rounds, self.samples = size, G, 0, 0, 0
        self.pattern = pattern or (lambda k: [0.0] * G if k % 3 == 0 else [1.0] * G if k % 3 == 1 else [1.0] + [0.0] * (G - 1))  # fmt: skip

    def __call__(self) -> torch.Tensor:
        ks = range(self.cursor, self.cursor + self.size)
        self.cursor += self.size
        self.rounds += 1
        self.samples += self.size * self.G
        return torch.tensor([self.pattern(k) for k in ks])


@pytest.mark.parametrize(
    "size,num_groups,rounds,trained_prompts,kept",
    [
        (4, 5, 4, [2, 5, 8, 11, 14], 5),  # one mixed prompt in every round of 4, until the 5th (prompt 14)
        (6, 2, 1, [2, 5], 2),  # exactly enough in round 1
        (6, 3, 2, [2, 5, 8], 4),  # round 2 keeps 8 and 11; 11 is one too many and is dropped
        (3, 1, 1, [2], 1),
    ],
)
def test_dynamic_sampling_fills_exactly_the_asked_groups_and_counts_rounds_and_samples(
    size, num_groups, rounds, trained_prompts, kept
):
    sampler = ScriptedRounds(size)
    masks, kept_groups = dynamic_sampling(sampler, num_groups, max_rounds=10)
    train = torch.cat(masks)
    assert len(masks) == sampler.rounds == rounds
    assert int(train.sum()) == num_groups and train.nonzero().view(-1).tolist() == trained_prompts
    assert kept_groups == kept
    assert sampler.samples == rounds * size * 4  # every sample of every round was generated


def test_dynamic_sampling_stops_at_the_cap_with_what_it_has():
    only_uniform = ScriptedRounds(
        5, pattern=lambda k: [float(k % 2)] * 4
    )  # every group all wrong or all right
    masks, kept = dynamic_sampling(only_uniform, num_groups=4, max_rounds=3)
    assert len(masks) == only_uniform.rounds == 3 and only_uniform.samples == 3 * 5 * 4
    assert kept == 0 and not torch.cat(masks).any()
    sparse = ScriptedRounds(4)  # one mixed group per round of 4, 5 wanted, cap 2 -> trains on 2
    masks, kept = dynamic_sampling(sparse, num_groups=5, max_rounds=2)
    assert len(masks) == 2 and kept == 2 and torch.cat(masks).nonzero().view(-1).tolist() == [2, 5]


def test_without_dynamic_sampling_one_round_is_kept_whole():
    sampler = ScriptedRounds(6)
    masks, kept = dynamic_sampling(sampler, num_groups=6, max_rounds=10, filter_groups=False)
    assert len(masks) == 1 and masks[0].all() and kept == 6 and sampler.samples == 24


# ---------------------------------------------------------------------------------------------------
# The real loop: a verifier with fixed accuracy per prompt (by its gold answer), a random tiny model
# ---------------------------------------------------------------------------------------------------

G_LOOP = 4


def pattern_of(gold: str) -> list[bool]:
    """Accuracy of a prompt's group, fixed by its gold answer: all wrong, all right, or mixed."""
    kind = int(gold) % 3
    return (
        [False] * G_LOOP if kind == 0 else [True] * G_LOOP if kind == 1 else [True] + [False] * (G_LOOP - 1)
    )


class PerPromptVerifier:
    """Scores completion i of a round by its prompt's gold answer and its index in the group (i % G)."""

    def __init__(self, everything_right: bool = False):
        self.everything_right = everything_right

    def verify_batch(self, completions, golds):
        return [
            VerifyResult(True, self.everything_right or pattern_of(gold)[i % G_LOOP], gold)
            for i, gold in enumerate(golds)
        ]

    def close(self):
        pass


def loop_args(model_dir, tmp_path, run_name, **flags) -> Args:
    base = dict(
        model_name_or_path=str(model_dir), output_dir=str(tmp_path), run_name=run_name, num_steps=3,
        prompts_per_step=3, group_size=G_LOOP, gen_prompts_per_round=4, max_gen_rounds=10, max_new_tokens=6,
        micro_batch_size=5, eval_problems=1, eval_n=1, eval_every=0, save_every=100, overlong_cache_len=2,
    )  # fmt: skip
    return Args(**{**base, **flags})


def expected_rounds(args: Args) -> list[tuple[int, int, int]]:
    """(rounds, mixed groups drawn, trained groups) per step, walking the seeded prompt stream by hand."""
    examples = load_examples(args.dataset, "train", seed=args.seed)
    cursor, out = 0, []
    for _ in range(args.num_steps):
        rounds = mixed = 0
        while mixed < args.prompts_per_step and rounds < args.max_gen_rounds:
            epoch, offset = divmod(cursor, len(examples))
            order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(args.seed + epoch))
            drawn = [examples[i] for i in order.roll(-offset)[: args.gen_prompts_per_round].tolist()]
            cursor += len(drawn)
            rounds += 1
            mixed += sum(int(e.answer) % 3 == 2 for e in drawn)
        out.append((rounds, mixed, min(mixed, args.prompts_per_step)))
    return out


@pytest.mark.parametrize("cache_len", [2, 0])
def test_real_loop_fills_the_batch_counts_rounds_and_samples(
    random_model_dir, tmp_path, monkeypatch, cache_len
):
    """The filter reads accuracy, not the shaped reward: with the length penalty on (cache 2 of 6 tokens) an
    all-wrong group whose lengths differ is still dropped. ``zero_std_frac`` (the shared metric: groups whose
    own rewards are all equal) is the filter's share exactly without the penalty, at most it with it."""
    monkeypatch.setattr(common.run, "Verifier", PerPromptVerifier)
    args = loop_args(random_model_dir, tmp_path, "loop", overlong_cache_len=cache_len)
    main(args)
    rows = [r for r in read_jsonl(tmp_path / "loop" / "metrics.jsonl") if "loss" in r]
    want = expected_rounds(args)
    assert any(rounds > 1 for rounds, _, _ in want)  # the test does exercise several rounds per step
    for row, (rounds, mixed, trained) in zip(rows, want, strict=True):
        generated_groups = rounds * args.gen_prompts_per_round
        assert row["gen_rounds"] == rounds
        assert row["samples_generated"] == generated_groups * G_LOOP
        assert row["kept_frac"] == pytest.approx(mixed / generated_groups)
        if cache_len == 0:
            assert row["zero_std_frac"] == pytest.approx(1 - mixed / generated_groups)
        else:  # ±1 + R_len in [-1, 0]: right answers score in [0, 1], wrong ones in [-2, -1], never equal
            assert row["zero_std_frac"] <= 1 - mixed / generated_groups + 1e-9
        assert row["trained_groups"] == trained == args.prompts_per_step
        assert row["skipped_steps"] == 0 and row["grad_norm"] > 0


def test_real_loop_at_the_cap_trains_on_nothing_and_keeps_the_weights(
    random_model_dir, tmp_path, monkeypatch
):
    """Every group all right: each step generates max_gen_rounds rounds, keeps nothing, takes no optimizer
    step (counted), logs finite numbers, and the weights stay as they were."""
    monkeypatch.setattr(common.run, "Verifier", lambda: PerPromptVerifier(everything_right=True))
    main(loop_args(random_model_dir, tmp_path, "cap", num_steps=2, max_gen_rounds=3))
    rows = [r for r in read_jsonl(tmp_path / "cap" / "metrics.jsonl") if "loss" in r]
    assert [r["gen_rounds"] for r in rows] == [3, 3]
    assert [r["samples_generated"] for r in rows] == [3 * 4 * G_LOOP] * 2
    assert [r["skipped_steps"] for r in rows] == [1, 2]
    assert all(r["trained_groups"] == 0 and r["kept_frac"] == 0 and r["grad_norm"] == 0 for r in rows)
    assert all(math.isfinite(v) for r in rows for v in r.values() if isinstance(v, float))
    before = load_file(random_model_dir / "model.safetensors")
    after = load_file(tmp_path / "cap" / "checkpoints" / "step-00000002" / "model" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_without_dynamic_sampling_the_batches_are_grpos(random_model_dir, tmp_path, monkeypatch):
    """--no-dynamic-sampling: one round of --prompts-per-step prompts per step, at grpo.py's cursor."""
    monkeypatch.setattr(common.run, "Verifier", PerPromptVerifier)
    main(loop_args(random_model_dir, tmp_path, "nods", dynamic_sampling=False, overlong_cache_len=None))
    rows = [r for r in read_jsonl(tmp_path / "nods" / "metrics.jsonl") if "loss" in r]
    counts = [(r["gen_rounds"], r["samples_generated"], r["trained_groups"]) for r in rows]
    assert counts == [(1, 3 * G_LOOP, 3)] * 3
    # the default L_cache is L_max // 5 = 1 here: every truncated (6-token) completion is penalised
    assert all(r["overlong_frac"] >= r["truncated_frac"] for r in rows)
    assert any(r["truncated_frac"] > 0 for r in rows)
    state = torch.load(tmp_path / "nods" / "checkpoints" / "step-00000003" / "state.pt", weights_only=False)
    assert state["extra"]["prompt_cursor"] == 3 * 3  # (step) * Q, as grpo.py's (step - 1) * Q for the next


# ---------------------------------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags,message",
    [
        ({"overlong_cache_len": 80}, "--overlong-cache-len must be in [0, --max-new-tokens 80)"),
        (
            {"overlong_cache_len": 100, "max_new_tokens": 40},
            "--overlong-cache-len must be in [0, --max-new-tokens 40)",
        ),
        ({"overlong_cache_len": -1}, "--overlong-cache-len must be in [0"),
        ({"max_gen_rounds": 0}, "--max-gen-rounds must be >= 1"),
        ({"max_gen_rounds": -2}, "--max-gen-rounds must be >= 1"),
        ({"gen_prompts_per_round": 0}, "--gen-prompts-per-round and --max-gen-rounds must be >= 1"),
        ({"group_size": 1}, "--group-size must be >= 2"),
        ({"updates_per_batch": 0}, "--updates-per-batch must be >= 1"),
        ({"max_samples": -1}, "--max-samples must be >= 0"),
    ],
)
def test_bad_flags_fail_in_validate_with_one_line(flags, message, tmp_path):
    with pytest.raises(SystemExit) as exited:
        validate(Args(output_dir=str(tmp_path), **flags))
    text = str(exited.value.code)
    assert message in text and "\n" not in text, text


def test_default_flags_pass_validate(tmp_path):
    validate(Args(output_dir=str(tmp_path)))
    validate(
        Args(output_dir=str(tmp_path), overlong_cache_len=0, overlong_filter=True, dynamic_sampling=False)
    )


def test_importing_the_script_has_no_side_effects(capsys):
    import importlib

    importlib.reload(algos.dapo)
    assert capsys.readouterr().out == ""


# ---------------------------------------------------------------------------------------------------
# End to end on the tiny world: smoke, exact resume, learning
# ---------------------------------------------------------------------------------------------------

SMALL = dict(
    prompts_per_step=4,
    group_size=4,
    gen_prompts_per_round=3,
    eval_problems=12,
    eval_n=2,
    micro_batch_size=8,
    max_new_tokens=40,
    overlong_cache_len=8,
)  # fmt: skip  (rounds of 3 prompts for 4 groups: every step takes at least two rounds)
NEW_KEYS = [
    "gen_rounds",
    "kept_frac",
    "samples_generated",
    "trained_groups",
    "skipped_steps",
    "overlong_frac",
]
TRAIN_KEYS = [
    "reward_mean",
    "accuracy",
    "loss",
    "grad_norm",
    "entropy",
    "completion_len_mean",
    "eval/pass@1",
    *NEW_KEYS,
]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _cmd(run_dir: Path, *extra: str) -> list[str]:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]
    return [sys.executable, str(ROOT / "algos" / "dapo.py"), "--num-steps=5", "--eval-every=3", "--save-every=1",
            "--updates-per-batch=2", f"--output-dir={run_dir.parent}", f"--run-name={run_dir.name}", *flags, *extra]  # fmt: skip


def test_dapo_smoke_run_logs_the_dynamic_sampling_metrics(tiny_world_dir, tmp_path):
    """Two updates per batch (so the clip can bind) and overlong filtering on, on the tiny world."""
    out = main(Args(num_steps=2, eval_every=0, save_every=10, output_dir=str(tmp_path), run_name="smoke",
                    updates_per_batch=2, overlong_filter=True, **SMALL))  # fmt: skip
    rows = [r for r in read_jsonl(tmp_path / "smoke" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        for key in ["loss", "grad_norm", "entropy", "clip_frac", "logprob_mismatch", *NEW_KEYS]:
            assert math.isfinite(row[key]), (row["step"], key)
        assert row["gen_rounds"] >= 2 and row["samples_generated"] == row["gen_rounds"] * 3 * 4
        assert row["trained_groups"] <= 4 and 0 <= row["kept_frac"] <= 1
    assert 0.0 <= out["final"]["pass@1"] <= 1.0


def test_max_samples_ends_the_run_at_the_step_that_reaches_the_budget(tiny_world_dir, tmp_path):
    """--max-samples 20 with steps of at least 2 rounds x 3 prompts x 4 = 24 samples: step 1 spends the
    budget, so the run ends there with its final evaluation and checkpoint; --resume of the finished run
    draws nothing more."""
    args = Args(num_steps=50, max_samples=20, eval_every=0, save_every=10, output_dir=str(tmp_path),
                run_name="budget", **SMALL)  # fmt: skip
    out = main(args)
    rows = read_jsonl(tmp_path / "budget" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1]
    assert rows[1]["samples_generated"] >= 24 and "eval/pass@1" in rows[1]
    assert sorted(p.name for p in (tmp_path / "budget" / "checkpoints").iterdir()) == ["step-00000001"]
    again = main(dataclasses.replace(args, resume=True))
    assert [r["step"] for r in read_jsonl(tmp_path / "budget" / "metrics.jsonl")] == [0, 1]
    assert again["final"]["pass@1"] == out["final"]["pass@1"]


def test_interrupted_run_resumes_the_prompt_stream_exactly(tiny_world_dir, tmp_path):
    """Ctrl-C after step 2, then --resume: the same metrics, rounds and sample counts as a run that was never
    stopped (the prompt cursor is restored from the checkpoint, so the same prompts are drawn)."""
    ref = tmp_path / "ref"
    subprocess.run(_cmd(ref), check=True, env=ENV, capture_output=True)
    run = tmp_path / "cut"
    proc = subprocess.Popen(_cmd(run), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while time.time() < deadline and len(read_jsonl(run / "metrics.jsonl")) < 3:  # base eval + 2 steps
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=600)[0].decode()
    assert proc.returncode == 130, output
    subprocess.run(_cmd(run, "--resume"), check=True, env=ENV, capture_output=True)
    got, want = read_jsonl(run / "metrics.jsonl"), read_jsonl(ref / "metrics.jsonl")
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(6))
    assert sum(r.get("gen_rounds", 0) for r in want) > 5  # more rounds than steps: the cursor matters
    for g, w in zip(got, want):
        for key in TRAIN_KEYS:
            if w.get(key) is None:
                assert g.get(key) is None, (g["step"], key)
            else:
                assert g.get(key) == pytest.approx(w[key], rel=1e-5, abs=1e-6), (g["step"], key)


@pytest.mark.slow
def test_dapo_learns_on_the_tiny_world(tiny_world_dir, tmp_path):
    """DAPO for 14 steps of 8 kept groups x 8 samples (rounds of 12 prompts, seed 1, its other defaults)
    raises held-out pass@1 (60 problems x 4 samples) by at least 0.05 and the training accuracy (the mean of
    the last 5 steps against the first 5) by at least 0.04. Measured (one torch thread, about 21 s of CPU):
    seed 1 0.338 -> 0.454 (+0.117), accuracy 0.329 -> 0.383 (+0.054); seed 2 0.358 -> 0.421 (+0.062),
    0.350 -> 0.442 (+0.092); seed 3 0.292 -> 0.458 (+0.167), 0.342 -> 0.431 (+0.089). (60 steps of its
    defaults, the earlier length: 0.338 -> 0.521, accuracy 0.396 -> 0.541, first and last 10 steps.)"""
    out = main(
        Args(num_steps=14, prompts_per_step=8, gen_prompts_per_round=12, group_size=8, max_new_tokens=64,
             eval_problems=60, eval_n=4, eval_every=0, save_every=1000, output_dir=str(tmp_path),
             run_name="learn", seed=1)
    )  # fmt: skip
    rows = [r for r in read_jsonl(tmp_path / "learn" / "metrics.jsonl") if "accuracy" in r]
    first, last = sum(r["accuracy"] for r in rows[:5]) / 5, sum(r["accuracy"] for r in rows[-5:]) / 5
    gain = out["final"]["pass@1"] - out["base"]["pass@1"]
    print(json.dumps({"base": out["base"]["pass@1"], "final": out["final"]["pass@1"],
                      "accuracy": [first, last], "samples": sum(r["samples_generated"] for r in rows)}))  # fmt: skip
    assert last >= first + 0.04, f"training accuracy {first:.3f} -> {last:.3f}"
    assert gain >= 0.05, f"held-out pass@1 {out['base']['pass@1']:.3f} -> {out['final']['pass@1']:.3f}"

"""The mismatch lab: GRPO trained from a sampler that is not the trainer, and the corrections, on the tiny world.

    ./run.sh lab                   # the full lab (3 seeds, 30 steps; 26.6 minutes measured on 2 cores)
    ./run.sh lab --dry-run         # the plan, its estimate and every command; runs nothing
    ./run.sh lab --smoke           # every cell at a tiny size, under runs/mismatch-lab-smoke (no result)
    ./run.sh lab --report-only     # rewrite the page's section and the plots from the finished runs

How far must the sampler drift from the trainer before uncorrected GRPO learns less, how large is that drift
in log-prob terms, and does each correction win back what the drift costs? (issue 24, part 4; the page:
docs/mismatch-lab.md.)

The vehicle. grpo.py has no mismatched sampler; algos/rec.py has (``--sync-interval``, ``--sampler-dtype``,
``--logit-noise``: common/mismatched_sampler.py), so every cell runs rec.py. "Uncorrected GRPO" is rec.py
with ``VEHICLE`` = ``--clip-mode none --scale-rewards group --loss-agg seq-mean-token-mean``: no mask, no
importance weight, the group z-score advantage and grpo.py's aggregation, i.e. the loss −Â·log π whose
gradient is grpo.py's at one update per batch (PPO's ratio to π_old is then 1, so grpo.py ignores the
sampler too). Every other flag of grpo.py has grpo.py's default, and at k = 0 with a float32 sampler one
update moves the weights bit for bit as grpo.py's ``update_policy`` (tests/test_mismatch_lab.py). The
aggregation flag is needed: rec.py's own default is token-mean. The logged ``loss`` is not grpo.py's (the
value of −Â·log π, not of the surrogate); the gradient is.

Staleness. common/mismatched_sampler.py's ``sync_interval`` s ≥ 1 syncs the sampler's copy every s-th step,
so the rollout lags the trainer by 0, 1, ..., s − 1 steps in turn. The lab's staleness k is the largest lag:
**k = s − 1**, so k = 0, 1, 4 are ``--sync-interval`` 1, 2, 5 (mean lag k/2); k = 0 is on the policy.

The cells (an arm, rec.py's flags, under one stress; ``plan_cells``):
- uncorrected GRPO under every stress: the control (k = 0, float32, no noise), a bfloat16 sampler, k = 1
  and k = 4, and logit noise σ swept over ``--noise-levels`` (0.5, 1, 2: the mean |log π_trainer −
  log π_sampler| they open on the tiny world's policy is 0.026, 0.058 and 0.17 nats per token, against
  0.0017 for bf16 and 1e-7 for the float32 copy; measured with common/mismatched_sampler.py, 16 prompts × 8);
- each correction only on the stress it targets (``TARGETS``), with common/rollout_correction.py's defaults:
  staleness k = 4: token-level TIS (``--rollout-is token-tis``, C = 2), OPSM (``--rollout-rs opsm``,
  δ = 0.1: DeepSeek-V3.2 masks the negative-advantage sequences that drifted from a stale sampler), rec.py's
  default (REC-OneSide-NoIS: a mask, no weight) and its variant rec-grpo (OneSide-IS: importance-weighted
  GRPO, ratio to the sampler); bf16: IcePop (``--rollout-is icepop``, [0.5, 2]: made for a sampler whose
  kernels or precision differ from the trainer's); noise, at the σ where the sweep stops: IcePop and
  token-level TIS (a fixed distortion of the logits, the kernel-mismatch case at a size where ratios leave
  [0.5, 2]). The rollout-correction modes need the trainer's π_old and run in decoupled mode on top of
  ``VEHICLE``; rec and rec-grpo are rec.py's own configurations (METHOD.variants).

Every run has compare's budget per step (16 prompts × 8 samples, 80 new tokens) for ``--steps`` 30, over
``--seeds`` 3, and is evaluated like ``./run.sh compare`` (bench/compare.py's machinery: the runs, resume,
evaluations): in-run held-out pass@1 for the learning curves, and the final policy on ``--eval-problems``
120 held-out problems × ``--eval-n`` 16 samples (pass@k and pass^k for k up to 16).

The sweep rule (``sweep``). On each axis the levels go in order of stress; the first level at which
uncorrected GRPO's mean pass@1 falls ``DROP`` = 0.05 or more below the control's, or diverges (a non-finite
loss or gradient norm, or a final pass@1 ``DROP`` below the base policy's), ends the sweep; otherwise the
largest level tried is reported. The noise sweep is run that way: σ's next level runs only if the previous
one did not reach the drop, and noise's corrections run at the level where it stopped. The issue fixes
the staleness levels (k = 1 and 4, corrections at 4) and bf16 is the one precision level this sampler has,
so those two are run in full and the rule is read off them.

What it reports (docs/mismatch-lab.md, between its markers, and ``OUT/summary.json``): per cell the gap
(rec.py's ``logprob_mismatch``: the mean |log π_trainer − log π_sampler| over a step's tokens, mean and
largest over steps), the shares the corrections truncated, masked or rejected and REC's masked share
(``clip_frac``), the final pass@k and pass^k, the drop against the control, divergence; the sweep's
verdict per axis; each claim held or not; learning curves, the gap per step, pass@k and pass^k curves
(docs/img/mismatch-lab_*.png); the exact commands.

"Every ratio is exactly 1 at k = 0 with an fp32 sampler": the copy holds the trainer's weights bit for
bit and a full forward of it gives the trainer's log-probs bit for bit, but the sampler records its
log-probs from ``generate``'s cached decode, which rounds differently from the trainer's full forward: on
the tiny world 85-87% of the ratios are exactly 1 and the rest within 1e-4 of it (measured max |log ρ|
1.0e-5 after four training steps, mean 1.2e-7; tests/test_mismatch_lab.py checks every token). No correction
here can tell: the nearest threshold is REC's 1 ± 0.2. The lab asserts, from every step of every control run,
that the mean |log ρ| is at most ``RATIO_ONE`` = 1e-6 (bf16 opens 1.7e-3), and exits
with status 1 when it is not.

Cost, measured (rec.py, tiny world v5, ``OMP_NUM_THREADS=1``, CPU seconds on a 2-core machine that was busy
with other work): about 6 s to start a run, 1.73 s per step of 16 × 8 samples (0.35 s more with a rollout
correction, the extra forward for π_old), 0.0058 s per evaluated sample (in-run and final; a final
evaluation of 120 × 16 is 15 s); ``run_seconds`` adds these up. The full lab is 12 to 14 cells × 3 seeds
(the noise sweep runs one to three levels) and prints its plan and a running estimate: 29 to 33 minutes
on 2 idle cores with 2 jobs (the first full run, 14 cells, took 26.6 minutes) (``estimate``; ``CONTENTION``: two jobs slow each other by about 15%). Resume: rerun
the same command; finished runs and evaluations are kept (bench/compare.py's keys), an interrupted run
resumes from its checkpoint.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass, field, replace
from pathlib import Path

import bench.compare as compare
from bench.compare import METHODS, RunFailed, RunSpec, display_path, mean_std, read_json, write_json
from common.tracking import markdown_table, read_jsonl

SECTION, BY = "mismatch-lab", "./run.sh lab"
DROP = 0.05  # pass@1 below the control that the lab calls a drop (the issue's), and the tolerance of "as well as"
RATIO_ONE = 1e-6  # the largest mean |log ρ| of a control step the lab accepts as "every ratio is 1"

# The arms: what trains, as rec.py flags. VEHICLE is grpo.py's update (the module docstring; tested).
VEHICLE = ("--clip-mode", "none", "--scale-rewards", "group", "--loss-agg", "seq-mean-token-mean")
ARMS = {
    "grpo": VEHICLE,
    "grpo-tis": (*VEHICLE, "--rollout-is", "token-tis"),
    "grpo-icepop": (*VEHICLE, "--rollout-is", "icepop"),
    "grpo-opsm": (*VEHICLE, "--rollout-rs", "opsm"),
    "rec": tuple(METHODS["rec"]["flags"]),  # rec.py's default: REC-OneSide-NoIS
    "rec-grpo": tuple(METHODS["rec-grpo"]["flags"]),  # REC-OneSide-IS with the group std
}
STALENESS = (1, 4)  # the k beside the control's 0 (the largest lag; --sync-interval k + 1)
TARGETS = {  # the arms besides uncorrected GRPO that run on each axis, at its correction level
    "staleness": ("grpo-tis", "grpo-opsm", "rec", "rec-grpo"),
    "precision": ("grpo-icepop",),
    "noise": ("grpo-icepop", "grpo-tis"),
}
# the mechanisms' shares (mean over steps of the run's metrics): name in the report -> metric
SHARES = {
    "truncated": "correction/is_truncated_token_frac",
    "masked": "correction/is_masked_token_frac",
    "rejected seqs": "correction/rs_rejected_seq_frac",
    "REC-masked": "clip_frac",
}
# CPU seconds, measured (the module docstring): run_seconds
START_S, STEP_S_PER_SAMPLE, CORRECTION_S_PER_SAMPLE = 6.0, 1.73 / 128, 0.35 / 128
EVAL_START_S, EVAL_S_PER_SAMPLE, CONTENTION = 4.5, 0.0058, 1.15


@dataclass(frozen=True)
class Stress:
    """What the sampler does differently from the trainer: one axis at one level."""

    axis: str  # "control", "staleness", "precision" or "noise"
    level: float = 0.0  # staleness: k, the largest lag in steps; noise: σ; otherwise 0

    @property
    def name(self) -> str:
        """The cell names' prefix: fp32 (the control), kK, bf16, noiseσ.

        >>> [Stress("control").name, Stress("staleness", 4).name, Stress("precision").name, Stress("noise", 0.5).name]
        ['fp32', 'k4', 'bf16', 'noise0.5']
        """
        names = {"control": "fp32", "staleness": f"k{self.level:g}", "precision": "bf16"}
        return names.get(self.axis, f"noise{self.level:g}")

    def flags(self) -> list[str]:
        """rec.py's flags for this stress: staleness k is ``--sync-interval`` k + 1.

        >>> Stress("staleness", 4).flags(), Stress("noise", 2.0).flags()
        (['--sync-interval', '5'], ['--sync-interval', '1', '--logit-noise', '2'])
        """
        lag = int(self.level) if self.axis == "staleness" else 0
        out = ["--sync-interval", str(lag + 1)]
        if self.axis == "precision":
            out += ["--sampler-dtype", "bfloat16"]
        if self.axis == "noise":
            out += ["--logit-noise", f"{self.level:g}"]
        return out


CONTROL = Stress("control")


@dataclass(frozen=True)
class Cell:
    arm: str  # a key of ARMS
    stress: Stress

    @property
    def name(self) -> str:
        return f"{self.stress.name}-{self.arm}"

    def flags(self) -> list[str]:
        return [*ARMS[self.arm], *self.stress.flags()]


@dataclass
class Args:
    seeds: int = 3
    """seeds per cell (1, 2, ..., N)"""
    steps: int = 30
    """training steps per run"""
    prompts_per_step: int = 16
    """prompts per step (./run.sh compare's budget)"""
    group_size: int = 8
    """completions per prompt"""
    max_new_tokens: int = 80
    """completion length limit, in training and evaluation"""
    noise_levels: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    """logit-noise σ of the sweep, ascending; the next runs only while the last did not reach the drop"""
    eval_n: int = 16
    """samples per held-out problem of the final evaluation (pass@k and pass^k up to k = eval_n)"""
    eval_problems: int = 120
    """held-out problems of the final evaluation"""
    train_eval_problems: int = 60
    """held-out problems of the in-run evaluations (the learning curves)"""
    train_eval_n: int = 4
    """samples per problem of the in-run evaluations (half of it between the first and the last)"""
    curve_points: int = 5
    """in-run evaluations per run after step 0"""
    out_dir: str = "runs/mismatch-lab"
    """where runs, logs, evaluations and summary.json go"""
    page: str = "docs/mismatch-lab.md"
    """markdown file whose generated section (its markers) is (re)written"""
    img_dir: str = "docs/img"
    """where the PNG plots go"""
    jobs: int = 2
    """runs (and evaluations) at the same time"""
    threads: int = 1
    """torch threads per run (OMP_NUM_THREADS)"""
    smoke: bool = False
    """a preset: every cell at a tiny size (1 seed, 2 steps of 2 prompts x 4), written under
    runs/mismatch-lab-smoke (its page and plots too); it checks the machinery, it measures nothing"""
    dry_run: bool = False
    """print the plan, its estimate and the commands; run nothing"""
    report_only: bool = False
    """run nothing: rewrite the section and the plots from the finished runs and cached evaluations"""


def resolve(args: Args) -> Args:
    """``args`` with the ``--smoke`` preset applied (sizes and output paths), else unchanged.

    >>> resolve(Args(smoke=True)).page, resolve(Args()).steps
    ('runs/mismatch-lab-smoke/mismatch-lab.md', 30)
    """
    if not args.smoke:
        return args
    out = "runs/mismatch-lab-smoke"
    return replace(args, seeds=1, steps=2, prompts_per_step=2, group_size=4, max_new_tokens=48, eval_n=2,
                   eval_problems=3, train_eval_problems=3, train_eval_n=2, curve_points=1, out_dir=out,
                   page=f"{out}/mismatch-lab.md", img_dir=f"{out}/img")  # fmt: skip


def compare_args(args: Args) -> compare.Args:
    """The same budget and evaluation in bench/compare.py's terms (its budget and evaluation helpers)."""
    return compare.Args(
        seeds=args.seeds, steps=args.steps, prompts_per_step=args.prompts_per_step, group_size=args.group_size,
        max_new_tokens=args.max_new_tokens, eval_n=args.eval_n, eval_problems=args.eval_problems,
        train_eval_problems=args.train_eval_problems, train_eval_n=args.train_eval_n,
        curve_points=args.curve_points, jobs=args.jobs, threads=args.threads,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------
# The plan: which cells, in which order, given what has finished
# ----------------------------------------------------------------------------------------------------


def sweep(levels: list[str], outcome: dict[str, tuple[float | None, bool]], control: float | None):
    """The sweep rule on one axis. ``levels``: cell names in order of stress; ``outcome``: cell name -> (mean
    pass@1 over seeds, None when every run failed; diverged), for the cells whose runs all ended; ``control``:
    the control's mean pass@1. Returns (the level the sweep stops at, its status): "reached" (that level
    dropped DROP or more, or diverged), "not reached" (none did: the largest level), "failed" (every run of
    that level failed), or (None, "pending") while a level it needs has not ended.

    >>> out = {"a": (0.50, False), "b": (0.44, False), "c": (0.49, True)}
    >>> sweep(["a", "b", "c"], out, control=0.50), sweep(["a", "c"], out, control=0.50)
    (('b', 'reached'), ('c', 'reached'))
    >>> sweep(["a"], out, control=0.52), sweep(["a", "d"], out, control=0.50), sweep(["a"], out, None)
    (('a', 'not reached'), (None, 'pending'), (None, 'pending'))
    """
    if control is None:
        return None, "pending"
    for level in levels:
        if level not in outcome:
            return None, "pending"
        pass1, diverged = outcome[level]
        if pass1 is None:
            return level, "failed"
        if diverged or control - pass1 >= DROP - 1e-12:
            return level, "reached"
    return levels[-1], "not reached"


def axis_cells(args: Args) -> dict[str, list[Cell]]:
    """Uncorrected GRPO on every level of each axis, in order of stress."""
    return {
        "staleness": [Cell("grpo", Stress("staleness", k)) for k in STALENESS],
        "precision": [Cell("grpo", Stress("precision"))],
        "noise": [Cell("grpo", Stress("noise", sigma)) for sigma in args.noise_levels],
    }


def plan_cells(args: Args, outcome: dict[str, tuple[float | None, bool]]) -> list[Cell]:
    """Every cell the lab runs, given the outcomes so far (``sweep``'s), in the order they are started: the
    control; the noise sweep as far as the rule lets it go, then noise's corrections at the level it stopped
    at; the staleness and precision levels; their corrections (staleness at k = 4, precision at bf16).

    >>> names = lambda cells: [c.name for c in cells]
    >>> names(plan_cells(Args(noise_levels=[1.0, 2.0]), {}))[:3]
    ['fp32-grpo', 'noise1-grpo', 'k1-grpo']
    >>> names(plan_cells(Args(noise_levels=[1.0, 2.0]), {"fp32-grpo": (0.5, False), "noise1-grpo": (0.4, False)}))[:4]
    ['fp32-grpo', 'noise1-grpo', 'noise1-grpo-icepop', 'noise1-grpo-tis']
    """
    axes = axis_cells(args)
    control = outcome.get(Cell("grpo", CONTROL).name, (None, False))[0]
    noise = []
    for cell in axes["noise"]:
        noise.append(cell)
        if sweep([c.name for c in noise], outcome, control)[1] != "not reached":  # pending, or it ends here
            break
    stop, status = sweep([c.name for c in axes["noise"]], outcome, control)
    if status != "pending":
        level = next(c.stress for c in axes["noise"] if c.name == stop)
        noise += [Cell(arm, level) for arm in TARGETS["noise"]]
    fixed = axes["staleness"] + axes["precision"]
    corrections = [Cell(arm, Stress("staleness", STALENESS[-1])) for arm in TARGETS["staleness"]]
    corrections += [Cell(arm, Stress("precision")) for arm in TARGETS["precision"]]
    return [Cell("grpo", CONTROL), *noise, *fixed, *corrections]


def noise_level(cells: list[Cell]) -> Stress | None:
    """The stress noise's corrections run at in ``cells`` (None before the sweep has stopped)."""
    return next((c.stress for c in cells if c.stress.axis == "noise" and c.arm != "grpo"), None)


def cell_specs(cell: Cell, args: Args, runs_dir: Path) -> list[RunSpec]:
    """One run of rec.py per seed, with compare's budget and in-run evaluation flags."""
    cargs = compare_args(args)
    budget, samples, eval_every = compare.budget_flags("rec", cargs)
    specs = []
    for seed in range(1, args.seeds + 1):
        name = f"{cell.name}__{seed}"
        argv = [*cell.flags(), *budget, *compare.shared_flags(cargs, "rec"), "--eval-every", str(eval_every),
                "--seed", str(seed), "--exp-name", cell.name, "--output-dir", display_path(runs_dir),
                "--run-name", name]  # fmt: skip
        specs.append(RunSpec(cell.name, seed, runs_dir / name, argv, samples, script="rec"))
    return specs


def run_seconds(cell: Cell, args: Args) -> float:
    """Estimated CPU seconds of one run and its final evaluation (the measured constants above).

    >>> round(run_seconds(Cell("grpo", CONTROL), Args())), round(run_seconds(Cell("grpo-tis", CONTROL), Args()))
    (79, 90)
    """
    samples = args.steps * args.prompts_per_step * args.group_size
    per_sample = STEP_S_PER_SAMPLE + (
        CORRECTION_S_PER_SAMPLE if "--rollout-" in " ".join(ARMS[cell.arm]) else 0
    )
    in_run = args.train_eval_problems * (
        2 * args.train_eval_n + (args.curve_points - 1) * (args.train_eval_n // 2)
    )
    final = EVAL_START_S + EVAL_S_PER_SAMPLE * args.eval_n * args.eval_problems
    return START_S + samples * per_sample + EVAL_S_PER_SAMPLE * in_run + final


def wall_minutes(cpu_seconds: float, args: Args) -> float:
    """Wall minutes of ``cpu_seconds`` of runs spread over ``--jobs`` cores (with ``CONTENTION``)."""
    return cpu_seconds / args.jobs * (CONTENTION if args.jobs > 1 else 1.0) / 60


def estimate(args: Args) -> tuple[float, float]:
    """Wall minutes of the whole lab when the noise sweep stops at its first level, and when it runs all.

    >>> [round(m) for m in estimate(Args())]
    [29, 33]
    """
    base = EVAL_START_S + EVAL_S_PER_SAMPLE * args.eval_n * args.eval_problems
    first = {"fp32-grpo": (0.5, False), f"{Stress('noise', args.noise_levels[0]).name}-grpo": (0.0, False)}
    every = {c.name: (0.5, False) for c in [Cell("grpo", CONTROL), *axis_cells(args)["noise"]]}
    return tuple(
        wall_minutes(base + args.seeds * sum(run_seconds(c, args) for c in plan_cells(args, known)), args)
        for known in (first, every)
    )


# ----------------------------------------------------------------------------------------------------
# Reading the runs
# ----------------------------------------------------------------------------------------------------


def mismatch_measures(records: list[dict]) -> dict:
    """From a run's metrics.jsonl: the gap per step (``logprob_mismatch``), its mean and largest value over
    the steps, each mechanism's mean share over the steps (``SHARES``), and whether any logged loss or
    gradient norm was not finite.

    >>> m = mismatch_measures([{"step": 0}, {"step": 1, "logprob_mismatch": 0.1, "clip_frac": 0.0, "loss": 1.0},
    ...                        {"step": 2, "logprob_mismatch": 0.3, "clip_frac": 0.5, "loss": float("nan")}])
    >>> m["gap_mean"], m["gap_max"], m["shares"]["REC-masked"], m["shares"]["truncated"], m["nonfinite"]
    (0.2, 0.3, 0.25, None, True)
    """
    steps = sorted((r for r in records if r.get("step", 0) > 0), key=lambda r: r["step"])
    gaps = [[r["step"], r["logprob_mismatch"]] for r in steps if r.get("logprob_mismatch") is not None]
    shares = {}
    for name, key in SHARES.items():
        values = [r[key] for r in steps if r.get(key) is not None]
        shares[name] = sum(values) / len(values) if values else None
    numbers = [r.get(key) for r in steps for key in ("loss", "grad_norm") if r.get(key) is not None]
    return {
        "gap_curve": gaps,
        "gap_mean": sum(g for _, g in gaps) / len(gaps) if gaps else None,
        "gap_max": max((g for _, g in gaps), default=None),
        "shares": shares,
        "nonfinite": any(not math.isfinite(x) for x in numbers),
    }


def run_row(result: dict, ev: dict, run_dir: Path, base_pass1: float) -> dict:
    """One finished run as the report reads it: compare's result, its final evaluation, its mismatch."""
    measures = mismatch_measures(read_jsonl(run_dir / "metrics.jsonl"))
    pass1 = ev["eval"]["pass@1"]
    return {
        "seed": result["seed"],
        "pass_at_k": {int(k): v for k, v in ev["eval"]["curve"].items()},
        "pass_hat_k": {int(k): v for k, v in ev["eval"]["pass_hat_curve"].items()},
        "final_train_accuracy": result["final_train_accuracy"],
        "curve": result["curve"],
        "train_curve": result["train_curve"],
        "command": result["command"],
        "cpu_s": result.get("cpu_s"),
        **measures,
        "diverged": measures["nonfinite"] or pass1 < base_pass1 - DROP,
    }


def outcomes(rows: dict[str, list[dict]], failed: dict[str, int], seeds: int) -> dict[str, tuple]:
    """Cell name -> (mean pass@1 over its finished seeds, None if none finished; any seed diverged), for the
    cells whose every seed has finished or failed (``sweep``'s input).

    >>> outcomes({"a": [{"pass_at_k": {1: 0.4}, "diverged": False}, {"pass_at_k": {1: 0.6}, "diverged": False}],
    ...           "b": [{"pass_at_k": {1: 0.4}, "diverged": True}]}, {"c": 2}, seeds=2)
    {'a': (0.5, False), 'c': (None, True)}
    """
    out = {}
    for name in set(rows) | set(failed):
        done = rows.get(name, [])
        if len(done) + failed.get(name, 0) < seeds:
            continue
        pass1 = [r["pass_at_k"][1] for r in done]
        out[name] = (sum(pass1) / len(pass1) if pass1 else None, any(r["diverged"] for r in done) or not done)
    return dict(sorted(out.items()))


# ----------------------------------------------------------------------------------------------------
# Verdicts: the sweep per axis and the claims
# ----------------------------------------------------------------------------------------------------


def mean_of(rows: list[dict], key: str, k: int | None = None) -> float | None:
    values = [r[key][k] if k is not None else r[key] for r in rows]
    return mean_std([v for v in values if v is not None])[0]


def verdicts(args: Args, cells: list[Cell], rows: dict[str, list[dict]], outcome: dict) -> dict:
    """The sweep's verdict per axis and every claim, held or not, from the finished runs.

    Returns ``{"sweeps": {axis: {"levels", "stop", "status", "drop"}}, "claims": [{"claim", "verdict",
    "evidence"}], "ratio_one": bool | None}`` (``ratio_one``: the control's check, None before it ran)."""
    control_name = Cell("grpo", CONTROL).name
    control = outcome.get(control_name, (None, False))[0]
    pass1 = {name: value[0] for name, value in outcome.items()}
    gap = {name: mean_of(r, "gap_mean") for name, r in rows.items() if r}

    def drop(name):
        return None if control is None or pass1.get(name) is None else control - pass1[name]

    sweeps = {}
    for axis, levels in axis_cells(args).items():
        tried = [c.name for c in levels if c.name in outcome]
        stop, status = sweep([c.name for c in levels], outcome, control)
        sweeps[axis] = {"levels": tried, "stop": stop, "status": status, "drop": drop(stop) if stop else None}

    claims = []

    def claim(text, held, evidence, testable=True):
        verdict = (
            "not testable here"
            if not testable
            else "pending"
            if held is None
            else "held"
            if held
            else "not held"
        )
        claims.append({"claim": text, "verdict": verdict, "evidence": evidence})

    control_rows = rows.get(control_name, [])
    worst = max((g for r in control_rows for _, g in r["gap_curve"]), default=None)
    ratio_one = None if worst is None else worst <= RATIO_ONE
    claim(
        "At k = 0 with a float32 sampler every ratio π_trainer/π_sampler is 1",
        ratio_one,
        "no control run yet"
        if worst is None
        else f"largest mean |log ρ| of any control step {worst:.2g} "
        f"(the lab's bound {RATIO_ONE:g}; per token, tests/test_mismatch_lab.py: the copy's weights and full "
        "forward are the trainer's bit for bit, the cached decode's ratios are 1 or within 1e-4 of it)",
    )
    for axis, names in (("staleness k", [control_name, *[c.name for c in axis_cells(args)["staleness"]]]),
                        ("precision (float32 → bfloat16)", [control_name, *sweeps["precision"]["levels"]]),
                        ("logit noise σ", [control_name, *sweeps["noise"]["levels"]])):  # fmt: skip
        values = [gap.get(n) for n in names]
        known = all(v is not None for v in values) and len(values) >= 2
        claim(
            f"The gap grows with {axis}",
            all(a < b for a, b in zip(values, values[1:])) if known else None,
            ", ".join(f"{n}: {fmt(v, 3, sci=True)}" for n, v in zip(names, values)),
        )
    for axis, s in sweeps.items():
        claim(
            f"Uncorrected GRPO drops {DROP} pass@1 or diverges under {axis}",
            None if s["status"] == "pending" else s["status"] == "reached",
            f"levels tried: {', '.join(s['levels']) or 'none'}; stopped at {s['stop']} ({s['status']}), "
            f"drop there {fmt(s['drop'])}",
        )
    for cell in cells:
        if cell.arm == "grpo":
            continue
        axis = cell.stress.axis
        uncorrected = Cell("grpo", cell.stress).name
        hurt = drop(uncorrected)
        diverged = outcome.get(uncorrected, (None, False))[1]
        testable = hurt is None or hurt >= DROP - 1e-12 or diverged
        mine = drop(cell.name)
        claim(
            f"{cell.arm} wins back what {cell.stress.name} ({axis}) costs uncorrected GRPO",
            None if mine is None or hurt is None else mine < DROP and not outcome[cell.name][1],
            f"drop against the control: uncorrected {fmt(hurt)}, {cell.arm} {fmt(mine)}"
            + ("" if testable else f" (the stress did not cost uncorrected GRPO {DROP})"),
            testable,
        )
    rec, rec_grpo = (Cell(arm, Stress("staleness", STALENESS[-1])).name for arm in ("rec", "rec-grpo"))
    known = pass1.get(rec) is not None and pass1.get(rec_grpo) is not None
    claim(
        f"Under staleness k = {STALENESS[-1]}, rec.py's default (OneSide-NoIS: a mask, no importance weight) "
        "learns as well as importance-weighted GRPO (rec-grpo)",
        pass1[rec] >= pass1[rec_grpo] - DROP + 1e-12 if known else None,
        f"pass@1 rec {fmt(pass1.get(rec))}, rec-grpo {fmt(pass1.get(rec_grpo))} (held: rec not {DROP} or more "
        "below)",
    )
    return {"sweeps": sweeps, "claims": claims, "ratio_one": ratio_one}


def fmt(value: float | None, digits: int = 3, sci: bool = False) -> str:
    """A number for the report: 3 decimals, or 2 significant digits below 0.01 with ``sci``; '—' for None.

    >>> fmt(0.12345), fmt(None), fmt(1.2e-7, sci=True), fmt(0.0017, sci=True)
    ('0.123', '—', '1.2e-07', '0.0017')
    """
    if value is None:
        return "—"
    return f"{value:.{digits - 1}g}" if sci and abs(value) < 0.01 else f"{value:.{digits}f}"


# ----------------------------------------------------------------------------------------------------
# The report: the page's section, the plots, summary.json
# ----------------------------------------------------------------------------------------------------


def render(args: Args, cells: list[Cell], rows: dict, base: dict, judged: dict, meta: dict) -> str:
    """The generated markdown section."""
    n = args.eval_n
    ks, hat_ks = [k for k in (1, 4, n) if k <= n], [k for k in (2, 4, n) if 1 < k <= n]
    ks, hat_ks = sorted(set(ks)), sorted(set(hat_ks))
    base_eval = base["eval"]
    lines = [
        "## Results",
        "",
        f"Generated by `{command_line(args)}` ({meta['date']}, {meta['world']}, commit {meta['commit']}; "
        f"{meta['jobs']} runs at a time, {meta['wall_min']:.0f} minutes). Every run: rec.py for {args.steps} "
        f"steps of {args.prompts_per_step} prompts × {args.group_size}, at most {args.max_new_tokens} new "
        f"tokens, {args.seeds} seed(s); the final policy evaluated on {args.eval_problems} held-out problems × "
        f"{n} samples (temperature 1). Base policy: pass@1 {base_eval['pass@1']:.3f}. Means over seeds "
        "(± std); gap = rec.py's `logprob_mismatch`, the mean |log π_trainer − log π_sampler| over a step's "
        "tokens (mean and largest over steps); shares are means over steps.",
        "",
        "The mismatch each cell trained under:",
        "",
    ]
    table = []
    for cell in cells:
        r = rows.get(cell.name, [])
        shares = [fmt(mean_of_shares(r, name)) for name in SHARES]
        table.append([cell.name, " ".join(cell.flags()[len(VEHICLE) if cell.arm.startswith("grpo") else 0 :]),
                      fmt(mean_of(r, "gap_mean"), sci=True), fmt(max_of(r, "gap_max"), sci=True), *shares])  # fmt: skip
    lines += [markdown_table(table, ["cell", "rec.py flags (grpo-*: after the vehicle's)", "gap mean",
                                     "gap max", *SHARES], max_chars=None), ""]  # fmt: skip
    control = mean_of(rows.get(Cell("grpo", CONTROL).name, []), "pass_at_k", 1)
    table = [["base", *[f"{base_eval['curve'][str(k)]:.3f}" for k in ks], "—",
              *[f"{base_eval['pass_hat_curve'][str(k)]:.3f}" for k in hat_ks], "—", "—", "—"]]  # fmt: skip
    for cell in cells:
        r = rows.get(cell.name, [])
        pass1 = mean_of(r, "pass_at_k", 1)
        table.append([
            cell.name, *[fmt_std([x["pass_at_k"].get(k) for x in r]) for k in ks],
            fmt(None if pass1 is None or control is None else pass1 - control),
            *[fmt(mean_of(r, "pass_hat_k", k)) for k in hat_ks], fmt(mean_of(r, "final_train_accuracy")),
            ", ".join(str(x["seed"]) for x in r if x["diverged"]) or "no", str(len(r)),
        ])  # fmt: skip
    header = ["cell", *[f"pass@{k}" for k in ks], "Δ pass@1 vs fp32-grpo", *[f"pass^{k}" for k in hat_ks],
              "final train acc.", "diverged (seeds)", "seeds"]  # fmt: skip
    lines += ["What it cost (final held-out evaluation; train acc. is the sampler's samples):", "",
              markdown_table(table, header, max_chars=None), ""]  # fmt: skip
    lines += [f"The sweep rule (a level ends its axis's sweep when uncorrected GRPO drops {DROP} pass@1 below "
              "the control or diverges):", ""]  # fmt: skip
    table = [[axis, ", ".join(s["levels"]) or "—", s["stop"] or "—", s["status"], fmt(s["drop"])]
             for axis, s in judged["sweeps"].items()]  # fmt: skip
    lines += [markdown_table(table, ["axis", "levels tried", "stopped at", "status", "drop there"], max_chars=None), ""]  # fmt: skip
    lines += ["The claims:", ""]
    lines += [f"- {c['claim']}: **{c['verdict']}** ({c['evidence']})" for c in judged["claims"]]
    img = os.path.relpath(Path(args.img_dir).resolve(), Path(args.page).resolve().parent)
    lines += ["", f"![learning curves]({img}/{SECTION}_learning_curves.png)", "",
              f"![the gap per step]({img}/{SECTION}_gap.png)", "",
              f"![pass@k and pass^k]({img}/{SECTION}_pass_at_k.png)", "",
              "Commands (seed 1; the others change `--seed` and `--run-name`):", ""]  # fmt: skip
    lines += [f"- {cell.name}: `{rows[cell.name][0]['command']}`" for cell in cells if rows.get(cell.name)]
    if meta.get("failed"):
        lines += ["", f"Failed or missing runs (not in the tables): {', '.join(meta['failed'])}."]
    return "\n".join(lines) + "\n"


def mean_of_shares(rows: list[dict], name: str) -> float | None:
    return mean_std([r["shares"][name] for r in rows if r["shares"].get(name) is not None])[0]


def max_of(rows: list[dict], key: str) -> float | None:
    return max((r[key] for r in rows if r[key] is not None), default=None)


def fmt_std(values: list[float | None]) -> str:
    return compare.fmt_mean_std([v for v in values if v is not None])


def command_line(args: Args) -> str:
    """The ./run.sh lab command of this report (non-default flags only).

    >>> command_line(Args()), command_line(Args(seeds=1, noise_levels=[2.0])), command_line(resolve(Args(smoke=True)))
    ('./run.sh lab', './run.sh lab --seeds 1 --noise-levels 2.0', './run.sh lab --smoke')
    """
    parts, defaults = ["./run.sh", "lab"], resolve(Args(smoke=args.smoke))
    for name, value in vars(args).items():
        flag = f"--{name.replace('_', '-')}"
        if name == "smoke" and value:
            parts.append(flag)
        elif name not in ("dry_run", "report_only") and value != getattr(defaults, name):
            parts += [flag, *map(str, value if isinstance(value, list) else [value])]
    return " ".join(parts)


def plot(args: Args, cells: list[Cell], rows: dict, base: dict) -> list[Path]:
    """The learning curves (by group of cells), the gap per step and the pass@k / pass^k curves."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def figure(nrows, ncols):
        fig = Figure(figsize=(5.5 * ncols, 3.8 * nrows))
        FigureCanvasAgg(fig)
        return fig, [
            [fig.add_subplot(nrows, ncols, i * ncols + j + 1) for j in range(ncols)] for i in range(nrows)
        ]

    palette = [f"C{i}" for i in range(10)] + ["navy", "maroon", "lime", "magenta", "sienna", "black"]
    colors = {cell.name: palette[i % len(palette)] for i, cell in enumerate(cells)}
    styles = {cell.name: "-" if cell.arm == "grpo" else "--" for cell in cells}  # dashed: a correction
    control = Cell("grpo", CONTROL)
    groups = {
        "uncorrected GRPO under each stress": [c for c in cells if c.arm == "grpo"],
        f"staleness k = {STALENESS[-1]}": [control] + [c for c in cells if c.stress == Stress("staleness", STALENESS[-1])],
        "bf16 and noise: corrections": [control] + [c for c in cells if c.stress.axis == "precision"
                                                    or (c.stress.axis == "noise" and c.stress == noise_level(cells))],
    }  # fmt: skip
    fig, axes = figure(2, 3)
    for j, (title, group) in enumerate(groups.items()):
        for cell in group:
            for i, key in enumerate(("curve", "train_curve")):
                curves = [r[key] for r in rows.get(cell.name, [])]
                if curves:
                    xs, ys, _ = compare.mean_curve(curves)
                    axes[i][j].plot(xs, ys, styles[cell.name], color=colors[cell.name], marker="o" if i == 0 else None,
                                    markersize=3, label=cell.name)  # fmt: skip
        axes[0][j].set_title(title, fontsize=10)
        axes[0][j].legend(fontsize=7)
    for i, label in enumerate(("held-out pass@1 (in-run)", "training accuracy (the sampler's samples)")):
        for ax in axes[i]:
            ax.set_ylabel(label, fontsize=8)
            ax.set_xlabel("training samples generated", fontsize=8)
            ax.grid(True, alpha=0.3)
    paths = [Path(args.img_dir) / f"{SECTION}_{kind}.png" for kind in ("learning_curves", "gap", "pass_at_k")]
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(paths[0], dpi=100)

    fig, ((ax,),) = figure(1, 1)
    for cell in cells:
        curves = [r["gap_curve"] for r in rows.get(cell.name, [])]
        if curves and cell.arm == "grpo":
            xs, ys, _ = compare.mean_curve(curves)
            ax.plot(
                xs, [max(y, 1e-9) for y in ys], styles[cell.name], color=colors[cell.name], label=cell.name
            )
    ax.set_yscale("log")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("training step")
    ax.set_ylabel("mean |log π_trainer − log π_sampler|")
    ax.set_title("the gap per step (uncorrected GRPO; mean over seeds)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=100)

    fig, (axes_k,) = figure(1, 2)
    for ax, key, base_key, title in ((axes_k[0], "pass_at_k", "curve", "pass@k"),
                                     (axes_k[1], "pass_hat_k", "pass_hat_curve", "pass^k")):  # fmt: skip
        base_curve = {int(k): v for k, v in base["eval"][base_key].items()}
        ax.plot(
            sorted(base_curve),
            [base_curve[k] for k in sorted(base_curve)],
            color="black",
            marker="o",
            label="base",
        )
        for cell in cells:
            r = rows.get(cell.name, [])
            if r:
                ks = sorted(r[0][key])
                ax.plot(ks, [mean_of(r, key, k) for k in ks], styles[cell.name], color=colors[cell.name],
                        marker=".", label=cell.name)  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(base_curve), [str(k) for k in sorted(base_curve)])
        ax.minorticks_off()
        ax.set_xlabel("k")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
    axes_k[1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(paths[2], dpi=100)
    return paths


def write_report(args: Args, cells: list[Cell], rows: dict, base: dict, outcome: dict, meta: dict) -> dict:
    """Judge, write summary.json, the plots and the page's generated section; returns the summary."""
    judged = verdicts(args, cells, rows, outcome)
    summary = {"meta": meta, "args": vars(args), "base": base, "cells": [c.name for c in cells],
               "runs": rows, "outcome": outcome, **judged}  # fmt: skip
    write_json(Path(args.out_dir) / "summary.json", summary)
    images = plot(args, cells, rows, base)
    page = Path(args.page)
    text = page.read_text() if page.exists() else "# The mismatch lab\n"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(
        compare.replace_between_markers(text, render(args, cells, rows, base, judged, meta), SECTION, BY)
    )
    compare.log(f"wrote {page}, {', '.join(map(str, images))}, {args.out_dir}/summary.json")
    for c in judged["claims"]:
        compare.log(f"  {c['verdict']:>17}: {c['claim']}")
    return summary


# ----------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------


def main(
    args: Args, train_fn: Callable = compare.train, evaluate_fn: Callable = compare.evaluate
) -> dict | None:
    """Plan, run what is missing (``train_fn``/``evaluate_fn`` are replaceable for tests), judge, report."""
    args = resolve(args)
    if min(args.seeds, args.steps, args.jobs, args.eval_n, args.eval_problems) < 1 or not args.noise_levels:
        raise SystemExit(
            "--seeds, --steps, --jobs, --eval-n, --eval-problems must be >= 1; --noise-levels not empty"
        )
    if sorted(args.noise_levels) != args.noise_levels or min(args.noise_levels) <= 0:
        raise SystemExit(f"--noise-levels must be positive and ascending, got {args.noise_levels}")
    out_dir = Path(args.out_dir)
    runs_dir = out_dir / "runs"
    first, every = estimate(args)
    compare.log(
        f"plan: uncorrected GRPO (rec.py {' '.join(VEHICLE)}) at k = 0 float32, bf16, k = {STALENESS}, logit "
        f"noise σ swept over {args.noise_levels}; corrections on their stress; {args.seeds} seeds, "
        f"{args.steps} steps of {args.prompts_per_step} x {args.group_size}; final evaluation "
        f"{args.eval_problems} x {args.eval_n}; {args.jobs} at a time. Estimate: {first:.0f} minutes if the noise "
        f"sweep stops at its first level, {every:.0f} if it runs them all (idle cores); output in {out_dir}"
    )
    every_cell = plan_cells(
        args, {c.name: (1.0, False) for c in [Cell("grpo", CONTROL), *axis_cells(args)["noise"]]}
    )
    for cell in every_cell:
        spec = cell_specs(cell, args, runs_dir)[0]
        where = " (noise's corrections run at the σ where the sweep stops)" if cell.stress.axis == "noise" and cell.arm != "grpo" else ""  # fmt: skip
        compare.log(f"  {cell.name}{where}: {spec.command(args.threads)}")
    if args.dry_run:
        return None

    from common.tiny_world import ensure_world

    world = ensure_world("tiny").name
    started_at = time.time()
    meta = {"date": time.strftime("%Y-%m-%d"), "world": world, "commit": compare.git_commit(), "jobs": args.jobs,
            "failed": []}  # fmt: skip
    cargs = compare_args(args)
    base_path = out_dir / f"base_eval_n{args.eval_n}_p{args.eval_problems}.json"
    rows: dict[str, list[dict]] = {}
    failed: dict[str, int] = {}
    base = read_json(base_path) if args.report_only else None

    def job(spec: RunSpec) -> tuple[dict, dict, bool]:
        cached = (read_json(spec.run_dir / "compare_result.json") or {}).get("key") == {
            "command": spec.command(args.threads), "world": world}  # fmt: skip
        result = train_fn(spec, args, world)
        config = compare.eval_config(cargs, result["checkpoint"], seed=spec.seed, method="rec")
        path = spec.run_dir / f"eval_n{args.eval_n}_p{args.eval_problems}.json"
        return result, evaluate_fn(config, path, spec.run_dir / "eval.log", args.threads, world), cached

    def finish(spec: RunSpec, result: dict, ev: dict) -> None:
        rows.setdefault(spec.method, []).append(run_row(result, ev, spec.run_dir, base["eval"]["pass@1"]))
        rows[spec.method].sort(key=lambda r: r["seed"])

    if args.report_only:
        if base is None:
            raise SystemExit(
                f"--report-only: no base evaluation at {base_path}; run without --report-only first"
            )
        cells: list[Cell] = []
        while True:  # replay the plan: each round's outcomes may let the noise sweep go on
            cells = plan_cells(args, outcomes(rows, failed, args.seeds))
            new = [s for c in cells for s in cell_specs(c, args, runs_dir) if s.method not in rows and s.method not in failed]  # fmt: skip
            if not new:
                break
            for spec in new:
                result = read_json(spec.run_dir / "compare_result.json")
                ev = read_json(spec.run_dir / f"eval_n{args.eval_n}_p{args.eval_problems}.json")
                if result and ev:
                    finish(spec, result, ev)
                else:
                    failed[spec.method] = failed.get(spec.method, 0) + 1
                    meta["failed"].append(spec.name)
        meta["wall_min"] = 0.0
        return write_report(args, cells, rows, base, outcomes(rows, failed, args.seeds), meta)

    started: set[str] = set()
    by_name: dict[str, Cell] = {}
    ended: list[tuple[RunSpec, tuple]] = []  # runs that ended and are not yet read (the base is needed)
    estimated_done = 0.0
    with compare.stoppable_pool(args.jobs) as pool:  # Ctrl-C / SIGTERM: children checkpoint, exit 130
        base_config = compare.eval_config(cargs, "tiny", seed=0)
        running = {
            pool.submit(
                evaluate_fn, base_config, base_path, out_dir / "base_eval.log", args.threads, world
            ): None
        }
        while True:
            cells = plan_cells(args, outcomes(rows, failed, args.seeds) if base else {})
            by_name.update((c.name, c) for c in cells)
            pending = [s for c in cells for s in cell_specs(c, args, runs_dir) if s.name not in started]
            while pending and len(running) < args.jobs:
                spec = pending.pop(0)
                started.add(spec.name)
                running[pool.submit(job, spec)] = spec
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                spec = running.pop(future)
                try:
                    value = future.result()
                except RunFailed as error:
                    compare.log(f"FAILED: {error}")
                    if spec is None:
                        raise SystemExit("the base evaluation failed; nothing to compare against") from None
                    failed[spec.method] = failed.get(spec.method, 0) + 1
                    meta["failed"].append(spec.name)
                    continue
                if spec is None:
                    base = value
                    compare.log(f"base: pass@1 {base['eval']['pass@1']:.3f}")
                else:
                    ended.append((spec, value))
            if base is None:  # a run's drop and divergence are measured against the base
                continue
            while ended:
                spec, (result, ev, cached) = ended.pop(0)
                finish(spec, result, ev)
                if not cached:
                    estimated_done += run_seconds(by_name[spec.method], args)
                left = sum(run_seconds(by_name[s.method], args) for s in pending)
                left += sum(
                    run_seconds(by_name[s.method], args) / 2 for s in running.values() if s is not None
                )
                speed = estimated_done / max(time.time() - started_at, 1e-9)
                eta = f"; about {left / speed / 60:.0f} min left as planned so far" if estimated_done else ""
                gap = rows[spec.method][-1]["gap_mean"]
                compare.log(f"{spec.name}{' (cached)' if cached else ''}: pass@1 {ev['eval']['pass@1']:.3f}, "
                            f"gap {fmt(gap, sci=True)}, train {result['wall_s']:.0f}s [{sum(map(len, rows.values()))} "
                            f"done{eta}]")  # fmt: skip
    meta["wall_min"] = (time.time() - started_at) / 60
    summary = write_report(args, cells, rows, base, outcomes(rows, failed, args.seeds), meta)
    compare.log(f"done in {meta['wall_min']:.1f} min" + (f"; {len(meta['failed'])} failed: "
                f"{', '.join(meta['failed'])} (rerun the same command to retry them)" if meta["failed"] else ""))  # fmt: skip
    if summary["ratio_one"] is False:
        raise SystemExit(
            f"the check failed: at k = 0 with a float32 sampler a step's mean |log ρ| exceeded {RATIO_ONE:g}"
        )
    return summary


if __name__ == "__main__":
    import sys

    import tyro

    compare.LOG_NAME = "lab"
    summary = main(tyro.cli(Args))
    sys.exit(1 if summary and summary["meta"]["failed"] else 0)

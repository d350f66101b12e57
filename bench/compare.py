"""Side by side: every algorithm in algos/ on the tiny world, the same sample budget, several seeds.

    ./run.sh compare                                   # the default set: 6 methods x 3 seeds
    ./run.sh compare --methods grpo psr nsr --seeds 2  # a subset (names: ./run.sh compare --help)
    ./run.sh compare --report-only                     # rewrite docs/results.md and the plots from the runs
    ./run.sh compare --dataset tiny:easy,medium,hard,long --report-name compare-long --out-dir runs/compare-long \
        --max-new-tokens 96 --eval-problems 96             # with the long tier the base rarely solves
    ./run.sh compare --model tiny-wide --dataset tiny:wide-long --report-name compare-wide-long \
        --out-dir runs/compare-wide-long --max-new-tokens 128 --eval-problems 96 \
        --methods grpo psr nsr w-reinforce expo oreal      # two-digit answers: few right guesses

For every (method, seed) the harness runs ``python algos/SCRIPT.py FLAGS`` as a subprocess (its output
goes to ``OUT/runs/METHOD__SEED/train.log``), then evaluates the run's final checkpoint and the base policy
with ``--eval-n`` (64) samples per held-out problem in a subprocess of its own. It then writes:

* a generated section of ``docs/results.md``, between the two marker comments below (the rest of the file is
  left as it is; the section is appended when the markers are missing): per method pass@1, pass@8,
  pass@64 (mean ± std over seeds), the final training accuracy, wall time and peak memory of the training
  process, and the exact commands; the pass@k curve, per-tier pass@k and gradient-norm statistics;
* ``docs/img/compare_learning_curves.png`` (held-out pass@1 and training accuracy vs training samples
  generated, from each run's metrics.jsonl) and ``docs/img/compare_pass_at_k.png`` (k = 1 ... 64, log-x);
* ``OUT/summary.json``: every number of the report, per run and aggregated (the hook for analysis).

Same budget: every method generates ``--steps`` x ``--prompts-per-step`` x ``--group-size`` training
samples (``budget_flags`` says how each script is told; ExPO's self-explanations count). Each method otherwise runs with its script's own defaults (learning rate, loss, clipping: what the
script documents as its tiny-world setting), plus the shared ``--max-new-tokens`` and in-run evaluation
flags. ``METHODS`` holds every configuration, read from the registry (``common/registry.py``): a method file
joins the comparison by existing. What the budget arithmetic needs of a method (ExPO's explanation
tries) is read from its script's own ``Args`` with those flags applied
(``script_args``), never copied here. A script that generates a varying number of samples per step logs
it as ``samples_generated`` (every completion sampled in that step, all rounds); the samples of the
report and the x-axis of the learning curves then count those (``samples_seen``). Such a script takes
``--max-samples`` (DAPO, Reinforce-Ada) and is given the budget in samples: it stops after the step that
reaches it (``--num-steps`` stays as a cap it never reaches, since each step draws at least
``prompts_per_step x group_size``), so it overshoots by at most one step's rounds, which the report's
``samples`` column shows.

Resume: a run whose ``compare_result.json`` exists (for the same command and world) is not redone; an
interrupted run continues from its newest checkpoint (``--resume``); evaluations are cached as JSON next
to the run. A run whose command changed (other flags) or whose world changed is redone from scratch.

Cost: ``--jobs`` runs (default 2) at a time with ``--threads`` torch threads each (default 1), so two
single-threaded runs keep 2 cores busy. The defaults (30 GRPO-equivalent steps = 3,840 samples per run,
120 held-out problems x 64 samples) are sized from CPU times measured on tiny world v5 (1 thread; the
harness records every run's CPU time next to its wall time; runs of 4 and 8 steps, differenced):
about 15-20 s per run of start-up and in-run evaluation, then per 128 training samples grpo 2.2 s,
bnpo 2.4 s, w-reinforce 2.7 s, oreal 3.0 s, expo 3.7 s, topr 4.3 s (two epochs over each dataset);
one n = 64 evaluation 5 s + 0.64 s per problem. That is about 3,500 CPU seconds for the default set:
about 30 minutes on 2 idle cores, 35-45 minutes with the two jobs slowing each other and the last job
running alone, plus about 4 minutes when a tiny world must be built first (not when its shipped copy is
used). On a machine shared with other work the wall time grows accordingly (CPU time does not). The
harness prints its plan and a running estimate.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import importlib
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from common.checkpoint import latest_checkpoint
from common.registry import configurations, methods
from common.tiny_task import TIER_STEPS, WORLD_NAMES
from common.tracking import markdown_table, read_jsonl

ROOT = Path(__file__).resolve().parent.parent


def markers(name: str = "compare", by: str = "./run.sh compare") -> tuple[str, str]:
    """The comment lines around the generated section ``name`` (``--report-name``) of the results file."""
    begin = f"<!-- {name}:begin (generated by {by}; edits between these markers are overwritten) -->"
    return begin, f"<!-- {name}:end -->"


BEGIN_MARKER, END_MARKER = markers()

# Every configuration of the comparison, from the registry (common/registry.py): each algos/*.py under its
# own name with its defaults, and the named variants its METHOD block declares (e.g. NSR's objectives).
# Anything not listed is the script's own default (read from its Args: `script_args`), except the budget
# flags (`budget_flags`) and the shared flags (`shared_flags`). Every script counts its samples the same
# way: prompts_per_step x group_size per step, plus explanation_tries hinted explanations per prompt when
# the script explains every prompt (ExPO with --explain all): fewer optimizer steps, the same samples; a
# script whose samples per step vary (DAPO, Reinforce-Ada) is given the budget as --max-samples.
METHODS: dict[str, dict] = {
    name: {"script": key, "flags": flags, "min_new_tokens": methods()[key].info.min_new_tokens}
    for name, (key, flags) in configurations().items()
}
DEFAULT_METHODS = [key for key, method in methods().items() if method.info.compare_default]


@functools.cache
def script_args(method: str):
    """The ``Args`` of ``method``'s script as that script would parse the method's flags: its own defaults
    with ``METHODS[method]["flags"]`` applied (the budget flags and shared flags do not change these).

    >>> script_args("expo").explanation_tries
    4
    """
    import tyro

    module = importlib.import_module(f"algos.{METHODS[method]['script']}")
    return tyro.cli(module.Args, args=METHODS[method]["flags"])


def explanation_samples_per_prompt(method: str) -> int:
    """Extra samples per prompt and step: hinted explanations when the script explains every prompt (ExPO).

    >>> explanation_samples_per_prompt("expo"), explanation_samples_per_prompt("grpo")
    (4, 0)
    """
    cfg = script_args(method)
    return cfg.explanation_tries if getattr(cfg, "explain", None) == "all" else 0


@dataclass
class Args:
    methods: builtins.list[str] = field(
        default_factory=lambda: list(DEFAULT_METHODS)
    )  # the field `list` shadows list
    """configurations to compare: a file of algos/ by its name, or a variant its METHOD block names (--list
    prints them all); default: the files whose METHOD sets compare_default"""
    list: bool = False
    """print every configuration (name, script, flags) and exit"""
    seeds: int = 3
    """seeds per method (1, 2, ..., N)"""
    out_dir: str = "runs/compare"
    """where runs, logs, evaluations and summary.json go"""
    results_md: str = "docs/results.md"
    """markdown file whose generated section is (re)written"""
    img_dir: str = "docs/img"
    """where the PNG plots go"""
    report_name: str = "compare"
    """name of the generated section (its marker comments) and prefix of the plots' file names, so that
    comparisons on different datasets keep separate sections"""
    model: str = "tiny"
    """the base policy of every run: "tiny" or another tiny world (common.tiny_task.WORLD_NAMES)"""
    dataset: str = "tiny"
    """training and held-out problems of every run: "tiny" (easy, medium, hard) or "tiny:TIER,..." (the
    tiers easy, medium, hard and long, the last never warmed up on; wide-easy ... wide-long, two-digit
    numbers, for --model tiny-wide; see common/tiny_task.py)"""

    # --- the budget (the same for every method) ---
    steps: int = 30
    """GRPO-equivalent steps: every method generates steps x prompts_per_step x group_size training samples"""
    prompts_per_step: int = 16
    """prompts per step of the step-based methods"""
    group_size: int = 8
    """completions per prompt of the step-based methods"""
    max_new_tokens: int = 80
    """completion length limit of every method, in training and evaluation"""

    # --- evaluation ---
    eval_n: int = 64
    """samples per held-out problem for the final policies and the base (pass@k up to k = eval_n)"""
    eval_problems: int = 120
    """held-out problems for the final evaluation (a multiple of 3 keeps the tiers equal); 120 keeps the
    default set within 60 minutes on 2 cores (19 evaluations of about 80 CPU seconds each)"""
    train_eval_problems: int = 60
    """held-out problems of the in-run evaluations (the learning curves)"""
    train_eval_n: int = 4
    """samples per problem of the in-run evaluations (the scripts use half of it between start and end)"""
    curve_points: int = 5
    """in-run evaluations per run after step 0 (the learning curves' points)"""

    # --- execution ---
    jobs: int = 2
    """runs (and evaluations) at the same time"""
    threads: int = 1
    """torch threads per run (OMP_NUM_THREADS)"""
    dry_run: bool = False
    """print the plan and the commands, run nothing"""
    report_only: bool = False
    """run nothing: rewrite the report and plots from the finished runs and cached evaluations"""


# ----------------------------------------------------------------------------------------------------
# Commands: the budget and the shared flags
# ----------------------------------------------------------------------------------------------------


def budget_samples(args: Args) -> int:
    """Training samples every method generates: steps x prompts_per_step x group_size.

    >>> budget_samples(Args(steps=30))
    3840
    """
    return args.steps * args.prompts_per_step * args.group_size


def budget_flags(method: str, args: Args) -> tuple[list[str], int, int]:
    """The flags that give ``method`` the common budget, its generated training samples, and the
    ``--eval-every`` that spreads ``curve_points`` in-run evaluations over it.

    >>> budget_flags("expo", Args(steps=30))[1:]  # 20 steps x 16 x (8 + 4) = 30 x 16 x 8
    (3840, 4)
    >>> budget_flags("grpo", Args(steps=30))[0][-2:]  # a script whose steps vary stops at the budget
    ['--max-samples', '3840']
    """
    Q, G, S = args.prompts_per_step, args.group_size, budget_samples(args)
    per_step = Q * (G + explanation_samples_per_prompt(method))
    steps = max(1, round(S / per_step))
    flags = ["--num-steps", str(steps), "--prompts-per-step", str(Q), "--group-size", str(G)]
    flags += ["--max-samples", str(S)]  # a step whose samples vary (DAPO, Reinforce-Ada) stops at the budget
    return flags, steps * per_step, max(1, steps // args.curve_points)


def max_new_tokens(method: str, args: Args) -> int:
    """``--max-new-tokens``, or more for a method whose output format needs more (``min_new_tokens``).

    >>> max_new_tokens("grpo", Args()), max_new_tokens("rlcr", Args()), max_new_tokens("rlcr", Args(max_new_tokens=128))
    (80, 112, 128)
    """
    return max(args.max_new_tokens, METHODS[method].get("min_new_tokens", 0))


def shared_flags(args: Args, method: str) -> list[str]:
    """Flags every method gets: the dataset, completion length and the in-run evaluations (learning curves)."""
    model = ["--model-name-or-path", args.model] if args.model != "tiny" else []
    dataset = ["--dataset", args.dataset] if args.dataset != "tiny" else []
    return [*model, *dataset, "--max-new-tokens", str(max_new_tokens(method, args)), "--eval-problems",
            str(args.train_eval_problems), "--eval-n", str(args.train_eval_n)]  # fmt: skip


def display_path(path: Path) -> str:
    """``path`` relative to the repository root when it is inside it (commands run from the root)."""
    path = path.resolve()
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


@dataclass
class RunSpec:
    method: str
    seed: int
    run_dir: Path
    argv: list[str]  # the script and its flags, run with cwd = ROOT (without --resume)
    samples: int  # training samples it generates
    script: str = ""  # algos/<script>.py; default: the method's (METHODS); mismatch_lab.py sets its own

    def __post_init__(self):
        self.script = self.script or METHODS[self.method]["script"]

    @property
    def name(self) -> str:
        return f"{self.method}__{self.seed}"

    def command(self, threads: int) -> str:
        """The exact command, as a user would type it from the repository root."""
        return f"OMP_NUM_THREADS={threads} ./run.sh {self.script} " + shlex.join(self.argv)


def plan_runs(args: Args, runs_dir: Path) -> list[RunSpec]:
    """One RunSpec per (seed, method), seed-major, so an interrupted comparison has every method's first seeds."""
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; available: {' '.join(METHODS)}")
    specs = []
    for seed in range(1, args.seeds + 1):
        for method in args.methods:
            flags, samples, eval_every = budget_flags(method, args)
            run_dir = runs_dir / f"{method}__{seed}"
            argv = [
                *METHODS[method]["flags"], *flags, *shared_flags(args, method), "--eval-every", str(eval_every),
                "--seed", str(seed), "--exp-name", method, "--output-dir", display_path(runs_dir),
                "--run-name", run_dir.name,
            ]  # fmt: skip
            specs.append(RunSpec(method, seed, run_dir, argv, samples))
    return specs


# ----------------------------------------------------------------------------------------------------
# Reading a run's metrics.jsonl: samples seen, learning curve, final training accuracy, grad-norm statistics
# ----------------------------------------------------------------------------------------------------


def samples_seen(records: list[dict], config: dict) -> list[int]:
    """Training samples generated up to and including each record's step (records sorted by step).

    A step that logs ``samples_generated`` (a script whose samples per step vary) counts that many; any
    other step prompts_per_step x group_size, plus ExPO's ``explanation_samples``. A script that samples
    datasets (TOPR: its config has ``questions_per_iteration``): every record of iteration i has seen i
    datasets of questions_per_iteration x samples_per_question.

    >>> samples_seen([{"step": 0}, {"step": 1}, {"step": 2, "explanation_samples": 4}], {"prompts_per_step": 2, "group_size": 3})
    [0, 6, 16]
    >>> samples_seen([{"step": 0}, {"step": 1, "samples_generated": 18}, {"step": 2, "samples_generated": 6}], {"prompts_per_step": 2, "group_size": 3})
    [0, 18, 24]
    >>> samples_seen([{"step": 0}, {"step": 5, "iteration": 1}, {"step": 9, "iteration": 2}], {"questions_per_iteration": 3, "samples_per_question": 4})
    [0, 12, 24]
    """
    out, total = [], 0
    for record in records:
        if "questions_per_iteration" in config:
            per_dataset = config["questions_per_iteration"] * config["samples_per_question"]
            out.append(int(record.get("iteration", 0)) * per_dataset)
            continue
        if record["step"] > 0:
            if record.get("samples_generated") is not None:
                total += int(record["samples_generated"])
            else:
                total += config["prompts_per_step"] * config["group_size"] + int(
                    record.get("explanation_samples") or 0
                )
        out.append(total)
    return out


def final_train_accuracy(records: list[dict], share: float = 0.1) -> float | None:
    """Mean training accuracy (share of correct sampled completions) over the last ``share`` of the steps.

    For TOPR the accuracy is that of each iteration's dataset, so this is the last dataset's.

    >>> final_train_accuracy([{"step": s, "accuracy": s / 10} for s in range(1, 11)], share=0.2)
    0.95
    """
    values = [r["accuracy"] for r in records if r.get("step", 0) > 0 and r.get("accuracy") is not None]
    if not values:
        return None
    last = max(1, round(share * len(values)))
    return sum(values[-last:]) / last


def grad_norm_stats(records: list[dict]) -> dict:
    """Statistics of the pre-clipping gradient norm over the steps that updated the policy (OREAL's frozen
    steps and NSR's skipped steps log 0 and are left out): mean, std (unbiased), variance, coefficient of
    variation (std / mean: comparable across methods whose losses have different scales), the mean
    training accuracy over the same steps, and how many steps.

    >>> s = grad_norm_stats([{"step": 1, "grad_norm": 1.0, "accuracy": 0.5}, {"step": 2, "grad_norm": 3.0, "accuracy": 0.7},
    ...                      {"step": 3, "grad_norm": 0.0}, {"step": 4, "grad_norm": 5.0, "actor_frozen": 1.0}])
    >>> s["mean"], s["var"], s["cv"], s["steps"], round(s["train_accuracy"], 3)
    (2.0, 2.0, 0.7071067811865476, 2, 0.6)
    """
    kept = [r for r in records if r.get("grad_norm") and not r.get("actor_frozen")]
    norms = [float(r["grad_norm"]) for r in kept]
    if not norms:
        return {"mean": None, "std": None, "var": None, "cv": None, "train_accuracy": None, "steps": 0}
    mean = sum(norms) / len(norms)
    var = sum((x - mean) ** 2 for x in norms) / (len(norms) - 1) if len(norms) > 1 else 0.0
    accuracies = [r["accuracy"] for r in kept if r.get("accuracy") is not None]
    return {
        "mean": mean,
        "std": math.sqrt(var),
        "var": var,
        "cv": math.sqrt(var) / mean if mean > 0 else None,
        "train_accuracy": sum(accuracies) / len(accuracies) if accuracies else None,
        "steps": len(norms),
    }


def own_measures(record: dict) -> dict:
    """The held-out measures a script logs beside pass@k (RLCR: brier, ece, auroc, ...), from one record.

    >>> own_measures({"step": 0, "eval/pass@1": 0.3, "eval/brier": 0.25, "loss": 1.0})
    {'brier': 0.25}
    """
    return {
        k.removeprefix("eval/"): v
        for k, v in record.items()
        if k.startswith("eval/") and not k.startswith("eval/pass@") and isinstance(v, (int, float))
    }


def summarize_run(run_dir: Path) -> dict:
    """What the report needs from one finished run: its learning curve, final training accuracy,
    grad-norm statistics and the samples it generated (from metrics.jsonl and config.json)."""
    config = json.loads((run_dir / "config.json").read_text())
    records = sorted(read_jsonl(run_dir / "metrics.jsonl"), key=lambda r: r["step"])
    seen = samples_seen(records, config)
    return {
        "curve": [[x, r["eval/pass@1"]] for x, r in zip(seen, records) if r.get("eval/pass@1") is not None],
        "train_curve": [[x, r["accuracy"]] for x, r in zip(seen, records) if r.get("accuracy") is not None],
        "samples": seen[-1] if seen else 0,
        "steps": records[-1]["step"] if records else 0,
        "final_train_accuracy": final_train_accuracy(records),
        "grad_norm": grad_norm_stats(records),
        # the script's own held-out measures before training (step 0) and at its last step
        "own_eval": {
            "start": own_measures(records[0]) if records else {},
            "end": own_measures(records[-1]) if records else {},
        },
    }


# ----------------------------------------------------------------------------------------------------
# Running: training subprocesses, evaluation subprocesses, both cached
# ----------------------------------------------------------------------------------------------------

_print_lock = threading.Lock()
_start_time = time.time()
LOG_NAME = "compare"  # the prefix of the harness's lines (bench/mismatch_lab.py, which reuses it, sets "lab")


def log(message: str) -> None:
    with _print_lock:
        print(
            f"[{LOG_NAME} {time.strftime('%H:%M:%S')} +{(time.time() - _start_time) / 60:.1f}m] {message}",
            flush=True,
        )


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (a temporary file renamed), so a killed harness never leaves half a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               TOKENIZERS_PARALLELISM="false")  # fmt: skip
    return env


_children: set[subprocess.Popen] = set()


def run_child(argv: list[str], log_path: Path, threads: int) -> tuple[int, float, float, float]:
    """Run ``argv`` from the repository root, output appended to ``log_path``. Returns (exit code, wall
    seconds, CPU seconds, peak resident memory in MiB) of the child, the last two from its own rusage
    (wait4: CPU time is user + system, ru_maxrss its largest resident set; the harness's other children
    are not counted)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log_path, "a") as log_file:
        log_file.write(f"\n$ {shlex.join(argv)}\n")
        log_file.flush()
        # A session of its own: Ctrl-C reaches only the harness, which forwards exactly one SIGINT (a
        # second one would make the script abort instead of saving a checkpoint).
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=child_env(threads), stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        _children.add(proc)
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (not the harness's others)
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            _children.discard(proc)
    cpu = usage.ru_utime + usage.ru_stime
    return proc.returncode, time.time() - start, cpu, usage.ru_maxrss / 1024  # Linux: ru_maxrss in KiB


@contextlib.contextmanager
def stoppable_pool(jobs: int):
    """A pool of ``jobs`` threads for the runs, stopped cleanly by Ctrl-C or SIGTERM: the running children get
    SIGINT (each saves a checkpoint), queued jobs are cancelled and the process exits with status 130, so the
    same command resumes. SIGTERM is mapped to Ctrl-C only in the main thread, and restored afterwards."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_sigterm = signal.getsignal(signal.SIGTERM)
    if in_main_thread:  # SIGTERM stops cleanly too, like Ctrl-C
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            try:
                yield pool
            except KeyboardInterrupt:
                log("interrupted: stopping the running jobs (each saves a checkpoint); rerun the same command to resume")  # fmt: skip
                for proc in list(_children):
                    proc.send_signal(signal.SIGINT)
                pool.shutdown(wait=True, cancel_futures=True)
                raise SystemExit(130) from None
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_sigterm)


def log_tail(path: Path, lines: int = 15) -> str:
    """The last non-empty lines of a log (progress bars' carriage returns count as line ends)."""
    text = path.read_text(errors="replace").replace("\r", "\n") if path.exists() else ""
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


class RunFailed(RuntimeError):
    pass


def train(spec: RunSpec, args: Args, world: str) -> dict:
    """Train one run (or reuse it). Writes ``run_dir/compare_result.json`` when the script exits cleanly."""
    key = {"command": spec.command(args.threads), "world": world}
    result_path, launch_path = spec.run_dir / "compare_result.json", spec.run_dir / "compare_launch.json"
    result = read_json(result_path)
    if result is not None and result.get("key") == key:
        return result
    launch = read_json(launch_path)
    if spec.run_dir.exists() and (launch is None or launch.get("key") != key):
        log(f"{spec.name}: its command or world changed since it ran: redoing it from scratch")
        shutil.rmtree(spec.run_dir)
        launch = None
    launch = launch or {"key": key, "sessions": []}
    resume = latest_checkpoint(spec.run_dir) is not None
    write_json(launch_path, launch)
    argv = [sys.executable, f"algos/{spec.script}.py", *spec.argv] + (["--resume"] if resume else [])
    log(
        f"{spec.name}: {'resuming' if resume else 'training'} ({spec.samples} samples; log {display_path(spec.run_dir / 'train.log')})"
    )
    code, wall, cpu, peak_mib = run_child(argv, spec.run_dir / "train.log", args.threads)
    launch["sessions"].append(
        {"exit_code": code, "wall_s": wall, "cpu_s": cpu, "peak_rss_mib": peak_mib, "resumed": resume}
    )
    write_json(launch_path, launch)
    if code != 0:
        raise RunFailed(
            f"{spec.name} exited with {code}; the end of {spec.run_dir / 'train.log'}:\n{log_tail(spec.run_dir / 'train.log')}"
        )
    summary = summarize_run(spec.run_dir)
    checkpoint = latest_checkpoint(spec.run_dir)
    result = {
        "key": key,
        "method": spec.method,
        "seed": spec.seed,
        "command": spec.command(args.threads),
        "checkpoint": display_path(checkpoint / "model"),
        "checkpoint_step": int(checkpoint.name.split("-")[-1]),
        "wall_s": sum(s["wall_s"] for s in launch["sessions"]),  # every session, interrupted ones included
        "cpu_s": sum(s["cpu_s"] for s in launch["sessions"]),
        "peak_rss_mib": max(s["peak_rss_mib"] for s in launch["sessions"]),
        "sessions": len(launch["sessions"]),
        **summary,
    }
    if result["checkpoint_step"] != summary["steps"]:
        raise RunFailed(
            f"{spec.name}: newest checkpoint is step {result['checkpoint_step']}, metrics end at {summary['steps']}"
        )
    write_json(result_path, result)
    return result


def eval_config(args: Args, model: str, seed: int, method: str | None = None) -> dict:
    """The final evaluation of ``model`` (the base when ``method`` is None): its method's completion limit."""
    limit = args.max_new_tokens if method is None else max_new_tokens(method, args)
    config = {"model": model, "n": args.eval_n, "problems": args.eval_problems,
              "max_new_tokens": limit, "temperature": 1.0, "seed": seed}  # fmt: skip
    return config if args.dataset == "tiny" else {**config, "dataset": args.dataset}


def evaluate_checkpoint(config: dict, out_path: str) -> None:
    """Evaluate one policy (a model directory, or "tiny" for the base) on the first ``problems`` held-out
    problems of ``dataset`` (default "tiny") with ``n`` samples each and write ``{"config", "eval",
    "wall_s"}`` to ``out_path``. Runs in a subprocess of its own (``evaluate``)."""
    import torch

    from common.data import load_examples
    from common.evaluate import evaluate_policy
    from common.model import load_policy

    start = time.time()
    torch.manual_seed(config["seed"])
    model, tokenizer = load_policy(config["model"])
    model.eval()
    examples = load_examples(config.get("dataset", "tiny"), "test", limit=config["problems"])
    result = evaluate_policy(
        model, tokenizer, examples, n=config["n"], max_new_tokens=config["max_new_tokens"],
        temperature=config["temperature"], desc=f"eval {config['model']}",
    )  # fmt: skip
    result["curve"] = {str(k): v for k, v in result["curve"].items()}
    write_json(Path(out_path), {"config": config, "eval": result, "wall_s": time.time() - start})


def evaluate(config: dict, out_path: Path, log_path: Path, threads: int, world: str) -> dict:
    """The cached evaluation at ``out_path`` if its config (and world) match, else run it in a subprocess."""
    key = {**config, "world": world}
    cached = read_json(out_path)
    if cached is not None and cached.get("key") == key:
        return cached
    code_line = "import json, sys; from bench.compare import evaluate_checkpoint; evaluate_checkpoint(json.loads(sys.argv[1]), sys.argv[2])"
    argv = [sys.executable, "-c", code_line, json.dumps(config), str(out_path)]
    code, wall, cpu, peak_mib = run_child(argv, log_path, threads)
    if code != 0:
        raise RunFailed(
            f"evaluation of {config['model']} exited with {code}; the end of {log_path}:\n{log_tail(log_path)}"
        )
    done = json.loads(out_path.read_text())
    done.update(key=key, cpu_s=cpu, peak_rss_mib=peak_mib)
    write_json(out_path, done)
    return done


# ----------------------------------------------------------------------------------------------------
# Aggregation and the report
# ----------------------------------------------------------------------------------------------------


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and unbiased std (None with fewer than two values) of the values that are not None.

    >>> [round(v, 4) for v in mean_std([0.2, 0.4])]
    [0.3, 0.1414]
    >>> mean_std([0.5, None])
    (0.5, None)
    """
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def fmt_mean(values: list[float | None], digits: int = 3) -> str:
    """The mean alone ('—' for none).

    >>> fmt_mean([0.2, 0.4])
    '0.300'
    """
    mean, _ = mean_std(values)
    return "—" if mean is None else f"{mean:.{digits}f}"


def fmt_mean_std(values: list[float | None], digits: int = 3) -> str:
    """'mean ± std' over seeds, the mean alone for one seed, '—' for none.

    >>> fmt_mean_std([0.2, 0.4]), fmt_mean_std([0.25]), fmt_mean_std([]), fmt_mean_std([100.0, 120.0], 0)
    ('0.300 ± 0.141', '0.250', '—', '110 ± 14')
    """
    mean, std = mean_std(values)
    if mean is None:
        return "—"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def aggregate(runs: list[dict], evals: dict[str, dict], n: int) -> dict[str, dict]:
    """Per method: every run's numbers gathered over seeds. ``runs`` are compare_result.json contents,
    ``evals[run name]`` their final evaluations (``{"eval": evaluate_policy output}``)."""
    methods: dict[str, dict] = {}
    for run in sorted(runs, key=lambda r: (list(METHODS).index(r["method"]), r["seed"])):
        ev = evals.get(f"{run['method']}__{run['seed']}")
        if ev is None:
            continue
        m = methods.setdefault(run["method"], {"seeds": [], "runs": []})
        m["seeds"].append(run["seed"])
        m["runs"].append({**run, "eval": ev["eval"]})
    out = {}
    for method, m in methods.items():
        evs = [r["eval"] for r in m["runs"]]
        ks = sorted({int(k) for e in evs for k in e["curve"]})
        tiers = sorted({t for e in evs for t in e["per_category"]})
        out[method] = {
            "seeds": m["seeds"],
            "samples": [r["samples"] for r in m["runs"]],
            "pass_at_k": {k: [e["curve"].get(str(k), e["curve"].get(k)) for e in evs] for k in ks},
            "per_tier": {
                t: {
                    "pass@1": [e["per_category"][t]["pass@1"] for e in evs if t in e["per_category"]],
                    f"pass@{n}": [
                        e["per_category"][t].get(f"pass@{n}") for e in evs if t in e["per_category"]
                    ],
                }
                for t in tiers
            },
            "final_train_accuracy": [r["final_train_accuracy"] for r in m["runs"]],
            "wall_s": [r["wall_s"] for r in m["runs"]],
            "cpu_s": [r.get("cpu_s") for r in m["runs"]],
            "peak_rss_mib": [r["peak_rss_mib"] for r in m["runs"]],
            "grad_norm": {
                key: [r["grad_norm"][key] for r in m["runs"]]
                for key in ("mean", "std", "var", "cv", "train_accuracy")
            },
            "own_eval": {
                key: {
                    when: [r.get("own_eval", {}).get(when, {}).get(key) for r in m["runs"]]
                    for when in ("start", "end")
                }
                for key in sorted(
                    {k for r in m["runs"] for w in ("start", "end") for k in r.get("own_eval", {}).get(w, {})}
                )
            },
            "curves": [r["curve"] for r in m["runs"]],
            "train_curves": [r["train_curve"] for r in m["runs"]],
            "commands": [r["command"] for r in m["runs"]],
        }
    return out


def replace_between_markers(
    text: str, section: str, name: str = "compare", by: str = "./run.sh compare"
) -> str:
    """``text`` with everything between the markers of section ``name`` replaced by ``section``; the markers
    and the section are appended at the end when the markers are missing.

    >>> replace_between_markers(f"a\\n{BEGIN_MARKER}\\nold\\n{END_MARKER}\\nb\\n", "new").splitlines()[1:4] == [BEGIN_MARKER, "new", END_MARKER]
    True
    """
    begin_marker, end_marker = markers(name, by)
    begin, end = text.find(begin_marker), text.find(end_marker)
    block = f"{begin_marker}\n{section.strip()}\n{end_marker}"
    if begin == -1 or end == -1 or end < begin:
        if begin != -1 or end != -1:
            raise ValueError(
                "results file has only one of the compare markers (or in the wrong order); fix it by hand"
            )
        return text.rstrip("\n") + "\n\n" + block + "\n"
    return text[:begin] + block + text[end + len(end_marker) :]


def harness_command(args: Args) -> str:
    """The ./run.sh compare command that reproduces this report (non-default flags only)."""
    parts = ["./run.sh", "compare"]
    defaults = Args()
    for name, value in vars(args).items():
        if name in ("dry_run", "report_only") or value == getattr(defaults, name):
            continue
        flag = "--" + name.replace("_", "-")
        parts += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    return shlex.join(parts)


def longer_note(args: Args) -> str:
    """The methods given more new tokens than ``--max-new-tokens``, as a note for the report.

    >>> longer_note(Args(methods=["grpo", "rlcr"])), longer_note(Args(methods=["grpo"]))
    (' (rlcr: 112, in training and evaluation, for the output format)', '')
    """
    longer = [
        f"{m}: {max_new_tokens(m, args)}"
        for m in args.methods
        if max_new_tokens(m, args) > args.max_new_tokens
    ]
    return f" ({', '.join(longer)}, in training and evaluation, for the output format)" if longer else ""


def render_report(agg: dict, base: dict, args: Args, meta: dict, img_rel: str) -> str:
    """The generated markdown section."""
    n = args.eval_n
    ks = [k for k in (1, 8, n) if k <= n]
    num_tiers = len(base["eval"]["per_category"])
    on_dataset = "" if args.dataset == "tiny" else f" on `{args.dataset}`"
    on_dataset += "" if args.model == "tiny" else f" from `{args.model}`"
    named = "" if args.report_name == "compare" else f" ({args.report_name})"
    lines = [
        f"## Side by side{on_dataset}: every method at the same sample budget{named}",
        "",
        f"Generated by `{harness_command(args)}` ({meta['date']}, {meta['world']}, commit {meta['commit']}; "
        f"{meta['jobs']} runs at a time, {meta['threads']} torch thread each). Every method generated "
        f"{budget_samples(args):,} training samples ({args.steps} steps of {args.prompts_per_step} prompts × "
        f"{args.group_size}; ExPO's explanations and every round "
        "of DAPO and Reinforce-Ada count, those two stopping at the step that reaches the budget; "
        "`bench/compare.py` says how). Held-out evaluation of the final policies and the base: "
        f"{args.eval_problems} problems ({args.eval_problems // num_tiers} per tier) × {n} samples, temperature 1.0, "
        f"at most {args.max_new_tokens} new tokens{longer_note(args)}; mean ± std over seeds (the base is evaluated once). "
        "Wall time, CPU time (user + system) and peak memory (ru_maxrss) are the training process's, in-run "
        "evaluations included; CPU time does not depend on what else the machine was running.",
        "",
    ]
    rows = [
        ["base", "—", "0", *[f"{base['eval']['curve'][str(k)]:.3f}" for k in ks], "—", "—", "—", "—", "—"]
    ]
    for method, m in agg.items():
        script = METHODS[method]["script"] + ".py " + " ".join(METHODS[method]["flags"])
        rows.append([
            method, f"`{script.strip()}`", f"{int(sum(m['samples']) / len(m['samples'])):,}",
            *[fmt_mean_std(m["pass_at_k"].get(k, [])) for k in ks], fmt_mean_std(m["final_train_accuracy"]),
            fmt_mean_std(m["wall_s"], 0), fmt_mean_std(m["cpu_s"], 0), fmt_mean_std(m["peak_rss_mib"], 0),
            str(len(m["seeds"])),
        ])  # fmt: skip
    header = ["method", "script", "samples", *[f"pass@{k}" for k in ks], "final train acc.", "wall (s)",
              "CPU (s)", "peak RSS (MiB)", "seeds"]  # fmt: skip
    lines += [markdown_table(rows, header, max_chars=None), ""]

    all_ks = sorted(int(k) for k in base["eval"]["curve"])
    lines += ["pass@k for every k evaluated (mean over seeds):", ""]
    rows = [["base", *[f"{base['eval']['curve'][str(k)]:.3f}" for k in all_ks]]]
    rows += [[method, *[fmt_mean(m["pass_at_k"].get(k, [])) for k in all_ks]] for method, m in agg.items()]
    lines += [markdown_table(rows, ["method", *[f"pass@{k}" for k in all_ks]], max_chars=None), ""]

    order = list(TIER_STEPS)  # the tiny world's tiers, easiest first; any other category after them
    tiers = sorted(
        base["eval"]["per_category"], key=lambda t: (order.index(t) if t in order else len(order), t)
    )
    lines += [
        f"Per tier, pass@1 / pass@{n} (mean over seeds; {args.eval_problems // num_tiers} problems per tier):",
        "",
    ]
    rows = [
        [
            "base",
            *[
                f"{base['eval']['per_category'][t]['pass@1']:.3f} / {base['eval']['per_category'][t][f'pass@{n}']:.3f}"
                for t in tiers
            ],
        ]
    ]
    for method, m in agg.items():
        cells = []
        for t in tiers:
            p1, _ = mean_std(m["per_tier"].get(t, {}).get("pass@1", []))
            pn, _ = mean_std(m["per_tier"].get(t, {}).get(f"pass@{n}", []))
            cells.append("—" if p1 is None else f"{p1:.3f} / {pn:.3f}")
        rows.append([method, *cells])
    lines += [markdown_table(rows, ["method", *tiers], max_chars=None), ""]

    lines += [
        "Gradient norm (before clipping) over the steps that updated the policy, per run, then mean ± std over "
        "seeds; CV = std / mean is comparable across losses of different scales; train acc. is the mean "
        "training accuracy over the same steps:",
        "",
    ]
    rows = [[method, fmt_mean_std(m["grad_norm"]["train_accuracy"]), fmt_mean_std(m["grad_norm"]["mean"]),
             fmt_mean_std(m["grad_norm"]["var"], 4), fmt_mean_std(m["grad_norm"]["cv"])] for method, m in agg.items()]  # fmt: skip
    lines += [
        markdown_table(
            rows,
            ["method", "train acc.", "grad-norm mean", "grad-norm variance", "grad-norm CV"],
            max_chars=None,
        ),
        "",
    ]

    own = [(method, key, v) for method, m in agg.items() for key, v in m.get("own_eval", {}).items()]
    if own:
        lines += [
            "The scripts' own held-out measures besides pass@k (RLCR's calibration; PPO's pass@k after its SFT "
            "warm-up stage, `warmup_pass@k`, logged at step 0), from each run's in-run "
            f"evaluation before training and at its last step ({args.train_eval_problems} problems × "
            f"{args.train_eval_n} samples, with the script's own prompt); mean ± std over seeds:",
            "",
        ]
        rows = [[method, key, fmt_mean_std(v["start"]), fmt_mean_std(v["end"])] for method, key, v in own]
        lines += [
            markdown_table(rows, ["method", "measure", "before training", "last step"], max_chars=None),
            "",
        ]

    lines += [f"![held-out pass@1 and training accuracy vs samples]({img_rel}/{args.report_name}_learning_curves.png)",
              f"![pass@k, k = 1 … {n}]({img_rel}/{args.report_name}_pass_at_k.png)", "",
              "Commands (seed 1; the other seeds change only `--seed` and `--run-name`):", ""]  # fmt: skip
    config = {**base["config"], "model": args.model, "seed": 0}
    lines += [f"* evaluation, in a process of its own: `bench.compare.evaluate_checkpoint({json.dumps(config)}, "
              "OUT_JSON)`; for a final policy `model` is the run's last checkpoint and `seed` the run's seed"]  # fmt: skip
    lines += [f"* {method}: `{m['commands'][0]}`" for method, m in agg.items()]
    if meta.get("failed"):
        lines += ["", f"Failed or missing runs (not in the tables): {', '.join(meta['failed'])}."]
    return "\n".join(lines) + "\n"


def _figure(ncols: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6 * ncols, 4.2))
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def mean_curve(curves: list[list[list[float]]]) -> tuple[list[float], list[float], list[float]]:
    """x, mean y, std y over seeds at every x some seed has (std 0 where only one seed has it).

    >>> xs, ys, sds = mean_curve([[[0, 0.2], [10, 0.4]], [[0, 0.4], [10, 0.4], [20, 0.5]]])
    >>> xs, [round(y, 4) for y in ys], [round(s, 4) for s in sds]
    ([0, 10, 20], [0.3, 0.4, 0.5], [0.1414, 0.0, 0.0])
    """
    by_x: dict[float, list[float]] = {}
    for curve in curves:
        for x, y in curve:
            by_x.setdefault(x, []).append(y)
    xs = sorted(by_x)
    stats = [mean_std(by_x[x]) for x in xs]
    return xs, [m for m, _ in stats], [s or 0.0 for _, s in stats]


def plot_learning_curves(agg: dict, path: Path) -> None:
    fig, (ax_eval, ax_train) = _figure(2)
    for i, (method, m) in enumerate(agg.items()):
        color = f"C{i}"
        for ax, curves in ((ax_eval, m["curves"]), (ax_train, m["train_curves"])):
            xs, ys, sds = mean_curve(curves)
            ax.plot(xs, ys, marker="o" if ax is ax_eval else None, color=color, label=method)
            ax.fill_between(
                xs,
                [y - s for y, s in zip(ys, sds)],
                [y + s for y, s in zip(ys, sds)],
                color=color,
                alpha=0.15,
            )
    ax_eval.set_title("held-out pass@1 (in-run evaluations)")
    ax_train.set_title("training accuracy (share of correct samples)")
    for ax in (ax_eval, ax_train):
        ax.set_xlabel("training samples generated")
        ax.grid(True, alpha=0.3)
    ax_eval.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def plot_pass_at_k(agg: dict, base: dict, path: Path) -> None:
    base_curve = {int(k): v for k, v in base["eval"]["curve"].items()}
    ks = sorted(base_curve)
    fig, (ax, ax_delta) = _figure(2)
    ax.plot(ks, [base_curve[k] for k in ks], marker="o", color="black", label="base")
    ax_delta.axhline(0.0, color="black", linewidth=1)
    for i, (method, m) in enumerate(agg.items()):
        stats = [mean_std(m["pass_at_k"].get(k, [])) for k in ks]
        ys, sds = [s[0] for s in stats], [s[1] or 0.0 for s in stats]
        ax.errorbar(ks, ys, yerr=sds, marker="o", capsize=2, color=f"C{i}", label=method)
        ax_delta.errorbar(
            ks, [y - base_curve[k] for y, k in zip(ys, ks)], yerr=sds, marker="o", capsize=2, color=f"C{i}"
        )
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("pass@k")
    ax_delta.set_ylabel("pass@k − base pass@k")
    for a in (ax, ax_delta):
        a.set_xscale("log", base=2)
        a.set_xticks(ks, [str(k) for k in ks])  # "1 2 4 ... 64", not "1.0 2.0" or "2^0 2^1"
        a.minorticks_off()
        a.set_xlabel("k (samples per problem)")
        a.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "algos", "common"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return head + (" + uncommitted changes in algos/ or common/" if dirty else "")
    except OSError:
        return "unknown"


def write_report(args: Args, runs: list[dict], evals: dict[str, dict], base: dict, meta: dict) -> dict:
    """Aggregate, write summary.json, the plots and the generated section of the results file."""
    agg = aggregate(runs, evals, args.eval_n)
    out_dir, img_dir, results_md = Path(args.out_dir), Path(args.img_dir), Path(args.results_md)
    summary = {"meta": meta, "args": vars(args), "base": base, "methods": agg, "runs": runs}
    write_json(out_dir / "summary.json", summary)
    curves_png, pass_png = (
        img_dir / f"{args.report_name}_{kind}.png" for kind in ("learning_curves", "pass_at_k")
    )
    plot_learning_curves(agg, curves_png)
    plot_pass_at_k(agg, base, pass_png)
    img_rel = os.path.relpath(img_dir.resolve(), results_md.resolve().parent)
    section = render_report(agg, base, args, meta, img_rel)
    text = results_md.read_text() if results_md.exists() else "# Results\n"
    results_md.parent.mkdir(parents=True, exist_ok=True)
    results_md.write_text(replace_between_markers(text, section, args.report_name))
    log(f"wrote {results_md}, {curves_png}, {pass_png}, {out_dir}/summary.json")
    return summary


# ----------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------


def main(args: Args, train_fn: Callable = train, evaluate_fn: Callable = evaluate) -> dict | None:
    """Plan, run what is missing (``train_fn``/``evaluate_fn`` are replaceable for tests), report."""
    if args.list:
        for name, method in METHODS.items():
            default = " (default set)" if name in DEFAULT_METHODS else ""
            print(f"{name:16s} algos/{method['script']}.py {' '.join(method['flags'])}{default}".rstrip())
        return None
    if args.seeds < 1 or args.steps < 1 or args.jobs < 1 or args.eval_n < 1 or args.eval_problems < 1:
        raise SystemExit("--seeds, --steps, --jobs, --eval-n and --eval-problems must be >= 1")
    if args.model not in WORLD_NAMES:
        raise SystemExit(
            f"--model {args.model!r}: the comparison runs on a tiny world: {', '.join(WORLD_NAMES)}"
        )
    if not args.dataset.startswith("tiny"):
        raise SystemExit(
            f"--dataset {args.dataset!r}: the comparison runs on the tiny world ('tiny' or 'tiny:TIER,...')"
        )
    from common.data import check_dataset

    try:
        check_dataset(args.dataset)
    except ValueError as error:
        raise SystemExit(f"--dataset: {error}") from None
    if not args.report_name.replace("-", "").replace("_", "").isalnum():
        raise SystemExit(f"--report-name {args.report_name!r}: use letters, digits, '-' and '_' only")
    out_dir = Path(args.out_dir)
    runs_dir = out_dir / "runs"
    specs = plan_runs(args, runs_dir)
    log(f"{len(specs)} runs ({len(args.methods)} methods × {args.seeds} seeds), {budget_samples(args):,} training "
        f"samples each; final evaluation: {args.eval_problems} held-out problems × {args.eval_n} samples "
        f"(--eval-problems is sized so that the default set fits 60 minutes on 2 cores); {args.jobs} at a time, "
        f"{args.threads} thread(s) each; output in {out_dir}")  # fmt: skip
    for spec in specs:
        if spec.seed == 1:
            log(f"  {spec.method}: {spec.command(args.threads)}")
    if args.dry_run:
        return None

    from common.tiny_world import ensure_world

    # makes the world once here (shipped copy, or minutes of building) rather than in every run; its name is
    # part of every cache key
    world = ensure_world(args.model).name
    meta = {"date": time.strftime("%Y-%m-%d"), "world": world, "commit": git_commit(), "jobs": args.jobs,
            "threads": args.threads, "failed": []}  # fmt: skip
    base_config = eval_config(args, args.model, seed=0)
    base_path = out_dir / f"base_eval_n{args.eval_n}_p{args.eval_problems}.json"

    def eval_run(
        spec: RunSpec, result: dict
    ) -> dict:  # cached in the run's directory, which a redone run deletes
        config = eval_config(args, result["checkpoint"], seed=spec.seed, method=spec.method)
        path = spec.run_dir / f"eval_n{args.eval_n}_p{args.eval_problems}.json"
        return evaluate_fn(config, path, spec.run_dir / "eval.log", args.threads, world)

    runs, evals, base = [], {}, None
    if args.report_only:
        base = read_json(base_path)
        for spec in specs:
            result = read_json(spec.run_dir / "compare_result.json")
            ev = read_json(spec.run_dir / f"eval_n{args.eval_n}_p{args.eval_problems}.json")
            if result and ev:
                runs.append(result)
                evals[spec.name] = ev
            else:
                meta["failed"].append(spec.name)
        if base is None:
            raise SystemExit(
                f"--report-only: no base evaluation at {base_path}; run without --report-only first"
            )
        return write_report(args, runs, evals, base, meta)

    def job(spec: RunSpec) -> tuple[RunSpec, dict, dict, bool]:
        result_path = spec.run_dir / "compare_result.json"
        cached = (read_json(result_path) or {}).get("key") == {
            "command": spec.command(args.threads),
            "world": world,
        }
        result = train_fn(spec, args, world)
        return spec, result, eval_run(spec, result), cached

    started = time.time()
    done_fresh, total = 0, len(specs)
    with stoppable_pool(args.jobs) as pool:
        futures = {
            pool.submit(
                evaluate_fn, base_config, base_path, out_dir / "base_eval.log", args.threads, world
            ): None
        }
        futures.update({pool.submit(job, spec): spec for spec in specs})
        for future in as_completed(futures):
            spec = futures[future]
            try:
                value = future.result()
            except RunFailed as error:
                log(f"FAILED: {error}")
                meta["failed"].append(spec.name if spec else "base evaluation")
                continue
            if spec is None:
                base = value
                log(
                    f"base: pass@1 {base['eval']['pass@1']:.3f}, pass@{args.eval_n} {base['eval'][f'pass@{args.eval_n}']:.3f}"
                )
                continue
            _, result, ev, cached = value
            runs.append(result)
            evals[spec.name] = ev
            done_fresh += not cached
            remaining = total - len(runs) - len([f for f in meta["failed"] if f != "base evaluation"])
            eta = ""
            if done_fresh and remaining:
                per_run = (time.time() - started) / done_fresh
                eta = f"; about {per_run * remaining / 60:.0f} min left"
            log(f"{spec.name}{' (cached)' if cached else ''}: pass@1 {ev['eval']['pass@1']:.3f}, "
                f"pass@{args.eval_n} {ev['eval'][f'pass@{args.eval_n}']:.3f}, train {result['wall_s']:.0f}s, "
                f"{result['peak_rss_mib']:.0f} MiB [{len(runs)}/{total} done{eta}]")  # fmt: skip
    if base is None:
        raise SystemExit("the base evaluation failed; no report written")
    summary = write_report(args, runs, evals, base, meta)
    if meta["failed"]:
        log(
            f"{len(meta['failed'])} failed: {', '.join(meta['failed'])}; rerun the same command to retry them"
        )
    log(f"done in {(time.time() - started) / 60:.1f} min")
    return summary


if __name__ == "__main__":
    import tyro

    summary = main(tyro.cli(Args))
    sys.exit(1 if summary and summary["meta"]["failed"] else 0)

"""Experiment logging: metrics to JSONL + TensorBoard (+ optional wandb), plots, tables, progress bars.

Every run directory looks like this:

    run_dir/
      config.json          the run's arguments
      metrics.jsonl        one JSON object per line: {"step": 3, "reward_mean": 0.41, ...}
      completions.jsonl    sampled completions: {"step": 3, "prompt": ..., "completion": ..., "reward": ...}
      tb/                  TensorBoard event files (always written; wandb mirrors them when --track)
      plots/               learning_curves.png

The JSONL files are the source of truth: they are plain text, survive without any service, and are what
the plotting and results scripts read.
"""

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

# matplotlib and TensorBoard are imported where they are used (the plots, the Tracker), so the helpers that
# only evaluate (common.evaluate, common.tiny_world) import in an environment without them, such as the TRL
# benchmark's (bench/trl_bench.py; tests/test_layers.py checks it).

DEFAULT_CURVE_KEYS = [
    "reward_mean",
    "accuracy",
    "eval/pass@1",
    "entropy",
    "kl",
    "grad_norm",
    "completion_len_mean",
    "clip_frac",
    "zero_std_frac",
    "unparsed_frac",
]


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSONL file, skipping lines that are not valid JSON objects (e.g. cut short by a kill -9).

    >>> read_jsonl("run/metrics.jsonl")  # doctest: +SKIP
    [{'step': 1, 'reward_mean': 0.25}, {'step': 2, 'reward_mean': 0.5}]
    """
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            print(f"[tracking] skipping unreadable line {line_number} of {path}", file=sys.stderr)
            continue
        records.append(record)
    return records


def truncate_jsonl(path: str | Path, last_step: int) -> None:
    """Keep only the records with step <= last_step, dropping unreadable lines; the rewrite is atomic.

    Used when resuming from the checkpoint at `last_step`: the steps after it are re-run, so their old
    lines must go, or the file would hold them twice.
    """
    path = Path(path)
    if not path.exists():
        return
    kept = [r for r in read_jsonl(path) if isinstance(r.get("step"), int) and r["step"] <= last_step]
    tmp_path = path.with_name(path.name + ".tmp")
    with open(tmp_path, "w") as f:
        f.writelines(json.dumps(record) + "\n" for record in kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp_path, path)


def markdown_table(rows: list[dict] | list[list], columns: list[str], max_chars: int | None = 300) -> str:
    """A markdown table: TensorBoard/wandb text panels here, the generated report of ``bench/compare.py``.
    A row is a dict (its values under ``columns``; missing cells empty) or a list of cells in column order.
    ``|`` and newlines in a cell are escaped; cells longer than ``max_chars`` are cut (None: never).

    >>> print(markdown_table([{"lr": 1e-06, "group_size": 8}], ["lr", "group_size"]))
    | lr | group_size |
    |---|---|
    | 1e-06 | 8 |
    >>> print(markdown_table([["grpo", "0.31"]], ["method", "pass@1"]))
    | method | pass@1 |
    |---|---|
    | grpo | 0.31 |
    """

    def cell(value: Any) -> str:
        text = str(value).replace("|", "\\|").replace("\n", "<br>")
        return text if max_chars is None or len(text) <= max_chars else text[:max_chars] + "…"

    def cells(row: dict | list) -> list:
        return [row.get(c, "") for c in columns] if isinstance(row, dict) else list(row)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(value) for value in cells(row)) + " |" for row in rows]
    return "\n".join(lines)


class Tracker:
    """Logs one run's metrics to run_dir/metrics.jsonl and TensorBoard, and to wandb when `track=True`.

    `resume_step=S` continues a run from its checkpoint at step S: metrics.jsonl and completions.jsonl
    keep only steps <= S (and TensorBoard hides its events after S), so the resumed run ends up with
    each step exactly once. Without `resume_step`, old metrics/completions files in run_dir are replaced.

    >>> tracker = Tracker("runs/grpo_demo", config={"lr": 1e-6})  # doctest: +SKIP
    >>> tracker.log(step=1, metrics={"reward_mean": 0.25, "kl": 0.0})  # doctest: +SKIP
    >>> tracker.close()  # doctest: +SKIP
    """

    def __init__(
        self,
        run_dir: str | Path,
        config: dict,
        track: bool = False,
        wandb_project: str = "rlvr",
        run_name: str | None = None,
        resume_step: int | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.completions_path = self.run_dir / "completions.jsonl"
        for path in (self.metrics_path, self.completions_path):
            if resume_step is not None:
                truncate_jsonl(path, last_step=resume_step)
            elif path.exists():
                print(f"[tracking] fresh run: replacing the old {path}", file=sys.stderr)
                path.unlink()
        if resume_step is None and (self.run_dir / "tb").exists():
            shutil.rmtree(self.run_dir / "tb")  # a fresh run's curves must not mix with an old run's
        self._warned_non_finite: set[str] = set()

        self.wandb_run = None
        if track:  # before the SummaryWriter, so that wandb's sync_tensorboard sees it being created
            try:
                import wandb
            except ImportError as error:
                raise ImportError("--track needs wandb, which is not installed: pip install wandb") from error
            self.wandb_run = wandb.init(
                project=wandb_project,
                name=run_name or self.run_dir.name,
                config=config,
                sync_tensorboard=True,
                dir=str(self.run_dir),
            )

        # purge_step hides TensorBoard events logged after the checkpoint by the run we resume.
        purge_step = resume_step + 1 if resume_step is not None else None
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=purge_step)
        hparams = [{"name": key, "value": value} for key, value in config.items()]
        self.writer.add_text("hyperparameters", markdown_table(hparams, ["name", "value"]))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Append {"step": step, **metrics} to metrics.jsonl and add each value to TensorBoard.

        Non-finite values (NaN, inf) are written as null in the JSONL, with a warning once per key.
        """
        record: dict[str, float | int | None] = {"step": int(step)}
        for key, value in metrics.items():
            if value is None:  # e.g. a metric with nothing to average over this step
                record[key] = None
                continue
            value = float(value)  # also accepts 0-d tensors and numpy scalars
            self.writer.add_scalar(key, value, global_step=step)
            if not math.isfinite(value):
                if key not in self._warned_non_finite:
                    print(
                        f"[tracking] warning: {key}={value} at step {step}, logged as null", file=sys.stderr
                    )
                    self._warned_non_finite.add(key)
                value = None
            record[key] = value
        # Reopened per step, so each line reaches the OS before log returns (a kill -9 loses at most it).
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def log_completions(self, step: int, rows: list[dict], max_rows_in_tensorboard: int = 4) -> None:
        """Append sampled completions to completions.jsonl and show the first few as a TensorBoard table.

        >>> tracker.log_completions(3, [{"prompt": "1+1?", "completion": "\\\\boxed{2}", "reward": 1.0}])  # doctest: +SKIP
        """
        with open(self.completions_path, "a") as f:
            f.writelines(json.dumps({"step": int(step), **row}, default=str) + "\n" for row in rows)
        if rows:
            columns = list(dict.fromkeys(key for row in rows for key in row))
            table = markdown_table(rows[:max_rows_in_tensorboard], columns)
            self.writer.add_text("completions", table, global_step=step)

    def plot_learning_curves(self, keys: list[str] | None = None) -> list[Path]:
        """Plot metrics.jsonl (x = step, one subplot per key) into run_dir/plots/learning_curves.png.

        Default keys: those of DEFAULT_CURVE_KEYS that the run logged. Returns the written paths
        (empty when there is nothing to plot).
        """
        records = read_jsonl(self.metrics_path)
        if keys is None:
            logged = {key for record in records for key in record}
            keys = [key for key in DEFAULT_CURVE_KEYS if key in logged]
        if not keys:
            return []

        ncols = min(3, len(keys))
        nrows = math.ceil(len(keys) / ncols)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4 * ncols, 3 * nrows))
        FigureCanvasAgg(fig)
        for index, key in enumerate(keys):
            points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
            ax = fig.add_subplot(nrows, ncols, index + 1)
            ax.plot([s for s, _ in points], [v for _, v in points], marker="." if len(points) < 50 else None)
            ax.set_title(key)
            ax.set_xlabel("step")
            ax.grid(True, alpha=0.3)
        fig.suptitle(self.run_dir.name)
        fig.tight_layout()
        plot_path = self.run_dir / "plots" / "learning_curves.png"
        plot_path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(plot_path, dpi=100)
        return [plot_path]

    def close(self) -> None:
        """Flush and close the TensorBoard writer and finish the wandb run."""
        self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def print_table(rows: list[dict], columns: list[str], title: str = "") -> str:
    """Print and return an aligned plain-text table; floats are shown with 3 decimals, missing cells as "-".

    >>> _ = print_table([{"model": "base", "pass@1": 0.3125}, {"model": "grpo", "pass@1": 0.5}], ["model", "pass@1"])
    model  pass@1
    -----  ------
    base    0.312
    grpo    0.500
    """

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    cells = [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(column)] + [len(line[i]) for line in cells]) for i, column in enumerate(columns)]
    numeric = [
        all(isinstance(row.get(c), int | float) for row in rows if row.get(c) is not None) for c in columns
    ]

    def format_line(values: list[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    lines = [title] if title else []
    lines.append(format_line(columns))
    lines.append("  ".join("-" * w for w in widths))
    lines += [format_line(line) for line in cells]
    table = "\n".join(lines)
    print(table)
    return table


class Progress:
    """A progress bar on stderr: tqdm in a terminal, one plain line every ~10% otherwise (CI logs).

    >>> progress = Progress(total=100, desc="train")  # doctest: +SKIP
    >>> progress.update(1, reward=0.25)  # doctest: +SKIP
    >>> progress.close()  # doctest: +SKIP
    """

    def __init__(self, total: int, desc: str = ""):
        self.total, self.desc, self.count = total, desc, 0
        self.start_time = time.monotonic()
        self.bar = (
            tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True) if sys.stderr.isatty() else None
        )
        self._next_tenth = 1  # without tqdm: print a line once count reaches this many tenths of total

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Advance by `n`; keyword arguments are shown next to the bar (floats with 3 decimals)."""
        self.count += n
        shown = {key: f"{value:.3f}" if isinstance(value, float) else value for key, value in postfix.items()}
        if self.bar is not None:
            if shown:
                self.bar.set_postfix(shown, refresh=False)
            self.bar.update(n)
            return
        total = max(self.total, 1)
        if 10 * self.count >= self._next_tenth * total or self.count == self.total:
            elapsed = time.monotonic() - self.start_time
            extras = "".join(f" {key}={value}" for key, value in shown.items())
            line = f"{self.desc}: {self.count}/{self.total} ({100 * self.count / total:.0f}%) {elapsed:.0f}s{extras}"
            print(line, file=sys.stderr, flush=True)
            self._next_tenth = 10 * self.count // total + 1

    def close(self) -> None:
        """Close the bar (no-op when printing plain lines)."""
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def save_pass_at_k(
    curves: dict[str, dict[int, float]], json_path: str | Path, png_path: str | Path, title: str = ""
) -> None:
    """Write pass@k curves (name -> {k: pass@k}) to a JSON file and a PNG plot with a log2 x-axis.

    The JSON keeps the same shape, with k as a string key (JSON objects only have string keys):
    `{"base": {"1": 0.31, "2": 0.45}, "grpo": {...}}`.

    >>> save_pass_at_k({"base": {1: 0.3, 2: 0.5}}, "out/pass_at_k.json", "out/pass_at_k.png")  # doctest: +SKIP
    """
    json_path, png_path = Path(json_path), Path(png_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    as_json = {name: {str(k): value for k, value in curve.items()} for name, curve in curves.items()}
    json_path.write_text(json.dumps(as_json, indent=2) + "\n")

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter

    # Figure + Agg canvas directly (no pyplot): works headless and never touches global matplotlib state.
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, curve in curves.items():
        ks = sorted(curve)
        ax.plot(ks, [curve[k] for k in ks], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(ScalarFormatter())  # "1 2 4 8", not "2^0 2^1 2^2 2^3"
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("k (samples per problem)")
    ax.set_ylabel("pass@k")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)


def report_before_after(
    tracker: "Tracker",
    exp_name: str,
    num_steps: int,
    base_eval: dict,
    final_eval: dict,
    eval_name: str,
    base_wall_time: float,
    total_wall_time: float,
) -> str:
    """The end of every run: print the before/after table, write it to ``results.txt``, draw the
    learning curves and the pass@k curves, and say where everything is."""
    k = final_eval["n"]
    rows = [
        {"policy": "base", "pass@1": base_eval["pass@1"], f"pass@{k}": base_eval[f"pass@{k}"],
         "mean_reward": base_eval["mean_reward"], "wall_time_s": base_wall_time},
        {"policy": f"{exp_name} step {num_steps}", "pass@1": final_eval["pass@1"], f"pass@{k}": final_eval[f"pass@{k}"],
         "mean_reward": final_eval["mean_reward"], "wall_time_s": total_wall_time},
    ]  # fmt: skip
    columns = ["policy", "pass@1", f"pass@{k}", "mean_reward", "wall_time_s"]
    table = print_table(rows, columns, title=f"Held-out results ({eval_name}, n={k} samples per problem)")
    run_dir = tracker.run_dir
    plots = tracker.plot_learning_curves()
    pass_png = run_dir / "plots" / "pass_at_k.png"
    save_pass_at_k({"base": base_eval["curve"], exp_name: final_eval["curve"]}, run_dir / "pass_at_k.json", pass_png,
                   title=f"pass@k on {eval_name}")  # fmt: skip
    (run_dir / "results.txt").write_text(table + "\n")
    print(
        f"logs: {run_dir}/metrics.jsonl  TensorBoard: {run_dir}/tb  plots: {', '.join(map(str, [*plots, pass_png]))}"
    )
    return table

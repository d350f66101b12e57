"""Every method's default run on the shipped tiny world: the numbers of the README's methods table.

    PYTHONPATH=. .venv/bin/python -m bench.defaults              # every method of the registry, 2 at a time
    PYTHONPATH=. .venv/bin/python -m bench.defaults --methods grpo nsr --jobs 1
    PYTHONPATH=. .venv/bin/python -m bench.defaults --report-only  # rewrite the section from finished runs

For every file of ``algos/`` it runs exactly ``./run.sh <name>`` (the script's own defaults, ``--seed 1``),
with its output in ``runs/defaults/<name>/``. A finished run (its ``pass_at_k.json`` written) is not redone;
an interrupted one resumes (``--resume``). ``--methods`` limits what is run; what is written always covers
every finished run of ``--out-dir``, so the numbers are one set:

- ``docs/defaults.json``: per method the base and final held-out pass@k (300 held-out problems x 8 samples,
  the scripts' default evaluation), the training steps and seconds, and the table the run printed;
- the generated section ``defaults`` of ``docs/results.md`` (one row per method, with its command);
- two generated blocks of ``README.md``: ``readme-demo`` (the table ``./run.sh`` prints at its end: grpo's
  default run, which the demo is under another name) and ``readme-methods`` (the methods table: file, method,
  paper, what it changes, pass@1 base -> final, page, verl; "not run" where no run has finished).

``tests/test_readme.py`` checks that README.md and docs/results.md hold exactly what these functions render
from ``docs/defaults.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import tyro

from bench.compare import replace_between_markers
from common.registry import methods
from common.tiny_task import world_dir

ROOT = Path(__file__).resolve().parent.parent
SECTION = "defaults"
BY = "python -m bench.defaults"
SUMMARY = "docs/defaults.json"
README_BLOCKS = ("readme-demo", "readme-methods")


@dataclass
class Args:
    methods: list[str] = field(default_factory=list)
    """files of algos/ to run (default: every method of the registry)"""
    out_dir: str = "runs/defaults"
    """where the runs go (one directory per method)"""
    results_md: str = "docs/results.md"
    """markdown file whose generated section ``defaults`` is (re)written"""
    jobs: int = 2
    """runs at the same time (one torch thread each)"""
    report_only: bool = False
    """run nothing: rewrite the section, docs/defaults.json and the README's blocks from the finished runs"""
    readme: str = "README.md"
    """markdown file whose generated blocks ``readme-demo`` and ``readme-methods`` are (re)written"""


def command(name: str) -> list[str]:
    """The exact command of ``name``'s default run (what the README's table cell quotes).

    >>> command("grpo")
    ['./run.sh', 'grpo']
    """
    return ["./run.sh", name]


def run_one(name: str, args: Args) -> float:
    """Run ``./run.sh <name>`` into ``out_dir/<name>`` (resuming a started one); returns its wall seconds."""
    run_dir = Path(args.out_dir) / name
    if (run_dir / "pass_at_k.json").exists():
        return 0.0
    flags = ["--output-dir", args.out_dir, "--run-name", name]
    if (run_dir / "checkpoints").exists():
        flags.append("--resume")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    start = time.time()
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "train.log", "a") as log:
        proc = subprocess.run([sys.executable, f"algos/{name}.py", *flags], cwd=ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"./run.sh {name} failed (exit {proc.returncode}); see {run_dir / 'train.log'}")
    return time.time() - start


def attempt(name: str, args: Args) -> str:
    """``run_one``, its failure reported instead of raised, so one failed method leaves the others' rows."""
    try:
        return f"done ({run_one(name, args):.0f} s)"
    except RuntimeError as error:
        return f"FAILED: {error}"


def read_run(name: str, args: Args) -> dict | None:
    """The base and final pass@k, steps and wall time of a finished run, or None."""
    run_dir = Path(args.out_dir) / name
    if not (run_dir / "pass_at_k.json").exists() or not (run_dir / "results.txt").exists():
        return None
    curves = json.loads((run_dir / "pass_at_k.json").read_text())
    base, final = curves["base"], [v for k, v in curves.items() if k != "base"][0]
    config = json.loads((run_dir / "config.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "base": {k: float(v) for k, v in base.items()},
        "final": {k: float(v) for k, v in final.items()},
        "steps": max(r["step"] for r in rows),
        "elapsed_s": round(sum(r.get("step_time", 0.0) for r in rows), 1),
        "seed": config["seed"],
        "printed": (run_dir / "results.txt").read_text().rstrip("\n"),
    }


def shipped_world() -> str:
    """The shipped default world: its name and the first 12 hex digits of its weights' SHA-256."""
    sums = (ROOT / "worlds" / world_dir("tiny").name / "SHA256SUMS").read_text().split()
    return f"{world_dir('tiny').name} {sums[sums.index('model.safetensors') - 1][:12]}"


def summary(results: dict[str, dict]) -> dict:
    """What ``docs/defaults.json`` holds: the date, the world and every finished run, in registry order."""
    return {"date": time.strftime("%Y-%m-%d"), "world": shipped_world(), "runs": results}


def readme_order() -> list[str]:
    """The registry's methods in the README's order: grpo (the reference) first, then by file name."""
    return sorted(methods(), key=lambda name: (name != "grpo", name))


def pass_at_1(run: dict | None) -> str:
    """A run's pass@1 cell.

    >>> pass_at_1({"base": {"1": 0.3375}, "final": {"1": 0.56}}), pass_at_1(None)
    ('0.338 → 0.560', 'not run')
    """
    return f"{run['base']['1']:.3f} → {run['final']['1']:.3f}" if run else "not run"


def readme_methods(summary: dict) -> str:
    """The README's methods table: one row per method of the registry, grpo first."""
    lines = [
        "| file | method | paper | what it changes against grpo.py | pass@1 base → final | page | verl |",
        "|---|---|---|---|---|---|---|",
    ]
    every = methods()
    for name in readme_order():
        info = every[name].info
        lines.append(
            f"| [algos/{name}.py](algos/{name}.py) | {info.name} | [arXiv {info.arxiv}](https://arxiv.org/abs/"
            f"{info.arxiv}) | {info.change} | {pass_at_1(summary['runs'].get(name))} | "
            f"[{name}.md](docs/methods/{name}.md) | {info.verl} |"
        )
    return "\n".join(lines)


def readme_demo(summary: dict) -> str:
    """The table ``./run.sh`` prints at its end: grpo's default run's, under the demo's name (the demo is
    ``algos/grpo.py --exp-name demo``, the same seed and defaults)."""
    run = summary["runs"].get("grpo")
    if run is None:
        return "(not run yet: `PYTHONPATH=. .venv/bin/python -m bench.defaults --methods grpo`)"
    printed = run["printed"].replace(f"grpo step {run['steps']}", f"demo step {run['steps']}")
    return f"```text\n{printed}\n```"


def section(summary: dict) -> str:
    """The markdown of the generated section of docs/results.md."""
    lines = [
        "## Every method's default run on the shipped world",
        "",
        f"Generated by `PYTHONPATH=. .venv/bin/python -m bench.defaults` ({summary['date']}, {summary['world']}): "
        "each row is `./run.sh <method>` with the script's own defaults and seed 1, evaluated before and after "
        "on 300 held-out problems x 8 samples at temperature 1 (the scripts' default evaluation). One seed: "
        "differences of a few hundredths between methods are within seed noise (`./run.sh compare` has 3 "
        "seeds at an equal sample budget). The README's methods table quotes these numbers.",
        "",
        "| method | command | steps | pass@1 base | pass@1 final | pass@8 base | pass@8 final | training s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in summary["runs"].items():
        lines.append(
            f"| {name} | `{' '.join(command(name))}` | {r['steps']} | {r['base']['1']:.3f} | {r['final']['1']:.3f} "
            f"| {r['base']['8']:.3f} | {r['final']['8']:.3f} | {r['elapsed_s']:.0f} |"
        )
    return "\n".join(lines)


def main(args: Args) -> dict[str, dict]:
    names = args.methods or list(methods())
    unknown = sorted(set(names) - set(methods()))
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; available: {' '.join(methods())}")
    if not args.report_only:
        # opd.py's default teacher is grpo.py's default run (docs/methods/opd.md): opd runs after it, with
        # runs/opd-teacher pointing at this grpo run when no teacher was made yet
        later = [n for n in names if n == "opd" and "grpo" in names]
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            first = [n for n in names if n not in later]
            for name, outcome in zip(first, pool.map(lambda n: attempt(n, args), first)):
                print(f"{name}: {outcome}", file=sys.stderr)
        teacher = ROOT / "runs" / "opd-teacher"
        if later and not teacher.exists():
            teacher.parent.mkdir(parents=True, exist_ok=True)
            teacher.symlink_to((ROOT / args.out_dir / "grpo").resolve())
        for name in later:
            print(f"{name}: {attempt(name, args)}", file=sys.stderr)
    results = {name: r for name in readme_order() if (r := read_run(name, args)) is not None}
    write(summary(results), args)
    return results


def write(summary: dict, args: Args) -> None:
    """``docs/defaults.json``, the section of docs/results.md and the README's two blocks, from ``summary``."""
    (ROOT / SUMMARY).write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    path = ROOT / args.results_md
    path.write_text(replace_between_markers(path.read_text(), section(summary), SECTION, by=BY))
    readme = ROOT / args.readme
    text = readme.read_text()
    for name, render in zip(README_BLOCKS, (readme_demo, readme_methods)):
        text = replace_between_markers(text, render(summary), name, by=BY)
    readme.write_text(text)
    print(section(summary))


if __name__ == "__main__":
    main(tyro.cli(Args))

"""A new user's first five minutes, timed: ``git clone`` then ``time ./run.sh``, with the install/demo split.

    python bench/first_run.py --runs 3                    # three fresh clones of this repository, one at a time

Each run clones this repository's committed HEAD into a new temporary directory (no ``.venv``, no ``cache/``,
no ``runs/``) and runs ``./run.sh`` there with empty pip and uv caches of its own (``PIP_CACHE_DIR``,
``UV_CACHE_DIR``), as on a fresh machine, and this process's environment otherwise (so the package index and
the wheel folder ``pip config`` points at, with the CPU torch wheel on this machine, are those a user has). Each output line is timestamped: **install** is the
time until ``run.sh`` prints its ``[run.sh] CPU demo`` line (creating ``.venv`` and installing
``requirements.txt``), **demo** the rest (the tiny world copied into ``cache/``, then ``algos/grpo.py --exp-name
demo``). It prints one line per run, then the medians, and the demo's last table of the last run. Measure on
an idle machine: the times are wall-clock.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import tyro

ROOT = Path(__file__).resolve().parent.parent
MARK = "[run.sh] CPU demo"


@dataclass
class Args:
    runs: int = 3
    """fresh clones, one after the other"""
    keep: bool = False
    """keep the clones (their paths are printed)"""


def first_run(workdir: Path) -> dict:
    """Clone into ``workdir/repo``, run ``./run.sh`` there; return the split and the output."""
    repo = workdir / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("RLVR_")
    }
    env.update(PIP_CACHE_DIR=str(workdir / "pip-cache"), UV_CACHE_DIR=str(workdir / "uv-cache"))
    start, demo_at, lines = time.monotonic(), None, []
    proc = subprocess.Popen(["./run.sh"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    for line in proc.stdout:
        lines.append(line)
        if demo_at is None and line.startswith(MARK):
            demo_at = time.monotonic()
    end = time.monotonic()
    if proc.wait() != 0 or demo_at is None:
        raise SystemExit(f"./run.sh in {repo} failed (status {proc.returncode}):\n" + "".join(lines[-30:]))
    return {
        "total_s": end - start,
        "install_s": demo_at - start,
        "demo_s": end - demo_at,
        "output": "".join(lines),
    }


def main(args: Args) -> None:
    results = []
    for k in range(args.runs):
        workdir = Path(tempfile.mkdtemp(prefix="first-run-"))
        result = first_run(workdir)
        results.append(result)
        print(f"run {k + 1}: total {result['total_s']:.0f} s = install {result['install_s']:.0f} s + demo {result['demo_s']:.0f} s ({workdir})", flush=True)  # fmt: skip
        if not args.keep:
            subprocess.run(["rm", "-rf", str(workdir)], check=True)
    median = {key: statistics.median(r[key] for r in results) for key in ("total_s", "install_s", "demo_s")}
    print(f"median of {args.runs}: total {median['total_s']:.0f} s = install {median['install_s']:.0f} s + demo {median['demo_s']:.0f} s")  # fmt: skip
    table = results[-1]["output"]
    print(table[table.rfind("Held-out results") :].split("\n\n")[0])


if __name__ == "__main__":
    main(tyro.cli(Args))

"""Every method's own script on a GPU, briefly: a device or dtype mismatch that the CPU tests cannot see.

``bench/gpu_check.py`` times grpo.py's sampler and update at the real model's shape; this script runs each
``algos/X.py`` end to end on the tiny world with ``--device cuda``: 3 steps with a checkpoint at step 2 and
an evaluation at step 3, then ``--resume`` to step 4, then ``./run.sh eval`` (``bench/eval.py``) on the
run's newest checkpoint, and grpo.py once more in bfloat16. Each method runs in its own processes (a
failure in one does not stop the others), ``--jobs`` at a time. A run passes when every process exits 0,
the metrics reach step 4 and no logged loss or reward is NaN or infinite. One line per run is appended to
``gpu_smoke.jsonl`` under ``--out`` as it finishes (the tail of stderr on failure), and the script stops
starting runs at ``--deadline-s``.

    PYTHONPATH=. python bench/gpu_smoke.py --out "$OUT"                    # on the GPU machine
    PYTHONPATH=. .venv/bin/python bench/gpu_smoke.py --methods grpo --device cpu --out runs/gpu_smoke

The smoke sizes are those of the registry-driven tests (tests/smoke.py): 2 prompts × 4 completions, 8 new
tokens, plus each method's ``smoke_flags``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import tyro

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from smoke import smoke_flags  # noqa: E402

from common.registry import methods  # noqa: E402
from common.tracking import read_jsonl  # noqa: E402


@dataclass
class Args:
    methods: tuple[str, ...] = ()
    """method keys (default: every file of the registry)"""
    device: str = "cuda"
    """torch device for every run"""
    bf16: bool = True
    """also run grpo.py with --dtype bfloat16 (when grpo is among the methods)"""
    jobs: int = 6
    """runs at a time"""
    deadline_s: float = 240.0
    """no run starts after this many seconds"""
    out: str = os.environ.get("OUT") or "runs/gpu_smoke"
    """where gpu_smoke.jsonl goes"""


def _finite_metrics(run_dir: Path) -> tuple[int, list[str]]:
    rows = read_jsonl(run_dir / "metrics.jsonl")
    bad = [f"step {r['step']} {k}={v}" for r in rows for k, v in r.items()
           if k in ("loss", "reward_mean", "grad_norm") and isinstance(v, float) and not math.isfinite(v)]  # fmt: skip
    return max((r["step"] for r in rows), default=-1), bad


def smoke(key: str, device: str, *extra: str) -> dict:
    """One method: 3 steps, resume to 4, evaluate the newest checkpoint. Returns its result line."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    start, result = time.time(), {"method": key, "flags": list(extra)}
    with tempfile.TemporaryDirectory() as tmp:
        base = [sys.executable, str(ROOT / "algos" / f"{key}.py"), *smoke_flags(key, f"--device={device}", *extra),
                f"--output-dir={tmp}", "--run-name=run", "--save-every=2", "--eval-every=3"]  # fmt: skip
        steps = [("train", [*base, "--num-steps=3"]), ("resume", [*base, "--num-steps=4", "--resume"]),
                 ("eval", [sys.executable, str(ROOT / "bench" / "eval.py"), f"--model={tmp}/run", "--problems=4",
                           "--n=2", "--max-new-tokens=8", f"--device={device}", f"--output={tmp}/eval.json"])]  # fmt: skip
        for name, cmd in steps:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                result.update(status="error", stage=name, rc=proc.returncode, stderr=proc.stderr[-3000:])
                break
        else:
            last, bad = _finite_metrics(Path(tmp) / "run")
            ok = last == 4 and not bad
            result.update(status="ok" if ok else "error", last_step=last, non_finite=bad)
            result["eval_pass@1"] = (
                json.loads((Path(tmp) / "eval.json").read_text()).get("pass@k", {}).get("1")
            )
    result["seconds"] = round(time.time() - start, 1)
    return result


def main(args: Args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keys = list(args.methods or methods())
    unknown = sorted(set(keys) - set(methods()))
    if unknown:
        raise SystemExit(f"--methods: unknown method(s) {unknown}; known: {sorted(methods())}")
    runs = [(k, ()) for k in keys] + (
        [("grpo", ("--dtype=bfloat16",))] if args.bf16 and "grpo" in keys else []
    )
    t0, failed = time.time(), 0

    def job(item):
        key, extra = item
        if time.time() - t0 > args.deadline_s:
            return {"method": key, "flags": list(extra), "status": "skipped (deadline)"}
        return smoke(key, args.device, *extra)

    with ThreadPoolExecutor(args.jobs) as pool, open(out / "gpu_smoke.jsonl", "a") as log:
        for result in pool.map(job, runs):
            failed += result["status"] == "error"
            log.write(json.dumps(result) + "\n")
            log.flush()
            print(f"{result['method']:>14} {' '.join(result['flags']):<16} {result['status']:<8} "
                  f"{result.get('stage', '')} {result.get('seconds', '')}s", flush=True)  # fmt: skip
    print(f"{len(runs) - failed}/{len(runs)} not failed; {out / 'gpu_smoke.jsonl'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args)))

"""Training-time statistics of finished runs: the mean over a run's steps of logged metrics, per run and per
method over seeds (how often DAPO's filter dropped groups, how many rounds Reinforce-Ada drew, how many of
GRPO's groups had no signal):

    PYTHONPATH=. .venv/bin/python -m bench.run_stats runs/compare-all/runs/{grpo,dapo}__{1,2,3} \\
        --keys zero_std_frac gen_rounds kept_frac samples_generated

Each run directory's ``metrics.jsonl`` is read; a step that does not log a key is skipped for that key (step
0, the base evaluation, logs none of the training metrics). Runs named ``METHOD__SEED`` (as ``./run.sh
compare`` names them) are grouped under METHOD, mean ± std over their seeds.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from common.tracking import markdown_table, read_jsonl


def run_means(records: list[dict], keys: list[str]) -> dict[str, float | None]:
    """Mean over the steps that log each key (None if none does).

    >>> run_means([{"step": 0}, {"step": 1, "a": 1.0}, {"step": 2, "a": 3.0, "b": 2.0}], ["a", "b", "c"])
    {'a': 2.0, 'b': 2.0, 'c': None}
    """
    out = {}
    for key in keys:
        values = [r[key] for r in records if isinstance(r.get(key), (int, float))]
        out[key] = sum(values) / len(values) if values else None
    return out


def fmt(values: list[float | None]) -> str:
    """'mean ± std' over the values that are not None ('—' for none).

    >>> fmt([1.0, 2.0]), fmt([0.5]), fmt([None])
    ('1.500 ± 0.707', '0.500', '—')
    """
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories (each with a metrics.jsonl)")
    parser.add_argument("--keys", nargs="+", required=True, help="logged metrics to average over the steps")
    args = parser.parse_args()
    by_method: dict[str, list[dict]] = {}
    rows = []
    for run in map(Path, args.runs):
        path = run / "metrics.jsonl"
        if not path.is_file():
            raise SystemExit(f"{path}: no such file (is {run} a finished run directory?)")
        means = run_means(read_jsonl(path), args.keys)
        rows.append([run.name, *(fmt([means[k]]) for k in args.keys)])
        by_method.setdefault(run.name.split("__")[0], []).append(means)
    print(markdown_table(rows, ["run", *args.keys], max_chars=None))
    print()
    rows = [[m, len(r), *(fmt([x[k] for x in r]) for k in args.keys)] for m, r in by_method.items()]
    print(markdown_table(rows, ["method", "runs", *args.keys], max_chars=None))


if __name__ == "__main__":
    main()

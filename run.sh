#!/usr/bin/env bash
# One entry point for everything:
#   ./run.sh                 the CPU demo: build the tiny world (cached), evaluate the base policy,
#                            train it with algos/grpo.py, evaluate again, print a before/after table
#   ./run.sh ALGO [flags]    python algos/ALGO.py [flags]   (e.g. ./run.sh grpo --help)
#   ./run.sh test [args]     the test suite (pytest args pass through, e.g. ./run.sh test -m "not slow")
#
# On first use it creates .venv/ next to this file and installs requirements.txt into it (again when
# requirements.txt changes). Set RLVR_PYTHON=/path/to/python to use an environment of your own instead.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [[ -n "${RLVR_PYTHON:-}" ]]; then
  PY="$RLVR_PYTHON"
else
  VENV="$ROOT/.venv"
  PY="$VENV/bin/python"
  STAMP="$VENV/.requirements.sha256"
  WANT="$(sha256sum "$ROOT/requirements.txt" | cut -d' ' -f1)"
  if [[ ! -x "$PY" || ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
    echo "[run.sh] installing requirements into $VENV (first run only; a few minutes)..." >&2
    [[ -x "$PY" ]] || python3 -m venv "$VENV"
    "$PY" -m pip install --quiet --upgrade pip
    "$PY" -m pip install --quiet -r "$ROOT/requirements.txt"
    echo "$WANT" > "$STAMP"
  fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"

cmd="${1:-demo}"
[[ $# -gt 0 ]] && shift
case "$cmd" in
  demo)
    echo "[run.sh] CPU demo: GRPO on the tiny built-in world (about 10 minutes on 2 cores; logs in runs/)" >&2
    exec "$PY" "$ROOT/algos/grpo.py" --exp-name demo "$@" ;;
  test|tests)
    exec "$PY" -m pytest "$ROOT/tests" "$@" ;;
  -h|--help|help)
    sed -n '2,10p' "$0"; echo "algorithms: $(cd "$ROOT/algos" && ls *.py | sed 's/\.py$//' | tr '\n' ' ')"; exit 0 ;;
  *)
    if [[ ! -f "$ROOT/algos/$cmd.py" ]]; then
      echo "run.sh: unknown algorithm '$cmd'; available: $(cd "$ROOT/algos" && ls *.py | sed 's/\.py$//' | tr '\n' ' ')" >&2
      exit 2
    fi
    exec "$PY" "$ROOT/algos/$cmd.py" "$@" ;;
esac

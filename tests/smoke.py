"""The short runs that the registry-driven tests give every method (tests/test_faults.py, test_numerics.py,
test_vllm.py): grpo.py's shared flags at a tiny size, plus the method's own ``METHOD.smoke_flags``."""

import tyro

from common.registry import load_method

# 2 prompts x 4 completions, 8 new tokens, a 2-problem evaluation with 2 samples: milliseconds per step on
# the random model of tests/conftest.py, seconds on the tiny world.
SMOKE_FLAGS = [
    "--prompts-per-step=2", "--group-size=4", "--micro-batch-size=8", "--max-new-tokens=8",
    "--eval-problems=2", "--eval-n=2", "--eval-every=0", "--save-every=100", "--log-completions-every=1",
]  # fmt: skip


def smoke_flags(key: str, *flags: str) -> list[str]:
    """The command-line flags of a short run of ``algos/<key>.py``: the shared ones, the method's
    ``smoke_flags``, then ``flags`` (later flags win)."""
    return [*SMOKE_FLAGS, *load_method(key).info.smoke_flags, *flags]


def smoke_args(key: str, *flags: str, **fields):
    """``algos/<key>.py``'s ``Args`` for a short run (``smoke_flags``), with ``fields`` set on top."""
    module = load_method(key).module
    args = tyro.cli(module.Args, args=smoke_flags(key, *flags))
    for name, value in fields.items():
        setattr(args, name, value)
    return args

"""The worked examples in the docstrings are true: every doctest of `algos/`, `common/` and `bench/` runs
(an example marked `# doctest: +SKIP` needs a model or a run directory and is shown, not run)."""

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = [f"{p.parent.name}.{p.stem}" for folder in ("algos", "common", "bench") for p in sorted((ROOT / folder).glob("*.py")) if p.stem != "__init__"]  # fmt: skip


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, (
        f"{result.failed} of {result.attempted} examples in {name} failed (run: python -m doctest -v)"
    )

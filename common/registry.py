"""The registry of methods, kept by the algorithm files themselves.

Every ``algos/X.py`` declares one ``METHOD = MethodInfo(...)`` block near its imports: what a reader, the
tests and the comparison harness need to know about it. ``methods()`` finds the files by glob, so adding a
method is adding a file: the README table test, ``bench/compare.py``, and the bad-input, fault, resume,
vLLM, command, diff and flag tests all iterate this registry, and a file without the block fails them.

    >>> from common.registry import methods
    >>> methods()["grpo"].info.name  # doctest: +SKIP
    'GRPO'

This module imports nothing of ``common``; it imports the algorithm files only when ``methods()`` is called.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

ALGOS_DIR = Path(__file__).resolve().parent.parent / "algos"
GRADIENT_TIERS = {
    1: "exact: an advantage from rewards times log π; its expectation by conditioning on each sample's reward",
    2: "exact: sampling depends on outcomes (filters, adaptive rounds); by enumerating reward patterns",
    3: "no exact form (an auxiliary model or data); a Monte-Carlo check carries the test",
}


@dataclass(frozen=True)
class MethodInfo:
    name: str
    """the method's name as its paper writes it, e.g. "GRPO" """
    paper: str
    """authors, title and where: e.g. "Shao et al., DeepSeekMath, arXiv 2402.03300 (Section 4.1)" """
    arxiv: str
    """the arXiv id of the paper (the README links https://arxiv.org/abs/<id>)"""
    change: str
    """one line: what the method changes against grpo.py (the README's methods table shows it)"""
    gradient_tier: int
    """how its expected gradient can be checked exactly (``GRADIENT_TIERS``)"""
    gradient_claim: str
    """what the method's gradient estimator claims (unbiased, biased by design and how, an identity) or,
    for tier 3, why no exact form applies"""
    verl: str = "no"
    """whether and how it scales out through verl (docs/verl.md): the README's verl column"""
    vllm: bool = True
    """runs with ``--rollout vllm`` (tests/test_vllm.py runs it so)"""
    contradiction: tuple[dict, str] | None = None
    """flags that contradict the method and a fragment of the error its ``validate()`` must give
    (tests/test_bad_input.py), e.g. ``({"group_size": 1}, "--group-size must be >= 2")``"""
    variants: dict[str, list[str]] = field(default_factory=dict)
    """further configurations of this file for ``./run.sh compare``: name -> flags (e.g. NSR's objectives)"""
    compare_default: bool = False
    """in ``./run.sh compare``'s default set"""
    min_new_tokens: int = 0
    """``./run.sh compare`` gives it at least this many new tokens (completions longer than the answer)"""
    smoke_flags: tuple[str, ...] = ()
    """flags the registry-driven smoke tests add to their short runs (e.g. a smaller warm-up stage)"""


@dataclass(frozen=True)
class Method:
    key: str
    """the file's stem: ``./run.sh <key>`` runs it"""
    module: ModuleType
    info: MethodInfo


def method_files() -> list[Path]:
    """Every algorithm file, sorted by name."""
    return sorted(p for p in ALGOS_DIR.glob("*.py") if p.name != "__init__.py")


def load_method(key: str) -> Method:
    """Import ``algos/<key>.py`` and read its ``METHOD`` block; a file without one fails in one line."""
    module = importlib.import_module(f"algos.{key}")
    info = getattr(module, "METHOD", None)
    if not isinstance(info, MethodInfo):
        raise TypeError(f"algos/{key}.py has no METHOD = MethodInfo(...) block (see CONTRIBUTING.md)")
    if info.gradient_tier not in GRADIENT_TIERS:
        raise ValueError(f"algos/{key}.py: METHOD.gradient_tier must be one of {sorted(GRADIENT_TIERS)}")
    return Method(key, module, info)


def methods() -> dict[str, Method]:
    """Every method of ``algos/``, by file stem, in file-name order."""
    return {p.stem: load_method(p.stem) for p in method_files()}


def configurations() -> dict[str, tuple[str, list[str]]]:
    """Every configuration ``./run.sh compare`` can run: name -> (file stem, flags). Each file with its
    defaults under its own stem, then its ``variants``.

    >>> configurations()["grpo"]
    ('grpo', [])
    """
    out: dict[str, tuple[str, list[str]]] = {}
    for key, method in methods().items():
        out[key] = (key, [])
        for name, flags in method.info.variants.items():
            if name in out:
                raise ValueError(f"algos/{key}.py: variant {name!r} is already a configuration")
            out[name] = (key, list(flags))
    return out

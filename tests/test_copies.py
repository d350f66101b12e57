"""The small pure functions that several scripts copy on purpose (each file reads alone) are copied byte for
byte: every function of algos/grpo.py that another algos/*.py also defines must have exactly grpo.py's
source there, so a fix cannot reach only one file. A function that differs on purpose has another name."""

import ast
from pathlib import Path

import pytest

ALGOS = Path(__file__).resolve().parent.parent / "algos"
SHARED = ("k3_kl", "clipped_surrogate", "aggregate_loss")  # copied into most files
SKELETON = ("validate", "main", "update_policy")  # every script's own: its flags, its loop, its update


def top_level_functions(path: Path) -> dict[str, str]:
    """Module-level function name -> its exact source text (``ast.get_source_segment``, decorators included)."""
    source = path.read_text()
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            decorators = "".join("@" + ast.get_source_segment(source, d) + "\n" for d in node.decorator_list)
            out[node.name] = decorators + ast.get_source_segment(source, node)
    return out


GRPO = top_level_functions(ALGOS / "grpo.py")
OTHERS = sorted(p for p in ALGOS.glob("*.py") if p.name not in ("grpo.py", "__init__.py"))


def test_grpo_defines_the_shared_functions():
    assert set(SHARED) <= set(GRPO)


@pytest.mark.parametrize("path", OTHERS, ids=lambda p: p.name)
def test_every_copy_of_a_grpo_function_is_identical(path):
    functions = top_level_functions(path)
    shared = sorted(set(functions) & set(GRPO) - set(SKELETON))
    differing = [name for name in shared if functions[name] != GRPO[name]]
    assert not differing, (
        f"algos/{path.name}: {', '.join(differing)} differ(s) from algos/grpo.py's; copy grpo.py's byte for "
        "byte, or give a deliberately different function another name"
    )


def test_the_check_sees_a_one_character_difference(tmp_path):
    copy = (ALGOS / "grpo.py").read_text().replace("def k3_kl(", "def k3_kl(  ", 1)
    (tmp_path / "x.py").write_text(copy)
    functions = top_level_functions(tmp_path / "x.py")
    assert functions["k3_kl"] != GRPO["k3_kl"]
    assert all(functions[name] == GRPO[name] for name in GRPO if name != "k3_kl")


def test_every_function_defined_in_two_files_is_one_copy():
    """Not only grpo.py's: a function that two method files both define (e.g. reinforce_pp.py's
    kl_folded_rewards in ppo.py) is the same source in both; a different function gets a different name."""
    sources: dict[str, dict[str, list[str]]] = {}  # name -> source -> files
    for path in sorted(ALGOS.glob("*.py")):
        for name, source in top_level_functions(path).items():
            if name not in SKELETON:
                sources.setdefault(name, {}).setdefault(source, []).append(path.name)
    differing = {name: list(versions.values()) for name, versions in sources.items() if len(versions) > 1}
    assert not differing, f"same name, different source (files grouped by version): {differing}"

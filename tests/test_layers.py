"""common/ is layered: each module imports only modules below it (counting imports inside functions), so
there is no import cycle and the helpers every script uses never reach up to the world builder."""

import ast
from pathlib import Path

COMMON = Path(__file__).resolve().parent.parent / "common"

# Lowest first. A module may import only modules that come before it. The helpers the scripts use end at
# checkpoint; tiny_world (the builder) measures a policy with them, and preflight, which every script
# calls, is the one place that makes a world on first use (tiny_world.ensure_world).
LAYERS = [
    "registry",
    "hub",
    "verify",
    "tiny_task",
    "data",
    "model",
    "rollout_types",
    "rollout_correction",
    "vllm_rollout",
    "rollout",
    "mismatched_sampler",
    "tracking",
    "evaluate",
    "checkpoint",
    "tiny_world",
    "preflight",
    "run",
]
HELPERS = ["data", "verify", "rollout", "vllm_rollout", "model", "evaluate", "tracking", "checkpoint",
           "preflight", "tiny_task"]  # fmt: skip


def common_imports(path: Path) -> set[str]:
    """The common modules ``path`` imports anywhere in it (module level, functions, branches)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "common" and len(parts) > 1 and (COMMON / f"{parts[1]}.py").is_file():
                found.add(parts[1])
    return found - {path.stem}


def import_graph() -> dict[str, set[str]]:
    return {p.stem: common_imports(p) for p in sorted(COMMON.glob("*.py")) if p.stem != "__init__"}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path [a, b, ..., a], or None.

    >>> find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}})
    ['a', 'b', 'c', 'a']
    >>> find_cycle({"a": {"b"}, "b": set()}) is None
    True
    """
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [node, nxt] if nxt in path else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [node])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [])):
            return cycle
    return None


def test_the_import_walker_sees_imports_inside_functions(tmp_path):
    source = "import os\nfrom common.model import load_policy\ndef f():\n    import common.data\n    from common import verify\n"
    (tmp_path / "x.py").write_text(source)
    assert common_imports(tmp_path / "x.py") == {"model", "data", "verify"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_every_common_module_has_a_layer():
    missing = sorted(set(import_graph()) - set(LAYERS) - {"__init__"})
    assert not missing, f"common/{missing[0]}.py is not in LAYERS (tests/test_layers.py): give it its place"
    assert set(HELPERS) <= set(LAYERS)


def test_common_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle in common/: " + " -> ".join(cycle)


def test_every_module_imports_only_modules_below_it():
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = [
        f"common/{module}.py imports common.{target}, which is not below it in LAYERS"
        for module, targets in import_graph().items()
        for target in sorted(targets)
        if rank[target] >= rank[module]
    ]
    assert not upward, upward[0]


def test_resolving_a_world_does_not_need_the_builder():
    graph = import_graph()

    def reach(module: str, seen: set[str]) -> set[str]:
        for target in graph[module] - seen:
            seen.add(target)
            reach(target, seen)
        return seen

    for helper in ("data", "model", "rollout", "vllm_rollout", "evaluate", "tracking", "tiny_task"):
        assert "tiny_world" not in reach(helper, set()), f"common.{helper} reaches common.tiny_world"
    assert graph["tiny_task"] == set(), f"common.tiny_task imports {graph['tiny_task']}"


def test_the_readme_layout_matches_the_tree():
    """README's Layout section names every common module (in LAYERS' order) and every top-level folder."""
    readme = (COMMON.parent / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    common_part = layout.split("common/", 1)[1].split("\nworlds/", 1)[0]
    named = [word.strip(",():") for word in common_part.split()]
    positions = [named.index(module) for module in LAYERS if module in named]
    missing = [module for module in LAYERS if module not in named]
    assert not missing, f"README's Layout does not name common/{missing[0]}.py"
    assert positions == sorted(positions), "README's Layout lists common/ out of LAYERS' order"
    for folder in ("algos", "common", "worlds", "tests", "bench", "docs"):
        assert f"\n{folder}/" in layout and (COMMON.parent / folder).is_dir(), folder


def test_the_trl_benchmark_worker_imports_without_matplotlib_or_tensorboard():
    """bench/trl_bench.py's TRL worker runs in an environment made by its documented install line, which has
    neither matplotlib nor tensorboard: the common modules it imports must not need them at import time."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('matplotlib', 'tensorboard') or name.startswith('torch.utils.tensorboard'):\n"
        "            raise ImportError(f'{name} is not installed in the TRL environment')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import common.tiny_world, common.verify, common.data, common.evaluate, common.model\n"
        "print('ok')\n"
    )
    root = COMMON.parent
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert proc.stdout.strip() == "ok", proc.stderr[-2000:]

"""The method contract (CONTRIBUTING.md), checked for every file of the registry:

- every ``algos/*.py`` declares ``METHOD = MethodInfo(...)`` (``common.registry``);
- ``diff -U0 algos/grpo.py algos/X.py`` is the method: every hunk outside the module docstring, the ``METHOD``
  block, the ``Args`` help texts and the imports carries a ``# Modification k (vs GRPO)`` tag or sits directly
  under one, the docstring lists ``Modification k: <one line>`` for exactly the tags of the code, and the diff
  stays within a size budget;
- one flag name, one meaning: a field of ``Args`` that two files declare has the same type and help text;
- every file's update is ``update_policy(model, optimizer, batch, args)``, and ``main()`` reaches its
  algorithm early.
"""

import ast
import inspect
import re
import subprocess
from pathlib import Path

import pytest

from common.registry import load_method, method_files, methods

ROOT = Path(__file__).resolve().parent.parent
GRPO = ROOT / "algos" / "grpo.py"
FILES = [p for p in method_files() if p.name != "grpo.py"]
TAG = re.compile(r"Modification (\d+) \(vs GRPO\)")
DIFF_BUDGET = {"ppo": 450}  # added + removed lines of the diff that count; a value head and a warm-up stage
DEFAULT_DIFF_BUDGET = 350


def exempt_lines(path: Path) -> set[int]:
    """1-based line numbers that the diff rules do not look at: the module docstring, the ``METHOD`` block,
    the help text under every ``Args`` field, imports, and the ``exp_name`` default."""
    source = path.read_text()
    tree = ast.parse(source)
    out: set[int] = set()

    def span(node: ast.AST) -> range:
        return range(node.lineno, node.end_lineno + 1)

    for i, node in enumerate(tree.body):
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            out.update(span(node))  # the module docstring
        elif isinstance(node, ast.Import | ast.ImportFrom):
            out.update(span(node))
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "METHOD" for t in node.targets):
            out.update(span(node))
        elif isinstance(node, ast.ClassDef) and node.name == "Args":
            for field in node.body:
                if isinstance(field, ast.Expr) and isinstance(field.value, ast.Constant):
                    out.update(span(field))  # a help text
                elif isinstance(field, ast.AnnAssign) and getattr(field.target, "id", "") == "exp_name":
                    out.update(span(field))
    return out


def diff_hunks(a: Path, b: Path) -> list[tuple[list[int], list[int], int]]:
    """``diff -U0 a b`` as (removed line numbers of a, added line numbers of b, the b line the hunk follows)."""
    out = subprocess.run(["diff", "-U0", str(a), str(b)], capture_output=True, text=True).stdout
    hunks = []
    for header in re.finditer(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@", out, flags=re.M):
        a_start, a_len, b_start, b_len = (int(x) if x is not None else 1 for x in header.groups())
        removed = list(range(a_start, a_start + a_len))
        added = list(range(b_start, b_start + b_len))
        hunks.append((removed, added, b_start if b_len else b_start + 1))
    return hunks


def covered_by_a_tag(lines: list[str], added: list[int], first: int) -> bool:
    """A hunk is covered when one of its added lines holds a tag, or when a tag sits directly above it: walking
    up from its first line over lines indented at least as deeply, up to the first blank line or the first line
    indented less (that header line included)."""
    if any(TAG.search(lines[n - 1]) for n in added):
        return True
    start = first - 1  # 0-based index of the hunk's first line in b (or of the line a deletion precedes)
    here = lines[start] if start < len(lines) else ""
    indent = len(here) - len(here.lstrip()) if here.strip() else None
    for i in range(start - 1, -1, -1):
        line = lines[i]
        if not line.strip():
            return False
        if TAG.search(line):
            return True
        line_indent = len(line) - len(line.lstrip())
        if indent is None:
            indent = line_indent
        elif line_indent < indent:
            return False
    return False


def test_covered_by_a_tag_reads_blocks():
    lines = [
        "def f():",
        "    # Modification 1 (vs GRPO): doubled",
        "    x = 2",
        "    if x:",
        "        y = 3",
        "",
        "    z = 4",
    ]
    assert covered_by_a_tag(lines, [3], 3)  # directly under the tag
    assert not covered_by_a_tag(lines, [5], 5)  # inside a nested block: its header has no tag
    assert not covered_by_a_tag(lines, [7], 7)  # after a blank line
    assert covered_by_a_tag(lines, [7], 7) is False and covered_by_a_tag(["# Modification 2 (vs GRPO)"], [1], 1)


def test_every_file_declares_its_method():
    registry = methods()  # a file without METHOD = MethodInfo(...) raises here, naming the file
    assert set(registry) == {p.stem for p in method_files()}
    for key, method in registry.items():
        assert method.info.arxiv and re.fullmatch(r"\d{4}\.\d{4,5}", method.info.arxiv), key
        assert len(method.info.change) <= 120, f"{key}: METHOD.change is the README's one line"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_hunk_of_the_diff_is_tagged(path):
    lines = path.read_text().splitlines()
    exempt_b, exempt_a = exempt_lines(path), exempt_lines(GRPO)
    untagged = []
    for removed, added, first in diff_hunks(GRPO, path):
        counted_added = [n for n in added if n not in exempt_b]
        counted_removed = [n for n in removed if n not in exempt_a]
        if not counted_added and not counted_removed:
            continue
        if not covered_by_a_tag(lines, counted_added or added, counted_added[0] if counted_added else first):
            untagged.append(first)
    assert not untagged, (
        f"algos/{path.name}: the diff against grpo.py has untagged hunks at lines {untagged}; put a "
        "'# Modification k (vs GRPO): ...' comment on or directly above each change (CONTRIBUTING.md)"
    )


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_the_docstring_lists_exactly_the_tags(path):
    source = path.read_text()
    docstring = ast.get_docstring(ast.parse(source)) or ""
    listed = [int(k) for k in re.findall(r"^Modification (\d+): \S", docstring, flags=re.M)]
    code = source.split('"""', 2)[2]  # after the module docstring
    tagged = sorted({int(k) for k in TAG.findall(code)})
    assert listed == tagged, (
        f"algos/{path.name}: the docstring lists Modification {listed} but the code tags {tagged}; the "
        "docstring has one line 'Modification k: <what changes>' per tag, in order"
    )


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_the_diff_shows_the_method_within_its_budget(path):
    exempt_b, exempt_a = exempt_lines(path), exempt_lines(GRPO)
    size = sum(
        len([n for n in added if n not in exempt_b]) + len([n for n in removed if n not in exempt_a])
        for removed, added, _ in diff_hunks(GRPO, path)
    )
    budget = DIFF_BUDGET.get(path.stem, DEFAULT_DIFF_BUDGET)
    assert size <= budget, f"algos/{path.name}: {size} changed lines against grpo.py (budget {budget})"


def args_fields(path: Path) -> dict[str, tuple[str, str]]:
    """``Args`` field name -> (its annotation's source, its help text)."""
    source = path.read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == "Args":
            out, body = {}, node.body
            for i, field in enumerate(body):
                if isinstance(field, ast.AnnAssign):
                    after = body[i + 1] if i + 1 < len(body) else None
                    doc = after.value.value if isinstance(after, ast.Expr) else ""
                    annotation = " ".join(ast.get_source_segment(source, field.annotation).split())
                    out[field.target.id] = (annotation.replace("[ ", "[").replace(" ]", "]"), doc)
            return out
    raise AssertionError(f"{path.name} has no Args")


def test_one_flag_name_one_meaning():
    """A flag two files share has one type and one help text (defaults may differ: each file's docstring
    gives its default and the source). A quantity that differs gets a name of its own."""
    seen: dict[str, tuple[str, tuple[str, str]]] = {}
    clashes = []
    for path in method_files():
        for name, meaning in args_fields(path).items():
            if name in seen and seen[name][1] != meaning:
                other, (t, h) = seen[name]
                clashes.append(f"--{name.replace('_', '-')}: {other}: [{t}] {h!r} vs {path.stem}: {meaning}")
            seen.setdefault(name, (path.stem, meaning))
    assert not clashes, "\n".join(clashes)


@pytest.mark.parametrize("path", method_files(), ids=lambda p: p.stem)
def test_the_update_is_callable_with_one_signature(path):
    module = load_method(path.stem).module
    assert list(inspect.signature(module.update_policy).parameters) == ["model", "optimizer", "batch", "args"]


@pytest.mark.parametrize("path", method_files(), ids=lambda p: p.stem)
def test_main_reaches_its_algorithm_early(path):
    lines = inspect.getsource(load_method(path.stem).module.main).splitlines()
    first = next((i for i, line in enumerate(lines) if "# ALGO LOGIC" in line or TAG.search(line)), None)
    assert first is not None and first < 60, f"algos/{path.name}: main()'s first ALGO LOGIC line is {first}"


def test_grpo_is_short():
    assert len(GRPO.read_text().splitlines()) <= 350

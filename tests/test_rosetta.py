"""docs/rosetta.md stays whole: every algos/*.py file has a row in each of its tables, every framework cell says
how far it was checked, and every check a cell names exists in tests/test_verl.py's or tests/test_trl.py's
CHECKS (the lists those tests hold to the check scripts)."""

import ast
import re
from pathlib import Path

from common.registry import method_files

ROOT = Path(__file__).resolve().parent.parent
PAGE = (ROOT / "docs" / "rosetta.md").read_text()
STATUSES = ("parity tested: ", "plug-in tested: ", "read only", "—", "not checked")


def checks_of(test_file: str) -> set[str]:
    """The CHECKS tuple of a test file, read without importing it."""
    tree = ast.parse((ROOT / "tests" / test_file).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["CHECKS"]:
            return set(ast.literal_eval(node.value))
    raise AssertionError(f"no CHECKS in tests/{test_file}")


def tables() -> list[tuple[list[str], list[list[str]]]]:
    """Every markdown table of the page whose first column is "method (file)": (header, rows of cells)."""
    out = []
    for block in re.findall(r"(?:^\|.*\|\n)+", PAGE, re.M):
        lines = block.strip("\n").split("\n")
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        if header[0] == "method (file)":
            out.append((header, [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[2:]]))
    return out


def test_every_method_has_a_row_in_every_table():
    files = {p.stem for p in method_files()}
    assert len(tables()) == 2
    for header, rows in tables():
        named = [re.search(r"`algos/(\w+)\.py`", row[0]) for row in rows]
        keys = [m.group(1) for m in named if m]
        assert sorted(keys) == sorted(files), (header, sorted(set(files) ^ set(keys)))
        assert any("common/rollout_correction.py" in row[0] for row in rows), "the rollout-correction row"
        assert all(len(row) == len(header) for row in rows), header


def test_every_framework_cell_says_how_far_it_was_checked():
    for header, rows in tables():
        framework_columns = [i for i, name in enumerate(header) if i > 0 and name != "flags here"]
        for row in rows:
            for i in framework_columns:
                assert any(status in row[i] for status in STATUSES), f"{row[0]} / {header[i]}: {row[i]!r}"


def test_every_named_check_exists():
    known = checks_of("test_verl.py") | checks_of("test_trl.py")
    named = []
    for _, rows in tables():
        for row in rows:
            for cell in row[1:]:
                for listed in re.findall(r"(?:parity|plug-in) tested: ((?:`\w+`(?:, )?)+)", cell):
                    named += re.findall(r"`(\w+)`", listed)
                assert cell.count(" tested: ") == len(
                    re.findall(r"(?:parity|plug-in) tested: `\w+`", cell)
                ), f"{row[0]}: a 'tested' cell names no check: {cell!r}"
    assert named and not set(named) - known, sorted(set(named) - known)

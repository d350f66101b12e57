"""The README is short and its numbers are one set: at most 150 lines, no † cells, one methods-table row per
method of the registry (grpo first), links that resolve, and the demo's table, the methods table and the
`defaults` section of docs/results.md exactly what bench/defaults.py renders from docs/defaults.json, the
summary of every method's default run on the shipped world (rewritten by `python -m bench.defaults`)."""

import json
import re
from pathlib import Path

import pytest

from bench import defaults
from bench.compare import markers
from common.registry import methods

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SUMMARY = json.loads((ROOT / defaults.SUMMARY).read_text())


def block(text: str, name: str) -> str:
    """What lies between the markers of the generated block ``name`` of ``text``."""
    begin, end = markers(name, defaults.BY)
    assert text.count(begin) == 1 and text.count(end) == 1, f"the markers of {name!r} must appear once each"
    return text.split(begin, 1)[1].split(end, 1)[0].strip()


def test_the_readme_is_at_most_150_lines_and_has_no_dagger():
    assert len(README.splitlines()) <= 150, f"README.md has {len(README.splitlines())} lines (at most 150)"
    assert "†" not in README, "a † cell: every number comes from one default run per method (bench.defaults)"


def test_the_methods_table_has_one_row_per_method_grpo_first():
    rows = [line for line in block(README, "readme-methods").splitlines() if line.startswith("| [algos/")]
    files = [re.match(r"\| \[algos/(\w+)\.py\]\(algos/(\w+)\.py\)", row).groups() for row in rows]
    assert [a for a, b in files] == [b for a, b in files]
    assert [a for a, _ in files] == ["grpo", *sorted(set(methods()) - {"grpo"})]
    for row, (name, _) in zip(rows, files):
        info = methods()[name].info
        assert f"https://arxiv.org/abs/{info.arxiv}" in row and info.change in row and info.verl in row, name
        assert f"(docs/methods/{name}.md)" in row, f"{name}'s row does not link its page"


@pytest.mark.parametrize(
    "name, render", [("readme-demo", defaults.readme_demo), ("readme-methods", defaults.readme_methods)]
)
def test_the_readme_blocks_are_what_bench_defaults_renders(name, render):
    assert block(README, name) == render(SUMMARY).strip(), (
        f"README.md's {name} block is not what bench.defaults renders from docs/defaults.json: rerun "
        "`PYTHONPATH=. .venv/bin/python -m bench.defaults --report-only` (never edit the block by hand)"
    )


def test_the_results_section_is_what_bench_defaults_renders():
    results = (ROOT / "docs" / "results.md").read_text()
    assert block(results, defaults.SECTION) == defaults.section(SUMMARY).strip()


def test_the_summary_is_of_the_shipped_world_and_of_registry_methods():
    assert SUMMARY["world"] == defaults.shipped_world(), (
        "docs/defaults.json was measured on another build of the world: rerun every default (bench.defaults)"
    )
    assert set(SUMMARY["runs"]) <= set(methods())
    for name, run in SUMMARY["runs"].items():
        assert 0 <= run["base"]["1"] <= 1 and 0 <= run["final"]["1"] <= 1 and run["seed"] == 1, name
        assert f"{name} step" in run["printed"], f"{name}: the printed table is not this method's run"


def test_every_relative_link_of_the_readme_resolves():
    targets = re.findall(r"\]\((?!https?://)([^)#]+)(?:#[^)]*)?\)", README)
    assert targets, "no links found"
    missing = sorted({t for t in targets if not (ROOT / t).exists()})
    assert not missing, f"README.md links to missing files: {missing}"


def test_the_readme_links_every_documentation_page():
    for page in ["docs/methods/", "docs/verifier.md", "docs/gpu.md", "docs/tiny-world.md", "docs/reliability.md",
                 "docs/results.md", "docs/mismatch-lab.md", "docs/verl.md", "CONTRIBUTING.md", "LICENSE"]:  # fmt: skip
        assert f"]({page})" in README, f"README.md does not link {page}"

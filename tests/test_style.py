"""How the algorithm files read (CONTRIBUTING.md), checked: `# Modification k (vs GRPO)` tags are numbered in the
order the reader meets them, and no line hides a long statement behind `# fmt: skip`."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALGOS = sorted((ROOT / "algos").glob("*.py"))
MAX_LINE = 200  # ruff's limit is 110; `# fmt: skip` lines may be longer, but not unreadably so


def modification_numbers(text: str) -> list[int]:
    """Every "Modification k" of a file (tags and references to them), in reading order.

    >>> modification_numbers("# Modification 1 (vs GRPO): x\\n# Modification 2 (vs GRPO)\\n(see Modification 1)")
    [1, 2, 1]
    """
    return [int(k) for k in re.findall(r"Modification (\d+)", text)]


@pytest.mark.parametrize("path", ALGOS, ids=[p.stem for p in ALGOS])
def test_modification_tags_are_numbered_in_reading_order(path):
    """A new number is always the next one (1, 2, 3, ...); a later mention of a number already met refers
    back to that modification (one change may touch the flags, a function and the loop)."""
    text = path.read_text()
    first_seen: list[int] = []
    for k in modification_numbers(text):
        if k not in first_seen:
            first_seen.append(k)
    assert first_seen == list(range(1, len(first_seen) + 1)), (
        f"{path.name}: first mentions in order {first_seen}"
    )
    for line in text.splitlines():
        if re.search(r"#\s*Modification \d+", line):
            assert re.search(r"# Modification \d+ \(vs GRPO\)", line), (
                f"{path.name}: tag without '(vs GRPO)': {line}"
            )


@pytest.mark.parametrize("folder", ["algos", "common", "bench", "tests"])
def test_no_line_is_over_200_characters(folder):
    long_lines = [
        f"{path.relative_to(ROOT)}:{number}: {len(line)} characters"
        for path in sorted((ROOT / folder).glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if len(line) > MAX_LINE
    ]
    assert not long_lines, long_lines

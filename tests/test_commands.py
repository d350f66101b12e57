"""The documented command lines are real: every `./run.sh ALGO ...` in a bash block of the README or of a
method's page (docs/methods/*.md) parses with that script's own flags and passes its validate(); every
method of the registry has a page with its tiny-world command and a GPU command with vLLM rollouts.

The blocks are run by bash itself (so quoting, line continuations and `$REAL` expand exactly as for a
reader), with `./run.sh` replaced by a recorder and every other command of a block skipped (a DEBUG trap):
nothing is installed, loaded or trained.
"""

import re
import subprocess
from pathlib import Path

import pytest
import tyro

from common.registry import load_method, method_files

ROOT = Path(__file__).resolve().parent.parent
ALGOS = [p.stem for p in method_files()]
PAGES = sorted((ROOT / "docs" / "methods").glob("*.md"))


def bash_commands(path: Path) -> list[list[str]]:
    """The argument lists of every `./run.sh ...` in ``path``'s bash blocks, as bash splits them."""
    blocks = re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S)
    script = "\n".join(blocks).replace("./run.sh", "record")
    recorder = 'record() { printf \'%s\\0\' "$#" "$@"; }\n'
    # a DEBUG trap that fails skips the command (extdebug): only the recorder runs, nothing else of a block
    skip_others = (
        "shopt -s extdebug\ntrap '[[ $BASH_COMMAND == record* || $BASH_COMMAND == printf* ]]' DEBUG\n"
    )
    out = subprocess.run(
        ["bash", "-c", recorder + skip_others + script + "\nprintf ''"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    fields, commands = out.split("\0")[:-1], []
    while fields:
        n = int(fields.pop(0))
        commands.append(fields[:n])
        fields = fields[n:]
    return commands


COMMANDS = [
    (path.relative_to(ROOT), command)
    for path in [ROOT / "README.md", *PAGES]
    for command in bash_commands(path)
    if command and command[0] in ALGOS
]


@pytest.mark.parametrize("where, command", COMMANDS, ids=[f"{p.name}:{c[0]}" for p, c in COMMANDS])
def test_documented_command_parses_and_validates(where, command):
    module = load_method(command[0]).module
    args = tyro.cli(module.Args, args=command[1:])
    module.validate(args)


@pytest.mark.parametrize("algo", ALGOS)
def test_every_method_has_a_page_with_its_tiny_and_gpu_commands(algo):
    page = ROOT / "docs" / "methods" / f"{algo}.md"
    assert page.is_file(), f"algos/{algo}.py has no page docs/methods/{algo}.md (CONTRIBUTING.md, step 8)"
    commands = [c for c in bash_commands(page) if c and c[0] == algo]
    assert any("--model-name-or-path" not in c for c in commands), f"{page.name}: no tiny-world command"
    assert any("vllm" in c and "--model-name-or-path" in c for c in commands), (
        f"{page.name}: no paper-scale command with --rollout vllm"
    )

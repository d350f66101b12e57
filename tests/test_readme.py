"""The README's command lines are real: every `./run.sh ALGO ...` in its bash blocks parses with that
script's own flags and passes its validate(), and every algorithm has a GPU command with vLLM rollouts.

The blocks are run by bash itself (so quoting, line continuations and `$REAL` expand exactly as for a
reader), with `./run.sh` replaced by a recorder and `.venv/bin/pip` by a no-op; nothing is installed,
loaded or trained.
"""

import importlib
import re
import subprocess
from pathlib import Path

import pytest
import tyro

ROOT = Path(__file__).resolve().parent.parent
ALGOS = sorted(p.stem for p in (ROOT / "algos").glob("*.py"))


def readme_commands() -> list[list[str]]:
    """The argument lists of every `./run.sh ...` in the README's bash blocks, as bash splits them."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    script = "\n".join(blocks).replace(".venv/bin/pip", ":").replace("./run.sh", "record")
    recorder = 'record() { printf \'%s\\0\' "$#" "$@"; }\n'
    out = subprocess.run(["bash", "-c", recorder + script], capture_output=True, text=True, check=True).stdout
    fields, commands = out.split("\0")[:-1], []
    while fields:
        n = int(fields.pop(0))
        commands.append(fields[:n])
        fields = fields[n:]
    return commands


COMMANDS = [c for c in readme_commands() if c and c[0] in ALGOS]


@pytest.mark.parametrize("command", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_readme_command_parses_and_validates(command):
    module = importlib.import_module(f"algos.{command[0]}")
    args = tyro.cli(module.Args, args=command[1:])
    module.validate(args)


def test_every_algorithm_has_a_gpu_command_with_vllm_rollouts():
    with_vllm = {c[0] for c in COMMANDS if "vllm" in c and "--model-name-or-path" in c}
    assert with_vllm == set(ALGOS), sorted(set(ALGOS) - with_vllm)

"""TRL as the oracle: runs integrations/trl/checks.py in the TRL environment.

TRL lives in its own environment, ``.venv-trl`` (made by ``./run.sh test`` from requirements-trl.txt;
``RLVR_TRL_PYTHON`` names another interpreter), so that nothing in .venv imports it. The checks (the menu's
OPSM against TRL's ``GRPOTrainer.get_off_policy_mask``; the TRL defaults that common/rollout_correction.py
quotes) run once in a subprocess; each test here asserts one of them passed and shows the subprocess's
output when it did not. Without a TRL environment the tests skip, except under CI (``CI=true``), where they
fail.
"""

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKS = (
    "trl_is_the_pinned_version_with_the_documented_defaults",
    "opsm_matches_trl_get_off_policy_mask",
    "opsm_per_token_advantages_differ_from_trl_as_documented",
    "gspo_matches_trl_sequence_importance_sampling",
    "gmpo_matches_trl_gmpo_trainer",
    "trl_cispo_and_sapo_defaults_are_the_documented_ones",
    "cispo_matches_trl_compute_loss",
    "sapo_matches_trl_compute_loss",
    "trl_has_no_dppo_or_kimi_loss",
    "opd_gradient_matches_trl_iw_opd_at_gamma_0",
    "grpo_matches_trl_loss_type_grpo",
    "dr_grpo_matches_trl_loss_type_dr_grpo",
    "dapo_matches_trl_loss_type_dapo",
)


def trl_python() -> Path:
    return Path(os.environ.get("RLVR_TRL_PYTHON") or ROOT / ".venv-trl" / "bin" / "python")


@pytest.fixture(scope="module")
def checks_output() -> str:
    python = trl_python()
    if not python.exists():
        message = f"no TRL environment at {python} (./run.sh test makes .venv-trl from requirements-trl.txt)"
        if os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run(
        [str(python), str(ROOT / "integrations" / "trl" / "checks.py")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    return f"exit status {result.returncode}\n{result.stdout}\n{result.stderr}"


def test_every_check_is_listed_here():
    """The check script's names are exactly CHECKS (a new check is not silently left out)."""
    source = (ROOT / "integrations" / "trl" / "checks.py").read_text()
    assert tuple(re.findall(r"@check\ndef (\w+)\(", source)) == CHECKS


@pytest.mark.parametrize("name", CHECKS)
def test_trl_check(checks_output, name):
    assert re.search(rf"^PASS {name}$", checks_output, re.M), checks_output


def test_trl_checks_all_passed(checks_output):
    assert checks_output.startswith("exit status 0\n"), checks_output

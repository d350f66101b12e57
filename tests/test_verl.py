"""verl as the oracle and as the engine: runs integrations/verl/checks.py in the verl environment.

verl 0.9.1 pins transformers<5.11, so it lives in its own environment, ``.venv-verl`` (made by
``./run.sh test`` from requirements-verl.txt; ``RLVR_VERL_PYTHON`` names another interpreter). The
checks (parity of verl's GRPO advantages, loss aggregation and PPO policy loss with ours; verl's
registries and ``compute_advantage`` / ``get_policy_loss_fn`` with the ``rlvr_*`` plug-ins; verl's
rollout-correction helper and presets against common/rollout_correction.py; lazy loading; the version guard) run once in a subprocess; each test here asserts one of them passed and shows the
subprocess's output when it did not. Without a verl environment the tests skip, except under CI
(``CI=true``), where they fail.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKS = (
    "algos_never_import_verl",
    "other_verl_version_fails_in_one_line",
    "grpo_advantages_match_verl",
    "loss_aggregation_matches_verl_agg_loss",
    "vanilla_policy_loss_matches_clipped_surrogate",
    "vanilla_policy_loss_dual_clip_is_the_difference",
    "rloo_and_reinforce_pp_advantages_match_verl",
    "gae_matches_verl",
    "value_loss_matches_verl",
    "ppo_token_policy_loss_and_kl_reward_match_verl",
    "rollout_is_weights_match_verl",
    "rollout_rejection_matches_verl",
    "verl_presets_are_modes_of_the_menu",
    "gspo_loss_matches_verl",
    "gmpo_loss_matches_verl_geo_mean",
    "plugin_docstring_examples",
    "registries_resolve_our_names",
    "trainer_compute_advantage_returns_the_files_advantages",
    "policy_losses_through_get_policy_loss_fn",
    "docs_recipes_compose_with_verl_config",
    "cispo_loss_matches_verl",
    "sapo_loss_matches_verl",
    "dppo_losses_match_verl",
    "kimi_loss_matches_verl_dro",
    "opd_loss_matches_verl_distillation",
    "maxrl_estimator_matches_maxrl_advantages",
    "rec_matches_trinity_rft",
)


def verl_python() -> Path:
    return Path(os.environ.get("RLVR_VERL_PYTHON") or ROOT / ".venv-verl" / "bin" / "python")


@pytest.fixture(scope="module")
def checks_output() -> str:
    python = verl_python()
    if not python.exists():
        message = (
            f"no verl environment at {python} (./run.sh test makes .venv-verl from requirements-verl.txt)"
        )
        if os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail(message)
        pytest.skip(message)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VERL_USE_EXTERNAL_PLUGINS": "none"}
    env.pop("VERL_USE_EXTERNAL_MODULES", None)  # the laziness check needs a process without verl imported
    result = subprocess.run(
        [str(python), str(ROOT / "integrations" / "verl" / "checks.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return f"exit status {result.returncode}\n{result.stdout}\n{result.stderr}"


def test_every_check_is_listed_here():
    """The check script's names are exactly CHECKS (a new check is not silently left out)."""
    source = (ROOT / "integrations" / "verl" / "checks.py").read_text()
    assert tuple(re.findall(r"@check\ndef (\w+)\(", source)) == CHECKS


@pytest.mark.parametrize("name", CHECKS)
def test_verl_check(checks_output, name):
    assert re.search(rf"^PASS {name}$", checks_output, re.M), checks_output


def test_verl_checks_all_passed(checks_output):
    assert checks_output.startswith("exit status 0\n"), checks_output


def test_algos_never_import_verl_here():
    """In this environment too: importing every algos/*.py leaves verl unimported."""
    code = (
        "import importlib, pathlib, sys\n"
        "for p in sorted(pathlib.Path('algos').glob('*.py')): importlib.import_module('algos.' + p.stem)\n"
        "print(sorted(m for m in sys.modules if m == 'verl' or m.startswith('verl.')))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"

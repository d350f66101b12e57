"""`./run.sh eval` (bench/eval.py): held-out pass@k and pass^k of a model or a run's checkpoint on the tiny
world, written as JSON; bad input ends in one line naming the flag, before anything loads."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bench.eval as eval_script
from common.checkpoint import save_checkpoint
from common.evaluate import pass_at_k, pass_hat_k

ROOT = Path(__file__).resolve().parent.parent
BUDGET = {"problems": 8, "n": 4, "seed": 3}


@pytest.fixture(scope="module")
def base_report(tiny_world_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "tiny.json"
    returned = eval_script.main(eval_script.Args(model="tiny", output=str(out), **BUDGET))
    return returned, json.loads(out.read_text())


def test_report_fields_and_the_curves_follow_from_the_per_problem_counts(base_report):
    returned, report = base_report
    assert returned == report
    assert report["model"] == "tiny" and report["dataset"] == "tiny" and report["split"] == "test"
    assert (report["n"], report["num_problems"], report["args"]["seed"]) == (4, 8, 3)
    assert list(report["pass@k"]) == list(report["pass^k"]) == ["1", "2", "4"]
    problems = report["problems"]
    assert [p["source"] for p in problems] == [f"tiny:test:{i}" for i in range(8)]
    counts = [p["correct"] for p in problems]
    assert all(0 <= c <= 4 for c in counts)
    for k in (1, 2, 4):  # the curves are the means of the unbiased per-problem estimates
        assert report["pass@k"][str(k)] == pytest.approx(sum(pass_at_k(4, c, k) for c in counts) / 8)
        assert report["pass^k"][str(k)] == pytest.approx(sum(pass_hat_k(4, c, k) for c in counts) / 8)
    assert report["pass@k"]["1"] == report["pass^k"]["1"] == pytest.approx(report["mean_reward"])
    at_k, hat_k = list(report["pass@k"].values()), list(report["pass^k"].values())
    assert at_k == sorted(at_k) and hat_k == sorted(hat_k, reverse=True)
    assert 0 < report["mean_reward"] < 1 and report["parsed_rate"] > 0.9  # the tiny world's base: ~0.34
    categories = report["per_category"]
    assert set(categories) <= {"easy", "medium", "hard"} and sum(c["count"] for c in categories.values()) == 8
    for name, category in categories.items():
        own = [p["correct"] for p in problems if p["category"] == name]
        assert category["pass@1"] == pytest.approx(sum(own) / (4 * len(own)))


def test_a_run_directory_evaluates_its_newest_checkpoint(base_report, tiny_policy, tmp_path):
    """The untrained tiny policy saved as a run's checkpoint gives, with the same seed, the base's numbers;
    the run directory, the step directory and its model/ all name it."""
    model, tokenizer = tiny_policy
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    step_dir = save_checkpoint(tmp_path / "run", 5, model, optimizer, tokenizer=tokenizer)
    (tmp_path / "run" / "config.json").write_text("{}")  # a run directory holds its flags' config.json too
    assert eval_script.resolve_model(str(step_dir)) == str(step_dir / "model")
    assert eval_script.resolve_model(str(step_dir / "model")) == str(step_dir / "model")
    out = tmp_path / "run.json"
    report = eval_script.main(eval_script.Args(model=str(tmp_path / "run"), output=str(out), **BUDGET))
    assert report["model_path"] == str(step_dir / "model")
    for key in ("pass@k", "pass^k", "per_category"):
        assert report[key] == base_report[1][key]
    assert json.loads(out.read_text())["problems"] == base_report[1]["problems"]


class Loaded(Exception):
    """Raised by the patched loaders: the script got past its checks and started loading."""


@pytest.fixture
def guarded(monkeypatch):
    def loaded(*args, **kwargs):
        raise Loaded

    monkeypatch.setattr(eval_script, "load_policy", loaded)
    monkeypatch.setattr(eval_script, "load_examples", loaded)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"model": "./no/such/model"}, "error: --model './no/such/model': no such directory"),
        ({"dataset": "gsm9k"}, "error: --dataset: unknown dataset 'gsm9k'; valid forms:"),
        ({"dataset": "no_such_file.jsonl"}, "error: --dataset: no such dataset file: no_such_file.jsonl"),
        (
            {"dataset": "math500", "split": "train"},
            "error: --dataset: dataset 'math500' has splits ['test'], not 'train'",
        ),  # fmt: skip
        (
            {"dataset": "hf:org/name"},
            "error: --dataset: 'hf:org/name': a generic 'hf:NAME[:CONFIG]' dataset needs",
        ),
        ({"template": "qwen_math"}, "error: --template: unknown template 'qwen_math'"),
        ({"n": 0}, "error: --n must be >= 1, got 0"),
        ({"problems": 0}, "error: --problems must be >= 1, got 0"),
        ({"top_p": 0.0}, "error: --top-p must be in (0, 1], got 0.0"),
    ],
)
def test_bad_input_fails_in_one_line_naming_the_flag_before_loading(guarded, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        eval_script.main(eval_script.Args(**flags))
    assert str(exit_info.value.code).startswith(message) and "\n" not in str(exit_info.value.code)


def test_bad_model_directories_and_output(guarded, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "run" / "checkpoints" / "step-00000001").mkdir(parents=True)  # not marked complete
    cases = [
        ({"model": str(tmp_path / "empty")}, "not a model directory (no config.json)"),
        ({"model": str(tmp_path / "run")}, "a run directory with no complete checkpoint"),
        ({"output": str(tmp_path)}, "is a directory; give a file name"),
    ]
    for flags, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            eval_script.main(eval_script.Args(**flags))
        flag = "--" + next(iter(flags))
        assert str(exit_info.value.code).startswith(f"error: {flag} ") and message in str(
            exit_info.value.code
        )


def test_run_sh_eval_reports_a_bad_dataset_in_one_line_with_status_1():
    env = {**os.environ, "RLVR_PYTHON": sys.executable}
    done = subprocess.run(
        [str(ROOT / "run.sh"), "eval", "--dataset", "gsm9k"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: --dataset: unknown dataset 'gsm9k'")
    assert "Traceback" not in done.stderr and "loaded" not in done.stdout

import io
import json
import math
import sys
import types

import pytest
import torch

from common.tracking import Progress, Tracker, markdown_table, print_table, read_jsonl, truncate_jsonl

CONFIG = {"lr": 1e-6, "group_size": 8, "model": "Qwen/Qwen2.5-0.5B-Instruct"}


def test_log_writes_jsonl_config_and_tensorboard(tmp_path):
    with Tracker(tmp_path / "run", CONFIG) as tracker:
        tracker.log(1, {"reward_mean": 0.25, "kl": torch.tensor(0.5)})
        tracker.log(2, {"reward_mean": 0.5, "kl": 0.75})
    run_dir = tmp_path / "run"
    assert json.loads((run_dir / "config.json").read_text()) == CONFIG
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 1, "reward_mean": 0.25, "kl": 0.5},
        {"step": 2, "reward_mean": 0.5, "kl": 0.75},
    ]
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))


def test_non_finite_metrics_are_written_as_null(tmp_path, capsys):
    with Tracker(tmp_path, CONFIG) as tracker:
        tracker.log(1, {"loss": float("nan"), "kl": float("inf"), "reward_mean": 1.0, "eval/pass@1": None})
        tracker.log(2, {"loss": float("nan")})
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert records == [
        {"step": 1, "loss": None, "kl": None, "reward_mean": 1.0, "eval/pass@1": None},
        {"step": 2, "loss": None},
    ]
    assert capsys.readouterr().err.count("loss=nan") == 1  # warned once per key


def test_resume_drops_later_steps_and_corrupt_trailing_line(tmp_path):
    with Tracker(tmp_path, CONFIG) as tracker:
        for step in range(1, 6):
            tracker.log(step, {"reward_mean": step / 10})
            tracker.log_completions(step, [{"prompt": "1+1?", "completion": "2", "reward": 1.0}])
    for name in ("metrics.jsonl", "completions.jsonl"):
        with open(tmp_path / name, "a") as f:
            f.write('{"step": 6, "reward_me')  # killed mid-write

    with Tracker(tmp_path, CONFIG, resume_step=3) as tracker:
        assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]
        assert [r["step"] for r in read_jsonl(tmp_path / "completions.jsonl")] == [1, 2, 3]
        tracker.log(4, {"reward_mean": 0.9})
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]
    assert read_jsonl(tmp_path / "metrics.jsonl")[-1]["reward_mean"] == 0.9
    assert not list(tmp_path.glob("*.tmp"))


def test_fresh_run_replaces_old_metrics(tmp_path):
    with Tracker(tmp_path, CONFIG) as tracker:
        tracker.log(1, {"reward_mean": 0.1})
    with Tracker(tmp_path, CONFIG) as tracker:
        tracker.log(1, {"reward_mean": 0.2})
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 1, "reward_mean": 0.2}]


def test_truncate_jsonl_skips_garbage_and_missing_file(tmp_path):
    path = tmp_path / "m.jsonl"
    truncate_jsonl(path, last_step=3)  # no file: nothing to do
    assert not path.exists()
    path.write_text('{"step": 1}\nnot json\n[1, 2]\n\n{"step": 2}\n{"step": 9}\n{"no_step": 1}\n')
    truncate_jsonl(path, last_step=5)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'


def test_log_completions(tmp_path):
    rows = [
        {"prompt": "What is 1+1?", "completion": "so \\boxed{2}", "reward": 1.0, "answer": "2", "gold": "2"},
        {"prompt": "What is 2+2?", "completion": "a | b\nc", "reward": 0.0, "answer": None, "gold": "4"},
    ]
    with Tracker(tmp_path, CONFIG) as tracker:
        tracker.log_completions(7, rows)
    records = read_jsonl(tmp_path / "completions.jsonl")
    assert records == [{"step": 7, **row} for row in rows]


def test_plot_learning_curves(tmp_path):
    with Tracker(tmp_path, CONFIG) as tracker:
        assert tracker.plot_learning_curves() == []  # nothing logged yet
        for step in range(1, 11):
            tracker.log(step, {"reward_mean": step / 10, "kl": 0.01 * step, "custom": 1.0})
            if step % 5 == 0:
                tracker.log(step, {"eval/pass@1": 0.3})
        paths = tracker.plot_learning_curves()
        assert paths == [tmp_path / "plots" / "learning_curves.png"]
        assert paths[0].stat().st_size > 0
        assert tracker.plot_learning_curves(keys=["custom"]) == paths


def test_track_without_wandb_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    with pytest.raises(ImportError, match="pip install wandb"):
        Tracker(tmp_path, CONFIG, track=True)


def test_track_calls_wandb_init(tmp_path, monkeypatch):
    calls = {}

    class FakeRun:
        def finish(self):
            calls["finished"] = True

    def fake_init(**kwargs):
        calls["init"] = kwargs
        return FakeRun()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=fake_init))
    Tracker(tmp_path / "run", CONFIG, track=True, wandb_project="proj", run_name="grpo_s1").close()
    assert calls["init"] == {
        "project": "proj",
        "name": "grpo_s1",
        "config": CONFIG,
        "sync_tensorboard": True,
        "dir": str(tmp_path / "run"),
    }
    assert calls["finished"]


def test_markdown_table_escapes_cells():
    table = markdown_table([{"a": "x|y\nz", "b": "w" * 10}], ["a", "b"], max_chars=4)
    assert table.splitlines()[-1] == "| x\\|y… | wwww… |"


def test_print_table(capsys):
    rows = [
        {"method": "base", "pass@1": 0.31234, "steps": 0},
        {"method": "grpo", "pass@1": 0.5, "steps": 100},
    ]
    table = print_table(rows, ["method", "pass@1", "steps"], title="MATH-500")
    assert capsys.readouterr().out.strip() == table
    lines = table.splitlines()
    assert lines[0] == "MATH-500"
    assert "0.312" in table and "0.500" in table and "grpo" in table and "100" in table
    assert len({len(line) for line in lines[1:]}) == 1  # aligned: every row as wide as the header
    assert print_table([{"a": 1}], ["a", "missing"]).splitlines()[-1].endswith("-")


def test_progress_prints_about_every_ten_percent_without_a_tty(monkeypatch):
    stderr = io.StringIO()  # not a TTY
    monkeypatch.setattr(sys, "stderr", stderr)
    with Progress(total=40, desc="train") as progress:
        for _ in range(40):
            progress.update(1, reward=0.25)
    lines = stderr.getvalue().splitlines()
    assert len(lines) == 10
    assert lines[0].startswith("train: 4/40 (10%)") and lines[0].endswith("reward=0.250")
    assert lines[-1].startswith("train: 40/40 (100%)")


def test_progress_with_large_steps_and_tqdm(monkeypatch):
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    progress = Progress(total=3, desc="eval")
    progress.update(3)
    progress.close()
    assert stderr.getvalue().splitlines() == [
        line for line in stderr.getvalue().splitlines() if "3/3" in line
    ]
    assert len(stderr.getvalue().splitlines()) == 1

    monkeypatch.setattr(stderr, "isatty", lambda: True)
    progress = Progress(total=2, desc="tty")
    progress.update(1, loss=math.pi)
    progress.close()
    assert progress.bar is not None and "tty" in stderr.getvalue()

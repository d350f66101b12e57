"""Faults: a checkpoint save that fails (disk full, I/O error) keeps nothing of itself and leaves the
previous checkpoint valid, a run whose save failed resumes exactly, and an unwritable or nearly full
output directory stops every script before it loads anything. (kill -9 and Ctrl-C mid-run, then
--resume: tests/test_e2e.py.)"""

import errno
import importlib
import os

import pytest
import torch

import common.checkpoint as checkpoint
from common.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from common.tracking import read_jsonl

SCRIPTS = [
    "grpo",
    "nsr",
    "bnpo",
    "topr",
    "oreal",
    "expo",
    "dapo",
    "ppo",
    "reinforce_ada",
    "nft",
    "dr_grpo",
    "rloo",
    "reinforce_pp",
    "rlcr",
    "prefix_rft",
]


class PretrainedLinear(torch.nn.Linear):
    """A model with `save_pretrained`, whose save can be made to fail half-way."""

    fail = False

    def save_pretrained(self, path):
        os.makedirs(path)
        with open(os.path.join(path, "model.safetensors"), "wb") as f:
            f.write(b"\0" * 1000)  # a partial file, then the disk is full
            if self.fail:
                raise OSError(errno.ENOSPC, "No space left on device")
        from safetensors.torch import save_file

        save_file(self.state_dict(), os.path.join(path, "model.safetensors"))


def _torch_save_fails(obj, path, *args, **kwargs):
    with open(path, "wb") as f:
        f.write(b"PK\3\4 half a zip")
    raise RuntimeError("[enforce fail at inline_container.cc:858] PytorchStreamWriter failed writing file")


def _fsync_fails(root):
    raise OSError(errno.EIO, "Input/output error")


@pytest.mark.parametrize("where", ["model weights", "optimizer state", "fsync"])
def test_failed_save_keeps_nothing_of_itself_and_the_previous_checkpoint_valid(tmp_path, monkeypatch, where):
    model = PretrainedLinear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    good = save_checkpoint(tmp_path, 1, model, optimizer)
    saved_weight = model.weight.detach().clone()

    optimizer.step()  # the state moves on; then the next save fails
    if where == "model weights":
        monkeypatch.setattr(PretrainedLinear, "fail", True)
    elif where == "optimizer state":
        monkeypatch.setattr(checkpoint.torch, "save", _torch_save_fails)
    else:
        monkeypatch.setattr(checkpoint, "_fsync_tree", _fsync_fails)
    with pytest.raises((OSError, RuntimeError)) as failed:
        save_checkpoint(tmp_path, 2, model, optimizer)
    monkeypatch.undo()

    note = " ".join(getattr(failed.value, "__notes__", []))
    assert f"checkpoint {tmp_path / 'checkpoints' / 'step-00000002'} was not written" in note
    assert str(good) in note
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000001"]  # no .tmp-* left
    assert latest_checkpoint(tmp_path) == good
    fresh = PretrainedLinear(3, 2)
    assert load_checkpoint(good, fresh, torch.optim.AdamW(fresh.parameters(), lr=0.1))["step"] == 1
    assert torch.equal(fresh.weight, saved_weight)


@pytest.mark.parametrize("script", SCRIPTS)
def test_unwritable_or_full_output_directory_stops_before_anything_loads(script, tmp_path, monkeypatch):
    module = importlib.import_module(f"algos.{script}")

    def must_not_load(*args, **kwargs):
        raise AssertionError("loaded data or a model before checking the output directory")

    monkeypatch.setattr(module, "load_examples", must_not_load)
    monkeypatch.setattr(module, "load_policy", must_not_load)
    regular_file = tmp_path / "a_file"
    regular_file.write_text("")  # tests run as root, where permissions would not stop a write
    with pytest.raises(SystemExit, match=f"--output-dir '{regular_file}': {regular_file} is a file"):
        module.main(module.Args(output_dir=str(regular_file), run_name="run"))  # preflight: one message

    class NearlyFull:
        free = 10 * 2**20

    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: NearlyFull)
    with pytest.raises(OSError, match="only 10 MiB free on its disk, need at least 100 MiB"):
        module.main(module.Args(output_dir=str(tmp_path / "runs"), run_name="run"))


TRAIN_KEYS = ["reward_mean", "loss", "grad_norm", "entropy", "completion_len_mean", "eval/pass@1"]


def test_run_whose_save_fails_resumes_exactly(random_model_dir, tmp_path, monkeypatch):
    """The disk fills while step 2 is saved: the run stops with the error, step 1's checkpoint is intact,
    and --resume re-runs steps 2 and 3 into exactly the metrics of a run that never failed."""
    from algos.grpo import Args, main

    def args(run_name, resume=False):
        return Args(
            model_name_or_path=str(random_model_dir), output_dir=str(tmp_path), run_name=run_name, resume=resume,
            num_steps=3, save_every=1, eval_every=2, prompts_per_step=2, group_size=4, micro_batch_size=8,
            max_new_tokens=8, eval_problems=2, eval_n=2,
        )  # fmt: skip

    main(args("ref"))
    real_save, calls = torch.save, []

    def fail_on_second_state(obj, path, *a, **kw):
        calls.append(path)
        return _torch_save_fails(obj, path) if len(calls) == 2 else real_save(obj, path, *a, **kw)

    monkeypatch.setattr(checkpoint.torch, "save", fail_on_second_state)
    with pytest.raises(RuntimeError, match="PytorchStreamWriter failed writing file"):
        main(args("cut"))
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path / "cut").name == "step-00000001"
    assert [r["step"] for r in read_jsonl(tmp_path / "cut" / "metrics.jsonl")] == [0, 1, 2]  # step 2 logged

    main(args("cut", resume=True))
    got, want = read_jsonl(tmp_path / "cut" / "metrics.jsonl"), read_jsonl(tmp_path / "ref" / "metrics.jsonl")
    assert [r["step"] for r in got] == [r["step"] for r in want] == [0, 1, 2, 3]
    for g, w in zip(got, want):
        for key in TRAIN_KEYS:
            if w.get(key) is None:
                assert g.get(key) is None, (g["step"], key)
            else:
                assert g.get(key) == pytest.approx(w[key], rel=1e-5, abs=1e-6), (g["step"], key)
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()) == [
        "step-00000002",
        "step-00000003",
    ]


RESUME_SHAPES = {  # two optimizer steps each
    **{algo: dict(num_steps=2, prompts_per_step=2, group_size=4) for algo in ["grpo", "nsr", "bnpo", "oreal", "expo", "dapo", "dr_grpo", "rloo", "reinforce_pp", "rlcr", "prefix_rft"]},
    "nft": dict(num_steps=2, prompts_per_step=2, group_size=4, num_mini_batches=2),  # 8 rows: fewer than its 16
    "reinforce_ada": dict(num_steps=2, prompts_per_step=2, group_size=4, round_repeat=4),
    "ppo": dict(num_steps=2, prompts_per_step=2, group_size=1, sft_epochs=0.001),
    "topr": dict(iterations=1, questions_per_iteration=2, samples_per_question=4, epochs=1, batch_size=4),
}  # fmt: skip


@pytest.mark.parametrize("algo", RESUME_SHAPES)
def test_resume_without_a_checkpoint_starts_fresh_and_says_so(algo, random_model_dir, tmp_path, capsys):
    """--resume in a run directory without a checkpoint (here: logs of a run stopped before its first
    save) is a fresh run: one line says so, the old logs are replaced, and every step is logged once."""
    module = importlib.import_module(f"algos.{algo}")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 0, "eval/pass@1": 0.5}\n{"step": 1, "reward_mean": 0.0}\n')
    module.main(
        module.Args(
            model_name_or_path=str(random_model_dir),
            output_dir=str(tmp_path),
            run_name="run",
            resume=True,
            save_every=5,
            eval_every=0,
            micro_batch_size=8,
            max_new_tokens=8,
            eval_problems=2,
            eval_n=2,
            **RESUME_SHAPES[algo],
        )  # fmt: skip
    )
    err = capsys.readouterr().err
    assert err.count("--resume: no checkpoint in") == 1, err
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl")]
    assert steps == [0, 1, 2], steps

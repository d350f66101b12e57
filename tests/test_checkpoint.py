import copy
import random

import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

import common.checkpoint as checkpoint
from common.checkpoint import (
    capture_rng_state,
    check_writable,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


def tiny_qwen2(tie_word_embeddings: bool = False, seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=32,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=32,
        tie_word_embeddings=tie_word_embeddings,
    )
    return Qwen2ForCausalLM(config)


def make_training_state(model: torch.nn.Module):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    return optimizer, scheduler


def train_steps(model, optimizer, scheduler, steps: int) -> None:
    input_ids = torch.randint(0, 32, (2, 6))
    for _ in range(steps):
        loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()


def clone_state(model) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


@pytest.mark.parametrize("tie_word_embeddings", [False, True])
def test_save_perturb_load_restores_everything(tmp_path, tie_word_embeddings):
    model = tiny_qwen2(tie_word_embeddings)
    optimizer, scheduler = make_training_state(model)
    train_steps(model, optimizer, scheduler, steps=2)

    ckpt_dir = save_checkpoint(tmp_path, 2, model, optimizer, scheduler, extra={"data_position": 16})
    assert ckpt_dir == tmp_path / "checkpoints" / "step-00000002"
    weights, optimizer_state = clone_state(model), copy.deepcopy(optimizer.state_dict())
    lr = scheduler.get_last_lr()
    draws = (torch.rand(4), random.random(), np.random.rand())

    train_steps(model, optimizer, scheduler, steps=3)  # perturb everything
    assert not torch.equal(model.model.embed_tokens.weight, weights["model.embed_tokens.weight"])

    resumed = load_checkpoint(ckpt_dir, model, optimizer, scheduler)
    assert resumed == {"step": 2, "extra": {"data_position": 16}}
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    if tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert scheduler.get_last_lr() == lr and scheduler.last_epoch == 2
    assert optimizer.state_dict()["state"].keys() == optimizer_state["state"].keys() != set()
    for param_id, param_state in optimizer.state_dict()["state"].items():
        for name, value in param_state.items():
            assert torch.equal(value, optimizer_state["state"][param_id][name])
    assert torch.equal(torch.rand(4), draws[0])
    assert random.random() == draws[1]
    assert np.random.rand() == draws[2]


def test_load_into_a_fresh_model_continues_identically(tmp_path):
    model = tiny_qwen2(seed=0)
    optimizer, scheduler = make_training_state(model)
    train_steps(model, optimizer, scheduler, steps=1)
    ckpt_dir = save_checkpoint(tmp_path, 1, model, optimizer, scheduler)
    train_steps(model, optimizer, scheduler, steps=2)
    expected = clone_state(model)

    fresh = tiny_qwen2(seed=123)
    fresh_optimizer, fresh_scheduler = make_training_state(fresh)
    load_checkpoint(ckpt_dir, fresh, fresh_optimizer, fresh_scheduler)
    train_steps(fresh, fresh_optimizer, fresh_scheduler, steps=2)
    for key, value in fresh.state_dict().items():
        assert torch.allclose(value, expected[key], atol=1e-6), key


def test_plain_module_and_tokenizer_hook(tmp_path):
    class FakeTokenizer:
        def save_pretrained(self, path):
            (path / "tokenizer.json").write_text("{}")

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt_dir = save_checkpoint(tmp_path, 5, model, optimizer, tokenizer=FakeTokenizer())
    assert (ckpt_dir / "model" / "model.pt").is_file() and (ckpt_dir / "model" / "tokenizer.json").is_file()
    weight = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    assert load_checkpoint(ckpt_dir, model) == {"step": 5, "extra": None}
    assert torch.equal(model.weight, weight)


def test_load_rejects_mismatched_model_and_incomplete_dir(tmp_path):
    model = torch.nn.Linear(3, 2)
    ckpt_dir = save_checkpoint(tmp_path, 1, model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(RuntimeError, match="does not match the model"):
        load_checkpoint(ckpt_dir, torch.nn.Sequential(torch.nn.Linear(3, 2)))
    (ckpt_dir / "COMPLETE").unlink()
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        load_checkpoint(ckpt_dir, model)


def test_keep_last_deletes_older_checkpoints(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, step, model, optimizer, keep_last=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000030", "step-00000040"]
    save_checkpoint(tmp_path, 50, model, optimizer, keep_last=0)  # keep all
    save_checkpoint(tmp_path, 50, model, optimizer, keep_last=0)  # saving a step again replaces it
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-00000030",
        "step-00000040",
        "step-00000050",
    ]
    save_checkpoint(tmp_path, 60, model, optimizer, keep_last=1)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000060"]


def test_latest_checkpoint_ignores_tmp_and_incomplete_dirs(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    good = save_checkpoint(tmp_path, 100, model, optimizer)
    (tmp_path / "checkpoints" / ".tmp-step-00000300-1234").mkdir()
    (tmp_path / "checkpoints" / "step-00000200").mkdir()  # no COMPLETE marker
    (tmp_path / "checkpoints" / "notes.txt").write_text("not a checkpoint")
    assert latest_checkpoint(tmp_path) == good


def test_crash_mid_save_leaves_previous_checkpoint_valid(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    good = save_checkpoint(tmp_path, 1, model, optimizer)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint.torch, "save", crash)
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(tmp_path, 2, model, optimizer)
    assert latest_checkpoint(tmp_path) == good
    assert list((tmp_path / "checkpoints").glob(".tmp-step-00000002-*"))  # the half-written save

    save_checkpoint(tmp_path, 3, model, optimizer)
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))  # cleaned up by the next save
    assert latest_checkpoint(tmp_path).name == "step-00000003"


def test_rng_state_round_trip():
    state = capture_rng_state()
    draws = (torch.randn(3), random.randint(0, 10**9), np.random.randint(0, 10**9))
    restore_rng_state(state)
    assert torch.equal(torch.randn(3), draws[0])
    assert random.randint(0, 10**9) == draws[1]
    assert np.random.randint(0, 10**9) == draws[2]


def test_check_writable(tmp_path):
    check_writable(tmp_path / "runs" / "new_run")  # creates it
    assert (tmp_path / "runs" / "new_run").is_dir()
    assert list((tmp_path / "runs" / "new_run").iterdir()) == []  # the probe file is removed

    regular_file = tmp_path / "a_file"
    regular_file.write_text("")
    unwritable = regular_file / "run"  # tests run as root, so permissions would not stop us
    with pytest.raises(OSError, match=str(unwritable)):
        check_writable(unwritable)

    with pytest.raises(OSError, match="MiB free"):
        check_writable(tmp_path, min_free_bytes=2**62)

"""bench/gpu_check.py, the script a session lent a GPU runs once: end to end on the CPU at ``--shape tiny``
(from its command line, without the packages the GPU machine lacks), every field of its report, an
out-of-memory that does not stop it, a deadline that cuts it, and the Qwen tokenizer it builds."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench import gpu_check

ROOT = Path(__file__).resolve().parent.parent
MISSING_ON_THE_GPU_MACHINE = ("vllm", "datasets", "trl", "pyarrow", "pandas", "tiktoken")
"""What docs/gpu-wheels.md says that machine has not, and nothing carries there."""

RUN_TINY = """
import runpy, sys
class Without:  # a finder that finds nothing of the missing packages, as if they were not installed
    def __init__(self, finder):
        self.finder = finder
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {missing!r}:
            return None
        return self.finder.find_spec(name, path, target)
    def __getattr__(self, name):
        return getattr(self.finder, name)
sys.meta_path[:] = [Without(finder) for finder in sys.meta_path]
import algos.grpo, common.vllm_rollout  # every common module, through grpo.py's imports, and the vLLM backend's
import torch
real_update = algos.grpo.update_policy
def update_policy(model, optimizer, batch, args):  # one configuration runs out of memory
    if args.dtype == "bfloat16" and not args.gradient_checkpointing and args.micro_batch_size == 4:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
    return real_update(model, optimizer, batch, args)
algos.grpo.update_policy = update_policy
sys.argv = ["bench/gpu_check.py", "--shape", "tiny", "--out", {out!r}]
runpy.run_path("bench/gpu_check.py", run_name="__main__")
"""


def records_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "gpu_check.jsonl").read_text().splitlines()]


def test_tiny_run_from_the_command_line_reports_every_field_and_survives_an_out_of_memory(tmp_path):
    out = tmp_path / "out"
    code = RUN_TINY.format(missing=MISSING_ON_THE_GPU_MACHINE, out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = records_of(out)
    shape = gpu_check.SHAPES["tiny"]
    kinds = [r["kind"] for r in records]
    assert kinds[:2] == ["env", "setup"] and kinds[-1] == "summary"
    assert records[0]["shape"] == "tiny" and records[0]["device"] and records[0]["torch"]
    assert records[1]["status"] == "ok" and records[1]["prompts"] == shape.prompts

    # every planned measurement reported once, in the plan's order; the simulated out-of-memory is recorded
    measured = [r for r in records if r["kind"] in ("generate", "train", "memory")]
    assert [(r["kind"], r["dtype"], r.get("gradient_checkpointing"), r.get("micro_batch_size")) for r in measured] == [
        (p[0], p[1], p[2] if len(p) > 2 else None, p[3] if p[0] == "train" else shape.long_rows if p[0] == "memory" else None)
        for p in gpu_check.plan(shape)
    ]  # fmt: skip
    oom = [r for r in measured if r["status"] != "ok"]
    assert [
        (r["kind"], r["dtype"], r["gradient_checkpointing"], r["micro_batch_size"], r["status"]) for r in oom
    ] == [("train", "bfloat16", False, 4, "oom")]
    assert "out of memory" in oom[0]["error"]
    assert records[-1] == {**records[-1], "skipped": 0, "errors": 0, "ooms": 1, "complete": True}

    for r in measured:
        if r["status"] != "ok":
            continue
        assert {"peak_memory_bytes", "peak_reserved_bytes"} <= r.keys()  # None on the CPU
        assert r["elapsed_s"] > 0
        if r["kind"] == "generate":  # min_new_tokens: every completion is exactly new_tokens long
            assert r["rows"] == shape.prompts and r["completion_width"] == shape.new_tokens
            assert r["generated_tokens"] == shape.prompts * shape.new_tokens and r["truncated_frac"] == 1.0
            assert r["warmup_s"] > 0  # an untimed short call first: a dtype's first call pays one-time costs
            assert r["seconds"] > 0 and r["tokens_per_s"] == pytest.approx(
                r["generated_tokens"] / r["seconds"]
            )
        elif r["kind"] == "train":
            assert r["rows"] == shape.prompts and r["completion_tokens"] == shape.prompts * shape.new_tokens
            assert r["timed_steps"] == 2 and r["warmup_s"] > 0 and r["old_logprob_s"] > 0
            assert r["forward_backward_s"] > 0 and r["optimizer_s"] > 0
            assert r["forward_backward_s"] + r["optimizer_s"] == pytest.approx(r["step_s"])
            width = r["positions"] // r["rows"]
            assert r["model_flops"] == gpu_check.model_flops(shape.model, r["rows"], width, shape.new_tokens)
            assert r["positions_per_s"] == pytest.approx(r["positions"] / r["step_s"])
            assert r["completion_tokens_per_s"] == pytest.approx(r["completion_tokens"] / r["step_s"])
            assert r["model_tflops_per_s"] == pytest.approx(r["model_flops"] / r["step_s"] / 1e12)
            assert r["peak_tflops"] is None and r["mfu"] is None  # no peak on the CPU
            assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0
        else:
            assert (r["rows"], r["micro_batch_size"], r["completion_tokens"]) == (shape.long_rows,) * 2 + (shape.long_tokens,)  # fmt: skip
            assert r["seconds"] > 0
    models = [r for r in records if r["kind"] == "model"]
    assert [r["dtype"] for r in models] == ["float32", "bfloat16", "float32"]
    assert all(r["parameters"] == models[0]["parameters"] > 0 for r in models)

    summary = (out / "gpu_check.md").read_text()
    assert summary in proc.stdout
    assert "shape tiny (complete)" in summary and "oom: CUDA out of memory (simulated)" in summary
    for title in ("Model builds", "Generation", "Training steps", "Where one GRPO step's time goes", "One step at the GPU recipes' micro-batch"):  # fmt: skip
        assert f"## {title}" in summary


@pytest.mark.parametrize("item", ["generate", "generate:float16", "train:float32:1", "memory:bfloat16:yes"])
def test_a_bad_only_item_is_named(item):
    with pytest.raises(SystemExit, match=f"--only '{item}': expected generate:DTYPE"):
        gpu_check.parse_item(item)


def test_a_deadline_already_past_still_writes_a_valid_report_of_what_was_skipped(tmp_path):
    assert gpu_check.main(gpu_check.Args(shape="tiny", out=str(tmp_path), deadline_s=0)) == 0
    records = records_of(tmp_path)
    plan = gpu_check.plan(gpu_check.SHAPES["tiny"])
    assert [r["kind"] for r in records] == ["env", "setup", *[p[0] for p in plan], "summary"]
    assert records[1] == {**records[1], "status": "skipped", "reason": "deadline: 0 s left"}
    assert all(r["status"] == "skipped" and r["reason"] == "setup did not run" for r in records[2:-1])
    assert records[-1] == {**records[-1], "skipped": len(plan) + 1, "errors": 0, "complete": False}
    summary = (tmp_path / "gpu_check.md").read_text()
    assert f"shape tiny (cut: {len(plan) + 1} skipped)" in summary


def test_an_error_is_recorded_with_its_traceback_and_fails_the_run(tmp_path, monkeypatch):
    def broken():
        raise RuntimeError("no tokenizer today")

    monkeypatch.setattr(gpu_check, "qwen_tokenizer", broken)
    assert gpu_check.main(gpu_check.Args(shape="tiny", out=str(tmp_path))) == 1
    setup = records_of(tmp_path)[1]
    assert setup["status"] == "error" and setup["error"] == "RuntimeError: no tokenizer today"
    assert "in broken" in setup["traceback"]
    assert "## Error in setup" in (tmp_path / "gpu_check.md").read_text()


def test_the_tokenizer_gives_qwen25s_ids():
    """Ids Qwen2.5's own tokenizer gives (its chat template's system turn, published in many places), the
    control tokens after the 151,643 BPE tokens, and left padding with <|endoftext|>."""
    tokenizer = gpu_check.qwen_tokenizer()
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert encode("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n") == [
        151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198
    ]  # fmt: skip
    assert (
        encode("user") == [872] and encode("assistant") == [77091] and encode("Hello world") == [9707, 1879]
    )
    assert encode("2024") == [17, 15, 17, 19]  # digits one by one
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.padding_side) == (
        151643,
        151643,
        "left",
    )
    prompt = gpu_check.math500_prompts(1)[0]
    assert prompt.startswith("<|im_start|>system\nPlease reason step by step")
    assert tokenizer.decode(encode(prompt)) == prompt
    assert (
        tokenizer.decode([9707, 151643, 151900], skip_special_tokens=True) == "Hello"
    )  # ids past the vocabulary: nothing


def test_the_model_has_qwen25_math_15bs_shape_and_model_flops_counts_its_matmuls():
    """Built on the meta device (no memory): 1,543,714,304 parameters with the tied head, as the docstring
    says; ``model_flops``' per-position body term is 6 x the layers' matmul weights, counted from the module."""
    import torch

    shape = gpu_check.SHAPES["1.5b"]
    model = gpu_check.qwen_shaped_policy(shape, torch.bfloat16, "meta", seed=0)
    assert sum(p.numel() for p in model.parameters()) == 1_543_714_304
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.vocab_size) == (
        1536,
        28,
        151_936,
    )
    assert (
        model.config.rope_parameters["rope_theta"] == 10000.0 and model.config.max_position_embeddings == 4096
    )
    matmuls = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear))
    attention = 6 * 28 * 1536  # one position: width² = 1
    assert gpu_check.model_flops(shape.model, rows=1, width=1, completion=0) == 6 * matmuls + attention
    head = 6 * 1536 * 151_936
    assert gpu_check.model_flops(shape.model, rows=2, width=1, completion=1) == 2 * (
        6 * matmuls + attention + head
    )

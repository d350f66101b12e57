"""bench/gpu_smoke.py, the GPU sweep of every script, run here on the CPU for one method: its three stages
pass on a working script, and its checks fail on an unknown method and on a non-finite metric."""

import json
import math

import pytest

from bench import gpu_smoke


def test_one_method_trains_resumes_and_evaluates(tiny_world_dir, tmp_path):
    code = gpu_smoke.main(gpu_smoke.Args(methods=("grpo",), bf16=False, device="cpu", out=str(tmp_path)))
    results = [json.loads(line) for line in (tmp_path / "gpu_smoke.jsonl").read_text().splitlines()]
    assert code == 0
    assert [(r["method"], r["flags"]) for r in results] == [("grpo", [])]
    assert results[0]["status"] == "ok", results[0].get("stderr")
    assert results[0]["last_step"] == 4 and results[0]["non_finite"] == []
    assert 0 <= results[0]["eval_pass@1"] <= 1


def test_a_non_finite_loss_is_reported(tmp_path):
    rows = [{"step": 0, "reward_mean": 0.5}, {"step": 1, "loss": math.nan, "grad_norm": 1.0}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert gpu_smoke._finite_metrics(tmp_path) == (1, ["step 1 loss=nan"])


def test_an_unknown_method_is_named(tmp_path):
    with pytest.raises(SystemExit, match=r"--methods: unknown method\(s\) \['grpoo'\]"):
        gpu_smoke.main(gpu_smoke.Args(methods=("grpoo",), device="cpu", out=str(tmp_path)))

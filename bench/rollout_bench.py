"""Rollout benchmark: the same prompts and sampling settings through both backends, in one run.

For each model it times (after one warm-up call per backend) ``HFSampler.generate`` (``model.generate``, recording
the behaviour log-probs as it samples, as the training loop uses it) and ``VLLMSampler.generate`` (vLLM returns the
log-probs itself), and reports generated tokens per second and the vLLM / HF ratio. With ``--step`` it
also times a whole training step per backend: rollout, one policy-gradient forward/backward over the
batch in micro-batches, the optimizer step, and ``update_weights`` (the push into vLLM), and reports the
three parts (``train_s`` is the same code for every backend). Both backends live in one process, each
with its own copy of the weights, and the timed repetitions alternate between them (A B A B), so a change
in a shared machine's load hits both alike; the HF timings are therefore taken with the vLLM engine
present in the process (it is idle while HF runs).

Models: ``tiny`` (the built-in world's policy), ``random`` (a randomly initialised Qwen2 of
``--random-hidden-size`` × ``--random-num-layers`` with the tiny world's byte-level tokenizer, built
offline once into the cache directory: about 34M parameters by default), or any local path / hub id.
A random model rarely samples EOS, so its completions run to ``--max-new-tokens``.

    PYTHONPATH=. .venv/bin/python bench/rollout_bench.py --models tiny random
    PYTHONPATH=. .venv/bin/python bench/rollout_bench.py --models random --random-hidden-size 768 --random-num-layers 12

This is a benchmark, not a test: numbers depend on the machine and its load. It is not run by CI.
"""

import copy
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import tyro

from common.data import build_prompt
from common.model import completion_logprobs, load_policy
from common.rollout import make_sampler
from common.tiny_task import tiny_examples, world_dir
from common.tiny_world import WorldConfig, build_model, build_tokenizer


@dataclass
class Args:
    models: list[str] = field(default_factory=lambda: ["tiny"])
    """models to benchmark: "tiny", "random", or local paths / hub ids"""
    backends: list[str] = field(default_factory=lambda: ["hf", "vllm"])
    """rollout backends to compare"""
    num_prompts: int = 32
    """prompts per rollout (tiny-world test questions)"""
    group_size: int = 8
    """completions per prompt"""
    max_new_tokens: int = 48
    """completion length limit"""
    temperature: float = 1.0
    """sampling temperature"""
    top_p: float = 1.0
    """nucleus sampling threshold"""
    repeats: int = 3
    """timed rollouts per backend (after one untimed warm-up); the median is reported"""
    step: bool = True
    """also time whole training steps (rollout + forward/backward + optimizer step + weight push)"""
    micro_batch_size: int = 64
    """sequences per forward/backward pass in the whole-step timing"""
    random_hidden_size: int = 512
    """hidden size of the "random" model"""
    random_num_layers: int = 8
    """layers of the "random" model"""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """torch device"""
    dtype: str = "float32"
    """model dtype (bfloat16 on a GPU for realistic numbers)"""
    gpu_memory_utilization: float = 0.3
    """share of GPU memory vLLM may use"""
    seed: int = 1
    """torch seed"""
    torch_threads: int | None = None
    """torch threads for HF generation and training (default: torch's choice); vLLM decodes on its own
    setting (VLLMSampler's cpu_threads, 1 on the CPU)"""
    json_out: str | None = None
    """also write the results to this JSON file"""


def random_model_dir(hidden_size: int, num_layers: int) -> Path:
    """A randomly initialised Qwen2 with the tiny tokenizer, saved once next to the tiny world."""
    out = world_dir().parent / f"bench-random-qwen2-h{hidden_size}-l{num_layers}"
    if not (out / "config.json").exists():
        torch.manual_seed(0)
        tokenizer = build_tokenizer()
        cfg = WorldConfig(hidden_size=hidden_size, num_layers=num_layers, num_heads=max(1, hidden_size // 64),
                          intermediate_size=4 * hidden_size)  # fmt: skip
        tmp = out.parent / f".tmp-{out.name}"
        build_model(tokenizer, cfg).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(out)
    return out


def training_step(model, optimizer, rollout, micro_batch_size: int, temperature: float) -> None:
    """One REINFORCE-style update with random advantages: the cost of a real step, not its maths."""
    model.train()
    mask = rollout.completion_mask  # [B, C]
    B, C = mask.shape
    advantages = torch.randn(B, 1, device=mask.device)  # [B, 1]
    for start in range(0, B, micro_batch_size):
        mb = slice(start, start + micro_batch_size)
        logprobs, _ = completion_logprobs(
            model, rollout.input_ids[mb], rollout.attention_mask[mb], C, temperature
        )
        loss = -(advantages[mb] * logprobs * mask[mb]).sum() / mask.sum()
        loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_model(args: Args, base_model, tokenizer, prompts: list[str]) -> list[dict]:
    """Time every backend on one model. Each backend gets its own copy of the weights and its own sampler;
    after one untimed warm-up call each, the timed repetitions alternate between the backends (A B A B),
    so a change in the machine's load hits all of them alike."""
    runs = {}
    for backend in args.backends:
        model = copy.deepcopy(base_model)  # each backend starts from the same weights
        t0 = time.perf_counter()
        sampler = make_sampler(backend, model, tokenizer, gpu_memory_utilization=args.gpu_memory_utilization)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        runs[backend] = dict(
            model=model, sampler=sampler, optimizer=optimizer, startup=time.perf_counter() - t0
        )

    def timed(fn, *fn_args):
        sync(args.device)
        t = time.perf_counter()
        out = fn(*fn_args)
        sync(args.device)
        return out, time.perf_counter() - t

    def rollout(run):
        return run["sampler"].generate(
            prompts, args.group_size, args.max_new_tokens, args.temperature, args.top_p
        )

    for run in runs.values():
        rollout(run)  # warm-up
    samples = {backend: [] for backend in runs}  # backend -> [(rollout s, tokens, truncated share)]
    steps = {backend: [] for backend in runs}  # backend -> [(rollout s, train s, push s)]
    for _ in range(args.repeats):
        for backend, run in runs.items():
            r, dt = timed(rollout, run)
            samples[backend].append((dt, int(r.completion_mask.sum()), float(r.truncated.float().mean())))
    for _ in range(args.repeats if args.step else 0):
        for backend, run in runs.items():
            r, dt_rollout = timed(rollout, run)
            model, optimizer = run["model"], run["optimizer"]
            _, dt_train = timed(training_step, model, optimizer, r, args.micro_batch_size, args.temperature)
            _, dt_push = timed(run["sampler"].update_weights, model)
            steps[backend].append((dt_rollout, dt_train, dt_push))

    rows = []
    for backend, run in runs.items():
        times, tokens, truncated = zip(*samples[backend])
        row = {
            "backend": backend,
            "startup_s": run["startup"],
            "rollout_s": statistics.median(times),
            "tokens": statistics.median(tokens),
            "tokens_per_s": statistics.median(n / t for n, t in zip(tokens, times)),
            "truncated_frac": statistics.median(truncated),
        }
        if args.step:  # a whole step = rollout + forward/backward + optimizer step + weight push
            row["step_s"] = statistics.median(sum(parts) for parts in steps[backend])
            row["train_s"] = statistics.median(train for _, train, _ in steps[backend])
            row["push_s"] = statistics.median(push for _, _, push in steps[backend])
        rows.append(row)
    return rows


def main(args: Args) -> list[dict]:
    torch.manual_seed(args.seed)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    prompts = [build_prompt(e["question"], "plain") for e in tiny_examples("test", args.num_prompts)]
    results = []
    for name in args.models:
        path = (
            str(random_model_dir(args.random_hidden_size, args.random_num_layers))
            if name == "random"
            else name
        )
        base_model, tokenizer = load_policy(path, args.dtype, args.device)
        num_params = sum(p.numel() for p in base_model.parameters())
        for row in bench_model(args, base_model, tokenizer, prompts):
            row = {"model": name, "params_M": num_params / 1e6, **row}
            results.append(row)
            print(json.dumps(row), flush=True)

    print(f"\n{args.num_prompts} prompts x {args.group_size} samples, max {args.max_new_tokens} new tokens, "
          f"T={args.temperature}, top_p={args.top_p}, {args.dtype} on {args.device} "
          f"({torch.get_num_threads()} torch threads); medians of {args.repeats}")  # fmt: skip
    header = f"{'model':>8} {'params':>7} {'backend':>7} {'start s':>8} {'rollout s':>9} {'tokens':>7} {'tok/s':>8}"
    header += f" {'step s':>7} {'train s':>7} {'push s':>7}" if args.step else ""
    print(header)
    for r in results:
        line = f"{r['model']:>8} {r['params_M']:>6.1f}M {r['backend']:>7} {r['startup_s']:>8.1f} {r['rollout_s']:>9.2f}"
        line += f" {r['tokens']:>7} {r['tokens_per_s']:>8.0f}"
        line += f" {r['step_s']:>7.2f} {r['train_s']:>7.2f} {r['push_s']:>7.3f}" if args.step else ""
        print(line)
    for name in args.models:
        by = {r["backend"]: r for r in results if r["model"] == name}
        if "hf" in by and "vllm" in by:
            msg = f"{name}: vLLM / HF tokens/s = {by['vllm']['tokens_per_s'] / by['hf']['tokens_per_s']:.2f}x"
            if args.step:
                msg += f"; HF step / vLLM step = {by['hf']['step_s'] / by['vllm']['step_s']:.2f}x"
            print(msg)
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps({"args": asdict(args), "results": results}, indent=2) + "\n"
        )
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))

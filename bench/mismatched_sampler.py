"""What a bfloat16 sampler costs on this machine: the tiny world's policy sampled through
``common.mismatched_sampler.MismatchedSampler`` as a float32 copy and as a bfloat16 copy, the same prompts
and settings, timed alternately (A B A B, after one warm-up call each) so a change in load hits both alike.
It also reports the gap that bf16 opens: the mean |behaviour − trainer| log-prob over the bf16 rollout's
tokens (the trainer in float32 scoring the same tokens), against the same for the float32 copy.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python bench/mismatched_sampler.py

This is a benchmark, not a test: numbers depend on the machine and its load. It is not run by CI.
"""

import json
import statistics
import time
from dataclasses import dataclass

import torch
import tyro

from common.data import build_prompt
from common.mismatched_sampler import MismatchedSampler
from common.model import load_policy, rollout_logprobs
from common.tiny_task import tiny_examples
from common.tiny_world import ensure_world


@dataclass
class Args:
    prompts: int = 16
    """prompts per generate call"""
    group_size: int = 8
    """samples per prompt"""
    max_new_tokens: int = 64
    """completion length limit"""
    repeats: int = 3
    """timed calls per dtype (alternating)"""
    seed: int = 1
    """torch seed of the rollouts"""


def main(args: Args) -> dict:
    model, tokenizer = load_policy(str(ensure_world()))
    examples = tiny_examples("train", num=args.prompts)
    prompts = [build_prompt(e["question"], "plain", tokenizer) for e in examples]
    samplers = {dtype: MismatchedSampler(model, tokenizer, dtype=dtype) for dtype in ("float32", "bfloat16")}
    times: dict[str, list[float]] = {dtype: [] for dtype in samplers}
    gaps: dict[str, float] = {}
    for repeat in range(args.repeats + 1):  # the first round warms up
        for dtype, sampler in samplers.items():
            torch.manual_seed(args.seed + repeat)
            start = time.perf_counter()
            rollout = sampler.generate(prompts, args.group_size, args.max_new_tokens)
            elapsed = time.perf_counter() - start
            if repeat:
                times[dtype].append(elapsed)
            else:
                trainer = rollout_logprobs(model, rollout)
                mask = rollout.completion_mask
                gaps[dtype] = float(((trainer - rollout.behavior_logprobs).abs() * mask).sum() / mask.sum())
    median = {dtype: statistics.median(t) for dtype, t in times.items()}
    out = {
        "threads": torch.get_num_threads(),
        "median_s": median,
        "bf16_over_fp32": median["bfloat16"] / median["float32"],
        "mean_abs_logprob_gap": gaps,
    }
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main(tyro.cli(Args))

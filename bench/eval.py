"""Held-out pass@k and pass^k of any model or checkpoint on any supported dataset: ``./run.sh eval``.

Samples ``--n`` completions for each of the first ``--problems`` problems of ``--dataset`` (its test split
by default) and scores them with the verifier every script trains with (``common.evaluate.evaluate_policy``).
It prints, for k = 1, 2, 4, ..., n, the unbiased pass@k (at least one of k samples right) and pass^k (all
k right, ``common.evaluate.pass_hat_k``), then pass@1 per category (tier, subject or level), and writes
everything, with one line per problem, to ``--output`` as JSON.

    ./run.sh eval                                                     # the tiny world's base policy
    ./run.sh eval --model runs/grpo__1 --n 16                         # a run's newest checkpoint
    ./run.sh eval --model runs/grpo__1/checkpoints/step-00000100/model --dataset tiny:long
    ./run.sh eval --model Qwen/Qwen2.5-Math-1.5B --dataset math500 --template qwen-math \\
        --max-new-tokens 1024 --n 16 --dtype bfloat16 --rollout vllm --output runs/eval/qwen-base.json

``--model`` takes "tiny" (or another built-in world), a model directory, a Hugging Face model id, or a
run's checkpoint: ``runs/NAME/checkpoints/step-N/model``, the step directory above it, or the run
directory itself (its newest complete checkpoint). Bad input (a missing model directory, an unknown
dataset, split or template, a flag out of range) ends in one line naming the flag, before anything loads.
pass@1 is the expected accuracy of one sample at ``--temperature``; the numbers are estimates over
``--problems`` problems, with the sampling noise of ``--n`` samples each.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import tyro

from common.checkpoint import latest_checkpoint
from common.data import check_dataset, check_template, load_examples
from common.evaluate import default_ks, evaluate_policy
from common.model import check_model_path, load_policy
from common.rollout import make_sampler
from common.tiny_task import WORLD_NAMES
from common.tiny_world import ensure_world
from common.tracking import print_table


@dataclass
class Args:
    model: str = "tiny"
    """"tiny" (the built-in world), a model directory, a Hugging Face model id, or a run's checkpoint
    (runs/NAME/checkpoints/step-N/model, the step directory, or the run directory for its newest one)"""
    dataset: str = "tiny"
    """held-out problems: "tiny", "tiny:TIER,...", "gsm8k", "math", "math500", "hf:NAME[:CONFIG]" or a .jsonl file"""
    split: str = "test"
    """dataset split (math500 has only "test"; a .jsonl file has none and ignores it)"""
    question_field: str | None = None
    """question column for hf:/jsonl datasets"""
    answer_field: str | None = None
    """answer column for hf:/jsonl datasets"""
    problems: int = 500
    """evaluate the first N problems of the split (500: all of MATH-500)"""
    n: int = 16
    """samples per problem: pass@k and pass^k for k = 1, 2, 4, ..., n"""
    template: str = "plain"
    """prompt template: plain, qwen-math, r1, chat (the tokenizer's own)"""
    max_new_tokens: int = 80
    """completion length limit (80 fits the tiny world; real models on MATH need 1,000 or more)"""
    temperature: float = 1.0
    """sampling temperature (0: greedy, every sample the same)"""
    top_p: float = 1.0
    """nucleus sampling threshold"""
    rollout: Literal["hf", "vllm"] = "hf"
    """sampling engine: HF generate or vLLM"""
    vllm_gpu_memory_utilization: float = 0.8
    """share of GPU memory vLLM may take with --rollout vllm (nothing trains beside it here)"""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """torch device"""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """model weights dtype"""
    seed: int = 0
    """seed of torch's generator, which every sample is drawn from"""
    output: str | None = None
    """where the results are written as JSON (its directory is made); default: runs/eval/MODEL--DATASET--nN.json"""


def default_output(args: Args) -> str:
    """``runs/eval/MODEL--DATASET--nN.json``, each name with its slashes and colons as "_".

    >>> default_output(Args(model="runs/grpo__1", dataset="tiny:long", n=8))
    'runs/eval/runs_grpo__1--tiny_long--n8.json'
    """
    slug = lambda name: name.strip("/").replace("/", "_").replace(":", "_")  # noqa: E731
    return f"runs/eval/{slug(args.model)}--{slug(args.dataset)}--n{args.n}.json"


def resolve_model(model: str) -> str:
    """The model directory (or world name, or hub id) behind ``--model``: a checkpoint step directory means
    its ``model/``; a run directory means its newest complete checkpoint's ``model/``. Anything else is
    returned unchanged; a run directory without a complete checkpoint raises FileNotFoundError.

    >>> resolve_model("tiny"), resolve_model("Qwen/Qwen2.5-Math-1.5B")
    ('tiny', 'Qwen/Qwen2.5-Math-1.5B')
    """
    path = Path(model).expanduser()
    if model in WORLD_NAMES or not path.is_dir():
        return model
    if (path / "model" / "config.json").is_file():
        return str(path / "model")
    if (path / "checkpoints").is_dir():
        newest = latest_checkpoint(path)
        if newest is None:
            raise FileNotFoundError(f"--model {model!r}: a run directory with no complete checkpoint")
        return str(newest / "model")
    return model  # a model directory (a run directory has a config.json too: the checks above come first)


def check_args(args: Args) -> str:
    """Exit with one line naming the flag if an argument cannot work; return the model to load. Loads
    nothing (a built-in world named by --model is made ready, as every script's preflight does). Fills
    in the default ``args.output``."""
    args.output = args.output or default_output(args)
    problems = [
        (args.n < 1, f"--n must be >= 1, got {args.n}"),
        (args.problems < 1, f"--problems must be >= 1, got {args.problems}"),
        (args.max_new_tokens < 1, f"--max-new-tokens must be >= 1, got {args.max_new_tokens}"),
        (args.temperature < 0, f"--temperature must be >= 0, got {args.temperature}"),
        (not 0 < args.top_p <= 1, f"--top-p must be in (0, 1], got {args.top_p}"),
        (not 0 < args.vllm_gpu_memory_utilization <= 1, "--vllm-gpu-memory-utilization must be in (0, 1]"),
        (Path(args.output).is_dir(), f"--output {args.output!r} is a directory; give a file name"),
        (
            args.rollout == "vllm" and importlib.util.find_spec("vllm") is None,
            "--rollout vllm: vLLM is not installed here (docs/gpu.md: requirements-vllm-gpu.txt); use --rollout hf",
        ),
    ]
    for failed, message in problems:
        if failed:
            raise SystemExit(f"error: {message}")
    for flag, check in [
        ("--model", lambda: check_model_path(resolve_model(args.model), flag="--model")),
        ("--template", lambda: check_template(args.template)),
        (
            "--dataset",
            lambda: check_dataset(args.dataset, args.split, args.question_field, args.answer_field),
        ),
        ("--output", lambda: _check_writable_parent(args.output)),
    ]:
        try:
            check()
        except (ValueError, OSError) as error:
            message = str(error)
            raise SystemExit(
                f"error: {message if message.startswith(flag) else f'{flag}: {message}'}"
            ) from None
    if args.model in WORLD_NAMES:
        ensure_world(args.model)
    return resolve_model(args.model)


def _check_writable_parent(path: str) -> None:
    """The nearest existing directory above ``path`` must be one this process may write in."""
    existing = Path(path).absolute().parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write in {existing}")


def main(args: Args) -> dict:
    model_path = check_args(args)
    start = time.time()
    torch.manual_seed(args.seed)
    examples = load_examples(
        args.dataset, args.split, args.question_field, args.answer_field, limit=args.problems, seed=args.seed
    )
    if len(examples) < args.problems:
        print(
            f"note: {args.dataset} has {len(examples)} usable problems; evaluating all of them",
            file=sys.stderr,
        )
    model, tokenizer = load_policy(model_path, args.dtype, args.device)
    model.eval()
    backend = {"compute_logprobs": False} if args.rollout == "hf" else {}
    sampler = make_sampler(
        args.rollout, model, tokenizer, gpu_memory_utilization=args.vllm_gpu_memory_utilization, **backend
    )
    torch.manual_seed(args.seed)  # again: the samples depend on --seed only, not on what loading drew
    result = evaluate_policy(
        model, tokenizer, examples, n=args.n, template=args.template, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_p=args.top_p, sampler=sampler, desc=f"eval {args.model}",
    )  # fmt: skip

    ks = default_ks(args.n)
    report = {
        "model": args.model,
        "model_path": model_path,
        "dataset": args.dataset,
        "split": args.split,
        "n": args.n,
        "num_problems": len(examples),
        "pass@k": {str(k): result["curve"][k] for k in ks},
        "pass^k": {str(k): result["pass_hat_curve"][k] for k in ks},
        "mean_reward": result["mean_reward"],
        "parsed_rate": result["parsed_rate"],
        "truncated_rate": result["truncated_rate"],
        "per_category": result["per_category"],
        "problems": [
            {"source": e.source, "category": e.category, "answer": e.answer, "correct": c}
            for e, c in zip(examples, result["correct_counts"])
        ],
        "args": asdict(args),
        "wall_s": time.time() - start,
    }
    title = f"{args.model} on {args.dataset} ({len(examples)} problems, n={args.n}, T={args.temperature})"
    print_table(
        [{"k": k, "pass@k": result["curve"][k], "pass^k": result["pass_hat_curve"][k]} for k in ks],
        ["k", "pass@k", "pass^k"],
        title=title,
    )
    print()
    print_table(
        [
            {"category": cat, "problems": v["count"], "pass@1": v["pass@1"]}
            for cat, v in result["per_category"].items()
        ],
        ["category", "problems", "pass@1"],
    )
    print(f"\nparsed {result['parsed_rate']:.3f}, truncated {result['truncated_rate']:.3f} of the samples")
    if result["truncated_rate"] > 0.05:
        print(f"note: {result['truncated_rate']:.0%} of the samples hit --max-new-tokens {args.max_new_tokens}; "
              "raise it for a fair number", file=sys.stderr)  # fmt: skip
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    print(f"results: {args.output}")
    return report


if __name__ == "__main__":
    main(tyro.cli(Args))

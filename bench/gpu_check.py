"""The GPU check: ``algos/grpo.py``'s own sampler and update on a randomly initialised model of
Qwen2.5-Math-1.5B's shape, timed and measured in one short run that stops itself at a deadline.

A GPU machine is lent to this project now and then for a few minutes. This script is what to run on it
first: one command, about 4.5 minutes, every result written the moment it is measured, so a run cut short
still returns numbers. It answers what the GPU recipes (docs/gpu.md) had never been checked for: does a step at
their settings fit in memory, in which dtype, and where does the time go.

What it runs, in order of importance (the deadline cuts the tail; what was skipped is listed):

1. float32, the GPU recipe's settings: peak memory of one ``update_policy`` step at micro-batch 8 with 1,024
   completion tokens per row and gradient checkpointing on; generation; one training configuration
   (checkpointing on, micro-batch 8).
2. bfloat16: generation, then the four training configurations (checkpointing off/on × micro-batch 8/32),
   then the 8 × 1,024 memory step with checkpointing on and off.
3. float32 again: the 8 × 1,024 step without checkpointing, then the other three configurations.

- Model: ``Qwen2ForCausalLM`` built from the config below, randomly initialised on the device (nothing is
  downloaded). The numbers are those of Qwen/Qwen2.5-Math-1.5B's ``config.json`` (hidden 1,536, 28 layers,
  12 heads, 2 KV heads, intermediate 8,960, vocabulary 151,936, RoPE θ 10,000, 4,096 positions, RMSNorm ε
  1e-6, tied embeddings), as read from public copies of that file: mlx-community/Qwen2.5-Math-1.5B-bf16 at
  revision c4eab3af176f2821f3e0f8c16aa73f9bd1e6043c (a conversion of the original with its config unchanged)
  and unsloth/Qwen2.5-Math-1.5B; NVIDIA-NeMo/Skills' docs/releases/openmathreasoning/training.md edits
  exactly ``"max_position_embeddings": 4096`` and ``"rope_theta": 10000`` in the original's config.json.
  1,543,714,304 parameters (the LM head shares the embedding).
- Tokenizer: the real one. Qwen2.5 uses Qwen's byte-level BPE unchanged (151,643 merges-ranked tokens; the
  Qwen2.5 report's "vocabulary of 151,643 regular tokens") with control tokens from id 151,643 on. The ranks
  ship in ``bench/data/qwen/qwen.tiktoken.gz``, a copy of ``qwen_agent/utils/qwen.tiktoken`` from
  QwenLM/Qwen-Agent (Apache-2.0; bench/data/qwen/README.md), turned into a ``tokenizers`` BPE here
  (``qwen_tokenizer``, a few seconds) with the three control tokens the template and the EOS use. Not the
  tiny world's tokenizer padded to 151,936: its byte-level vocabulary makes a MATH prompt three to four
  times as many tokens, so the prompt lengths, and with them the sequence lengths this check times, would
  not be those of the real model. The encoder is checked against published Qwen ids in the tests.
- Prompts: the first 64 problems of MATH-500 (``bench/data/verify/math500_test.jsonl.gz``) under the
  ``qwen-math`` template, one completion each.
- Generation: ``common.rollout.make_sampler("hf", model, tokenizer).generate(...)``, grpo.py's sampler, once
  per dtype, 512 new tokens at temperature 1, after an untimed warm-up call of 16 tokens (a dtype's first
  call pays one-time costs: 43.9 s against 18.6 s for the next bfloat16 call on the H200). A random model
  rarely samples its EOS, but to make every completion exactly 512 tokens the model's
  ``generation_config.min_new_tokens`` is set to 512 (transformers then masks the EOS until then; the
  sampler is not changed).
- Training: ``algos.grpo.update_policy(model, optimizer, batch, args)`` on those rollouts, with
  ``batch = {"rollout": rollout, "advantages": advantages}`` as grpo.py's ``main()`` builds it, AdamW as
  ``main()`` makes it, grpo.py's defaults otherwise (one optimizer step per batch). The advantages are random
  (a random model's answers are all wrong; the update's cost does not depend on their values). One warm-up
  step, then two timed steps per configuration.
- Where the time goes: generation; the old-logprob pass (``common.model.rollout_logprobs``, the no-grad pass
  ``update_policy`` adds with ``--updates-per-batch`` > 1 or a rollout correction, timed once per dtype and
  micro-batch); forward/backward (the step minus the optimizer; gradient clipping included); the optimizer
  step (timed by optimizer hooks).
- Throughput: generation tokens/s (generated tokens over the ``generate`` call's wall time); trainer
  positions/s (every position of the padded ``[rows, prompt + completion]`` batch) and completion tokens/s.
- Model FLOPs utilisation: model FLOPs per training step (``model_flops``: 6 × matmul parameters × positions
  for the transformer body, causal attention 6 × layers × hidden × S² per sequence, the LM head 6 × hidden
  × vocabulary per completion token: the head runs on the completion only; recomputation by checkpointing
  is not counted) over the step's time, against the peak of the GPU: NVIDIA's H200 datasheet
  (nvidia.com/en-us/data-center/h200) gives BF16 Tensor Core 1,979 TFLOPS and TF32 Tensor Core 989 TFLOPS
  with 2:4 sparsity, so 989.5 and 494.7 dense, and FP32 67 TFLOPS. float32 matmuls use the FP32 peak when
  torch's float32 matmul precision is "highest" (its default: no TF32), the TF32 peak otherwise. None on
  the CPU. Other GPUs: pass their peaks (``--peak-bf16-tflops`` ...).
- Memory: ``torch.cuda.max_memory_allocated`` per measurement, reset before each (``None`` on the CPU).
  Out of memory in one measurement is recorded (``status: "oom"``) and the script goes on; any other error
  is recorded with its traceback (``status: "error"``, and the exit code is 1).
- The deadline (``--deadline-s``, 270 s of wall time from the start) is checked before every measurement
  and between training steps; a configuration that the previous one of its dtype says would end past it is
  not started. Each result is appended to ``gpu_check.jsonl`` under ``--out`` (default: ``$OUT`` if set,
  else runs/gpu_check/) as it finishes, and ``gpu_check.md`` (the summary tables, what was skipped and why)
  is rewritten after each.

On the GPU machine (torch, transformers, sympy, tensorboard and matplotlib there; tyro and its dependencies
carried as wheels in ``.whl/``, filled here beforehand with the ``pip download`` line of docs/gpu-wheels.md):

    pip download --no-deps -d .whl tyro==1.0.17 docstring-parser==0.18.0 typeguard==4.6.1 \\
        typing_extensions==4.16.0 math-verify==0.9.0 latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2
    # then, on the machine (the working tree and .whl/ travel; 64 MiB in all):
    pip install --no-index --no-deps .whl/*.whl && PYTHONPATH=. python bench/gpu_check.py --out $OUT

with a timeout of about 330 s (the default deadline plus start-up); ``.whl/`` is ignored by git, so it must be
named among the paths that travel with the working tree. On the CPU, end to end in well under a
minute (a two-layer model of width 32 with the real vocabulary, 4 prompts, 16 new tokens):

    PYTHONPATH=. .venv/bin/python bench/gpu_check.py --shape tiny --out runs/gpu_check_tiny

vLLM rollouts (``--rollout vllm``) are not measured here: the GPU machine has no vLLM.
"""

from __future__ import annotations

import base64
import dataclasses
import gc
import gzip
import json
import math
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import tyro

import algos.grpo as grpo
from common.data import build_prompt
from common.model import rollout_logprobs, set_gradient_checkpointing
from common.rollout import make_sampler
from common.rollout_types import Rollout
from common.tracking import markdown_table

ROOT = Path(__file__).resolve().parent.parent
MATH500 = ROOT / "bench" / "data" / "verify" / "math500_test.jsonl.gz"
QWEN_RANKS = ROOT / "bench" / "data" / "qwen" / "qwen.tiktoken.gz"

QWEN_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
"""Qwen's pre-tokenizer: words, single digits, punctuation runs, newlines, spaces (qwen_agent's PAT_STR)."""
QWEN_CONTROL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
"""Ids 151,643-151,645: the EOS and pad of Qwen2.5-Math-1.5B, and the chat markers of the qwen-math template."""

QWEN25_MATH_1_5B = {
    "vocab_size": 151_936, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
    "num_attention_heads": 12, "num_key_value_heads": 2, "max_position_embeddings": 4096,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}, "rms_norm_eps": 1e-6,
    "hidden_act": "silu", "tie_word_embeddings": True, "use_sliding_window": False,
    "bos_token_id": 151_643, "eos_token_id": 151_643, "pad_token_id": 151_643,
}  # fmt: skip
"""Qwen/Qwen2.5-Math-1.5B's config.json (the module docstring gives the sources)."""


@dataclass(frozen=True)
class Shape:
    """One size of the check: the model and the workload."""

    model: dict
    """Qwen2Config keyword arguments"""
    prompts: int
    """MATH-500 problems, one completion each"""
    new_tokens: int
    """completion length of the generated rollouts (every completion is exactly this long)"""
    micro_batches: tuple[int, int]
    """the two micro-batch sizes of the training configurations"""
    long_rows: int
    """rows (and micro-batch) of the memory step at the GPU recipes' length"""
    long_tokens: int
    """completion tokens per row of that memory step"""


SHAPES = {
    "1.5b": Shape(QWEN25_MATH_1_5B, prompts=64, new_tokens=512, micro_batches=(8, 32), long_rows=8, long_tokens=1024),
    "tiny": Shape(
        {**QWEN25_MATH_1_5B, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 2, "num_key_value_heads": 1},
        prompts=4, new_tokens=16, micro_batches=(2, 4), long_rows=2, long_tokens=32,
    ),
}  # fmt: skip


@dataclass
class Args:
    shape: Literal["1.5b", "tiny"] = "1.5b"
    """1.5b: Qwen2.5-Math-1.5B's shape, 64 prompts x 512 tokens (the GPU run); tiny: the same script on the
    CPU in well under a minute (2 layers of width 32, the real vocabulary, 4 prompts x 16 tokens)"""
    out: str | None = None
    """directory of gpu_check.jsonl and gpu_check.md (default: $OUT if set, else runs/gpu_check)"""
    deadline_s: float = 270.0
    """wall seconds from the start after which nothing new starts (the run then ends within one step)"""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """torch device"""
    learning_rate: float = 1e-6
    """AdamW learning rate of the steps (the README recipes'; the cost does not depend on it)"""
    seed: int = 0
    """seed of the random weights, the sampling and the advantages"""
    peak_bf16_tflops: float = 989.5
    """dense bfloat16 peak of the GPU in TFLOP/s (H200 SXM: 1,979 with sparsity, NVIDIA's datasheet)"""
    peak_fp32_tflops: float = 67.0
    """float32 peak without TF32 in TFLOP/s (H200 SXM, NVIDIA's datasheet)"""
    peak_tf32_tflops: float = 494.7
    """dense TF32 peak in TFLOP/s, used for float32 when torch allows TF32 matmuls (H200 SXM: 989 sparse)"""
    float32_matmul_precision: Literal["highest", "high"] = "highest"
    """``torch.set_float32_matmul_precision`` before anything runs: "high" lets float32 matmuls use TF32"""
    only: tuple[str, ...] = ()
    """these measurements instead of the plan, in this order (``parse_item``): generate:DTYPE,
    train:DTYPE:CHECKPOINTING:MICRO_BATCH, memory:DTYPE:CHECKPOINTING; e.g. generate:bfloat16 train:float32:1:8"""


def plan(shape: Shape) -> list[tuple]:
    """The measurements in the order they run: ``("memory", dtype, checkpointing)``, ``("generate", dtype)``
    or ``("train", dtype, checkpointing, micro_batch)``. Most important first, as the deadline cuts the tail.

    >>> [p for p in plan(SHAPES["1.5b"]) if p[1] == "float32"][:3]
    [('memory', 'float32', True), ('generate', 'float32'), ('train', 'float32', True, 8)]
    """
    small, large = shape.micro_batches
    return [
        ("memory", "float32", True),  # the README recipe: float32, checkpointing, micro-batch 8 x 1,024
        ("generate", "float32"),
        ("train", "float32", True, small),
        ("generate", "bfloat16"),
        *[
            ("train", "bfloat16", checkpointing, mb)
            for mb in (small, large)
            for checkpointing in (False, True)
        ],
        ("memory", "bfloat16", True),
        ("memory", "bfloat16", False),
        ("memory", "float32", False),
        ("train", "float32", False, small),
        ("train", "float32", True, large),
        ("train", "float32", False, large),
    ]


def parse_item(text: str) -> tuple:
    """One ``--only`` measurement as ``plan`` writes it; checkpointing is 0 or 1.

    >>> parse_item("generate:bfloat16"), parse_item("train:float32:1:8"), parse_item("memory:float32:0")
    (('generate', 'bfloat16'), ('train', 'float32', True, 8), ('memory', 'float32', False))
    """
    kind, *fields = text.split(":")
    arity = {"generate": 1, "memory": 2, "train": 3}.get(kind)
    if arity is None or len(fields) != arity or fields[0] not in ("float32", "bfloat16") or (arity > 1 and fields[1] not in "01"):  # fmt: skip
        raise SystemExit(
            f"--only {text!r}: expected generate:DTYPE, memory:DTYPE:0|1 or train:DTYPE:0|1:MICRO_BATCH"
        )
    item = (kind, fields[0], *([fields[1] == "1"] if arity > 1 else []))
    return (*item, int(fields[2])) if kind == "train" else item


def model_flops(config: dict, rows: int, width: int, completion: int) -> int:
    """Model FLOPs of one training step (forward and backward) on ``rows`` sequences of ``width`` positions
    whose last ``completion`` positions are scored: 3 x the forward's (the backward pass costs two forwards).

    Forward, per sequence: 2 x (matmul weights of the layers) per position; causal attention 2 x layers x
    hidden x width² (QKᵀ and the weighted sum of V, each over the half of the score matrix a causal mask
    keeps); the LM head 2 x hidden x vocabulary per completion position (``common.model.completion_logprobs``
    applies it to the completion only). Biases, norms and softmaxes are left out; so is what activation
    checkpointing recomputes (hardware FLOPs, not model FLOPs).

    One layer of width 2 (one head, one KV head), MLP 4, vocabulary 10; one row of 3 positions, 2 scored:
    weights per layer 2·2 (q) + 2·2 (k) + 2·2 (v) + 2·2 (o) + 3·2·4 (MLP) = 40, forward 2·40·3 = 240 (body)
    + 2·1·2·3² = 36 (attention) + 2·2·10·2 = 80 (head) = 356, training 3 x 356 = 1,068.

    >>> model_flops({"hidden_size": 2, "num_attention_heads": 1, "num_key_value_heads": 1,
    ...              "intermediate_size": 4, "num_hidden_layers": 1, "vocab_size": 10}, rows=1, width=3, completion=2)
    1068
    """
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    kv = hidden // config["num_attention_heads"] * config["num_key_value_heads"]  # K and V widths (GQA)
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * config["intermediate_size"]
    body = 2 * layers * per_layer * width
    attention = 2 * layers * hidden * width**2
    head = 2 * hidden * config["vocab_size"] * completion
    return 3 * rows * (body + attention + head)


# ---------------------------------------------------------------------------------------------------
# The tokenizer, the prompts and the model
# ---------------------------------------------------------------------------------------------------


def byte_symbols() -> dict[int, str]:
    """The byte-level BPE alphabet: each byte as one printable character. The 188 printable Latin-1 bytes stand
    for themselves, the other 68 (controls, space, 0x7F-0xA0, 0xAD) for U+0100 onwards, in byte order.

    >>> symbols = byte_symbols()
    >>> symbols[ord("a")], symbols[ord(" ")], symbols[ord("\\n")], len(set(symbols.values()))
    ('a', 'Ġ', 'Ċ', 256)
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(0x100 + k) for k, b in enumerate(others)}}


def qwen_tokenizer(ranks_path: Path = QWEN_RANKS):
    """Qwen2.5's tokenizer from Qwen's BPE ranks (one ``base64(token) rank`` per line): the vocabulary is the
    ranks, the merges every split of a token into two tokens, ordered by the rank of the token they make (so
    BPE merges in tiktoken's order); NFC, Qwen's pre-tokenizer split, byte-level symbols; the control tokens
    at ids 151,643 onwards. Left padding with ``<|endoftext|>``, as ``common.model.load_policy`` sets up."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    with gzip.open(ranks_path, "rt", encoding="ascii") as file:
        ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in file if line.strip())}  # fmt: skip
    symbols = byte_symbols()
    spell = lambda token: "".join(symbols[b] for b in token)  # noqa: E731
    merges = sorted(
        (rank, ranks[token[:i]], ranks[token[i:]], token[:i], token[i:])
        for token, rank in ranks.items()
        for i in range(1, len(token))
        if token[:i] in ranks and token[i:] in ranks
    )
    bpe = models.BPE({spell(t): r for t, r in ranks.items()}, [(spell(a), spell(b)) for *_, a, b in merges], ignore_merges=True)  # fmt: skip
    tokenizer = Tokenizer(bpe)
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]  # fmt: skip
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_CONTROL_TOKENS])
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>", padding_side="left"
    )
    assert wrapped.convert_tokens_to_ids(list(QWEN_CONTROL_TOKENS)) == [len(ranks) + i for i in range(3)]
    return wrapped


def math500_prompts(n: int, path: Path = MATH500) -> list[str]:
    """The first ``n`` MATH-500 problems under the ``qwen-math`` template."""
    with gzip.open(path, "rt", encoding="utf-8") as file:
        problems = [json.loads(line)["problem"] for line in file if line.strip()][:n]
    return [build_prompt(problem, "qwen-math") for problem in problems]


def qwen_shaped_policy(shape: Shape, dtype: torch.dtype, device: str, seed: int):
    """Qwen2ForCausalLM of ``shape.model`` with random weights, built on ``device`` (no host copy)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(Qwen2Config(**shape.model))
    return model.to(dtype)


# ---------------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------------


class Session:
    """Everything the measurements share: the clock, the device, the policy of one dtype at a time with its
    AdamW (rebuilt when another dtype is asked for), the rollouts and the results."""

    def __init__(self, args: Args, shape: Shape, report: Report):
        self.args, self.shape, self.report = args, shape, report
        self.cuda = torch.device(args.device).type == "cuda"
        self.dtype: str | None = None
        self.model = self.optimizer = None
        self.tokenizer = None
        self.prompts: list[str] = []
        self.rollouts: dict[str, Rollout] = {}
        self.old_logprob_s: dict[tuple[str, int], float] = {}
        self.step_s: dict[str, float] = {}  # the slowest timed step so far, per dtype

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def timed(self, fn: Callable):
        """``(fn(), wall seconds)``, the device synchronised before and after."""
        self.sync()
        start = time.perf_counter()
        out = fn()
        self.sync()
        return out, time.perf_counter() - start

    def reset_peak(self) -> None:
        if self.cuda:
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def memory(self) -> dict:
        """Peak (since ``reset_peak``) and current GPU memory in bytes; None on the CPU."""
        if not self.cuda:
            return {"peak_memory_bytes": None, "peak_reserved_bytes": None, "allocated_bytes": None}
        return {
            "peak_memory_bytes": torch.cuda.max_memory_allocated(),
            "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
            "allocated_bytes": torch.cuda.memory_allocated(),
        }

    def peak_tflops(self, dtype: str) -> float | None:
        if not self.cuda:
            return None
        if dtype == "bfloat16":
            return self.args.peak_bf16_tflops
        tf32 = torch.get_float32_matmul_precision() != "highest"
        return self.args.peak_tf32_tflops if tf32 else self.args.peak_fp32_tflops

    def policy(self, dtype: str):
        """The model and AdamW of ``dtype``, building them (and recording the build) when the dtype changes."""
        if self.dtype != dtype:
            self.model = self.optimizer = None
            self.dtype = None
            self.reset_peak()
            model, seconds = self.timed(
                lambda: qwen_shaped_policy(
                    self.shape, getattr(torch, dtype), self.args.device, self.args.seed
                )
            )
            self.model, self.dtype = model, dtype
            self.optimizer = torch.optim.AdamW(
                model.parameters(), lr=self.args.learning_rate, weight_decay=0.0
            )
            parameters = sum(p.numel() for p in model.parameters())
            self.report.add({"kind": "model", "dtype": dtype, "status": "ok", "seconds": seconds, "parameters": parameters, **self.memory()})  # fmt: skip
        return self.model, self.optimizer

    def grpo_args(self, dtype: str, checkpointing: bool, micro_batch: int, new_tokens: int) -> grpo.Args:
        return dataclasses.replace(
            grpo.Args(), device=self.args.device, dtype=dtype, gradient_checkpointing=checkpointing,
            micro_batch_size=micro_batch, max_new_tokens=new_tokens, learning_rate=self.args.learning_rate,
        )  # fmt: skip

    # --- the measurements ---

    def setup(self) -> dict:
        tokenizer, seconds = self.timed(qwen_tokenizer)
        self.tokenizer, self.prompts = tokenizer, math500_prompts(self.shape.prompts)
        lengths = [len(ids) for ids in tokenizer(self.prompts, add_special_tokens=False)["input_ids"]]
        return {"tokenizer_s": seconds, "prompts": len(self.prompts), "prompt_tokens_mean": sum(lengths) / len(lengths), "prompt_tokens_max": max(lengths)}  # fmt: skip

    def generate(self, dtype: str) -> dict:
        model, _ = self.policy(dtype)
        set_gradient_checkpointing(model, False)
        sampler = make_sampler("hf", model, self.tokenizer)
        # a short warm-up first: a dtype's first generate pays one-time costs (on the H200, 2026-12-04, the
        # first bfloat16 call of 64 x 512 tokens took 43.9 s and the next 18.6 s; docs/results.md)
        warmup_tokens = min(16, self.shape.new_tokens)
        model.generation_config.min_new_tokens = warmup_tokens
        _, warmup_s = self.timed(lambda: sampler.generate(self.prompts, 1, warmup_tokens, 1.0, 1.0))
        model.generation_config.min_new_tokens = self.shape.new_tokens  # a random model: no early EOS
        torch.manual_seed(self.args.seed)
        self.reset_peak()
        rollout, seconds = self.timed(
            lambda: sampler.generate(self.prompts, 1, self.shape.new_tokens, 1.0, 1.0)
        )
        self.rollouts[dtype] = rollout
        tokens = int(rollout.completion_mask.sum())
        return {
            "rows": rollout.completion_ids.shape[0], "prompt_width": rollout.prompt_ids.shape[1],
            "completion_width": rollout.completion_ids.shape[1], "generated_tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds, "warmup_s": warmup_s, "truncated_frac": float(rollout.truncated.float().mean()), **self.memory(),
        }  # fmt: skip

    def step(self, dtype: str, checkpointing: bool, micro_batch: int, rollout: Rollout, seed: int) -> dict:
        """One ``grpo.update_policy`` call, timed: the whole step and its optimizer part."""
        model, optimizer = self.policy(dtype)
        set_gradient_checkpointing(model, checkpointing)
        args = self.grpo_args(dtype, checkpointing, micro_batch, rollout.completion_ids.shape[1])
        generator = torch.Generator().manual_seed(seed)
        advantages = torch.randn(rollout.completion_ids.shape[0], generator=generator).to(rollout.completion_ids.device)  # fmt: skip
        batch = {"rollout": rollout, "advantages": advantages}  # as grpo.main() builds it
        optimizer_s = []

        def before(*_):
            self.sync()
            optimizer_s.append(-time.perf_counter())

        def after(*_):
            self.sync()
            optimizer_s[-1] += time.perf_counter()

        hooks = [optimizer.register_step_pre_hook(before), optimizer.register_step_post_hook(after)]
        try:
            stats, seconds = self.timed(lambda: grpo.update_policy(model, optimizer, batch, args))
        finally:
            for hook in hooks:
                hook.remove()
        return {"seconds": seconds, "optimizer_s": sum(optimizer_s), "loss": stats["loss"], "grad_norm": stats["grad_norm"]}  # fmt: skip

    def train(self, dtype: str, checkpointing: bool, micro_batch: int) -> dict:
        rollout = self.rollouts[dtype]
        self.policy(dtype)  # built before the peak is reset
        rows, width = rollout.input_ids.shape
        completion = rollout.completion_ids.shape[1]
        flops = model_flops(self.shape.model, rows, width, completion)
        self.reset_peak()
        warmup = self.step(dtype, checkpointing, micro_batch, rollout, seed=self.args.seed)
        record = {"rows": rows, "positions": rows * width, "completion_tokens": int(rollout.completion_mask.sum()),
                  "model_flops": flops, "warmup_s": warmup["seconds"]}  # fmt: skip
        key = (dtype, micro_batch)
        if key not in self.old_logprob_s and self.time_left(warmup["seconds"] / 2):
            model, _ = self.policy(dtype)
            _, self.old_logprob_s[key] = self.timed(
                lambda: rollout_logprobs(model, rollout, 1.0, micro_batch)
            )
        record["old_logprob_s"] = self.old_logprob_s.get(key)
        steps = []
        for k in range(2):
            expected = max(s["seconds"] for s in [warmup, *steps])
            if not self.time_left(expected):
                break
            steps.append(self.step(dtype, checkpointing, micro_batch, rollout, seed=self.args.seed + 1 + k))
        timed = steps or [warmup]  # cut after the warm-up: its time stands in, and the record says so
        step_s = sum(s["seconds"] for s in timed) / len(timed)
        optimizer_s = sum(s["optimizer_s"] for s in timed) / len(timed)
        self.step_s[dtype] = max(self.step_s.get(dtype, 0.0), step_s)
        peak = self.peak_tflops(dtype)
        return {
            **record, "timed_steps": len(steps), "step_s": step_s, "optimizer_s": optimizer_s,
            "forward_backward_s": step_s - optimizer_s, "positions_per_s": rows * width / step_s,
            "completion_tokens_per_s": record["completion_tokens"] / step_s, "model_tflops_per_s": flops / step_s / 1e12,
            "peak_tflops": peak, "mfu": None if peak is None else flops / step_s / (peak * 1e12),
            "loss": timed[-1]["loss"], "grad_norm": timed[-1]["grad_norm"], **self.memory(),
        }  # fmt: skip

    def long_rollout(self) -> Rollout:
        """``long_rows`` MATH prompts, each followed by ``long_tokens`` random regular tokens (no EOS)."""
        shape, device = self.shape, self.args.device
        enc = self.tokenizer(self.prompts[: shape.long_rows], return_tensors="pt", padding=True, add_special_tokens=False)  # fmt: skip
        generator = torch.Generator().manual_seed(self.args.seed)
        ids = torch.randint(
            0, self.tokenizer.eos_token_id, (shape.long_rows, shape.long_tokens), generator=generator
        )
        ones = torch.ones(shape.long_rows, shape.long_tokens)
        return Rollout(
            enc["input_ids"].to(device), enc["attention_mask"].to(device), ids.to(device), ones.to(device),
            torch.zeros_like(ones).to(device), torch.ones(shape.long_rows, dtype=torch.bool).to(device),
            [""] * shape.long_rows, torch.arange(shape.long_rows).to(device),
        )  # fmt: skip

    def long_step(self, dtype: str, checkpointing: bool) -> dict:
        """Two steps on ``long_rollout``, the peak of the second: AdamW's state then exists, as in training."""
        rollout = self.long_rollout()
        self.step(dtype, checkpointing, self.shape.long_rows, rollout, seed=self.args.seed)
        self.reset_peak()
        step = self.step(dtype, checkpointing, self.shape.long_rows, rollout, seed=self.args.seed + 1)
        rows, width = rollout.input_ids.shape
        return {"rows": rows, "micro_batch_size": rows, "completion_tokens": self.shape.long_tokens,
                "positions": rows * width, "seconds": step["seconds"], **self.memory()}  # fmt: skip

    # --- the deadline ---

    def time_left(self, expected_s: float = 0.0) -> bool:
        """Whether a piece of work expected to take ``expected_s`` seconds ends before the deadline."""
        return self.report.elapsed() + expected_s < self.args.deadline_s


class Report:
    """``gpu_check.jsonl``: one JSON object per result, appended and flushed to disk as each finishes;
    ``gpu_check.md``: the summary of all of them, rewritten after each."""

    def __init__(self, out_dir: Path, header: dict):
        self.start = time.monotonic()
        out_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl, self.markdown = out_dir / "gpu_check.jsonl", out_dir / "gpu_check.md"
        self.jsonl.write_text("")
        self.records: list[dict] = []
        self.add({"kind": "env", "status": "ok", **header})

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def add(self, record: dict) -> None:
        record = {**record, "elapsed_s": round(self.elapsed(), 3)}
        self.records.append(record)
        with self.jsonl.open("a") as file:
            file.write(json.dumps(record) + "\n")
            file.flush()
            os.fsync(file.fileno())
        self.markdown.write_text(render_markdown(self.records))


def measure(session: Session, item: tuple) -> None:
    """Run one measurement of the plan (or record why not) and add its result to the report."""
    kind, dtype, *rest = item
    fields = {"kind": kind, "dtype": dtype}
    if kind != "generate":
        fields["gradient_checkpointing"] = rest[0]
    if kind == "train":
        fields["micro_batch_size"] = rest[1]
    report = session.report
    if session.tokenizer is None:
        report.add({**fields, "status": "skipped", "reason": "setup did not run"})
        return
    if kind == "train" and dtype not in session.rollouts:
        report.add(
            {**fields, "status": "skipped", "reason": f"no {dtype} rollout (its generation did not finish)"}
        )
        return
    expected = 3 * session.step_s.get(dtype, 0.0) if kind == "train" else 0.0
    if not session.time_left(expected):
        left = session.args.deadline_s - report.elapsed()
        reason = f"deadline: {left:.0f} s left" + (f", about {expected:.0f} s needed" if expected else "")
        report.add({**fields, "status": "skipped", "reason": reason})
        return
    run = {"generate": session.generate, "train": session.train, "memory": session.long_step}[kind]
    try:
        record = {**fields, "status": "ok", **run(dtype, *rest)}
    except torch.cuda.OutOfMemoryError as error:
        record = {**fields, "status": "oom", "error": str(error).splitlines()[0][:500], **session.memory()}
    except Exception as error:  # recorded, so one broken measurement does not cost the others
        record = {**fields, "status": "error", "error": f"{type(error).__name__}: {error}"[:1000],
                  "traceback": traceback.format_exc()[-4000:]}  # fmt: skip
    if record["status"] != "ok" and session.optimizer is not None:
        session.optimizer.zero_grad(set_to_none=True)
        session.reset_peak()
    report.add(record)


def main(args: Args) -> int:
    """Run the plan; 0 unless a measurement failed with an error other than out-of-memory."""
    shape = SHAPES[args.shape]
    items = [parse_item(text) for text in args.only] or plan(shape)
    torch.set_float32_matmul_precision(args.float32_matmul_precision)
    out_dir = Path(args.out or os.environ.get("OUT") or "runs/gpu_check")
    device = torch.device(args.device)
    header = {
        "command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "shape": args.shape,
        "args": dataclasses.asdict(args), "model": shape.model, "prompts": shape.prompts,
        "new_tokens": shape.new_tokens, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",  # fmt: skip
        "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": _version("transformers"),
        "python": platform.python_version(), "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }  # fmt: skip
    report = Report(out_dir, header)
    session = Session(args, shape, report)
    if session.time_left():
        try:
            report.add({"kind": "setup", "status": "ok", **session.setup()})
        except Exception as error:
            report.add({"kind": "setup", "status": "error", "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-4000:]})  # fmt: skip
    else:
        report.add({"kind": "setup", "status": "skipped", "reason": "deadline: 0 s left"})
    for item in items:
        measure(session, item)
    skipped = [r for r in report.records if r["status"] == "skipped"]
    errors = [r for r in report.records if r["status"] == "error"]
    report.add({"kind": "summary", "status": "ok", "skipped": len(skipped), "errors": len(errors),
                "ooms": sum(r["status"] == "oom" for r in report.records), "complete": not skipped})  # fmt: skip
    print(report.markdown.read_text())
    print(f"results: {report.jsonl} and {report.markdown}")
    return 1 if errors else 0


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------------
# The summary
# ---------------------------------------------------------------------------------------------------


def _gib(value) -> str:
    return "" if value is None else f"{value / 2**30:.1f}"


def _num(value, digits: int = 2) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:,.{digits}f}"


def _status(record: dict) -> str:
    return record["status"] if record["status"] == "ok" else f"{record['status']}: {record.get('reason') or record.get('error', '')}"  # fmt: skip


def render_markdown(records: list[dict]) -> str:
    """The summary of a run's records (complete or not) as markdown."""
    env = records[0]
    done = any(r["kind"] == "summary" for r in records)
    skipped = [r for r in records if r["status"] == "skipped"]
    state = "complete" if done and not skipped else f"cut: {len(skipped)} skipped" if done else "in progress"
    lines = [
        f"# GPU check: {env['device']}, shape {env['shape']} ({state})",
        "",
        f"`{env['command']}` at {env['date']}; torch {env['torch']} (CUDA {env['cuda']}), transformers "
        f"{env['transformers']}, Python {env['python']}; float32 matmul precision {env['float32_matmul_precision']!r}; "
        f"{env['prompts']} MATH-500 prompts (qwen-math template) x {env['new_tokens']} new tokens.",
        "",
    ]
    by_kind = lambda kind: [r for r in records if r["kind"] == kind]  # noqa: E731
    for setup in by_kind("setup"):
        lines += [f"Setup ({_status(setup)}): the Qwen tokenizer built in {_num(setup.get('tokenizer_s'))} s; "
                  f"prompt tokens mean {_num(setup.get('prompt_tokens_mean'), 0)}, max {setup.get('prompt_tokens_max', '')}.", ""]  # fmt: skip
    generation = {r["dtype"]: r for r in by_kind("generate") if r["status"] == "ok"}
    sections = [
        ("Model builds (random weights on the device)", ["dtype", "status", "seconds", "parameters", "GiB allocated"],
         lambda r: [r["dtype"], _status(r), _num(r.get("seconds")), f"{r['parameters']:,}", _gib(r.get("allocated_bytes"))],
         by_kind("model")),
        ("Generation (HF generate through make_sampler('hf'))",
         ["dtype", "status", "rows", "prompt width", "new tokens", "seconds", "tokens/s", "peak GiB"],
         lambda r: [r["dtype"], _status(r), r.get("rows", ""), r.get("prompt_width", ""), r.get("generated_tokens", ""),
                    _num(r.get("seconds")), _num(r.get("tokens_per_s"), 0), _gib(r.get("peak_memory_bytes"))],
         by_kind("generate")),
        ("Training steps (grpo.update_policy; warm-up + timed steps)",
         ["dtype", "checkpointing", "micro-batch", "status", "timed", "step s", "positions/s", "completion tok/s",
          "model TFLOP/s", "MFU", "peak GiB"],
         lambda r: [r["dtype"], r["gradient_checkpointing"], r["micro_batch_size"], _status(r), r.get("timed_steps", ""),
                    _num(r.get("step_s")), _num(r.get("positions_per_s"), 0), _num(r.get("completion_tokens_per_s"), 0),
                    _num(r.get("model_tflops_per_s"), 1), "" if r.get("mfu") is None else f"{r['mfu']:.1%}",
                    _gib(r.get("peak_memory_bytes"))], by_kind("train")),
        ("Where one GRPO step's time goes (seconds; generation of this dtype's rollout, the old-logprob pass, "
         "forward/backward, the optimizer step)",
         ["dtype", "checkpointing", "micro-batch", "generation", "old-logprob", "forward/backward", "optimizer", "shares"],
         lambda r: [r["dtype"], r["gradient_checkpointing"], r["micro_batch_size"], *_time_split(r, generation.get(r["dtype"]))],
         [r for r in by_kind("train") if r["status"] == "ok"]),
        ("One step at the GPU recipes' micro-batch and length (rows x completion tokens, one micro-batch)",
         ["dtype", "checkpointing", "rows x tokens", "status", "seconds", "peak GiB"],
         lambda r: [r["dtype"], r["gradient_checkpointing"], f"{r.get('rows', '')} x {r.get('completion_tokens', '')}",
                    _status(r), _num(r.get("seconds")), _gib(r.get("peak_memory_bytes"))], by_kind("memory")),
    ]  # fmt: skip
    for title, columns, row, rows in sections:
        if rows:
            lines += [f"## {title}", "", markdown_table([row(r) for r in rows], columns, max_chars=None), ""]
    errors = [r for r in records if r["status"] == "error"]
    for r in errors:
        lines += [
            f"## Error in {r['kind']} {r.get('dtype', '')}",
            "",
            "```",
            r.get("traceback", r["error"]),
            "```",
            "",
        ]
    lines += [
        "Positions/s: every position of the padded [rows, prompt + completion] batch per second of a step. "
        "Peak GiB: torch.cuda.max_memory_allocated over the measurement (empty on the CPU). MFU: model FLOPs "
        "(model_flops in bench/gpu_check.py) per timed step over the GPU's peak for the dtype "
        f"({', '.join(f'{k} {v}' for k, v in env['args'].items() if k.startswith('peak_'))} TFLOP/s).",
    ]
    return "\n".join(lines) + "\n"


def _time_split(train: dict, generation: dict | None) -> list[str]:
    parts = [generation["seconds"] if generation else None, train.get("old_logprob_s"), train["forward_backward_s"], train["optimizer_s"]]  # fmt: skip
    total = sum(p for p in parts if p is not None)
    shares = " / ".join("-" if p is None else f"{p / total:.0%}" for p in parts)
    return [*[_num(p) for p in parts], shares]


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args)))

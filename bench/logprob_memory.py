"""Peak memory of the log-probs of a training micro-batch at a real vocabulary size: the row-chunked LM
head the scripts used before (``rowwise_completion_logprobs``, kept here as the baseline) against
``common.model.completion_logprobs`` (position chunks, each checkpointed), on the CPU.

A random Qwen2 with Qwen2.5's vocabulary (151,936 tokens, tied embeddings) but a tiny body (width 64,
2 layers) scores ``--rows`` completions of ``--completion-tokens`` tokens, then the backward pass of
``sum(logprobs)`` runs; the entropy is computed as a detached metric, as in the training loops. Two
measures of the peak, each taken over that forward and backward pass:

- tensor memory: the largest total size of the tensor storages created inside the pass and alive at the
  same moment, counted by a ``TorchDispatchMode`` that sees every operator of the forward and the backward
  pass (``PeakTensorMemory``; buffers that an operator frees before returning are not seen);
- RSS: the process's peak resident memory above its level at the start (``VmHWM`` after resetting it
  through ``/proc/self/clear_refs``; Linux only), which includes the allocator's own behaviour.

    PYTHONPATH=. .venv/bin/python -m bench.logprob_memory                     # 4 x 256 tokens
    PYTHONPATH=. .venv/bin/python -m bench.logprob_memory --rows 8            # 8 x 256 tokens
    PYTHONPATH=. .venv/bin/python -m bench.logprob_memory --dtype bfloat16

Measured on a shared 2-core CPU machine (torch 2.13; peaks in MiB, the model's parameters excluded;
the seconds are too noisy there to compare):

    rows x C   dtype     old: tensor / RSS   new: tensor / RSS   new chunk
    4 x 256    float32   2,425 / 2,403         855 / 807         441 tokens
    8 x 256    float32   4,813 / 4,795         869 / 811         441 tokens
    4 x 256    bfloat16  2,400 / 2,400         812 / 832         441 tokens

The old peak grows with the batch's tokens (float32 logits, their log-softmax kept for the backward pass,
and the entropy's temporaries, each ``tokens x V x 4`` bytes: 594 MiB at 1,024 tokens); the new one is
about three chunks of logits (3 x 256 MiB at the default ``common.model.LOGITS_CHUNK_ELEMENTS``) at any
batch size. At 8 x 1,024 tokens each such full-batch tensor of the old implementation is 8 x 1,024 x
151,936 x 4 B = 5.0 GB.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
import tyro
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from common.model import completion_logprobs, default_chunk_tokens, position_ids_from_mask
from common.tracking import markdown_table


@dataclass
class Args:
    vocab_size: int = 151_936
    """vocabulary size of the random model (151,936: Qwen2.5's)"""
    hidden_size: int = 64
    """width of the random model's body (the LM head's memory does not depend on it beyond its weight)"""
    num_layers: int = 2
    """transformer layers of the random model"""
    rows: int = 4
    """completions in the micro-batch"""
    prompt_tokens: int = 32
    """prompt tokens before each completion"""
    completion_tokens: int = 256
    """C: completion tokens per row (rows x C tokens are scored)"""
    chunk_tokens: int | None = None
    """tokens per LM-head chunk of the new implementation (default: common.model.default_chunk_tokens)"""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """dtype of the model's weights"""
    seed: int = 0
    """seed of the random weights and token ids"""


class PeakTensorMemory(TorchDispatchMode):
    """Within ``with PeakTensorMemory() as m:``, ``m.peak_bytes`` is the largest total size of the tensor
    storages created inside the block (by any operator, forward or backward) that were alive at once.

    >>> with PeakTensorMemory() as m:
    ...     a = torch.ones(1000)  # 4,000 bytes
    ...     b = a * 2  # 8,000 alive
    ...     del a
    ...     c = b + 1  # 8,000 alive again: a is gone
    >>> m.peak_bytes, m.live_bytes
    (8000, 8000)
    """

    def __init__(self):
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._finalizers: dict[int, weakref.finalize] = {}

    def _freed(self, key: int, nbytes: int) -> None:
        self.live_bytes -= nbytes
        self._finalizers.pop(key, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in self._finalizers:  # a view, or an in-place result
                continue
            self._finalizers[key] = weakref.finalize(storage, self._freed, key, nbytes)
            self.live_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        return out


def rowwise_completion_logprobs(
    model, input_ids, attention_mask, num_completion_tokens, temperature=1.0, with_entropy=False,
    entropy_grad=False, chunk_size=16,
):  # fmt: skip
    """The baseline: ``common.model.completion_logprobs`` as it was before position chunking. The LM head
    runs on ``chunk_size`` rows at a time and autograd keeps every chunk's float32 log-softmax
    ``[rows, C, V]`` for the backward pass."""
    C = num_completion_tokens
    hidden = model.base_model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    ).last_hidden_state[:, -C - 1 : -1]  # [B, C, H]
    targets = input_ids[:, -C:]  # [B, C]
    lm_head = model.get_output_embeddings()
    logprob_chunks, entropy_chunks = [], []
    for start in range(0, hidden.shape[0], chunk_size):
        logits = lm_head(hidden[start : start + chunk_size]).float() / temperature  # [b, C, V]
        logp_all = F.log_softmax(logits, dim=-1)
        logprob_chunks.append(logp_all.gather(-1, targets[start : start + chunk_size, :, None]).squeeze(-1))
        if with_entropy:
            with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
                entropy_chunks.append(-(logp_all.exp() * logp_all).sum(-1))
    return torch.cat(logprob_chunks), torch.cat(entropy_chunks) if with_entropy else None


def random_policy(
    vocab_size: int, hidden_size: int = 64, num_layers: int = 2, dtype=torch.float32, seed: int = 0
):
    """A randomly initialised Qwen2 (tied embeddings, as Qwen2.5-Math-1.5B) with the given vocabulary."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=2 * hidden_size, max_position_embeddings=4096,
        tie_word_embeddings=True,
    )  # fmt: skip
    return Qwen2ForCausalLM(config).to(dtype)


def random_batch(vocab_size: int, rows: int, prompt_tokens: int, completion_tokens: int, seed: int = 0):
    """Token ids [rows, P + C] and an attention mask with a few left-padded prompts (rows 1, 3, ... lose 3)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab_size, (rows, prompt_tokens + completion_tokens), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1::2, :3] = 0
    return input_ids, attention_mask


def _rss_reset() -> int | None:
    """Reset the peak RSS of this process to its current RSS; return it in bytes (None off Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_bytes("VmRSS")
    except OSError:
        return None


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def peak_of_training_pass(logprobs_fn, model, input_ids, attention_mask, C: int, **kwargs) -> dict:
    """Peak memory of ``logprobs_fn``'s forward (with a detached entropy) and the backward of ``sum(logprobs)``.

    Returns ``{"tensor_bytes", "rss_bytes" (None off Linux), "seconds"}``; the model's gradients are cleared.
    """
    model.zero_grad(set_to_none=True)
    start_rss, start = _rss_reset(), time.perf_counter()
    with PeakTensorMemory() as tracker:
        logprobs, entropy = logprobs_fn(model, input_ids, attention_mask, C, with_entropy=True, **kwargs)
        logprobs.sum().backward()
        del logprobs, entropy
    seconds = time.perf_counter() - start
    rss = _status_bytes("VmHWM") - start_rss if start_rss is not None else None
    model.zero_grad(set_to_none=True)
    return {"tensor_bytes": tracker.peak_bytes, "rss_bytes": rss, "seconds": seconds}


def main(args: Args) -> list[dict]:
    dtype = getattr(torch, args.dtype)
    model = random_policy(args.vocab_size, args.hidden_size, args.num_layers, dtype, args.seed)
    input_ids, attention_mask = random_batch(
        args.vocab_size, args.rows, args.prompt_tokens, args.completion_tokens, args.seed
    )
    C = args.completion_tokens
    chunk = args.chunk_tokens or default_chunk_tokens(args.vocab_size)
    mib = lambda b: "-" if b is None else f"{b / 2**20:,.0f}"  # noqa: E731
    rows = []
    for name, fn, kwargs in [
        ("old: rows", rowwise_completion_logprobs, {}),
        (f"new: {chunk} tokens per chunk", completion_logprobs, {"chunk_tokens": args.chunk_tokens}),
    ]:
        peak = peak_of_training_pass(fn, model, input_ids, attention_mask, C, **kwargs)
        rows.append({"implementation": name, **peak})
        print(f"{name}: {peak}", flush=True)
    table = [
        [r["implementation"], mib(r["tensor_bytes"]), mib(r["rss_bytes"]), f"{r['seconds']:.2f}"]
        for r in rows
    ]
    title = f"{args.rows} x {C} completion tokens, vocabulary {args.vocab_size:,}, {args.dtype}"
    print(f"\n{title}\n")
    print(
        markdown_table(
            table, ["implementation", "peak tensor MiB", "peak RSS MiB", "seconds"], max_chars=None
        )
    )
    return rows


if __name__ == "__main__":
    main(tyro.cli(Args))

"""Loading a policy and computing per-token log-probs of completions.

``load_policy("tiny")`` loads the tiny built-in world from its cache directory (``common.tiny_task.world_dir``;
made ready on first use by ``common.tiny_world.ensure_world``, which every script reaches through
``common.preflight.check_run_args``); any other name is passed to ``transformers`` (a local directory or a
Hugging Face model id such as ``Qwen/Qwen2.5-Math-1.5B``).

``completion_logprobs`` is the one place where the policy is evaluated on sampled completions. It runs
the transformer body once, then ``logprobs_from_hidden`` applies the LM head to a few hundred completion
tokens at a time (``LOGITS_CHUNK_ELEMENTS`` logits per chunk), each chunk under activation checkpointing:
the backward pass recomputes a chunk's logits instead of keeping them. So neither the float32
``[batch, length, vocab]`` logits (about 0.6 GB per 1,000 tokens of a 151,936-token vocabulary) nor their
log-softmax is ever held whole, in the forward or the backward pass; the cost is a second LM-head matmul
per chunk in the backward pass. Measured on the CPU (``python -m bench.logprob_memory``, a random Qwen2 with
a 151,936-token vocabulary, forward and backward, float32): the peak tensor memory of 4 x 256 completion
tokens falls from 2,425 MiB to 855 MiB, and of 8 x 256 from 4,813 MiB to 869 MiB.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from common.hub import hub_unreachable, unreachable_exit
from common.tiny_task import WORLD_NAMES, world_dir


def resolve_model_path(name: str) -> str:
    """``"tiny"`` (or another name in ``common.tiny_task.WORLD_NAMES``) -> that world's cache directory;
    anything else is returned unchanged. A world that is not there yet fails with one line saying how to
    make it (scripts never see this: their ``check_run_args`` makes it first).

    >>> resolve_model_path("Qwen/Qwen2.5-Math-1.5B")
    'Qwen/Qwen2.5-Math-1.5B'
    """
    if name not in WORLD_NAMES:
        return name
    path = world_dir(name)
    if not (path / "world_card.json").exists():
        raise FileNotFoundError(
            f"--model-name-or-path {name!r}: the world is not in {path} yet; every script's check_run_args makes "
            f"it, or run `python -m common.tiny_world build --name {name}`"
        )
    return str(path)


def check_model_path(name: str, flag: str = "--model-name-or-path") -> None:
    """Fail fast on a model that cannot load: a local-looking path that is not a model directory.

    ``"tiny"`` and plausible hub ids (``org/name``, ``gpt2``) pass; whether a hub id exists is only known when it
    is downloaded. Raises FileNotFoundError naming ``flag`` and the path.

    >>> check_model_path("./no/such/model")
    Traceback (most recent call last):
    FileNotFoundError: --model-name-or-path './no/such/model': no such directory
    """
    if name in WORLD_NAMES:
        return
    path = Path(name).expanduser()
    looks_local = name.startswith((".", "/", "~")) or path.exists() or name.count("/") > 1
    if not looks_local:
        return
    if not path.exists():
        raise FileNotFoundError(f"{flag} {name!r}: no such directory")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{flag} {name!r}: not a model directory (no config.json)")


def load_policy(name: str, dtype: str = "float32", device: str = "cpu", gradient_checkpointing: bool = False):
    """Load ``(model, tokenizer)`` for training: left padding, a pad token, ``use_cache`` off for training.

    A path that does not exist and is not a plausible hub id fails here (`check_model_path`), with the
    name in the message, before any expensive work.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_model_path(name)
    path = resolve_model_path(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except OSError as err:
        if hub_unreachable(err):  # a hub id, no network, not cached: one line saying how to get it
            raise unreachable_exit(f"--model-name-or-path {name!r}", name, f"hf download {name}") from None
        raise OSError(f"could not load model {name!r}: {err}") from err
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model, tokenizer


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every token id that ends a completion: the tokenizer's EOS plus the generation config's."""
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(gen_eos)
    return sorted(i for i in ids if i is not None)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as ``generate`` uses them: mask [0, 0, 1, 1, 1] -> [0, 0, 0, 1, 2]."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


LOGITS_CHUNK_ELEMENTS = 2**26
"""Logits the LM head computes at once (256 MiB in float32): 441 completion tokens of a 151,936-token
vocabulary per chunk, the whole batch at once for the tiny world's."""


def default_chunk_tokens(vocab_size: int) -> int:
    """Completion tokens per LM-head chunk: as many as keep one chunk at ``LOGITS_CHUNK_ELEMENTS`` logits.

    >>> default_chunk_tokens(151_936), default_chunk_tokens(64)
    (441, 1048576)
    """
    return max(1, LOGITS_CHUNK_ELEMENTS // vocab_size)


def _head_chunk(
    lm_head,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    with_entropy: bool,
    entropy_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [n] (and entropies [n]) of ``targets [n]`` given ``hidden [n, H]``; all [n, V] tensors are
    temporaries of this call."""
    logp_all = F.log_softmax(lm_head(hidden).float() / temperature, dim=-1)  # [n, V]; the logits are freed
    logprobs = logp_all.gather(-1, targets[:, None]).squeeze(-1)  # [n]
    entropy = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = -(logp_all.exp() * logp_all).sum(-1)  # [n]
    return logprobs, entropy


def logprobs_from_hidden(
    lm_head,  # the output embedding: hidden [n, H] -> logits [n, V]
    hidden: torch.Tensor,  # [B, C, H] the state before each completion token (the one that predicts it)
    targets: torch.Tensor,  # [B, C] the completion tokens
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = False,
    chunk_tokens: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and optionally entropies) of ``targets`` under ``log_softmax(lm_head(hidden) / temperature)``.

    Returns ``logprobs [B, C]`` (float32) and ``entropy [B, C]`` (or None). The LM head runs on
    ``chunk_tokens`` positions at a time (default: ``default_chunk_tokens(V)``), flattened over rows, so a
    chunk may end inside a row. While gradients are recorded each chunk is checkpointed
    (``torch.utils.checkpoint``, non-reentrant): only its slice of ``hidden`` is kept for the backward
    pass, which recomputes the chunk's logits, so the memory of the head is that of one chunk, not of
    ``B * C * V`` float32 logits and their log-softmax. The entropy is detached (a metric) unless
    ``entropy_grad`` is set (an entropy bonus in the loss). Gradients reach ``hidden`` and the head's weights.
    A script with its own head on the same states (a value head) calls this on its body's hidden states.
    """
    B, C, H = hidden.shape
    flat_hidden = hidden.reshape(B * C, H)  # [B*C, H]
    flat_targets = targets.reshape(B * C)  # [B*C]
    chunk_tokens = chunk_tokens or default_chunk_tokens(lm_head.weight.shape[0])
    flags = (temperature, with_entropy, entropy_grad)
    logprob_chunks, entropy_chunks = [], []
    for start in range(0, B * C, chunk_tokens):
        chunk = (flat_hidden[start : start + chunk_tokens], flat_targets[start : start + chunk_tokens])
        if torch.is_grad_enabled():  # keep only the chunk's hidden states; recompute its logits in backward
            logprobs, entropy = checkpoint(_head_chunk, lm_head, *chunk, *flags, use_reentrant=False)
        else:
            logprobs, entropy = _head_chunk(lm_head, *chunk, *flags)
        logprob_chunks.append(logprobs)
        entropy_chunks.append(entropy)
    logprobs = torch.cat(logprob_chunks).view(B, C)  # [B, C]
    entropy = torch.cat(entropy_chunks).view(B, C) if with_entropy else None  # [B, C]
    return logprobs, entropy


def completion_logprobs(
    model,
    input_ids: torch.Tensor,  # [B, P + C] left-padded prompt followed by right-padded completion
    attention_mask: torch.Tensor,  # [B, P + C]
    num_completion_tokens: int,  # C
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = False,
    chunk_size: int = 16,
    chunk_tokens: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and optionally entropies) of the last ``C`` tokens of each row under ``model``.

    Logits are divided by ``temperature`` so the log-probs are those of the distribution the sampler
    drew from. Returns ``logprobs [B, C]`` and ``entropy [B, C]`` (or None); padding positions hold
    finite garbage and must be masked by the caller. The entropy is detached (a metric) unless
    ``entropy_grad`` is set (an entropy bonus in the loss). The LM head is ``logprobs_from_hidden``: it
    takes at most ``chunk_size`` rows' worth of tokens (``chunk_size * C``) and at most ``chunk_tokens``
    tokens (default: ``default_chunk_tokens(V)``) at once; neither changes the result beyond rounding.
    """
    C = num_completion_tokens
    body = model.base_model  # the transformer without the LM head (model.model for Qwen2/Llama)
    hidden = body(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    ).last_hidden_state  # [B, P + C, H]
    hidden = hidden[:, -C - 1 : -1]  # [B, C, H]: the state before each completion token predicts it
    targets = input_ids[:, -C:]  # [B, C]
    lm_head = model.get_output_embeddings()
    chunk_tokens = max(1, min(chunk_size * C, chunk_tokens or default_chunk_tokens(lm_head.weight.shape[0])))
    return logprobs_from_hidden(
        lm_head, hidden, targets, temperature, with_entropy, entropy_grad, chunk_tokens
    )


@torch.no_grad()
def rollout_logprobs(model, rollout, temperature: float = 1.0, micro_batch_size: int = 64) -> torch.Tensor:
    """``[B, C]`` log-probs of a rollout's completion tokens under ``model`` (no gradient), in micro-batches:
    π_old before an update, or a reference policy's π_ref (``rollout`` is a ``common.rollout_types.Rollout``)."""
    C = rollout.completion_ids.shape[1]
    input_ids, attention_mask = rollout.input_ids, rollout.attention_mask
    return torch.cat([
        completion_logprobs(model, input_ids[mb], attention_mask[mb], C, temperature)[0]
        for mb in torch.arange(input_ids.shape[0]).split(micro_batch_size)
    ])  # fmt: skip

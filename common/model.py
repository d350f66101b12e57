"""Loading a policy and computing per-token log-probs of completions.

``load_policy("tiny")`` loads the tiny built-in world from its cache directory (``common.tiny_task.world_dir``;
made ready on first use by ``common.tiny_world.ensure_world``, which every script reaches through
``common.preflight.check_run_args``); any other name is passed to ``transformers`` (a local directory or a
Hugging Face model id such as ``Qwen/Qwen2.5-Math-1.5B``).

``completion_logprobs`` is the one place where the policy is evaluated on sampled completions. It runs
the transformer body once, then applies the LM head to a few rows at a time (``logprobs_from_hidden``, which
a script with a head of its own on the same hidden states calls directly), so the full
``[batch, length, vocab]`` float32 logits tensor (about 0.6 GB per 1,000 tokens of a 151k-vocabulary
model) never exists at once.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

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


def check_model_path(name: str) -> None:
    """Fail fast on a model that cannot load: a local-looking path that is not a model directory.

    ``"tiny"`` and plausible hub ids (``org/name``, ``gpt2``) pass; whether a hub id exists is only known when it
    is downloaded. Raises FileNotFoundError naming the flag and the path.

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
        raise FileNotFoundError(f"--model-name-or-path {name!r}: no such directory")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"--model-name-or-path {name!r}: not a model directory (no config.json)")


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


LM_HEAD_ROWS = 16  # rows of hidden states the LM head turns into float32 logits at a time


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as ``generate`` uses them: mask [0, 0, 1, 1, 1] -> [0, 0, 0, 1, 2]."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def logprobs_from_hidden(
    lm_head,
    hidden: torch.Tensor,  # [B, C, H] the hidden states that predict ``targets``
    targets: torch.Tensor,  # [B, C] token ids
    temperature: float,
    with_entropy: bool = False,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs ``[B, C]`` of ``targets`` (and optionally the entropies ``[B, C]``) under the LM head applied to
    ``hidden``, at ``temperature``: the head, log-softmax and gather run on ``LM_HEAD_ROWS`` rows at a time, so
    the float32 ``[B, C, vocab]`` logits never exist at once. The entropy is detached (a metric) unless
    ``entropy_grad`` is set (an entropy bonus in the loss). A value head on the same ``hidden`` (PPO's critic)
    costs no second body pass.

    A hidden state of zeros gives equal logits: every token has probability 1/3 and the entropy is log 3.

    >>> head = torch.nn.Linear(2, 3, bias=False).requires_grad_(False)
    >>> logprobs, entropy = logprobs_from_hidden(head, torch.zeros(1, 1, 2), torch.tensor([[2]]), 1.0, True)
    >>> logprobs.exp(), entropy.exp()
    (tensor([[0.3333]]), tensor([[3.]]))
    """
    logprob_chunks, entropy_chunks = [], []
    for start in range(0, hidden.shape[0], LM_HEAD_ROWS):
        logits = lm_head(hidden[start : start + LM_HEAD_ROWS]).float() / temperature  # [b, C, V]
        logp_all = F.log_softmax(logits, dim=-1)
        logprob_chunks.append(logp_all.gather(-1, targets[start : start + LM_HEAD_ROWS, :, None]).squeeze(-1))
        if with_entropy:
            with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
                entropy_chunks.append(-(logp_all.exp() * logp_all).sum(-1))
    logprobs = torch.cat(logprob_chunks)  # [B, C]
    entropy = torch.cat(entropy_chunks) if with_entropy else None  # [B, C]
    return logprobs, entropy


def completion_logprobs(
    model,
    input_ids: torch.Tensor,  # [B, P + C] left-padded prompt followed by right-padded completion
    attention_mask: torch.Tensor,  # [B, P + C]
    num_completion_tokens: int,  # C
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and optionally entropies) of the last ``C`` tokens of each row under ``model``.

    Logits are divided by ``temperature`` so the log-probs are those of the distribution the sampler
    drew from. Returns ``logprobs [B, C]`` and ``entropy [B, C]`` (or None); padding positions hold
    finite garbage and must be masked by the caller. The entropy is detached (a metric) unless
    ``entropy_grad`` is set (an entropy bonus in the loss).
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
    return logprobs_from_hidden(
        model.get_output_embeddings(), hidden, input_ids[:, -C:], temperature, with_entropy, entropy_grad
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

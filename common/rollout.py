"""Rollouts: sample ``n`` completions per prompt and return everything training needs.

Every backend returns a ``Rollout`` with the same fields, so an algorithm never knows which engine
sampled its data. ``HFSampler`` uses ``transformers``' ``generate`` on the training model itself
(so its weights are always current); the vLLM backend (``--rollout vllm``) fills the same fields.

Shapes: ``B = num_prompts * n`` rows, grouped by prompt (rows ``i*n .. i*n+n-1`` answer prompt ``i``),
``P`` prompt tokens (left-padded), ``C`` completion tokens (right-padded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from common.model import eos_token_ids


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # [B, P] left-padded
    prompt_mask: torch.Tensor  # [B, P] 1 on real prompt tokens
    completion_ids: torch.Tensor  # [B, C] right-padded with the pad token
    completion_mask: torch.Tensor  # [B, C] float, 1 up to AND INCLUDING the first EOS
    behavior_logprobs: torch.Tensor  # [B, C] log-prob of each sampled token under the sampler (0 on padding)
    truncated: torch.Tensor  # [B] bool: no EOS within max_new_tokens
    completions: list[str]  # [B] decoded completions, special tokens removed
    group_index: torch.Tensor  # [B] index of the prompt each row answers

    @property
    def input_ids(self) -> torch.Tensor:  # [B, P + C]
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:  # [B, P + C]
        return torch.cat([self.prompt_mask, self.completion_mask.long()], dim=1)

    def select(self, rows: torch.Tensor) -> Rollout:
        """The rollout restricted to ``rows`` (a bool mask or index tensor)."""
        idx = rows.nonzero().squeeze(-1) if rows.dtype == torch.bool else rows
        return Rollout(
            self.prompt_ids[idx],
            self.prompt_mask[idx],
            self.completion_ids[idx],
            self.completion_mask[idx],
            self.behavior_logprobs[idx],
            self.truncated[idx],
            [self.completions[i] for i in idx.tolist()],
            self.group_index[idx],
        )


class Sampler(Protocol):
    """What an algorithm needs from a rollout engine."""

    def generate(
        self,
        prompts: list[str],
        n: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        prefix_ids: list[list[int]] | None = None,
    ) -> Rollout:
        """``prefix_ids[i]``: token ids that every sample of prompt ``i`` continues (they open its completion,
        see ``prepend_prefix``); None or ``[]`` samples from the prompt alone."""
        ...

    def update_weights(self, model) -> None:
        """Make the engine sample from ``model``'s current weights (called after every optimizer step)."""
        ...


def completion_mask_from_ids(
    completion_ids: torch.Tensor, eos_ids: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask that keeps every token up to and including the first EOS, and the truncation flags.

    The pad token may equal EOS (Qwen2.5-Math), so the mask is built from the *first* EOS position,
    never from ``ids != pad``, and the EOS itself is kept so that ending the answer is trained.

    >>> completion_mask_from_ids(torch.tensor([[5, 6, 0, 0], [5, 6, 7, 8]]), eos_ids=[0])
    (tensor([[1., 1., 1., 0.],
            [1., 1., 1., 1.]]), tensor([False,  True]))
    """
    is_eos = torch.isin(completion_ids, torch.tensor(eos_ids, device=completion_ids.device))  # [B, C]
    eos_seen_before = (
        is_eos.long().cumsum(-1) - is_eos.long()
    ) > 0  # [B, C] an EOS occurred strictly earlier
    mask = (~eos_seen_before).float()
    truncated = ~is_eos.any(-1)
    return mask, truncated


def prepend_prefix(
    completion_ids: torch.Tensor, behavior_logprobs: torch.Tensor, prefixes: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Put each row's given token prefix in front of its generated tokens ``[B, C]``, so the prefix is
    part of the completion (and trained); its behaviour log-probs are 0 (the tokens were given, not
    sampled). Returns ``[B, max_prefix + C]``, right-padded with ``pad_id``.

    >>> prepend_prefix(torch.tensor([[7, 0], [8, 9]]), torch.tensor([[-1.0, -2.0], [-3.0, -4.0]]), [[5, 6], []], 0)
    (tensor([[5, 6, 7, 0],
            [8, 9, 0, 0]]), tensor([[ 0.,  0., -1., -2.],
            [-3., -4.,  0.,  0.]]))
    """
    B, C = completion_ids.shape
    width = C + max(len(x) for x in prefixes)
    ids = torch.full((B, width), pad_id, dtype=completion_ids.dtype, device=completion_ids.device)
    logprobs = torch.zeros((B, width), dtype=behavior_logprobs.dtype, device=behavior_logprobs.device)
    for i, prefix in enumerate(prefixes):
        k = len(prefix)
        ids[i, :k] = torch.tensor(prefix, dtype=completion_ids.dtype)
        ids[i, k : k + C] = completion_ids[i]
        logprobs[i, k : k + C] = behavior_logprobs[i]
    return ids, logprobs


class SampledTokenLogprobs:
    """A ``generate`` logits processor that records the log-probability of every sampled token, so the
    behaviour log-probs come from the very scores ``generate`` sampled from, with no second forward pass.

    ``generate`` calls it at every step with the ids so far and the raw next-token logits (custom processors
    run before its temperature and top-p warpers). At step t it keeps ``log_softmax(logits / T)``; at step
    t + 1 the ids end with the token drawn at t, whose log-prob it then picks out (the full [b, V] matrix is
    held for one step only). The last token is only known from the output: ``finish(sequences)``.
    Like the training loss, these are log-probs under temperature T without top-p truncation.

    >>> rec = SampledTokenLogprobs(temperature=1.0)
    >>> logits = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    >>> _ = rec(torch.tensor([[7]]), logits)        # step 0: prompt [7]
    >>> _ = rec(torch.tensor([[7, 1]]), logits)     # step 1: token 1 was drawn at step 0
    >>> rec.finish(torch.tensor([[7, 1, 0]])).exp() # token 0 drawn at step 1
    tensor([[0.2500, 0.5000]])
    """

    def __init__(self, temperature: float):
        self.temperature, self.pending, self.steps = temperature, None, []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.pending is not None:
            self.steps.append(self.pending.gather(-1, input_ids[:, -1:]).squeeze(-1))  # [b]
        self.pending = torch.log_softmax(scores.float() / self.temperature, dim=-1)  # [b, V]
        return scores

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        """[b, C] log-probs of the generated tokens (the last ``C`` columns of ``sequences``)."""
        if self.pending is not None:
            self.steps.append(self.pending.gather(-1, sequences[:, -1:]).squeeze(-1))
            self.pending = None
        return torch.stack(self.steps, dim=1)


class HFSampler:
    """Sampling with ``model.generate`` on the training model itself (nothing to sync).

    ``batch_size`` caps how many sequences one ``generate`` call decodes at once. With
    ``compute_logprobs`` the behaviour log-probs are recorded while sampling (``SampledTokenLogprobs``);
    evaluation turns them off.
    """

    def __init__(self, model, tokenizer, batch_size: int = 256, compute_logprobs: bool = True):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.compute_logprobs = compute_logprobs
        self.eos_ids = eos_token_ids(model, tokenizer)

    def update_weights(self, model) -> None:
        self.model = model  # same object: generate always sees the current weights

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        n: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        prefix_ids: list[list[int]] | None = None,
    ) -> Rollout:
        tok, model = self.tokenizer, self.model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        rows = [p for p in prompts for _ in range(n)]  # [B] each prompt repeated n times, grouped
        enc = tok(rows, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        prompt_enc = enc
        if prefix_ids is not None:  # generate from prompt + prefix tokens, left-padded together
            row_prefixes = [list(x) for x in prefix_ids for _ in range(n)]
            joined = [
                ids + x for ids, x in zip(tok(rows, add_special_tokens=False)["input_ids"], row_prefixes)
            ]
            enc = tok.pad({"input_ids": joined}, padding=True, return_tensors="pt").to(device)
        P = enc["input_ids"].shape[1]
        do_sample = temperature > 0
        record = self.compute_logprobs and do_sample
        pieces, logprob_pieces = [], []
        for start in range(0, len(rows), self.batch_size):
            ids = enc["input_ids"][start : start + self.batch_size]
            mask = enc["attention_mask"][start : start + self.batch_size]
            recorder = SampledTokenLogprobs(temperature) if record else None
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                temperature=temperature if temperature > 0 else None,
                top_p=top_p if temperature > 0 else None,
                top_k=None,
                eos_token_id=self.eos_ids,
                pad_token_id=tok.pad_token_id,
                logits_processor=[recorder] if record else None,
            )
            pieces.append(out[:, P:])
            if record:
                logprob_pieces.append(recorder.finish(out))
        C = max(p.shape[1] for p in pieces)
        completion_ids = torch.full((len(rows), C), tok.pad_token_id, dtype=torch.long, device=device)
        behavior_logprobs = torch.zeros((len(rows), C), device=device)
        for i, (start, piece) in enumerate(zip(range(0, len(rows), self.batch_size), pieces)):
            completion_ids[start : start + piece.shape[0], : piece.shape[1]] = piece
            if record:
                behavior_logprobs[start : start + piece.shape[0], : piece.shape[1]] = logprob_pieces[i]
        if prefix_ids is not None:
            completion_ids, behavior_logprobs = prepend_prefix(
                completion_ids, behavior_logprobs, row_prefixes, tok.pad_token_id
            )
        completion_mask, truncated = completion_mask_from_ids(completion_ids, self.eos_ids)
        completion_ids = torch.where(completion_mask.bool(), completion_ids, tok.pad_token_id)
        rollout = Rollout(
            prompt_ids=prompt_enc["input_ids"],
            prompt_mask=prompt_enc["attention_mask"],
            completion_ids=completion_ids,
            completion_mask=completion_mask,
            behavior_logprobs=behavior_logprobs * completion_mask,
            truncated=truncated,
            completions=tok.batch_decode(completion_ids, skip_special_tokens=True),
            group_index=torch.arange(len(prompts), device=device).repeat_interleave(n),
        )
        model.train(was_training)
        return rollout


def make_sampler(kind: str, model, tokenizer, gpu_memory_utilization: float = 0.3, **kwargs) -> Sampler:
    """``--rollout hf`` (default) or ``--rollout vllm``.

    ``gpu_memory_utilization`` (``--vllm-gpu-memory-utilization``) only concerns vLLM and is ignored by
    the HF backend, so every script can pass it unconditionally; other kwargs go to the chosen backend.
    vLLM is imported only here, so the HF path never needs it installed.
    """
    if kind == "hf":
        return HFSampler(model, tokenizer, **kwargs)
    if kind == "vllm":
        from common.vllm_rollout import VLLMSampler

        return VLLMSampler(model, tokenizer, gpu_memory_utilization=gpu_memory_utilization, **kwargs)
    raise ValueError(f"--rollout must be 'hf' or 'vllm', got {kind!r}")

"""The types every rollout backend shares: the ``Rollout`` batch, the ``Sampler`` interface and the
completion mask (and ``prepend_prefix``, for rollouts that continue given tokens). ``common.rollout``
(``HFSampler``, ``make_sampler``) and ``common.vllm_rollout`` (``VLLMSampler``) both build on them; this
module imports nothing else of ``common``.

Shapes: ``B = num_prompts * n`` rows, grouped by prompt (rows ``i*n .. i*n+n-1`` answer prompt ``i``),
``P`` prompt tokens (left-padded), ``C`` completion tokens (right-padded).

The log-prob vocabulary, one meaning in every file (each ``[B, C]``, the log-probability of each sampled
completion token):

    behavior_logprobs  π_sampler: the distribution the sampler DREW the token from, temperature and top-p
                       applied (the nucleus renormalised), on both backends; recorded while sampling.
    raw_logprobs       the sampler's log-probs at the temperature WITHOUT top-p (equal to behavior_logprobs
                       when top-p is 1; None where the backend cannot record both: vLLM with top-p < 1).
    old_logprobs       π_old: the trainer's log-probs before the first optimizer step on this batch (at the
                       temperature, never truncated: the trainer's policy is the full distribution).
    logprobs           π_θ: the trainer's current log-probs, with gradient.
    ref_logprobs       π_ref: a frozen reference policy's (a KL penalty).

The PPO ratio is exp(logprobs − old_logprobs); the sampler/trainer correction weights
(``common.rollout_correction``) are functions of exp(old_logprobs − behavior_logprobs). With top-p < 1 that
ratio includes the nucleus mass (behavior = raw − log mass for a token inside the nucleus); the logged
``logprob_mismatch`` (old against behavior) therefore includes it, ``logprob_mismatch_raw`` (old against raw)
is the numerical train/inference gap alone, and ``nucleus_mass`` is the mean of exp(raw − behavior).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


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
    raw_logprobs: torch.Tensor | None = None  # [B, C] the sampler's log-probs without top-p (0 on padding)

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
            None if self.raw_logprobs is None else self.raw_logprobs[idx],
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
    completion_ids: torch.Tensor,
    behavior_logprobs: torch.Tensor,
    completion_mask: torch.Tensor,
    prefixes: list[list[int]],
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Put each row's given token prefix in front of its generated tokens ``[B, C]``, so the prefix is
    part of the completion (and trained); its behaviour log-probs are 0 (the tokens were given, not
    sampled) and its mask 1. ``completion_mask`` is the generated tokens' own (``completion_mask_from_ids``
    on them, BEFORE prepending: a row with a shorter prefix ends in padding, and a pad id that is also the
    EOS id must not read as an EOS after a truncated continuation). Returns ids, log-probs and mask
    ``[B, max_prefix + C]``, right-padded with ``pad_id`` / 0.

    Row 1 was truncated (no EOS in its 2 generated tokens): its mask stops there, although its padding is
    the EOS id 0.

    >>> ids, lp, mask = prepend_prefix(torch.tensor([[7, 0], [8, 9]]), torch.tensor([[-1.0, -2.0], [-3.0, -4.0]]),
    ...                                torch.tensor([[1.0, 1.0], [1.0, 1.0]]), [[5, 6], []], 0)
    >>> ids, mask
    (tensor([[5, 6, 7, 0],
            [8, 9, 0, 0]]), tensor([[1., 1., 1., 1.],
            [1., 1., 0., 0.]]))
    >>> lp
    tensor([[ 0.,  0., -1., -2.],
            [-3., -4.,  0.,  0.]])
    """
    B, C = completion_ids.shape
    width = C + max(len(x) for x in prefixes)
    ids = torch.full((B, width), pad_id, dtype=completion_ids.dtype, device=completion_ids.device)
    logprobs = torch.zeros((B, width), dtype=behavior_logprobs.dtype, device=behavior_logprobs.device)
    mask = torch.zeros((B, width), dtype=completion_mask.dtype, device=completion_mask.device)
    for i, prefix in enumerate(prefixes):
        k = len(prefix)
        ids[i, :k] = torch.tensor(prefix, dtype=completion_ids.dtype)
        ids[i, k : k + C] = completion_ids[i]
        logprobs[i, k : k + C] = behavior_logprobs[i]
        mask[i, :k] = 1
        mask[i, k : k + C] = completion_mask[i]
    return ids, logprobs, mask


def sampler_gap(old_logprobs: torch.Tensor, rollout: Rollout, rows) -> dict[str, float]:
    """Sums over the completion tokens of ``rollout``'s ``rows`` of the trainer/sampler gap: |old − behavior|
    (``logprob_mismatch``), |old − raw| (``logprob_mismatch_raw``, when the sampler recorded raw log-probs) and
    the nucleus mass exp(raw − behavior) (``nucleus_mass``). Divide by the token count for the means.
    ``old_logprobs [b, C]`` are the trainer's log-probs of those rows.

    >>> r = Rollout(torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1), torch.zeros(1, 2, dtype=torch.long),
    ...             torch.tensor([[1.0, 0.0]]), torch.tensor([[-0.5, 0.0]]), torch.tensor([False]), ["x"],
    ...             torch.tensor([0]), raw_logprobs=torch.tensor([[-0.6, 0.0]]))
    >>> {k: round(v, 3) for k, v in sampler_gap(torch.tensor([[-0.7, -9.0]]), r, slice(0, 1)).items()}
    {'logprob_mismatch': 0.2, 'logprob_mismatch_raw': 0.1, 'nucleus_mass': 0.905}
    """
    mask = rollout.completion_mask[rows]
    out = {"logprob_mismatch": float(((old_logprobs - rollout.behavior_logprobs[rows]).abs() * mask).sum())}
    if rollout.raw_logprobs is not None:
        raw = rollout.raw_logprobs[rows]
        out["logprob_mismatch_raw"] = float(((old_logprobs - raw).abs() * mask).sum())
        out["nucleus_mass"] = float((torch.exp(raw - rollout.behavior_logprobs[rows]) * mask).sum())
    return out

"""Rollouts: sample ``n`` completions per prompt and return everything training needs.

Every backend returns a ``Rollout`` with the same fields, so an algorithm never knows which engine
sampled its data. ``HFSampler`` uses ``transformers``' ``generate`` on the training model itself
(so its weights are always current); the vLLM backend (``--rollout vllm``) fills the same fields.

The shared types (``Rollout``, the ``Sampler`` interface, ``completion_mask_from_ids``) are in
``common/rollout_types.py``, so that ``common/vllm_rollout.py`` uses them without importing this module
(whose ``make_sampler`` imports it); they are imported here too, so ``from common.rollout import Rollout``
works as before.

Shapes: ``B = num_prompts * n`` rows, grouped by prompt (rows ``i*n .. i*n+n-1`` answer prompt ``i``),
``P`` prompt tokens (left-padded), ``C`` completion tokens (right-padded).
"""

from __future__ import annotations

import torch

from common.model import eos_token_ids
from common.rollout_types import Rollout, Sampler, completion_mask_from_ids, prepend_prefix

__all__ = [
    "HFSampler",
    "Rollout",
    "SampledTokenLogprobs",
    "sampling_scores",
    "Sampler",
    "completion_mask_from_ids",
    "concat_rollouts",
    "make_sampler",
    "prepend_prefix",
]


def concat_rollouts(rollouts: list[Rollout], pad_token_id: int) -> Rollout:
    """Several rollouts as one batch, rows in order: prompts left-padded again and completions right-padded
    again to the widest, ``group_index`` continued (the prompts of each rollout follow those of the one
    before). Padding is masked and positions come from the mask, so no row's log-probs change.

    >>> one = lambda p, c: Rollout(torch.tensor([p]), torch.ones(1, len(p), dtype=torch.long), torch.tensor([c]),
    ...     torch.ones(1, len(c)), torch.zeros(1, len(c)), torch.tensor([False]), ["x"], torch.tensor([0]))
    >>> both = concat_rollouts([one([7], [5, 6, 0]), one([8, 9], [5])], pad_token_id=0)
    >>> both.prompt_ids, both.prompt_mask, both.completion_mask, both.group_index
    (tensor([[0, 7],
            [8, 9]]), tensor([[0, 1],
            [1, 1]]), tensor([[1., 1., 1.],
            [1., 0., 0.]]), tensor([0, 1]))
    """
    P = max(r.prompt_ids.shape[1] for r in rollouts)
    C = max(r.completion_ids.shape[1] for r in rollouts)
    left = lambda t, value: torch.nn.functional.pad(t, (P - t.shape[1], 0), value=value)  # noqa: E731
    right = lambda t, value: torch.nn.functional.pad(t, (0, C - t.shape[1]), value=value)  # noqa: E731
    group_index, offset = [], 0
    for r in rollouts:
        group_index.append(r.group_index + offset)
        offset += int(r.group_index.max()) + 1 if len(r.group_index) else 0
    return Rollout(
        torch.cat([left(r.prompt_ids, pad_token_id) for r in rollouts]),
        torch.cat([left(r.prompt_mask, 0) for r in rollouts]),
        torch.cat([right(r.completion_ids, pad_token_id) for r in rollouts]),
        torch.cat([right(r.completion_mask, 0.0) for r in rollouts]),
        torch.cat([right(r.behavior_logprobs, 0.0) for r in rollouts]),
        torch.cat([r.truncated for r in rollouts]),
        [c for r in rollouts for c in r.completions],
        torch.cat(group_index),
        None
        if any(r.raw_logprobs is None for r in rollouts)
        else torch.cat([right(r.raw_logprobs, 0.0) for r in rollouts]),
    )


def sampling_scores(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The scores a token is drawn from: ``logits / temperature`` with every token outside the top-p nucleus
    set to −inf (the smallest set of most likely tokens whose probability reaches ``top_p``; the most likely
    token is always kept). The same rule as transformers' ``TopPLogitsWarper`` and vLLM's top-p sampler:
    sort ascending, drop the tokens whose cumulative probability is at most 1 − top_p. ``[b, V]`` -> ``[b, V]``.

    Probabilities [0.5, 0.3, 0.2] with top-p 0.7: the two most likely make 0.8 >= 0.7, the third is dropped.

    >>> sampling_scores(torch.log(torch.tensor([[0.5, 0.3, 0.2]])), 1.0, 0.7).softmax(-1)
    tensor([[0.6250, 0.3750, 0.0000]])
    """
    scores = logits.float() / temperature
    if top_p >= 1:
        return scores
    sorted_scores, order = scores.sort(dim=-1)  # ascending
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative <= 1 - top_p
    drop_sorted[..., -1] = False  # the most likely token always stays
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


class SampledTokenLogprobs:
    """A ``generate`` logits processor that applies the temperature and top-p itself and records the
    log-probability of every sampled token under the distribution it was drawn from (``behavior_logprobs``)
    and under the temperature alone (``raw_logprobs``), with no second forward pass. ``generate`` is then
    called with temperature 1 and no top-p/top-k, so it samples from exactly the scores returned here.

    At step t it keeps both ``[b, V]`` log-softmaxes; at step t + 1 the ids end with the token drawn at t,
    whose log-probs it then picks out (the matrices are held for one step only). The last token is only
    known from the output: ``finish(sequences)`` returns ``(behavior [b, C], raw [b, C])``.

    >>> rec = SampledTokenLogprobs(temperature=1.0, top_p=0.7)
    >>> logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    >>> _ = rec(torch.tensor([[7]]), logits)        # step 0: prompt [7]
    >>> _ = rec(torch.tensor([[7, 1]]), logits)     # step 1: token 1 was drawn at step 0
    >>> [x.exp() for x in rec.finish(torch.tensor([[7, 1, 0]]))]  # token 0 drawn at step 1
    [tensor([[0.3750, 0.6250]]), tensor([[0.3000, 0.5000]])]
    """

    def __init__(self, temperature: float, top_p: float = 1.0):
        self.temperature, self.top_p, self.pending, self.steps = temperature, top_p, None, []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.pending is not None:
            self.steps.append(
                [lp.gather(-1, input_ids[:, -1:]).squeeze(-1) for lp in self.pending]
            )  # [b] x 2
        processed = sampling_scores(scores, self.temperature, self.top_p)  # [b, V]
        raw = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        self.pending = (torch.log_softmax(processed, dim=-1), raw)
        return processed

    def finish(self, sequences: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(behavior, raw)``, each [b, C]: the log-probs of the generated tokens (the last C columns)."""
        if self.pending is not None:
            self.steps.append([lp.gather(-1, sequences[:, -1:]).squeeze(-1) for lp in self.pending])
            self.pending = None
        return torch.stack([s[0] for s in self.steps], dim=1), torch.stack([s[1] for s in self.steps], dim=1)


class HFSampler:
    """Sampling with ``model.generate`` on the training model itself (nothing to sync).

    ``batch_size`` caps how many sequences one ``generate`` call decodes at once. With
    ``compute_logprobs`` the behaviour log-probs are recorded while sampling (``SampledTokenLogprobs``);
    evaluation turns them off. ``perturb_logits``: a logits processor applied to the model's raw logits
    before the recorder (``common.mismatched_sampler``'s logit noise), so the recorded behaviour log-probs
    are those of the perturbed distribution the tokens were drawn from.
    """

    def __init__(
        self, model, tokenizer, batch_size: int = 256, compute_logprobs: bool = True, perturb_logits=None
    ):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.compute_logprobs, self.perturb_logits = compute_logprobs, perturb_logits
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
            recorder = SampledTokenLogprobs(temperature, top_p) if record else None
            processors = [p for p in (self.perturb_logits, recorder) if p is not None]  # in this order
            out = model.generate(  # when recording, the recorder applies the temperature and top-p itself
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                temperature=(1.0 if record else temperature) if do_sample else None,
                top_p=(1.0 if record else top_p) if do_sample else None,
                top_k=0 if do_sample else None,
                eos_token_id=self.eos_ids,
                pad_token_id=tok.pad_token_id,
                logits_processor=processors or None,
            )
            pieces.append(out[:, P:])
            if record:
                logprob_pieces.append(recorder.finish(out))
        C = max(p.shape[1] for p in pieces)
        completion_ids = torch.full((len(rows), C), tok.pad_token_id, dtype=torch.long, device=device)
        behavior_logprobs = torch.zeros((len(rows), C), device=device)
        raw_logprobs = torch.zeros((len(rows), C), device=device)
        for i, (start, piece) in enumerate(zip(range(0, len(rows), self.batch_size), pieces)):
            completion_ids[start : start + piece.shape[0], : piece.shape[1]] = piece
            if record:
                behavior_logprobs[start : start + piece.shape[0], : piece.shape[1]] = logprob_pieces[i][0]
                raw_logprobs[start : start + piece.shape[0], : piece.shape[1]] = logprob_pieces[i][1]
        # the mask of the generated tokens, before any prefix goes in front (see prepend_prefix)
        completion_mask, truncated = completion_mask_from_ids(completion_ids, self.eos_ids)
        if prefix_ids is not None:
            raw_logprobs = prepend_prefix(
                completion_ids, raw_logprobs, completion_mask, row_prefixes, tok.pad_token_id
            )[1]
            completion_ids, behavior_logprobs, completion_mask = prepend_prefix(
                completion_ids, behavior_logprobs, completion_mask, row_prefixes, tok.pad_token_id
            )
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
            raw_logprobs=raw_logprobs * completion_mask,
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

"""A sampler that is not the trainer: a copy of the policy that lags behind it, runs in bfloat16, or draws
from logits with a known perturbation. For methods whose claim is about off-policy data (REC, rollout
corrections): it makes the sampler/trainer gap a setting of the tiny world, on a CPU, with the HF backend.

    sampler = MismatchedSampler(model, tokenizer, sync_interval=k, dtype="bfloat16", logit_noise=σ)
    rollout = sampler.generate(prompts, G, ...)   # behavior_logprobs: the distribution it drew from
    sampler.update_weights(model)                 # once per training step; syncs every k-th call

The three mismatches, each off by default (``sync_interval=1``, ``dtype="float32"``, ``logit_noise=0``):

- **k steps stale** (``sync_interval`` k ≥ 1; Trinity-RFT's ``synchronizer.sync_interval``, with its
  ``sync_offset`` 0). The sampler holds its own copy of the weights. The copy is loaded from the trainer when
  the sampler is made and then at every k-th call of ``update_weights`` (one call per training step, after
  that step's optimizer steps), and never otherwise: ``sync`` is the one place that copies. So the rollout
  of training step t (1-based) comes from the trainer's weights after step k·⌊(t − 1)/k⌋: it lags the
  trainer by (t − 1) mod k steps, from 0 to k − 1. k = 1 is on the policy: every rollout comes from the
  current weights (tests/test_mismatched_sampler.py checks the lag tensor by tensor).
- **bfloat16** (``dtype``): the copy is cast to this dtype (``load_state_dict`` casts at every sync), the
  trainer stays as it is. The recorded behaviour log-probs are the bf16 model's logits, cast to float32,
  log-softmaxed at the temperature: the distribution the tokens were drawn from.
- **logit noise** (``logit_noise`` σ, ``noise_seed``): one fixed offset σ·z per vocabulary entry, z ~ N(0, 1)
  drawn once from ``torch.Generator().manual_seed(noise_seed)``, added to the raw logits at every position
  of every rollout before the temperature: π_sampler(y) ∝ exp((logit_y + σ·z_y) / T). A known, fixed
  distortion (like a deterministic kernel difference), so a test recomputes it by hand.

Evaluation should see the trainer, not this sampler: pass the plain sampler (``make_sampler``) to
``Run.start`` and this one as a module (``modules={"rollout_sampler": sampler}``), whose ``state_dict`` (the
copy's weights and the steps since the last sync) makes ``--resume`` exact.

Cost of the bf16 copy on a CPU, measured with ``OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python
bench/mismatched_sampler.py`` (the tiny world, 16 prompts × 8 samples, up to 64 new tokens, median of 3
alternating calls, on a 2-core machine whose cores were busy with other work): bf16 / fp32 time 0.99
(0.89 s against 0.90 s per call): free at this size, where the time goes to ``generate``'s per-token
overhead, not to matrix products. The gap it opens: mean |log π_trainer − log π_sampler| over the sampled
tokens 2.0e-3 (the float32 copy: 1.2e-7, the cached decode's rounding).

This module wraps the HF sampler only; vLLM is its own mismatch (bf16 and other kernels), and a stale vLLM
engine would also need evaluation to bypass it, which ``Run`` does not do.
"""

from __future__ import annotations

import copy

import torch

from common.rollout import HFSampler
from common.rollout_types import Rollout


class FixedLogitNoise:
    """A logits processor that adds ``sigma · z`` to every row of logits, z ~ N(0, 1) of shape [V] drawn
    once from ``seed`` (on the first call, when V is known). ``[b, V]`` -> ``[b, V]``.

    >>> noise = FixedLogitNoise(sigma=0.5, seed=0)
    >>> out = noise(None, torch.zeros(2, 3))
    >>> torch.equal(out[0], out[1]), torch.allclose(out[0], 0.5 * torch.randn(3, generator=torch.Generator().manual_seed(0)))
    (True, True)
    """

    def __init__(self, sigma: float, seed: int = 0):
        self.sigma, self.seed, self.offset = sigma, seed, None

    def __call__(self, input_ids, scores: torch.Tensor) -> torch.Tensor:
        if self.offset is None or self.offset.shape[-1] != scores.shape[-1]:
            z = torch.randn(scores.shape[-1], generator=torch.Generator().manual_seed(self.seed))
            self.offset = (self.sigma * z).to(scores.device)
        return scores.float() + self.offset


class MismatchedSampler:
    """The HF sampler on a copy of ``model`` that is ``sync_interval`` steps stale, in ``dtype``, with
    ``logit_noise`` (see the module docstring for the exact definitions). Implements ``Sampler``."""

    def __init__(
        self,
        model,
        tokenizer,
        sync_interval: int = 1,
        dtype: str = "float32",
        logit_noise: float = 0.0,
        noise_seed: int = 0,
    ):
        if sync_interval < 1:
            raise ValueError(f"sync_interval must be >= 1 (1: synced every step), got {sync_interval}")
        self.sync_interval, self.steps_since_sync = sync_interval, 0
        self.copy = copy.deepcopy(model).to(getattr(torch, dtype)).eval().requires_grad_(False)
        noise = FixedLogitNoise(logit_noise, noise_seed) if logit_noise > 0 else None
        self.hf = HFSampler(self.copy, tokenizer, perturb_logits=noise)

    def sync(self, model) -> None:
        """The one place the copy takes the trainer's weights (cast to the copy's dtype)."""
        self.copy.load_state_dict(model.state_dict())

    def update_weights(self, model) -> None:
        """Called once per training step: the copy syncs at every ``sync_interval``-th call."""
        self.steps_since_sync += 1
        if self.steps_since_sync >= self.sync_interval:
            self.sync(model)
            self.steps_since_sync = 0

    def generate(self, prompts, n, max_new_tokens, temperature=1.0, top_p=1.0, prefix_ids=None) -> Rollout:
        return self.hf.generate(prompts, n, max_new_tokens, temperature, top_p, prefix_ids)

    def state_dict(self) -> dict:
        return {"weights": self.copy.state_dict(), "steps_since_sync": self.steps_since_sync}

    def load_state_dict(self, state: dict) -> None:
        self.copy.load_state_dict(state["weights"])
        self.steps_since_sync = state["steps_since_sync"]

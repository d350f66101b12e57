"""Checks run in the TRL environment (``.venv-trl``) by tests/test_trl.py: ``python integrations/trl/checks.py``.

Each check prints ``PASS name`` or ``FAIL name: why``; the exit status is the number of failures. TRL is the
oracle for what verl 0.9.1 lacks: DeepSeek-V3.2's off-policy sequence masking (``--rollout-rs opsm``),
``GRPOTrainer.get_off_policy_mask``, fed the same random log-probs, ragged masks and advantages as
``common.rollout_correction``; and the defaults that module's docstring quotes. TRL's four importance-sampling
modes are computed inline in its trainer (no function to call), so tests/test_rollout_correction.py checks
them by hand.

This module is not under tests/ because it imports TRL, which the main environment does not have.
"""

import dataclasses
import sys
import traceback

import torch

SEEDS = (0, 1, 2, 3, 4)
CHECKS = []


def check(function):
    CHECKS.append(function)
    return function


def opsm_batch(seed: int, spread: float, B: int = 16, T: int = 9):
    """Sampler and trainer log-probs [B, T] (log-ratios spread·N(0, 1) plus a per-row drift, so that the
    sequences' KL to the sampler straddles δ), a ragged mask (one full row, one of length 1), finite garbage
    on the padding of both, and advantages [B] of both signs."""
    generator = torch.Generator().manual_seed(500 + seed)
    lengths = torch.randint(1, T + 1, (B,), generator=generator)
    lengths[0], lengths[-1] = T, 1
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    behavior = -3 * torch.rand(B, T, generator=generator)
    drift = spread * torch.randn(B, 1, generator=generator)
    old = behavior + drift + spread * torch.randn(B, T, generator=generator)
    padding = mask == 0
    old = torch.where(padding, 30 * torch.randn(B, T, generator=generator), old)
    behavior = torch.where(padding, 30 * torch.randn(B, T, generator=generator), behavior)
    return old, behavior, mask, torch.randn(B, generator=generator)


def opsm_weights(old, behavior, mask, advantages, delta):
    from types import SimpleNamespace

    from common.rollout_correction import rollout_correction

    args = SimpleNamespace(rollout_is="none", rollout_is_threshold=2.0, rollout_is_threshold_low=None,
                           rollout_rs="opsm", rollout_rs_threshold=delta)  # fmt: skip
    return rollout_correction(old, behavior, mask, advantages, args)


def trl_mask(advantages, old, behavior, mask, delta):
    """TRL's mask [B, 1] or [B, T], called as GRPOTrainer._compute_loss calls it: advantages [B] unsqueezed
    to [B, 1]; ``per_token_logps`` is the policy's current log-probs, π_old on a batch's first update."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    advantages = advantages[:, None] if advantages.dim() == 1 else advantages
    return GRPOTrainer.get_off_policy_mask(
        advantages=advantages,
        per_token_logps=old,
        sampling_per_token_logps=behavior,
        mask=mask,
        off_policy_threshold=delta,
    )


@check
def trl_is_the_pinned_version_with_the_documented_defaults():
    """The TRL defaults quoted in common/rollout_correction.py: IS on (when vLLM samples), "sequence_mask",
    C_max 3.0, C_min None; OPSM off (``off_policy_mask_threshold`` None)."""
    import trl
    from trl import GRPOConfig

    assert trl.__version__ == "1.16.0", trl.__version__
    defaults = {field.name: field.default for field in dataclasses.fields(GRPOConfig)}
    documented = {
        "vllm_importance_sampling_correction": True,
        "vllm_importance_sampling_mode": "sequence_mask",
        "vllm_importance_sampling_clip_max": 3.0,
        "vllm_importance_sampling_clip_min": None,
        "off_policy_mask_threshold": None,
    }
    assert {name: defaults[name] for name in documented} == documented, defaults


@check
def opsm_matches_trl_get_off_policy_mask():
    """--rollout-rs opsm against TRL's get_off_policy_mask, advantages [B] and the same broadcast to [B, T],
    δ from 0.01 to 0.5: the kept tokens, exactly."""
    outcomes = set()
    for seed in SEEDS:
        for spread in (0.05, 0.3):
            old, behavior, mask, advantages = opsm_batch(seed, spread)
            for delta in (0.01, 0.05, 0.1, 0.5):
                theirs = trl_mask(advantages, old, behavior, mask, delta).expand_as(mask) * mask
                for shaped in (advantages, advantages[:, None].expand_as(mask)):
                    ours, stats = opsm_weights(old, behavior, mask, shaped, delta)
                    assert torch.equal(ours * mask, theirs), (
                        f"seed {seed} spread {spread} δ {delta} {shaped.shape}"
                    )
                    rejected = 1 - (theirs.sum(-1) > 0).float().mean().item()
                    assert abs(stats["correction/rs_rejected_seq_frac"] - rejected) < 1e-6
                outcomes |= {bool(x) for x in (theirs.sum(-1) == 0)}
    assert outcomes == {True, False}, "every check rejected all or none of the sequences"


@check
def opsm_per_token_advantages_differ_from_trl_as_documented():
    """Difference on purpose: with per-token advantages of mixed sign, TRL compares each token's advantage
    (it keeps token t iff A_t >= 0 or the sequence's KL <= δ), while the menu rejects whole sequences, by
    the mean advantage over their real tokens. Which sequences exceed δ comes from TRL (all advantages −1)."""
    for seed in SEEDS:
        old, behavior, mask, _ = opsm_batch(seed, 0.3)
        generator = torch.Generator().manual_seed(600 + seed)
        token_advantages = torch.randn(mask.shape, generator=generator)  # [B, T], mixed signs within rows
        for delta in (0.05, 0.1):
            high_kl = trl_mask(-torch.ones(len(mask)), old, behavior, mask, delta)[:, 0] == 0  # [B]
            assert high_kl.any() and (~high_kl).any()
            theirs = trl_mask(token_advantages, old, behavior, mask, delta)
            assert torch.equal(theirs, ((token_advantages >= 0) | ~high_kl[:, None]).float())
            ours, _ = opsm_weights(old, behavior, mask, token_advantages, delta)
            mean_advantage = (token_advantages * mask).sum(-1) / mask.sum(-1)
            expected = ~(high_kl & (mean_advantage < 0))
            assert torch.equal(ours * mask, expected[:, None].float() * mask), f"seed {seed} δ {delta}"
            assert not torch.equal(ours * mask, theirs * mask)


# ------------------------------------------------------------------------------------------------------
# On-policy distillation (algos/opd.py) against TRL's sampled-token IW-OPD loss at γ = 0
# ------------------------------------------------------------------------------------------------------


def iw_opd_loss(logits, tokens, mask, teacher, temperature: float, gamma: float):
    """TRL's ``IWOPDTrainer._compute_iw_opd_loss`` (trl/experimental/iw_opd) on prepared inputs, called on a
    stand-in for the trainer that carries the attributes the method reads; ``rollout_logprobs`` None (the live
    student's log-probs, as TRL does when the rollout's are not kept)."""
    from collections import defaultdict
    from types import SimpleNamespace

    from trl.experimental.iw_opd.iw_opd_trainer import IWOPDTrainer

    trainer = SimpleNamespace(
        temperature=temperature, iw_opd_gamma=gamma, iw_opd_epsilon=1e-8, model=torch.nn.Module(),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )  # fmt: skip
    labels = torch.where(mask.bool(), tokens, torch.full_like(tokens, -100))
    return IWOPDTrainer._compute_iw_opd_loss(trainer, logits, tokens, labels, teacher)


@check
def opd_gradient_matches_trl_iw_opd_at_gamma_0():
    """TRL's IW-OPD loss with γ = 0 (every weight 1) is −sg(log π_T − log π_θ)·log π_θ, token-mean over the
    batch: the REINFORCE form of opd.py's per-token advantage. At ρ = 1 (π_old = π_θ) opd.py's
    distillation_surrogate + aggregate_loss("token-mean") has the same gradient with respect to the logits
    (random logits [B, T, V] at temperature 0.7, teacher log-probs 0.7·N(0, 1) from the student's, ragged
    masks); the loss values differ by design (−A·ρ against −A·log π). With γ = 0.5 TRL reweights each token
    by 1 + γ(1 − its share of the row's |A| so far), a different method, and the gradients differ. (opd.py
    imports tyro for its command line only; the TRL environment has none, so an empty module stands in.)"""
    import importlib.util
    import types

    if importlib.util.find_spec("tyro") is None:
        sys.modules.setdefault("tyro", types.ModuleType("tyro"))
    import algos.opd as opd

    for seed in SEEDS:
        generator = torch.Generator().manual_seed(700 + seed)
        B, T, V, temperature = 6, 8, 11, 0.7
        logits = torch.randn(B, T, V, generator=generator)
        tokens = torch.randint(0, V, (B, T), generator=generator)
        lengths = torch.randint(1, T + 1, (B,), generator=generator)
        lengths[0], lengths[-1] = T, 1
        mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
        student = torch.log_softmax(logits / temperature, -1).gather(-1, tokens[..., None])[..., 0]
        teacher = student + 0.7 * torch.randn(B, T, generator=generator)
        gradients = {}
        for gamma in (0.0, 0.5):
            theirs_logits = logits.clone().requires_grad_()
            iw_opd_loss(theirs_logits, tokens, mask, teacher, temperature, gamma).backward()
            gradients[gamma] = theirs_logits.grad
        ours_logits = logits.clone().requires_grad_()
        logprobs = torch.log_softmax(ours_logits / temperature, -1).gather(-1, tokens[..., None])[..., 0]
        per_token, clipped = opd.distillation_surrogate(logprobs, logprobs.detach(), teacher, 0.2, 0.2)
        opd.aggregate_loss(per_token, mask, "token-mean", B, int(mask.sum()), T).backward()
        assert not clipped.any(), "ρ = 1 clips nothing"
        error = (ours_logits.grad - gradients[0.0]).abs().max().item()
        assert error < 1e-6, f"seed {seed}: max |gradient difference| {error}"
        assert (ours_logits.grad - gradients[0.5]).abs().max().item() > 1e-3, "γ = 0.5 should differ"


def main() -> int:
    failures = 0
    for function in CHECKS:
        try:
            function()
            print(f"PASS {function.__name__}", flush=True)
        except Exception as error:  # noqa: BLE001 - every failure is reported, then counted
            failures += 1
            traceback.print_exc()
            print(f"FAIL {function.__name__}: {error}".splitlines()[0], flush=True)
    return failures


if __name__ == "__main__":
    sys.exit(main())

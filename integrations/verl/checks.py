"""Checks run in the verl environment (``.venv-verl``) by tests/test_verl.py: ``python -m integrations.verl.checks``.

Each check prints ``PASS name`` or ``FAIL name: why``; the exit status is the number of failures. Two kinds:
- parity: random rewards, ragged masks and log-probs (several seeds) fed to verl's own functions
  (``verl.trainer.ppo.core_algos``, ``verl.trainer.ppo.rollout_corr_helper``) and to the pure functions of
  ``algos/*.py`` and ``common/rollout_correction.py``, which must agree to float32 rounding; where verl
  differs on purpose the check states the difference and tests it exactly;
- plug-in: verl's registries resolve the ``rlvr_*`` names, and verl's own entry points, called as its
  trainer calls them (``compute_advantage`` on a ``DataProto`` built on the CPU; the loss fetched with
  ``get_policy_loss_fn`` and called with an ``ActorConfig`` and the global batch info its ``ppo_loss``
  sets), return the files' tensors.

This module is not under tests/ because it imports verl, which the main environment does not have.
"""

import importlib
import math
import sys
import traceback

import numpy as np
import torch

SEEDS = (0, 1, 2, 3, 4)
CHECKS = []


def check(function):
    CHECKS.append(function)
    return function


def close(a, b, what: str, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if a.shape != b.shape or not torch.allclose(a, b, atol=atol, rtol=rtol):
        raise AssertionError(
            f"{what}: max |diff| {(a - b).abs().max().item() if a.shape == b.shape else a.shape}"
        )


def ragged_mask(generator, B: int, T: int) -> torch.Tensor:
    """[B, T] masks with random lengths 1..T (one row of length T, one of length 1)."""
    lengths = torch.randint(1, T + 1, (B,), generator=generator)
    lengths[0], lengths[-1] = T, 1
    return (torch.arange(T)[None, :] < lengths[:, None]).float()


def outcome_batch(seed: int, Q: int = 4, G: int = 6, T: int = 9, binary: bool = True):
    """Rewards [Q, G] (one all-correct and one all-wrong group when binary), verl's token_level_rewards
    [B, T] (the reward on the last response token), mask [B, T], uids [B] (group-major rows)."""
    generator = torch.Generator().manual_seed(seed)
    if binary:
        rewards = (torch.rand(Q, G, generator=generator) < 0.5).float()
        rewards[0], rewards[1] = 1.0, 0.0
    else:
        rewards = torch.randn(Q, G, generator=generator)
    mask = ragged_mask(generator, Q * G, T)
    last = mask.sum(-1).long() - 1  # [B]
    token_level_rewards = torch.zeros(Q * G, T)
    token_level_rewards[torch.arange(Q * G), last] = rewards.flatten()
    uids = np.array([f"q{q}" for q in range(Q) for _ in range(G)], dtype=object)
    return rewards, token_level_rewards, mask, uids


def logprob_batch(seed: int, B: int = 12, T: int = 10, spread: float = 0.5):
    generator = torch.Generator().manual_seed(100 + seed)
    old = -torch.rand(B, T, generator=generator) * 3
    steps = spread * torch.randn(B, T, generator=generator)  # log-ratios
    new = old + (steps.clamp(-1, 1) if spread < 1 else steps)  # spread < 1: ratios within [1/e, e]
    advantages = torch.randn(B, generator=generator)
    return old, new, advantages, ragged_mask(generator, B, T)


def actor_config(clip_low: float, clip_high: float, **fields):
    from verl.workers.config import ActorConfig

    return ActorConfig(
        strategy="fsdp",
        rollout_n=4,
        ppo_mini_batch_size=4,
        ppo_micro_batch_size_per_gpu=2,
        clip_ratio=clip_low,
        clip_ratio_low=clip_low,
        clip_ratio_high=clip_high,
        **fields,
    )


# ------------------------------------------------------------------------------------------------------
# Laziness and the version guard (before anything else imports the integration)
# ------------------------------------------------------------------------------------------------------


@check
def algos_never_import_verl():
    """Importing every algos/*.py file leaves verl unimported (the check runs first, in a fresh process)."""
    from pathlib import Path

    assert "verl" not in sys.modules, "verl was imported before the check"
    names = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "algos").glob("*.py"))
    for name in names:
        importlib.import_module(f"algos.{name}")
    leaked = sorted(m for m in sys.modules if m == "verl" or m.startswith("verl."))
    assert not leaked, f"importing algos/*.py imported {leaked[:3]}"
    print(f"  imported {len(names)} files: {', '.join(names)}")


@check
def other_verl_version_fails_in_one_line():
    import verl

    real = verl.__version__
    verl.__version__ = "0.8.0"
    try:
        importlib.import_module("integrations.verl")
    except ImportError as error:
        message = str(error)
    else:
        raise AssertionError("integrations.verl imported under verl 0.8.0")
    finally:
        verl.__version__ = real
    assert "\n" not in message and "tested with verl 0.9.1, found verl 0.8.0" in message, message
    importlib.import_module("integrations.verl")  # the real version imports
    print(f"  {message}")


# ------------------------------------------------------------------------------------------------------
# Parity (issue 14): verl's maths against the files'
# ------------------------------------------------------------------------------------------------------


@check
def grpo_advantages_match_verl():
    from verl.trainer.ppo.core_algos import (
        compute_grpo_outcome_advantage,
        compute_grpo_vectorized_outcome_advantage,
    )

    from algos.grpo import grpo_advantages

    for seed in SEEDS:
        for binary in (True, False):
            rewards, token_rewards, mask, uids = outcome_batch(seed, binary=binary)
            for norm, scale in ((True, "group"), (False, "none")):
                ours = grpo_advantages(rewards, scale).flatten()[:, None] * mask
                for fn in (compute_grpo_outcome_advantage, compute_grpo_vectorized_outcome_advantage):
                    theirs, returns = fn(token_rewards.clone(), mask, uids, norm_adv_by_std_in_grpo=norm)
                    close(theirs, ours, f"{fn.__name__} seed {seed} std={norm}")
                    close(returns, ours, "returns")


@check
def loss_aggregation_matches_verl_agg_loss():
    """token-mean, seq-mean-token-mean and seq-mean-token-sum-norm, whole batch and split into two
    micro-batches with the global sizes (verl's batch_num_tokens / global_batch_size / loss_scale_factor
    are our num_tokens / num_sequences / max_len). Difference on purpose: verl divides a sequence's token
    sum by (length + 1e-8), ours by max(length, 1) — equal to float32 rounding for every non-empty row."""
    from verl.trainer.ppo.core_algos import agg_loss

    from algos.grpo import aggregate_loss

    for seed in SEEDS:
        generator = torch.Generator().manual_seed(200 + seed)
        B, T = 10, 12
        losses, mask = torch.randn(B, T, generator=generator), ragged_mask(generator, B, T)
        tokens, sequences = int(mask.sum()), B
        for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
            theirs = agg_loss(losses, mask, mode, loss_scale_factor=T)
            close(theirs, aggregate_loss(losses, mask, mode, sequences, tokens, T), f"{mode} seed {seed}")
            halves = (slice(0, 4), slice(4, B))
            theirs = sum(
                agg_loss(
                    losses[h],
                    mask[h],
                    mode,
                    batch_num_tokens=tokens,
                    global_batch_size=B,
                    loss_scale_factor=T,
                )
                for h in halves
            )
            ours = sum(aggregate_loss(losses[h], mask[h], mode, sequences, tokens, T) for h in halves)
            close(theirs, ours, f"{mode} seed {seed}, two micro-batches")
    # verl's seq-mean-token-sum-norm defaults L_max to the mask's width; ours takes --max-new-tokens.
    close(
        agg_loss(losses, mask, "seq-mean-token-sum-norm"),
        aggregate_loss(losses, mask, "seq-mean-token-sum-norm", B, tokens, T),
        "L_max = width",
    )


@check
def vanilla_policy_loss_matches_clipped_surrogate():
    """verl's compute_policy_loss_vanilla (clip low/high 0.2/0.28) against clipped_surrogate +
    aggregate_loss, losses and gradients, at log-ratios 0.5·N(0, 1) clamped to [−1, 1] (ratios below dual-clip's c = 3)."""
    from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla

    from algos.grpo import aggregate_loss, clipped_surrogate

    for seed in SEEDS:
        old, new, advantages, mask = logprob_batch(seed)
        assert torch.exp(new - old).max() < 3, "this check stays below dual-clip's bound"
        for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
            for low, high in ((0.2, 0.2), (0.2, 0.28)):
                config = actor_config(low, high)
                config.global_batch_info.update(loss_scale_factor=new.shape[-1])
                a, b = new.clone().requires_grad_(), new.clone().requires_grad_()
                theirs, metrics = compute_policy_loss_vanilla(
                    old, a, advantages[:, None] * mask, mask, mode, config
                )
                per_token, clipped = clipped_surrogate(b, old, advantages, low, high)
                ours = aggregate_loss(per_token, mask, mode, len(mask), int(mask.sum()), new.shape[-1])
                close(theirs, ours, f"loss {mode} {low}/{high} seed {seed}")
                theirs.backward(), ours.backward()
                close(a.grad, b.grad, f"gradient {mode} {low}/{high} seed {seed}")
                close(metrics["actor/pg_clipfrac"], (clipped * mask).sum() / mask.sum(), "clip fraction")


@check
def vanilla_policy_loss_dual_clip_is_the_difference():
    """Difference on purpose: verl caps a negative-advantage token's loss at −A·c (dual-clip PPO, c =
    clip_ratio_c = 3) and clamps the log-ratio to [−20, 20]; grpo.py does not. At large ratios verl's
    loss is exactly ours with that cap, and with c = 1e9 exactly ours."""
    from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla

    from algos.grpo import aggregate_loss, clipped_surrogate

    for seed in SEEDS:
        old, new, advantages, mask = logprob_batch(seed, spread=2.0)
        assert (torch.exp(new - old) * mask > 3).any()
        per_token, _ = clipped_surrogate(new, old, advantages, 0.2, 0.2)
        capped = torch.where(
            advantages[:, None] < 0, torch.minimum(per_token, -advantages[:, None] * 3.0), per_token
        )
        tokens = int(mask.sum())
        theirs, _ = compute_policy_loss_vanilla(
            old, new, advantages[:, None] * mask, mask, "token-mean", actor_config(0.2, 0.2)
        )
        close(
            theirs, aggregate_loss(capped, mask, "token-mean", len(mask), tokens, 1), f"dual clip seed {seed}"
        )
        assert not torch.allclose(theirs, aggregate_loss(per_token, mask, "token-mean", len(mask), tokens, 1))
        theirs, _ = compute_policy_loss_vanilla(
            old, new, advantages[:, None] * mask, mask, "token-mean", actor_config(0.2, 0.2, clip_ratio_c=1e9)
        )
        close(
            theirs,
            aggregate_loss(per_token, mask, "token-mean", len(mask), tokens, 1),
            f"c = 1e9 seed {seed}",
        )


@check
def rloo_and_reinforce_pp_advantages_match_verl():
    """RLOO: verl's compute_rloo_outcome_advantage and its vectorized twin against rloo.py's
    rloo_advantages. REINFORCE++: compute_reinforce_plus_plus_outcome_advantage (γ 1 and 0.99) against
    reinforce_pp.py's reinforce_pp_advantages and token_returns, on token rewards with the KL folded in,
    the folding itself against verl's apply_kl_penalty. REINFORCE++-baseline:
    compute_reinforce_plus_plus_baseline_outcome_advantage against reinforce_pp_baseline_advantages;
    masked_whiten against verl's. Difference on purpose: on a mask with a hole verl carries the return
    through it, token_returns stops there (shown exactly; the plug-in refuses such masks)."""
    from omegaconf import OmegaConf
    from verl import DataProto
    from verl.trainer.ppo.core_algos import (
        FixedKLController,
        compute_reinforce_plus_plus_baseline_outcome_advantage,
        compute_reinforce_plus_plus_outcome_advantage,
        compute_rloo_outcome_advantage,
        compute_rloo_vectorized_outcome_advantage,
    )
    from verl.trainer.ppo.ray_trainer import apply_kl_penalty
    from verl.utils.torch_functional import masked_whiten as verl_masked_whiten

    from algos.reinforce_pp import (
        kl_folded_rewards,
        masked_whiten,
        reinforce_pp_advantages,
        reinforce_pp_baseline_advantages,
        token_returns,
    )
    from algos.rloo import rloo_advantages

    for seed in SEEDS:
        for binary in (True, False):
            rewards, token_rewards, mask, uids = outcome_batch(seed, binary=binary)
            ours = rloo_advantages(rewards).flatten()[:, None] * mask
            for fn in (compute_rloo_outcome_advantage, compute_rloo_vectorized_outcome_advantage):
                theirs, returns = fn(token_rewards.clone(), mask, uids)
                close(theirs, ours, f"{fn.__name__} seed {seed} binary {binary}")
            theirs, _ = compute_reinforce_plus_plus_baseline_outcome_advantage(
                token_rewards.clone(), mask, uids
            )
            close(
                theirs, reinforce_pp_baseline_advantages(rewards, mask), f"REINFORCE++-baseline seed {seed}"
            )
            values = torch.randn(mask.shape, generator=torch.Generator().manual_seed(seed))
            close(verl_masked_whiten(values, mask) * mask, masked_whiten(values, mask), f"whiten seed {seed}")
        # REINFORCE++ on KL-folded rewards, the folding as verl's apply_kl_penalty does it
        old, _, _, _ = logprob_batch(seed, B=len(uids), T=mask.shape[1])
        ref = old + 0.3 * torch.randn(old.shape, generator=torch.Generator().manual_seed(seed))
        scores = token_rewards.sum(-1)
        data = DataProto.from_dict(
            tensors={
                "response_mask": mask,
                "token_level_scores": token_rewards,
                "old_log_probs": old,
                "ref_log_prob": ref,
            }
        )
        data, _ = apply_kl_penalty(data, FixedKLController(0.05), kl_penalty="kl")
        folded = kl_folded_rewards(scores, old - ref, mask, 0.05)
        close(data.batch["token_level_rewards"], folded, f"KL-folded rewards seed {seed}")
        for gamma in (1.0, 0.99):
            config = OmegaConf.create({"gamma": gamma})
            theirs, returns = compute_reinforce_plus_plus_outcome_advantage(
                folded.clone(), mask, config=config
            )
            close(returns, token_returns(folded, mask, gamma), f"REINFORCE++ returns seed {seed} γ {gamma}")
            close(theirs, reinforce_pp_advantages(folded, mask, gamma), f"REINFORCE++ seed {seed} γ {gamma}")
    hole = torch.tensor([[1.0, 0.0, 1.0]])  # a response, an observation token, a response token
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    _, returns = compute_reinforce_plus_plus_outcome_advantage(
        rewards, hole, config=OmegaConf.create({"gamma": 1.0})
    )
    close(returns, torch.tensor([[1.0, 0.0, 1.0]]), "verl carries the return through the hole")
    close(token_returns(rewards, hole), torch.tensor([[0.0, 0.0, 1.0]]), "token_returns stops at the hole")


def critic_batch(seed: int, B: int = 8, T: int = 11):
    """Per-token rewards (KL-like noise plus a terminal score), values, old values, mask [B, T]."""
    generator = torch.Generator().manual_seed(300 + seed)
    mask = ragged_mask(generator, B, T)
    last = (mask.cumsum(-1) == mask.sum(-1, keepdim=True)) & (mask > 0)
    rewards = (
        0.05 * torch.randn(B, T, generator=generator) + last * (torch.rand(B, 1, generator=generator) < 0.5)
    ) * mask
    values = torch.randn(B, T, generator=generator)
    old_values = values + 0.3 * torch.randn(B, T, generator=generator)
    return rewards, values, old_values, mask


@check
def gae_matches_verl():
    """verl's compute_gae_advantage_return is (masked_whiten(advantages), returns) of ppo.py's gae_advantages,
    masked_whiten being ppo.py's (verl's: unbiased variance, ε = 1e-8 under the root)."""
    from verl.trainer.ppo.core_algos import compute_gae_advantage_return

    from algos.ppo import gae_advantages, masked_whiten

    for seed in SEEDS:
        rewards, values, _, mask = critic_batch(seed)
        for gamma, lam in ((1.0, 1.0), (1.0, 0.95), (0.99, 0.9)):
            theirs_adv, theirs_ret = compute_gae_advantage_return(rewards, values, mask, gamma, lam)
            advantages, returns = gae_advantages(rewards, values, mask, gamma, lam)
            close(theirs_ret * mask, returns * mask, f"returns seed {seed} γ {gamma} λ {lam}")
            close(
                theirs_adv * mask,
                masked_whiten(advantages, mask) * mask,
                f"advantages seed {seed} γ {gamma} λ {lam}",
            )


@check
def value_loss_matches_verl():
    """verl's compute_value_loss against agg of ppo.py's value_loss (the ½ inside), and its clip fraction."""
    from verl.trainer.ppo.core_algos import compute_value_loss

    from algos.ppo import aggregate_loss, value_loss

    for seed in SEEDS:
        _, returns, old_values, mask = critic_batch(seed)
        values = old_values + 0.4 * torch.randn(mask.shape, generator=torch.Generator().manual_seed(seed))
        B, T = mask.shape
        for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
            for clip in (0.2, 0.5):
                theirs, clipfrac = compute_value_loss(
                    values, returns, old_values, mask, clip, mode, loss_scale_factor=T
                )
                per_token, clipped = value_loss(values, old_values, returns, clip)
                close(
                    theirs,
                    aggregate_loss(per_token, mask, mode, B, int(mask.sum()), T),
                    f"{mode} clip {clip}",
                )
                close(clipfrac, (clipped * mask).sum() / mask.sum(), "value clip fraction")


@check
def ppo_token_policy_loss_and_kl_reward_match_verl():
    """ppo.py's ppo_policy_loss (per-token advantages) + aggregate_loss against verl's vanilla loss below
    dual-clip's bound; kl_folded_rewards against verl's apply_kl_penalty (kl_penalty="kl", fixed β)."""
    from verl import DataProto
    from verl.trainer.ppo.core_algos import FixedKLController, compute_policy_loss_vanilla
    from verl.trainer.ppo.ray_trainer import apply_kl_penalty

    from algos.ppo import aggregate_loss, kl_folded_rewards, ppo_policy_loss

    for seed in SEEDS:
        old, new, _, mask = logprob_batch(seed)
        advantages = torch.randn(mask.shape, generator=torch.Generator().manual_seed(seed)) * mask
        B, T = mask.shape
        for mode in ("token-mean", "seq-mean-token-mean"):
            theirs, _ = compute_policy_loss_vanilla(old, new, advantages, mask, mode, actor_config(0.2, 0.28))
            per_token, _ = ppo_policy_loss(new, old, advantages, 0.2, 0.28)
            close(
                theirs,
                aggregate_loss(per_token, mask, mode, B, int(mask.sum()), T),
                f"ppo loss {mode} seed {seed}",
            )
        scores = torch.rand(B)
        ref = old + 0.2 * torch.randn(B, T, generator=torch.Generator().manual_seed(seed))
        last = (mask.cumsum(-1) == mask.sum(-1, keepdim=True)) & (mask > 0)
        data = DataProto.from_dict(
            tensors={
                "response_mask": mask,
                "token_level_scores": scores[:, None] * last,
                "old_log_probs": old,
                "ref_log_prob": ref,
            }
        )
        data, _ = apply_kl_penalty(data, FixedKLController(0.05), kl_penalty="kl")
        close(
            data.batch["token_level_rewards"],
            kl_folded_rewards(scores, old - ref, mask, 0.05),
            f"KL reward seed {seed}",
        )


# ------------------------------------------------------------------------------------------------------
# The rollout-correction menu (issue 24): verl's rollout_corr_helper against common/rollout_correction.py
# ------------------------------------------------------------------------------------------------------


def correction_batch(seed: int, spread: float, B: int = 12, T: int = 10):
    """Sampler and trainer log-probs [B, T] whose log-ratios are spread·N(0, 1), a ragged mask, finite
    garbage on the padding of both (verl multiplies by the mask; the module never reads it), advantages [B]."""
    generator = torch.Generator().manual_seed(400 + seed)
    mask = ragged_mask(generator, B, T)
    behavior = -3 * torch.rand(B, T, generator=generator)
    old = behavior + spread * torch.randn(B, T, generator=generator)
    padding = mask == 0
    old = torch.where(padding, 30 * torch.randn(B, T, generator=generator), old)
    behavior = torch.where(padding, 30 * torch.randn(B, T, generator=generator), behavior)
    return old, behavior, mask, torch.randn(B, generator=generator)


def correction_args(**fields):
    from types import SimpleNamespace

    defaults = dict(rollout_is="none", rollout_is_threshold=2.0, rollout_is_threshold_low=None, rollout_rs="none",
                    rollout_rs_threshold=None)  # fmt: skip
    return SimpleNamespace(**{**defaults, **fields})


@check
def rollout_is_weights_match_verl():
    """verl's compute_rollout_correction_weights (rollout_is "token"/"sequence"; a threshold C is TIS, "lo_C"
    IcePop's mask) against rollout_correction's weights, times the mask, in every --rollout-is mode, with
    the shares verl logs (ratio_fraction_high = truncated, oob_ratio = masked, mean). A one-sided *-mis
    is verl's mask with lo = 1e-30: verl clamps log-ratios at −20, so no ratio falls below it."""
    from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_weights

    from common.rollout_correction import rollout_correction

    cases = []  # (our mode, C, lo, verl's level, verl's threshold)
    for cap in (1.5, 2.0, 3.0):
        cases += [("token-tis", cap, None, "token", cap), ("seq-tis", cap, None, "sequence", cap)]
        cases += [
            ("token-mis", cap, None, "token", f"1e-30_{cap}"),
            ("seq-mis", cap, None, "sequence", f"1e-30_{cap}"),
        ]
        cases += [
            ("token-mis", cap, 0.8, "token", f"0.8_{cap}"),
            ("seq-mis", cap, 0.5, "sequence", f"0.5_{cap}"),
        ]
        cases += [("icepop", cap, None, "token", f"{1 / cap}_{cap}")]
    cases += [("icepop", 5.0, 0.5, "token", "0.5_5.0")]  # verl's decoupled_token_icepop preset
    touched = {mode: 0.0 for mode, *_ in cases}
    for seed in SEEDS:
        for spread in (0.6, 0.2):
            old, behavior, mask, advantages = correction_batch(seed, spread)
            for mode, cap, low, level, threshold in cases:
                args = correction_args(
                    rollout_is=mode, rollout_is_threshold=cap, rollout_is_threshold_low=low
                )
                ours, stats = rollout_correction(old, behavior, mask, advantages, args)
                theirs, metrics = compute_rollout_correction_weights(old - behavior, mask, level, threshold)
                what = f"{mode} C={cap} lo={low} seed {seed} spread {spread}"
                close(ours * mask, theirs, what)
                close(stats["correction/weight_mean"], metrics["rollout_is_mean"], f"mean weight, {what}")
                if mode == "token-tis":
                    close(
                        stats["correction/is_truncated_token_frac"],
                        metrics["rollout_is_ratio_fraction_high"],
                        what,
                    )
                if mode == "seq-tis":
                    close(
                        stats["correction/is_truncated_seq_frac"],
                        metrics["rollout_is_ratio_fraction_high"],
                        what,
                    )
                if mode in ("token-mis", "icepop"):
                    close(stats["correction/is_masked_token_frac"], metrics["rollout_is_oob_ratio"], what)
                touched[mode] += (
                    stats["correction/is_truncated_token_frac"] + stats["correction/is_masked_token_frac"]
                )
    assert all(touched.values()), f"a mode never truncated or masked a token: {touched}"


@check
def rollout_rejection_matches_verl():
    """verl's compute_rollout_rejection_mask against --rollout-rs: geo-mean τ is verl's "seq_mean_k1" with
    the threshold τ (verl takes 1/τ as the lower bound), k3 τ is "seq_mean_k3"; the rejected tokens and
    sequences, and the shares verl logs. verl 0.9.1 has no OPSM (it never sees advantages): see
    tests/test_trl.py for its oracle. verl's token_k*, seq_sum_k* and seq_max_k* are not in the menu."""
    from verl.trainer.ppo.rollout_corr_helper import (
        SUPPORTED_ROLLOUT_RS_OPTIONS,
        compute_rollout_rejection_mask,
    )

    from common.rollout_correction import rollout_correction

    assert not any("opsm" in option for option in SUPPORTED_ROLLOUT_RS_OPTIONS), SUPPORTED_ROLLOUT_RS_OPTIONS
    cases = [("geo-mean", tau, "seq_mean_k1") for tau in (1.001, 1.05, 1.2, 1.5)]
    cases += [("k3", tau, "seq_mean_k3") for tau in (0.001, 0.01, 0.1, 0.3)]
    outcomes = {case: set() for case in cases}
    for seed in SEEDS:
        for spread in (0.6, 0.05, 0.002):
            old, behavior, mask, advantages = correction_batch(seed, spread)
            for mode, tau, option in cases:
                args = correction_args(rollout_rs=mode, rollout_rs_threshold=tau)
                ours, stats = rollout_correction(old, behavior, mask, advantages, args)
                kept, metrics = compute_rollout_rejection_mask(old - behavior, mask, option, tau)
                what = f"{mode} τ={tau} seed {seed} spread {spread}"
                assert torch.equal(ours * mask, kept), what
                close(stats["correction/rs_rejected_token_frac"], metrics["rollout_rs_masked_fraction"], what)
                close(
                    stats["correction/rs_rejected_seq_frac"], metrics["rollout_rs_seq_masked_fraction"], what
                )
                outcomes[mode, tau, option] |= {bool(x) for x in (kept.sum(-1) > 0)}
    assert all(seen == {True, False} for seen in outcomes.values()), outcomes


@check
def verl_presets_are_modes_of_the_menu():
    """verl's named RolloutCorrectionConfig presets, through compute_rollout_correction_and_add_to_batch as its
    trainer calls it, against the menu: the IS weight times the rejection-modified response mask equals
    our weight times the mask. Differences on purpose, stated exactly: (1) verl removes a rejected token from
    the response mask, so token-mean divides by the kept tokens; ours keeps it in the normaliser, so our loss
    is verl's times kept/all; (2) the Geo-RS preset "0.999_1.001" bounds exp(mean(−log ρ)), so it keeps
    mean log ρ up to −log 0.999 = 0.0010005 where ours (τ = 1.001) stops at log 1.001 = 0.0009995."""
    from verl import DataProto
    from verl.trainer.config.algorithm import RolloutCorrectionConfig
    from verl.trainer.ppo.core_algos import agg_loss
    from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_and_add_to_batch

    from common.rollout_correction import rollout_correction, sequence_mean

    presets = {
        "decoupled_token_is": dict(rollout_is="token-tis"),
        "decoupled_seq_is": dict(rollout_is="seq-tis"),
        "decoupled_seq_is_rs": dict(rollout_is="seq-mis", rollout_is_threshold_low=0.5),  # Seq-MIS
        "decoupled_token_icepop": dict(
            rollout_is="icepop", rollout_is_threshold=5.0, rollout_is_threshold_low=0.5
        ),
        "decoupled_geo_rs": dict(rollout_rs="geo-mean"),
        "decoupled_k3_rs": dict(rollout_rs="k3"),
        "decoupled_geo_rs_token_tis": dict(rollout_is="token-tis", rollout_rs="geo-mean"),
        "decoupled_k3_rs_seq_tis": dict(rollout_is="seq-tis", rollout_rs="k3"),
    }
    defaults = RolloutCorrectionConfig()
    assert (defaults.rollout_is, defaults.rollout_is_threshold, defaults.rollout_rs) == (
        "sequence",
        2.0,
        None,
    )
    window_rows = 0
    for seed in SEEDS:
        for spread in (0.6, 0.02, 0.002):
            old, behavior, mask, advantages = correction_batch(seed, spread)
            in_window = (sequence_mean(old - behavior, mask) > math.log(1.001)) & (
                sequence_mean(old - behavior, mask) <= -math.log(0.999)
            )
            window_rows += int(in_window.sum())
            for name, fields in presets.items():
                batch = DataProto.from_dict(
                    tensors={
                        "old_log_probs": old,
                        "rollout_log_probs": behavior,
                        "response_mask": mask.clone(),
                    }
                )
                batch, _ = compute_rollout_correction_and_add_to_batch(
                    batch, getattr(RolloutCorrectionConfig, name)()
                )
                kept = batch.batch["response_mask"]
                theirs = kept * batch.batch.get("rollout_is_weights", 1.0)
                ours, _ = rollout_correction(old, behavior, mask, advantages, correction_args(**fields))
                rows = ~in_window if "geo" in name else torch.ones(len(mask), dtype=torch.bool)
                close((ours * mask)[rows], theirs[rows], f"{name} seed {seed} spread {spread}")
                if "rs" in name and kept.sum() > 0:  # (1): the normaliser
                    losses = torch.randn(mask.shape, generator=torch.Generator().manual_seed(seed))
                    ours_loss = (losses * ours * mask).sum() / mask.sum()
                    close(
                        ours_loss,
                        agg_loss(losses * theirs, kept, "token-mean") * kept.sum() / mask.sum(),
                        name,
                    )
    print(f"  {len(presets)} presets; rows in the Geo-RS preset's 1e-6 window: {window_rows}")


# ------------------------------------------------------------------------------------------------------
# GSPO and GMPO (issue 23): verl's own gspo and geo_mean losses against gspo.py and gmpo.py
# ------------------------------------------------------------------------------------------------------


def ratio_batch(seed: int, spread: float, B: int = 12, T: int = 10):
    """π_old and π_θ log-probs [B, T] (log-ratios spread·N(0, 1)), a ragged mask, finite garbage on the padding
    of both, advantages [B] of both signs with one exact zero."""
    generator = torch.Generator().manual_seed(800 + seed)
    mask = ragged_mask(generator, B, T)
    old = -3 * torch.rand(B, T, generator=generator)
    new = old + spread * torch.randn(B, T, generator=generator)
    padding = mask == 0
    old = torch.where(padding, 5 * torch.randn(B, T, generator=generator), old)
    new = torch.where(padding, 5 * torch.randn(B, T, generator=generator), new)
    advantages = torch.randn(B, generator=generator)
    advantages[1] = 0.0
    return old, new, advantages, mask


@check
def gspo_loss_matches_verl():
    """gspo.py's sequence_log_ratio (GSPO and GSPO-token) + clipped_surrogate + aggregate_loss against verl's
    compute_policy_loss_gspo, loss, gradient and clip fraction, in every aggregation verl honours
    (token-mean, seq-mean-token-mean, seq-mean-token-sum, seq-mean-token-sum-norm), whole batch and two
    micro-batches with the global sizes; the paper's ε 3e-4/4e-4 with sequence ratios inside and outside the
    band, and 0.2/0.28. verl clamps log s_i at 10 before the exponential; these ratios stay below it."""
    from verl.trainer.ppo.core_algos import compute_policy_loss_gspo

    from algos.gspo import aggregate_loss, clipped_surrogate, sequence_log_ratio

    modes = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
    halves = (slice(0, 5), slice(5, None))
    for (low, high), spread in (((3e-4, 4e-4), 1e-3), ((0.2, 0.28), 0.4)):
        shares = []
        for seed in SEEDS:
            old, new, advantages, mask = ratio_batch(seed, spread)
            B, T = mask.shape
            tokens = int(mask.sum())
            for mode in modes:
                config = actor_config(low, high)
                config.global_batch_info.update(loss_scale_factor=T)
                a = new.clone().requires_grad_()
                theirs, metrics = compute_policy_loss_gspo(
                    old, a, advantages[:, None] * mask, mask, mode, config
                )
                theirs.backward()
                split = actor_config(low, high)
                split.global_batch_info.update(
                    loss_scale_factor=T, batch_num_tokens=tokens, global_batch_size=B
                )
                theirs_split = sum(
                    compute_policy_loss_gspo(old[h], new[h], advantages[h, None] * mask[h], mask[h], mode, split)[0]
                    for h in halves
                )  # fmt: skip
                for token in (False, True):
                    b = new.clone().requires_grad_()
                    log_ratio = sequence_log_ratio(b, old, mask, token)
                    per_token, clipped = clipped_surrogate(log_ratio, 0 * log_ratio, advantages, low, high)
                    ours = aggregate_loss(per_token, mask, mode, B, tokens, T)
                    ours.backward()
                    what = f"{mode} ε {low}/{high} seed {seed} token {token}"
                    close(theirs, ours, f"loss {what}")
                    close(a.grad, b.grad, f"gradient {what}")
                    close(theirs_split, ours, f"two micro-batches {what}")
                    share = (clipped * mask).sum() / mask.sum()
                    close(metrics["actor/pg_clipfrac"], share, f"clip fraction {what}")
            shares.append(float(share))
        assert 0 < max(shares) < 1, f"ε {low}/{high}: every seed clipped all tokens or none: {shares}"


@check
def gmpo_loss_matches_verl_geo_mean():
    """gmpo.py's geometric_mean_surrogate + the mean over sequences against verl's compute_policy_loss_geo_mean
    (clip_ratio_low = clip_ratio_high = ε, read by verl as log-space bounds), loss and gradient, ε 0.4 and 0.2,
    log-ratios beyond ±ε on both sides, an exact zero advantage. verl ignores loss_agg_mode (a plain mean
    over the local batch): checked in two modes. Difference on purpose, stated exactly: verl's
    pg_clipfrac / pg_clipfrac_lower count every token with |log ρ| > ε under Â > 0 / Â < 0, also where the
    sign-aware clip does not bind; ours counts only where it binds (log ρ > ε under Â > 0, < −ε under Â < 0)."""
    from verl.trainer.ppo.core_algos import compute_policy_loss_geo_mean

    from algos.gmpo import aggregate_loss, geometric_mean_surrogate

    for epsilon in (0.4, 0.2):
        for seed in SEEDS:
            old, new, advantages, mask = ratio_batch(seed, 0.5)
            B, T = mask.shape
            b = new.clone().requires_grad_()
            per_token, clipped = geometric_mean_surrogate(b, old, advantages, mask, epsilon)
            ours = aggregate_loss(per_token, mask, "seq-mean-token-mean", B, int(mask.sum()), T)
            ours.backward()
            for mode in ("token-mean", "seq-mean-token-mean"):
                a = new.clone().requires_grad_()
                theirs, metrics = compute_policy_loss_geo_mean(
                    old, a, advantages[:, None] * mask, mask, mode, actor_config(epsilon, epsilon)
                )
                theirs.backward()
                what = f"ε {epsilon} seed {seed} {mode}"
                close(theirs, ours, f"loss {what}")
                close(a.grad, b.grad, f"gradient {what}")
            log_ratio, positive, negative = new - old, advantages[:, None] > 0, advantages[:, None] < 0
            outside = (log_ratio.abs() > epsilon) * mask
            close(
                metrics["actor/pg_clipfrac"], (outside * positive).sum() / mask.sum(), f"verl clipfrac {what}"
            )
            close(metrics["actor/pg_clipfrac_lower"], (outside * negative).sum() / mask.sum(), "lower")
            binds = ((log_ratio > epsilon) & positive | (log_ratio < -epsilon) & negative) * mask
            assert (
                torch.equal(clipped * mask, binds)
                and 0 < binds.sum() < (outside * (positive | negative)).sum()
            )


# ------------------------------------------------------------------------------------------------------
# The plug-in (issue 16): verl's registries and entry points with our names
# ------------------------------------------------------------------------------------------------------


def file_advantages(name: str, rewards: torch.Tensor, positive_weight: float = 0.1) -> torch.Tensor:
    """The advantages [Q, G] that algos/X.py computes for the estimator ``name``."""
    from algos.bnpo import decomposed_advantages
    from algos.grpo import grpo_advantages
    from algos.nsr import nsr_advantages

    if name == "rlvr_grpo":
        return grpo_advantages(rewards, "group")
    if name == "rlvr_dr_grpo":
        return grpo_advantages(rewards, "none")
    if name in ("rlvr_psr", "rlvr_nsr", "rlvr_w_reinforce", "rlvr_reinforce"):
        objective = name.removeprefix("rlvr_").replace("_", "-")
        return nsr_advantages(rewards.flatten(), objective, positive_weight)[0].view_as(rewards)
    if name == "rlvr_bnpo":
        return decomposed_advantages(rewards[None])[0]
    if name == "rlvr_topr":
        return torch.where(rewards > 0, 1.0, -1.0)
    if name == "rlvr_rloo":
        from algos.rloo import rloo_advantages

        return rloo_advantages(rewards)
    if name == "rlvr_maxrl":
        from algos.maxrl import maxrl_advantages

        return maxrl_advantages(rewards)
    if name == "rlvr_nft":
        from algos.nft import correct_rates

        rate, keep = correct_rates(rewards)
        return torch.where(keep[:, None], torch.where(rewards > 0, 1.0, -1.0) * rate[:, None], 0.0)
    raise KeyError(name)


@check
def plugin_docstring_examples():
    """The doctest examples of integrations/verl/__init__.py (they need verl, so test_doctests skips them)."""
    import doctest

    import integrations.verl as plugin

    result = doctest.testmod(plugin)
    assert result.attempted > 0 and result.failed == 0, result


@check
def registries_resolve_our_names():
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn, get_policy_loss_fn

    import integrations.verl as plugin

    for name, fn in plugin.ADVANTAGE_ESTIMATORS.items():
        assert get_adv_estimator_fn(name) is fn, name
    for name, fn in plugin.POLICY_LOSSES.items():
        assert get_policy_loss_fn(name) is fn, name
    print(f"  {sorted(plugin.ADVANTAGE_ESTIMATORS)} / {sorted(plugin.POLICY_LOSSES)}")


@check
def trainer_compute_advantage_returns_the_files_advantages():
    """verl.trainer.ppo.ray_trainer.compute_advantage, as the trainer calls it (DataProto with
    token_level_rewards, response_mask and uid; algorithm config as a DictConfig), rows shuffled so that
    groups are not contiguous, for every rlvr_* estimator; rlvr_grpo also equals verl's own grpo."""
    from omegaconf import OmegaConf
    from verl import DataProto
    from verl.trainer.ppo.ray_trainer import compute_advantage

    import integrations.verl as plugin

    for seed in SEEDS:
        rewards, token_rewards, mask, uids = outcome_batch(seed)
        order = torch.randperm(len(uids), generator=torch.Generator().manual_seed(seed))
        token_level = ("rlvr_reinforce_pp", "rlvr_reinforce_pp_baseline")  # [B, T] advantages, checked below
        for name in [n for n in plugin.ADVANTAGE_ESTIMATORS if n not in token_level]:
            for positive_weight in (0.1, 0.5):
                config = OmegaConf.create(
                    {
                        "adv_estimator": name,
                        "gamma": 1.0,
                        "lam": 1.0,
                        "rlvr": {"positive_weight": positive_weight},
                    }
                )
                data = DataProto.from_dict(
                    tensors={"token_level_rewards": token_rewards[order], "response_mask": mask[order]},
                    non_tensors={"uid": uids[order.numpy()]},
                )
                out = compute_advantage(data, name, gamma=1.0, lam=1.0, num_repeat=6, config=config)
                expected = (file_advantages(name, rewards, positive_weight).flatten()[:, None] * mask)[order]
                close(
                    out.batch["advantages"], expected, f"{name} seed {seed} positive_weight {positive_weight}"
                )
        data = DataProto.from_dict(
            tensors={"token_level_rewards": token_rewards[order], "response_mask": mask[order]},
            non_tensors={"uid": uids[order.numpy()]},
        )
        verl_grpo = compute_advantage(data, "grpo", config=OmegaConf.create({})).batch["advantages"]
        close(
            verl_grpo, (file_advantages("rlvr_grpo", rewards).flatten()[:, None] * mask)[order], "verl's grpo"
        )
        # the token-level estimators, each against the file's function and verl's own estimator
        from algos.reinforce_pp import reinforce_pp_advantages, reinforce_pp_baseline_advantages

        for ours_name, verl_name, expected in (
            ("rlvr_reinforce_pp", "reinforce_plus_plus", reinforce_pp_advantages(token_rewards, mask)[order]),
            ("rlvr_reinforce_pp_baseline", "reinforce_plus_plus_baseline",
             reinforce_pp_baseline_advantages(rewards, mask)[order]),
            ("rlvr_rloo", "rloo", (file_advantages("rlvr_rloo", rewards).flatten()[:, None] * mask)[order]),
        ):  # fmt: skip
            config = OmegaConf.create({"adv_estimator": ours_name, "gamma": 1.0, "lam": 1.0})
            for name in (ours_name, verl_name):
                data = DataProto.from_dict(
                    tensors={"token_level_rewards": token_rewards[order], "response_mask": mask[order]},
                    non_tensors={"uid": uids[order.numpy()]},
                )
                out = compute_advantage(data, name, gamma=1.0, lam=1.0, num_repeat=6, config=config)
                close(out.batch["advantages"], expected, f"{name} seed {seed}")
    try:
        plugin.reinforce_pp_estimator(torch.ones(1, 3), torch.tensor([[1.0, 0.0, 1.0]]))
    except ValueError as error:
        assert "prefix" in str(error) and "\n" not in str(error), error
    else:
        raise AssertionError("a mask with a hole accepted by rlvr_reinforce_pp")
    try:
        plugin.group_rows(np.array(["a", "a", "b"], dtype=object))
    except ValueError as error:
        assert "groups of equal size" in str(error)
    else:
        raise AssertionError("unequal groups accepted")


def call_as_ppo_loss(
    name, old, new, advantages_bt, mask, mode, config, dp_size=1, tokens=None, sequences=None
):
    """get_policy_loss_fn(name) called as verl/workers/utils/losses.py ppo_loss calls it."""
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    config.global_batch_info.update(
        dp_size=dp_size,
        batch_num_tokens=tokens,
        global_batch_size=sequences,
        loss_scale_factor=config.loss_scale_factor,
    )
    return get_policy_loss_fn(name)(
        old_log_prob=old,
        log_prob=new,
        advantages=advantages_bt,
        response_mask=mask.bool(),
        loss_agg_mode=mode,
        config=config,
        rollout_is_weights=None,
    )


@check
def policy_losses_through_get_policy_loss_fn():
    """rlvr_clip / rlvr_dapo equal the files' clipped_surrogate + aggregate_loss and verl's vanilla loss
    (below dual-clip's bound), whole batch and as two micro-batches with the global sizes; rlvr_topr
    equals topr.py's topr_weights + topr_token_loss + aggregate_loss. Losses and gradients."""
    import algos.dapo as dapo
    import algos.grpo as grpo
    import algos.ppo as ppo
    import algos.topr as topr

    for seed in SEEDS:
        old, new, advantages, mask = logprob_batch(seed)
        B, T = mask.shape
        tokens = int(mask.sum())
        for name, module, low, high in (
            ("rlvr_clip", grpo, 0.2, 0.2),
            ("rlvr_dapo", dapo, 0.2, 0.28),
            ("rlvr_ppo", ppo, 0.2, 0.28),
        ):
            for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
                config = actor_config(low, high, loss_scale_factor=T)
                a, b, c = (new.clone().requires_grad_() for _ in range(3))
                theirs, _ = call_as_ppo_loss(name, old, a, advantages[:, None] * mask, mask, mode, config)
                if module is ppo:
                    per_token, _ = ppo.ppo_policy_loss(b, old, advantages[:, None] * mask, low, high)
                else:
                    per_token, _ = module.clipped_surrogate(b, old, advantages, low, high)
                ours = module.aggregate_loss(per_token, mask, mode, B, tokens, T)
                vanilla, _ = call_as_ppo_loss(
                    "vanilla", old, c, advantages[:, None] * mask, mask, mode, config
                )
                close(theirs, ours, f"{name} {mode} seed {seed}")
                close(theirs, vanilla, f"{name} vs vanilla {mode} seed {seed}")
                (theirs + ours + vanilla).backward()
                close(a.grad, b.grad, "gradient"), close(a.grad, c.grad, "gradient vs vanilla")
                halves = [
                    call_as_ppo_loss(
                        name,
                        old[h],
                        new[h],
                        (advantages[:, None] * mask)[h],
                        mask[h],
                        mode,
                        actor_config(low, high, loss_scale_factor=T),
                        tokens=tokens,
                        sequences=B,
                    )[0]
                    for h in (slice(0, 5), slice(5, B))
                ]
                close(sum(halves), ours, f"{name} {mode} two micro-batches")
        rewards = torch.where(advantages > 0, 1.0, -1.0)  # ±1
        for baseline in (0.0, 0.3):
            for mode in ("seq-mean-token-sum", "token-mean"):
                a, b = new.clone().requires_grad_(), new.clone().requires_grad_()
                theirs, _ = call_as_ppo_loss(
                    "rlvr_topr",
                    old,
                    a,
                    (rewards - baseline)[:, None] * mask,
                    mask,
                    mode,
                    actor_config(0.2, 0.2),
                )
                weights = topr.topr_weights(
                    topr.ratio_logprobs(b, mask, "seq"), topr.ratio_logprobs(old, mask, "seq"), rewards
                )
                ours = topr.aggregate_loss(
                    topr.topr_token_loss(b, weights, rewards, baseline), mask, mode, B, tokens, T
                )
                close(theirs, ours, f"rlvr_topr {mode} c={baseline} seed {seed}")
                theirs.backward(), ours.backward()
                close(a.grad, b.grad, "rlvr_topr gradient")
    # rlvr_nft: rows of two mixed groups (r̂ 0.25 and 0.5) and one all-correct group (dropped)
    import algos.nft as nft

    rewards = torch.tensor([[1.0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    rate, keep = nft.correct_rates(rewards)
    signed = torch.where(keep[:, None], torch.where(rewards > 0, 1.0, -1.0) * rate[:, None], 0.0).flatten()
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        a, b = new.clone().requires_grad_(), new.clone().requires_grad_()
        config = actor_config(0.2, 0.2, loss_scale_factor=T)
        theirs, _ = call_as_ppo_loss("rlvr_nft", old, a, signed[:, None] * mask, mask, mode, config)
        rows = keep.repeat_interleave(
            4
        )  # nft.py trains on the kept rows; the dropped rows count in verl's sizes
        per_token, _ = nft.nft_loss(
            b[rows], old[rows], rewards.flatten()[rows], rate.repeat_interleave(4)[rows]
        )
        ours = nft.aggregate_loss(per_token, mask[rows], mode, int((mask.sum(-1) > 0).sum()), tokens, T)
        close(theirs, ours, f"rlvr_nft {mode}")
        theirs.backward(), ours.backward()
        close(a.grad, b.grad, f"rlvr_nft gradient {mode}")
    token_advantages = torch.randn(B, T) * mask  # GAE-like: rlvr_ppo takes them, rlvr_clip refuses them
    import algos.reinforce_pp as reinforce_pp

    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        a, b = new.clone().requires_grad_(), new.clone().requires_grad_()
        config = actor_config(0.2, 0.28, loss_scale_factor=T)
        theirs, _ = call_as_ppo_loss("rlvr_reinforce_pp", old, a, token_advantages, mask, mode, config)
        per_token, _ = reinforce_pp.clipped_surrogate(
            b.reshape(-1, 1), old.reshape(-1, 1), token_advantages.reshape(-1), 0.2, 0.28
        )
        ours = reinforce_pp.aggregate_loss(per_token.view_as(b), mask, mode, B, tokens, T)
        vanilla, _ = call_as_ppo_loss("vanilla", old, new, token_advantages, mask, mode, config)
        (
            close(theirs, ours, f"rlvr_reinforce_pp {mode}"),
            close(theirs, vanilla, f"rlvr_reinforce_pp vs vanilla {mode}"),
        )
        theirs.backward(), ours.backward()
        close(a.grad, b.grad, f"rlvr_reinforce_pp gradient {mode}")
    theirs, _ = call_as_ppo_loss(
        "rlvr_ppo", old, new, token_advantages, mask, "token-mean", actor_config(0.2, 0.2)
    )
    per_token, _ = ppo.ppo_policy_loss(new, old, token_advantages, 0.2, 0.2)
    close(
        theirs,
        ppo.aggregate_loss(per_token, mask, "token-mean", B, tokens, T),
        "rlvr_ppo, per-token advantages",
    )
    try:
        call_as_ppo_loss("rlvr_clip", old, new, token_advantages, mask, "token-mean", actor_config(0.2, 0.2))
    except ValueError as error:
        assert "one advantage per completion" in str(error)
    else:
        raise AssertionError("token-varying advantages accepted")


def docs_recipes() -> dict[str, list[str]]:
    """The launch commands of docs/verl.md: experiment name -> hydra overrides ($COMMON expanded)."""
    import re
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "verl.md").read_text().replace("\\\n", " ")
    text = text.replace("$HOME", "/data").replace("$PWD", "/repo")
    common = shlex.split(re.search(r'^COMMON="([^"]*)"', text, re.M).group(1))
    recipes = {}
    for line in re.findall(r"^python -m verl\.trainer\.main_ppo (.*)$", text, re.M):
        tokens = shlex.split(line.replace("$COMMON", " ".join(common)))
        name = next(t.split("=", 1)[1] for t in tokens if t.startswith("trainer.experiment_name="))
        recipes[name] = tokens
    return recipes


@check
def docs_recipes_compose_with_verl_config():
    """Every launch command in docs/verl.md composes with verl 0.9.1's own ppo_trainer config (an unknown
    or misspelt key fails there) and its estimator and loss names resolve in verl's registries."""
    from pathlib import Path

    import verl
    from hydra import compose, initialize_config_dir
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn, get_policy_loss_fn

    import integrations.verl  # registers the rlvr_* names

    recipes = docs_recipes()
    expected = {"grpo", "dr_grpo", "w_reinforce", "bnpo", "topr", "dapo", "nft", "ppo", "rloo", "reinforce_pp",
                "reinforce_pp_baseline", "maxrl", "gspo", "gmpo", "cispo", "sapo", "dppo", "kimi", "opd"}  # fmt: skip
    assert set(recipes) == expected, sorted(recipes)
    config_dir = str(Path(verl.__file__).parent / "trainer" / "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        try:
            compose(config_name="ppo_trainer", overrides=["actor_rollout_ref.actor.clip_ratio_hihg=0.28"])
        except Exception as error:  # noqa: BLE001 - hydra's own error type for an unknown key
            assert "clip_ratio_hihg" in str(error), error
        else:
            raise AssertionError("a misspelt key composed")
    for name, overrides in recipes.items():
        with initialize_config_dir(config_dir=config_dir, version_base=None):
            config = compose(config_name="ppo_trainer", overrides=overrides)
        assert config.trainer.experiment_name == name
        if name == "w_reinforce":  # the hydra-added key reaches the estimator through config.algorithm
            assert integrations.verl.rlvr_param(config.algorithm, "positive_weight", None) == 0.1
        actor = config.actor_rollout_ref.actor  # the keys the parity checks set reach the fields they read
        if name == "sapo":
            assert (actor.tau_pos, actor.tau_neg) == (1.0, 1.05)
        if name == "kimi":
            assert actor.policy_loss.dro_beta == 0.1
        if name == "dppo":
            assert (actor.clip_ratio_low, actor.clip_ratio_high, actor.clip_ratio_c) == (0.15, 0.15, 10000.0)
        if name == "opd":
            loss = config.distillation.distillation_loss
            assert config.distillation.enabled and loss.loss_mode == "k1" and loss.use_policy_gradient
            assert not loss.use_task_rewards and loss.loss_max_clamp is None
        get_adv_estimator_fn(config.algorithm.adv_estimator)
        get_policy_loss_fn(config.actor_rollout_ref.actor.policy_loss.loss_mode)
        assert (
            config.trainer.n_gpus_per_node == 8
            and config.actor_rollout_ref.model.path == "Qwen/Qwen2.5-Math-1.5B"
        )
    print(f"  {len(recipes)} recipes: {', '.join(sorted(recipes))}")


# ------------------------------------------------------------------------------------------------------
# CISPO and SAPO (algos/cispo.py, algos/sapo.py) against verl's own `cispo` and `sapo` losses
# ------------------------------------------------------------------------------------------------------


@check
def cispo_loss_matches_verl():
    """verl's `cispo` (get_policy_loss_fn, called as its ppo_loss calls it) against cispo.py's cispo_loss +
    aggregate_loss in the four aggregations both honour, whole batch and as two micro-batches with the global
    sizes: losses, gradients and the clipped share. verl bounds the weight by its PPO clip flags,
    [1 − clip_ratio_low, 1 + clip_ratio_high]: (0.2, 0.2) is --is-clip-low 0.2 --is-clip-high 0.2, its example's
    clip_ratio_low=10 is cispo.py's default of no lower bound, (0.2, 4) a cap of 5. Log-ratios 0.5·N(0, 1)
    clamped to ±1 (inside verl's ±20 clamp), so every bound binds somewhere."""
    import algos.cispo as cispo

    modes = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
    for seed in SEEDS:
        old, new, advantages, mask = logprob_batch(seed)
        B, T = mask.shape
        tokens = int(mask.sum())
        for (low, high), ours_low in (((0.2, 0.2), 0.2), ((10.0, 0.2), None), ((0.2, 4.0), 0.2)):
            for mode in modes:
                config = actor_config(low, high, loss_scale_factor=T)
                a, b = new.clone().requires_grad_(), new.clone().requires_grad_()
                theirs, metrics = call_as_ppo_loss(
                    "cispo", old, a, advantages[:, None] * mask, mask, mode, config
                )
                per_token, capped = cispo.cispo_loss(b, old, advantages, ours_low, high)
                ours = cispo.aggregate_loss(per_token, mask, mode, B, tokens, T)
                what = f"{mode} clip {low}/{high} seed {seed}"
                close(theirs, ours, f"loss {what}")
                theirs.backward(), ours.backward()
                close(a.grad, b.grad, f"gradient {what}")
                close(
                    metrics["actor/pg_clipfrac"], (capped * mask).sum() / mask.sum(), f"clipped share {what}"
                )
                halves = (slice(0, 5), slice(5, B))
                theirs = sum(
                    call_as_ppo_loss("cispo", old[h], new[h], (advantages[:, None] * mask)[h], mask[h], mode,
                                     actor_config(low, high, loss_scale_factor=T), tokens=tokens, sequences=B)[0]
                    for h in halves
                )  # fmt: skip
                close(theirs, ours, f"two micro-batches {what}")
            if high == 0.2:  # the cap binds (and with ε_low 0.2 the floor): a test of the bounds, not of 1
                assert (capped * mask).sum() > 0, f"nothing clipped, seed {seed}"


@check
def sapo_loss_matches_verl():
    """verl's `sapo` against sapo.py's soft_gated_surrogate + aggregate_loss("seq-mean-token-mean"): losses,
    gradients, as two micro-batches with the global sizes, τ (1.0, 1.05) (both defaults) and (0.5, 2.0),
    log-ratios 0.5·N(0, 1) clamped to ±1 and 4·N(0, 1) (verl and sapo.py clamp at ±20), advantages of both signs and zeros.
    Difference on purpose: verl aggregates by seq-mean-token-mean whatever loss_agg_mode it is given; sapo.py's
    --loss-agg stays a flag (its default is that), so verl's `sapo` given token-mean still equals ours at
    seq-mean-token-mean and differs from ours at token-mean."""
    import algos.sapo as sapo

    for seed in SEEDS:
        for spread in (0.5, 4.0):
            old, new, advantages, mask = logprob_batch(seed, spread=spread)
            advantages[::4] = 0.0
            B, T = mask.shape
            tokens = int(mask.sum())
            for tau_pos, tau_neg in ((1.0, 1.05), (0.5, 2.0)):
                for mode in ("seq-mean-token-mean", "token-mean"):
                    config = actor_config(0.2, 0.2, tau_pos=tau_pos, tau_neg=tau_neg)
                    a, b = new.clone().requires_grad_(), new.clone().requires_grad_()
                    theirs, _ = call_as_ppo_loss(
                        "sapo", old, a, advantages[:, None] * mask, mask, mode, config
                    )
                    per_token, _ = sapo.soft_gated_surrogate(b, old, advantages, tau_pos, tau_neg)
                    ours = sapo.aggregate_loss(per_token, mask, "seq-mean-token-mean", B, tokens, T)
                    what = f"τ {tau_pos}/{tau_neg} spread {spread} given {mode} seed {seed}"
                    close(theirs, ours, f"loss {what}")
                    theirs.backward(), ours.backward()
                    close(a.grad, b.grad, f"gradient {what}")
                    if mode == "token-mean":
                        token_mean = sapo.aggregate_loss(per_token, mask, "token-mean", B, tokens, T)
                        assert not torch.allclose(theirs.detach(), token_mean.detach()), what
                halves = (slice(0, 5), slice(5, B))
                theirs = sum(
                    call_as_ppo_loss("sapo", old[h], new[h], (advantages[:, None] * mask)[h], mask[h],
                                     "seq-mean-token-mean", actor_config(0.2, 0.2, tau_pos=tau_pos, tau_neg=tau_neg),
                                     tokens=tokens, sequences=B)[0]
                    for h in halves
                )  # fmt: skip
                close(theirs, ours, f"two micro-batches τ {tau_pos}/{tau_neg} seed {seed}")


# ------------------------------------------------------------------------------------------------------
# Parity (issue 23): dppo.py against verl's dppo_tv / dppo_kl, kimi.py against verl's dro
# ------------------------------------------------------------------------------------------------------


def dppo_config(low: float, high: float, T: int, **fields):
    """An ActorConfig for DPPO: verl reads the divergence bounds from clip_ratio_low/high. clip_ratio_c off
    (1e4, the DPPO recipe's): verl truncates sg(ρ) at it, dppo.py does not truncate."""
    return actor_config(
        low, high, clip_ratio_c=fields.pop("clip_ratio_c", 1e4), loss_scale_factor=T, **fields
    )


@check
def dppo_losses_match_verl():
    """dppo.py's dppo_surrogate + aggregate_loss against verl's dppo_tv and dppo_kl (fetched by name and called
    as verl's ppo_loss calls them), symmetric and asymmetric bounds, every aggregation verl honours, whole
    batch and as two micro-batches with the global sizes: loss, gradient and the masked share (verl's
    pg_clipfrac). Log-ratios 0.5·N(0, 1) clamped to ±1 on probabilities e^-3..1 (log-probs clamped at 0), so
    both masked and kept tokens occur. --divergence ratio has the gradient of verl's vanilla loss (its loss value differs: −min(ρÂ, ...)
    against −sg(ρ)Â log π). Difference on purpose, stated exactly: verl's default clip_ratio_c (3.0) truncates
    sg(ρ) at 3; at log-ratios 2·N(0, 1) verl's loss is dppo.py's with min(ρ, 3) in place of ρ."""
    from algos.dppo import aggregate_loss, dppo_surrogate

    modes = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
    cases = [("tv", "dppo_tv", 0.15, 0.15), ("tv", "dppo_tv", 0.1, 0.2)]
    cases += [("kl", "dppo_kl", 0.05, 0.05), ("kl", "dppo_kl", 0.02, 0.08), ("ratio", "vanilla", 0.2, 0.28)]
    outcomes = {case: set() for case in cases}
    for seed in SEEDS:
        old, new, advantages, mask = logprob_batch(seed)
        new = new.clamp(max=0.0)  # log-probs, so that 1 − π_θ in the binary KL is never negative
        B, T = mask.shape
        tokens = int(mask.sum())
        for case in cases:
            divergence, name, low, high = case
            for mode in modes:
                config = dppo_config(low, high, T)
                a, b = new.clone().requires_grad_(), new.clone().requires_grad_()
                theirs, metrics = call_as_ppo_loss(
                    name, old, a, advantages[:, None] * mask, mask, mode, config
                )
                per_token, masked = dppo_surrogate(b, old, advantages, divergence, low, high)
                ours = aggregate_loss(per_token, mask, mode, B, tokens, T)
                what = f"{name} {low}/{high} {mode} seed {seed}"
                if divergence != "ratio":
                    close(theirs, ours, f"loss {what}")
                theirs.backward(), ours.backward()
                close(a.grad, b.grad, f"gradient {what}")
                close(metrics["actor/pg_clipfrac"], (masked * mask).sum() / tokens, f"masked share {what}")
                outcomes[case] |= {bool(x) for x in masked[mask > 0]}
                if divergence == "ratio":
                    continue
                halves = [slice(0, 5), slice(5, B)]
                theirs = sum(
                    call_as_ppo_loss(name, old[h], new[h], (advantages[:, None] * mask)[h], mask[h], mode,
                                     dppo_config(low, high, T), tokens=tokens, sequences=B)[0]
                    for h in halves
                )  # fmt: skip
                ours = sum(
                    aggregate_loss(dppo_surrogate(new[h], old[h], advantages[h], divergence, low, high)[0],
                                   mask[h], mode, B, tokens, T)
                    for h in halves
                )  # fmt: skip
                close(theirs, ours, f"two micro-batches {what}")
    assert all(seen == {True, False} for seen in outcomes.values()), outcomes
    differed = set()
    for seed in SEEDS:  # the truncation verl applies by default, exactly
        old, new, advantages, mask = logprob_batch(seed, spread=2.0)
        new = new.clamp(max=0.0)
        ratio = torch.exp(new - old)
        assert (ratio * mask > 3).any()
        tokens, T = int(mask.sum()), mask.shape[1]
        for divergence, name in (("tv", "dppo_tv"), ("kl", "dppo_kl")):
            config = dppo_config(0.15, 0.15, T, clip_ratio_c=actor_config(0.2, 0.2).clip_ratio_c)
            assert config.clip_ratio_c == 3.0
            theirs, _ = call_as_ppo_loss(
                name, old, new, advantages[:, None] * mask, mask, "token-mean", config
            )
            per_token, masked = dppo_surrogate(new, old, advantages, divergence, 0.15, 0.15)
            truncated = -advantages[:, None] * ratio.clamp(max=3.0) * new * (~masked)
            close(theirs, (truncated * mask).sum() / tokens, f"{name} truncated at 3, seed {seed}")
            if (
                (ratio > 3) & ~masked & (mask > 0) & (new < -0.01)
            ).any():  # a kept token above 3: they differ
                assert not torch.allclose(theirs, (per_token * mask).sum() / tokens)
                differed.add(name)
    assert differed == {"dppo_tv", "dppo_kl"}, differed


@check
def kimi_loss_matches_verl_dro():
    """kimi.py's kimi_loss + aggregate_loss against verl's dro (policy_loss.dro_beta = τ), fetched by name and
    called as verl's ppo_loss calls it, every aggregation verl honours, whole batch and as two micro-batches
    with the global sizes: loss and gradient. At log-ratios up to ±1 the penalty is a visible part of both."""
    from verl.workers.config.actor import PolicyLossConfig

    from algos.kimi import aggregate_loss, kimi_loss

    modes = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
    for seed in SEEDS:
        old, new, advantages, mask = logprob_batch(seed)
        B, T = mask.shape
        tokens = int(mask.sum())
        for tau in (0.1, 1.0):
            for mode in modes:
                policy_loss = PolicyLossConfig(loss_mode="dro", dro_beta=tau)
                config = actor_config(0.2, 0.2, loss_scale_factor=T, policy_loss=policy_loss)
                a, b = new.clone().requires_grad_(), new.clone().requires_grad_()
                theirs, _ = call_as_ppo_loss("dro", old, a, advantages[:, None] * mask, mask, mode, config)
                per_token, log_ratio_sq = kimi_loss(b, old, advantages, tau)
                ours = aggregate_loss(per_token, mask, mode, B, tokens, T)
                what = f"τ {tau} {mode} seed {seed}"
                close(theirs, ours, f"loss {what}")
                theirs.backward(), ours.backward()
                close(a.grad, b.grad, f"gradient {what}")
                penalty = aggregate_loss(tau / 2 * log_ratio_sq, mask, mode, B, tokens, T)
                assert penalty > 0.01 * abs(ours), what
                halves = [slice(0, 5), slice(5, B)]
                theirs = sum(
                    call_as_ppo_loss("dro", old[h], new[h], (advantages[:, None] * mask)[h], mask[h], mode, config,
                                     tokens=tokens, sequences=B)[0]
                    for h in halves
                )  # fmt: skip
                ours = sum(
                    aggregate_loss(kimi_loss(new[h], old[h], advantages[h], tau)[0], mask[h], mode, B, tokens, T)
                    for h in halves
                )  # fmt: skip
                close(theirs, ours, f"two micro-batches {what}")


# ------------------------------------------------------------------------------------------------------
# On-policy distillation (algos/opd.py) against verl's own distillation loss (k1 through its PPO loss)
# ------------------------------------------------------------------------------------------------------


def distillation_data(old, teacher, mask, prompt_length: int = 3, tokens=None, sequences=None):
    """verl's micro-batch TensorDict for ``distillation_loss``: prompts, responses, attention and response masks,
    π_old [B, T] padded, and the teacher's log-probs in verl's packed layout (every row's prompt and response
    tokens back to back, the response's values shifted left by one, as ``no_padding_2_padding`` reads them).
    ``tokens``/``sequences``: the global batch's counts (default: this micro-batch's)."""
    from tensordict import TensorDict

    B, T = mask.shape
    data = TensorDict(
        {
            "prompts": torch.ones(B, prompt_length, dtype=torch.long),
            "responses": torch.ones(B, T, dtype=torch.long),
            "attention_mask": torch.cat([torch.ones(B, prompt_length), mask], 1).long(),
            "response_mask": mask.bool(),
            "old_log_probs": old,
            "teacher_logprobs": packed(teacher, mask, prompt_length),
        },
        batch_size=[],
    )
    data["dp_size"] = 1
    data["batch_num_tokens"] = int(mask.sum()) if tokens is None else tokens
    data["global_batch_size"] = B if sequences is None else sequences
    return data


def packed(values, mask, prompt_length: int) -> torch.Tensor:
    """[B, T] response values -> verl's packed [Σ (P + L_b)] model-output layout (differentiable)."""
    rows = []
    for b in range(len(mask)):
        length = int(mask[b].sum())
        rows += [values.new_zeros(prompt_length - 1), values[b, :length], values.new_zeros(1)]
    return torch.cat(rows)


@check
def opd_loss_matches_verl_distillation():
    """verl's ``distillation_loss`` (``loss_mode=k1``, ``use_policy_gradient=True``, ``use_task_rewards=False``:
    the advantage −(log π_θ − log π_T), detached, through its vanilla PPO loss at clip 0.2/0.2 and 0.2/0.28)
    against opd.py's distillation_surrogate + aggregate_loss: losses, gradients and the clipped share in the
    four aggregations, and as two micro-batches with the global sizes. π_θ ≠ π_old (log-ratios 0.5·N(0, 1)
    clamped to ±1, below dual-clip's c = 3) and teacher log-probs 0.7·N(0, 1) from π_old. ``loss_max_clamp`` None
    (verl's trainer config; opd.py has no clamp) and 10 (its config class's default), which binds only where
    |log π_θ − log π_T| ≥ 10, never here."""
    from verl.trainer.distillation.losses import distillation_loss
    from verl.workers.config import DistillationConfig, DistillationLossConfig

    import algos.opd as opd

    modes = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
    for seed in SEEDS:
        old, new, _, mask = logprob_batch(seed)
        teacher = old + 0.7 * torch.randn(old.shape, generator=torch.Generator().manual_seed(300 + seed))
        B, T = mask.shape
        tokens = int(mask.sum())
        for low, high in ((0.2, 0.2), (0.2, 0.28)):
            for clamp in (None, 10.0):
                loss_config = DistillationLossConfig(
                    loss_mode="k1", use_policy_gradient=True, use_task_rewards=False, loss_max_clamp=clamp,
                    clip_ratio=low, clip_ratio_low=low, clip_ratio_high=high,
                )  # fmt: skip
                distillation = DistillationConfig(enabled=False, distillation_loss=loss_config)
                for mode in modes:
                    config = actor_config(low, high, loss_scale_factor=T, loss_agg_mode=mode)
                    a, b = new.clone().requires_grad_(), new.clone().requires_grad_()
                    theirs, metrics = distillation_loss(
                        config,
                        distillation,
                        {"log_probs": packed(a, mask, 3)},
                        distillation_data(old, teacher, mask),
                    )
                    per_token, clipped = opd.distillation_surrogate(b, old, teacher, low, high)
                    ours = opd.aggregate_loss(per_token, mask, mode, B, tokens, T)
                    what = f"{mode} clip {low}/{high} clamp {clamp} seed {seed}"
                    close(theirs, ours, f"loss {what}")
                    theirs.backward(), ours.backward()
                    close(a.grad, b.grad, f"gradient {what}")
                    share = (clipped * mask).sum() / mask.sum()
                    close(metrics["distillation/pg_clipfrac"], share, f"clipped share {what}")
                    halves = (slice(0, 5), slice(5, B))
                    theirs = sum(
                        distillation_loss(
                            actor_config(low, high, loss_scale_factor=T, loss_agg_mode=mode), distillation,
                            {"log_probs": packed(new[h], mask[h], 3)},
                            distillation_data(old[h], teacher[h], mask[h], tokens=tokens, sequences=B),
                        )[0]
                        for h in halves
                    )  # fmt: skip
                    close(theirs, ours, f"two micro-batches {what}")
            assert share > 0, f"nothing clipped, seed {seed}: a test of the clip, not of ρ = 1"


# ------------------------------------------------------------------------------------------------------
# MaxRL (algos/maxrl.py): verl has no such estimator; the plug-in's rlvr_maxrl against the file's function
# ------------------------------------------------------------------------------------------------------


@check
def maxrl_estimator_matches_maxrl_advantages():
    """rlvr_maxrl through verl's compute_advantage (as the trainer calls it, rows shuffled so groups are not
    contiguous) against maxrl.py's maxrl_advantages: binary rewards (one all-right and one all-wrong group) and
    non-negative graded rewards with an all-zero group, G 4 and 8. Its advantages are returned as the returns
    too, 0 on padding. Identity with verl's own maths: times each group's mean μ they are verl's ``grpo`` with
    ``norm_adv_by_std_in_grpo=False`` (r − μ), also where μ = 0 (both 0)."""
    from omegaconf import OmegaConf
    from verl import DataProto
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage
    from verl.trainer.ppo.ray_trainer import compute_advantage

    from algos.maxrl import maxrl_advantages

    for seed in SEEDS:
        for G in (4, 8):
            for binary in (True, False):
                rewards, token_rewards, mask, uids = outcome_batch(seed, G=G)
                if not binary:  # graded rewards in [0, 1), the all-wrong group stays at 0
                    rewards = torch.rand(rewards.shape, generator=torch.Generator().manual_seed(seed))
                    rewards[1] = 0.0
                    last = mask.sum(-1).long() - 1
                    token_rewards = torch.zeros_like(mask)
                    token_rewards[torch.arange(len(mask)), last] = rewards.flatten()
                expected = maxrl_advantages(rewards).flatten()[:, None] * mask  # [B, T]
                order = torch.randperm(len(uids), generator=torch.Generator().manual_seed(10 + seed))
                data = DataProto.from_dict(
                    tensors={"token_level_rewards": token_rewards[order], "response_mask": mask[order]},
                    non_tensors={"uid": uids[order.numpy()]},
                )
                config = OmegaConf.create({"adv_estimator": "rlvr_maxrl", "gamma": 1.0, "lam": 1.0})
                out = compute_advantage(data, "rlvr_maxrl", gamma=1.0, lam=1.0, num_repeat=G, config=config)
                what = f"seed {seed} G {G} binary {binary}"
                close(out.batch["advantages"], expected[order], f"advantages {what}")
                close(out.batch["returns"], expected[order], f"returns {what}")
                centred, _ = compute_grpo_outcome_advantage(
                    token_rewards.clone(), mask, uids, norm_adv_by_std_in_grpo=False
                )
                means = rewards.mean(1).repeat_interleave(G)[:, None]  # [B, 1] each row's group μ
                close(expected * means, centred, f"× μ = verl's grpo {what}")
                assert (expected[G : 2 * G] == 0).all() and expected.abs().sum() > 0, what
                if binary:  # the all-right group: μ = 1, every advantage 0
                    assert (expected[:G] == 0).all(), what


@check
def rec_matches_trinity_rft():
    """Trinity-RFT's own REC, the method's official code (trinity-rft 0.6.0, installed without its dependencies
    into this environment: requirements-trinity.txt), against rec.py:
    - the loss: ``RECPolicyLossFn`` (``rec_policy_loss.py``) with clip_mode none / one-side / two-side and weight
      none / importance_sampling, ε 0.2/0.2 and 0.1/0.3, against rec_loss + aggregate_loss("token-mean") (its
      masked_mean): losses, gradients and the dropped share (``pg_clipfrac``). Trinity calls the ratio's
      denominator old_logprob; in REC it is the sampler's log-probs, as rec.py's behavior_logprobs;
    - the advantages: ``RECGroupedAdvantage.calculate_group_advantage`` with std_normalize False against rec.py's
      ``--scale-rewards none`` (r − mean(r)). Difference on purpose: Trinity's std_normalize True divides by the
      population std (``std(unbiased=False)``), rec.py's ``--scale-rewards group`` by grpo.py's sample std; the
      check states that factor exactly, sqrt(G / (G − 1)) on every group with both outcomes."""
    from trinity.algorithm.advantage_fn.rec_advantage import RECGroupedAdvantage
    from trinity.algorithm.policy_loss_fn.rec_policy_loss import RECPolicyLossFn
    from trinity.common.experience import Experience

    import algos.rec as rec

    for seed in SEEDS:
        old, new, advantages, mask = logprob_batch(seed)
        B, T = mask.shape
        tokens = int(mask.sum())
        for low, high in ((0.2, 0.2), (0.1, 0.3)):
            for mode in ("none", "one-side", "two-side"):
                for weight in (False, True):
                    loss_fn = RECPolicyLossFn(
                        epsilon_low=low, epsilon_high=high, clip_mode=mode,
                        weight="importance_sampling" if weight else "none",
                    )  # fmt: skip
                    a, b = new.clone().requires_grad_(), new.clone().requires_grad_()
                    theirs, metrics = loss_fn(a, old, mask, advantages[:, None] * mask)
                    per_token, dropped = rec.rec_loss(b, old, advantages, low, high, mode, weight)
                    ours = rec.aggregate_loss(per_token, mask, "token-mean", B, tokens, T)
                    what = f"{mode} weight {weight} eps {low}/{high} seed {seed}"
                    close(theirs, ours, f"loss {what}")
                    theirs.backward(), ours.backward()
                    close(a.grad, b.grad, f"gradient {what}")
                    close(
                        metrics["pg_clipfrac"], (dropped * mask).sum() / mask.sum(), f"dropped share {what}"
                    )
                    if mode != "none" and low == 0.2:
                        assert (dropped * mask).sum() > 0, f"nothing dropped: {what}"

        rewards, _, _, _ = outcome_batch(seed)
        Q, G = rewards.shape
        for std_normalize in (False, True):
            theirs = torch.stack([
                torch.stack([
                    exp.advantages[0]
                    for exp in RECGroupedAdvantage(std_normalize=std_normalize).calculate_group_advantage(
                        f"q{q}", [Experience(tokens=torch.tensor([1, 2, 3]), prompt_length=1, reward=float(r)) for r in rewards[q]]
                    )[0]
                ])
                for q in range(Q)
            ])  # fmt: skip
            if not std_normalize:
                close(theirs, rec.grpo_advantages(rewards, "none"), f"advantages r - mean seed {seed}")
                continue
            ours = rec.grpo_advantages(rewards, "group")
            mixed = rewards.std(dim=1) > 0  # the groups with both outcomes (others: 0 in both)
            close(
                theirs[mixed], ours[mixed] * math.sqrt(G / (G - 1)), f"population std, seed {seed}", rtol=1e-4
            )
            close(theirs[~mixed], ours[~mixed], f"constant groups, seed {seed}")


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

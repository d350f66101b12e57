"""The single-file methods as verl plug-ins: advantage estimators and policy losses, selected by name.

Importing this package registers, into verl's own registries (``verl.trainer.ppo.core_algos``), an
advantage estimator and/or a policy loss per method, each a thin adapter around the pure function of
``algos/X.py`` (no formula is written twice: the adapters only reshape verl's batch into the function's
arguments and back). A stock verl launch then selects them by name:

    VERL_USE_EXTERNAL_MODULES=integrations.verl PYTHONPATH=$PWD python -m verl.trainer.main_ppo \\
        algorithm.adv_estimator=rlvr_w_reinforce actor_rollout_ref.actor.policy_loss.loss_mode=rlvr_clip ...

(verl imports every module named in ``VERL_USE_EXTERNAL_MODULES`` when it is itself imported, in the
driver and in every Ray worker; docs/verl.md has the launch recipes.)

    advantage estimators (algorithm.adv_estimator)      from
      rlvr_grpo          group z-score (std off with algorithm.norm_adv_by_std_in_grpo=False)  algos/grpo.py
      rlvr_dr_grpo       group mean baseline, no std                                algos/grpo.py
      rlvr_psr, rlvr_nsr, rlvr_w_reinforce, rlvr_reinforce   ±1 / λ, no baseline    algos/nsr.py
      rlvr_bnpo          (R − p̂)/f(p̂; α, β), (α, β) fitted to the batch             algos/bnpo.py
      rlvr_topr          R − c with R = ±1 (for the rlvr_topr loss)                 algos/topr.py
      rlvr_nft           ±r̂, the group's correct rate signed by the row's answer    algos/nft.py
      rlvr_rloo          r_i − mean of the group's other rewards (leave-one-out)    algos/rloo.py
      rlvr_maxrl         (r − μ)/μ per group, 0 where μ = 0 (MaxRL)                 algos/maxrl.py
      rlvr_reinforce_pp  returns of verl's token_level_rewards (KL folded in by
                         algorithm.use_kl_in_reward), whitened over the batch        algos/reinforce_pp.py
      rlvr_reinforce_pp_baseline   r − group mean on every token, whitened over the batch   algos/reinforce_pp.py
    policy losses (actor_rollout_ref.actor.policy_loss.loss_mode)
      rlvr_clip          PPO clip (clip_ratio_low / clip_ratio_high) + aggregation  algos/grpo.py
      rlvr_dapo          the same with DAPO's file (clip-higher, token-mean)        algos/dapo.py
      rlvr_ppo           PPO clip with per-token advantages (with verl's gae)       algos/ppo.py
      rlvr_bnpo          PPO clip + BNPO's aggregation (seq-mean-token-sum default) algos/bnpo.py
      rlvr_topr          tapered REINFORCE −sg(α)(R − c) log π                      algos/topr.py
      rlvr_nft           NFT's likelihood loss (pairs with the rlvr_nft estimator)  algos/nft.py
      rlvr_reinforce_pp  PPO clip with one advantage per token (REINFORCE++'s)      algos/reinforce_pp.py

Method parameters without a verl key go under ``algorithm.rlvr`` (added with hydra's ``+``):
``+algorithm.rlvr.positive_weight=0.1`` (W-REINFORCE's λ), ``+algorithm.rlvr.max_weight=1e6`` (BNPO),
``+algorithm.rlvr.baseline=0.0`` (TOPR's c), ``+algorithm.rlvr.correct_rate_clamp=0.02`` (NFT); their defaults
are the files' own ``Args`` defaults (the losses' parameters too: verl's actor config has no key for them).

Tested with verl 0.9.1 only (``TESTED_VERL_VERSIONS``); on another version the import fails with one
line saying so (set ``RLVR_VERL_ANY_VERSION=1`` to try anyway). ``algos/*.py`` never import verl.

Where verl's built-in version of the same maths differs from ours (integrations/verl/checks.py checks each
difference exactly):
- vanilla policy loss: verl clamps the log-ratio to [−20, 20] and applies dual-clip PPO (the loss of a
  negative-advantage token is capped at −A·clip_ratio_c, c = 3); ``rlvr_clip`` does neither, as
  ``algos/grpo.py``. Equal whenever every ratio is below c and |log-ratio| < 20.
- seq-mean-token-mean: verl divides a sequence's token sum by (length + 1e-8), ours by max(length, 1).
- REINFORCE++ returns: on a response mask with a hole (multi-turn observation tokens) verl carries the
  return through the hole; reinforce_pp.py's ``token_returns`` assumes each mask is a prefix of its row,
  so ``rlvr_reinforce_pp`` refuses a mask with a hole in one line. On prefix masks they are equal.
"""

import importlib
import os

import numpy as np
import torch
import verl
from verl.trainer.ppo.core_algos import register_adv_est, register_policy_loss

TESTED_VERL_VERSIONS = ("0.9.1",)


def check_verl_version(found: str) -> None:
    """Fail with one line unless ``found`` is a verl version this integration was tested with.

    >>> check_verl_version("0.9.1")
    """
    if found in TESTED_VERL_VERSIONS or os.environ.get("RLVR_VERL_ANY_VERSION") == "1":
        return
    raise ImportError(
        f"integrations.verl was tested with verl {', '.join(TESTED_VERL_VERSIONS)}, found verl {found}: "
        "install verl==0.9.1 (requirements-verl.txt), or set RLVR_VERL_ANY_VERSION=1 to try this one"
    )


check_verl_version(verl.__version__)

grpo = importlib.import_module("algos.grpo")
dapo = importlib.import_module("algos.dapo")
nsr = importlib.import_module("algos.nsr")
bnpo = importlib.import_module("algos.bnpo")
topr = importlib.import_module("algos.topr")
ppo = importlib.import_module("algos.ppo")
nft = importlib.import_module("algos.nft")
rloo = importlib.import_module("algos.rloo")
reinforce_pp = importlib.import_module("algos.reinforce_pp")
maxrl = importlib.import_module("algos.maxrl")


# ------------------------------------------------------------------------------------------------------
# From verl's batch to the files' shapes and back
# ------------------------------------------------------------------------------------------------------


def rlvr_param(config, name: str, default):
    """``algorithm.rlvr.<name>`` from verl's algorithm config (a DictConfig or dict), else ``default``."""
    section = config.get("rlvr", None) if config is not None else None
    return default if section is None else section.get(name, default)


def group_rows(index) -> torch.Tensor:
    """Rows of each prompt's group: verl's per-row ``uid``s ``[B]`` -> row numbers ``[Q, G]`` (groups in
    order of first appearance, rows in batch order). Every group must have the same size G.

    >>> group_rows(np.array(["a", "b", "a", "b"], dtype=object))
    tensor([[0, 2],
            [1, 3]])
    """
    _, first, inverse = np.unique(
        np.asarray(index, dtype=object).astype(str), return_index=True, return_inverse=True
    )
    inverse = np.argsort(np.argsort(first))[inverse]  # group ids in order of first appearance
    sizes = np.bincount(inverse)
    if len(set(sizes.tolist())) != 1:
        raise ValueError(
            f"rlvr estimators need groups of equal size (rollout.n), got sizes {sorted(set(sizes.tolist()))}"
        )
    return torch.as_tensor(np.argsort(inverse, kind="stable")).view(len(sizes), int(sizes[0]))


def outcome_estimator(advantage_fn):
    """A verl advantage estimator from ``advantage_fn(rewards [Q, G], config) -> advantages [Q, G]``: the
    sequence reward is the sum of ``token_level_rewards``, the advantage is broadcast over the response
    tokens (and returned as the returns too, as verl's outcome estimators do)."""

    def estimator(token_level_rewards, response_mask, index, config=None, **kwargs):
        scores = token_level_rewards.sum(dim=-1)  # [B]
        rows = group_rows(index)  # [Q, G]
        with torch.no_grad():
            grouped = advantage_fn(scores[rows], config)  # [Q, G]
        advantages = torch.empty_like(scores)
        advantages[rows.flatten()] = grouped.flatten().to(scores.dtype)
        advantages = advantages[:, None] * response_mask  # [B, T]
        return advantages, advantages

    estimator.__doc__ = f"verl advantage estimator around {advantage_fn.__doc__}"
    return estimator


def sequence_values(advantages: torch.Tensor, response_mask: torch.Tensor, loss_name: str) -> torch.Tensor:
    """One advantage per completion ``[B]`` from verl's per-token ``advantages [B, T]``; the files' losses
    take one per completion, so a token-varying advantage (GAE) is refused in one line."""
    mask = response_mask.to(advantages.dtype)
    per_sequence = (advantages * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # [B]
    spread = ((advantages - per_sequence[:, None]).abs() * mask).max() if mask.numel() else 0.0
    if spread > 1e-6 * (1 + per_sequence.abs().max()):
        raise ValueError(f"loss_mode={loss_name} takes one advantage per completion; these vary over tokens")
    return per_sequence


def batch_sizes(response_mask: torch.Tensor, config) -> tuple[int, int, int, int]:
    """(dp_size, sequences, tokens, L_max) for the aggregation: verl's global batch info when its
    trainer sets it (``config.global_batch_info``), else this micro-batch's own (as verl's ``agg_loss``:
    sequences with at least one token, the mask's width as L_max)."""
    info = dict(config.get("global_batch_info", None) or {}) if config is not None else {}
    scale = info.get("loss_scale_factor") or (
        config.get("loss_scale_factor", None) if config is not None else None
    )
    dp_size = int(info.get("dp_size") or 1)
    sequences = info.get("global_batch_size")
    tokens = info.get("batch_num_tokens")
    sequences = int((response_mask.sum(-1) > 0).sum()) if sequences is None else int(sequences)
    tokens = int(response_mask.sum()) if tokens is None else int(tokens)
    return dp_size, sequences, tokens, int(scale or response_mask.shape[-1])


def require_prefix_mask(response_mask: torch.Tensor, name: str) -> None:
    """Refuse, in one line, a response mask that is not a prefix of each row (a hole: multi-turn
    observation tokens), for the files whose per-token maths assumes prefixes.

    >>> require_prefix_mask(torch.tensor([[1, 1, 0], [1, 0, 0]]), "x")
    >>> require_prefix_mask(torch.tensor([[1, 0, 1]]), "x")
    Traceback (most recent call last):
    ...
    ValueError: x needs each row's response mask to be a prefix (no holes: multi-turn observation tokens are not supported)
    """
    mask = response_mask.bool()
    if (mask[:, 1:] & ~mask[:, :-1]).any():
        raise ValueError(
            f"{name} needs each row's response mask to be a prefix (no holes: multi-turn observation tokens "
            "are not supported)"
        )


def clip_loss_from(
    module,
    loss_name: str,
    modes=("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"),
    surrogate=None,
    aggregate=None,
    per_token: bool = False,
):
    """A verl policy loss from ``module.clipped_surrogate`` (ppo.py: ``ppo_policy_loss``) and
    ``module.aggregate_loss`` (grpo.py's pair, copied byte for byte into every file that uses it), or the
    file's own ``surrogate`` / ``aggregate`` where it changes them under another name (bnpo.py).
    ``per_token``: the file gives one advantage per token and calls its surrogate with each token as a
    row of length 1 (reinforce_pp.py)."""
    surrogate = surrogate or getattr(module, "clipped_surrogate", None)
    aggregate = aggregate or module.aggregate_loss

    def policy_loss(
        old_log_prob,
        log_prob,
        advantages,
        response_mask,
        loss_agg_mode="token-mean",
        config=None,
        rollout_is_weights=None,
    ):
        if loss_agg_mode not in modes:
            raise ValueError(
                f"loss_mode={loss_name} aggregates with loss_agg_mode in {modes}, got {loss_agg_mode!r}"
            )
        clip_low = config.clip_ratio_low if config.clip_ratio_low is not None else config.clip_ratio
        clip_high = config.clip_ratio_high if config.clip_ratio_high is not None else config.clip_ratio
        mask = response_mask.to(log_prob.dtype)  # [B, T]
        if module is ppo:  # ppo.py's loss takes one advantage per token (GAE)
            per_token_loss, clipped = ppo.ppo_policy_loss(
                log_prob, old_log_prob, advantages, clip_low, clip_high
            )
        elif per_token:  # as reinforce_pp.py: each token a row of length 1 with its own advantage
            per_token_loss, clipped = surrogate(
                log_prob.reshape(-1, 1),
                old_log_prob.reshape(-1, 1),
                advantages.reshape(-1),
                clip_low,
                clip_high,
            )
            per_token_loss, clipped = per_token_loss.view_as(log_prob), clipped.view_as(log_prob)
        else:  # the group methods' loss takes one per completion
            advantages = sequence_values(advantages, mask, loss_name)  # [B]
            per_token_loss, clipped = surrogate(log_prob, old_log_prob, advantages, clip_low, clip_high)
        if rollout_is_weights is not None:
            per_token_loss = per_token_loss * rollout_is_weights
        dp_size, sequences, tokens, max_len = batch_sizes(mask, config)
        loss = aggregate(per_token_loss, mask, loss_agg_mode, sequences, tokens, max_len) * dp_size
        tokens_here = mask.sum().clamp(min=1)
        metrics = {
            "actor/pg_clipfrac": ((clipped * mask).sum() / tokens_here).item(),
            "actor/ppo_kl": (((old_log_prob - log_prob).detach() * mask).sum() / tokens_here).item(),
        }
        return loss, metrics

    policy_loss.__doc__ = (
        f"verl policy loss {loss_name}: {module.__name__}.clipped_surrogate + aggregate_loss"
    )
    return policy_loss


# ------------------------------------------------------------------------------------------------------
# The registrations
# ------------------------------------------------------------------------------------------------------


def grpo_estimator(rewards, config):
    """algos/grpo.py grpo_advantages (std scaling unless algorithm.norm_adv_by_std_in_grpo=False)"""
    scale = "group" if (config is None or config.get("norm_adv_by_std_in_grpo", True)) else "none"
    return grpo.grpo_advantages(rewards, scale)


def dr_grpo_estimator(rewards, config):
    """algos/grpo.py grpo_advantages with scale_rewards="none" (Dr. GRPO)"""
    return grpo.grpo_advantages(rewards, "none")


def nsr_estimator(objective: str):
    def advantage_fn(rewards, config):
        positive_weight = float(rlvr_param(config, "positive_weight", nsr.Args.positive_weight))
        return nsr.nsr_advantages(rewards.flatten() > 0, objective, positive_weight)[0].view_as(rewards)

    advantage_fn.__doc__ = f"algos/nsr.py nsr_advantages(objective={objective!r}); correct = reward > 0"
    return advantage_fn


def bnpo_estimator(rewards, config):
    """algos/bnpo.py decomposed_advantages on the accuracy reward alone ((α, β) fitted to this batch)"""
    max_weight = float(rlvr_param(config, "max_weight", bnpo.Args.max_weight))
    return bnpo.decomposed_advantages(rewards[None], max_weight)[0]


def topr_estimator(rewards, config):
    """algos/topr.py's rewards: R = ±1 (correct = reward > 0), minus the baseline c"""
    baseline = float(rlvr_param(config, "baseline", topr.Args.reward_baseline))
    return torch.where(rewards > 0, 1.0, -1.0) - baseline


def topr_policy_loss(
    old_log_prob,
    log_prob,
    advantages,
    response_mask,
    loss_agg_mode="seq-mean-token-sum",
    config=None,
    rollout_is_weights=None,
):
    """verl policy loss rlvr_topr: algos/topr.py topr_weights (sequence-level π/μ, μ = verl's old_log_prob)
    and topr_token_loss, aggregated by topr.aggregate_loss; takes rlvr_topr's advantages R − c."""
    modes = ("seq-mean-token-sum", "token-mean")
    if loss_agg_mode not in modes:
        raise ValueError(
            f"loss_mode=rlvr_topr aggregates with loss_agg_mode in {modes}, got {loss_agg_mode!r}"
        )
    mask = response_mask.to(log_prob.dtype)  # [B, T]
    shifted_rewards = sequence_values(
        advantages, mask, "rlvr_topr"
    )  # [B] R − c (its sign is R's for |c| < 1)
    weights = topr.topr_weights(
        topr.ratio_logprobs(log_prob, mask, "seq"),
        topr.ratio_logprobs(old_log_prob, mask, "seq"),
        shifted_rewards,
    )  # [B]
    per_token_loss = topr.topr_token_loss(log_prob, weights, shifted_rewards, 0.0)  # [B, T]
    if rollout_is_weights is not None:
        per_token_loss = per_token_loss * rollout_is_weights
    dp_size, sequences, tokens, _ = batch_sizes(mask, config)
    T = mask.shape[1]  # L_max of seq-mean-token-sum-norm (not one of rlvr_topr's modes)
    loss = topr.aggregate_loss(per_token_loss, mask, loss_agg_mode, sequences, tokens, T) * dp_size
    negative = shifted_rewards < 0
    mean_negative_weight = weights[negative].mean().item() if negative.any() else 1.0
    return loss, {"actor/topr_negative_weight": mean_negative_weight}


def nft_estimator(rewards, config):
    """algos/nft.py correct_rates, passed to the rlvr_nft loss as a signed "advantage": +r̂ for a correct
    row, −r̂ for a wrong one (r̂ is clamped into (0, 1), so the sign is never lost), 0 in groups whose
    answers are all right or all wrong (nft.py drops those)"""
    clamp = float(rlvr_param(config, "correct_rate_clamp", nft.Args.correct_rate_clamp))
    correct_rate, keep = nft.correct_rates(rewards, clamp)  # [Q], [Q]
    signed = torch.where(rewards > 0, 1.0, -1.0) * correct_rate[:, None]  # [Q, G]
    return torch.where(keep[:, None], signed, torch.zeros_like(signed))


def nft_policy_loss(
    old_log_prob,
    log_prob,
    advantages,
    response_mask,
    loss_agg_mode="token-mean",
    config=None,
    rollout_is_weights=None,
):
    """verl policy loss rlvr_nft: algos/nft.py nft_loss (its Args defaults for neg_weight, normalize,
    ratio_clamp and negative_floor) and aggregate_loss; takes rlvr_nft's signed correct rates."""
    modes = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
    if loss_agg_mode not in modes:
        raise ValueError(
            f"loss_mode=rlvr_nft aggregates with loss_agg_mode in {modes}, got {loss_agg_mode!r}"
        )
    mask = response_mask.to(log_prob.dtype)  # [B, T]
    signed = sequence_values(advantages, mask, "rlvr_nft")  # [B] ±r̂, 0 for rows of dropped groups
    kept = (signed != 0).to(log_prob.dtype)[:, None]  # [B, 1]
    rate = signed.abs().clamp(min=nft.Args.correct_rate_clamp)  # [B] (dropped rows: any value in (0, 1))
    per_token_loss, floored = nft.nft_loss(
        log_prob,
        old_log_prob,
        (signed > 0).float(),
        rate,
        nft.Args.neg_weight,
        nft.Args.normalize,
        nft.Args.ratio_clamp,
        nft.Args.negative_floor,
    )  # [B, T]
    per_token_loss = per_token_loss * kept
    if rollout_is_weights is not None:
        per_token_loss = per_token_loss * rollout_is_weights
    dp_size, sequences, tokens, max_len = batch_sizes(mask, config)
    loss = nft.aggregate_loss(per_token_loss, mask, loss_agg_mode, sequences, tokens, max_len) * dp_size
    return loss, {"actor/nft_floored": ((floored * mask * kept).sum() / mask.sum().clamp(min=1)).item()}


def rloo_estimator(rewards, config):
    """algos/rloo.py rloo_advantages (each reward minus the mean of the group's other rewards)"""
    return rloo.rloo_advantages(rewards)


def maxrl_estimator(rewards, config):
    """algos/maxrl.py maxrl_advantages ((r − μ)/μ per group, 0 where the group's mean reward μ is 0)"""
    return maxrl.maxrl_advantages(rewards)


def reinforce_pp_estimator(token_level_rewards, response_mask, config=None, **kwargs):
    """verl advantage estimator rlvr_reinforce_pp: algos/reinforce_pp.py reinforce_pp_advantages (returns
    with γ = ``algorithm.gamma``, whitened over every valid token of the batch) and token_returns (the
    returns), on verl's ``token_level_rewards``: the score on the last token, minus β·(log π_old − log
    π_ref) on every token when ``algorithm.use_kl_in_reward=True algorithm.kl_penalty=kl`` (verl's
    ``apply_kl_penalty``, equal to reinforce_pp.py's kl_folded_rewards: tested)."""
    require_prefix_mask(response_mask, "rlvr_reinforce_pp")
    gamma = float(config.get("gamma", 1.0)) if config is not None else 1.0
    mask = response_mask.to(token_level_rewards.dtype)  # [B, T]
    with torch.no_grad():
        advantages = reinforce_pp.reinforce_pp_advantages(token_level_rewards, mask, gamma)  # [B, T]
        returns = reinforce_pp.token_returns(token_level_rewards, mask, gamma)  # [B, T]
    return advantages, returns


def reinforce_pp_baseline_estimator(token_level_rewards, response_mask, index, config=None, **kwargs):
    """verl advantage estimator rlvr_reinforce_pp_baseline: algos/reinforce_pp.py
    reinforce_pp_baseline_advantages (the reward minus its group's mean on every valid token, whitened
    over the batch); the sequence reward is the sum of ``token_level_rewards`` (its KL is a loss term:
    ``actor_rollout_ref.actor.use_kl_loss``)."""
    scores = token_level_rewards.sum(dim=-1)  # [B]
    rows = group_rows(index)  # [Q, G]
    order = rows.flatten()  # group-major row numbers, as reinforce_pp.py lays out its batch
    mask = response_mask.to(scores.dtype)  # [B, T]
    with torch.no_grad():
        grouped = reinforce_pp.reinforce_pp_baseline_advantages(scores[rows], mask[order])  # [B, T]
    advantages = torch.empty_like(grouped)
    advantages[order] = grouped.to(advantages.dtype)
    return advantages, advantages


ADVANTAGE_ESTIMATORS = {
    "rlvr_grpo": outcome_estimator(grpo_estimator),
    "rlvr_dr_grpo": outcome_estimator(dr_grpo_estimator),
    "rlvr_psr": outcome_estimator(nsr_estimator("psr")),
    "rlvr_nsr": outcome_estimator(nsr_estimator("nsr")),
    "rlvr_w_reinforce": outcome_estimator(nsr_estimator("w-reinforce")),
    "rlvr_reinforce": outcome_estimator(nsr_estimator("reinforce")),
    "rlvr_bnpo": outcome_estimator(bnpo_estimator),
    "rlvr_topr": outcome_estimator(topr_estimator),
    "rlvr_nft": outcome_estimator(nft_estimator),
    "rlvr_rloo": outcome_estimator(rloo_estimator),
    "rlvr_maxrl": outcome_estimator(maxrl_estimator),
    "rlvr_reinforce_pp": reinforce_pp_estimator,
    "rlvr_reinforce_pp_baseline": reinforce_pp_baseline_estimator,
}
POLICY_LOSSES = {
    "rlvr_clip": clip_loss_from(grpo, "rlvr_clip"),
    "rlvr_dapo": clip_loss_from(dapo, "rlvr_dapo"),
    "rlvr_ppo": clip_loss_from(ppo, "rlvr_ppo"),
    "rlvr_bnpo": clip_loss_from(
        bnpo,
        "rlvr_bnpo",
        ("seq-mean-token-sum", "token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"),
        surrogate=bnpo.dual_clipped_surrogate,
    ),
    "rlvr_topr": topr_policy_loss,
    "rlvr_nft": nft_policy_loss,
    "rlvr_reinforce_pp": clip_loss_from(reinforce_pp, "rlvr_reinforce_pp", per_token=True),
}

for _name, _estimator in ADVANTAGE_ESTIMATORS.items():
    register_adv_est(_name)(_estimator)
for _name, _loss in POLICY_LOSSES.items():
    register_policy_loss(_name)(_loss)

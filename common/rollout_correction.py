"""The rollout-correction menu: per-token loss weights for a sampler that is not the trainer.

The sampler (vLLM in bfloat16, other kernels, weights that lag behind the trainer's) draws each completion
from π_sampler; the trainer's own log-probs of the same tokens at rollout time are π_old. Where the two
disagree, the policy gradient is off-policy, and runs can collapse. This module turns the two log-probs into
one weight per token that the algorithm file multiplies into its per-token loss, before aggregation:

    w_{i,t} = IS_{i,t} · RS_i      ρ_{i,t} = π_old(y_t) / π_sampler(y_t),   S_i = Σ_t log ρ_{i,t}

IS (``--rollout-is``) re-weights or masks by the ratio, RS (``--rollout-rs``) rejects whole sequences.
Sums and means over a sequence run over its real tokens (``mask`` 1) only.

Decoupled and bypass mode. The files here use **decoupled** mode: π_old is recomputed by the trainer
before the update (three policies: π_sampler, π_old, π_θ). The PPO ratio π_θ / π_old is the trust region,
and the correction weight is a function of π_old / π_sampler (the mismatch alone). In **bypass** mode
π_old := π_sampler and nothing is recomputed (two policies): the PPO ratio π_θ / π_sampler then carries the
mismatch, ρ ≡ 1, and every mode here would be a no-op (verl's ``bypass_mode=True`` computes its weights
from π_θ / π_sampler inside the loss instead).

--rollout-is (C = ``--rollout-is-threshold``, lo = the lower bound; ρ per token, exp S_i per sequence):

    mode       weight on token t of sequence i                verl 0.9.1 (rollout_is, threshold)   TRL 1.16.0 (vllm_importance_sampling_mode)
    none       1                                              rollout_is=null (trainer config)     vllm_importance_sampling_correction=False
    token-tis  min(ρ_t, C)                                    "token", C                           "token_truncate", clip_min None
    seq-tis    min(exp S_i, C)                                "sequence", C                        "sequence_truncate", clip_min None
    token-mis  ρ_t if lo ≤ ρ_t ≤ C, else 0                    "token", "lo_C"                      "token_mask"
    seq-mis    exp S_i if lo ≤ exp S_i ≤ C, else 0            "sequence", "lo_C"                   "sequence_mask"
    icepop     ρ_t if lo ≤ ρ_t ≤ C, else 0 (two-sided)        "token", "lo_C"                      "token_mask" with both bounds

    Defaults there: verl C = 2.0 (its config and every TIS preset; the IcePop preset [0.5, 5.0], the
    Seq-MIS preset seq-tis at 2.0 times a [0.5, 2.0] sequence mask), off in its trainer config (the
    dataclass's own default is "sequence"). TRL: on whenever vLLM samples, "sequence_mask", C_max = 3.0,
    C_min None (one-sided). A mask keeps the ratio itself as the weight, so token-mis with a lower bound is
    IcePop's formula; icepop is the two-sided mode by definition (lo defaults to 1/C, never none), the
    *-mis modes are one-sided unless lo is given, as TRL's are by default. TIS has no lower bound here
    (TRL's *_truncate clamps from below at clip_min when it is set).

--rollout-rs (τ = ``--rollout-rs-threshold``; each rejects whole sequences, weight 0 on all their tokens):

    mode       reject sequence i when                                        verl 0.9.1                           TRL 1.16.0
    opsm       Ā_i < 0 and KL_i = mean_t(log π_sampler − log π_old) > δ      none                                 off_policy_mask_threshold=δ (None: off)
    geo-mean   exp(mean_t log ρ_t) outside [1/τ, τ]                          rollout_rs="seq_mean_k1", τ          none
    k3         mean_t(ρ_t − 1 − log ρ_t) > τ                                 rollout_rs="seq_mean_k3", τ          none

    OPSM is DeepSeek-V3.2's off-policy sequence masking (arXiv 2512.02556, Eq. 9): negative-advantage
    sequences that drifted far from the sampler are the ones that destabilise training, so they are
    dropped. Ā_i is the sequence's advantage; with per-token advantages [B, C], their mean over its real
    tokens (TRL compares each token's own advantage, and then masks tokens, not sequences). Defaults there:
    the paper gives no δ; TRL's docs use 0.5 as an example; Trinity-RFT reports 0.05-0.2 as a reasonable
    range. verl's presets: Geo-RS "0.999_1.001" (τ = 1.001), K3-RS 0.01. verl's rejection options
    token_k1-3, seq_sum_k1-3 and seq_max_k2-3 and its IS batch normalisation are not offered here.

This project's defaults (the flag defaults below): both modes "none", as in verl's trainer config and the
``--tis-cap 0`` these flags replace (the tiny world's HF sampler is the trainer itself). C = 2.0 (verl's);
lo none for *-mis (TRL's) and 1/C = 0.5 for icepop (the lower bound of verl's IcePop preset; its upper bound
is 5, so ``--rollout-is icepop --rollout-is-threshold 5`` is that preset); δ = 0.1 (inside Trinity-RFT's
range), geo-mean τ = 1.001 and k3 τ = 0.01 (verl's presets): ``RS_DEFAULT_THRESHOLDS``.

Conventions:
- A rejected or masked token gets weight 0 but keeps its place in the loss normaliser (the caller's
  aggregation still counts it), so the gradient does not depend on how the batch is split into
  micro-batches: every weight depends on its own row only. TRL does the same. verl also removes an RS
  rejection from the response mask, so it leaves the normaliser too (its IS masks only zero the weight).
- Padding (``mask`` 0) never enters a weight or a statistic: its weight is 1 (the caller's mask removes it)
  and its log-probs are never read, so NaN or ±inf there changes nothing.
- Truncation and masks compare log-ratios with log C and log lo, so no exp overflows; k3 clamps the
  log-ratio to ±20 before exp, as verl does (verl clamps every log-ratio so; the weights differ below e^-20).
- OPSM's KL uses π_old, fixed for the batch; the paper and TRL use the current π_θ (detached), which is
  π_old on the first update of a batch (``--updates-per-batch 1``), so they differ only on later updates.
- The weights are detached: they change the measure, not the objective.

The Args fields every algorithm file declares (tyro turns them into ``--rollout-is`` and so on), and the
call in its ``validate()``:

    rollout_is: Literal["none", "token-tis", "seq-tis", "token-mis", "seq-mis", "icepop"] = "none"
    \"\"\"importance weight from ρ = π_old/π_sampler: token-tis/seq-tis truncate at C, token-mis/seq-mis/icepop mask outside [lo, C] (common/rollout_correction.py)\"\"\"
    rollout_is_threshold: float = 2.0
    \"\"\"C: upper bound of the importance weight (truncated at it by *-tis, masked above it by *-mis and icepop)\"\"\"
    rollout_is_threshold_low: float | None = None
    \"\"\"lo: lower bound of the token-mis/seq-mis/icepop mask (None: none for *-mis, 1/C for icepop)\"\"\"
    rollout_rs: Literal["none", "opsm", "geo-mean", "k3"] = "none"
    \"\"\"reject whole sequences: opsm (negative advantage and KL to the sampler > δ), geo-mean (exp mean log ρ outside [1/τ, τ]), k3 (mean k3 > τ)\"\"\"
    rollout_rs_threshold: float | None = None
    \"\"\"δ of opsm, τ of geo-mean and k3 (None: 0.1, 1.001, 0.01)\"\"\"

    check_args(args)  # in validate(): a bad combination exits with one line naming the flag

Statistics (``rollout_correction``'s dict; token shares over real tokens, sequence shares over sequences
with at least one real token; a sequence counts when any of its tokens does):

    correction/is_truncated_token_frac, correction/is_truncated_seq_frac   weights cut to C (*-tis)
    correction/is_masked_token_frac, correction/is_masked_seq_frac         weights set to 0 (*-mis, icepop)
    correction/rs_rejected_token_frac, correction/rs_rejected_seq_frac     rejected by --rollout-rs
    correction/weight_mean        mean weight over real tokens (IS and RS together)
    correction/logprob_gap        mean |log π_old − log π_sampler| over real tokens   (when old_logprobs is given)
    correction/sampler_kl         mean (log π_sampler − log π_old): the k1 estimate of KL(π_sampler ‖ π_old)   (idem)

Call it once per batch, before the micro-batch loop, and slice the weights per micro-batch: the shares are
then the batch's.
"""

from __future__ import annotations

import math

import torch

IS_MODES = ("none", "token-tis", "seq-tis", "token-mis", "seq-mis", "icepop")
RS_MODES = ("none", "opsm", "geo-mean", "k3")
MASK_MODES = ("token-mis", "seq-mis", "icepop")  # the IS modes that have a lower bound
RS_DEFAULT_THRESHOLDS = {"opsm": 0.1, "geo-mean": 1.001, "k3": 0.01}  # sources: the module docstring
K3_LOG_RATIO_BOUND = 20.0  # k3's log-ratio clamp before exp (verl's SAFETY_BOUND)
MECHANISMS = ("is_truncated", "is_masked", "rs_rejected")  # each logs its token and sequence shares


# ------------------------------------------------------------------------------------------------------
# Pure functions on tensors
# ------------------------------------------------------------------------------------------------------


def log_ratios(
    old_logprobs: torch.Tensor, behavior_logprobs: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """log ρ = log π_old − log π_sampler on real tokens, 0 on padding whatever the log-probs hold there [B, C].

    >>> log_ratios(torch.tensor([[-1.0, -2.0, float("nan")]]), torch.tensor([[-1.5, -2.0, -float("inf")]]),
    ...            torch.tensor([[1.0, 1.0, 0.0]]))
    tensor([[0.5000, 0.0000, 0.0000]])
    """
    dtype = torch.promote_types(
        torch.promote_types(old_logprobs.dtype, behavior_logprobs.dtype), torch.float32
    )
    difference = old_logprobs.detach().to(dtype) - behavior_logprobs.detach().to(dtype)  # [B, C]
    return torch.where(mask > 0, difference, difference.new_zeros(()))


def sequence_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of each row's values over its real tokens [B] (0 for a row without any).

    >>> sequence_mean(torch.tensor([[1.0, 3.0, 99.0], [5.0, 0.0, 0.0]]), torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    tensor([2., 0.])
    """
    real = mask > 0
    total = torch.where(real, values, values.new_zeros(())).sum(-1)
    return total / real.sum(-1).clamp(min=1)


def truncated_weights(log_ratio: torch.Tensor, cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """TIS: min(ρ, C) from log ρ (any shape), and where it truncated (ρ > C).

    >>> truncated_weights(torch.log(torch.tensor([0.5, 1.0, 3.0])), cap=2.0)
    (tensor([0.5000, 1.0000, 2.0000]), tensor([False, False,  True]))
    """
    log_cap = math.log(cap)
    return torch.exp(log_ratio.clamp(max=log_cap)), log_ratio > log_cap


def masked_weights(
    log_ratio: torch.Tensor, cap: float, low: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """MIS / IcePop: ρ where lo ≤ ρ ≤ C, else 0 (no lower bound when ``low`` is None), and where it masked.

    >>> masked_weights(torch.log(torch.tensor([0.25, 0.8, 1.5, 3.0])), cap=2.0, low=0.5)
    (tensor([0.0000, 0.8000, 1.5000, 0.0000]), tensor([ True, False, False,  True]))
    >>> masked_weights(torch.log(torch.tensor([0.25, 3.0])), cap=2.0, low=None)[0]
    tensor([0.2500, 0.0000])
    """
    outside = log_ratio > math.log(cap)
    if low is not None:
        outside = outside | (log_ratio < math.log(low))
    weights = torch.exp(log_ratio.clamp(max=math.log(cap)))
    return torch.where(outside, weights.new_zeros(()), weights), outside


def importance_weights(
    log_ratio: torch.Tensor, mask: torch.Tensor, mode: str, cap: float, low: float | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``--rollout-is`` weights [B, C] from the log-ratios [B, C] (0 on padding), with the tokens it
    truncated and those it masked [B, C] (bool, False on padding). Padding's weight is 1. The sequence
    modes use S_i = Σ_t log ρ_t and give every real token of sequence i the same weight.

    Sequence 0 has ρ = (4, 1): token-tis cuts its first token to C = 2, seq-tis its product 4 to 2, and
    seq-mis drops it; sequence 1 (ρ = 0.5, padding) is kept as it is.

    >>> lr = torch.log(torch.tensor([[4.0, 1.0], [0.5, 1.0]]))
    >>> mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    >>> importance_weights(lr, mask, "token-tis", 2.0, None)[0]
    tensor([[2.0000, 1.0000],
            [0.5000, 1.0000]])
    >>> importance_weights(lr, mask, "seq-tis", 2.0, None)[:2]
    (tensor([[2.0000, 2.0000],
            [0.5000, 1.0000]]), tensor([[ True,  True],
            [False, False]]))
    >>> importance_weights(lr, mask, "seq-mis", 2.0, None)[0]
    tensor([[0.0000, 0.0000],
            [0.5000, 1.0000]])
    """
    sequence_level = mode.startswith("seq-")
    ratio_log = log_ratio.sum(-1, keepdim=True) if sequence_level else log_ratio  # [B, 1] S_i, or [B, C]
    untouched = torch.zeros_like(ratio_log, dtype=torch.bool)
    if mode in ("token-tis", "seq-tis"):
        (weights, truncated), masked = truncated_weights(ratio_log, cap), untouched
    elif mode in MASK_MODES:
        (weights, masked), truncated = masked_weights(ratio_log, cap, low), untouched
    else:
        raise ValueError(f"unknown rollout_is mode {mode!r}; expected one of {IS_MODES[1:]}")
    weights, truncated, masked = (x.expand_as(log_ratio) for x in (weights, truncated, masked))
    real = mask > 0
    weights = torch.where(real, weights, weights.new_ones(()))
    return weights, truncated & real, masked & real


def sequence_advantages(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One advantage per sequence [B]: ``advantages`` itself when [B], the mean over real tokens when [B, C].

    >>> sequence_advantages(torch.tensor([[-1.0, 3.0, 9.0]]), torch.tensor([[1.0, 1.0, 0.0]]))
    tensor([1.])
    """
    if advantages.dim() == 1:
        return advantages
    return sequence_mean(advantages.to(torch.promote_types(advantages.dtype, torch.float32)), mask)


def opsm_rejected(
    log_ratio: torch.Tensor, mask: torch.Tensor, seq_advantages: torch.Tensor, delta: float
) -> torch.Tensor:
    """OPSM: reject a sequence whose advantage is negative AND whose KL to the sampler,
    mean_t(log π_sampler − log π_old) = mean_t(−log ρ_t), exceeds δ [B] (bool).

    Sequence 0 (KL 0.3, A < 0) goes; 1 has A ≥ 0; 2's KL is only 0.05.

    >>> lr = torch.tensor([[-0.2, -0.4], [-0.3, -0.3], [-0.05, -0.05]])
    >>> opsm_rejected(lr, torch.ones(3, 2), torch.tensor([-1.0, 0.5, -1.0]), delta=0.1)
    tensor([ True, False, False])
    """
    return (seq_advantages < 0) & (sequence_mean(-log_ratio, mask) > delta)


def geo_mean_rejected(log_ratio: torch.Tensor, mask: torch.Tensor, tau: float) -> torch.Tensor:
    """Reject a sequence whose geometric-mean ratio exp(mean_t log ρ_t) lies outside [1/τ, τ] [B] (bool).

    >>> geo_mean_rejected(torch.log(torch.tensor([[1.0, 1.44], [4.0, 0.25]])), torch.ones(2, 2), tau=1.1)
    tensor([ True, False])
    """
    return sequence_mean(log_ratio, mask).abs() > math.log(tau)


def k3_rejected(log_ratio: torch.Tensor, mask: torch.Tensor, tau: float) -> torch.Tensor:
    """Reject a sequence whose mean k3 = ρ − 1 − log ρ over its real tokens exceeds τ [B] (bool); k3 ≥ 0
    estimates KL(π_sampler ‖ π_old) per token. Sequence 0: (e − 2) / 2 = 0.359; sequence 1: 0.

    >>> k3_rejected(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.ones(2, 2), tau=0.3)
    tensor([ True, False])
    """
    bounded = log_ratio.clamp(-K3_LOG_RATIO_BOUND, K3_LOG_RATIO_BOUND)
    return sequence_mean(torch.exp(bounded) - 1 - bounded, mask) > tau


def rejected_sequences(
    log_ratio: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor, mode: str, threshold: float
) -> torch.Tensor:
    """``--rollout-rs``: the sequences it rejects [B] (bool).

    >>> rejected_sequences(torch.tensor([[-0.5, -0.5]]), torch.ones(1, 2), torch.tensor([-1.0]), "opsm", 0.1)
    tensor([True])
    """
    if mode == "opsm":
        return opsm_rejected(log_ratio, mask, sequence_advantages(advantages, mask), threshold)
    if mode == "geo-mean":
        return geo_mean_rejected(log_ratio, mask, threshold)
    if mode == "k3":
        return k3_rejected(log_ratio, mask, threshold)
    raise ValueError(f"unknown rollout_rs mode {mode!r}; expected one of {RS_MODES[1:]}")


def shares(flags: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """(share of real tokens flagged, share of sequences with a real token flagged), over real tokens and
    over sequences with at least one real token.

    >>> shares(torch.tensor([[True, False, True], [False, False, False]]), torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    (0.3333333333333333, 0.5)
    """
    real = mask > 0
    flagged = flags & real
    tokens, sequences = int(real.sum()), int(real.any(-1).sum())
    return int(flagged.sum()) / max(tokens, 1), int(flagged.any(-1).sum()) / max(sequences, 1)


# ------------------------------------------------------------------------------------------------------
# The flags
# ------------------------------------------------------------------------------------------------------


def is_lower_bound(args) -> float | None:
    """lo of the mask modes: ``--rollout-is-threshold-low``, or 1/C for icepop when it is None."""
    if args.rollout_is_threshold_low is None and args.rollout_is == "icepop":
        return 1.0 / args.rollout_is_threshold
    return args.rollout_is_threshold_low


def rs_threshold(args) -> float:
    """δ or τ of ``--rollout-rs``: ``--rollout-rs-threshold``, or the mode's default."""
    if args.rollout_rs_threshold is None:
        return RS_DEFAULT_THRESHOLDS[args.rollout_rs]
    return args.rollout_rs_threshold


def check_args(args) -> None:
    """Raise SystemExit with one line naming the flag when the correction flags do not make sense together.

    >>> from types import SimpleNamespace
    >>> ok = dict(rollout_is="icepop", rollout_is_threshold=2.0, rollout_is_threshold_low=None, rollout_rs="none",
    ...           rollout_rs_threshold=None)
    >>> check_args(SimpleNamespace(**ok))
    >>> check_args(SimpleNamespace(**{**ok, "rollout_is_threshold_low": 3.0}))
    Traceback (most recent call last):
    SystemExit: --rollout-is-threshold-low (3.0) must be below --rollout-is-threshold (2.0)
    """
    if args.rollout_is not in IS_MODES:
        raise SystemExit(f"--rollout-is must be one of {', '.join(IS_MODES)}; got {args.rollout_is!r}")
    if args.rollout_rs not in RS_MODES:
        raise SystemExit(f"--rollout-rs must be one of {', '.join(RS_MODES)}; got {args.rollout_rs!r}")
    cap, low = args.rollout_is_threshold, args.rollout_is_threshold_low
    if not cap > 0:  # also NaN
        raise SystemExit(f"--rollout-is-threshold must be > 0, got {cap}")
    if low is not None:
        if args.rollout_is not in MASK_MODES:
            raise SystemExit(
                f"--rollout-is-threshold-low is the lower bound of {', '.join(MASK_MODES)}; "
                f"--rollout-is {args.rollout_is} has none"
            )
        if not low > 0:
            raise SystemExit(f"--rollout-is-threshold-low must be > 0, got {low}")
        if not low < cap:
            raise SystemExit(
                f"--rollout-is-threshold-low ({low}) must be below --rollout-is-threshold ({cap})"
            )
    elif args.rollout_is == "icepop" and not 1.0 / cap < cap:
        raise SystemExit(
            f"--rollout-is icepop's default lower bound 1/C = {1.0 / cap:g} is not below --rollout-is-threshold "
            f"{cap}: give --rollout-is-threshold-low, or a threshold above 1"
        )
    threshold = args.rollout_rs_threshold
    if threshold is not None:
        if args.rollout_rs == "none":
            raise SystemExit("--rollout-rs-threshold is set but --rollout-rs is none")
        if not threshold > 0:
            raise SystemExit(f"--rollout-rs-threshold must be > 0, got {threshold}")
    if args.rollout_rs == "geo-mean" and not rs_threshold(args) > 1:
        raise SystemExit(
            f"--rollout-rs-threshold must be > 1 for geo-mean (it keeps [1/τ, τ]), got {threshold}"
        )
    if getattr(args, "temperature", 1.0) == 0 and (args.rollout_is != "none" or args.rollout_rs != "none"):
        raise SystemExit(
            "--rollout-is/--rollout-rs need sampled behaviour log-probs; they cannot be used with --temperature 0"
        )


# ------------------------------------------------------------------------------------------------------
# What the algorithm files call
# ------------------------------------------------------------------------------------------------------


def rollout_correction(
    old_logprobs: torch.Tensor | None,  # [B, C] log π_old: the trainer's log-probs at rollout time
    behavior_logprobs: torch.Tensor,  # [B, C] log π_sampler: what the sampler drew the tokens from
    mask: torch.Tensor,  # [B, C] completion mask (float 0/1)
    advantages: torch.Tensor,  # [B] per sequence, or [B, C] per token
    args,  # reads rollout_is, rollout_is_threshold, rollout_is_threshold_low, rollout_rs, rollout_rs_threshold
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token loss weights [B, C] (detached; 1 everywhere when both modes are "none", and then
    old_logprobs may be None) that the caller multiplies into its per-token loss, and the step's
    statistics (the keys in the module docstring).

    Two sequences, ρ = (3, 1) and (1, padding), token-tis at C = 2: one token of three is truncated, in
    one sequence of two.

    >>> from types import SimpleNamespace
    >>> args = SimpleNamespace(rollout_is="token-tis", rollout_is_threshold=2.0, rollout_is_threshold_low=None,
    ...                        rollout_rs="none", rollout_rs_threshold=None)
    >>> old = torch.log(torch.tensor([[0.6, 0.5], [0.5, 0.5]]))
    >>> sampler = torch.log(torch.tensor([[0.2, 0.5], [0.5, 0.5]]))
    >>> weights, stats = rollout_correction(old, sampler, torch.tensor([[1.0, 1.0], [1.0, 0.0]]), torch.zeros(2), args)
    >>> weights
    tensor([[2., 1.],
            [1., 1.]])
    >>> stats["correction/is_truncated_token_frac"], stats["correction/is_truncated_seq_frac"]
    (0.3333333333333333, 0.5)
    """
    if args.rollout_is not in IS_MODES or args.rollout_rs not in RS_MODES:
        raise ValueError(f"unknown mode: rollout_is={args.rollout_is!r}, rollout_rs={args.rollout_rs!r}")
    real = mask > 0  # [B, C]
    flags = {}  # what each mechanism touched: name -> [B, C] bool
    if old_logprobs is None:
        if args.rollout_is != "none" or args.rollout_rs != "none":
            raise ValueError("--rollout-is/--rollout-rs need old_logprobs (π_old, recomputed by the trainer)")
        weights = torch.ones(mask.shape, dtype=torch.float32, device=mask.device)  # [B, C]
        stats = {}
    else:
        log_ratio = log_ratios(old_logprobs, behavior_logprobs, mask)  # [B, C]
        weights = torch.ones_like(log_ratio)  # [B, C]
        if args.rollout_is != "none":
            weights, flags["is_truncated"], flags["is_masked"] = importance_weights(
                log_ratio, mask, args.rollout_is, args.rollout_is_threshold, is_lower_bound(args)
            )
        if args.rollout_rs != "none":
            threshold = rs_threshold(args)
            rejected = rejected_sequences(log_ratio, mask, advantages, args.rollout_rs, threshold)  # [B]
            flags["rs_rejected"] = rejected[:, None] & real  # [B, C]
            weights = torch.where(flags["rs_rejected"], weights.new_zeros(()), weights)
        stats = {
            "correction/logprob_gap": float(log_ratio[real].abs().mean()) if real.any() else 0.0,
            "correction/sampler_kl": float(-log_ratio[real].mean()) if real.any() else 0.0,
        }
    for name in MECHANISMS:
        token_share, seq_share = shares(flags[name], mask) if name in flags else (0.0, 0.0)
        stats[f"correction/{name}_token_frac"], stats[f"correction/{name}_seq_frac"] = token_share, seq_share
    stats["correction/weight_mean"] = float(weights[real].mean()) if real.any() else 1.0
    return weights.detach(), stats

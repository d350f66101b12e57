"""REC: REINFORCE with clipping as a mask, no importance weight — group-relative REINFORCE used off the policy.

Paper: Yao, Chen et al., "Group-Relative REINFORCE Is Secretly an Off-Policy Algorithm: Demystifying Some
Myths About GRPO and Its Friends", arXiv 2509.24203 (Section 4, the REC family). Official code: Trinity-RFT,
``trinity/algorithm/policy_loss_fn/rec_policy_loss.py`` (``RECPolicyLossFn``) and
``trinity/algorithm/advantage_fn/rec_advantage.py`` (``RECGroupedAdvantage``), run by ``examples/rec_gsm8k``.

Idea: the group-mean baseline makes REINFORCE a valid update on data from any policy (the paper derives it
without assuming the sampling distribution), so off-policy data needs no importance weight; what keeps it
stable is PPO's clip read as a mask: a token whose ratio to the sampler has left the trust region on the side
its advantage pushes contributes nothing. The ratio is detached and only masks (OneSide-NoIS, the default);
the variants multiply it back in (OneSide-IS, which with the group std is GRPO's gradient) or mask on both
sides (TwoSide).

Loss (minimised; ρ = sg(π_θ / π_sampler) per token, A_i = r_i − mean(r), per-token mean over the mini-batch):

    L(θ) = − agg_{i,t} M_{i,t} · w_{i,t} · A_i · log π_θ(o_{i,t} | q, o_{i,<t})
    one-side  M = 1[A ≥ 0, ρ ≤ 1 + ε_high] or 1[A ≤ 0, ρ ≥ 1 − ε_low]     (--clip-mode one-side)
    two-side  M = 1[1 − ε_low ≤ ρ ≤ 1 + ε_high]                              (--clip-mode two-side)
    none      M = 1 (REINFORCE; the paper's run that collapses off the policy)
    w = 1 (NoIS), or w = ρ (--importance-weight, IS)

Modification 1: the defaults A = r − mean(r) (``--scale-rewards none``) and token-mean aggregation (Trinity-RFT's).
Modification 2: the loss −M·w·A·log π, the detached ratio to the sampler a mask, w = 1 or ρ (``rec_loss``).
Modification 3: rollouts from a copy synced every ``--sync-interval`` steps (optionally bf16 or with logit noise).

Defaults (the tiny world unless said): ε_low = ε_high = 0.2 (the official README's REC configs and the
example's ``epsilon_low``/``epsilon_high``); no std scaling (``std_normalize: false``) and token-mean
aggregation (``RECPolicyLossFn``'s ``loss_agg_mode``); one mini-batch per step (the example sets none); a
sampler synced every 4 steps (the example syncs every 20 of its 100 steps at lr 1e-6; the tiny world learns
at 1e-4, and 4 of its steps move the policy about as far: the mask fires in the default run, see
docs/methods/rec.md); learning rate 1e-4 (grpo.py's).

Deviations / choices:
- The ratio is π_θ / π_sampler (the rollout's ``behavior_logprobs``): Trinity-RFT at the paper's time fed the
  explorer's log-probs in as ``old_log_probs`` (two policies; verl's "bypass mode"). Today's Trinity-RFT
  recomputes π_old by default (three policies), which makes the ratio 1 on a one-mini-batch step.
- ``--scale-rewards group`` divides by the unbiased std (grpo.py's); Trinity-RFT divides by the population std.
- Trinity-RFT's other modes (``ring``, ``gspo-one-side``, truncated or advantage weights, the k2 and forward-KL
  regularisers, ``drop: balance``) are not here.
"""

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import tyro

from common.mismatched_sampler import MismatchedSampler
from common.model import completion_logprobs, load_policy, rollout_logprobs
from common.preflight import check_run_args
from common.registry import MethodInfo
from common.rollout import make_sampler
from common.rollout_correction import rollout_correction
from common.rollout_types import sampler_gap
from common.run import Run, warmup_scheduler

METHOD = MethodInfo(
    name="REC",
    paper="Yao, Chen et al., Group-Relative REINFORCE Is Secretly an Off-Policy Algorithm, arXiv 2509.24203",
    arxiv="2509.24203",
    change="REINFORCE with r − mean(r); the ratio to a stale sampler only masks (PPO's clip as a mask), no IS",
    gradient_tier=1,
    gradient_claim="on the policy (ρ = 1) unbiased up to the baseline: REINFORCE with the group mean, (G − 1)/G "
    "of the true gradient; off it, biased by design: masked tokens and the missing importance weight",
    contradiction=({"sync_interval": 0}, "--sync-interval must be >= 1"),
    smoke_flags=(
        "--sync-interval=1",
    ),  # the registry's sweeps run it on the policy (vLLM needs it); tests/test_rec.py
    variants={
        "rec-oneside-is": ["--importance-weight"],
        "rec-twoside-nois": ["--clip-mode", "two-side"],
        "rec-twoside-is": ["--clip-mode", "two-side", "--importance-weight"],
        "rec-reinforce": ["--clip-mode", "none"],
        "rec-grpo": ["--importance-weight", "--scale-rewards", "group"],
    },
)


@dataclass
class Args:
    # --- experiment ---
    exp_name: str = "rec"
    """name of this experiment (used in the run directory name)"""
    seed: int = 1
    """seed of python, numpy and torch (data order, sampling, initialisation)"""
    output_dir: str = "runs"
    """parent directory of the run directory (logs, checkpoints, plots)"""
    run_name: str | None = None
    """run directory name; default: {exp_name}__{seed}"""
    resume: bool = False
    """continue from the newest checkpoint in the run directory"""
    track: bool = False
    """log to Weights & Biases (TensorBoard and JSONL are always written)"""
    wandb_project: str = "rlvr"
    """Weights & Biases project"""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """torch device"""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """model weights dtype"""

    # --- model and data ---
    model_name_or_path: str = "tiny"
    """"tiny" (the built-in world), a local directory, or a Hugging Face model id"""
    dataset: str = "tiny"
    """"tiny", "gsm8k", "math", "hf:NAME[:CONFIG]" or a path to a .jsonl file"""
    eval_dataset: str | None = None
    """held-out dataset (default: the test split of --dataset; "math500" for MATH)"""
    question_field: str | None = None
    """question column for hf:/jsonl datasets"""
    answer_field: str | None = None
    """answer column for hf:/jsonl datasets"""
    template: str = "plain"
    """prompt template: plain, qwen-math, r1"""

    # --- rollout ---
    rollout: Literal["hf", "vllm"] = "hf"
    """rollout engine: HF generate or vLLM"""
    prompts_per_step: int = 16
    """prompts per training step"""
    group_size: int = 8
    """G: completions sampled per prompt"""
    max_new_tokens: int = 80
    """completion length limit in tokens (also L_max of seq-mean-token-sum-norm)"""
    temperature: float = 1.0
    """sampling temperature (training and evaluation)"""
    top_p: float = 1.0
    """nucleus sampling threshold"""
    vllm_gpu_memory_utilization: float = 0.3
    """share of GPU memory vLLM may take (weights + KV cache) with --rollout vllm"""
    rollout_is: Literal["none", "token-tis", "seq-tis", "token-mis", "seq-mis", "icepop"] = "none"
    """importance weight from ρ = π_old/π_sampler: token-tis/seq-tis truncate at C, token-mis/seq-mis/icepop mask outside [lo, C] (common/rollout_correction.py)"""
    rollout_is_threshold: float = 2.0
    """C: upper bound of the importance weight (truncated at it by *-tis, masked above it by *-mis and icepop)"""
    rollout_is_threshold_low: float | None = None
    """lo: lower bound of the token-mis/seq-mis/icepop mask (None: none for *-mis, 1/C for icepop)"""
    rollout_rs: Literal["none", "opsm", "geo-mean", "k3"] = "none"
    """reject whole sequences: opsm (negative advantage and KL to the sampler > δ), geo-mean (exp mean log ρ outside [1/τ, τ]), k3 (mean k3 > τ)"""
    rollout_rs_threshold: float | None = None
    """δ of opsm, τ of geo-mean and k3 (None: 0.1, 1.001, 0.01)"""
    # Modification 3 (vs GRPO): the sampler is a copy of the policy that lags behind it (common/mismatched_sampler.py)
    sync_interval: int = 4
    """k: the sampler's copy of the weights is synced from the trainer every k training steps (1: every step; common/mismatched_sampler.py)"""
    sampler_dtype: Literal["float32", "bfloat16"] = "float32"
    """dtype of the sampler's copy of the policy (the trainer keeps --dtype); --rollout hf only"""
    logit_noise: float = 0.0
    """σ: the sampler adds a fixed offset σ·z, z ~ N(0, 1) drawn with --seed, to each token id's logit; --rollout hf only"""

    # --- optimisation ---
    num_steps: int = 100
    """training steps (one rollout batch each)"""
    max_samples: int = 0
    """stop after the step whose generated completions reach this many (0: no budget; bench/compare.py)"""
    learning_rate: float = 1e-4
    """AdamW learning rate (constant after warm-up)"""
    warmup_steps: int = 5
    """linear learning-rate warm-up steps"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    max_grad_norm: float = 1.0
    """gradient clipping threshold"""
    micro_batch_size: int = 64
    """sequences per forward/backward pass (gradient accumulation over the batch)"""
    updates_per_batch: int = 1
    """passes over each rollout batch (μ in the paper, PPO's epochs); the ratio π_θ / π_old is 1 on the first"""
    num_mini_batches: int = 1
    """optimizer steps per pass: each pass splits the rollout batch into this many mini-batches"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass to save memory"""

    # --- algorithm ---
    clip_low: float = 0.2
    """ε_low: lower clip of the ratio (1 − ε_low)"""
    clip_high: float = 0.2
    """ε_high: upper clip of the ratio (1 + ε_high)"""
    # Modification 2 (vs GRPO): which tokens REC's mask drops, and whether the ratio also weights the rest
    clip_mode: Literal["one-side", "two-side", "none"] = "one-side"
    """REC's mask on ρ = π_θ/π_sampler: one-side (beyond the bound the token's advantage pushes toward), two-side (outside [1 − ε_low, 1 + ε_high]), none"""
    importance_weight: bool = False
    """multiply each token's loss by the detached ratio ρ = π_θ/π_sampler (REC-*-IS; default NoIS)"""
    kl_coef: float = 0.0
    """β: weight of the k3 KL to the initial policy, a loss term; 0 loads no reference model"""
    # Modification 1 (vs GRPO): Trinity-RFT's token-mean and A = r − mean(r) (std_normalize: false)
    loss_agg: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = "token-mean"  # fmt: skip
    """how per-token losses are averaged over a mini-batch (grpo.py's module docstring)"""
    scale_rewards: Literal["group", "none"] = "none"
    """divide advantages by the group std (GRPO) or not (Dr. GRPO)"""

    # --- evaluation, logging, checkpoints ---
    eval_every: int = 20
    """evaluate held-out pass@k every N steps (0: only before and after training)"""
    eval_problems: int = 300
    """held-out problems per evaluation"""
    eval_n: int = 8
    """samples per held-out problem (pass@k for k up to eval_n)"""
    log_completions_every: int = 10
    """write a sample of completions to completions.jsonl every N steps"""
    save_every: int = 20
    """checkpoint every N steps (and at the end)"""
    keep_last: int = 2
    """checkpoints kept on disk"""


# ALGO LOGIC: advantages, the KL penalty, loss aggregation and REC's loss (pure functions; Modification 2 (vs GRPO))


def grpo_advantages(rewards: torch.Tensor, scale_rewards: str = "group", eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantages. ``rewards [Q, G]`` -> ``advantages [Q, G]``.

    >>> grpo_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))  # mean 0.25, unbiased std 0.5
    tensor([[ 1.5000, -0.5000, -0.5000, -0.5000]])
    >>> grpo_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), scale_rewards="none")
    tensor([[ 0.7500, -0.2500, -0.2500, -0.2500]])
    """
    advantages = rewards - rewards.mean(dim=1, keepdim=True)  # [Q, G]
    if scale_rewards == "group":
        advantages = advantages / (rewards.std(dim=1, keepdim=True) + eps)
    return advantages


# Modification 2 (vs GRPO): REC's loss (rec_loss, below aggregate_loss) replaces PPO's clipped surrogate


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(π_θ ‖ π_ref): exp(ref − logp) − (ref − logp) − 1 (≥ 0, 0 when equal).

    >>> k3_kl(torch.tensor([0.0]), torch.tensor([0.0]))
    tensor([0.])
    """
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1


def aggregate_loss(
    per_token_loss: torch.Tensor,  # [b, C] losses of one micro-batch
    mask: torch.Tensor,  # [b, C] completion mask
    mode: str,
    num_sequences: int,  # sequences in the whole mini-batch (all its micro-batches)
    num_tokens: int,  # completion tokens in the whole mini-batch
    max_len: int,  # L_max for seq-mean-token-sum-norm
) -> torch.Tensor:
    """Reduce per-token losses to a scalar so that summing over micro-batches gives the mini-batch loss.

    Two sequences, losses [[1, 1, 0], [4, 0, 0]] with masks [[1, 1, 0], [1, 0, 0]]:
      seq-mean-token-mean:      ((1+1)/2 + 4/1) / 2 = 2.5
      token-mean:               (1+1+4) / 3        = 2.0
      seq-mean-token-sum:       ((1+1) + 4) / 2    = 3.0
      seq-mean-token-sum-norm:  (1+1+4) / (2·3)    = 1.0   (L_max = 3)
    """
    masked = per_token_loss * mask
    if mode == "seq-mean-token-mean":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / num_sequences
    if mode == "token-mean":
        return masked.sum() / max(num_tokens, 1)
    if mode == "seq-mean-token-sum":
        return masked.sum() / num_sequences
    if mode == "seq-mean-token-sum-norm":
        return masked.sum() / (num_sequences * max_len)
    raise ValueError(f"unknown --loss-agg {mode!r}")


def rec_loss(
    logprobs: torch.Tensor,  # [B, C] log π_θ of the sampled tokens
    behavior_logprobs: torch.Tensor,  # [B, C] log π_sampler (the rollout's)
    advantages: torch.Tensor,  # [B] one advantage per completion, broadcast over its tokens
    clip_low: float,
    clip_high: float,
    clip_mode: str,
    importance_weight: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Modification 2 (vs GRPO): REC's per-token loss −M·w·A·log π_θ (to minimise) and the mask of dropped tokens.

    ρ = exp(logprobs − behavior_logprobs), detached: it never carries gradient, it only decides M (and w = ρ
    with ``importance_weight``, else 1). one-side: M = 0 where A > 0 and ρ > 1 + ε_high, or A < 0 and
    ρ < 1 − ε_low; two-side: M = 0 where ρ is outside [1 − ε_low, 1 + ε_high]; none: M = 1.
    Three tokens of one completion with A = 2, π_sampler = 1 (so ρ = π_θ) and ρ = 1.5, 1.0, 0.5, ε = 0.2:
    one-side drops the first (A > 0 and ρ > 1.2) and keeps the third (ρ < 0.8 only matters for A < 0); the
    losses are 0 (dropped), −2·log 1 = 0 and −2·log 0.5 = 1.3863.

    >>> loss, dropped = rec_loss(torch.log(torch.tensor([[1.5, 1.0, 0.5]])), torch.zeros(1, 3), torch.tensor([2.0]), 0.2, 0.2, "one-side", False)
    >>> dropped, loss.abs()
    (tensor([[ True, False, False]]), tensor([[0.0000, 0.0000, 1.3863]]))
    """
    ratio = torch.exp(logprobs.detach() - behavior_logprobs)  # [B, C]
    adv = advantages[:, None]  # [B, 1]
    below_high, above_low = ratio <= 1 + clip_high, ratio >= 1 - clip_low
    if clip_mode == "one-side":
        keep = ((adv >= 0) & below_high) | ((adv <= 0) & above_low)
    elif clip_mode == "two-side":
        keep = below_high & above_low
    elif clip_mode == "none":
        keep = torch.ones_like(ratio, dtype=torch.bool)
    else:
        raise ValueError(f"unknown --clip-mode {clip_mode!r}")
    weight = ratio if importance_weight else torch.ones_like(ratio)
    per_token_loss = -adv * weight * logprobs * keep  # [B, C]
    return per_token_loss, ~keep


# ALGO LOGIC: the policy update (the same signature in every file; callable without main())


def update_policy(model, optimizer, batch: dict, args: Args) -> dict[str, float]:
    """Update the policy on one rollout batch: ``--updates-per-batch`` passes, each split into
    ``--num-mini-batches`` optimizer steps, each accumulated over micro-batches (the micro-batch size never
    changes the gradient). ``batch``: ``rollout`` (a ``common.rollout_types.Rollout``), ``advantages [B]`` and,
    when ``--kl-coef`` > 0, ``ref_logprobs [B, C]``. Returns the update's statistics (means over its steps)."""
    rollout, advantages, ref_logprobs = batch["rollout"], batch["advantages"], batch.get("ref_logprobs")
    mask = rollout.completion_mask  # [B, C]
    B, C = mask.shape
    steps, stats = args.updates_per_batch * args.num_mini_batches, {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0}
    # π_old: the trainer's log-probs before the first optimizer step, needed once the ratio can leave 1
    needs_old = steps > 1 or args.rollout_is != "none" or args.rollout_rs != "none"
    old_logprobs = rollout_logprobs(model, rollout, args.temperature, args.micro_batch_size) if needs_old else None  # fmt: skip
    weights, stats_rc = rollout_correction(old_logprobs, rollout.behavior_logprobs, mask, advantages, args)
    model.train()
    total_tokens = mask.sum().item()
    for update in range(args.updates_per_batch):
        for rows in torch.arange(B).tensor_split(args.num_mini_batches):  # one optimizer step each
            num_tokens = int(mask[rows].sum())
            for mb in rows.split(args.micro_batch_size):
                logprobs, entropy = completion_logprobs(model, rollout.input_ids[mb], rollout.attention_mask[mb], C, args.temperature, with_entropy=True)  # fmt: skip
                old = old_logprobs[mb] if old_logprobs is not None else logprobs.detach()
                # Modification 2 (vs GRPO): REC's loss; the ratio is to the sampler, not to π_old; clipped: masked
                per_token_loss, clipped = rec_loss(
                    logprobs, rollout.behavior_logprobs[mb], advantages[mb], args.clip_low, args.clip_high,
                    args.clip_mode, args.importance_weight,
                )  # fmt: skip
                per_token_loss = per_token_loss * weights[mb]  # the sampler/trainer mismatch correction
                if ref_logprobs is not None:
                    kl = k3_kl(logprobs, ref_logprobs[mb])  # [b, C]
                    per_token_loss = per_token_loss + args.kl_coef * kl
                    stats["kl"] += float((kl * mask[mb]).sum()) / num_tokens / steps
                loss = aggregate_loss(
                    per_token_loss, mask[mb], args.loss_agg, len(rows), num_tokens, args.max_new_tokens
                )
                loss.backward()
                stats["loss"] += loss.item() / steps
                stats["clip_frac"] += float((clipped * mask[mb]).sum()) / num_tokens / steps
                if update == 0:  # the first pass: the policy's entropy and its gap to the sampler
                    sums = {"entropy": float((entropy * mask[mb]).sum()), **sampler_gap(old, rollout, mb)}
                    for key, value in sums.items():
                        stats[key] = stats.get(key, 0.0) + value / total_tokens
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            stats["grad_norm"] = stats.get("grad_norm", 0.0) + float(grad_norm) / steps
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return {**stats, **stats_rc}


# TRY NOT TO MODIFY: the training loop


def validate(args: Args) -> None:
    """Contradictory flags fail here, before anything is loaded."""
    if args.group_size < 2:
        raise SystemExit(f"--group-size must be >= 2 for a group-relative advantage, got {args.group_size}")
    # Modification 3 (vs GRPO): the mismatched sampler's settings (common/mismatched_sampler.py)
    if args.sync_interval < 1:
        raise SystemExit(f"--sync-interval must be >= 1 (1: synced every step), got {args.sync_interval}")
    if args.logit_noise < 0:
        raise SystemExit(f"--logit-noise must be >= 0, got {args.logit_noise}")
    mismatched = args.sync_interval > 1 or args.sampler_dtype != "float32" or args.logit_noise > 0
    if args.rollout == "vllm" and mismatched:
        raise SystemExit("--sync-interval > 1, --sampler-dtype and --logit-noise need --rollout hf")
    # Modification 2 (vs GRPO): the mask's bounds
    if not 0 < args.clip_low <= 1 or args.clip_high <= 0:
        raise SystemExit(
            f"--clip-low must be in (0, 1] and --clip-high > 0, got {args.clip_low}, {args.clip_high}"
        )
    check_run_args(args)  # TRY NOT TO MODIFY: model path, data, template, shared flags


def main(args: Args) -> dict:
    validate(args)
    run = Run(args)  # TRY NOT TO MODIFY: run directory, seeding, data, verifier (common/run.py)
    model, tokenizer = load_policy(args.model_name_or_path, args.dtype, args.device, args.gradient_checkpointing)  # fmt: skip
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if args.kl_coef > 0 else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = warmup_scheduler(optimizer, args.warmup_steps)
    sampler = make_sampler(args.rollout, model, tokenizer, gpu_memory_utilization=args.vllm_gpu_memory_utilization)  # fmt: skip
    # Modification 3 (vs GRPO): rollouts come from a copy synced every k steps; evaluation sees the trainer
    rollout_sampler, modules = sampler, None
    if args.rollout == "hf":
        rollout_sampler = MismatchedSampler(model, tokenizer, args.sync_interval, args.sampler_dtype, args.logit_noise, args.seed)  # fmt: skip
        modules = {"rollout_sampler": rollout_sampler}  # its copy and the steps since its sync: exact resume
    run.start(model, tokenizer, optimizer, scheduler, sampler, modules=modules)  # Modification 3 (vs GRPO)
    Q, G = args.prompts_per_step, args.group_size

    for step in run.steps():  # TRY NOT TO MODIFY: progress, Ctrl-C, checkpoints, the sample budget
        # TRY NOT TO MODIFY: sample G completions for each of this step's prompts and score them
        batch, prompts = run.next_batch(Q)
        # Modification 3 (vs GRPO): the rollout comes from the (stale) copy
        rollout = rollout_sampler.generate(prompts, G, args.max_new_tokens, args.temperature, args.top_p)
        results, correct = run.verify(rollout, batch)
        rewards = correct.view(Q, G)  # [Q, G]

        # ALGO LOGIC: group-relative advantages, one per completion, then the policy update
        advantages = grpo_advantages(rewards, args.scale_rewards).view(-1).to(args.device)  # [B]
        update = {"rollout": rollout, "advantages": advantages}
        if ref_model is not None:
            update["ref_logprobs"] = rollout_logprobs(ref_model, rollout, args.temperature, args.micro_batch_size)  # fmt: skip
        stats = update_policy(model, optimizer, update, args)
        scheduler.step()
        sampler.update_weights(model)  # TRY NOT TO MODIFY: the sampler must see the new weights
        # Modification 3 (vs GRPO): the copy syncs every --sync-interval steps
        if rollout_sampler is not sampler:
            rollout_sampler.update_weights(model)

        run.log(step, rollout, results, rewards, stats)  # TRY NOT TO MODIFY: metrics, evaluation, completions
    return run.finish()  # TRY NOT TO MODIFY: the before/after table and plots


if __name__ == "__main__":
    main(tyro.cli(Args))

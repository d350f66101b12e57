"""GMPO: Geometric-Mean Policy Optimization — the geometric mean of the token ratios, clipped in log space.

Paper: Zhao, Liu, Liu, Chen, Wu, Hao, Lv, Huang, Cui, Ye, Wan, Wei, "Geometric-Mean Policy Optimization",
arXiv 2507.20673 (Section 3). Official code: callsys/GMPO, ``train_zero_math_gmpo.py`` (on oat, the code
base of Dr. GRPO) and ``scripts/qwen2.5-math-7b-gmpo.sh``; verl's ``geo_mean`` loss and TRL's
``experimental.gmpo.GMPOTrainer`` are the oracles.

Idea: GRPO maximises the arithmetic mean of the token rewards ρ_{i,t}·Â_i, which one token with an extreme
ratio can dominate. GMPO maximises their geometric mean, exp of the mean log ratio, which an outlier moves
far less; so the clip can be much wider (e^±0.4 instead of 1 ± 0.2) and is applied per token in log space,
on the pessimistic side of the advantage's sign (PPO's min, written in logs).

Objective (maximised; Â_i the group z-score, ε = ``--log-clip``; log ρ_{i,t} = log π_θ − log π_old):

    ℓ_{i,t} = min(log ρ_{i,t}, clip(log ρ_{i,t}, −ε, ε))   if Â_i > 0
            = max(log ρ_{i,t}, clip(log ρ_{i,t}, −ε, ε))   if Â_i < 0
    J(θ)    = E_q [ (1/G) Σ_i Â_i · exp( (1/|o_i|) Σ_t ℓ_{i,t} ) ] − β · KL_k3(π_θ ‖ π_ref)

Modification 1: several optimizer steps per rollout batch by default (``--num-mini-batches 8``).
Modification 2: the sign-aware token clip in log space, ``--log-clip 0.4``, replaces PPO's ratio clip.
Modification 3: the loss is one per sequence, −Â_i·exp(mean_t ℓ_{i,t}), averaged over sequences (no ``--loss-agg``).

Defaults and sources: ε = 0.4 (``CLIPRANGE=0.4``; the paper's range (e^−0.4, e^0.4)), the z-score advantage
(``--critic_type grpo``), β = 0 and eight optimizer steps per rollout batch (1,024 samples of 128 prompts,
``--train_batch_size 128``, one epoch) are the official script's. The batch, learning rate and length are
grpo.py's tiny-world settings (not tuned): 16 prompts x 8 samples in 8 mini-batches of 16 samples.
Paper-scale command lines: docs/methods/gmpo.md.

Deviations / choices:
- ε is one number (the paper and official code clip at ±ε); verl reads clip_ratio_low/high as −ε_low, ε_high
  and TRL epsilon/epsilon_high the same way: equal at ε_low = ε_high.
- The official code treats Â = 0 as positive; verl zeroes the log ratio of such tokens; TRL and this file
  take the max. All give the loss 0 and no gradient for Â = 0; only ``clip_frac`` reads it, and it counts
  a token clipped only where the clip binds (Â > 0 and log ρ > ε, or Â < 0 and log ρ < −ε), as TRL does
  (verl counts any log ρ outside [−ε, ε]).
- The mean over sequences is the official code's (one sequence per device step, gradients averaged) and
  TRL's and verl's (``torch.mean`` over the local batch); the k3 KL, when on, is grpo.py's per-token term,
  averaged over each sequence's tokens as TRL does.
- Per-token rollout correction weights (``--rollout-is token-*``) multiply the per-token loss, which here is
  the sequence's loss on every token, so they weight the sequence by mean_t w_t; verl weights it by the
  geometric mean of the w_t. Sequence-level weights (``seq-*``) are the same in both.
"""

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import tyro

from common.model import completion_logprobs, load_policy, rollout_logprobs
from common.preflight import check_run_args
from common.registry import MethodInfo
from common.rollout import make_sampler
from common.rollout_correction import rollout_correction
from common.rollout_types import sampler_gap
from common.run import Run, warmup_scheduler

METHOD = MethodInfo(
    name="GMPO",
    paper="Zhao et al., Geometric-Mean Policy Optimization, arXiv 2507.20673 (Section 3)",
    arxiv="2507.20673",
    change="geometric mean of token ratios, sign-aware clip of log ρ at ±0.4; 8 mini-batches per batch",
    gradient_tier=1,
    gradient_claim="at ρ = 1 (one pass, one mini-batch) equals GRPO with sequence-mean aggregation "
    "(seq-mean-token-mean): the gradient of exp(mean_t log ρ_t) at ρ = 1 is mean_t ∇log π_t (tested); off "
    "the policy each sequence is weighted by the geometric mean of its clipped ratios, biased by design",
    verl="verl's own `geo_mean` loss with `grpo` advantages (parity-tested)",
    contradiction=({"log_clip": -0.1}, "--log-clip must be >= 0"),
)


@dataclass
class Args:
    # --- experiment ---
    exp_name: str = "gmpo"
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
    # Modification 1 (vs GRPO): the official run's eight optimizer steps per rollout batch
    num_mini_batches: int = 8
    """optimizer steps per pass: each pass splits the rollout batch into this many mini-batches"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass to save memory"""

    # --- algorithm ---
    # Modification 2 (vs GRPO): one clip in log space replaces --clip-low/--clip-high
    log_clip: float = 0.4
    """ε of the sign-aware token clip in log space: log ρ within [−ε, ε]"""
    kl_coef: float = 0.0
    """β: weight of the k3 KL to the initial policy, a loss term; 0 loads no reference model"""
    # Modification 3 (vs GRPO): no --loss-agg; the loss is one per sequence, averaged over sequences
    scale_rewards: Literal["group", "none"] = "group"
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


# ALGO LOGIC: advantages, the clipped surrogate, the KL penalty and loss aggregation (pure functions)


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


def geometric_mean_surrogate(  # Modification 3 (vs GRPO): GMPO's loss in place of PPO's clipped surrogate
    logprobs: torch.Tensor,  # [B, C] log π_θ of the sampled tokens
    old_logprobs: torch.Tensor,  # [B, C] log π_old (detached)
    advantages: torch.Tensor,  # [B] one advantage per completion
    mask: torch.Tensor,  # [B, C] completion mask
    log_clip: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Modification 3 (vs GRPO): −Â_i·exp((1/|o_i|) Σ_t ℓ_{i,t}) on every token of sequence i ``[B, C]`` (its
    mean over a sequence's tokens is the sequence's loss), and the mask of tokens where the clip binds.
    ℓ is log ρ clipped to [−ε, ε] on the pessimistic side only (Modification 2): with Â > 0 a log ratio above
    ε is cut to ε (below −ε it stays), with Â < 0 one below −ε is raised to −ε. ε = 0.4, two tokens with log ρ
    0.5 and 0.1: under Â = 2 the first is cut, −2·exp((0.4 + 0.1)/2) = −2.5681; under Â = −2 none binds,
    2·exp(0.3) = 2.6997 (padding ignored).
    >>> loss, clipped = geometric_mean_surrogate(torch.tensor([[0.5, 0.1, 9.0], [0.5, 0.1, 9.0]]), torch.zeros(2, 3),
    ...                                          torch.tensor([2.0, -2.0]), torch.tensor([[1.0, 1.0, 0.0]] * 2), 0.4)
    >>> loss[:, 0], clipped
    (tensor([-2.5681,  2.6997]), tensor([[ True, False,  True],
            [False, False, False]]))
    """
    log_ratio = logprobs - old_logprobs  # [B, C]
    adv = advantages[:, None]  # [B, 1]
    # Modification 2 (vs GRPO): PPO's min(ρA, clip(ρ)A), per token in log space: the side set by sign(Â)
    clamped = log_ratio.clamp(-log_clip, log_clip)
    clipped_log_ratio = torch.where(adv > 0, torch.minimum(log_ratio, clamped), torch.maximum(log_ratio, clamped))  # fmt: skip
    binds = (adv > 0) & (log_ratio > log_clip) | (adv < 0) & (log_ratio < -log_clip)  # [B, C]
    log_geometric_mean = (clipped_log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # [B]
    per_sequence_loss = -advantages * torch.exp(log_geometric_mean)  # [B]
    return per_sequence_loss[:, None].expand_as(logprobs), binds.detach()


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
                per_token_loss, clipped = geometric_mean_surrogate(  # Modification 3 (vs GRPO)
                    logprobs, old, advantages[mb], mask[mb], args.log_clip
                )
                per_token_loss = per_token_loss * weights[mb]  # the sampler/trainer mismatch correction
                if ref_logprobs is not None:
                    kl = k3_kl(logprobs, ref_logprobs[mb])  # [b, C]
                    per_token_loss = per_token_loss + args.kl_coef * kl
                    stats["kl"] += float((kl * mask[mb]).sum()) / num_tokens / steps
                # Modification 3 (vs GRPO): the mean over the mini-batch's sequences of their losses
                loss = aggregate_loss(per_token_loss, mask[mb], "seq-mean-token-mean", len(rows), num_tokens, C)  # fmt: skip
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
    if args.log_clip < 0:  # Modification 2 (vs GRPO): a clip range [−ε, ε] needs ε >= 0
        raise SystemExit(f"--log-clip must be >= 0 (log ρ is clipped to [−ε, ε]), got {args.log_clip}")
    check_run_args(args)  # TRY NOT TO MODIFY: model path, data, template, shared flags


def main(args: Args) -> dict:
    validate(args)
    run = Run(args)  # TRY NOT TO MODIFY: run directory, seeding, data, verifier (common/run.py)
    model, tokenizer = load_policy(args.model_name_or_path, args.dtype, args.device, args.gradient_checkpointing)  # fmt: skip
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if args.kl_coef > 0 else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = warmup_scheduler(optimizer, args.warmup_steps)
    sampler = make_sampler(args.rollout, model, tokenizer, gpu_memory_utilization=args.vllm_gpu_memory_utilization)  # fmt: skip
    run.start(model, tokenizer, optimizer, scheduler, sampler)  # TRY NOT TO MODIFY: resume, base evaluation
    Q, G = args.prompts_per_step, args.group_size

    for step in run.steps():  # TRY NOT TO MODIFY: progress, Ctrl-C, checkpoints, the sample budget
        # TRY NOT TO MODIFY: sample G completions for each of this step's prompts and score them
        batch, prompts = run.next_batch(Q)
        rollout = sampler.generate(prompts, G, args.max_new_tokens, args.temperature, args.top_p)
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

        run.log(step, rollout, results, rewards, stats)  # TRY NOT TO MODIFY: metrics, evaluation, completions
    return run.finish()  # TRY NOT TO MODIFY: the before/after table and plots


if __name__ == "__main__":
    main(tyro.cli(Args))

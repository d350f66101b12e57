"""Kimi k1.5: online policy mirror descent — REINFORCE with the mean baseline and a squared log-ratio penalty.

Paper: Kimi Team, "Kimi k1.5: Scaling Reinforcement Learning with LLMs", arXiv 2501.12599 (Section 2.3.2,
"Policy Optimization"). No official training code (github.com/MoonshotAI/Kimi-k1.5 holds the report). The
token-level loss as ROLL's ``kimi15`` (``roll/pipeline/rlvr/actor_pg_worker.py``, ``_compute_kimi15_loss``)
and verl 0.9.1's ``dro`` policy loss (``compute_policy_loss_dro``, ``policy_loss.dro_beta``) compute it.

Idea: each iteration i solves a relative-entropy regularised problem around the current policy π_θi,
max E_{y∼π_θ}[r] − τ KL(π_θ ‖ π_θi), whose solution satisfies r − τ log Z = τ log(π*/π_θi). The report
regresses that identity on k samples of π_θi, with τ log Z estimated by the mean reward r̄, and trains
on those samples for several gradient steps, off the policy, with no value network, no ratio and no clip:
the squared log-ratio keeps π_θ near π_θi instead.

Objective: the report, per sequence y_j (k samples of π_θi; Eq. 3's gradient):

    (1/k) Σ_j [ (r_j − r̄) ∇ log π_θ(y_j | x) − τ/2 ∇ (log π_θ(y_j | x) − log π_θi(y_j | x))² ]

here per token (π_θi is π_old, the policy before the first optimizer step on the batch; Â = r − mean(r)):

    loss_t = −Â · log π_θ(y_t) + τ/2 · (log π_θ(y_t) − log π_old(y_t))²,   summed over each sequence's tokens

At ρ = 1 (one pass, one mini-batch) the penalty and its gradient are 0: the update is REINFORCE with the
group mean as baseline (grpo.py's ``reinforce`` variant up to the aggregation).

Modification 1: 4 mini-batches per rollout batch by default: several gradient steps on π_θi's samples.
Modification 2: the loss −Â · log π + τ/2 · (log π − log π_old)² (``--kimi-tau``) replaces the clipped surrogate.
Modification 3: Â = r − mean(r) (no std) and the token sum per sequence (``seq-mean-token-sum``), as Eq. 3.

Defaults: τ = 0.1 (ROLL's ``kimi15_tau``; the report gives no value, OpenKimi's sequence-level PMD uses 0.01);
4 mini-batches per rollout batch (the report gives no count; tiny world, not tuned); grpo.py's budget and
lr 1e-4 otherwise. Paper-scale command lines: docs/methods/kimi.md.

Deviations / choices:
- The penalty is per token, τ/2 Σ_t (log ρ_t)², as ROLL and verl compute it; the report's is per sequence,
  τ/2 (Σ_t log ρ_t)² (OpenKimi's ``opmd`` loss). The policy-gradient term is the report's exactly.
- The report's length penalty (a reward term), curriculum and prioritised sampling and partial rollouts are
  not part of the loss and are not offered; ``--kl-coef`` (a k3 KL to the initial policy) stays grpo.py's.
- ROLL aggregates with its ``loss_agg_mode`` (default seq-mean-token-mean), verl with its own (token-mean by
  default): ``--loss-agg`` offers both; the default is the report's token sum.
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
    name="Kimi k1.5",
    paper="Kimi Team, Kimi k1.5: Scaling Reinforcement Learning with LLMs, arXiv 2501.12599 (Section 2.3.2)",
    arxiv="2501.12599",
    change="−Â log π + τ/2 (log π − log π_old)², Â = r − mean(r): no ratio, no clip; 4 mini-batches",
    gradient_tier=1,
    gradient_claim="at ρ = 1 (one pass, one mini-batch) equals REINFORCE with the group mean as baseline, "
    "−Â ∇log π summed over each sequence (the mean includes the sample: (G − 1)/G of the gradient); off the "
    "policy no importance weight: biased by design, the penalty bounds the drift",
    verl="verl's own `dro` with `dro_beta` = τ (parity tested)",
    contradiction=({"kimi_tau": -1.0}, "--kimi-tau must be >= 0"),
    variants={"kimi-tau0": ["--kimi-tau", "0"]},
)


@dataclass
class Args:
    # --- experiment ---
    exp_name: str = "kimi"
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
    # Modification 1 (vs GRPO): several gradient steps on π_θi's samples (4 mini-batches per rollout batch)
    num_mini_batches: int = 4
    """optimizer steps per pass: each pass splits the rollout batch into this many mini-batches"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass to save memory"""

    # --- algorithm ---
    # Modification 2 (vs GRPO): no ratio clip (no --clip-low/--clip-high); the penalty's weight instead
    kimi_tau: float = 0.1
    """τ: weight of the squared log-ratio penalty τ/2·(log π − log π_old)²"""
    kl_coef: float = 0.0
    """β: weight of the k3 KL to the initial policy, a loss term; 0 loads no reference model"""
    # Modification 3 (vs GRPO): the token sum per sequence and Â = r − mean(r), as the report's Eq. 3
    loss_agg: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = "seq-mean-token-sum"  # fmt: skip
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


# ALGO LOGIC: advantages, Kimi's loss (Modification 2 (vs GRPO)), the KL penalty and loss aggregation


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


# Modification 2 (vs GRPO): no clipped surrogate; the loss is kimi_loss's (below)
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


# Modification 2 (vs GRPO): REINFORCE's −Â·log π plus the squared log-ratio penalty, no ratio and no clip
def kimi_loss(
    logprobs: torch.Tensor,  # [B, C] log π_θ of the sampled tokens
    old_logprobs: torch.Tensor,  # [B, C] log π_old = log π_θi (detached)
    advantages: torch.Tensor,  # [B] one advantage per completion, broadcast over its tokens
    tau: float,  # τ
) -> tuple[torch.Tensor, torch.Tensor]:
    """Modification 2 (vs GRPO): Kimi k1.5's per-token loss (to minimise) −Â · log π_θ + τ/2 · (log π_θ −
    log π_old)² and the squared log-ratio (log π_θ − log π_old)² (detached, for the statistics).

    Its gradient in log π_θ is −Â + τ · log ρ: the penalty pulls a token back towards π_old in proportion
    to how far it moved. π_θ = 0.5, π_old = 0.25 (log ρ = log 2 = 0.693), Â = 1, τ = 0.1: loss 0.693 +
    0.05 · 0.480 = 0.717, gradient −1 + 0.0693 = −0.931.

    >>> loss, log_ratio_sq = kimi_loss(torch.log(torch.tensor([[0.5]])), torch.log(torch.tensor([[0.25]])), torch.tensor([1.0]), 0.1)
    >>> loss, log_ratio_sq
    (tensor([[0.7172]]), tensor([[0.4805]]))
    """
    log_ratio = logprobs - old_logprobs  # [B, C]
    per_token_loss = -advantages[:, None] * logprobs + tau / 2 * log_ratio**2
    return per_token_loss, log_ratio.detach() ** 2


# ALGO LOGIC: the policy update (the same signature in every file; callable without main())


def update_policy(model, optimizer, batch: dict, args: Args) -> dict[str, float]:
    """Update the policy on one rollout batch: ``--updates-per-batch`` passes, each split into
    ``--num-mini-batches`` optimizer steps, each accumulated over micro-batches (the micro-batch size never
    changes the gradient). ``batch``: ``rollout`` (a ``common.rollout_types.Rollout``), ``advantages [B]`` and,
    when ``--kl-coef`` > 0, ``ref_logprobs [B, C]``. Returns the update's statistics (means over its steps)."""
    rollout, advantages, ref_logprobs = batch["rollout"], batch["advantages"], batch.get("ref_logprobs")
    mask = rollout.completion_mask  # [B, C]
    B, C = mask.shape
    # Modification 2 (vs GRPO): no clip; log_ratio_sq is the mean (log π − log π_old)² the penalty acts on
    steps, stats = args.updates_per_batch * args.num_mini_batches, {"loss": 0.0, "kl": 0.0, "log_ratio_sq": 0.0}  # fmt: skip
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
                # Modification 2 (vs GRPO): Kimi's loss in place of the clipped surrogate
                per_token_loss, log_ratio_sq = kimi_loss(logprobs, old, advantages[mb], args.kimi_tau)
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
                # Modification 2 (vs GRPO): the drift the penalty acts on, in place of the clip fraction
                stats["log_ratio_sq"] += float((log_ratio_sq * mask[mb]).sum()) / num_tokens / steps
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
    if args.kimi_tau < 0:  # Modification 2 (vs GRPO): a negative τ would push π_θ away from π_old
        raise SystemExit(f"--kimi-tau must be >= 0, got {args.kimi_tau}")
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

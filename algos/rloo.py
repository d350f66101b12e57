"""RLOO: REINFORCE Leave-One-Out — each completion's baseline is the mean reward of the others in its group.

Paper: Ahmadian, Cremer, Gallé, Fadaee, Kreutzer, Pietquin, Üstün, Hooker, "Back to Basics: Revisiting
REINFORCE Style Optimization for Learning from Human Feedback in LLMs", arXiv 2402.14740 (Section 3.2).
Estimator as implemented in verl (``compute_rloo_outcome_advantage``, verl/trainer/ppo/core_algos.py).

Idea: REINFORCE with k samples per prompt, where the baseline of sample i is the average reward of the
other k − 1 samples: an unbiased baseline (it does not depend on y_i), no value network, no std
scaling. The paper argues that PPO's machinery (clipping, a critic) is unnecessary for LLM fine-tuning
and optimises the whole sequence as one action with plain REINFORCE; RLVR setups usually keep PPO-clip.

Objective (maximised; G samples per prompt):

    A_i = r_i − (1/(G−1)) Σ_{j≠i} r_j  =  G/(G−1) · (r_i − mean(r))
    --clip (default):  J(θ) = E [ agg_{i,t} min(ρ_{i,t} A_i, clip(ρ_{i,t}, 1 − ε_low, 1 + ε_high) A_i) ]
    --no-clip:         J(θ) = E [ agg_{i,t} A_i · log π_θ(o_{i,t} | q, o_{i,<t}) ]   (plain REINFORCE)

Modification 1: ``--no-clip``: plain REINFORCE, −A_i · log π_θ per token, with no ratio and no clip.
Modification 2: the leave-one-out baseline replaces the group z-score (no ``--scale-rewards``).

Defaults run the CPU demo on the tiny built-in world (``./run.sh rloo``) with grpo.py's budget (100 steps
of 16 prompts × G = 8, 80 new tokens, lr 1e-4, clip 0.2). The paper's RLHF runs used k = 2 and k = 4
samples per prompt [paper]; G = 8 here, as the other group methods of this project. Paper-scale command
lines: docs/methods/rloo.md.

Deviations / choices:
- The default keeps PPO-clip (ε = 0.2), as RLVR runs of RLOO do (verl's RLOO recipe); ``--no-clip`` is the
  paper's plain REINFORCE. REINFORCE is on-policy, so ``--no-clip`` requires one optimizer step per batch
  (``--updates-per-batch 1 --num-mini-batches 1``, validated); with one step per batch the two give the
  same gradient (ρ = 1, the clip never binds).
- The paper's REINFORCE treats the whole completion as one action (its sequence log-prob, a token sum);
  the default aggregation here is grpo.py's ``seq-mean-token-mean``. ``--loss-agg seq-mean-token-sum`` is
  the paper's sequence log-prob (``seq-mean-token-sum-norm`` the same up to the constant 1/L_max).
- G = 1 has no leave-one-out baseline: ``--group-size`` must be >= 2 (verl returns the raw score then).
- The paper's RLHF reward had a KL penalty folded in; with a rule verifier β = 0 by default, and
  ``--kl-coef`` is grpo.py's k3 loss term.
- Same as verl's estimator up to float rounding: verl computes r_i·G/(G−1) − mean·G/(G−1).
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
    name="RLOO",
    paper="Ahmadian et al., Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human "
    "Feedback in LLMs, arXiv 2402.14740 (Section 3.2)",
    arxiv="2402.14740",
    change="leave-one-out baseline, no std; PPO-clip by default (--no-clip: the paper's plain REINFORCE)",
    gradient_tier=1,
    gradient_claim="unbiased: the mean of the other samples' rewards does not depend on the sample, so "
    "E[A_i grad log pi(o_i)] is the policy gradient of E[r] (with --loss-agg seq-mean-token-sum; the "
    "default seq-mean-token-mean weights each completion's log-prob gradient by 1/|o_i|)",
    verl="yes: `rlvr_rloo` + `rlvr_clip` (equal to verl's own `rloo`, tested)",
    contradiction=({"clip": False, "updates_per_batch": 2}, "--no-clip is on-policy"),
)


@dataclass
class Args:
    # --- experiment ---
    exp_name: str = "rloo"
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
    num_mini_batches: int = 1
    """optimizer steps per pass: each pass splits the rollout batch into this many mini-batches"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass to save memory"""

    # --- algorithm ---
    # Modification 1 (vs GRPO): plain REINFORCE (the paper's form) when the clip is off
    clip: bool = True
    """PPO-clip the ratio (--clip, the RLVR default) or plain REINFORCE, A·log π_θ (--no-clip, the paper's)"""
    clip_low: float = 0.2
    """ε_low: lower clip of the ratio (1 − ε_low)"""
    clip_high: float = 0.2
    """ε_high: upper clip of the ratio (1 + ε_high)"""
    kl_coef: float = 0.0
    """β: weight of the k3 KL to the initial policy, a loss term; 0 loads no reference model"""
    loss_agg: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = "seq-mean-token-mean"  # fmt: skip
    """how per-token losses are averaged over a mini-batch (grpo.py's module docstring)"""
    # Modification 2 (vs GRPO): no --scale-rewards; the leave-one-out baseline has no std

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


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Modification 2 (vs GRPO): RLOO advantages. ``rewards [Q, G]`` (G >= 2) -> ``advantages [Q, G]``:
    A_i = r_i − mean_{j≠i} r_j, written as the leave-one-out mean, (Σ_j r_j − r_i)/(G − 1), which equals
    G/(G−1)·(r_i − mean(r)). verl: ``compute_rloo_outcome_advantage`` on outcome rewards.
    >>> rloo_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))  # baselines 0, 1/3, 1/3, 1/3
    tensor([[ 1.0000, -0.3333, -0.3333, -0.3333]])
    >>> rloo_advantages(torch.tensor([[1.0, 1.0, 1.0]]))  # a uniform group: 0
    tensor([[0., 0., 0.]])
    """
    G = rewards.shape[1]
    baseline = (rewards.sum(dim=1, keepdim=True) - rewards) / (G - 1)  # [Q, G] mean of the others
    return rewards - baseline


def clipped_surrogate(
    logprobs: torch.Tensor,  # [B, C] log π_θ of the sampled tokens
    old_logprobs: torch.Tensor,  # [B, C] log π_old (detached)
    advantages: torch.Tensor,  # [B] one advantage per completion, broadcast over its tokens
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate as a per-token loss (to minimise) and the mask of clipped tokens.

    loss = −min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A) with ρ = exp(logprobs − old_logprobs).
    With A > 0 and ρ = 1.5 (above 1.2) the clipped branch is taken and carries no gradient.

    >>> loss, clipped = clipped_surrogate(torch.log(torch.tensor([[1.5, 1.0]])), torch.zeros(1, 2), torch.tensor([2.0]), 0.2, 0.2)
    >>> loss, clipped
    (tensor([[-2.4000, -2.0000]]), tensor([[ True, False]]))
    """
    ratio = torch.exp(logprobs - old_logprobs)  # [B, C]
    adv = advantages[:, None]  # [B, 1]
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * adv
    per_token_loss = -torch.min(unclipped, clipped)  # [B, C]
    return per_token_loss, (clipped < unclipped).detach()


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


def reinforce_loss(logprobs: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """Modification 1 (vs GRPO): REINFORCE's per-token loss (to minimise), −A_i · log π_θ(o_{i,t}): no ratio,
    no clip. ``logprobs [B, C]``, ``advantages [B]`` -> ``[B, C]``. Its gradient, −A_i ∇log π_θ, equals that
    of the clipped surrogate at ρ = 1.
    >>> reinforce_loss(torch.log(torch.tensor([[0.5, 1.0]])), torch.tensor([2.0]))
    tensor([[1.3863, -0.0000]])
    """
    return -logprobs * advantages[:, None]


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
                per_token_loss, clipped = clipped_surrogate(
                    logprobs, old, advantages[mb], args.clip_low, args.clip_high
                )
                if not args.clip:  # Modification 1 (vs GRPO): plain REINFORCE, nothing clipped
                    per_token_loss = reinforce_loss(logprobs, advantages[mb])
                    clipped = torch.zeros_like(clipped)
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
    if not args.clip and args.updates_per_batch * args.num_mini_batches > 1:  # Modification 1 (vs GRPO)
        raise SystemExit(
            "--no-clip is on-policy REINFORCE: it needs one optimizer step per batch (--updates-per-batch 1 "
            "--num-mini-batches 1); use --clip for more"
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
    run.start(model, tokenizer, optimizer, scheduler, sampler)  # TRY NOT TO MODIFY: resume, base evaluation
    Q, G = args.prompts_per_step, args.group_size

    for step in run.steps():  # TRY NOT TO MODIFY: progress, Ctrl-C, checkpoints, the sample budget
        # TRY NOT TO MODIFY: sample G completions for each of this step's prompts and score them
        batch, prompts = run.next_batch(Q)
        rollout = sampler.generate(prompts, G, args.max_new_tokens, args.temperature, args.top_p)
        results, correct = run.verify(rollout, batch)
        rewards = correct.view(Q, G)  # [Q, G]

        # ALGO LOGIC: leave-one-out advantages, one per completion, then the policy update
        advantages = rloo_advantages(rewards).view(-1).to(args.device)  # [B] Modification 2 (vs GRPO)
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

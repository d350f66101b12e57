"""MaxRL: Maximum Likelihood Reinforcement Learning — group advantages divided by the group's mean reward.

Paper: Tajwar, Zeng, Zhou, Song, Arora, Jiang, Schneider, Salakhutdinov, Feng, Zanette, "Maximum Likelihood
Reinforcement Learning", arXiv 2602.02710 (Sections 4-5, Algorithm 1). Official code: github.com/tajwarfahim/maxrl
(verl's ``compute_p_normalization_outcome_advantage``, estimator name ``p_normalization``).

Idea: with a 0/1 verifier, RL maximises the pass rate p(x) while maximum likelihood maximises log p(x), whose
gradient ∇p/p weights every prompt by 1/p: hard prompts count most. log p = −Σ_{k≥1} (1 − p)^k / k; its
truncation at order T, J_T = −Σ_{k=1..T} (1 − p)^k / k, has gradient Σ_{k=1..T} (1/k) ∇pass@k: T = 1 is RL,
T → ∞ maximum likelihood. The average score of the K successes among N samples, (1/K) Σ_i r_i ∇log π(o_i)
(0 when K = 0), is unbiased for ∇J_N, so more samples per prompt make the objective itself closer to
likelihood. Subtracting the zero-mean control variate (1/N) Σ_i ∇log π(o_i) gives the advantage below.

Objective (maximised; μ = mean(r) of the group of N = G samples, ρ = π_θ / π_old per token):

    A_i = (r_i − μ) / μ   if μ > 0,   A_i = 0   if μ = 0        (N·r_i/K − 1: N/K − 1 right, −1 wrong)
    J(θ) = E_q [ agg_{i,t} min(ρ_{i,t} A_i, clip(ρ_{i,t}, 1 − ε_low, 1 + ε_high) A_i) ]

Population view (the paper's Section 6): E[∇] = w(p) ∇p with w = 1 for RL, 1/sqrt(p(1 − p)) for GRPO's std
scaling, 1/p for maximum likelihood and (1 − (1 − p)^N)/p for the conditional estimator.

Modification 1: the advantage is (r − μ)/μ per group (0 where μ = 0), replacing the z-score (no ``--scale-rewards``).
Modification 2: the loss aggregation defaults to ``token-mean`` (the paper's appendix and the official code).
Modification 3: the logged ``inverse_pass_rate``, the mean 1/μ over prompts with 0 < μ < 1.

Defaults run the CPU demo on the tiny built-in world (``./run.sh maxrl``) with grpo.py's budget and schedule
(100 steps of 16 prompts × G = 8, 80 new tokens, lr 1e-4: tiny world, not tuned): one optimizer step per
rollout batch, as the paper, which trains "fully on-policy [...] no importance ratio or associated clipping"
(its Appendix, default hyperparameters). Its runs: SmolLM2-360M on GSM8K, 128 rollouts per prompt, 256 prompts
per batch, lr 1e-5; Qwen3-1.7B/4B-Base, 16 rollouts per prompt, 256 prompts, lr 1e-6, 1000 steps [paper,
Appendix; code: smollm/smollm.sh]. Paper-scale command lines: docs/methods/maxrl.md.

Deviations / choices:
- On the policy by default, as the paper: the method is the advantage, which acts at ρ = 1 (the ratio is 1 and
  the clip never binds unless ``--updates-per-batch`` or ``--num-mini-batches`` is raised; PPO-style updates
  are the paper's future work).
- The K = 0 group gets A = 0 (both terms dropped), as the paper's Algorithm 1 and prime-rl's ``max_rl``: its
  expected gradient is then ((1 − (1 − p)^N)/p − (1 − p)^(N−1)) ∇p per prompt, the truncated likelihood's
  minus a term that vanishes as N grows (the unbiased form keeps −(1/N) Σ_i ∇log π there).
- The official code divides by (μ + 1e-6) (an earlier release, github.com/Zanette-Labs/MaxRL, also divided
  every advantage by N); the exact (r − μ)/μ here (binary rewards give μ ≥ 1/N), with no 1/N: a constant that
  Adam and the gradient clip absorb.
- Rewards must be non-negative (the verifier's 0/1); a group with μ ≤ 0 gets A = 0 (as prime-rl).
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
    name="MaxRL",
    paper="Tajwar et al., Maximum Likelihood Reinforcement Learning, arXiv 2602.02710 (Section 5, Algorithm 1)",
    arxiv="2602.02710",
    change="advantage (r - mean)/mean per group (0 where no sample is right): the 1/p weight of maximum likelihood",
    gradient_tier=1,
    gradient_claim="the truncated log-likelihood, not E[r]: (1/K) sum of the K successes' grad log pi is unbiased "
    "for grad J_N = sum_{k<=N} (1/k) grad pass@k (N = G); with the control variate dropped where K = 0 (Algorithm "
    "1), E = ((1 - (1-p)^N)/p - (1-p)^(N-1)) grad p per prompt. At rho = 1 it is grpo.py --scale-rewards none "
    "with each prompt's advantages divided by its pass rate",
    verl="yes: `rlvr_maxrl` + `rlvr_clip` (the plug-in's; stock verl has none, the authors' fork: `p_normalization`)",
    contradiction=({"group_size": 1}, "--group-size must be >= 2"),
)


@dataclass
class Args:
    # --- experiment ---
    exp_name: str = "maxrl"
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
    clip_low: float = 0.2
    """ε_low: lower clip of the ratio (1 − ε_low)"""
    clip_high: float = 0.2
    """ε_high: upper clip of the ratio (1 + ε_high)"""
    kl_coef: float = 0.0
    """β: weight of the k3 KL to the initial policy, a loss term; 0 loads no reference model"""
    # Modification 1 (vs GRPO): no --scale-rewards; the advantage is divided by the group's mean reward
    # Modification 2 (vs GRPO): token-mean is the default aggregation (the paper's appendix, the official code)
    loss_agg: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = "token-mean"  # fmt: skip
    """how per-token losses are averaged over a mini-batch (grpo.py's module docstring)"""

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


def maxrl_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Modification 1 (vs GRPO): MaxRL advantages. ``rewards [Q, G]`` (non-negative) -> ``advantages [Q, G]``:
    (r − μ)/μ with μ the group's mean reward, 0 for a group with μ ≤ 0 (no right answer: no signal).

    One right answer in four (μ = 1/4): the right one gets N/K − 1 = 3, the wrong ones −1; two in four: 1 and
    −1; none: 0. GRPO's z-scores of the first group would be 1.5 and −0.5.

    >>> maxrl_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    tensor([[ 3., -1., -1., -1.],
            [ 1.,  1., -1., -1.],
            [ 0.,  0.,  0.,  0.]])
    """
    # Modification 1 (vs GRPO): divided by the group's pass rate μ, not its std
    mean = rewards.mean(dim=1, keepdim=True)  # [Q, 1] μ
    return torch.where(mean > 0, (rewards - mean) / mean.clamp(min=torch.finfo(rewards.dtype).tiny), 0.0)


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
        advantages = maxrl_advantages(rewards).view(-1).to(args.device)  # [B] Modification 1 (vs GRPO)
        update = {"rollout": rollout, "advantages": advantages}
        if ref_model is not None:
            update["ref_logprobs"] = rollout_logprobs(ref_model, rollout, args.temperature, args.micro_batch_size)  # fmt: skip
        stats = update_policy(model, optimizer, update, args)
        pass_rate = rewards.mean(dim=1)  # Modification 3 (vs GRPO): the mean 1/μ over prompts with a signal
        stats["inverse_pass_rate"] = (
            (1 / pass_rate[(pass_rate > 0) & (pass_rate < 1)]).mean().nan_to_num().item()
        )
        scheduler.step()
        sampler.update_weights(model)  # TRY NOT TO MODIFY: the sampler must see the new weights

        run.log(step, rollout, results, rewards, stats)  # TRY NOT TO MODIFY: metrics, evaluation, completions
    return run.finish()  # TRY NOT TO MODIFY: the before/after table and plots


if __name__ == "__main__":
    main(tyro.cli(Args))

r"""BNPO: Beta Normalization Policy Optimization — the baselined reward divided by a Beta density.

Paper: Xiao, Zhang, Cao, "BNPO: Beta Normalization Policy Optimization", arXiv 2506.02864.
Official code: github.com/changyi7231/BNPO, ``recipe/bnpo`` (``compute_bnpo_outcome_advantage``).

Idea: with a binary reward R, a prompt's success probability p = E[R] differs between prompts and moves
during training. BNPO normalizes the baselined reward R − p̂ by the density of a Beta(α, β) distribution
at p̂, and picks (α, β) to minimise the variance of the policy gradient when the batch's pass rates are
themselves Beta(a, b) distributed: α = 1 + a/3, β = 1 + b/3, with (a, b) refitted to every batch by the
method of moments, so the normalization follows the policy as it improves. REINFORCE with a per-prompt
mean baseline (α = β = 1) and GRPO (α = β = 3/2, up to the constant π/8) are special cases.

Objective (maximised; p̂_q = mean_i R_{q,i}, ρ = π_θ / π_old per token):

    μ, σ² = mean and unbiased variance of {p̂_q} over the batch's Q prompts
    k = μ(1 − μ)/σ² − 1,   a = k·μ,   b = k·(1 − μ),   α = max(1 + a/3, 1),   β = max(1 + b/3, 1)
    A_{q,i} = (R_{q,i} − p̂_q) / f(p̂_q; α, β),   f(p; α, β) = p^(α−1) (1 − p)^(β−1) / B(α, β)
    L_{i,t} = min(ρ_{i,t} A_i, clip(ρ_{i,t}, 1 − ε_low, 1 + ε_high) A_i);  if A_i < 0: L = max(L, c·A_i)
    J(θ) = (1/B) Σ_i Σ_t L_{i,t}     (seq-mean-token-sum: summed over tokens, averaged over sequences)

Advantage decomposition (``--format-reward``): with K binary reward components R^(k) (here accuracy and
format), each gets its own p̂, (α_k, β_k) and BNPO advantage, and A = (1/K) Σ_k A^(k).

Defaults: the official ``recipe/bnpo/run.sh`` for the loss: ε_low 0.2, ε_high 0.28 (clip-higher),
dual-clip c = 10, ``seq-mean-token-sum``, no KL, no entropy bonus, one update per batch, accuracy reward
only (its format reward and decomposition are off). Rollout budget, length and learning rate as grpo.py
on the tiny world (100 steps of 16 prompts × G = 8, 80 new tokens, lr 1e-4). The paper:
Qwen2.5-Math-7B on MATH, 32 prompts × G = 16, lr 1e-6, T = 1, 5 epochs (README command line).

Deviations / choices:
- p̂ ∈ {0, 1}: A = 0 explicitly. The code computes 1/f clamped to [0, 1e6] and multiplies by R − p̂ = 0;
  we keep the 1e6 clamp (``max_weight``) for p̂ strictly inside (0, 1).
- Fallback α = β = 1 when σ² = 0 (every prompt has the same pass rate) [ours]: the code divides by zero
  there (NaN advantages). With one prompt the code uses μ = 0, σ² = 1, which also gives α = β = 1.
- σ² is the unbiased variance, as in the code (the GRPO equivalence above holds with the population
  std inside each group; the Beta fit is across prompts and unaffected).
- Format reward [ours]: the code's format reward is the R1 pattern ``<think>…</think><answer>…</answer>``;
  here it is "the final answer is a parseable \boxed{}" (the verifier's ``parsed``, restricted to boxed
  answers), which means the same thing under every template and dataset.
- Decomposition averages over the components that are on. The code loops over every ``*reward_tensor``
  key, so with decomposition on and its format reward off an all-zero format tensor still counts and
  halves every advantage; that cannot happen here. ``--no-advantage-decomposition`` [ours] runs BNPO
  once on the summed reward rescaled to [0, 1]: the official code has no such path (with several
  reward components it asserts that decomposition is on), so this is the project's own, by analogy
  with the code's min/max rescaling (max = K).
- The paper presents BNPO as a REINFORCE-type method; the code runs it through a PPO clip/dual-clip
  surrogate. With ``--updates-per-batch 1`` (the default, and the code's ppo_epochs 1 with mini-batch =
  batch) ρ = 1, neither clip binds, and the two coincide.
- Name clash: TRL's ``GRPOTrainer(loss_type="bnpo")`` is an unrelated loss *aggregation* (normalize by
  the active tokens of the local batch), not Beta normalization. This file is the paper's BNPO.
"""

import copy
import math
import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import tyro

from common.checkpoint import StopRequest, check_writable, load_checkpoint, resume_checkpoint, save_checkpoint
from common.data import build_prompt, load_examples
from common.evaluate import evaluate_policy
from common.model import completion_logprobs, load_policy
from common.preflight import check_run_args
from common.rollout import make_sampler
from common.tracking import Progress, Tracker, report_before_after
from common.verify import Verifier


@dataclass
class Args:
    # --- experiment ---
    exp_name: str = "bnpo"
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
    """completion length limit (also L_max of seq-mean-token-sum-norm)"""
    temperature: float = 1.0
    """sampling temperature (training and evaluation)"""
    top_p: float = 1.0
    """nucleus sampling threshold"""
    vllm_gpu_memory_utilization: float = 0.3
    """share of GPU memory vLLM may take (weights + KV cache) with --rollout vllm"""
    tis_cap: float = 0.0
    """C: weight each token's loss by min(π_old / π_sampler, C) to correct the sampler/trainer mismatch (0: off)"""

    # --- optimisation ---
    num_steps: int = 100
    """training steps (one rollout batch each)"""
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
    """optimizer steps on each rollout batch (μ in the paper); ratios equal 1 when it is 1"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass to save memory"""

    # --- algorithm ---
    clip_low: float = 0.2
    """ε_low: lower clip of the ratio (1 − ε_low)"""
    clip_high: float = 0.28  # Modification 1 (vs GRPO): clip-higher, as the official run.sh
    """ε_high: upper clip of the ratio (1 + ε_high); 0.28 is DAPO's clip-higher"""
    dual_clip: float = 10.0  # Modification 2 (vs GRPO): dual-clip PPO
    """c: for A < 0 the per-token loss is capped at −c·A (dual-clip PPO, arXiv 1912.09729); 0 turns it off"""
    kl_coef: float = 0.0
    """weight of the k3 KL to the initial policy (DeepSeekMath's β, not BNPO's); 0 loads no reference model"""
    # Modification 3 (vs GRPO): the official code's seq-mean-token-sum aggregation, and the default
    loss_agg: Literal[
        "seq-mean-token-sum", "seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"
    ] = "seq-mean-token-sum"
    """how per-token losses are averaged (see `bnpo_aggregate_loss`)"""
    # Modification 4 (vs GRPO): no --scale-rewards; the Beta density replaces the group std
    max_weight: float = 1e6
    """upper clamp of the normalization weight 1/f(p̂; α, β) (the official code's value)"""
    # Modification 5 (vs GRPO): several binary reward components
    format_reward: bool = False
    """add a binary format reward: 1 if the final answer is a parseable \\boxed{} (off in the official run.sh)"""
    advantage_decomposition: bool = True
    """with several reward components: one BNPO advantage per component, averaged; off [ours, not in the
    official code]: BNPO on their sum rescaled to [0, 1]"""

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


# ALGO LOGIC: the Beta fit, BNPO advantages, the clipped surrogate, the KL penalty and loss aggregation
# (pure functions)


# Modification 4 (vs GRPO): the advantage is (R − p̂)/f(p̂; α, β), with (α, β) fitted to the batch
def beta_params(pass_rates: torch.Tensor) -> tuple[float, float]:
    """BNPO's (α, β) from the batch's per-prompt pass rates ``[Q]``.

    Method of moments for Beta(a, b) with μ = mean and σ² = unbiased variance of the pass rates (as the
    official code): k = μ(1 − μ)/σ² − 1, a = k·μ, b = k·(1 − μ); then α = max(1 + a/3, 1),
    β = max(1 + b/3, 1). Fallback α = β = 1 (REINFORCE with a mean baseline) when Q < 2 or σ² = 0.

    >>> beta_params(torch.tensor([0.25, 0.5, 0.75]))  # μ = 0.5, σ² = 1/16, k = 3, a = b = 1.5
    (1.5, 1.5)
    >>> beta_params(torch.tensor([0.5, 0.5]))  # σ² = 0: fallback
    (1.0, 1.0)
    """
    p = pass_rates.double().flatten()  # [Q]
    if p.numel() < 2 or bool((p == p[0]).all()):  # exact test: a float σ² of equal values may be ~1e-33
        return 1.0, 1.0
    mean, var = p.mean().item(), p.var().item()  # var: unbiased (Bessel), as torch and the code
    k = mean * (1 - mean) / var - 1
    a, b = k * mean, k * (1 - mean)
    return max(1 + a / 3, 1.0), max(1 + b / 3, 1.0)


def beta_density(p: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """f(p; α, β) = p^(α−1) (1 − p)^(β−1) / B(α, β), elementwise (same shape as ``p``).

    >>> beta_density(torch.tensor([0.0, 0.5, 1.0]), 1.0, 1.0)  # uniform
    tensor([1., 1., 1.])
    >>> beta_density(torch.tensor([0.5]), 2.0, 2.0)  # 6·p·(1 − p)
    tensor([1.5000])
    """
    log_norm = math.lgamma(alpha) + math.lgamma(beta) - math.lgamma(alpha + beta)  # log B(α, β)
    q = p.double()
    log_f = (
        torch.xlogy(torch.tensor(alpha - 1.0), q) + torch.xlogy(torch.tensor(beta - 1.0), 1 - q) - log_norm
    )
    return log_f.exp().to(p.dtype)


def bnpo_advantages(
    rewards: torch.Tensor, alpha: float, beta: float, max_weight: float = 1e6
) -> torch.Tensor:
    """BNPO advantages. ``rewards [Q, G]`` in [0, 1] -> ``advantages [Q, G]``.

    A = (R − p̂)/f(p̂; α, β) with p̂ the group mean and the weight 1/f clamped to [0, max_weight];
    exactly 0 for groups with p̂ ∈ {0, 1} (where f may be 0 and R − p̂ is 0).

    >>> bnpo_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]), 1.0, 1.0)  # f ≡ 1
    tensor([[ 0.7500, -0.2500, -0.2500, -0.2500],
            [ 0.0000,  0.0000,  0.0000,  0.0000]])
    >>> bnpo_advantages(torch.tensor([[1.0, 0.0]]), 2.0, 2.0)  # f(0.5) = 1.5: ±0.5 / 1.5
    tensor([[ 0.3333, -0.3333]])
    """
    if rewards.numel() and not ((rewards >= 0).all() and (rewards <= 1).all()):
        raise ValueError("BNPO needs rewards in [0, 1] (rescale them first)")
    pass_rate = rewards.mean(dim=1, keepdim=True)  # [Q, 1]
    mixed = (pass_rate > 0) & (pass_rate < 1)  # [Q, 1]
    safe = torch.where(mixed, pass_rate, torch.full_like(pass_rate, 0.5))  # keeps 1/f finite where unused
    weight = (1 / beta_density(safe, alpha, beta)).clamp(0, max_weight)  # [Q, 1]
    return torch.where(mixed, weight * (rewards - pass_rate), torch.zeros_like(rewards))


# Modification 5 (vs GRPO): several binary reward components, one BNPO advantage each, averaged
_BOX = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")  # the verifier's box pattern (common/verify.py)


def format_rewards(completions: list[str], parsed: list[bool]) -> torch.Tensor:
    r"""Format reward ``[B]``: 1 where the final answer is a parseable ``\boxed{}``, else 0.

    ``parsed`` is the verifier's field; once a completion contains a box, the verifier reads the answer
    from its last box only, so "parsed and has a box" means "the last box is closed and not empty".

    >>> format_rewards(["so \\boxed{3}", "#### 3", "\\boxed{}"], [True, True, False])
    tensor([1., 0., 0.])
    """
    return torch.tensor([float(ok and _BOX.search(c) is not None) for c, ok in zip(completions, parsed)])


def decomposed_advantages(
    components: torch.Tensor, max_weight: float = 1e6
) -> tuple[torch.Tensor, list[tuple[float, float]]]:
    """Advantage decomposition. ``components [K, Q, G]`` binary rewards -> (``advantages [Q, G]``,
    ``[(α_k, β_k)] * K``): each component gets its own Beta fit and BNPO advantage; A = mean over k.

    >>> acc = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # pass rates [0.5, 0.5]: σ² = 0, α = β = 1, A = ±0.5
    >>> fmt = torch.ones(2, 2)  # always formatted: A = 0
    >>> decomposed_advantages(torch.stack([acc, fmt]))
    (tensor([[ 0.2500, -0.2500],
            [ 0.2500, -0.2500]]), [(1.0, 1.0), (1.0, 1.0)])
    """
    params = [beta_params(c.mean(dim=1)) for c in components]  # [(α_k, β_k)]
    advantages = torch.stack(
        [bnpo_advantages(c, a, b, max_weight) for c, (a, b) in zip(components, params)]
    )  # [K, Q, G]
    return advantages.mean(dim=0), params


def dual_clipped_surrogate(
    logprobs: torch.Tensor,  # [B, C] log π_θ of the sampled tokens
    old_logprobs: torch.Tensor,  # [B, C] log π_old (detached)
    advantages: torch.Tensor,  # [B] one advantage per completion, broadcast over its tokens
    clip_low: float,
    clip_high: float,
    dual_clip: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate as a per-token loss (to minimise) and the mask of clipped tokens.

    loss = −min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A) with ρ = exp(logprobs − old_logprobs).
    With A > 0 and ρ = 1.5 (above 1.2) the clipped branch is taken and carries no gradient.
    Dual clip (``dual_clip`` = c > 1): for A < 0 the loss is also capped at −c·A, so a sample whose ratio
    has grown huge cannot dominate the step (ρ = 20, A = −1: loss 10 instead of 20, no gradient).

    >>> loss, clipped = dual_clipped_surrogate(torch.log(torch.tensor([[1.5, 1.0]])), torch.zeros(1, 2), torch.tensor([2.0]), 0.2, 0.2)
    >>> loss, clipped
    (tensor([[-2.4000, -2.0000]]), tensor([[ True, False]]))
    >>> dual_clipped_surrogate(torch.log(torch.tensor([[20.0, 5.0]])), torch.zeros(1, 2), torch.tensor([-1.0]), 0.2, 0.28, 10.0)[0]
    tensor([[10.,  5.]])
    """
    ratio = torch.exp(logprobs - old_logprobs)  # [B, C]
    adv = advantages[:, None]  # [B, 1]
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * adv
    per_token_loss = -torch.min(unclipped, clipped)  # [B, C]
    was_clipped = clipped < unclipped
    if dual_clip > 0:  # Modification 2 (vs GRPO): dual clip for negative advantages
        cap = -dual_clip * adv  # [B, 1]
        capped = (adv < 0) & (per_token_loss > cap)
        per_token_loss = torch.where(capped, cap.expand_as(per_token_loss), per_token_loss)
        was_clipped = was_clipped | capped
    return per_token_loss, was_clipped.detach()


def truncated_is_weights(
    old_logprobs: torch.Tensor, behavior_logprobs: torch.Tensor, cap: float
) -> torch.Tensor:
    """Truncated importance weights min(π_old / π_sampler, C), detached: they correct for the sampler
    (e.g. vLLM) computing slightly different probabilities than the trainer (as TRL and verl do).

    >>> truncated_is_weights(torch.log(torch.tensor([[0.5, 0.9]])), torch.log(torch.tensor([[0.1, 0.9]])), cap=2.0)
    tensor([[2., 1.]])
    """
    return torch.exp(old_logprobs - behavior_logprobs).clamp(max=cap).detach()


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(π_θ ‖ π_ref): exp(ref − logp) − (ref − logp) − 1 (≥ 0, 0 when equal).

    >>> k3_kl(torch.tensor([0.0]), torch.tensor([0.0]))
    tensor([0.])
    """
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1


def bnpo_aggregate_loss(
    per_token_loss: torch.Tensor,  # [b, C] losses of one micro-batch
    mask: torch.Tensor,  # [b, C] completion mask
    mode: str,
    num_sequences: int,  # sequences in the WHOLE batch (all micro-batches)
    num_tokens: int,  # completion tokens in the whole batch
    max_len: int,  # L_max for seq-mean-token-sum-norm
) -> torch.Tensor:
    """Reduce per-token losses to a scalar so that summing over micro-batches gives the batch loss.

    Two sequences, losses [[1, 1, 0], [4, 0, 0]] with masks [[1, 1, 0], [1, 0, 0]]:
      seq-mean-token-sum:       ((1+1) + 4) / 2     = 3.0   (BNPO's code: no length normalization)
      seq-mean-token-mean:      ((1+1)/2 + 4/1) / 2 = 2.5
      token-mean:               (1+1+4) / 3        = 2.0
      seq-mean-token-sum-norm:  (1+1+4) / (2·3)    = 1.0   (L_max = 3)
    """
    masked = per_token_loss * mask
    if mode == "seq-mean-token-sum":  # Modification 3 (vs GRPO): sum over tokens, mean over sequences
        return masked.sum() / num_sequences
    if mode == "seq-mean-token-mean":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / num_sequences
    if mode == "token-mean":
        return masked.sum() / max(num_tokens, 1)
    if mode == "seq-mean-token-sum-norm":
        return masked.sum() / (num_sequences * max_len)
    raise ValueError(f"unknown --loss-agg {mode!r}")


# TRY NOT TO MODIFY: the training loop


def validate(args: Args) -> None:
    """Contradictory flags fail here, before anything is loaded."""
    if args.group_size < 2:
        raise SystemExit(f"--group-size must be >= 2 for a group-relative advantage, got {args.group_size}")
    if args.micro_batch_size < 1 or args.prompts_per_step < 1 or args.num_steps < 0:
        raise SystemExit("--micro-batch-size and --prompts-per-step must be >= 1 and --num-steps >= 0")
    if args.updates_per_batch < 1:
        raise SystemExit(f"--updates-per-batch must be >= 1, got {args.updates_per_batch}")
    if args.tis_cap > 0 and args.temperature == 0:
        raise SystemExit(
            "--tis-cap needs sampled behaviour log-probs; it cannot be used with --temperature 0"
        )
    if args.dual_clip != 0 and args.dual_clip <= 1:  # Modification 2 (vs GRPO)
        raise SystemExit(f"--dual-clip must be 0 (off) or > 1, got {args.dual_clip}")
    check_run_args(args)  # TRY NOT TO MODIFY: model path, data, template, shared flags


def main(args: Args) -> dict:
    validate(args)
    run_name = args.run_name or f"{args.exp_name}__{args.seed}"
    run_dir = Path(args.output_dir) / run_name
    check_writable(run_dir)
    wall_start = time.time()

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    # TRY NOT TO MODIFY: data, model, sampler, verifier
    train_examples = load_examples(
        args.dataset, "train", args.question_field, args.answer_field, seed=args.seed
    )
    eval_name = args.eval_dataset or ("math500" if args.dataset == "math" else args.dataset)
    eval_examples = load_examples(
        eval_name, "test", args.question_field, args.answer_field, limit=args.eval_problems
    )
    model, tokenizer = load_policy(
        args.model_name_or_path, args.dtype, args.device, args.gradient_checkpointing
    )
    ref_model = None
    if args.kl_coef > 0:
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, args.warmup_steps))
    )
    sampler = make_sampler(
        args.rollout, model, tokenizer, gpu_memory_utilization=args.vllm_gpu_memory_utilization
    )
    verifier = Verifier()

    def evaluate(n: int, desc: str) -> dict:
        return evaluate_policy(
            model, tokenizer, eval_examples, n=n, template=args.template, max_new_tokens=args.max_new_tokens,
            temperature=args.temperature, top_p=args.top_p, sampler=sampler, verifier=verifier, desc=desc,
        )  # fmt: skip

    # TRY NOT TO MODIFY: resume
    start_step, extra = 0, {}
    if ckpt := resume_checkpoint(run_dir, args.resume):  # None: a fresh run
        state = load_checkpoint(ckpt, model, optimizer, scheduler)
        start_step, extra = state["step"], state["extra"]
        sampler.update_weights(model)
        print(f"resumed from {ckpt} (step {start_step})")
    tracker = Tracker(
        run_dir, asdict(args), args.track, args.wandb_project, run_name, start_step if ckpt else None
    )
    if "base_eval" not in extra:
        extra["base_eval"] = evaluate(args.eval_n, "eval base")
        extra["elapsed"] = extra["base_wall_time"] = time.time() - wall_start
        tracker.log(0, {f"eval/pass@{k}": v for k, v in extra["base_eval"]["curve"].items()})
    elapsed_before = extra["elapsed"]
    session_start = time.time()
    Q, G = args.prompts_per_step, args.group_size

    progress = Progress(args.num_steps - start_step, desc="train")
    with StopRequest() as stop:
        for step in range(start_step + 1, args.num_steps + 1):
            step_start = time.time()
            # TRY NOT TO MODIFY: pick this step's prompts (a fresh permutation every epoch, so resume is exact)
            epoch, offset = divmod((step - 1) * Q, len(train_examples))
            order = torch.randperm(
                len(train_examples), generator=torch.Generator().manual_seed(args.seed + epoch)
            )
            batch = [train_examples[i] for i in order.roll(-offset)[:Q].tolist()]
            prompts = [build_prompt(e.question, args.template, tokenizer) for e in batch]

            # TRY NOT TO MODIFY: sample G completions per prompt and score them
            rollout = sampler.generate(prompts, G, args.max_new_tokens, args.temperature, args.top_p)
            results = verifier.verify_batch(rollout.completions, [e.answer for e in batch for _ in range(G)])
            rewards = torch.tensor([float(r.correct) for r in results]).view(Q, G)  # [Q, G]

            # ALGO LOGIC: BNPO advantages, one per completion
            # Modification 5 (vs GRPO): the reward components (accuracy, optionally format)
            components = [rewards]  # K x [Q, G]
            if args.format_reward:
                format_reward = format_rewards(rollout.completions, [r.parsed for r in results]).view(Q, G)
                components.append(format_reward)
            if not args.advantage_decomposition:
                components = [sum(components) / len(components)]  # one reward, rescaled to [0, 1]
            # Modification 4 (vs GRPO): (R − p̂)/f(p̂; α, β), (α, β) fitted to this batch's pass rates
            advantages, beta_fits = decomposed_advantages(torch.stack(components), args.max_weight)
            advantages = advantages.view(-1).to(args.device)  # [B]

            # ALGO LOGIC: the policy update (PPO-clip surrogate + optional KL), in micro-batches
            mask = rollout.completion_mask  # [B, C]
            B, C = mask.shape
            num_tokens = int(mask.sum())
            micro_batches = [slice(i, i + args.micro_batch_size) for i in range(0, B, args.micro_batch_size)]
            old_logprobs = ref_logprobs = None
            if args.updates_per_batch > 1 or args.kl_coef > 0:
                with torch.no_grad():
                    if args.updates_per_batch > 1:
                        old_logprobs = torch.cat([completion_logprobs(model, rollout.input_ids[mb], rollout.attention_mask[mb], C, args.temperature)[0] for mb in micro_batches])  # fmt: skip
                    if ref_model is not None:
                        ref_logprobs = torch.cat([completion_logprobs(ref_model, rollout.input_ids[mb], rollout.attention_mask[mb], C, args.temperature)[0] for mb in micro_batches])  # fmt: skip
            model.train()
            stats = {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "entropy": 0.0, "logprob_mismatch": 0.0}
            for update in range(args.updates_per_batch):
                for mb in micro_batches:
                    logprobs, entropy = completion_logprobs(
                        model,
                        rollout.input_ids[mb],
                        rollout.attention_mask[mb],
                        C,
                        args.temperature,
                        with_entropy=True,
                    )  # [b, C] each
                    old = old_logprobs[mb] if old_logprobs is not None else logprobs.detach()
                    per_token_loss, clipped = dual_clipped_surrogate(  # Modification 2 (vs GRPO): dual clip
                        logprobs, old, advantages[mb], args.clip_low, args.clip_high, args.dual_clip
                    )
                    if args.tis_cap > 0:  # sampler/trainer mismatch correction
                        per_token_loss = per_token_loss * truncated_is_weights(
                            old, rollout.behavior_logprobs[mb], args.tis_cap
                        )
                    if ref_logprobs is not None:
                        kl = k3_kl(logprobs, ref_logprobs[mb])  # [b, C]
                        per_token_loss = per_token_loss + args.kl_coef * kl
                        stats["kl"] += float((kl * mask[mb]).sum()) / num_tokens / args.updates_per_batch
                    loss = bnpo_aggregate_loss(
                        per_token_loss, mask[mb], args.loss_agg, B, num_tokens, args.max_new_tokens
                    )
                    loss.backward()
                    stats["loss"] += loss.item() / args.updates_per_batch
                    stats["clip_frac"] += (
                        float((clipped * mask[mb]).sum()) / num_tokens / args.updates_per_batch
                    )
                    if update == 0:
                        stats["entropy"] += float((entropy * mask[mb]).sum()) / num_tokens
                        gap = (logprobs.detach() - rollout.behavior_logprobs[mb]).abs()
                        stats["logprob_mismatch"] += float((gap * mask[mb]).sum()) / num_tokens
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            sampler.update_weights(model)  # TRY NOT TO MODIFY: the sampler must see the new weights

            # TRY NOT TO MODIFY: logging
            lengths = mask.sum(-1)
            metrics = {
                "reward_mean": rewards.mean().item(),
                "accuracy": rewards.mean().item(),
                "unparsed_frac": 1 - sum(r.parsed for r in results) / len(results),
                "zero_std_frac": (rewards.std(dim=1) == 0).float().mean().item(),
                "completion_len_mean": lengths.mean().item(),
                "completion_len_max": lengths.max().item(),
                "truncated_frac": rollout.truncated.float().mean().item(),
                "grad_norm": float(grad_norm),
                "lr": scheduler.get_last_lr()[0],
                "step_time": time.time() - step_start,
                "samples_per_s": B / (time.time() - step_start),
                **stats,
            }
            # Modification 6 (vs GRPO): log the Beta fit of every component, every step
            names = ["accuracy", "format"] if args.advantage_decomposition else ["reward"]
            for name, (alpha, beta) in zip(names, beta_fits):
                suffix = "" if name == names[0] else f"_{name}"
                metrics.update({f"alpha{suffix}": alpha, f"beta{suffix}": beta})
            metrics["pass_rate_var"] = (
                rewards.mean(dim=1).var().item() if Q > 1 else 0.0
            )  # σ² of the accuracy fit
            metrics["adv_abs_max"] = advantages.abs().max().item()
            if args.format_reward:
                metrics["format_reward_mean"] = format_reward.mean().item()
            if step == args.num_steps:  # the final evaluation, with the full n
                extra["final_eval"] = evaluate(args.eval_n, "eval final")
                metrics.update({f"eval/pass@{k}": v for k, v in extra["final_eval"]["curve"].items()})
            elif args.eval_every and step % args.eval_every == 0:
                ev = evaluate(max(1, args.eval_n // 2), f"eval step {step}")
                metrics.update({f"eval/pass@{k}": v for k, v in ev["curve"].items()})
            tracker.log(step, metrics)
            if args.log_completions_every and step % args.log_completions_every == 0:
                tracker.log_completions(step, [
                    {"prompt": prompts[i // G], "completion": rollout.completions[i], "answer": results[i].answer,
                     "gold": batch[i // G].answer, "reward": rewards.view(-1)[i].item()}
                    for i in range(0, B, G)
                ])  # fmt: skip
            progress.update(1, reward=metrics["reward_mean"], len=metrics["completion_len_mean"])

            # TRY NOT TO MODIFY: checkpoint (periodically, at the end, and when asked to stop)
            extra["elapsed"] = elapsed_before + time.time() - session_start
            if step % args.save_every == 0 or step == args.num_steps or stop.requested:
                save_checkpoint(run_dir, step, model, optimizer, scheduler, extra, args.keep_last, tokenizer)
            if stop.requested:
                progress.close()
                print(f"Stopped after step {step}. Resume with the same command plus --resume.")
                tracker.close()
                verifier.close()
                raise SystemExit(130)
    progress.close()

    # TRY NOT TO MODIFY: before/after table, plots
    final_eval = extra.get("final_eval") or evaluate(args.eval_n, "eval final")
    total_time = elapsed_before + time.time() - session_start
    report_before_after(
        tracker, args.exp_name, args.num_steps, extra["base_eval"], final_eval, eval_name,
        extra["base_wall_time"], total_time,
    )  # fmt: skip
    tracker.close()
    verifier.close()
    return {"base": extra["base_eval"], "final": final_eval, "run_dir": str(run_dir)}


if __name__ == "__main__":
    main(tyro.cli(Args))

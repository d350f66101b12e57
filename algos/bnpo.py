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

Modification 1: clip-higher (ε_high = 0.28) by default, as the official run
Modification 2: dual-clip PPO: for A < 0 the per-token loss is capped at −c·A
Modification 3: the official seq-mean-token-sum aggregation by default
Modification 4: the advantage (R − p̂)/f(p̂; α, β), (α, β) fitted to every batch, replaces the group z-score
Modification 5: several binary reward components (accuracy, optionally format), one BNPO advantage each
Modification 6: the Beta fit of every component is logged every step

Defaults: the official ``recipe/bnpo/run.sh`` for the loss: ε_low 0.2, ε_high 0.28 (clip-higher),
dual-clip c = 10, ``seq-mean-token-sum``, no KL, no entropy bonus, one update per batch, accuracy reward
only (its format reward and decomposition are off); ``--max-weight 1e6`` is the official clamp of 1/f.
``--kl-coef`` is grpo.py's k3 penalty (DeepSeekMath's β), not BNPO's β. Rollout budget, length and
learning rate as grpo.py on the tiny world (100 steps of 16 prompts × G = 8, 80 new tokens, lr 1e-4).
The paper: Qwen2.5-Math-7B on MATH, 32 prompts × G = 16, lr 1e-6, T = 1, 5 epochs (the command line of
docs/methods/bnpo.md).

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
  surrogate. With one pass and one mini-batch (the default, and the code's ppo_epochs 1 with mini-batch =
  batch) ρ = 1, neither clip binds, and the two coincide.
- ``reward_mean`` is the accuracy reward; with ``--format-reward`` the format reward is logged as
  ``format_reward_mean``.
- Name clash: TRL's ``GRPOTrainer(loss_type="bnpo")`` is an unrelated loss *aggregation* (normalize by
  the active tokens of the local batch), not Beta normalization. This file is the paper's BNPO.
"""

import copy
import math
import re
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
    name="BNPO",
    paper="Xiao, Zhang, Cao, BNPO: Beta Normalization Policy Optimization, arXiv 2506.02864",
    arxiv="2506.02864",
    change="advantage (R − p̂)/f(p̂; α, β): a Beta density, refitted to every batch's pass rates; dual clip",
    gradient_tier=1,
    gradient_claim="biased by design: each prompt's advantage is divided by the Beta density at its own "
    "group's pass rate, with (α, β) fitted to the batch (a reweighting of prompts, like GRPO's 1/std); at "
    "α = β = 1 it is REINFORCE with the group mean (which includes the sample): (G - 1)/G of the gradient",
    verl="yes, accuracy reward only: `rlvr_bnpo` + `rlvr_bnpo`",
    contradiction=({"dual_clip": 0.5}, "--dual-clip must be 0 (off) or > 1"),
    compare_default=True,
)


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
    clip_high: float = 0.28  # Modification 1 (vs GRPO): clip-higher, as the official run.sh
    """ε_high: upper clip of the ratio (1 + ε_high)"""
    dual_clip: float = 10.0  # Modification 2 (vs GRPO): dual-clip PPO
    """c: for A < 0 the per-token loss is capped at −c·A (dual-clip PPO, arXiv 1912.09729); 0 turns it off"""
    kl_coef: float = 0.0
    """β: weight of the k3 KL to the initial policy, a loss term; 0 loads no reference model"""
    # Modification 3 (vs GRPO): the official code's seq-mean-token-sum aggregation by default
    loss_agg: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = "seq-mean-token-sum"  # fmt: skip
    """how per-token losses are averaged over a mini-batch (grpo.py's module docstring)"""
    # Modification 4 (vs GRPO): no --scale-rewards; the Beta density replaces the group std
    max_weight: float = 1e6
    """upper clamp of the normalization weight 1/f(p̂; α, β)"""
    # Modification 5 (vs GRPO): several binary reward components
    format_reward: bool = False
    """add a binary format reward: 1 if the final answer is a parseable \\boxed{}"""
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


# ALGO LOGIC: advantages, the clipped surrogate, the KL penalty and loss aggregation (pure functions)


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
    r"""Modification 5 (vs GRPO): format reward ``[B]``, 1 where the final answer is a parseable ``\boxed{}``.
    ``parsed`` is the verifier's field; once a completion contains a box, the verifier reads the answer
    from its last box only, so "parsed and has a box" means "the last box is closed and not empty".
    >>> format_rewards(["so \\boxed{3}", "#### 3", "\\boxed{}"], [True, True, False])
    tensor([1., 0., 0.])
    """
    return torch.tensor([float(ok and _BOX.search(c) is not None) for c, ok in zip(completions, parsed)])


def decomposed_advantages(
    components: torch.Tensor, max_weight: float = 1e6
) -> tuple[torch.Tensor, list[tuple[float, float]]]:
    """Modification 5 (vs GRPO): advantage decomposition. ``components [K, Q, G]`` binary rewards ->
    (``advantages [Q, G]``, ``[(α_k, β_k)] * K``): each component gets its own Beta fit and BNPO advantage;
    A = mean over k.
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


# Modification 2 (vs GRPO): the dual clip, on top of PPO's clipped surrogate
def dual_clipped_surrogate(
    logprobs: torch.Tensor,  # [B, C] log π_θ of the sampled tokens
    old_logprobs: torch.Tensor,  # [B, C] log π_old (detached)
    advantages: torch.Tensor,  # [B] one advantage per completion, broadcast over its tokens
    clip_low: float,
    clip_high: float,
    dual_clip: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``clipped_surrogate`` with the dual clip (``dual_clip`` = c > 1; 0: off): for A < 0 the per-token loss
    is also capped at −c·A, so a sample whose ratio has grown huge cannot dominate the step (ρ = 20, A = −1:
    loss 10 instead of 20, no gradient). Returns the loss and the mask of clipped or capped tokens.

    >>> ratios, advantage = torch.tensor([[20.0, 5.0]]), torch.tensor([-1.0])
    >>> loss, clipped = dual_clipped_surrogate(torch.log(ratios), torch.zeros(1, 2), advantage, 0.2, 0.28, 10.0)
    >>> loss, clipped
    (tensor([[10.,  5.]]), tensor([[ True, False]]))
    """
    per_token_loss, clipped = clipped_surrogate(logprobs, old_logprobs, advantages, clip_low, clip_high)
    if dual_clip > 0:
        cap = -dual_clip * advantages[:, None]  # [B, 1]: −c·A
        capped = (advantages[:, None] < 0) & (per_token_loss > cap)  # [B, C]
        per_token_loss = torch.where(capped, cap.expand_as(per_token_loss), per_token_loss)
        clipped = clipped | capped.detach()
    return per_token_loss, clipped


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
                per_token_loss, clipped = dual_clipped_surrogate(  # Modification 2 (vs GRPO): the dual clip
                    logprobs, old, advantages[mb], args.clip_low, args.clip_high, args.dual_clip
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
    if args.dual_clip != 0 and args.dual_clip <= 1:  # Modification 2 (vs GRPO)
        raise SystemExit(f"--dual-clip must be 0 (off) or > 1, got {args.dual_clip}")
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

        # ALGO LOGIC: BNPO advantages, one per completion, then the policy update
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
        update = {"rollout": rollout, "advantages": advantages}
        if ref_model is not None:
            update["ref_logprobs"] = rollout_logprobs(ref_model, rollout, args.temperature, args.micro_batch_size)  # fmt: skip
        stats = update_policy(model, optimizer, update, args)
        # Modification 6 (vs GRPO): the Beta fit of every component, every step
        names = ["", "_format"] if args.advantage_decomposition else [""]
        for suffix, (alpha, beta) in zip(names, beta_fits):
            stats.update({f"alpha{suffix}": alpha, f"beta{suffix}": beta})
        stats["pass_rate_var"] = rewards.mean(dim=1).var().item() if Q > 1 else 0.0  # σ² of the accuracy fit
        stats["adv_abs_max"] = advantages.abs().max().item()
        if args.format_reward:
            stats["format_reward_mean"] = format_reward.mean().item()
        scheduler.step()
        sampler.update_weights(model)  # TRY NOT TO MODIFY: the sampler must see the new weights

        run.log(step, rollout, results, rewards, stats)  # TRY NOT TO MODIFY: metrics, evaluation, completions
    return run.finish()  # TRY NOT TO MODIFY: the before/after table and plots


if __name__ == "__main__":
    main(tyro.cli(Args))

"""REINFORCE++: REINFORCE with PPO's tricks — a per-token KL reward, returns, and batch-whitened advantages.

Paper: Hu, "REINFORCE++: An Efficient RLHF Algorithm with Robustness to Both Prompt and Reward Models"
(first title: "A Simple and Efficient Approach for Aligning Large Language Models"), arXiv 2501.03262.
Official code: OpenRLHF (``--advantage_estimator reinforce`` and ``reinforce_baseline``); the estimators as
implemented in verl: ``compute_reinforce_plus_plus_outcome_advantage`` and
``compute_reinforce_plus_plus_baseline_outcome_advantage`` (verl/trainer/ppo/core_algos.py).

Idea: no critic and no per-prompt group normalisation. The KL to the reference policy is folded into a
per-token reward, the verifier's reward is added on the completion's last token, each token's return is
the (γ = 1) sum of the rewards from that token on, and the advantages are these returns whitened over
the WHOLE batch (mean and std over every valid token), which the paper argues is more robust than
normalising inside each prompt's group. The update is PPO's clipped surrogate. ``--baseline group``
(REINFORCE++-baseline, for several samples per prompt) subtracts each prompt's mean reward first, then
whitens over the batch; its KL is a k3 loss term (``--kl-coef``, as grpo.py's), as verl and OpenRLHF run it.

Objective (maximised; ρ = π_θ / π_old per token, T_i = last token of completion i):

    --baseline none:   r_{i,t} = −β (log π_old(o_{i,t}) − log π_ref(o_{i,t})) + [t = T_i] · r_i
                       (β: --kl-reward-coef)
                       R_{i,t} = Σ_{s ≥ t} γ^(s−t) r_{i,s}
    --baseline group:  R_{i,t} = r_i − mean_j r_j  (over the prompt's G completions), for every t
    A_{i,t} = (R_{i,t} − mean(R)) / sqrt(var(R) + 1e-8)   (masked mean and unbiased var over all valid tokens)
    J(θ) = E [ agg_{i,t} min(ρ_{i,t} A_{i,t}, clip(ρ_{i,t}, 1 − ε_low, 1 + ε_high) A_{i,t}) ]
           (− β · KL_k3(π_θ ‖ π_ref) as a loss term with --baseline group, β: --kl-coef)

Modification 1: the KL to the reference folded into every token's reward (``--kl-reward-coef``).
Modification 2: returns (or group-centred rewards) whitened over all valid tokens of the batch, no group std.
Modification 3: one advantage per token in the clipped surrogate.

Defaults run the CPU demo on the tiny built-in world (``./run.sh reinforce_pp``) with grpo.py's budget
(100 steps of 16 prompts × G = 8, 80 new tokens, lr 1e-4, clip 0.2). ``--kl-reward-coef`` β = 0.01 is
OpenRLHF's default ``--init_kl_coef`` with its default ``--kl_estimator k1`` (openrlhf/cli/train_ppo_ray.py);
``--kl-coef`` is 0 (grpo.py's default; OpenRLHF's REINFORCE++-baseline example script runs ``--use_kl_loss``
with ``--init_kl_coef 1e-3``); ``--gamma`` 1 as the paper, OpenRLHF and verl (``algorithm.gamma``). [The
paper's own β and batch sizes: not checked.] Paper-scale command lines: docs/methods/reinforce_pp.md.

Deviations / choices:
- Whitening: unbiased masked variance and rsqrt(var + 1e-8), as verl's ``masked_whiten``; the masked mean
  here divides by the exact token count (verl adds 1e-8 to it, a ~1e-8 relative difference) and one valid
  token does not raise (verl raises): its variance divisor is clamped at 1.
- Returns assume each completion mask is a prefix of its row (every batch here is); verl 0.9.1 carries a
  return through a hole in the mask (multi-turn observation tokens), ``token_returns`` stops at it. On
  prefix masks the two are equal (integrations/verl/checks.py).
- The KL reward uses the trainer's log-probs of π_old (computed before the update, as verl's
  ``old_log_prob``), not the sampler's. An empty completion has no token to carry its reward (verl's
  index −1 would put it on the last padding position); with no token it has no gradient either way.
- Each mode refuses the other mode's KL flag (``--kl-coef`` with ``--baseline none``, ``--kl-reward-coef``
  with ``--baseline group``): so ``--baseline group`` takes ``--kl-reward-coef 0``.
- With G samples per prompt and ``--baseline none`` the G samples are simply a batch of Q·G (the paper's
  REINFORCE++ samples one per prompt); ``--group-size`` must still be >= 2 because the loop logs group
  statistics, so G = 8 keeps the other scripts' sample budget.
- Loss aggregation is grpo.py's ``seq-mean-token-mean`` by default (``--loss-agg token-mean`` is verl's
  actor default). With one pass and one mini-batch ρ = 1 and the clip never binds (as in grpo.py).
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
    name="REINFORCE++",
    paper="Hu, REINFORCE++: An Efficient RLHF Algorithm with Robustness to Both Prompt and Reward Models, "
    "arXiv 2501.03262",
    arxiv="2501.03262",
    change="KL folded into per-token rewards, returns, whitened over the batch (--baseline group: -baseline)",
    gradient_tier=1,
    gradient_claim="biased by design: whitening subtracts a batch mean that includes the sample and divides "
    "by a batch std (one global scale, no per-prompt reweighting); --baseline group's per-prompt mean "
    "includes the sample ((G - 1)/G, as Dr. GRPO)",
    verl="yes: `rlvr_reinforce_pp` / `rlvr_reinforce_pp_baseline` + `rlvr_reinforce_pp` (verl's own, tested)",
    contradiction=({"kl_coef": 0.01}, "--kl-coef is the k3 loss term of --baseline group"),
)


@dataclass
class Args:
    # --- experiment ---
    exp_name: str = "reinforce_pp"
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
    # Modification 1 (vs GRPO): the KL to the reference is a per-token reward (β = 0.01, OpenRLHF's default)
    kl_reward_coef: float = 0.01
    """β: KL to the reference folded into every token's reward, −β (log π_old − log π_ref); 0 loads no reference model"""
    loss_agg: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = "seq-mean-token-mean"  # fmt: skip
    """how per-token losses are averaged over a mini-batch (grpo.py's module docstring)"""
    # Modification 2 (vs GRPO): returns whitened over the whole batch replace the per-group std
    baseline: Literal["none", "group"] = "none"
    """none: REINFORCE++ (returns of the KL-folded token rewards); group: REINFORCE++-baseline (the reward
    minus its prompt's mean reward), both then whitened over all valid tokens of the batch"""
    gamma: float = 1.0
    """γ: discount of the per-token rewards in the returns (1: no discount)"""

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


# Modification 1 (vs GRPO): the KL folded into a per-token reward
def kl_folded_rewards(
    rewards: torch.Tensor,  # [B] outcome reward of each completion
    kl: torch.Tensor,  # [B, C] per-token k1 = log π_old − log π_ref
    mask: torch.Tensor,  # [B, C] completion mask (a prefix of each row)
    beta: float,
) -> torch.Tensor:
    """Per-token rewards ``[B, C]``: −β·kl on every valid token plus the outcome reward on the last one.

    verl: ``token_level_scores`` (the score on the last response token) minus β·kld·mask in
    ``apply_kl_penalty`` with ``kl_penalty="kl"``.

    >>> kl = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]])
    >>> kl_folded_rewards(torch.tensor([1.0, 0.0]), kl, torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]), 0.1)
    tensor([[-0.1000, -0.2000,  0.7000],
            [-0.0500, -0.0500,  0.0000]])
    """
    token_rewards = -beta * kl * mask  # [B, C]
    last = (mask.sum(-1).long() - 1).clamp(min=0)  # [B] index of the last valid token
    outcome = torch.zeros_like(token_rewards).scatter(
        1, last[:, None], rewards[:, None].to(token_rewards.dtype)
    )
    return token_rewards + outcome * mask


# Modification 2 (vs GRPO): returns, and advantages whitened over every valid token of the batch
def token_returns(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Returns ``[B, C]``: R_t = Σ_{s ≥ t} γ^(s−t) r_s over the valid tokens of each row (0 elsewhere).

    >>> token_returns(torch.tensor([[-0.1, -0.2, 0.7], [-0.05, -0.05, 0.0]]), torch.tensor([[1.0, 1, 1], [1, 1, 0]]))
    tensor([[ 0.4000,  0.5000,  0.7000],
            [-0.1000, -0.0500,  0.0000]])
    """
    returns = torch.zeros_like(token_rewards)  # [B, C]
    running = torch.zeros_like(token_rewards[:, 0])  # [B]
    for t in reversed(range(token_rewards.shape[1])):
        running = (token_rewards[:, t] + gamma * running) * mask[:, t]
        returns[:, t] = running
    return returns


# Modification 2 (vs GRPO): the whitening over every valid token of the batch (verl's masked_whiten)
def masked_whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(values − mean)·rsqrt(var + eps) over the valid tokens (mean and unbiased var over ALL of them),
    0 on the others. ``values [B, C]``, ``mask [B, C]`` -> ``[B, C]``.

    >>> masked_whiten(torch.tensor([[1.0, 2.0, 9.0], [3.0, 0.0, 0.0]]), torch.tensor([[1.0, 1, 0], [1, 0, 0]]))
    tensor([[-1.,  0.,  0.],
            [ 1.,  0.,  0.]])
    """
    count = mask.sum()
    mean = (values * mask).sum() / count.clamp(min=1)
    var = (((values - mean) * mask) ** 2).sum() / (count - 1).clamp(min=1)  # unbiased, as verl
    return torch.where(mask.bool(), (values - mean) * torch.rsqrt(var + eps), torch.zeros_like(values))


def reinforce_pp_advantages(
    token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0
) -> torch.Tensor:
    """Modification 2 (vs GRPO): REINFORCE++ advantages ``[B, C]``: the returns of ``token_rewards [B, C]``,
    whitened over the batch. verl: ``compute_reinforce_plus_plus_outcome_advantage``.
    >>> reinforce_pp_advantages(torch.tensor([[0.0, 1.0], [0.0, 0.0]]), torch.ones(2, 2))  # returns [[1, 1], [0, 0]]
    tensor([[ 0.8660,  0.8660],
            [-0.8660, -0.8660]])
    """
    return masked_whiten(token_returns(token_rewards, mask, gamma), mask)


def reinforce_pp_baseline_advantages(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Modification 2 (vs GRPO): REINFORCE++-baseline advantages ``[B, C]`` (B = Q·G): the reward minus its
    group mean, on every valid token, whitened over the batch. ``rewards [Q, G]``, ``mask [B, C]``.
    verl: ``compute_reinforce_plus_plus_baseline_outcome_advantage``.
    >>> reinforce_pp_baseline_advantages(torch.tensor([[1.0, 0.0]]), torch.ones(2, 2))  # ±0.5, std 0.577
    tensor([[ 0.8660,  0.8660],
            [-0.8660, -0.8660]])
    """
    centered = (rewards - rewards.mean(dim=1, keepdim=True)).reshape(-1, 1)  # [B, 1]
    return masked_whiten(centered.to(torch.get_default_dtype()) * mask, mask)


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
    when ``--kl-coef`` > 0, ``ref_logprobs [B, C]``. Returns the update's statistics (means over its steps).
    Modification 3 (vs GRPO): ``advantages`` are ``[B, C]``, one per token; ``old_logprobs [B, C]`` optional."""
    rollout, advantages, ref_logprobs = batch["rollout"], batch["advantages"], batch.get("ref_logprobs")
    mask = rollout.completion_mask  # [B, C]
    B, C = mask.shape
    steps, stats = args.updates_per_batch * args.num_mini_batches, {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0}
    # π_old: the trainer's log-probs before the first optimizer step, needed once the ratio can leave 1
    needs_old = steps > 1 or args.rollout_is != "none" or args.rollout_rs != "none"
    # Modification 1 (vs GRPO): main() computes π_old for the KL reward (--baseline none) and passes it here
    old_logprobs = batch.get("old_logprobs")
    if old_logprobs is None and needs_old:
        old_logprobs = rollout_logprobs(model, rollout, args.temperature, args.micro_batch_size)
    weights, stats_rc = rollout_correction(old_logprobs, rollout.behavior_logprobs, mask, advantages, args)
    model.train()
    total_tokens = mask.sum().item()
    for update in range(args.updates_per_batch):
        for rows in torch.arange(B).tensor_split(args.num_mini_batches):  # one optimizer step each
            num_tokens = int(mask[rows].sum())
            for mb in rows.split(args.micro_batch_size):
                logprobs, entropy = completion_logprobs(model, rollout.input_ids[mb], rollout.attention_mask[mb], C, args.temperature, with_entropy=True)  # fmt: skip
                old = old_logprobs[mb] if old_logprobs is not None else logprobs.detach()
                # Modification 3 (vs GRPO): one advantage per token (each token as a row of length 1)
                per_token_loss, clipped = clipped_surrogate(logprobs.reshape(-1, 1), old.reshape(-1, 1), advantages[mb].reshape(-1), args.clip_low, args.clip_high)  # fmt: skip
                per_token_loss, clipped = per_token_loss.view_as(logprobs), clipped.view_as(logprobs)
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
    # Modification 1 (vs GRPO): two KL weights, each β >= 0, and each mode refuses the other's
    for flag, beta in (("--kl-coef", args.kl_coef), ("--kl-reward-coef", args.kl_reward_coef)):
        if beta < 0:
            raise SystemExit(f"{flag} must be >= 0, got {beta}")
    if args.baseline == "none" and args.kl_coef > 0:
        raise SystemExit(
            "--kl-coef is the k3 loss term of --baseline group; --baseline none folds the KL into the token "
            "rewards: use --kl-reward-coef"
        )
    if args.baseline == "group" and args.kl_reward_coef > 0:
        raise SystemExit(
            f"--kl-reward-coef {args.kl_reward_coef} folds the KL into the token rewards of --baseline none; "
            "--baseline group takes its KL as the k3 loss term: pass --kl-reward-coef 0 (and --kl-coef β)"
        )
    if not 0 < args.gamma <= 1:  # Modification 2 (vs GRPO)
        raise SystemExit(f"--gamma must be in (0, 1], got {args.gamma}")
    check_run_args(args)  # TRY NOT TO MODIFY: model path, data, template, shared flags


def main(args: Args) -> dict:
    validate(args)
    run = Run(args)  # TRY NOT TO MODIFY: run directory, seeding, data, verifier (common/run.py)
    model, tokenizer = load_policy(args.model_name_or_path, args.dtype, args.device, args.gradient_checkpointing)  # fmt: skip
    # Modification 1 (vs GRPO): a reference model for either KL (validate() lets at most one be > 0)
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if args.kl_coef + args.kl_reward_coef > 0 else None  # fmt: skip
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

        # ALGO LOGIC: REINFORCE++ advantages, one per token, then the policy update
        # Modification 2 (vs GRPO): returns (or group-centred rewards) whitened over the whole batch
        mask, update = rollout.completion_mask, {"rollout": rollout}  # mask [B, C]
        if args.baseline == "group":
            update["advantages"] = reinforce_pp_baseline_advantages(rewards.to(args.device), mask)  # [B, C]
            if ref_model is not None:  # the k3 loss term, as grpo.py's
                update["ref_logprobs"] = rollout_logprobs(ref_model, rollout, args.temperature, args.micro_batch_size)  # fmt: skip
        else:  # Modification 1 (vs GRPO): the KL in the token rewards, k1 = log π_old − log π_ref
            kl = torch.zeros_like(mask)  # [B, C]
            if ref_model is not None:
                update["old_logprobs"] = rollout_logprobs(model, rollout, args.temperature, args.micro_batch_size)  # fmt: skip
                kl = update["old_logprobs"] - rollout_logprobs(ref_model, rollout, args.temperature, args.micro_batch_size)  # fmt: skip
            token_rewards = kl_folded_rewards(rewards.view(-1).to(args.device), kl, mask, args.kl_reward_coef)
            update["advantages"] = reinforce_pp_advantages(token_rewards, mask, args.gamma)  # [B, C]
        stats = update_policy(model, optimizer, update, args)
        if args.baseline == "none" and ref_model is not None:  # Modification 1 (vs GRPO): the reward's KL
            stats["kl"] = float((kl * mask).sum() / mask.sum())
        scheduler.step()
        sampler.update_weights(model)  # TRY NOT TO MODIFY: the sampler must see the new weights

        run.log(step, rollout, results, rewards, stats)  # TRY NOT TO MODIFY: metrics, evaluation, completions
    return run.finish()  # TRY NOT TO MODIFY: the before/after table and plots


if __name__ == "__main__":
    main(tyro.cli(Args))

"""Prefix-RFT: one rollout per group continues a demonstration prefix — SFT and RL blended in one update.

Paper: Huang et al., "Blending Supervised and Reinforcement Fine-Tuning with Prefix Sampling",
arXiv 2507.01679. Official code: github.com/ZeroYuHuang/prefix_rft (``recipe/prefix_rft/core_algos.py``
``compute_dr_grpo_prefix_outcome_advantage``, ``dp_actor.py`` entropy reshaper, ``rl_dataset.py``
``_get_prefix``, ``scheduler/global_step.py`` ``CosineDecayController``).

Idea: of the G rollouts of a prompt, G − 1 are ordinary samples and the last is a *hybrid*: the first
k tokens of a demonstration y* (here ``Example.solution``: the tiny world's slip-free worked solution,
a dataset's reference solution on real data) followed by the policy's own continuation. The prefix
tokens are trained like SFT tokens, but only the 20% where the policy is least sure (highest entropy),
and the prefix gets shorter over training (a cosine schedule), handing the problem back to the policy.

Prefix length at step s of T: low_s = low_T + ½(1 + cos(π s / T))(low_0 − low_T), l ~ U[low_s, high],
k = min(⌊l · |y*|⌋, |y*| − 1), with low_0 = 0.95, low_T = 0.05, high = 0.95 (paper); y* ends with EOS.

Advantages (Dr. GRPO, no std; official groups are keyed by (prompt, prefix id), r̄ = mean of the G − 1
on-policy rewards, 0 when there is only one: a group of one has mean 0 in the official code):
    on-policy tokens            A = r_i − r̄
    hybrid continuation tokens  A = r_h − 0        (a singleton group)
    hybrid prefix tokens        A = (r_h − r̄) / 1  (divided by the hybrids per prompt, 1 here)
then the lowest-entropy 80% of the batch's prefix tokens get A = 0 (entropy under π_old, ranked over the
whole batch), and the loss is grpo.py's PPO-clip with the dual clip (c = 3) and Dr. GRPO's
``seq-mean-token-sum-norm`` aggregation. A hybrid with k = 0 is an ordinary sample (prefix length 0 is
exactly Dr. GRPO).

Modification 1: Dr. GRPO's aggregation (no --scale-rewards), the flags of the prefix schedule and the mask
Modification 2: the dual clip (c = 3, the official code's verl default)
Modification 3: the prefix schedule, the hybrid's advantages and the entropy mask (pure functions)
Modification 4: the entropy mask ranks the batch's prefix tokens under π_old; the sampler gap skips the prefix
Modification 5: the update takes one advantage per token, each token a row of grpo.py's surrogate
Modification 6: validate() checks the schedule and refuses the rollout correction (the prefix was not sampled)
Modification 7: main() needs a demonstration per problem, samples G − 1 + 1 hybrid, and logs the schedule

Defaults run the CPU demo on the tiny world (G = 8: 7 on-policy + 1 hybrid, as the paper; the rest is
grpo.py's tiny-world setting, not tuned). Paper: Qwen2.5-Math-7B, LUFFY's OpenR1 subset with DeepSeek-R1
demonstrations, 8 rollouts, temperature 1.0, lr 1e-6, clip 0.2, dual clip 3 (verl's ``clip_ratio_c``,
which the official code keeps), entropy coefficient 0.001, 500 steps; entropy mask ratio 0.8 (keep 0.2).

Deviations / choices:
- The prefix is cut from the demonstration's TOKENS (``tokenizer(solution) + EOS``) and the hybrid is
  generated from prompt tokens + prefix tokens (``sampler.generate(..., prefix_ids=...)``), so the trained
  tokens are exactly the sampled context; the official code cuts the tokens too but then re-joins the
  prefix as text, which a BPE tokenizer may re-split differently.
- The hybrid's continuation may add up to ``--max-new-tokens`` after its prefix (the official code cuts the
  whole response to the response length); L_max of the loss stays ``--max-new-tokens``.
- The entropy mask ranks the prefix tokens of the whole rollout batch by their entropy under π_old (one
  no-gradient pass before the update), so the micro-batch size never changes the gradient; the official
  actor ranks within each micro-batch under the current π_θ (the same values on the first pass over one
  mini-batch, a different ranking).
- No separate clip range for prefix tokens and no entropy bonus (one pass: ratios are 1, so neither clip
  acts); the official minimum prefix length is not used. The prefix tokens' behaviour log-probs are 0
  (given, not sampled), so ``--rollout-is``/``--rollout-rs`` do not apply to them (refused) and
  ``logprob_mismatch`` is the mean over the sampled tokens only.
- ``grpo_advantages`` is kept unchanged from grpo.py but unused by the loop: the tests check that a
  prefix length of 0 gives exactly its Dr. GRPO advantages.
"""

import copy
import dataclasses
import math
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
    name="Prefix-RFT",
    paper="Huang et al., Blending Supervised and Reinforcement Fine-Tuning with Prefix Sampling, "
    "arXiv 2507.01679",
    arxiv="2507.01679",
    change="one rollout per group continues a demonstration prefix; its top-20%-entropy prefix tokens train",
    gradient_tier=3,
    gradient_claim="no exact form: the demonstration prefixes are auxiliary data, not samples of the policy, "
    "and their tokens are kept by an entropy rank; with prefix length 0 it is Dr. GRPO exactly",
    verl="no (prefix rollouts)",
    contradiction=({"group_size": 1}, "--group-size must be >= 2"),
)


@dataclass
class Args:
    # --- experiment ---
    exp_name: str = "prefix_rft"
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
    # Modification 1 (vs GRPO): Dr. GRPO's aggregation (no --scale-rewards), the prefix schedule, the mask
    loss_agg: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = "seq-mean-token-sum-norm"  # fmt: skip
    """how per-token losses are averaged over a mini-batch (grpo.py's module docstring)"""
    prefix_low_start: float = 0.95
    """low_0: the lower end of the prefix fraction's range at step 0 (paper)"""
    prefix_low_end: float = 0.05
    """low_T: the lower end after the cosine decay (paper)"""
    prefix_high: float = 0.95
    """the upper end of the prefix fraction's range (paper); 0 turns the hybrid into an ordinary sample"""
    schedule_steps: int = 0
    """T: steps of the cosine decay (0: --num-steps)"""
    entropy_keep: float = 0.2
    """share of prefix tokens trained: the highest-entropy ones (official entropy mask ratio 0.8)"""
    # Modification 2 (vs GRPO): the dual clip, as the official code (verl's clip_ratio_c)
    dual_clip: float = 3.0
    """c: for A < 0 the per-token loss is capped at −c·A (dual-clip PPO, arXiv 1912.09729); 0 turns it off"""

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


# Modification 2 (vs GRPO): the dual clip


def dual_clip_cap(
    per_token_loss: torch.Tensor,  # [B, C] the clipped surrogate's per-token loss
    advantages: torch.Tensor,  # [B] one advantage per row, broadcast over its tokens
    dual_clip: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Modification 2 (vs GRPO): dual-clip PPO (Ye et al., arXiv 1912.09729) on the clipped surrogate's
    loss: for A < 0 the per-token loss is capped at −c·A (c = ``dual_clip``; 0 turns it off), so a token
    whose ratio has grown huge cannot dominate the step; a capped token carries no gradient. Returns the
    loss and the mask of capped tokens. A = −1, c = 10: ρ = 20 (loss 20) is capped at 10, ρ = 5 is not.
    >>> dual_clip_cap(torch.tensor([[20.0, 5.0]]), torch.tensor([-1.0]), 10.0)
    (tensor([[10.,  5.]]), tensor([[ True, False]]))
    """
    cap = -dual_clip * advantages[:, None]  # [B, 1]
    capped = (advantages[:, None] < 0) & (per_token_loss > cap) & (dual_clip > 0)  # [B, C]
    return torch.where(capped, cap, per_token_loss), capped.detach()


# Modification 3 (vs GRPO): the prefix schedule, the hybrid's advantages and the entropy mask


def prefix_low(step: int, total_steps: int, start: float = 0.95, end: float = 0.05) -> float:
    """Modification 3 (vs GRPO): cosine decay of the prefix fraction's lower end: ``start`` at step 0,
    ``end`` from ``total_steps`` on.

    >>> [round(prefix_low(s, 10), 4) for s in (0, 5, 10, 20)]
    [0.95, 0.5, 0.05, 0.05]
    """
    progress = min(step, total_steps) / max(total_steps, 1)
    return end + 0.5 * (1 + math.cos(math.pi * progress)) * (start - end)


def prefix_length(fraction: float, demo_len: int) -> int:
    """Modification 3 (vs GRPO): k = min(⌊fraction · |y*|⌋, |y*| − 1): the hybrid always leaves at least
    one token to the policy.

    >>> [prefix_length(f, 10) for f in (0.0, 0.05, 0.55, 0.95, 1.0)]
    [0, 0, 5, 9, 9]
    """
    return max(0, min(math.floor(fraction * demo_len), demo_len - 1))


def prefix_rft_advantages(
    rewards: torch.Tensor,  # [Q, G] the last column is the hybrid
    prefix_lengths: torch.Tensor,  # [Q] prefix tokens of each group's hybrid (0: an ordinary sample)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Modification 3 (vs GRPO): sequence advantages ``[Q, G]`` (for every non-prefix token) and the prefix
    tokens' advantage ``[Q]``.
    With a prefix: on-policy A = r − r̄ (r̄ over the G − 1 on-policy samples; 0 when G = 2, the official
    code's mean of a group of one), the hybrid's continuation A = r_h, its prefix A = r_h − r̄. Without
    (k = 0): Dr. GRPO, A = r − mean of all G.
    >>> prefix_rft_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 1.0]]), torch.tensor([5, 0]))
    (tensor([[ 0.6667, -0.3333, -0.3333,  1.0000],
            [ 0.5000, -0.5000, -0.5000,  0.5000]]), tensor([0.6667, 0.5000]))
    >>> prefix_rft_advantages(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([3, 3]))  # G = 2: r̄ = 0
    (tensor([[1., 0.],
            [0., 1.]]), tensor([0., 1.]))
    """
    has_prefix = (prefix_lengths > 0)[:, None]  # [Q, 1]
    on_policy = rewards[:, :-1]  # [Q, G − 1]
    on_policy_mean = (
        on_policy.mean(dim=1, keepdim=True) if on_policy.shape[1] > 1 else 0 * on_policy
    )  # [Q, 1]
    baseline = torch.where(has_prefix, on_policy_mean, rewards.mean(dim=1, keepdim=True))  # [Q, 1]
    advantages = rewards - baseline  # [Q, G]
    advantages[:, -1] = torch.where(has_prefix[:, 0], rewards[:, -1], advantages[:, -1])  # singleton: mean 0
    prefix_advantages = rewards[:, -1] - baseline[:, 0]  # [Q] (r_h − r̄) / 1 hybrid per prompt
    return advantages, prefix_advantages


def entropy_keep_mask(entropy: torch.Tensor, prefix_mask: torch.Tensor, keep: float = 0.2) -> torch.Tensor:
    """Modification 3 (vs GRPO): which tokens keep their advantage: every non-prefix token, and the
    highest-entropy prefix tokens. Of the N prefix tokens the lowest-entropy ⌊(1 − keep) · N⌋ are dropped
    (official ``split_point``). ``entropy, prefix_mask [B, C]`` (the whole batch) -> ``[B, C]`` bool.
    >>> entropy_keep_mask(torch.tensor([[0.1, 0.9, 0.5, 0.3, 0.7, 0.2]]), torch.tensor([[1, 1, 1, 1, 1, 0]]).bool(), 0.2)
    tensor([[False,  True, False, False, False,  True]])
    """
    prefix_mask = prefix_mask.bool()
    prefix_entropy = entropy[prefix_mask].detach()  # [N]
    num_dropped = int(len(prefix_entropy) * round(1 - keep, 9))
    dropped = torch.zeros_like(prefix_entropy, dtype=torch.bool)
    dropped[torch.argsort(prefix_entropy)[:num_dropped]] = True
    keep_mask = torch.ones_like(prefix_mask)
    keep_mask[prefix_mask] = ~dropped
    return keep_mask


# Modification 4 (vs GRPO): π_old's log-probs and entropies of the whole batch (what the entropy mask ranks)
@torch.no_grad()
def old_logprobs_and_entropy(model, rollout, temperature: float, micro_batch_size: int):
    """Modification 4 (vs GRPO): ``[B, C]`` log-probs and entropies of a rollout's completion tokens under
    ``model`` before the update (no gradient), in micro-batches."""
    C = rollout.completion_ids.shape[1]
    parts = [
        completion_logprobs(
            model, rollout.input_ids[mb], rollout.attention_mask[mb], C, temperature, with_entropy=True
        )
        for mb in torch.arange(rollout.completion_ids.shape[0]).split(micro_batch_size)
    ]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


# ALGO LOGIC: the policy update (the same signature in every file; callable without main())


def update_policy(model, optimizer, batch: dict, args: Args) -> dict[str, float]:
    """Update the policy on one rollout batch: ``--updates-per-batch`` passes, each split into
    ``--num-mini-batches`` optimizer steps, each accumulated over micro-batches (the micro-batch size never
    changes the gradient). ``batch``: ``rollout`` (a ``common.rollout_types.Rollout``), ``advantages [B, C]``
    (Modification 5 (vs GRPO): one per token), ``prefix_mask [B, C]`` (the given prefix tokens) and, when
    ``--kl-coef`` > 0, ``ref_logprobs [B, C]``. Returns the update's statistics (means over its steps)."""
    rollout, advantages, ref_logprobs = batch["rollout"], batch["advantages"], batch.get("ref_logprobs")
    mask = rollout.completion_mask  # [B, C]
    B, C = mask.shape
    steps, stats = args.updates_per_batch * args.num_mini_batches, {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0}
    # Modification 4 (vs GRPO): π_old and its entropy in one pass; the mask ranks the batch's prefix tokens
    prefix_mask = batch["prefix_mask"]  # [B, C]
    old_logprobs, old_entropy = old_logprobs_and_entropy(
        model, rollout, args.temperature, args.micro_batch_size
    )
    keep = entropy_keep_mask(old_entropy, prefix_mask, args.entropy_keep)  # [B, C]
    advantages = torch.where(keep, advantages, torch.zeros_like(advantages))  # [B, C]
    stats["prefix_kept_frac"] = float((keep & prefix_mask).sum()) / max(1, int(prefix_mask.sum()))
    sampled = dataclasses.replace(rollout, completion_mask=mask * ~prefix_mask)  # the tokens the sampler drew
    gap = sampler_gap(old_logprobs, sampled, slice(None))  # logprob_mismatch over them only
    stats.update({key: value / max(1, int(sampled.completion_mask.sum())) for key, value in gap.items()})
    weights, stats_rc = rollout_correction(old_logprobs, rollout.behavior_logprobs, mask, advantages, args)
    model.train()
    total_tokens = mask.sum().item()
    for update in range(args.updates_per_batch):
        for rows in torch.arange(B).tensor_split(args.num_mini_batches):  # one optimizer step each
            num_tokens = int(mask[rows].sum())
            for mb in rows.split(args.micro_batch_size):
                logprobs, entropy = completion_logprobs(model, rollout.input_ids[mb], rollout.attention_mask[mb], C, args.temperature, with_entropy=True)  # fmt: skip
                old = old_logprobs[mb] if old_logprobs is not None else logprobs.detach()
                # Modification 5 (vs GRPO): each token a row of the shared surrogate, with its own advantage
                adv = advantages[mb].reshape(-1)  # [b·C]
                per_token_loss, clipped = clipped_surrogate(
                    logprobs.reshape(-1, 1), old.reshape(-1, 1), adv, args.clip_low, args.clip_high
                )
                # Modification 2 (vs GRPO): the dual clip; a capped token counts as clipped
                per_token_loss, capped = dual_clip_cap(per_token_loss, adv, args.dual_clip)
                per_token_loss, clipped = (
                    per_token_loss.view_as(logprobs),
                    (clipped | capped).view_as(logprobs),
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
                if (
                    update == 0
                ):  # the first pass: the policy's entropy (Modification 4 (vs GRPO): the gap is above)
                    sums = {"entropy": float((entropy * mask[mb]).sum())}
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
    # Modification 6 (vs GRPO): the schedule's flags; no rollout correction for the given prefix tokens
    if not 0 <= args.prefix_low_end <= args.prefix_low_start <= 1 or not 0 <= args.prefix_high <= 1:
        raise SystemExit(
            "need 0 <= --prefix-low-end <= --prefix-low-start <= 1 and 0 <= --prefix-high <= 1, got "
            f"{args.prefix_low_end}, {args.prefix_low_start}, {args.prefix_high}"
        )
    if args.prefix_high < args.prefix_low_start and args.prefix_high > 0:
        raise SystemExit(
            f"--prefix-high {args.prefix_high} is below --prefix-low-start {args.prefix_low_start}: "
            "U[low, high] is empty"
        )
    if not 0 < args.entropy_keep <= 1:
        raise SystemExit(f"--entropy-keep must be in (0, 1], got {args.entropy_keep}")
    if args.schedule_steps < 0:
        raise SystemExit(f"--schedule-steps must be >= 0, got {args.schedule_steps}")
    if args.rollout_is != "none" or args.rollout_rs != "none":
        raise SystemExit(
            "--rollout-is/--rollout-rs cannot be used: the demonstration prefix has no sampler log-probs"
        )
    check_run_args(args)  # TRY NOT TO MODIFY: model path, data, template, shared flags


def main(args: Args) -> dict:
    validate(args)
    run = Run(args)  # TRY NOT TO MODIFY: run directory, seeding, data, verifier (common/run.py)
    # Modification 7 (vs GRPO): every training problem needs its demonstration y* (Example.solution)
    if missing := [e.source or str(i) for i, e in enumerate(run.train_examples) if not e.solution]:
        raise SystemExit(
            f"--dataset {args.dataset}: {len(missing)} training rows have no solution (first: {missing[0]}); "
            "Prefix-RFT needs a demonstration per problem"
        )
    model, tokenizer = load_policy(args.model_name_or_path, args.dtype, args.device, args.gradient_checkpointing)  # fmt: skip
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if args.kl_coef > 0 else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = warmup_scheduler(optimizer, args.warmup_steps)
    sampler = make_sampler(args.rollout, model, tokenizer, gpu_memory_utilization=args.vllm_gpu_memory_utilization)  # fmt: skip
    run.start(model, tokenizer, optimizer, scheduler, sampler)  # TRY NOT TO MODIFY: resume, base evaluation
    Q, G = args.prompts_per_step, args.group_size

    for step in run.steps():  # TRY NOT TO MODIFY: progress, Ctrl-C, checkpoints, the sample budget
        batch, prompts = run.next_batch(Q)  # TRY NOT TO MODIFY: this step's prompts
        # ALGO LOGIC: Modification 7 (vs GRPO): G − 1 samples per prompt, one hybrid continuing a demo prefix
        low = prefix_low(
            step - 1, args.schedule_steps or args.num_steps, args.prefix_low_start, args.prefix_low_end
        )
        draws = torch.rand(Q, generator=torch.Generator().manual_seed(args.seed * 1_000_003 + step))  # [Q]
        fractions = low + (args.prefix_high - low) * draws if args.prefix_high > 0 else torch.zeros(Q)  # [Q]
        demos = [tokenizer(e.solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for e in batch]  # fmt: skip
        prefixes = [d[: prefix_length(float(f), len(d))] for d, f in zip(demos, fractions)]  # [Q] token ids
        row_prefixes = [
            prefixes[i // G] if i % G == G - 1 else [] for i in range(Q * G)
        ]  # [B]: last of a group
        rows = [p for p in prompts for _ in range(G)]
        rollout = sampler.generate(rows, 1, args.max_new_tokens, args.temperature, args.top_p, prefix_ids=row_prefixes)  # fmt: skip
        rollout.group_index = torch.arange(Q, device=rollout.group_index.device).repeat_interleave(G)
        results, correct = run.verify(rollout, batch)
        rewards = correct.view(Q, G)  # [Q, G]
        # Modification 7 (vs GRPO): token-level advantages, the hybrid's prefix and continuation apart
        seq_advantages, prefix_advantages = prefix_rft_advantages(
            rewards, torch.tensor([len(x) for x in prefixes])
        )
        C = rollout.completion_mask.shape[1]
        prefix_mask = (
            torch.arange(C)[None, :] < torch.tensor([len(x) for x in row_prefixes])[:, None]
        )  # [B, C]
        advantages = torch.where(prefix_mask, prefix_advantages.repeat_interleave(G)[:, None], seq_advantages.view(-1)[:, None])  # fmt: skip
        update = {"rollout": rollout, "advantages": advantages.to(args.device), "prefix_mask": prefix_mask.to(args.device)}  # fmt: skip
        if ref_model is not None:
            update["ref_logprobs"] = rollout_logprobs(ref_model, rollout, args.temperature, args.micro_batch_size)  # fmt: skip
        stats = update_policy(model, optimizer, update, args)
        scheduler.step()
        sampler.update_weights(model)  # TRY NOT TO MODIFY: the sampler must see the new weights

        # Modification 7 (vs GRPO): the schedule and the hybrids
        stats.update(
            prefix_low=low,
            prefix_frac_mean=float(sum(len(x) / len(d) for x, d in zip(prefixes, demos)) / Q),
            hybrid_reward=rewards[:, -1].mean().item(),
            on_policy_reward=rewards[:, :-1].mean().item(),
        )
        run.log(step, rollout, results, rewards, stats)  # TRY NOT TO MODIFY: metrics, evaluation, completions
    return run.finish()  # TRY NOT TO MODIFY: the before/after table and plots


if __name__ == "__main__":
    main(tyro.cli(Args))

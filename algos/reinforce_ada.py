"""Reinforce-Ada: adaptive multi-round sampling that spends rollouts where the learning signal is.

Paper: Xiong et al., "Reinforce-Ada: An Adaptive Sampling Framework for Reinforce-Style LLM Training",
arXiv 2510.04996. Official code: RLHFlow/Reinforce-Ada (a verl fork:
``verl/trainer/ppo/ray_trainer.py::_generate_multi_round_adaptive_downsampling``, the global-statistics
branch of ``core_algos.py::compute_grpo_outcome_advantage``, ``scripts/run_reinforce_ada.sh``).

Idea: with a small group (n = 4) many prompts get all-correct or all-wrong groups, whose advantages are 0:
no signal (GRPO's "signal collapse"). More samples would often reveal a mix. Reinforce-Ada samples in
rounds: each round draws M more completions for every prompt still *active*, and a prompt leaves as soon
as its pool holds enough signal (successive elimination). Its final group of n is down-sampled from the
pool, class-balanced; the baseline is the mean reward of the whole pool, with no std.

Sampling (rounds k = 1..N; a completion is positive if its reward > 0.7):
    balanced exit:  a prompt leaves once its pool has ≥ n/2 positives and ≥ n − n/2 negatives
    positive exit:  a prompt leaves once its pool has ≥ 1 positive
    down-sampling:  keep min(n/2, #pos) positives and min(n − that, #neg) negatives (the first ones drawn),
                    then fill up to n from the class with more left
    fallback:       prompts still active after N rounds keep what their pool holds the same way
                    (``positive``: ceil(n·#pos/#seen) positives, at least 1 and at most n − 1, as the code)

Objective (minimised; A_i = r_i − #pos/#seen over the WHOLE pool of that prompt, no std; ρ = π_θ/π_old):

    ℓ_{i,t} = −min(ρ_{i,t} A_i, clip(ρ_{i,t}, 1 − 0.2, 1 + 0.28) A_i), capped at −c·A_i when A_i < 0
    L(θ) = token-mean_{i,t} ℓ_{i,t}                                       (dual clip c = 10, no KL)

Modification 1: 8 prompts per step, n = 4 kept per prompt, and the rounds' flags (N, M, the exit rule)
Modification 2: clip-higher (ε_high 0.28), the dual clip (c = 10) and token-mean, as the official script
Modification 3: no --scale-rewards: the advantage is never divided by a std
Modification 4: the exit rules, the class-balanced down-sampling and the pool-mean advantage
Modification 5: multi-round sampling with successive elimination (``adaptive_rollout``)
Modification 6: validate() refuses sampling flags that cannot fill a group of n
Modification 7: main() samples in rounds, takes the pool-mean advantage and logs the rounds

Defaults (``scripts/run_reinforce_ada.sh`` and ``ppo_trainer.yaml`` of the official code): n = 4
(``rollout.n``), N = 4 rounds (``max_rounds``), M = 8 per round (``round_repeat``), threshold 0.7,
``balanced`` (``positive`` is the official ``positive_focused``), ``global_stat_est=True``,
``norm_adv_by_std_in_grpo=False``, token-mean, clip [0.2, 0.28] (ε_high 0.28), dual clip c = 10
(``clip_ratio_c=10.0``), no KL, lr 1e-6 with 10 warm-up steps, 512 prompts in mini-batches of 128, max
response 2048, temperature 1.0, entropy coefficient 0 (the paper: 1e-4) and 400 steps (the paper: 600).
The tiny world uses 8 prompts per step and grpo.py's learning rate (not tuned).

Deviations / choices:
- ``--group-size`` (n) must be ≤ ``--round-repeat`` (M), so after round 1 every pool holds ≥ n samples and
  every final group has exactly n rows (the official code allows fewer rows and warns).
- Pools of one sample get baseline 0, as the official code; with M ≥ n ≥ 2 it never happens here.
- The rewards are 0/1, so #pos/#seen is the pool's mean reward, as in the official code (which reconstructs
  it from the counts).
- ``accuracy`` and ``reward_mean`` are those of the kept groups (about 0.5 by design);
  ``first_round_accuracy`` is the share of right answers among every prompt's first M samples, an unbiased
  on-policy success rate (the official ``critic/real_reward``).
- ``samples_generated`` counts every completion sampled in the step, all rounds: ``--max-samples`` budgets
  them.
- One optimizer step per batch by default, where the official script makes 4 (mini-batches of 128 of 512
  prompts): with one the ratio is 1 and neither the clip nor the dual clip acts; ``--num-mini-batches 4``
  gives the official ratio.
"""

import copy
import math
from dataclasses import dataclass
from typing import Literal

import torch
import tyro

from common.model import completion_logprobs, load_policy, rollout_logprobs
from common.preflight import check_run_args
from common.registry import MethodInfo
from common.rollout import concat_rollouts, make_sampler
from common.rollout_correction import rollout_correction
from common.rollout_types import sampler_gap
from common.run import Run, warmup_scheduler

METHOD = MethodInfo(
    name="Reinforce-Ada",
    paper="Xiong et al., Reinforce-Ada: An Adaptive Sampling Framework for Reinforce-Style LLM Training, "
    "arXiv 2510.04996",
    arxiv="2510.04996",
    change="samples in rounds until a prompt's pool has both outcomes; keeps n, class-balanced; pool mean",
    gradient_tier=2,
    gradient_claim="biased by design: the rounds and the class-balanced down-sampling depend on the "
    "outcomes, so the kept group is not an on-policy sample of n; the baseline is the mean of the whole "
    "pool (kept samples included)",
    verl="no (multi-round sampling loop)",
    contradiction=({"rounds": 0}, "--rounds must be >= 1"),
)


@dataclass
class Args:
    # --- experiment ---
    exp_name: str = "reinforce_ada"
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
    # Modification 1 (vs GRPO): 8 prompts of n = 4 kept completions each, sampled in rounds
    prompts_per_step: int = 8
    """prompts per training step"""
    group_size: int = 4
    """G: completions sampled per prompt"""
    rounds: int = 4
    """N: maximum sampling rounds of Reinforce-Ada"""
    round_repeat: int = 8
    """M: completions drawn per prompt still sampled, in each round"""
    exit_rule: Literal["balanced", "positive"] = "balanced"
    """when a prompt leaves the rounds: balanced (≥ n/2 of each class) or positive (≥ 1 positive)"""
    positive_threshold: float = 0.7
    """a completion is positive if its reward is above this"""
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
    # Modification 2 (vs GRPO): clip-higher and the dual clip, as the official script
    clip_high: float = 0.28
    """ε_high: upper clip of the ratio (1 + ε_high)"""
    dual_clip: float = 10.0
    """c: for A < 0 the per-token loss is capped at −c·A (dual-clip PPO, arXiv 1912.09729); 0 turns it off"""
    kl_coef: float = 0.0
    """β: weight of the k3 KL to the initial policy, a loss term; 0 loads no reference model"""
    # Modification 2 (vs GRPO): token-mean, as the official script
    loss_agg: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = "token-mean"  # fmt: skip
    """how per-token losses are averaged over a mini-batch (grpo.py's module docstring)"""
    # Modification 3 (vs GRPO): no --scale-rewards: the pool-mean advantage is never divided by a std

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


# ALGO LOGIC: the clipped surrogate, the KL penalty and loss aggregation (pure functions)
# Modification 4 (vs GRPO): no grpo_advantages; the pool-mean advantage is below, with the down-sampling


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


# Modification 4 (vs GRPO): the exit rules, the class-balanced down-sampling and the pool-mean advantage


def exit_reached(num_positive: int, num_negative: int, n: int, exit_rule: str) -> bool:
    """Modification 4 (vs GRPO): whether a prompt's pool holds enough signal to stop sampling it.

    >>> exit_reached(2, 2, 4, "balanced"), exit_reached(3, 1, 4, "balanced"), exit_reached(1, 0, 4, "positive")
    (True, False, True)
    """
    if exit_rule == "balanced":
        return num_positive >= n // 2 and num_negative >= n - n // 2
    if exit_rule == "positive":
        return num_positive >= 1
    raise ValueError(f"unknown --exit-rule {exit_rule!r}")


def downsample_counts(
    num_positive: int, num_negative: int, n: int, exit_rule: str, exited: bool
) -> tuple[int, int]:
    """Modification 4 (vs GRPO): how many positives and negatives of a pool the final group keeps (≤ n).

    Aim for n/2 of each; if a class is short, fill from the other. A ``positive``-rule prompt that never
    exited (the fallback) aims for ceil(n·#pos/#seen) positives, clamped to [1, n − 1], as the official code.

    >>> downsample_counts(1, 31, 4, "balanced", exited=False)  # 1 positive in 32: [1 pos, 3 neg]
    (1, 3)
    >>> downsample_counts(6, 2, 4, "balanced", exited=True), downsample_counts(0, 32, 4, "positive", exited=False)
    ((2, 2), (0, 4))
    """
    P, N = num_positive, num_negative
    take = min(n, P + N)
    if exit_rule == "positive" and not exited:
        target = max(min(math.ceil(n * P / max(P + N, 1)), take - 1), 1)
        keep_positive, keep_negative = min(P, target), min(N, take - target)
    else:
        keep_positive = min(P, n // 2)
        keep_negative = min(N, take - keep_positive)
    short = take - keep_positive - keep_negative  # one class is short: fill from the other, positives first
    if short > 0 and keep_positive < P:
        keep_positive += min(P - keep_positive, short)
    elif short > 0:
        keep_negative += min(N - keep_negative, short)
    return keep_positive, keep_negative


def pool_mean_advantages(
    rewards: torch.Tensor,  # [...] rewards of the kept completions
    pool_positives: torch.Tensor,  # [...] positives in the whole pool of each row's prompt
    pool_sizes: torch.Tensor,  # [...] samples in that pool (all rounds)
) -> torch.Tensor:
    """Modification 4 (vs GRPO): A_i = r_i − #pos/#seen of the prompt's whole pool, no std (a pool of one
    sample: baseline 0).

    >>> pool_mean_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([1] * 4), torch.tensor([32] * 4))
    tensor([ 0.9688, -0.0312, -0.0312, -0.0312])
    """
    baseline = torch.where(pool_sizes > 1, pool_positives / pool_sizes.clamp(min=1), 0.0)
    return rewards - baseline.to(rewards.dtype)


# Modification 5 (vs GRPO): multi-round sampling with successive elimination, then class-balanced
# down-sampling


def adaptive_rollout(sampler, verifier, prompts, golds, args, pad_id):
    """Modification 5 (vs GRPO): sample in rounds until each prompt exits (or N rounds pass), keep n
    completions per prompt.

    Returns the final ``Rollout`` (n rows per prompt, grouped by prompt, token data from whichever round
    drew them), ``rewards [Q, n]``, their verifier results, and the pools' statistics: ``positives [Q]``
    and ``seen [Q]`` (all rounds), ``rounds [Q]`` sampled in, ``exited [Q]`` and ``first_rewards [Q, M]``.
    """
    Q, n, M = len(prompts), args.group_size, args.round_repeat
    pools = [{"pos": [], "neg": []} for _ in range(Q)]  # (round, row) of every sample, in drawing order
    exited, keep, rounds = [False] * Q, [None] * Q, [0] * Q
    parts, first_rewards = [], None
    for round_index in range(args.rounds):
        active = [q for q in range(Q) if not exited[q]]
        if not active:
            break
        part = sampler.generate(
            [prompts[q] for q in active], M, args.max_new_tokens, args.temperature, args.top_p
        )
        results = verifier.verify_batch(part.completions, [golds[q] for q in active for _ in range(M)])
        rewards = torch.tensor([float(r.correct) for r in results])  # [len(active) * M]
        if round_index == 0:
            first_rewards = rewards.view(Q, M)
        parts.append((part, rewards, results))
        for j, q in enumerate(active):
            rounds[q] += 1
            for row in range(j * M, (j + 1) * M):
                pools[q]["pos" if rewards[row] > args.positive_threshold else "neg"].append(
                    (round_index, row)
                )
            if exit_reached(len(pools[q]["pos"]), len(pools[q]["neg"]), n, args.exit_rule):
                exited[q] = True
    for q in range(Q):  # down-sample every pool (exited ones and the fallback alike)
        k_pos, k_neg = downsample_counts(
            len(pools[q]["pos"]), len(pools[q]["neg"]), n, args.exit_rule, exited[q]
        )
        keep[q] = pools[q]["pos"][:k_pos] + pools[q]["neg"][:k_neg]
    # gather the kept rows round by round, then put them in prompt order
    pieces, kept_rewards, kept_results, order = [], [], [], []
    for round_index, (part, rewards, results) in enumerate(parts):
        rows = [
            (q * n + slot, row) for q in range(Q) for slot, (r, row) in enumerate(keep[q]) if r == round_index
        ]
        if rows:
            index = torch.tensor([row for _, row in rows])
            pieces.append(part.select(index))
            kept_rewards.append(rewards[index])
            kept_results += [results[row] for _, row in rows]
            order += [position for position, _ in rows]
    inverse = torch.argsort(torch.tensor(order))  # final position -> row of the concatenation
    final = concat_rollouts(pieces, pad_id).select(inverse)
    final.group_index = torch.arange(Q, device=final.prompt_ids.device).repeat_interleave(n)
    pool = {
        "positives": torch.tensor([len(p["pos"]) for p in pools]),  # [Q]
        "seen": torch.tensor([len(p["pos"]) + len(p["neg"]) for p in pools]),  # [Q]
        "rounds": torch.tensor(rounds),  # [Q]
        "exited": torch.tensor(exited),  # [Q]
        "first_rewards": first_rewards,  # [Q, M]
    }
    final_results = [kept_results[i] for i in inverse.tolist()]
    return final, torch.cat(kept_rewards)[inverse].view(Q, n), final_results, pool


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
                # Modification 2 (vs GRPO): the dual clip; a capped token counts as clipped
                per_token_loss, capped = dual_clip_cap(per_token_loss, advantages[mb], args.dual_clip)
                clipped = clipped | capped
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
    # Modification 6 (vs GRPO): the sampling flags must give every prompt a full final group
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be >= 1, got {args.rounds}")
    if args.round_repeat < args.group_size:
        raise SystemExit(
            f"--round-repeat ({args.round_repeat}) must be >= --group-size ({args.group_size}): one round must "
            "fill a group"
        )
    if args.temperature == 0:
        raise SystemExit("--temperature 0 draws the same completion every round; adaptive sampling needs > 0")
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
    Q = args.prompts_per_step  # Modification 7 (vs GRPO): G = n completions are kept from each pool

    for step in run.steps():  # TRY NOT TO MODIFY: progress, Ctrl-C, checkpoints, the sample budget
        batch, prompts = run.next_batch(Q)  # TRY NOT TO MODIFY: this step's prompts
        # ALGO LOGIC: Modification 7 (vs GRPO): sample in rounds, keep n per prompt, the pool-mean baseline
        rollout, rewards, results, pool = adaptive_rollout(
            sampler, run.verifier, prompts, [e.answer for e in batch], args, tokenizer.pad_token_id
        )  # rewards [Q, G] of the kept completions
        advantages = pool_mean_advantages(rewards, pool["positives"][:, None], pool["seen"][:, None])
        advantages = advantages.view(-1).to(args.device)  # [B]
        update = {"rollout": rollout, "advantages": advantages}
        if ref_model is not None:
            update["ref_logprobs"] = rollout_logprobs(ref_model, rollout, args.temperature, args.micro_batch_size)  # fmt: skip
        stats = update_policy(model, optimizer, update, args)
        scheduler.step()
        sampler.update_weights(model)  # TRY NOT TO MODIFY: the sampler must see the new weights

        # Modification 7 (vs GRPO): the first round's share of right answers (on the policy), the rounds
        stats.update(
            first_round_accuracy=pool["first_rewards"].mean().item(),
            samples_per_prompt_mean=pool["seen"].float().mean().item(),
            samples_per_prompt_max=int(pool["seen"].max()),
            rounds_mean=pool["rounds"].float().mean().item(),
            rounds_max=int(pool["rounds"].max()),
            fallback_frac=(~pool["exited"]).float().mean().item(),
        )
        run.log(step, rollout, results, rewards, stats, samples=int(pool["seen"].sum()))
    return run.finish()  # TRY NOT TO MODIFY: the before/after table and plots


if __name__ == "__main__":
    main(tyro.cli(Args))

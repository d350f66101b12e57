"""DAPO: Decoupled Clip and Dynamic sAmpling Policy Optimization — GRPO with four changes.

Paper: Yu et al., "DAPO: An Open-Source LLM Reinforcement Learning System at Scale", arXiv 2503.14476.
Official code: BytedTsinghua-SIA/DAPO (paper, evaluation) and the verl recipe (verl-project/verl-recipe
``dapo/dapo_ray_trainer.py``, ``run_dapo_qwen2.5_32b.sh``; verl ``workers/reward_manager/dapo.py``,
``utils/reward_score/math_dapo.py``, ``trainer/ppo/core_algos.py``).

Idea: GRPO (group-relative advantages, PPO-clip), with four fixes for long-CoT RL at scale:
1. Clip-Higher: the upper clip 1 + ε_high is raised (ε_low 0.2, ε_high 0.28), so low-probability tokens
   with A > 0 can grow further before the clip stops them: against entropy collapse.
2. Dynamic sampling: a group whose accuracy is exactly 0 or 1 has A = 0 and no gradient. Over-sample,
   drop such groups, keep generating until the batch holds the asked number of prompts.
3. Token-level loss: one mean over every token of a mini-batch, so a long response weighs by its length.
4. Overlong reward shaping: a soft length penalty added to the ±1 correctness reward, and (a flag)
   overlong filtering, which masks the loss of truncated samples.

Objective (maximised; ρ = π_θ / π_old per token; Â_i = (R_i − mean(R)) / (std(R) + ε) over the group):

    J(θ) = E_q [ (1 / Σ_i |o_i|) Σ_i Σ_t min(ρ_{i,t} Â_i, clip(ρ_{i,t}, 1 − ε_low, 1 + ε_high) Â_i) ]
           s.t. 0 < |{o_i correct}| < G                        (dynamic sampling; no KL term)

    R_i = (+1 if o_i is correct else −1) + R_len(|o_i|)     (L_max: --max-new-tokens)
    R_len(|y|) = 0                                 if |y| <= L_max − L_cache
               = ((L_max − L_cache) − |y|) / L_cache  if L_max − L_cache < |y| <= L_max
               = −1                                if |y| > L_max      (L_cache: --overlong-cache-len)

Modification 1: clip-higher: ``--clip-high`` defaults to 0.28 (ε_low stays 0.2).
Modification 2: token-level loss: ``--loss-agg`` defaults to ``token-mean``.
Modification 3: dynamic sampling: rounds of prompts until the batch holds Q groups of mixed accuracy.
Modification 4: overlong reward shaping (the soft length penalty R_len) and overlong filtering (a flag).
Modification 5: the reward is +1 if correct else −1 (grpo.py: 1/0), plus R_len.
Modification 6: a step with nothing to train on takes no optimizer step (counted in ``skipped_steps``).

Defaults and sources: ε_low 0.2 / ε_high 0.28, token-mean, no KL, the filter on accuracy (verl
``filter_groups.metric=acc``) with at most 10 generation rounds per step (``max_num_gen_batches=10``), ±1
reward (paper eq. 7, verl ``math_dapo.compute_score``) and R_len (paper eq. 13) are the paper's and the
verl script's. Paper scale: Qwen2.5-32B base, 512 prompts × 16 responses (the verl script generates rounds
of 3 × 512 prompts), mini-batch 512 responses (16 updates per rollout step), AdamW lr 1e-6 constant after
a 20-step warm-up, L_max 20480 = 16384 expected + 4096 cache, evaluation at temperature 1.0, top-p 0.7
(avg@32): that run is scaled down to one GPU in docs/methods/dapo.md. L_cache defaults to L_max / 5, the
paper's 4096 / 20480. The tiny world keeps grpo.py's batch (``--prompts-per-step`` 16: the groups kept for
the update), learning rate and L_max = 80 (so L_cache = 16) and over-samples rounds of 24 prompts for the
16 groups an update takes.

The tiny world, measured (the first 7 steps of ``./run.sh dapo``, 1,344 completions, metrics.jsonl): no
completion was truncated at 80 tokens and the longest were 75 and 65, so with L_cache = 16 (penalty from
65 tokens on) the soft punishment touches only a rare rambling completion and overlong filtering has
nothing to mask; both act on a real model, whose answers run into the limit.

Deviations / choices:
- Reward ±1, as the paper and verl (not grpo.py's 0/1). Without the length penalty the advantage is the
  same as with 0/1 (the z-score ignores a shift and a scale; up to the ε in its denominator), and the
  group filter only reads accuracy; with it, ±1 keeps a correct answer in the cache zone (reward ≥ 0)
  above a wrong one.
- |y| is the completion length in tokens including the EOS (the completion mask; verl's
  ``valid_response_length`` counts the same). The sampler stops at L_max tokens, so |y| <= L_max always: the
  paper's "|y| > L_max" (a response that would have gone on) is a truncated completion, no EOS within L_max.
  Its |y| is L_max, where the cache-zone formula already gives −1, the value of the "beyond" branch; an
  answer whose EOS is token L_max gets −1 too (as in verl). ``--overlong-cache-len 0`` turns R_len off.
- Overlong filtering (``--overlong-filter``, off by default: verl does not implement it, and its docs say
  the paper's best run did not use it): truncated samples keep their reward inside their group's mean
  and std, but leave the update (its loss, its token count and its sequence count).
- The dynamic-sampling filter reads accuracy, not the shaped reward (verl ``metric=acc``): an all-wrong
  group whose lengths differ is still dropped. Prompts are drawn in rounds of ``--gen-prompts-per-round``
  from the seeded prompt stream (a cursor, saved in the checkpoint, so resume draws the same prompts);
  kept groups beyond ``--prompts-per-step`` in the last round are dropped, as verl's ``batch[:traj_bsz]``.
- At the cap (``--max-gen-rounds`` rounds and still fewer than Q groups kept) verl raises an error; this file
  trains on the groups it has (logged in ``trained_groups``), and takes no optimizer step if it has none
  (counted in ``skipped_steps``; the lr schedule still advances). A run never stops for a hard batch.
- Every sample generated in a step, all rounds, is counted in ``samples_generated`` (compare at equal
  samples, not equal steps; ``--max-samples`` ends the run at the step that reaches a budget);
  ``reward_mean``, ``accuracy``, ``zero_std_frac`` (groups whose shaped rewards are all equal) and the length
  metrics are over all of them, ``kept_frac`` is the share of generated groups the filter kept.
- The loss has no dual clip: verl's ``compute_policy_loss_vanilla`` also caps the loss of A < 0 tokens at
  −A·c (``clip_ratio_c`` 10 in the DAPO script), which binds only once ρ > 10.
"""

import copy
from collections.abc import Callable
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
    name="DAPO",
    paper="Yu et al., DAPO: An Open-Source LLM Reinforcement Learning System at Scale, arXiv 2503.14476",
    arxiv="2503.14476",
    change="clip-higher, dynamic sampling, token-level loss, overlong reward shaping (±1 reward)",
    gradient_tier=2,
    gradient_claim="biased by design: GRPO's per-prompt 1/std; the filter drops only groups whose advantages "
    "are all 0, so each kept group's gradient is GRPO's, but the batch is refilled from prompts of mixed "
    "outcome (each prompt reweighted by P(0 < correct < G)); token-mean weights a completion by its length; "
    "R_len adds a length term to the objective",
    verl="loss half: `rlvr_grpo` + `rlvr_dapo`; dynamic sampling: verl's `algorithm.filter_groups`",
    contradiction=({"overlong_cache_len": 80}, "--overlong-cache-len must be in [0, --max-new-tokens 80)"),
    smoke_flags=("--gen-prompts-per-round", "4"),
)


@dataclass
class Args:
    # --- experiment ---
    exp_name: str = "dapo"
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
    # Modification 1 (vs GRPO): clip-higher, ε_high 0.28 > ε_low 0.2 (paper, verl clip_ratio_high)
    clip_high: float = 0.28
    """ε_high: upper clip of the ratio (1 + ε_high)"""
    kl_coef: float = 0.0
    """β: weight of the k3 KL to the initial policy, a loss term; 0 loads no reference model"""
    # Modification 2 (vs GRPO): token-level loss, one mean over every token of a mini-batch
    loss_agg: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = "token-mean"  # fmt: skip
    """how per-token losses are averaged over a mini-batch (grpo.py's module docstring)"""
    scale_rewards: Literal["group", "none"] = "group"
    """divide advantages by the group std (GRPO) or not (Dr. GRPO)"""
    # Modification 3 (vs GRPO): dynamic sampling, rounds of prompts until enough groups of mixed accuracy
    dynamic_sampling: bool = True
    """drop groups whose accuracy is 0 or 1 and generate more rounds; off: one round of --prompts-per-step"""
    gen_prompts_per_round: int = 24
    """prompts per generation round with dynamic sampling (verl gen_batch_size; its DAPO script: 3 x 512)"""
    max_gen_rounds: int = 10
    """cap on generation rounds per step (verl max_num_gen_batches: 10); at the cap, train on what was kept"""
    # Modification 4 (vs GRPO): overlong reward shaping
    overlong_cache_len: int | None = None
    """L_cache: soft overlong punishment in the last L_cache tokens up to L_max; default L_max // 5 (paper: 4096 of 20480); 0: off"""
    overlong_filter: bool = False
    """mask the loss of truncated samples (no EOS within --max-new-tokens); paper's best run: off"""

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


# Modification 3 (vs GRPO): dynamic sampling's filter and its generation rounds
def keep_groups(rewards: torch.Tensor) -> torch.Tensor:
    """Dynamic sampling's filter: ``rewards [Q, G]`` -> ``keep [Q]``, False for a group whose
    rewards are all equal (accuracy p̂ = 0 or 1: every Â is 0, no gradient). main() passes the accuracy
    (0/1), as verl's ``filter_groups.metric=acc``.

    >>> keep_groups(torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]))  # p̂ 0, 1/3, 2/3, 1
    tensor([False,  True,  True, False])
    """
    return (rewards != rewards[:, :1]).any(dim=1)


def dynamic_sampling(
    sample_round: Callable[[], torch.Tensor],  # draws the next round of prompts, returns its accuracy [R, G]
    num_groups: int,  # Q: groups the update needs
    max_rounds: int,  # cap on rounds (verl max_num_gen_batches)
    filter_groups: bool = True,  # False: one round, every group kept (no dynamic sampling)
) -> tuple[list[torch.Tensor], int]:
    """Generate rounds until ``num_groups`` groups of mixed accuracy are kept, or ``max_rounds`` are done.

    Returns, per round, the groups to train on (``[R]`` bool: the kept ones, in the order drawn, up to
    ``num_groups`` in all; kept ones beyond that are dropped, as verl does) and how many groups the filter
    kept. The number of rounds is the number of masks; at the cap there may be fewer than ``num_groups``.

    >>> draws = iter([torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])])
    >>> dynamic_sampling(lambda: next(draws), num_groups=3, max_rounds=10)  # keeps 1, then 3 (one too many)
    ([tensor([False,  True, False]), tensor([ True,  True, False])], 4)
    """
    masks, kept, trained = [], 0, 0
    for _ in range(max_rounds if filter_groups else 1):
        accuracy = sample_round()  # [R, G]
        keep = keep_groups(accuracy) if filter_groups else torch.ones(len(accuracy), dtype=torch.bool)  # [R]
        kept += int(keep.sum())
        masks.append(keep & (keep.cumsum(0) <= num_groups - trained))  # the first ones that still fit
        trained += int(masks[-1].sum())
        if trained == num_groups:
            break
    return masks, kept


def overlong_penalty(lengths: torch.Tensor, max_len: int, cache_len: int) -> torch.Tensor:
    """Modification 4 (vs GRPO): the soft overlong punishment R_len (paper eq. 13): ``lengths [...]`` (tokens,
    EOS included) -> the same shape. 0 up to L_max − L_cache, then down linearly to −1 at L_max, −1 beyond;
    ``cache_len`` 0: no penalty.

    >>> overlong_penalty(torch.tensor([40, 64, 72, 80, 81]), max_len=80, cache_len=16)
    tensor([ 0.0000,  0.0000, -0.5000, -1.0000, -1.0000])
    """
    if cache_len <= 0:
        return torch.zeros(lengths.shape)
    return (((max_len - cache_len) - lengths.float()) / cache_len).clamp(min=-1.0, max=0.0)


def dapo_rewards(correct: torch.Tensor, lengths: torch.Tensor, max_len: int, cache_len: int) -> torch.Tensor:
    """Modification 5 (vs GRPO): reward +1 if correct else −1 (paper eq. 7; grpo.py: 1/0), plus R_len.
    ``correct [Q, G]`` (bool or 0/1), ``lengths [Q, G]`` -> ``rewards [Q, G]``.

    >>> dapo_rewards(torch.tensor([[1, 0, 1]]), torch.tensor([[30, 30, 72]]), max_len=80, cache_len=16)
    tensor([[ 1.0000, -1.0000,  0.5000]])
    """
    return torch.where(correct.bool(), 1.0, -1.0) + overlong_penalty(lengths, max_len, cache_len)


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
    # Modification 3 (vs GRPO): the generation rounds; Modification 4 (vs GRPO): the cache within L_max
    if args.gen_prompts_per_round < 1 or args.max_gen_rounds < 1:
        raise SystemExit(
            f"--gen-prompts-per-round and --max-gen-rounds must be >= 1, got {args.gen_prompts_per_round} "
            f"and {args.max_gen_rounds}"
        )
    if args.overlong_cache_len is not None and not 0 <= args.overlong_cache_len < args.max_new_tokens:
        raise SystemExit(
            f"--overlong-cache-len must be in [0, --max-new-tokens {args.max_new_tokens}) (the penalty "
            f"starts at L_max - L_cache), got {args.overlong_cache_len}"
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
    # Modification 3 (vs GRPO): prompts are drawn in rounds of R (Q without dynamic sampling), each round from
    # run.next_batch (the checkpointed cursor into the seeded prompt stream: a step may use any number)
    R = args.gen_prompts_per_round if args.dynamic_sampling else Q
    rounds = []  # this step's generation rounds: (rollout, results) each
    # Modification 4 (vs GRPO): L_max and L_cache of the soft overlong punishment
    L_max = args.max_new_tokens
    L_cache = L_max // 5 if args.overlong_cache_len is None else args.overlong_cache_len

    def sample_round() -> torch.Tensor:  # Modification 3 (vs GRPO): one round, its accuracy [R, G]
        # TRY NOT TO MODIFY: sample G completions for each of this round's prompts and score them
        batch, prompts = run.next_batch(R)
        rollout = sampler.generate(prompts, G, args.max_new_tokens, args.temperature, args.top_p)
        results, correct = run.verify(rollout, batch)
        rounds.append((rollout, results))
        return correct.view(R, G)  # [R, G]

    for step in run.steps():  # TRY NOT TO MODIFY: progress, Ctrl-C, checkpoints, the sample budget
        # Modification 3 (vs GRPO): dynamic sampling, rounds until Q groups of mixed accuracy are kept
        rounds.clear()
        train_masks, kept = dynamic_sampling(sample_round, Q, args.max_gen_rounds, args.dynamic_sampling)
        generated = concat_rollouts([r for r, _ in rounds], tokenizer.pad_token_id)  # all the step's samples
        results = [result for _, round_results in rounds for result in round_results]
        correct = torch.tensor([float(r.correct) for r in results]).view(-1, G)  # [R_all, G]
        train = torch.cat(train_masks)  # [R_all] the groups to train on: Q of them (fewer at the cap)

        # ALGO LOGIC: Modification 5 (vs GRPO): ±1 correctness plus the overlong penalty (Modification 4)
        lengths = generated.completion_mask.sum(-1).view(-1, G).cpu()  # [R_all, G] tokens, EOS included
        rewards = dapo_rewards(correct, lengths, L_max, L_cache)  # [R_all, G]

        # ALGO LOGIC: group-relative advantages of the kept groups, one per completion, then the policy update
        advantages = grpo_advantages(rewards[train], args.scale_rewards).view(-1).to(args.device)  # [B]
        rollout = generated.select(train.repeat_interleave(G))  # Modification 3 (vs GRPO): the kept rows
        if args.overlong_filter:  # Modification 4 (vs GRPO): truncated samples leave the update
            kept_rows = ~rollout.truncated  # [B]
            rollout, advantages = rollout.select(kept_rows), advantages[kept_rows.to(args.device)]
        update = {"rollout": rollout, "advantages": advantages}
        # Modification 6 (vs GRPO): nothing to train on (no group kept at the cap, or every sample filtered):
        # no optimizer step, counted in skipped_steps, never a 0/0
        skip = bool(rollout.completion_mask.sum() == 0)
        run.extra["skipped_steps"] = run.extra.get("skipped_steps", 0) + int(skip)
        if ref_model is not None and not skip:
            update["ref_logprobs"] = rollout_logprobs(ref_model, rollout, args.temperature, args.micro_batch_size)  # fmt: skip
        stats = {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "grad_norm": 0.0} if skip else update_policy(model, optimizer, update, args)  # fmt: skip
        scheduler.step()
        sampler.update_weights(model)  # TRY NOT TO MODIFY: the sampler must see the new weights

        # Modification 3 (vs GRPO): what dynamic sampling and the overlong shaping did; the shared metrics
        # (run.log) are over every sample generated in the step
        stats["gen_rounds"], stats["kept_frac"] = len(train_masks), kept / len(correct)
        stats["trained_groups"], stats["skipped_steps"] = int(train.sum()), run.extra.get("skipped_steps", 0)
        stats["overlong_frac"] = (overlong_penalty(lengths, L_max, L_cache) < 0).float().mean().item()
        run.log(
            step, generated, results, rewards, stats
        )  # TRY NOT TO MODIFY: metrics, evaluation, completions
    return run.finish()  # TRY NOT TO MODIFY: the before/after table and plots


if __name__ == "__main__":
    main(tyro.cli(Args))

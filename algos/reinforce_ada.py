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

    L(θ) = token-mean_{i,t} −min(ρ_{i,t} A_i, clip(ρ_{i,t}, 1 − 0.2, 1 + 0.28) A_i)      (no KL)

Defaults (``scripts/run_reinforce_ada.sh`` and ``ppo_trainer.yaml`` of the official code): n = 4
(``rollout.n``), N = 4 rounds (``max_rounds``), M = 8 per round (``round_repeat``), threshold 0.7,
``balanced``, ``global_stat_est=True``, ``norm_adv_by_std_in_grpo=False``, token-mean, clip [0.2, 0.28],
no KL, lr 1e-6 with 10 warm-up steps, 512 prompts, max response 2048, temperature 1.0, entropy
coefficient 0 (the paper: 1e-4) and 400 steps (the paper: 600). The tiny world uses 8 prompts per step
and grpo.py's learning rate.

Deviations / choices:
- ``--group-size`` (n) must be ≤ ``--round-repeat`` (M), so after round 1 every pool holds ≥ n samples and
  every final group has exactly n rows (the official code allows fewer rows and warns).
- Pools of one sample get baseline 0, as the official code; with M ≥ n ≥ 2 it never happens here.
- The rewards are 0/1, so #pos/#seen is the pool's mean reward, as in the official code (which reconstructs
  it from the counts).
- ``reward_mean`` (and ``accuracy``) is the first round's mean reward: every prompt's first M samples, an
  unbiased on-policy success rate (the official ``critic/real_reward``); ``kept_reward_mean`` is that of
  the final groups (about 0.5 by design).
- ``samples_generated`` counts every completion sampled in the step, all rounds (the sample budget;
  ``--max-samples`` ends the run at the step that reaches a budget).
- One optimizer step per batch by default (the official script: 4 mini-batches of 128 prompts).
"""

import copy
import math
import random
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
from common.rollout import concat_rollouts, make_sampler
from common.tracking import Progress, Tracker, report_before_after
from common.verify import Verifier


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
    prompts_per_step: int = 8
    """prompts per training step"""
    group_size: int = 4
    """n: completions kept per prompt after down-sampling (official rollout.n = 4)"""
    # Modification 1 (vs GRPO): multi-round sampling flags
    rounds: int = 4
    """N: maximum sampling rounds (official max_rounds = 4)"""
    round_repeat: int = 8
    """M: completions drawn per active prompt in each round (official round_repeat = 8)"""
    exit_rule: Literal["balanced", "positive"] = "balanced"
    """when a prompt leaves: balanced (≥ n/2 of each class) or positive (≥ 1 positive; official positive_focused)"""
    positive_threshold: float = 0.7
    """a completion is positive if its reward is above this (official 0.7)"""
    max_samples: int = 0
    """stop after the step in which the samples drawn (all rounds, all steps) reach this many (0: only
    --num-steps stops): a budget in samples, as bench/compare.py gives every method"""
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
    # Modification 2 (vs GRPO): clip-higher and token-mean, as the official script
    clip_high: float = 0.28
    """ε_high: upper clip of the ratio (1 + ε_high); official 0.28"""
    kl_coef: float = 0.0
    """β: weight of the k3 KL to the initial policy; 0 loads no reference model"""
    loss_agg: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"] = "token-mean"
    """how per-token losses are averaged (official: token-mean)"""

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


# ALGO LOGIC: exit rules, down-sampling, the pool-mean advantage, the clipped surrogate, the KL penalty
# and loss aggregation (pure functions)


def exit_reached(num_positive: int, num_negative: int, n: int, exit_rule: str) -> bool:
    """Whether a prompt's pool holds enough signal to stop sampling it.

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
    """How many positives and negatives of a pool the final group keeps (at most n in all).

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
    """A_i = r_i − #pos/#seen of the prompt's whole pool, no std (a pool of one sample: baseline 0).

    >>> pool_mean_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([1] * 4), torch.tensor([32] * 4))
    tensor([ 0.9688, -0.0312, -0.0312, -0.0312])
    """
    baseline = torch.where(pool_sizes > 1, pool_positives / pool_sizes.clamp(min=1), 0.0)
    return rewards - baseline.to(rewards.dtype)


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


def aggregate_loss(
    per_token_loss: torch.Tensor,  # [b, C] losses of one micro-batch
    mask: torch.Tensor,  # [b, C] completion mask
    mode: str,
    num_sequences: int,  # sequences in the WHOLE batch (all micro-batches)
    num_tokens: int,  # completion tokens in the whole batch
    max_len: int,  # L_max for seq-mean-token-sum-norm
) -> torch.Tensor:
    """Reduce per-token losses to a scalar so that summing over micro-batches gives the batch loss.

    Two sequences, losses [[1, 1, 0], [4, 0, 0]] with masks [[1, 1, 0], [1, 0, 0]]:
      seq-mean-token-mean:      ((1+1)/2 + 4/1) / 2 = 2.5
      token-mean:               (1+1+4) / 3        = 2.0
      seq-mean-token-sum-norm:  (1+1+4) / (2·3)    = 1.0   (L_max = 3)
    """
    masked = per_token_loss * mask
    if mode == "seq-mean-token-mean":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / num_sequences
    if mode == "token-mean":
        return masked.sum() / max(num_tokens, 1)
    if mode == "seq-mean-token-sum-norm":
        return masked.sum() / (num_sequences * max_len)
    raise ValueError(f"unknown --loss-agg {mode!r}")


# Modification 3 (vs GRPO): multi-round sampling with successive elimination, then class-balanced down-sampling


def adaptive_rollout(sampler, verifier, prompts, golds, args, pad_id):
    """Sample in rounds until each prompt exits (or N rounds pass), keep n completions per prompt.

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


# TRY NOT TO MODIFY: the training loop


def validate(args: Args) -> None:
    """Contradictory flags fail here, before anything is loaded."""
    if args.group_size < 2:
        raise SystemExit(f"--group-size must be >= 2 for a group-relative advantage, got {args.group_size}")
    # Modification 4 (vs GRPO): the sampling flags must give every prompt a full final group
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be >= 1, got {args.rounds}")
    if args.max_samples < 0:
        raise SystemExit(f"--max-samples must be >= 0 (0: no sample budget), got {args.max_samples}")
    if args.round_repeat < args.group_size:
        raise SystemExit(
            f"--round-repeat ({args.round_repeat}) must be >= --group-size ({args.group_size}): one round must fill a group"
        )
    if args.temperature == 0:
        raise SystemExit("--temperature 0 draws the same completion every round; adaptive sampling needs > 0")
    if args.micro_batch_size < 1 or args.prompts_per_step < 1 or args.num_steps < 0:
        raise SystemExit("--micro-batch-size and --prompts-per-step must be >= 1 and --num-steps >= 0")
    if args.updates_per_batch < 1:
        raise SystemExit(f"--updates-per-batch must be >= 1, got {args.updates_per_batch}")
    if args.tis_cap > 0 and args.temperature == 0:
        raise SystemExit(
            "--tis-cap needs sampled behaviour log-probs; it cannot be used with --temperature 0"
        )
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
    extra.setdefault("samples_total", 0)  # every sample drawn so far, all rounds (for --max-samples)

    progress = Progress(args.num_steps - start_step, desc="train")
    with StopRequest() as stop:
        for step in range(start_step + 1, args.num_steps + 1):
            if args.max_samples and extra["samples_total"] >= args.max_samples:
                break  # the sample budget was spent before this step (a resumed, finished run)
            step_start = time.time()
            # TRY NOT TO MODIFY: pick this step's prompts (a fresh permutation every epoch, so resume is exact)
            epoch, offset = divmod((step - 1) * Q, len(train_examples))
            order = torch.randperm(
                len(train_examples), generator=torch.Generator().manual_seed(args.seed + epoch)
            )
            batch = [train_examples[i] for i in order.roll(-offset)[:Q].tolist()]
            prompts = [build_prompt(e.question, args.template, tokenizer) for e in batch]

            # Modification 5 (vs GRPO): multi-round adaptive sampling, G = n completions kept per prompt
            rollout, rewards, results, pool = adaptive_rollout(
                sampler, verifier, prompts, [e.answer for e in batch], args, tokenizer.pad_token_id
            )  # rewards [Q, G]
            extra["samples_total"] += int(pool["seen"].sum())
            # the last step: --num-steps, or the one that spent the sample budget (it may overshoot by its rounds)
            last = step == args.num_steps or 0 < args.max_samples <= extra["samples_total"]

            # ALGO LOGIC: Modification 6 (vs GRPO): the pool-mean baseline over every sample drawn, no std
            positives, seen = pool["positives"][:, None], pool["seen"][:, None]  # [Q, 1] each
            advantages = pool_mean_advantages(rewards, positives, seen).view(-1).to(args.device)  # [B]

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
                    per_token_loss, clipped = clipped_surrogate(
                        logprobs, old, advantages[mb], args.clip_low, args.clip_high
                    )
                    if args.tis_cap > 0:  # sampler/trainer mismatch correction
                        per_token_loss = per_token_loss * truncated_is_weights(
                            old, rollout.behavior_logprobs[mb], args.tis_cap
                        )
                    if ref_logprobs is not None:
                        kl = k3_kl(logprobs, ref_logprobs[mb])  # [b, C]
                        per_token_loss = per_token_loss + args.kl_coef * kl
                        stats["kl"] += float((kl * mask[mb]).sum()) / num_tokens / args.updates_per_batch
                    loss = aggregate_loss(
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
                # Modification 7 (vs GRPO): the first round's rewards are the on-policy success rate; the
                # samples drawn and rounds used per prompt
                "reward_mean": pool["first_rewards"].mean().item(),
                "accuracy": pool["first_rewards"].mean().item(),
                "kept_reward_mean": rewards.mean().item(),
                "samples_generated": int(pool["seen"].sum()),
                "samples_per_prompt_mean": pool["seen"].float().mean().item(),
                "samples_per_prompt_max": int(pool["seen"].max()),
                "rounds_mean": pool["rounds"].float().mean().item(),
                "rounds_max": int(pool["rounds"].max()),
                "fallback_frac": (~pool["exited"]).float().mean().item(),
                "unparsed_frac": 1 - sum(r.parsed for r in results) / len(results),
                "zero_std_frac": (rewards.std(dim=1) == 0).float().mean().item(),
                "completion_len_mean": lengths.mean().item(),
                "completion_len_max": lengths.max().item(),
                "truncated_frac": rollout.truncated.float().mean().item(),
                "grad_norm": float(grad_norm),
                "lr": scheduler.get_last_lr()[0],
                "step_time": time.time() - step_start,
                "samples_per_s": int(pool["seen"].sum()) / (time.time() - step_start),
                **stats,
            }
            if last:  # the final evaluation, with the full n
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
            extra["steps_done"] = step
            if step % args.save_every == 0 or last or stop.requested:
                save_checkpoint(run_dir, step, model, optimizer, scheduler, extra, args.keep_last, tokenizer)
            if stop.requested:
                progress.close()
                print(f"Stopped after step {step}. Resume with the same command plus --resume.")
                tracker.close()
                verifier.close()
                raise SystemExit(130)
            if last:
                break
    progress.close()

    # TRY NOT TO MODIFY: before/after table, plots
    final_eval = extra.get("final_eval") or evaluate(args.eval_n, "eval final")
    total_time = elapsed_before + time.time() - session_start
    report_before_after(
        tracker, args.exp_name, extra.get("steps_done", start_step), extra["base_eval"], final_eval, eval_name,
        extra["base_wall_time"], total_time,
    )  # fmt: skip
    tracker.close()
    verifier.close()
    return {"base": extra["base_eval"], "final": final_eval, "run_dir": str(run_dir)}


if __name__ == "__main__":
    main(tyro.cli(Args))

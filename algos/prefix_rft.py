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
on-policy rewards):
    on-policy tokens            A = r_i − r̄
    hybrid continuation tokens  A = r_h − 0        (a singleton group has mean 0 in the official code)
    hybrid prefix tokens        A = (r_h − r̄) / 1  (divided by the hybrids per prompt, 1 here)
then the lowest-entropy 80% of the batch's prefix tokens get A = 0 (entropy under π_θ, ranked per
micro-batch as the official actor does), and the loss is grpo.py's PPO-clip with Dr. GRPO's
``seq-mean-token-sum-norm`` aggregation. A hybrid with k = 0 is an ordinary sample (prefix length 0
is exactly Dr. GRPO).

Defaults run the CPU demo on the tiny world (G = 8: 7 on-policy + 1 hybrid, as the paper). Paper: Qwen2.5-
Math-7B, LUFFY's OpenR1 subset with DeepSeek-R1 demonstrations, 8 rollouts, temperature 1.0, lr 1e-6,
clip 0.2, entropy coefficient 0.001, 500 steps.

Deviations / choices:
- The prefix is cut from the demonstration's TOKENS (``tokenizer(solution) + EOS``) and the hybrid is
  generated from prompt tokens + prefix tokens (``sampler.generate(..., prefix_ids=...)``), so the trained
  tokens are exactly the sampled context; the official code cuts the tokens too but then re-joins the
  prefix as text, which a BPE tokenizer may re-split differently.
- The hybrid's continuation may add up to ``--max-new-tokens`` after its prefix (the official code cuts the
  whole response to the response length); L_max of the loss stays ``--max-new-tokens``.
- No separate clip range for prefix tokens and no entropy bonus (``--updates-per-batch 1``: ratios are 1);
  the official minimum prefix length is not used. The prefix tokens' behaviour log-probs are 0 (given, not
  sampled), so ``--tis-cap`` does not apply to them (it is refused) and ``logprob_mismatch`` is the mean
  over the sampled tokens only.
- ``grpo_advantages`` is kept unchanged from grpo.py but unused by the loop: the tests check that a
  prefix length of 0 gives exactly its Dr. GRPO advantages.
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
from common.rollout import make_sampler
from common.tracking import Progress, Tracker, report_before_after
from common.verify import Verifier


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
    clip_high: float = 0.2
    """ε_high: upper clip of the ratio (1 + ε_high); 0.28 is DAPO's clip-higher"""
    kl_coef: float = 0.0
    """β: weight of the k3 KL to the initial policy; 0 loads no reference model"""
    # Modification 1 (vs GRPO): Dr. GRPO advantages and loss, the prefix schedule and the entropy mask
    loss_agg: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"] = (
        "seq-mean-token-sum-norm"
    )
    """how per-token losses are averaged (Dr. GRPO, as the official dr_grpo prefix estimator)"""
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


# ALGO LOGIC: the prefix schedule, the hybrid's advantages and the entropy mask (pure functions)


def prefix_low(step: int, total_steps: int, start: float = 0.95, end: float = 0.05) -> float:
    """Cosine decay of the prefix fraction's lower end: ``start`` at step 0, ``end`` from ``total_steps`` on.

    >>> [round(prefix_low(s, 10), 4) for s in (0, 5, 10, 20)]
    [0.95, 0.5, 0.05, 0.05]
    """
    progress = min(step, total_steps) / max(total_steps, 1)
    return end + 0.5 * (1 + math.cos(math.pi * progress)) * (start - end)


def prefix_length(fraction: float, demo_len: int) -> int:
    """k = min(⌊fraction · |y*|⌋, |y*| − 1): the hybrid always leaves at least one token to the policy.

    >>> [prefix_length(f, 10) for f in (0.0, 0.05, 0.55, 0.95, 1.0)]
    [0, 0, 5, 9, 9]
    """
    return max(0, min(math.floor(fraction * demo_len), demo_len - 1))


def prefix_rft_advantages(
    rewards: torch.Tensor,  # [Q, G] the last column is the hybrid
    prefix_lengths: torch.Tensor,  # [Q] prefix tokens of each group's hybrid (0: an ordinary sample)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence advantages ``[Q, G]`` (for every non-prefix token) and the prefix tokens' advantage ``[Q]``.

    With a prefix: on-policy A = r − r̄ (r̄ over the G − 1 on-policy samples), the hybrid's continuation
    A = r_h, its prefix A = r_h − r̄. Without (k = 0): Dr. GRPO, A = r − mean of all G.

    >>> prefix_rft_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 1.0]]), torch.tensor([5, 0]))
    (tensor([[ 0.6667, -0.3333, -0.3333,  1.0000],
            [ 0.5000, -0.5000, -0.5000,  0.5000]]), tensor([0.6667, 0.5000]))
    """
    has_prefix = (prefix_lengths > 0)[:, None]  # [Q, 1]
    on_policy_mean = rewards[:, :-1].mean(dim=1, keepdim=True)  # [Q, 1]
    baseline = torch.where(has_prefix, on_policy_mean, rewards.mean(dim=1, keepdim=True))  # [Q, 1]
    advantages = rewards - baseline  # [Q, G]
    advantages[:, -1] = torch.where(has_prefix[:, 0], rewards[:, -1], advantages[:, -1])  # singleton: mean 0
    prefix_advantages = rewards[:, -1] - baseline[:, 0]  # [Q] (r_h − r̄) / 1 hybrid per prompt
    return advantages, prefix_advantages


def entropy_keep_mask(entropy: torch.Tensor, prefix_mask: torch.Tensor, keep: float = 0.2) -> torch.Tensor:
    """Which tokens keep their advantage: every non-prefix token, and the highest-entropy prefix tokens.
    Of the N prefix tokens the lowest-entropy ⌊(1 − keep) · N⌋ are dropped (official ``split_point``).
    ``entropy, prefix_mask [b, C]`` -> ``[b, C]`` bool.

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
    if not 0 <= args.prefix_low_end <= args.prefix_low_start <= 1 or not 0 <= args.prefix_high <= 1:
        raise SystemExit(
            f"need 0 <= --prefix-low-end <= --prefix-low-start <= 1 and 0 <= --prefix-high <= 1, got {args.prefix_low_end}, {args.prefix_low_start}, {args.prefix_high}"
        )
    if args.prefix_high < args.prefix_low_start and args.prefix_high > 0:
        raise SystemExit(
            f"--prefix-high {args.prefix_high} is below --prefix-low-start {args.prefix_low_start}: U[low, high] is empty"
        )
    if not 0 < args.entropy_keep <= 1:
        raise SystemExit(f"--entropy-keep must be in (0, 1], got {args.entropy_keep}")
    if args.schedule_steps < 0:
        raise SystemExit(f"--schedule-steps must be >= 0, got {args.schedule_steps}")
    if args.tis_cap > 0:
        raise SystemExit("--tis-cap cannot be used: the demonstration prefix has no sampler log-probs")
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
    # Modification 2 (vs GRPO): every training problem needs its demonstration y* (Example.solution)
    if missing := [e.source or str(i) for i, e in enumerate(train_examples) if not e.solution]:
        raise SystemExit(
            f"--dataset {args.dataset}: {len(missing)} training rows have no solution (first: {missing[0]}); Prefix-RFT needs a demonstration per problem"
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

            # Modification 3 (vs GRPO): G − 1 samples per prompt plus one hybrid continuing a demonstration prefix
            low = prefix_low(
                step - 1, args.schedule_steps or args.num_steps, args.prefix_low_start, args.prefix_low_end
            )
            draws = torch.rand(
                Q, generator=torch.Generator().manual_seed(args.seed * 1_000_003 + step)
            )  # [Q]
            fractions = (
                low + (args.prefix_high - low) * draws if args.prefix_high > 0 else torch.zeros(Q)
            )  # [Q]
            demos = [tokenizer(e.solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for e in batch]  # fmt: skip
            prefixes = [
                d[: prefix_length(float(f), len(d))] for d, f in zip(demos, fractions)
            ]  # [Q] token ids
            row_prefixes = [
                prefixes[i // G] if i % G == G - 1 else [] for i in range(Q * G)
            ]  # [B]: last of a group
            rows = [p for p in prompts for _ in range(G)]
            rollout = sampler.generate(rows, 1, args.max_new_tokens, args.temperature, args.top_p, prefix_ids=row_prefixes)  # fmt: skip
            results = verifier.verify_batch(rollout.completions, [e.answer for e in batch for _ in range(G)])
            rewards = torch.tensor([float(r.correct) for r in results]).view(Q, G)  # [Q, G]

            # Modification 4 (vs GRPO): token-level advantages, the hybrid's prefix and continuation apart
            prefix_lengths = torch.tensor([len(x) for x in prefixes])  # [Q]
            seq_advantages, prefix_advantages = prefix_rft_advantages(rewards, prefix_lengths)  # [Q, G], [Q]
            C = rollout.completion_mask.shape[1]
            prefix_mask = (
                torch.arange(C)[None, :] < torch.tensor([len(x) for x in row_prefixes])[:, None]
            )  # [B, C]
            prefix_mask = prefix_mask.to(args.device)
            token_advantages = torch.where(
                prefix_mask, prefix_advantages.repeat_interleave(G)[:, None], seq_advantages.view(-1)[:, None]
            ).to(args.device)  # [B, C]

            # ALGO LOGIC: the policy update (PPO-clip surrogate + optional KL), in micro-batches
            mask = rollout.completion_mask  # [B, C]
            sampled = mask * ~prefix_mask  # [B, C] the tokens the sampler drew (for logprob_mismatch)
            num_sampled = max(1, int(sampled.sum()))
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
            stats = {
                "loss": 0.0,
                "kl": 0.0,
                "clip_frac": 0.0,
                "entropy": 0.0,
                "logprob_mismatch": 0.0,
                "prefix_kept": 0.0,
            }
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
                    # Modification 5 (vs GRPO): only the highest-entropy prefix tokens keep their advantage
                    keep = entropy_keep_mask(entropy, prefix_mask[mb], args.entropy_keep)  # [b, C]
                    adv = torch.where(keep, token_advantages[mb], torch.zeros_like(token_advantages[mb]))
                    per_token_loss, clipped = clipped_surrogate(
                        logprobs.reshape(-1, 1),
                        old.reshape(-1, 1),
                        adv.reshape(-1),
                        args.clip_low,
                        args.clip_high,
                    )  # one "sequence" per token: the shared function broadcasts one advantage per row
                    per_token_loss, clipped = per_token_loss.view_as(logprobs), clipped.view_as(logprobs)
                    if update == 0:
                        stats["prefix_kept"] += float((keep & prefix_mask[mb]).sum())
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
                        stats["logprob_mismatch"] += float((gap * sampled[mb]).sum()) / num_sampled
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
            # Modification 6 (vs GRPO): log the schedule and the hybrids
            metrics.update(
                prefix_low=low,
                prefix_frac_mean=float(sum(len(x) / len(d) for x, d in zip(prefixes, demos)) / Q),
                hybrid_reward=rewards[:, -1].mean().item(),
                on_policy_reward=rewards[:, :-1].mean().item(),
                prefix_kept_frac=stats["prefix_kept"] / max(1, int(prefix_mask.sum())),
            )
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

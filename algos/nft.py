"""NFT: Negative-aware Fine-Tuning, a supervised likelihood objective that also learns from wrong answers.

Paper: Chen, Zheng, Wang, Huang, Zhu, Liu, Zhu, "Bridging Supervised Learning and Reinforcement Learning
in Math Reasoning", arXiv 2505.18116. Official code: NVlabs/NFT (``dp_actor.py::update_policy``,
``ray_nft_trainer.py``, ``train_7B.sh``, ``config/nft_trainer.yaml``).

Idea: rejection-sampling fine-tuning (RFT) maximises the likelihood of the correct answers and throws the
wrong ones away. NFT keeps them: the old policy splits into a positive part (its correct answers, with
mass r̂ = the prompt's correct rate) and a negative part, π_old = r̂·π⁺ + (1 − r̂)·π⁻. Training π_θ to fit
the positives while an *implicit* negative policy π⁻_θ = (π_old − r̂·π_θ)/(1 − r̂), built from the same
parameters, fits the negatives, is a likelihood objective on all samples. On-policy its gradient is
exactly Dr. GRPO's (A = r − r̂); with ``--normalize 2`` GRPO's (A = (r − r̂)/σ, population σ).

Objective (minimised; R_t = exp(min(log π_θ − log π_old, 10)) per token, r̂ = group correct rate clamped to
[0.02, 0.98], groups with r̂ ∈ {0, 1} removed before training):

    ℓ_t = −log R_t                                     correct answer
    ℓ_t = −neg_weight · log[(1 − r̂ R_t) / (1 − r̂)]      wrong answer; the argument is floored at 1 in value
                                                       only (its gradient passes through), so R_t ≥ 1/r̂
                                                       gives a finite loss and a finite gradient
    ℓ_t ← w(r̂) ℓ_t,   w = 1 (normalize 0), 1 − r̂ (normalize 1, default), sqrt((1 − r̂)/r̂) (normalize 2)
    L(θ) = agg_{i,t} ℓ_{i,t}            (default seq-mean-token-sum-norm: Σ_{i,t} ℓ / (G_all · L_max))

``--neg-weight 0`` is RFT (positives only, the same loss on them); 1 is NFT.

Defaults: ``--neg-weight 1 --normalize 1``, the ratio clamp 10, the floor 1 (``clamp_negative: 1.0``) and
r̂ ∈ [0.02, 0.98] are the official ``train_7B.sh`` / ``dp_actor.py`` values; no KL, no entropy bonus, one
pass over each batch (``ppo_epochs: 1``). Paper scale (Qwen2.5-Math-7B, DAPO-Math-17k, 512 prompts × 16
samples, lr 1e-6 with 10 warm-up steps, weight decay 0.1, max response 3584) is the README command at
one-GPU size; the tiny world uses grpo.py's rollout budget and learning rate.

Deviations / choices:
- Filtering: the official trainer keeps generating batches (DAPO dynamic sampling, up to 10) until 512
  prompts with mixed groups are found. Here the zero-variance groups of the step's batch are dropped and
  nothing is resampled, so every method spends the same samples per step; a step with no mixed group
  takes no optimizer step (``skipped_steps``; the lr schedule still advances).
- Aggregation: the official loss is Σ_tokens ℓ / 1000 summed over the mini-batch (a constant normaliser;
  ``use_dynamic_bsz`` with ``bugged_dynamic_scale: 0`` adds no micro-batch scaling). Here the default
  ``seq-mean-token-sum-norm`` divides by G_all · L_max with G_all = every sampled row of the step
  (filtered ones included), also a per-step constant: the same direction, the step size differs by a
  constant factor (which AdamW largely absorbs). ``--loss-agg`` is kept as in grpo.py.
- The floor: the official code floors the negative argument with a "clamp that keeps the gradient"; here
  ``floor_keep_grad`` gives the same values and gradients (value max(x, floor), gradient that of x).
- The ratio clamp: min(·, 10) is ``torch.clamp`` as in the official code, so a token with log-ratio > 10
  has no gradient.
- Only the token-level ratio (``ratio_type: token``, the official default) is implemented; the official
  ``neg_weight < 0`` switch to DAPO's PPO loss is not (use grpo.py with ``--clip-high 0.28 --loss-agg
  token-mean``). PPO's clip flags are gone: NFT has no clip.
- The 0/1 reward: the official code uses ±1 scores and maps them back (correct = (r + 1)/2); the same here.
"""

import copy
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
    exp_name: str = "nft"
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
    # Modification 1 (vs GRPO): NFT's flags replace the PPO clip and --scale-rewards
    neg_weight: float = 1.0
    """weight of the wrong answers' loss: 1 is NFT, 0 is RFT (positives only)"""
    normalize: Literal[0, 1, 2] = 1
    """prompt weight w(r̂): 0 none, 1 (1 − r̂) = Dr. GRPO on-policy, 2 sqrt((1 − r̂)/r̂) = GRPO on-policy"""
    ratio_clamp: float = 10.0
    """upper clamp of the token log-ratio before exp (official: 10)"""
    negative_floor: float = 1.0
    """value floor of the negative loss's argument (1 − r̂R)/(1 − r̂) (official clamp_negative: 1.0)"""
    correct_rate_clamp: float = 0.02
    """r̂ is clamped to [c, 1 − c] (official: 0.02)"""
    kl_coef: float = 0.0
    """β: weight of the k3 KL to the initial policy; 0 loads no reference model"""
    # Modification 2 (vs GRPO): a constant normaliser by default (the official code divides by 1000)
    loss_agg: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"] = (
        "seq-mean-token-sum-norm"
    )
    """how per-token losses are averaged over ALL sampled rows (see the module docstring)"""

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


# ALGO LOGIC: correct rates and the group filter, NFT's loss, the KL penalty and loss aggregation (pure functions)


def correct_rates(rewards: torch.Tensor, clamp: float = 0.02) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group correct rate r̂ (clamped to [clamp, 1 − clamp]) and which groups to keep (0 < p̂ < 1).

    ``rewards [Q, G]`` (0/1) -> ``(correct_rate [Q], keep [Q] bool)``.

    >>> correct_rates(torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]))
    (tensor([0.2500, 0.9800, 0.0200]), tensor([ True, False, False]))
    """
    pass_rate = rewards.float().mean(dim=1)  # [Q]
    keep = (pass_rate > 0) & (pass_rate < 1)  # [Q]: DAPO-style filter of zero-variance groups
    return pass_rate.clamp(clamp, 1 - clamp), keep


def floor_keep_grad(x: torch.Tensor, floor: float) -> torch.Tensor:
    """max(x, floor) in value, but the gradient of x everywhere (a straight-through floor).

    >>> x = torch.tensor([-48.0, 0.5, 2.0], requires_grad=True)
    >>> y = floor_keep_grad(x, 1.0)
    >>> y.detach(), torch.autograd.grad(y.sum(), x)[0]
    (tensor([1., 1., 2.]), tensor([1., 1., 1.]))
    """
    return torch.where(x < floor, x - x.detach() + floor, x)


def nft_loss(
    logprobs: torch.Tensor,  # [B, C] log π_θ of the sampled tokens
    old_logprobs: torch.Tensor,  # [B, C] log π_old (detached)
    correct: torch.Tensor,  # [B] 1 for a correct answer, 0 for a wrong one
    correct_rate: torch.Tensor,  # [B] r̂ of each row's group, already clamped into (0, 1)
    neg_weight: float = 1.0,
    normalize: int = 1,
    ratio_clamp: float = 10.0,
    negative_floor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """NFT's per-token loss (to minimise) and the mask of negative tokens whose floor binds.

    R = exp(min(logprobs − old_logprobs, ratio_clamp)); correct rows: −log R; wrong rows:
    −neg_weight · log(floor_keep_grad((1 − r̂R)/(1 − r̂), negative_floor)); then × w(r̂) (``normalize``).
    Two tokens per row with R = 2 and R = 0.5, r̂ = 0.25, normalize 1 (w = 0.75): the correct row gets
    −0.75·log 2 and +0.75·log 2; the wrong row's R = 2 token is floored (1 − 0.5 < 0.75: value 0), its R = 0.5
    token gets −0.75·log(0.875/0.75).

    >>> lp = torch.log(torch.tensor([[2.0, 0.5], [2.0, 0.5]]))
    >>> loss, floored = nft_loss(lp, torch.zeros(2, 2), torch.tensor([1.0, 0.0]), torch.tensor([0.25, 0.25]))
    >>> loss, floored
    (tensor([[-0.5199,  0.5199],
            [-0.0000, -0.1156]]), tensor([[False, False],
            [ True, False]]))
    """
    ratio = torch.exp(torch.clamp(logprobs - old_logprobs, max=ratio_clamp))  # [B, C] R_t
    rate = correct_rate[:, None]  # [B, 1] r̂
    positive = correct.float()[:, None]  # [B, 1]
    implicit_negative = (1 - rate * ratio) / (1 - rate)  # [B, C] π⁻_θ / π⁻_old
    negative_loss = -torch.log(floor_keep_grad(implicit_negative, negative_floor))  # [B, C]
    positive_loss = -torch.log(ratio)  # [B, C]
    per_token_loss = positive * positive_loss + (1 - positive) * neg_weight * negative_loss  # [B, C]
    if normalize == 1:  # on-policy: Dr. GRPO's gradient (A = r − r̂)
        per_token_loss = per_token_loss * (1 - rate)
    elif normalize == 2:  # on-policy: GRPO's gradient (A = (r − r̂)/σ, σ² = r̂(1 − r̂))
        per_token_loss = per_token_loss * torch.sqrt((1 - rate) / rate)
    elif normalize != 0:
        raise ValueError(f"--normalize must be 0, 1 or 2, got {normalize}")
    floored = ((implicit_negative < negative_floor) & (positive == 0)).detach()  # [B, C]
    return per_token_loss, floored


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


# TRY NOT TO MODIFY: the training loop


def validate(args: Args) -> None:
    """Contradictory flags fail here, before anything is loaded."""
    if args.group_size < 2:
        raise SystemExit(f"--group-size must be >= 2 for a group-relative advantage, got {args.group_size}")
    if args.micro_batch_size < 1 or args.prompts_per_step < 1 or args.num_steps < 0:
        raise SystemExit("--micro-batch-size and --prompts-per-step must be >= 1 and --num-steps >= 0")
    if args.updates_per_batch < 1:
        raise SystemExit(f"--updates-per-batch must be >= 1, got {args.updates_per_batch}")
    # Modification 3 (vs GRPO): NFT's flags must keep the loss defined (log of a positive floor, r̂ inside (0, 1))
    if args.neg_weight < 0:
        raise SystemExit(f"--neg-weight must be >= 0 (1 NFT, 0 RFT), got {args.neg_weight}")
    if args.negative_floor <= 0:
        raise SystemExit(f"--negative-floor must be > 0 (the loss takes its log), got {args.negative_floor}")
    if args.ratio_clamp <= 0:
        raise SystemExit(f"--ratio-clamp must be > 0, got {args.ratio_clamp}")
    if not 0 < args.correct_rate_clamp < 0.5:
        raise SystemExit(f"--correct-rate-clamp must be in (0, 0.5), got {args.correct_rate_clamp}")
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

            # ALGO LOGIC: Modification 4 (vs GRPO): no advantages; each group's correct rate r̂, and the
            # zero-variance groups (p̂ = 0 or 1) filtered out
            correct_rate, keep_group = correct_rates(rewards, args.correct_rate_clamp)  # [Q], [Q] bool
            keep = keep_group.repeat_interleave(G)  # [B] bool
            kept = rollout.select(keep)  # the rollout restricted to the mixed groups (B_kept rows)
            correct = rewards.view(-1)[keep].to(args.device)  # [B_kept]
            rates = correct_rate.repeat_interleave(G)[keep].to(args.device)  # [B_kept]

            # ALGO LOGIC: the policy update (NFT's likelihood loss + optional KL), in micro-batches
            B = len(rollout.completions)  # every sampled row: the constant of seq-mean-token-sum-norm
            mask = kept.completion_mask  # [B_kept, C]
            B_kept, C = mask.shape
            num_tokens = int(mask.sum())
            micro_batches = [
                slice(i, i + args.micro_batch_size) for i in range(0, B_kept, args.micro_batch_size)
            ]
            # Modification 5 (vs GRPO): no mixed group -> no optimizer step, counted in skipped_steps
            num_updates = args.updates_per_batch if B_kept > 0 else 0
            extra["skipped_steps"] = extra.get("skipped_steps", 0) + int(B_kept == 0)
            old_logprobs = ref_logprobs = None
            if B_kept > 0 and (args.updates_per_batch > 1 or args.kl_coef > 0):
                with torch.no_grad():
                    if args.updates_per_batch > 1:
                        old_logprobs = torch.cat([completion_logprobs(model, kept.input_ids[mb], kept.attention_mask[mb], C, args.temperature)[0] for mb in micro_batches])  # fmt: skip
                    if ref_model is not None:
                        ref_logprobs = torch.cat([completion_logprobs(ref_model, kept.input_ids[mb], kept.attention_mask[mb], C, args.temperature)[0] for mb in micro_batches])  # fmt: skip
            model.train()
            stats = {"loss": 0.0, "kl": 0.0, "floor_frac": 0.0, "entropy": 0.0, "logprob_mismatch": 0.0}
            grad_norm = 0.0
            for update in range(num_updates):
                for mb in micro_batches:
                    logprobs, entropy = completion_logprobs(
                        model,
                        kept.input_ids[mb],
                        kept.attention_mask[mb],
                        C,
                        args.temperature,
                        with_entropy=True,
                    )  # [b, C] each
                    old = old_logprobs[mb] if old_logprobs is not None else logprobs.detach()
                    # Modification 6 (vs GRPO): NFT's loss replaces the PPO-clip surrogate
                    per_token_loss, floored = nft_loss(
                        logprobs, old, correct[mb], rates[mb], args.neg_weight, args.normalize,
                        args.ratio_clamp, args.negative_floor,
                    )  # fmt: skip
                    if args.tis_cap > 0:  # sampler/trainer mismatch correction
                        per_token_loss = per_token_loss * truncated_is_weights(
                            old, kept.behavior_logprobs[mb], args.tis_cap
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
                    stats["floor_frac"] += (
                        float((floored * mask[mb]).sum()) / num_tokens / args.updates_per_batch
                    )
                    if update == 0:
                        stats["entropy"] += float((entropy * mask[mb]).sum()) / num_tokens
                        gap = (logprobs.detach() - kept.behavior_logprobs[mb]).abs()
                        stats["logprob_mismatch"] += float((gap * mask[mb]).sum()) / num_tokens
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            sampler.update_weights(model)  # TRY NOT TO MODIFY: the sampler must see the new weights

            # TRY NOT TO MODIFY: logging
            lengths = rollout.completion_mask.sum(-1)
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
                "samples_generated": B,  # Modification 7 (vs GRPO): what was trained on, and the sample budget
                "kept_frac": keep.float().mean().item(),
                "skipped_steps": extra["skipped_steps"],
                **stats,
            }
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

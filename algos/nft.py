"""NFT: Negative-aware Fine-Tuning, a supervised likelihood objective that also learns from wrong answers.

Paper: Huayu Chen et al., "Bridging Supervised Learning and Reinforcement Learning in Math Reasoning",
arXiv 2505.18116. Official code: NVlabs/NFT (``dp_actor.py::update_policy``, ``ray_nft_trainer.py``,
``train_7B.sh``, ``config/nft_trainer.yaml``).

Idea: rejection-sampling fine-tuning (RFT) maximises the likelihood of the correct answers and throws the
wrong ones away. NFT keeps them: the old policy splits into a positive part (its correct answers, with
mass r̂ = the prompt's correct rate) and a negative part, π_old = r̂·π⁺ + (1 − r̂)·π⁻. Training π_θ to fit
the positives while an *implicit* negative policy π⁻_θ = (π_old − r̂·π_θ)/(1 − r̂), built from the same
parameters, fits the negatives, is a likelihood objective on all samples. On-policy (R = 1: the first
mini-batch of a batch) its gradient is exactly Dr. GRPO's (A = r − r̂); with ``--normalize 2`` GRPO's
(A = (r − r̂)/σ, population σ). NFT's own terms act off the policy, on the later mini-batches of a batch.

Objective (minimised; R_t = exp(min(log π_θ − log π_old, 10)) per token, r̂ = group correct rate clamped to
[0.02, 0.98], groups with r̂ ∈ {0, 1} removed before training):

    ℓ_t = −log R_t                                     correct answer
    ℓ_t = −neg_weight · log[(1 − r̂ R_t) / (1 − r̂)]      wrong answer; the argument is floored at 1 in value
                                                       only (its gradient passes through), so R_t ≥ 1/r̂
                                                       gives a finite loss and a finite gradient
    ℓ_t ← w(r̂) ℓ_t,   w = 1 (normalize 0), 1 − r̂ (normalize 1, default), sqrt((1 − r̂)/r̂) (normalize 2)
    L(θ) = agg_{i,t} ℓ_{i,t}    (default seq-mean-token-sum-norm: Σ_{i,t} ℓ / ((B_all / M) · L_max) per
                                 mini-batch, B_all = every sampled row of the step, M = --num-mini-batches)

``--neg-weight 0`` is RFT (positives only, the same loss on them); 1 is NFT.

Modification 1: 16 optimizer steps per rollout batch (the official count), at a quarter of the learning rate
Modification 2: NFT's flags replace the PPO clip and --scale-rewards
Modification 3: a constant normaliser by default (seq-mean-token-sum-norm over every sampled row)
Modification 4: no advantages: each group's correct rate r̂, and the zero-variance groups filtered out
Modification 5: NFT's likelihood loss replaces the PPO-clip surrogate
Modification 6: the update trains on the kept rows; kept_frac and skipped_steps are logged
Modification 7: NFT's flags must keep the loss defined

Defaults: ``--neg-weight 1 --normalize 1``, the ratio clamp 10, the floor 1 (``clamp_negative: 1.0``) and
r̂ ∈ [0.02, 0.98] are the official ``train_7B.sh`` / ``dp_actor.py`` values; no KL, no entropy bonus.
``--num-mini-batches 16``: the official run splits each rollout batch of 512 prompts into mini-batches of
32 (``train_prompt_mini_bsz``), one pass (``ppo_epoch=1``): 16 optimizer steps per batch; here the kept
rows of each step are split into 16 (``--num-mini-batches 1`` is Dr. GRPO exactly). ``--learning-rate
2.5e-5`` (tiny world, measured in docs/methods/nft.md): 16 AdamW steps per batch at grpo.py's 1e-4 overshoot
on the tiny world, at a quarter of it they learn as well as one step at 1e-4. Paper scale (Qwen2.5-Math-7B,
DAPO-Math-17k, 512 prompts × 16 samples, lr 1e-6 with 10 warm-up steps, weight decay 0.1, max response 3584)
is the command of docs/methods/nft.md at one-GPU size; the tiny world uses grpo.py's rollout budget.

Deviations / choices:
- Filtering: the official trainer keeps generating batches (DAPO dynamic sampling, up to 10) until 512
  prompts with mixed groups are found. Here the zero-variance groups of the step's batch are dropped and
  nothing is resampled, so every method spends the same samples per step; a step with no mixed group
  takes no optimizer step (``skipped_steps``; the lr schedule still advances). So the mini-batches here
  are smaller when groups are dropped (the official ones are always full), and with fewer kept rows than
  mini-batches there are as many steps as rows.
- Aggregation: the official loss is Σ_tokens ℓ / 1000 summed over the mini-batch (a constant normaliser;
  ``use_dynamic_bsz`` with ``bugged_dynamic_scale: 0`` adds no micro-batch scaling). Here the default
  ``seq-mean-token-sum-norm`` divides by (B_all / M) · L_max with B_all = every sampled row of the step
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
- The sampler/trainer correction (``--rollout-is``) gets Dr. GRPO's advantage r − r̂ as the advantage.
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
    name="NFT",
    paper="Chen et al., Bridging Supervised Learning and Reinforcement Learning in Math Reasoning, "
    "arXiv 2505.18116",
    arxiv="2505.18116",
    change="a likelihood loss on right answers, an implicit negative policy on wrong ones (weight 0: RFT)",
    gradient_tier=1,
    gradient_claim="an identity: on the policy (R = 1, the first mini-batch) its gradient is exactly Dr. "
    "GRPO's, A = r − r̂ (normalize 1; normalize 2: GRPO's with the population std); off the policy "
    "(the later mini-batches) the implicit negative policy reweights the wrong answers' tokens",
    verl="yes: `rlvr_nft` + `rlvr_nft`",
    contradiction=({"neg_weight": -1.0}, "--neg-weight must be >= 0"),
    variants={
        "rft": ["--neg-weight", "0"],
        "nft-1x": ["--num-mini-batches", "1", "--learning-rate", "1e-4"],  # = dr_grpo.py's run, on the policy
        "rft-1x": ["--neg-weight", "0", "--num-mini-batches", "1", "--learning-rate", "1e-4"],
    },
    smoke_flags=("--num-mini-batches", "2"),
)


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
    learning_rate: float = 2.5e-5  # Modification 1 (vs GRPO): a quarter of grpo.py's, for 16 steps a batch
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
    num_mini_batches: int = 16  # Modification 1 (vs GRPO): the official 16 optimizer steps per rollout batch
    """optimizer steps per pass: each pass splits the rollout batch into this many mini-batches"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass to save memory"""

    # --- algorithm ---
    # Modification 2 (vs GRPO): NFT's flags replace the PPO clip and --scale-rewards
    neg_weight: float = 1.0
    """weight of the wrong answers' loss: 1 is NFT, 0 is RFT (positives only)"""
    normalize: Literal[0, 1, 2] = 1
    """prompt weight w(r̂): 0 none, 1 (1 − r̂) = Dr. GRPO on-policy, 2 sqrt((1 − r̂)/r̂) = GRPO on-policy"""
    ratio_clamp: float = 10.0
    """upper clamp of the token log-ratio before exp"""
    negative_floor: float = 1.0
    """value floor of the negative loss's argument (1 − r̂R)/(1 − r̂)"""
    correct_rate_clamp: float = 0.02
    """r̂ is clamped to [c, 1 − c]"""
    kl_coef: float = 0.0
    """β: weight of the k3 KL to the initial policy, a loss term; 0 loads no reference model"""
    # Modification 3 (vs GRPO): a constant normaliser by default (the official code divides by 1000)
    loss_agg: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = "seq-mean-token-sum-norm"  # fmt: skip
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


def correct_rates(rewards: torch.Tensor, clamp: float = 0.02) -> tuple[torch.Tensor, torch.Tensor]:
    """Modification 4 (vs GRPO): per-group correct rate r̂ (clamped to [clamp, 1 − clamp]) and which groups to
    keep (0 < p̂ < 1). ``rewards [Q, G]`` (0/1) -> ``(correct_rate [Q], keep [Q] bool)``.
    >>> correct_rates(torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]))
    (tensor([0.2500, 0.9800, 0.0200]), tensor([ True, False, False]))
    """
    pass_rate = rewards.float().mean(dim=1)  # [Q]
    keep = (pass_rate > 0) & (pass_rate < 1)  # [Q]: DAPO-style filter of zero-variance groups
    return pass_rate.clamp(clamp, 1 - clamp), keep


# Modification 5 (vs GRPO): NFT's likelihood loss replaces the PPO-clip surrogate
def nft_loss(
    logprobs: torch.Tensor,  # [B, C] log π_θ of the sampled tokens (R = π_θ / π_old)
    old_logprobs: torch.Tensor,  # [B, C] log π_old (detached), the policy that sampled them
    correct: torch.Tensor,  # [B] 1 for a correct answer, 0 for a wrong one
    correct_rate: torch.Tensor,  # [B] r̂ of each row's group, already clamped into (0, 1)
    neg_weight: float = 1.0,
    normalize: int = 1,
    ratio_clamp: float = 10.0,
    negative_floor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Modification 5 (vs GRPO): NFT's per-token loss (to minimise) and the mask of negative tokens whose floor
    binds. R = exp(min(logprobs − old_logprobs, ratio_clamp)); correct rows: −log R; wrong rows:
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


def floor_keep_grad(x: torch.Tensor, floor: float) -> torch.Tensor:
    """Modification 5 (vs GRPO): max(x, floor) in value, but the gradient of x everywhere (straight through).

    >>> x = torch.tensor([-48.0, 0.5, 2.0], requires_grad=True)
    >>> y = floor_keep_grad(x, 1.0)
    >>> y.detach(), torch.autograd.grad(y.sum(), x)[0]
    (tensor([1., 1., 2.]), tensor([1., 1., 1.]))
    """
    return torch.where(x < floor, x - x.detach() + floor, x)


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
    changes the gradient). ``batch``: ``rollout`` (a ``common.rollout_types.Rollout``: the kept rows),
    ``correct [B]`` (0/1), ``correct_rate [B]`` (r̂ of each row's group), ``num_sampled`` (every row sampled
    this step, kept or not) and, when ``--kl-coef`` > 0, ``ref_logprobs [B, C]``. Returns the update's
    statistics (means over its steps)."""
    rollout, ref_logprobs = batch["rollout"], batch.get("ref_logprobs")
    correct, rates = batch["correct"], batch["correct_rate"]  # Modification 4 (vs GRPO): no advantages
    advantages = correct - rates  # [B] Dr. GRPO's, for the sampler/trainer correction only
    mask = rollout.completion_mask  # [B, C]
    B, C = mask.shape
    # Modification 6 (vs GRPO): nothing kept (every group all right or all wrong): no step; else at most one
    # mini-batch per row, each normalised by the step's sampled rows per mini-batch (a constant)
    if B == 0:
        return {"loss": 0.0, "kl": 0.0, "floor_frac": 0.0, "grad_norm": 0.0, "optimizer_steps": 0}
    mini_batches, sequences = min(args.num_mini_batches, B), batch["num_sampled"] / args.num_mini_batches
    steps = args.updates_per_batch * mini_batches
    stats = {"loss": 0.0, "kl": 0.0, "floor_frac": 0.0, "ratio_dev": 0.0}
    # π_old: the trainer's log-probs before the first optimizer step, needed once the ratio can leave 1
    needs_old = steps > 1 or args.rollout_is != "none" or args.rollout_rs != "none"
    old_logprobs = rollout_logprobs(model, rollout, args.temperature, args.micro_batch_size) if needs_old else None  # fmt: skip
    weights, stats_rc = rollout_correction(old_logprobs, rollout.behavior_logprobs, mask, advantages, args)
    model.train()
    total_tokens = mask.sum().item()
    for update in range(args.updates_per_batch):
        # Modification 6 (vs GRPO): the kept rows' mini-batches (at most one per row)
        for rows in torch.arange(B).tensor_split(mini_batches):  # one optimizer step each
            num_tokens = int(mask[rows].sum())
            for mb in rows.split(args.micro_batch_size):
                logprobs, entropy = completion_logprobs(model, rollout.input_ids[mb], rollout.attention_mask[mb], C, args.temperature, with_entropy=True)  # fmt: skip
                old = old_logprobs[mb] if old_logprobs is not None else logprobs.detach()
                per_token_loss, floored = nft_loss(  # Modification 5 (vs GRPO): NFT's loss
                    logprobs, old, correct[mb], rates[mb], args.neg_weight, args.normalize, args.ratio_clamp,
                    args.negative_floor,
                )  # fmt: skip
                ratio_dev = ((logprobs.detach() - old).exp() - 1).abs()  # [b, C] |R − 1|
                per_token_loss = per_token_loss * weights[mb]  # the sampler/trainer mismatch correction
                if ref_logprobs is not None:
                    kl = k3_kl(logprobs, ref_logprobs[mb])  # [b, C]
                    per_token_loss = per_token_loss + args.kl_coef * kl
                    stats["kl"] += float((kl * mask[mb]).sum()) / num_tokens / steps
                loss = aggregate_loss(  # Modification 3 (vs GRPO): sampled rows per mini-batch
                    per_token_loss, mask[mb], args.loss_agg, sequences, num_tokens, args.max_new_tokens
                )
                loss.backward()
                stats["loss"] += loss.item() / steps
                # Modification 5 (vs GRPO): NFT's statistics, floored share and |R − 1| (0: NFT is Dr. GRPO)
                stats["floor_frac"] += float((floored * mask[mb]).sum()) / num_tokens / steps
                stats["ratio_dev"] += float((ratio_dev * mask[mb]).sum()) / num_tokens / steps
                if update == 0:  # the first pass: the policy's entropy and its gap to the sampler
                    sums = {"entropy": float((entropy * mask[mb]).sum()), **sampler_gap(old, rollout, mb)}
                    for key, value in sums.items():
                        stats[key] = stats.get(key, 0.0) + value / total_tokens
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            stats["grad_norm"] = stats.get("grad_norm", 0.0) + float(grad_norm) / steps
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return {**stats, **stats_rc, "optimizer_steps": steps}  # Modification 1 (vs GRPO)


# TRY NOT TO MODIFY: the training loop


def validate(args: Args) -> None:
    """Contradictory flags fail here, before anything is loaded."""
    if args.group_size < 2:
        raise SystemExit(f"--group-size must be >= 2 for a group-relative advantage, got {args.group_size}")
    # Modification 7 (vs GRPO): NFT's flags keep the loss defined (log of a positive floor, r̂ inside (0, 1))
    if args.neg_weight < 0:
        raise SystemExit(f"--neg-weight must be >= 0 (1 NFT, 0 RFT), got {args.neg_weight}")
    if args.negative_floor <= 0:
        raise SystemExit(f"--negative-floor must be > 0 (the loss takes its log), got {args.negative_floor}")
    if args.ratio_clamp <= 0:
        raise SystemExit(f"--ratio-clamp must be > 0, got {args.ratio_clamp}")
    if not 0 < args.correct_rate_clamp < 0.5:
        raise SystemExit(f"--correct-rate-clamp must be in (0, 0.5), got {args.correct_rate_clamp}")
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

        # ALGO LOGIC: Modification 4 (vs GRPO): no advantages; each group's correct rate r̂, and the
        # zero-variance groups (p̂ = 0 or 1) filtered out
        correct_rate, keep_group = correct_rates(rewards, args.correct_rate_clamp)  # [Q], [Q] bool
        keep = keep_group.repeat_interleave(G)  # [B] bool
        # Modification 6 (vs GRPO): the update sees the kept rows only; kept_frac and skipped_steps are logged
        kept = rollout.select(keep)  # B_kept rows
        update = {"rollout": kept, "correct": rewards.view(-1)[keep].to(args.device), "num_sampled": len(keep),
                  "correct_rate": correct_rate.repeat_interleave(G)[keep].to(args.device)}  # fmt: skip
        if ref_model is not None and keep.any():
            update["ref_logprobs"] = rollout_logprobs(ref_model, kept, args.temperature, args.micro_batch_size)  # fmt: skip
        stats = update_policy(model, optimizer, update, args)
        run.extra["skipped_steps"] = run.extra.get("skipped_steps", 0) + int(not keep.any())
        stats.update(kept_frac=keep.float().mean().item(), skipped_steps=run.extra["skipped_steps"])
        scheduler.step()
        sampler.update_weights(model)  # TRY NOT TO MODIFY: the sampler must see the new weights

        run.log(step, rollout, results, rewards, stats)  # TRY NOT TO MODIFY: metrics, evaluation, completions
    return run.finish()  # TRY NOT TO MODIFY: the before/after table and plots


if __name__ == "__main__":
    main(tyro.cli(Args))

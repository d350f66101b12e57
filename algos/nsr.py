"""PSR / NSR / W-REINFORCE: reinforcing positive and negative samples separately.

Paper: Zhu, Xia, Wei, Wu, Chen, Meng, "The Surprising Effectiveness of Negative Reinforcement in LLM
Reasoning", arXiv 2506.01347 (NeurIPS 2025). Official code: TianHongZXY/RLVR-Decomposed (a verl fork;
``compute_psr_nsr_outcome_advantage`` and the batch subsetting in ``ray_trainer.py``).

Idea: with a 0/1 verifier reward, REINFORCE without a baseline is the sum of two parts: Positive Sample
Reinforcement (PSR: raise the likelihood of correct samples, i.e. SFT on them) and Negative Sample
Reinforcement (NSR: lower the likelihood of wrong samples). NSR alone moves each sampled token's logit down by
η·(1 − π) and every other logit up by η·π_v, so it removes mass from wrong paths and hands it to the
alternatives in proportion to the model's prior: pass@1 improves and pass@k for large k is kept. PSR alone
sharpens pass@1 but narrows the distribution. W-REINFORCE keeps both, with the positive part weighted by λ.

Objective (minimised; r_i ∈ {0, 1}; ρ = π_θ / π_old per token; no group baseline, no std, no KL):

    objective     kept samples   A_i
    psr           r_i = 1        +1
    nsr           r_i = 0        −1
    w-reinforce   all            +λ if r_i = 1 else −1        (paper: L = λ·L_PSR + L_NSR, λ = 0.1)
    reinforce     all            +1 if r_i = 1 else −1        (= w-reinforce with λ = 1)

    L(θ) = token-mean_{i kept, t} max(−A_i ρ_{i,t}, −A_i clip(ρ_{i,t}, 1 − ε_low, 1 + ε_high))
           − c_H · token-mean H_{i,t}

With one update per batch ρ ≡ 1 and ∇L = −token-mean(A_i ∇log π_θ(o_{i,t})): PSR is exactly the SFT
gradient on the correct samples and NSR exactly its negation on the wrong ones. The paper's form,
L_PSR = −E_x Σ_{y correct} π_θ(y|x) and L_NSR = +E_x Σ_{y wrong} π_θ(y|x), has the same gradient up to scale.

Modification 1: no group baseline: ±1 (or λ) advantages from the sample's own reward, and the samples to keep
Modification 2: an entropy bonus −c_H·H in the per-token loss
Modification 3: token-mean aggregation (over the kept samples) by default
Modification 4: a batch with nothing to keep takes no optimizer step (counted in ``skipped_steps``)
Modification 5: one sample per prompt is allowed (no group baseline); λ must be >= 0
Modification 6: the loop trains on the kept rows only and logs ``kept_frac`` and ``skipped_steps``

Defaults: ``--objective w-reinforce --positive-weight 0.1`` (the paper's recommended setting; its λ sweep
{0, 0.05, 0.1, 0.2, 1} found λ ≤ 0.2 good); ``--entropy-coef 1e-4`` (the paper; the official code runs
verl's default 1e-3); clip 0.2 and token-mean aggregation (the official code, verl's); no KL (as every
PSR/NSR run in the paper); ``--group-size`` may be 1 (no group baseline). Paper scale: Qwen2.5-Math-7B on
MATH, 1024 prompts × 8 samples, T = 1.0, lr 1e-6 constant: the command line of docs/methods/nsr.md. The
tiny world uses grpo.py's rollout budget and learning rate.

Deviations / choices:
- λ in the official code: the launch script ``run_qwen2.5-math-7b_psr_nsr.sh`` passes
  ``algorithm.positive_advantage_weight`` on a line after ``$@`` that is a comment (the line before it
  ends without a backslash), so the YAML default ``positive_advantage_weight: 1`` is what runs: switching
  the script to ``weighted`` silently trains REINFORCE (λ = 1). This file defaults to λ = 0.1 (paper);
  ``--positive-weight 1`` (or ``--objective reinforce``) reproduces the script as shipped.
- Rewards: the paper writes r ∈ {+1, −1} and a π-weighted loss; the code (and this file) takes 0/1 scores,
  turns them into the advantages above and feeds them to the PPO-clip surrogate.
- Token mean over the KEPT samples only [ours]: PSR and NSR first drop the samples they do not train on
  (as the code's ``batch.subset``) and the token mean here runs over what is kept (per mini-batch), so this
  file's NSR step does not shrink as wrong samples become rare. The official actor differs: it scales each
  micro-batch's token-mean loss by its size over the configured mini-batch size, so once the kept samples
  no longer fill a mini-batch the step shrinks in proportion (and there are fewer optimizer steps).
  W-REINFORCE keeps every sample, so with λ = 0 its gradient is NSR's times (tokens of wrong samples) /
  (all tokens): the same direction, a smaller step.
- Optimizer steps per batch: the code splits each rollout batch into 4 mini-batches (one pass, later
  mini-batches slightly off-policy; the subset PSR/NSR batches give fewer of them). Here, as in grpo.py,
  one step per batch by default; ``--num-mini-batches 4`` splits the kept samples into 4 optimizer steps.
- The logged ``entropy`` is over the trained (kept) tokens; ``kept_frac`` is the share of samples trained on.
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
    name="PSR / NSR / W-REINFORCE",
    paper="Zhu et al., The Surprising Effectiveness of Negative Reinforcement in LLM Reasoning, "
    "arXiv 2506.01347",
    arxiv="2506.01347",
    change="no baseline: +1 (or λ) for right, −1 for wrong samples; train on positives, negatives or both",
    gradient_tier=1,
    gradient_claim="unbiased up to scale: the advantage is a function of the sample's own reward, so PSR and "
    "NSR each estimate ∇p (p: the pass rate) and W-REINFORCE (1 + λ)∇p, no baseline needed; the token mean "
    "over the kept samples divides each batch by its own token count (a batch-dependent scale)",
    verl="yes: `rlvr_psr` / `rlvr_nsr` / `rlvr_w_reinforce` / `rlvr_reinforce` + `rlvr_clip`",
    contradiction=({"positive_weight": -0.5}, "--positive-weight must be >= 0"),
    variants={
        "w-reinforce": ["--objective", "w-reinforce", "--positive-weight", "0.1"],
        "psr": ["--objective", "psr"],
        "nsr-only": ["--objective", "nsr"],
    },
    compare_default=True,
)

# Modification 1 (vs GRPO): the objectives, each a choice of samples to train on and their advantages
OBJECTIVES = ("psr", "nsr", "w-reinforce", "reinforce")


@dataclass
class Args:
    # --- experiment ---
    exp_name: str = "nsr"
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
    # Modification 1 (vs GRPO): --objective and --positive-weight replace --scale-rewards (see nsr_advantages)
    objective: Literal["psr", "nsr", "w-reinforce", "reinforce"] = "w-reinforce"
    """which samples to reinforce: psr (correct only), nsr (wrong only), w-reinforce (both, positives x λ), reinforce (both, ±1)"""
    positive_weight: float = 0.1
    """λ: weight of the positive samples in w-reinforce (their advantage is +λ, a wrong sample's −1)"""
    # Modification 2 (vs GRPO): an entropy bonus in the loss
    entropy_coef: float = 1e-4
    """c_H: weight of the entropy bonus −c_H·H added to every token's loss; 0 turns it off"""
    clip_low: float = 0.2
    """ε_low: lower clip of the ratio (1 − ε_low)"""
    clip_high: float = 0.2
    """ε_high: upper clip of the ratio (1 + ε_high)"""
    kl_coef: float = 0.0
    """β: weight of the k3 KL to the initial policy, a loss term; 0 loads no reference model"""
    # Modification 3 (vs GRPO): token-mean (over the kept samples) by default, as the official code
    loss_agg: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = "token-mean"  # fmt: skip
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


def nsr_advantages(
    correct: torch.Tensor, objective: str, positive_weight: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Modification 1 (vs GRPO): advantages and the samples to train on, ``correct [B]`` (bool or 0/1) ->
    ``(advantages [B], keep [B])``. No baseline: the advantage depends on the sample's own reward only.
    Samples not kept get advantage 0.
    >>> correct = torch.tensor([1, 0, 0, 1])
    >>> nsr_advantages(correct, "psr")
    (tensor([1., 0., 0., 1.]), tensor([ True, False, False,  True]))
    >>> nsr_advantages(correct, "nsr")
    (tensor([ 0., -1., -1.,  0.]), tensor([False,  True,  True, False]))
    >>> nsr_advantages(correct, "w-reinforce", positive_weight=0.1)
    (tensor([ 0.1000, -1.0000, -1.0000,  0.1000]), tensor([True, True, True, True]))
    >>> nsr_advantages(correct, "reinforce")
    (tensor([ 1., -1., -1.,  1.]), tensor([True, True, True, True]))
    """
    correct = correct.bool()  # [B]
    everything = torch.ones_like(correct)  # [B]
    if objective == "psr":  # only the correct samples, pushed up (SFT on them)
        return torch.where(correct, 1.0, 0.0), correct.clone()
    if objective == "nsr":  # only the wrong samples, pushed down
        return torch.where(correct, 0.0, -1.0), ~correct
    if objective == "w-reinforce":  # every sample; the positives down-weighted by λ
        return torch.where(correct, positive_weight, -1.0), everything
    if objective == "reinforce":  # every sample, ±1 (= w-reinforce with λ = 1)
        return torch.where(correct, 1.0, -1.0), everything
    raise ValueError(f"unknown --objective {objective!r}; expected one of {OBJECTIVES}")


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
    when ``--kl-coef`` > 0, ``ref_logprobs [B, C]``. Returns the update's statistics (means over its steps)."""
    rollout, advantages, ref_logprobs = batch["rollout"], batch["advantages"], batch.get("ref_logprobs")
    mask = rollout.completion_mask  # [B, C]
    B, C = mask.shape
    # Modification 4 (vs GRPO): nothing kept (NSR on an all-correct batch, PSR on an all-wrong one): no step
    if B == 0:
        return {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "entropy": 0.0, "grad_norm": 0.0}
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
                # Modification 2 (vs GRPO): the entropy enters the loss (with its gradient)
                logprobs, entropy = completion_logprobs(
                    model, rollout.input_ids[mb], rollout.attention_mask[mb], C, args.temperature,
                    with_entropy=True, entropy_grad=args.entropy_coef > 0,
                )  # fmt: skip
                old = old_logprobs[mb] if old_logprobs is not None else logprobs.detach()
                per_token_loss, clipped = clipped_surrogate(
                    logprobs, old, advantages[mb], args.clip_low, args.clip_high
                )
                per_token_loss = per_token_loss * weights[mb]  # the sampler/trainer mismatch correction
                # Modification 2 (vs GRPO): the entropy bonus (then the entropy is a metric again: detached)
                per_token_loss, entropy = per_token_loss - args.entropy_coef * entropy, entropy.detach()
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
    # Modification 5 (vs GRPO): no group baseline, so one sample per prompt is enough; λ must be >= 0
    if args.group_size < 1:
        raise SystemExit(f"--group-size must be >= 1, got {args.group_size}")
    if args.positive_weight < 0:
        raise SystemExit(
            f"--positive-weight must be >= 0 (the weight of the positive samples), got {args.positive_weight}"
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

    for step in run.steps():  # TRY NOT TO MODIFY: progress, Ctrl-C, checkpoints, the sample budget
        # TRY NOT TO MODIFY: sample G completions for each of this step's prompts and score them
        batch, prompts = run.next_batch(Q)
        rollout = sampler.generate(prompts, G, args.max_new_tokens, args.temperature, args.top_p)
        results, correct = run.verify(rollout, batch)
        rewards = correct.view(Q, G)  # [Q, G]

        # ALGO LOGIC: Modification 1 (vs GRPO): no baseline; ±1 (or λ) advantages and the samples to keep
        advantages, keep = nsr_advantages(rewards.view(-1), args.objective, args.positive_weight)  # [B], [B]
        # Modification 6 (vs GRPO): the update sees the kept rows only; kept_frac and skipped_steps are logged
        kept = rollout.select(keep)  # B_kept rows
        update = {"rollout": kept, "advantages": advantages[keep].to(args.device)}
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

"""DPPO: Divergence Proximal Policy Optimization — a trust region on the divergence, not on the ratio.

Paper: Qi, Zhou, Liu, Pang, Du, Lin, Lee, "Rethinking the Trust Region in LLM Reinforcement Learning",
arXiv 2602.04879. Official code: github.com/sail-sg/Stable-RL (``verl/trainer/ppo/core_algos.py``:
``_compute_token_mask_for_policy_loss``, ``compute_policy_loss_with_mask``); in verl 0.9.1 as the policy
losses ``dppo_tv`` and ``dppo_kl`` with the recipe ``examples/dppo_trainer/run_qwen30b_dppo.sh``.

Idea: PPO's clip is a trust region on the ratio ρ = π_θ/π_old of the sampled token, a one-sample estimate of
how far the policy moved. Over a large vocabulary it is the wrong measure: a rare token going from 1e-5 to
1e-3 (ρ = 100) is clipped although the distribution barely moved, while a likely token falling from 0.99
to 0.8 (ρ = 0.81) passes. DPPO masks a token's gradient when the policy left the trust region measured by
a divergence, approximated cheaply on the two outcomes {the sampled token, any other token} (Binary):
total variation |π_θ − π_old| or the KL between those two Bernoulli distributions.

Objective (minimised per token; p = π_θ(y_t), p_old = π_old(y_t), ρ = p / p_old, Â the advantage):

    loss_t = −M_t · sg(ρ_t) · Â · log π_θ(y_t)            (gradient −M_t · Â · ∇ρ_t: PPO's, unclipped)
    M_t = 0 when the token left the trust region in the direction Â pushes it, else 1:
        tv     Â > 0 and p − p_old > δ,            Â ≤ 0 and p_old − p > δ         D_TV = |p − p_old|
        kl     Â > 0, p > p_old and D_KL > δ,      Â ≤ 0, p < p_old and D_KL > δ
               D_KL = p_old · log(p_old / p) + (1 − p_old) · log((1 − p_old) / (1 − p))
        ratio  Â > 0 and ρ > 1 + ε_high,           Â ≤ 0 and ρ < 1 − ε_low         (PPO's clip as a mask)

``--divergence ratio`` gives exactly grpo.py's clipped-surrogate gradient (the official code's ``ppo_recompute``
mask, the paper's MiniRL baseline): the same file at the same schedule with PPO's trust region, to compare.

Modification 1: 8 mini-batches per rollout batch by default, so that π_θ leaves π_old and the trust region acts.
Modification 2: the trust region is a mask on the binary TV or KL divergence (``--divergence``), not the ratio clip.
Modification 3: Dr. GRPO's advantage (no std) and ``seq-mean-token-sum-norm`` by default, as the paper's recipe.

Defaults (the recipe of verl and of the paper's experiments, ``run_qwen30b_dppo.sh``, unless said): δ_TV 0.15,
δ_KL 0.05; 256 prompts per step in mini-batches of 32, one pass: 8 optimizer steps per rollout batch (here 16
prompts in 8 mini-batches of 2 prompts); ``norm_adv_by_std_in_grpo=False`` and ``seq-mean-token-sum-norm``;
TIS off (``clip_ratio_c=10000``). The tiny world keeps grpo.py's G = 8 and lr 1e-4 (the recipe: G = 16, lr
1e-6). Paper-scale command lines: docs/methods/dppo.md.

Deviations / choices:
- The trust region is anchored at π_old, recomputed before the update (verl's ``dppo_tv``/``dppo_kl`` read
  ``old_log_prob``). The paper recommends anchoring at the sampler's own log-probs (Section 5.2; the recipe's
  ``bypass_mode=True``, the official ``dppo_binary_tv``; its ``_recompute`` modes anchor at π_old as here). On
  the tiny world the sampler is the trainer, so the two coincide; with vLLM, ``--rollout-is`` and
  ``--rollout-rs`` correct the sampler/trainer gap separately (common/rollout_correction.py).
- sg(ρ) is not truncated: the recipe turns truncation off and the paper finds it hurts (Section 5.4); verl
  truncates at ``clip_ratio_c`` (its ActorConfig default 3.0), the official code at 10.
- log ρ is clamped to ±20 before exp, as verl does. A token with Â = 0 takes the negative branch of the mask
  (as verl's ``torch.where(A > 0, ...)``): its loss is 0 either way, but it counts in ``clip_frac``.
- The symmetric δ of ``--tv-threshold``/``--kl-threshold``; verl has a lower and an upper threshold
  (``clip_ratio_low``/``clip_ratio_high``, equal in the recipe), which ``dppo_surrogate`` takes.
- Not offered: the paper's Top-K divergence (the sampler's top-K probabilities); prime-rl's default loss
  (DPPO-TV at δ 0.2 against the inference log-probs, plus 1e-3 · (log ρ)² on every token, Kimi-K2.5's term,
  which is kimi.py's penalty).
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
    name="DPPO",
    paper="Qi et al., Rethinking the Trust Region in LLM Reinforcement Learning, arXiv 2602.04879",
    arxiv="2602.04879",
    change="a mask on the binary TV (or KL) between π_θ and π_old replaces the ratio clip; 8 mini-batches",
    gradient_tier=1,
    gradient_claim="at ρ = 1 (one pass, one mini-batch) equals REINFORCE with the mean baseline: −Â ∇log π "
    "aggregated by seq-mean-token-sum-norm (grpo.py's `reinforce` variant); off the policy the masked tokens "
    "drop out, a bias by design",
    verl="verl's own `dppo_tv` / `dppo_kl` (parity tested, clip_ratio_c off)",
    contradiction=({"tv_threshold": 0.0}, "--tv-threshold must be > 0"),
    variants={"dppo-kl": ["--divergence", "kl"], "dppo-ratio": ["--divergence", "ratio"]},
)


@dataclass
class Args:
    # --- experiment ---
    exp_name: str = "dppo"
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
    # Modification 1 (vs GRPO): several optimizer steps per rollout batch, the recipe's 256 / 32 prompts
    num_mini_batches: int = 8
    """optimizer steps per pass: each pass splits the rollout batch into this many mini-batches"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass to save memory"""

    # --- algorithm ---
    # Modification 2 (vs GRPO): the trust region is a mask on a divergence at the sampled token
    divergence: Literal["tv", "kl", "ratio"] = "tv"
    """DPPO's trust region: binary total variation (tv), binary KL (kl), or PPO's ratio clip as a mask (ratio: --clip-low/--clip-high)"""
    tv_threshold: float = 0.15
    """δ of the binary-TV trust region: mask a token whose probability moved by more than δ in its advantage's direction"""
    kl_threshold: float = 0.05
    """δ of the binary-KL trust region: mask a token whose binary KL(π_old ‖ π_θ) exceeds δ, moving in its advantage's direction"""
    clip_low: float = 0.2
    """ε_low: lower clip of the ratio (1 − ε_low)"""
    clip_high: float = 0.2
    """ε_high: upper clip of the ratio (1 + ε_high)"""
    kl_coef: float = 0.0
    """β: weight of the k3 KL to the initial policy, a loss term; 0 loads no reference model"""
    # Modification 3 (vs GRPO): Dr. GRPO's aggregation and advantage (no std), as the paper's recipe
    loss_agg: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = "seq-mean-token-sum-norm"  # fmt: skip
    """how per-token losses are averaged over a mini-batch (grpo.py's module docstring)"""
    scale_rewards: Literal["group", "none"] = "none"
    """divide advantages by the group std (GRPO) or not (Dr. GRPO)"""

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


# ALGO LOGIC: advantages, the masked surrogate (Modification 2 (vs GRPO)), the KL penalty, aggregation


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


# Modification 2 (vs GRPO): no clipped surrogate; the trust region is dppo_surrogate's mask (below)
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


# Modification 2 (vs GRPO): the trust region masks tokens whose binary divergence left it; −M·sg(ρ)·Â·log π
def dppo_surrogate(
    logprobs: torch.Tensor,  # [B, C] log π_θ of the sampled tokens
    old_logprobs: torch.Tensor,  # [B, C] log π_old (detached)
    advantages: torch.Tensor,  # [B] one advantage per completion, broadcast over its tokens
    divergence: str,  # "tv", "kl" or "ratio"
    low: float,  # δ_low (tv, kl) or ε_low (ratio): the bound for Â ≤ 0, whose tokens are pushed down
    high: float,  # δ_high (tv, kl) or ε_high (ratio): the bound for Â > 0, whose tokens are pushed up
) -> tuple[torch.Tensor, torch.Tensor]:
    """Modification 2 (vs GRPO): DPPO's per-token loss (to minimise) and the mask of the tokens outside the
    trust region (they get no gradient).

    loss = −M · sg(ρ) · Â · log π_θ with ρ = exp(logprobs − old_logprobs); M = 0 where the token moved past
    the bound in the direction its advantage pushes it (module docstring). Probabilities 0.5 → 0.7 (ρ = 1.4)
    and 0.01 → 0.05 (ρ = 5) with Â = 1: TV masks the first (0.2 > 0.15) and keeps the second (0.04), the
    ratio clip at 1.2 masks both. A kept token's gradient is −Â · ρ · ∇log π (−1.4 · 1 for the first).

    >>> logp, old = torch.log(torch.tensor([[0.7, 0.05]])), torch.log(torch.tensor([[0.5, 0.01]]))
    >>> dppo_surrogate(logp, old, torch.tensor([1.0]), "tv", 0.15, 0.15)[1]
    tensor([[ True, False]])
    >>> dppo_surrogate(logp, old, torch.tensor([1.0]), "ratio", 0.2, 0.2)[1]
    tensor([[True, True]])
    >>> dppo_surrogate(logp, old, torch.tensor([1.0]), "kl", 0.05, 0.05)[1]  # binary KL 0.087 and 0.025
    tensor([[ True, False]])
    """
    prob, old_prob = torch.exp(logprobs), torch.exp(old_logprobs)  # [B, C]
    ratio = torch.exp((logprobs - old_logprobs).clamp(-20, 20))  # [B, C] clamped as in verl (no overflow)
    if divergence == "ratio":
        up, down = ratio > 1 + high, ratio < 1 - low
    else:
        if divergence == "tv":
            div = (prob - old_prob).abs()
        else:  # the KL between Bernoulli(p_old) and Bernoulli(p): the sampled token against all others
            div = old_prob * (old_logprobs - logprobs) + (1 - old_prob) * torch.log(
                (1 - old_prob + 1e-8) / (1 - prob + 1e-8)
            )
        up, down = (prob > old_prob) & (div > high), (prob < old_prob) & (div > low)
    masked = torch.where(advantages[:, None] > 0, up, down).detach()  # [B, C]
    per_token_loss = -advantages[:, None] * ratio.detach() * logprobs * (~masked)
    return per_token_loss, masked


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
    # Modification 2 (vs GRPO): the bounds of the trust region; clip_frac is the share of masked tokens
    delta = {"tv": args.tv_threshold, "kl": args.kl_threshold}.get(args.divergence)
    low, high = (args.clip_low, args.clip_high) if delta is None else (delta, delta)
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
                # Modification 2 (vs GRPO): DPPO's masked surrogate in place of the clipped one
                per_token_loss, clipped = dppo_surrogate(
                    logprobs, old, advantages[mb], args.divergence, low, high
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
    for flag, delta in (("--tv-threshold", args.tv_threshold), ("--kl-threshold", args.kl_threshold)):
        if delta <= 0:  # Modification 2 (vs GRPO): δ = 0 would mask every token that moved at all
            raise SystemExit(f"{flag} must be > 0, got {delta}")
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

        # ALGO LOGIC: group-relative advantages, one per completion, then the policy update
        advantages = grpo_advantages(rewards, args.scale_rewards).view(-1).to(args.device)  # [B]
        update = {"rollout": rollout, "advantages": advantages}
        if ref_model is not None:
            update["ref_logprobs"] = rollout_logprobs(ref_model, rollout, args.temperature, args.micro_batch_size)  # fmt: skip
        stats = update_policy(model, optimizer, update, args)
        scheduler.step()
        sampler.update_weights(model)  # TRY NOT TO MODIFY: the sampler must see the new weights

        run.log(step, rollout, results, rewards, stats)  # TRY NOT TO MODIFY: metrics, evaluation, completions
    return run.finish()  # TRY NOT TO MODIFY: the before/after table and plots


if __name__ == "__main__":
    main(tyro.cli(Args))

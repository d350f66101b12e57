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

    L(θ) = token-mean_{i kept, t} max(−A_i ρ_{i,t}, −A_i clip(ρ_{i,t}, 1 − ε_low, 1 + ε_high)) − c_H · token-mean H_{i,t}

With one update per batch ρ ≡ 1 and ∇L = −token-mean(A_i ∇log π_θ(o_{i,t})): PSR is exactly the SFT
gradient on the correct samples and NSR exactly its negation on the wrong ones. The paper's form,
L_PSR = −E_x Σ_{y correct} π_θ(y|x) and L_NSR = +E_x Σ_{y wrong} π_θ(y|x), has the same gradient up to scale.

Defaults: ``--objective w-reinforce --lam 0.1`` (the paper's recommended setting; its λ sweep
{0, 0.05, 0.1, 0.2, 1} found λ ≤ 0.2 good), clip 0.2 and token-mean aggregation (verl), no KL (as every
PSR/NSR run in the paper). Paper scale: Qwen2.5-Math-7B on MATH, 1024 prompts × 8 samples, T = 1.0,
lr 1e-6 constant: that is the command line in the README. The tiny world uses grpo.py's rollout budget
and learning rate.

Deviations / choices:
- λ in the official code: the launch script ``run_qwen2.5-math-7b_psr_nsr.sh`` passes
  ``algorithm.positive_advantage_weight`` on a line after ``$@`` that is a comment (the line before it
  ends without a backslash), so the YAML default ``positive_advantage_weight: 1`` is what runs: switching
  the script to ``weighted`` silently trains REINFORCE (λ = 1). This file defaults to λ = 0.1 (paper);
  ``--lam 1`` (or ``--objective reinforce``) reproduces the script as shipped.
- Entropy bonus: the paper states 1e-4; the code never overrides verl's default ``entropy_coeff: 0.001``.
  This file defaults to the paper's 1e-4; ``--entropy-coef 1e-3`` gives the code's value, 0 turns it off.
- Rewards: the paper writes r ∈ {+1, −1} and a π-weighted loss; the code (and this file) takes 0/1 scores,
  turns them into the advantages above and feeds them to the PPO-clip surrogate.
- Token mean over the KEPT samples only [ours]: PSR and NSR first drop the samples they do not train on
  (as the code's ``batch.subset``) and the token mean here runs over what is kept, so this file's NSR
  step does not shrink as wrong samples become rare. The official actor differs: it scales each
  micro-batch's token-mean loss by its size over the configured mini-batch size, so once the kept
  samples no longer fill a mini-batch the step shrinks in proportion (and there are fewer optimizer
  steps). W-REINFORCE keeps every sample, so with λ = 0 its gradient is NSR's times (tokens of wrong
  samples) / (all tokens): the same direction, a smaller step. A batch with nothing to keep (NSR on an all-correct batch, PSR on an
  all-wrong one) takes no optimizer step; it is counted in ``skipped_steps`` (the lr schedule still
  advances), never turned into a 0/0.
- Optimizer steps per batch: the code splits each rollout batch into 4 mini-batches (one pass, later
  mini-batches slightly off-policy; the subset PSR/NSR batches give fewer of them). Here, as in grpo.py,
  one step per batch by default; ``--updates-per-batch`` repeats the whole batch.
- The logged ``entropy`` is over the trained (kept) tokens; ``kept_frac`` is the share of samples trained on.
- [ours] ``--group-size 1`` is allowed (there is no group baseline); ``--loss-agg`` is kept as a flag.
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
    """G: completions sampled per prompt (no group baseline here, so 1 is allowed)"""
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
    # Modification 1 (vs GRPO): --objective and --lam replace --scale-rewards (see nsr_advantages)
    objective: Literal["psr", "nsr", "w-reinforce", "reinforce"] = "w-reinforce"
    """which samples to reinforce: psr (correct only), nsr (wrong only), w-reinforce (both, positives x λ), reinforce (both, ±1)"""
    lam: float = 0.1
    """λ: weight of the positive samples in w-reinforce (paper: 0.1; the official script silently runs 1)"""
    # Modification 2 (vs GRPO): an entropy bonus in the loss
    entropy_coef: float = 1e-4
    """c_H: entropy bonus weight (paper: 1e-4; official code: verl's default 1e-3); 0 disables it"""
    clip_low: float = 0.2
    """ε_low: lower clip of the ratio (1 − ε_low)"""
    clip_high: float = 0.2
    """ε_high: upper clip of the ratio (1 + ε_high); 0.28 is DAPO's clip-higher"""
    kl_coef: float = 0.0
    """β: weight of the k3 KL to the initial policy; 0 loads no reference model"""
    # Modification 3 (vs GRPO): token-mean (over the kept samples) by default, as the official code
    loss_agg: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"] = "token-mean"
    """how per-token losses of the kept samples are averaged (official code: token-mean)"""

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


# ALGO LOGIC: advantages and kept samples, clipped surrogate, KL penalty, loss aggregation (pure functions)

OBJECTIVES = ("psr", "nsr", "w-reinforce", "reinforce")


def nsr_advantages(
    correct: torch.Tensor, objective: str, lam: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and the samples to train on: ``correct [B]`` (bool or 0/1) -> ``(advantages [B], keep [B])``.

    No baseline: the advantage depends on the sample's own reward only. Samples not kept get advantage 0.

    >>> correct = torch.tensor([1, 0, 0, 1])
    >>> nsr_advantages(correct, "psr")
    (tensor([1., 0., 0., 1.]), tensor([ True, False, False,  True]))
    >>> nsr_advantages(correct, "nsr")
    (tensor([ 0., -1., -1.,  0.]), tensor([False,  True,  True, False]))
    >>> nsr_advantages(correct, "w-reinforce", lam=0.1)
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
        return torch.where(correct, lam, -1.0), everything
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
    # Modification 4 (vs GRPO): no group baseline, so one sample per prompt is enough; λ must be >= 0
    if args.group_size < 1:
        raise SystemExit(f"--group-size must be >= 1, got {args.group_size}")
    if args.lam < 0:
        raise SystemExit(f"--lam must be >= 0 (the weight of the positive samples), got {args.lam}")
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

            # ALGO LOGIC: Modification 1 (vs GRPO): no baseline; ±1 (or λ) advantages and the samples to keep
            advantages, keep = nsr_advantages(rewards.view(-1), args.objective, args.lam)  # [B], [B] bool
            kept = rollout.select(keep)  # the rollout restricted to the kept samples (B_kept rows)
            advantages = advantages[keep].to(args.device)  # [B_kept]

            # ALGO LOGIC: the policy update (PPO-clip surrogate + entropy bonus + optional KL), in micro-batches
            B = len(rollout.completions)  # all samples (for logging)
            mask = kept.completion_mask  # [B_kept, C]: the token mean below runs over kept samples only
            B_kept, C = mask.shape
            num_tokens = int(mask.sum())
            micro_batches = [
                slice(i, i + args.micro_batch_size) for i in range(0, B_kept, args.micro_batch_size)
            ]
            # Modification 5 (vs GRPO): nothing to keep (NSR on an all-correct batch, PSR on an all-wrong one)
            # -> no optimizer step, counted in skipped_steps, never a 0/0 token mean
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
            stats = {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "entropy": 0.0, "logprob_mismatch": 0.0}
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
                        entropy_grad=args.entropy_coef > 0,
                    )  # [b, C] each
                    old = old_logprobs[mb] if old_logprobs is not None else logprobs.detach()
                    per_token_loss, clipped = clipped_surrogate(
                        logprobs, old, advantages[mb], args.clip_low, args.clip_high
                    )
                    if args.tis_cap > 0:  # sampler/trainer mismatch correction
                        per_token_loss = per_token_loss * truncated_is_weights(
                            old, kept.behavior_logprobs[mb], args.tis_cap
                        )
                    # Modification 2 (vs GRPO): entropy bonus (paper 1e-4, official code 1e-3)
                    per_token_loss = per_token_loss - args.entropy_coef * entropy
                    if ref_logprobs is not None:
                        kl = k3_kl(logprobs, ref_logprobs[mb])  # [b, C]
                        per_token_loss = per_token_loss + args.kl_coef * kl
                        stats["kl"] += float((kl * mask[mb]).sum()) / num_tokens / args.updates_per_batch
                    loss = aggregate_loss(
                        per_token_loss, mask[mb], args.loss_agg, B_kept, num_tokens, args.max_new_tokens
                    )
                    loss.backward()
                    stats["loss"] += loss.item() / args.updates_per_batch
                    stats["clip_frac"] += (
                        float((clipped * mask[mb]).sum()) / num_tokens / args.updates_per_batch
                    )
                    if update == 0:
                        stats["entropy"] += float((entropy.detach() * mask[mb]).sum()) / num_tokens
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
                "kept_frac": keep.float().mean().item(),  # Modification 6 (vs GRPO): what was trained on
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

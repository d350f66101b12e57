"""RLOO: REINFORCE Leave-One-Out — each completion's baseline is the mean reward of the others in its group.

Paper: Ahmadian, Cremer, Gallé, Fadaee, Kreutzer, Pietquin, Üstün, Hooker, "Back to Basics: Revisiting
REINFORCE Style Optimization for Learning from Human Feedback in LLMs", arXiv 2402.14740 (Section 3.2).
Estimator as implemented in verl (``compute_rloo_outcome_advantage``, verl/trainer/ppo/core_algos.py).

Idea: REINFORCE with k samples per prompt, where the baseline of sample i is the average reward of the
other k − 1 samples: an unbiased baseline (it does not depend on y_i), no value network, no std
scaling. The paper argues that PPO's machinery (clipping, a critic) is unnecessary for LLM fine-tuning
and optimises the whole sequence as one action with plain REINFORCE; RLVR setups usually keep PPO-clip.

Objective (maximised; G samples per prompt):

    A_i = r_i − (1/(G−1)) Σ_{j≠i} r_j  =  G/(G−1) · (r_i − mean(r))
    --clip (default):  J(θ) = E [ agg_{i,t} min(ρ_{i,t} A_i, clip(ρ_{i,t}, 1 − ε_low, 1 + ε_high) A_i) ]
    --no-clip:         J(θ) = E [ agg_{i,t} A_i · log π_θ(o_{i,t} | q, o_{i,<t}) ]   (plain REINFORCE)

Defaults run the CPU demo on the tiny built-in world (``./run.sh rloo``) with grpo.py's budget (100 steps
of 16 prompts × G = 8, 80 new tokens, lr 1e-4, clip 0.2). The paper's RLHF runs used k = 2 and k = 4
samples per prompt [paper]; G = 8 here, as the other group methods of this project.

Deviations / choices:
- The default keeps PPO-clip (ε = 0.2), as RLVR runs of RLOO do (verl's RLOO recipe); ``--no-clip`` is the
  paper's plain REINFORCE. REINFORCE is on-policy, so ``--no-clip`` requires ``--updates-per-batch 1``
  (validated); with one update per batch the two give the same gradient (ρ = 1, the clip never binds).
- The paper's REINFORCE treats the whole completion as one action (its sequence log-prob, a token sum);
  the default aggregation here is grpo.py's ``seq-mean-token-mean``. ``--loss-agg
  seq-mean-token-sum-norm`` is the sequence log-prob up to the constant 1/L_max.
- G = 1 has no leave-one-out baseline: ``--group-size`` must be >= 2 (verl returns the raw score then).
- The paper's RLHF reward had a KL penalty folded in; with a rule verifier β = 0 by default, and
  ``--kl-coef`` is grpo.py's k3 loss term.
- Same as verl's estimator up to float rounding: verl computes r_i·G/(G−1) − mean·G/(G−1).
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
    exp_name: str = "rloo"
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
    # Modification 1 (vs GRPO): plain REINFORCE (the paper's form) when the clip is off
    clip: bool = True
    """PPO-clip the ratio (--clip, the RLVR default) or plain REINFORCE, A·log π_θ (--no-clip, the paper's)"""
    clip_low: float = 0.2
    """ε_low: lower clip of the ratio (1 − ε_low)"""
    clip_high: float = 0.2
    """ε_high: upper clip of the ratio (1 + ε_high); 0.28 is DAPO's clip-higher"""
    kl_coef: float = 0.0
    """β: weight of the k3 KL to the initial policy; 0 loads no reference model"""
    loss_agg: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"] = "seq-mean-token-mean"
    """how per-token losses are averaged (see the module docstring)"""
    # Modification 2 (vs GRPO): no --scale-rewards; the leave-one-out baseline has no std

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


# Modification 2 (vs GRPO): the leave-one-out baseline
def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """RLOO advantages. ``rewards [Q, G]`` (G >= 2) -> ``advantages [Q, G]``: A_i = r_i − mean_{j≠i} r_j.

    Written as the leave-one-out mean, (Σ_j r_j − r_i)/(G − 1), which equals G/(G−1)·(r_i − mean(r)).
    verl: ``compute_rloo_outcome_advantage`` on outcome rewards.

    >>> rloo_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))  # baselines 0, 1/3, 1/3, 1/3
    tensor([[ 1.0000, -0.3333, -0.3333, -0.3333]])
    >>> rloo_advantages(torch.tensor([[1.0, 1.0, 1.0]]))  # a uniform group: 0
    tensor([[0., 0., 0.]])
    """
    G = rewards.shape[1]
    baseline = (rewards.sum(dim=1, keepdim=True) - rewards) / (G - 1)  # [Q, G] mean of the others
    return rewards - baseline


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


# Modification 1 (vs GRPO): plain REINFORCE
def reinforce_loss(logprobs: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """REINFORCE's per-token loss (to minimise), −A_i · log π_θ(o_{i,t}): no ratio, no clip.
    ``logprobs [B, C]``, ``advantages [B]`` -> ``[B, C]``. Its gradient, −A_i ∇log π_θ, equals that of
    the clipped surrogate at ρ = 1.

    >>> reinforce_loss(torch.log(torch.tensor([[0.5, 1.0]])), torch.tensor([2.0]))
    tensor([[1.3863, -0.0000]])
    """
    return -logprobs * advantages[:, None]


# TRY NOT TO MODIFY: the training loop


def validate(args: Args) -> None:
    """Contradictory flags fail here, before anything is loaded."""
    if args.group_size < 2:
        raise SystemExit(f"--group-size must be >= 2 for a group-relative advantage, got {args.group_size}")
    if args.micro_batch_size < 1 or args.prompts_per_step < 1 or args.num_steps < 0:
        raise SystemExit("--micro-batch-size and --prompts-per-step must be >= 1 and --num-steps >= 0")
    if args.updates_per_batch < 1:
        raise SystemExit(f"--updates-per-batch must be >= 1, got {args.updates_per_batch}")
    if not args.clip and args.updates_per_batch > 1:  # Modification 1 (vs GRPO)
        raise SystemExit(
            "--no-clip is on-policy REINFORCE: it needs --updates-per-batch 1 (use --clip for more)"
        )
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

            # ALGO LOGIC: leave-one-out advantages, one per completion
            advantages = rloo_advantages(rewards).view(-1).to(args.device)  # [B] Modification 2 (vs GRPO)

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
                    if not args.clip:  # Modification 1 (vs GRPO): plain REINFORCE, nothing clipped
                        per_token_loss, clipped = (
                            reinforce_loss(logprobs, advantages[mb]),
                            torch.zeros_like(clipped),
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

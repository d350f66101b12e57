"""OPD: on-policy distillation — the student samples, a teacher scores every sampled token, and the per-token
advantage is the teacher's log-prob minus the student's (the reverse KL, one token at a time).

Paper: Agarwal, Vieillard, Zhou, Stanczyk, Ramos, Geist, Bachem, "On-Policy Distillation of Language Models:
Learning from Self-Generated Mistakes" (GKD), arXiv 2306.13649: train the student on its own samples against a
teacher's token distributions, reverse KL among the divergences. The sampled-token, policy-gradient form used
here is Thinking Machines' "On-Policy Distillation" (Lu et al., 2025; code: tinker-cookbook
``distillation/train_on_policy.py``, ``incorporate_kl_penalty``), as verl (``distillation_loss`` with
``use_policy_gradient``), prime-rl (``algo/opd.py``) and TRL (``experimental/iw_opd``) implement it.

Idea: RL gives one bit per completion; a teacher gives a grade to every token the student wrote. The student
samples as in GRPO, the teacher computes log π_T of each sampled token given the same prefix, and
log π_T − log π_θ is the token's advantage: tokens the teacher finds likelier than the student does are
pushed up, the others down. The verifier still runs, for ``accuracy`` only; no reward enters the loss.

Objective (maximised; ρ = π_θ / π_old per token; sg = stop-gradient):

    A_{i,t} = sg( log π_T(o_{i,t} | q, o_{i,<t}) − log π_θ(o_{i,t} | q, o_{i,<t}) )
    J(θ) = E_q [ agg_{i,t} min(ρ_{i,t} A_{i,t}, clip(ρ_{i,t}, 1 − ε_low, 1 + ε_high) A_{i,t}) ]

At ρ = 1 the gradient is −E Σ_t (log π_θ − log π_T)(o_t) ∇log π_θ(o_t): at every visited prefix, an unbiased
estimate of ∇ KL(π_θ(·|prefix) ‖ π_T(·|prefix)) (E_{y~π}[∇log π(y)] = 0), with the prefixes' own dependence on
θ ignored (the blog's discount 0; the sequence-level KL would add each token's future terms).

Modification 1: a frozen teacher (``--teacher-model``, ``--teacher-temperature``) scores every sampled token.
Modification 2: the per-token advantage sg(log π_T − log π_θ) replaces the group z-score; no reward in the loss.
Modification 3: ``token-mean`` is the default aggregation (verl's default; every token's KL weighs the same).
Modification 4: the clipped surrogate is taken per token (each token its own advantage).
Modification 5: ``--group-size`` 1 is allowed (no group baseline); a teacher that is the student is refused.
Modification 6: the reward logged as ``reward_mean`` is the sequence's log π_T − log π_sampler; ``teacher_kl``.

Defaults run the CPU demo on the tiny built-in world with grpo.py's budget and schedule (100 steps of 16
prompts × 8 samples, 80 new tokens, lr 1e-4: tiny world, not tuned): one optimizer step per batch, as the blog's
code (``num_substeps`` 1, its "importance_sampling" loss); ``--num-mini-batches`` or ``--updates-per-batch``
above 1 make the ratio and the clip act, as verl's mini-batches. The default teacher is a stronger policy of the
same world, grpo.py's default run (held-out pass@1 0.566 against the base's 0.334), made once by

    ./run.sh grpo --run-name opd-teacher --eval-every 0 --eval-problems 30 --eval-n 2 --save-every 100

(about 4 CPU minutes; nothing is shipped); ``./run.sh opd`` without it says so in one line. On a GPU: any model
with the student's tokenizer. Paper-scale command lines: docs/methods/opd.md.

Deviations / choices:
- The student's log-prob in A is the live π_θ (detached), as verl and prime-rl; the blog's code uses the
  sampler's (fixed for the batch): the same on the first optimizer step of a batch, up to the sampler's numerics.
- Discount 0 (the blog's default ``kl_discount_factor``): each token's advantage is its own log-ratio, not a
  sum over the tokens after it.
- No clamp of the advantage, as tinker and verl's trainer config (``loss_max_clamp: null``; its config class
  defaults to ±10). verl's vanilla loss also dual-clips ratios above 3 for negative advantages; the clip here is
  grpo.py's.
- Pure distillation: the verifier's reward is not in the loss (verl's ``use_task_rewards`` adds a GRPO loss; the
  blog adds environment rewards to the advantage when there are any).
"""

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import tyro

from common.model import check_model_path, completion_logprobs, load_policy, rollout_logprobs
from common.preflight import check_run_args
from common.registry import MethodInfo
from common.rollout import make_sampler
from common.rollout_correction import rollout_correction
from common.rollout_types import sampler_gap
from common.run import Run, warmup_scheduler
from common.tiny_task import WORLD_NAMES
from common.tiny_world import ensure_world

METHOD = MethodInfo(
    name="On-policy distillation",
    paper="Agarwal et al., On-Policy Distillation of Language Models (GKD), arXiv 2306.13649; the sampled-token "
    "reverse-KL recipe of Thinking Machines' On-Policy Distillation (2025)",
    arxiv="2306.13649",
    change="a teacher scores every sampled token: advantage log pi_teacher - log pi_student per token, no reward",
    gradient_tier=3,
    gradient_claim="an auxiliary teacher model: no exact form over rewards. At rho = 1, unbiased for the gradient "
    "of the per-prefix reverse KL sum_t KL(pi_theta(.|prefix) || pi_T(.|prefix)) with the visited prefixes held "
    "fixed (discount 0), not of the sequence-level KL; checked exactly by enumeration on a one-token vocabulary",
    verl="verl's own: `distillation.enabled=True` with `distillation_loss.loss_mode=k1`, `use_policy_gradient=True`, "
    "`use_task_rewards=False` (equal to opd.py's loss, tested)",
    contradiction=({"teacher_model": "tiny"}, "is the student's own model at the sampling temperature"),
    # the registry's short runs: the tiny world, sharpened, teaches (a random model, or the tiny world itself)
    smoke_flags=("--teacher-model=tiny", "--teacher-temperature=0.5"),
)


@dataclass
class Args:
    # --- experiment ---
    exp_name: str = "opd"
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
    clip_high: float = 0.2
    """ε_high: upper clip of the ratio (1 + ε_high)"""
    kl_coef: float = 0.0
    """β: weight of the k3 KL to the initial policy, a loss term; 0 loads no reference model"""
    # Modification 1 (vs GRPO): the teacher
    teacher_model: str = "runs/opd-teacher/checkpoints/step-00000100/model"
    """the teacher: a directory (a checkpoint's model/), a tiny world's name or a Hugging Face model id, with the student's tokenizer"""
    teacher_temperature: float = 1.0
    """temperature of the teacher's log-probs, softmax(logits / T); below the sampling temperature a sharper teacher"""
    # Modification 2 (vs GRPO): no --scale-rewards (no reward in the loss)
    # Modification 3 (vs GRPO): token-mean is the default aggregation (verl's)
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


def distillation_advantages(teacher_logprobs: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    """Modification 2 (vs GRPO): per-token advantages ``[B, C]``: log π_T − log π_θ of each sampled token,
    detached (the negative of the k1 estimate of the reverse KL at that token). The teacher gives the first
    token probability 0.8 where the student gives 0.4 (A = log 2 = 0.693: pushed up), the second 0.1 where the
    student gives 0.2 (A = −log 2: pushed down):
    >>> distillation_advantages(torch.log(torch.tensor([[0.8, 0.1]])), torch.log(torch.tensor([[0.4, 0.2]])))
    tensor([[ 0.6931, -0.6931]])
    """
    return (teacher_logprobs - logprobs).detach()  # [B, C] Modification 2 (vs GRPO)


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


def distillation_surrogate(
    logprobs: torch.Tensor,  # [B, C] log π_θ of the sampled tokens
    old_logprobs: torch.Tensor,  # [B, C] log π_old (detached)
    teacher_logprobs: torch.Tensor,  # [B, C] log π_T of the same tokens (detached)
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Modification 4 (vs GRPO): grpo.py's clipped surrogate with each token its own row and its own advantage,
    ``distillation_advantages``: the per-token loss ``[B, C]`` (to minimise) and the mask of clipped tokens.
    At ρ = 1 (π_θ = π_old) the loss is −A and its gradient −A ∇log π_θ. A token the teacher finds twice as
    likely (A = log 2) at ρ = 1.5 is clipped at 1.2 (loss −1.2 log 2 = −0.8318, no gradient):
    >>> loss, clipped = distillation_surrogate(torch.log(torch.tensor([[0.3, 0.2]])), torch.log(torch.tensor([[0.2, 0.2]])),
    ...                                        torch.log(torch.tensor([[0.6, 0.4]])), 0.2, 0.2)
    >>> loss, clipped
    (tensor([[-0.8318, -0.6931]]), tensor([[ True, False]]))
    """
    advantages = distillation_advantages(teacher_logprobs, logprobs)  # [B, C]
    per_token_loss, clipped = clipped_surrogate(
        logprobs.reshape(-1, 1), old_logprobs.reshape(-1, 1), advantages.reshape(-1), clip_low, clip_high
    )  # [B·C, 1]: one token per row
    return per_token_loss.view_as(logprobs), clipped.view_as(logprobs)


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
    changes the gradient). ``batch``: ``rollout`` (a ``common.rollout_types.Rollout``), ``teacher_logprobs [B, C]``
    and, when ``--kl-coef`` > 0, ``ref_logprobs [B, C]``. Returns the update's statistics (means over its steps)."""
    # Modification 2 (vs GRPO): the teacher's log-probs, not advantages, come with the batch
    rollout, teacher_logprobs, ref_logprobs = batch["rollout"], batch["teacher_logprobs"], batch.get("ref_logprobs")  # fmt: skip
    mask = rollout.completion_mask  # [B, C]
    B, C = mask.shape
    steps, stats = args.updates_per_batch * args.num_mini_batches, {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0}
    # π_old: the trainer's log-probs before the first optimizer step, needed once the ratio can leave 1
    needs_old = steps > 1 or args.rollout_is != "none" or args.rollout_rs != "none"
    old_logprobs = rollout_logprobs(model, rollout, args.temperature, args.micro_batch_size) if needs_old else None  # fmt: skip
    advantages = None if old_logprobs is None else teacher_logprobs - old_logprobs  # Modification 2 (vs GRPO)
    weights, stats_rc = rollout_correction(old_logprobs, rollout.behavior_logprobs, mask, advantages, args)
    model.train()
    total_tokens = mask.sum().item()
    for update in range(args.updates_per_batch):
        for rows in torch.arange(B).tensor_split(args.num_mini_batches):  # one optimizer step each
            num_tokens = int(mask[rows].sum())
            for mb in rows.split(args.micro_batch_size):
                logprobs, entropy = completion_logprobs(model, rollout.input_ids[mb], rollout.attention_mask[mb], C, args.temperature, with_entropy=True)  # fmt: skip
                old = old_logprobs[mb] if old_logprobs is not None else logprobs.detach()
                per_token_loss, clipped = distillation_surrogate(  # Modification 4 (vs GRPO): per token
                    logprobs, old, teacher_logprobs[mb], args.clip_low, args.clip_high
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
    # Modification 5 (vs GRPO): no group baseline, so any group size; a teacher that is the initial student
    if args.group_size < 1 or args.teacher_temperature <= 0:
        raise SystemExit("--group-size must be >= 1 and --teacher-temperature > 0")
    if args.teacher_model == args.model_name_or_path and args.teacher_temperature == args.temperature:
        raise SystemExit(
            f"--teacher-model {args.teacher_model!r} is the student's own model at the sampling temperature: every "
            "advantage would be 0; give a stronger model or a lower --teacher-temperature"
        )
    check_run_args(args)  # TRY NOT TO MODIFY: model path, data, template, shared flags


def main(args: Args) -> dict:
    validate(args)
    run = Run(args)  # TRY NOT TO MODIFY: run directory, seeding, data, verifier (common/run.py)
    try:  # Modification 1 (vs GRPO): the teacher exists (the default is made by the docstring's command)
        check_model_path(args.teacher_model, "--teacher-model")
    except FileNotFoundError as error:
        raise SystemExit(f"error: {error}; the default teacher is made by ./run.sh grpo --run-name opd-teacher "
                         "--eval-every 0 --eval-problems 30 --eval-n 2 --save-every 100 (docs/methods/opd.md)") from None  # fmt: skip
    if args.teacher_model in WORLD_NAMES:
        ensure_world(args.teacher_model)
    model, tokenizer = load_policy(args.model_name_or_path, args.dtype, args.device, args.gradient_checkpointing)  # fmt: skip
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if args.kl_coef > 0 else None
    # Modification 1 (vs GRPO): the frozen teacher, with the student's tokenizer
    teacher, teacher_tokenizer = load_policy(args.teacher_model, args.dtype, args.device)
    teacher.eval().requires_grad_(False)
    if teacher_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise SystemExit(f"error: --teacher-model {args.teacher_model!r} has another tokenizer than the student")  # fmt: skip
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
        # Modification 2 (vs GRPO): `correct` is logged (accuracy), never trained on

        # ALGO LOGIC: the teacher scores every sampled token (Modification 1 (vs GRPO)), then the policy update
        teacher_logprobs = rollout_logprobs(teacher, rollout, args.teacher_temperature, args.micro_batch_size)  # fmt: skip
        # Modification 6 (vs GRPO): the logged reward, log π_T − log π_sampler summed over each completion
        gap = (teacher_logprobs - rollout.behavior_logprobs) * rollout.completion_mask  # [B, C]
        rewards = gap.sum(-1).view(Q, G).cpu()  # [Q, G] −(the completion's sampled reverse KL)
        update = {"rollout": rollout, "teacher_logprobs": teacher_logprobs}
        if ref_model is not None:
            update["ref_logprobs"] = rollout_logprobs(ref_model, rollout, args.temperature, args.micro_batch_size)  # fmt: skip
        stats = update_policy(model, optimizer, update, args)
        stats["teacher_kl"] = float(-gap.sum() / rollout.completion_mask.sum())  # Modification 6 (vs GRPO)
        scheduler.step()
        sampler.update_weights(model)  # TRY NOT TO MODIFY: the sampler must see the new weights

        run.log(step, rollout, results, rewards, stats)  # TRY NOT TO MODIFY: metrics, evaluation, completions
    return run.finish()  # TRY NOT TO MODIFY: the before/after table and plots


if __name__ == "__main__":
    main(tyro.cli(Args))

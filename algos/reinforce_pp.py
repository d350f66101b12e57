"""REINFORCE++: REINFORCE with PPO's tricks — a per-token KL reward, returns, and batch-whitened advantages.

Paper: Hu, "REINFORCE++: An Efficient RLHF Algorithm with Robustness to Both Prompt and Reward Models"
(first title: "A Simple and Efficient Approach for Aligning Large Language Models"), arXiv 2501.03262.
Official code: OpenRLHF (``--advantage_estimator reinforce`` and ``reinforce_baseline``); the estimators as
implemented in verl: ``compute_reinforce_plus_plus_outcome_advantage`` and
``compute_reinforce_plus_plus_baseline_outcome_advantage`` (verl/trainer/ppo/core_algos.py).

Idea: no critic and no per-prompt group normalisation. The KL to the reference policy is folded into a
per-token reward, the verifier's reward is added on the completion's last token, each token's return is
the (γ = 1) sum of the rewards from that token on, and the advantages are these returns whitened over
the WHOLE batch (mean and std over every valid token), which the paper argues is more robust than
normalising inside each prompt's group. The update is PPO's clipped surrogate. ``--baseline group``
(REINFORCE++-baseline, for several samples per prompt) subtracts each prompt's mean reward first, then
whitens over the batch; its KL is a k3 loss term, as verl and OpenRLHF run it.

Objective (maximised; ρ = π_θ / π_old per token, T_i = last token of completion i, β = ``--kl-coef``):

    --baseline none:   r_{i,t} = −β (log π_old(o_{i,t}) − log π_ref(o_{i,t})) + [t = T_i] · r_i
                       R_{i,t} = Σ_{s ≥ t} γ^(s−t) r_{i,s}
    --baseline group:  R_{i,t} = r_i − mean_j r_j  (over the prompt's G completions), for every t
    A_{i,t} = (R_{i,t} − mean(R)) / sqrt(var(R) + 1e-8)   (masked mean and unbiased var over all valid tokens)
    J(θ) = E [ agg_{i,t} min(ρ_{i,t} A_{i,t}, clip(ρ_{i,t}, 1 − ε_low, 1 + ε_high) A_{i,t}) ]
           (− β · KL_k3(π_θ ‖ π_ref) as a loss term with --baseline group)

Defaults run the CPU demo on the tiny built-in world (``./run.sh reinforce_pp``) with grpo.py's budget
(100 steps of 16 prompts × G = 8, 80 new tokens, lr 1e-4, clip 0.2). β = 0.01 is OpenRLHF's default
``--init_kl_coef`` with its default ``--kl_estimator k1`` [code: an OpenRLHF ``train_ppo_ray.py`` found by
code search; the repository of that copy was not confirmed]; γ = 1 as the paper and verl
(``algorithm.gamma``). [unverified: the paper's own β and batch sizes were not read in this session.]

Deviations / choices:
- Whitening: unbiased masked variance and rsqrt(var + 1e-8), as verl's ``masked_whiten``; the masked mean
  here divides by the exact token count (verl adds 1e-8 to it, a ~1e-8 relative difference) and one valid
  token does not raise (verl raises): its variance divisor is clamped at 1.
- Returns assume each completion mask is a prefix of its row (every batch here is); verl 0.9.1 carries a
  return through a hole in the mask (multi-turn observation tokens), ``token_returns`` stops at it. On
  prefix masks the two are equal (integrations/verl/checks.py).
- The KL reward uses the trainer's log-probs of π_old (recomputed before the update, as verl's
  ``old_log_prob``), not the sampler's. An empty completion has no token to carry its reward (verl's
  index −1 would put it on the last padding position); with no token it has no gradient either way.
- With G samples per prompt and ``--baseline none`` the G samples are simply a batch of Q·G (the paper's
  REINFORCE++ samples one per prompt); ``--group-size`` must still be >= 2 because the loop logs group
  statistics, so G = 8 keeps the other scripts' sample budget.
- Loss aggregation is grpo.py's ``seq-mean-token-mean`` by default (``--loss-agg token-mean`` is verl's
  actor default). With ``--updates-per-batch 1`` ρ = 1 and the clip never binds (as in grpo.py).
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
    exp_name: str = "reinforce_pp"
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
    # Modification 1 (vs GRPO): the KL to the reference is a per-token reward (β = 0.01, OpenRLHF's default)
    kl_coef: float = 0.01
    """β: KL to the initial policy; --baseline none: the reward −β·(log π_old − log π_ref) on every token;
    --baseline group: a k3 loss term, as grpo.py; 0 loads no reference model"""
    loss_agg: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"] = "seq-mean-token-mean"
    """how per-token losses are averaged (see the module docstring)"""
    # Modification 2 (vs GRPO): returns whitened over the whole batch replace the per-group std
    baseline: Literal["none", "group"] = "none"
    """none: REINFORCE++ (returns of the KL-folded token rewards); group: REINFORCE++-baseline (the reward
    minus its prompt's mean reward), both then whitened over all valid tokens of the batch"""
    gamma: float = 1.0
    """γ: discount of the token rewards in the returns (1, as the paper and verl)"""

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


# Modification 1 (vs GRPO): the KL folded into a per-token reward
def kl_folded_rewards(
    rewards: torch.Tensor,  # [B] outcome reward of each completion
    kl: torch.Tensor,  # [B, C] per-token k1 = log π_old − log π_ref
    mask: torch.Tensor,  # [B, C] completion mask (a prefix of each row)
    beta: float,
) -> torch.Tensor:
    """Per-token rewards ``[B, C]``: −β·kl on every valid token plus the outcome reward on the last one.

    verl: ``token_level_scores`` (the score on the last response token) minus β·kld·mask in
    ``apply_kl_penalty`` with ``kl_penalty="kl"``.

    >>> kl = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]])
    >>> kl_folded_rewards(torch.tensor([1.0, 0.0]), kl, torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]), 0.1)
    tensor([[-0.1000, -0.2000,  0.7000],
            [-0.0500, -0.0500,  0.0000]])
    """
    token_rewards = -beta * kl * mask  # [B, C]
    last = (mask.sum(-1).long() - 1).clamp(min=0)  # [B] index of the last valid token
    outcome = torch.zeros_like(token_rewards).scatter(
        1, last[:, None], rewards[:, None].to(token_rewards.dtype)
    )
    return token_rewards + outcome * mask


# Modification 2 (vs GRPO): returns, and advantages whitened over every valid token of the batch
def token_returns(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Returns ``[B, C]``: R_t = Σ_{s ≥ t} γ^(s−t) r_s over the valid tokens of each row (0 elsewhere).

    >>> token_returns(torch.tensor([[-0.1, -0.2, 0.7], [-0.05, -0.05, 0.0]]), torch.tensor([[1.0, 1, 1], [1, 1, 0]]))
    tensor([[ 0.4000,  0.5000,  0.7000],
            [-0.1000, -0.0500,  0.0000]])
    """
    returns = torch.zeros_like(token_rewards)  # [B, C]
    running = torch.zeros_like(token_rewards[:, 0])  # [B]
    for t in reversed(range(token_rewards.shape[1])):
        running = (token_rewards[:, t] + gamma * running) * mask[:, t]
        returns[:, t] = running
    return returns


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(values − mean)·rsqrt(var + eps) over the valid tokens (mean and unbiased var over ALL of them),
    0 on the others. ``values [B, C]``, ``mask [B, C]`` -> ``[B, C]``.

    >>> masked_whiten(torch.tensor([[1.0, 2.0, 9.0], [3.0, 0.0, 0.0]]), torch.tensor([[1.0, 1, 0], [1, 0, 0]]))
    tensor([[-1.,  0.,  0.],
            [ 1.,  0.,  0.]])
    """
    count = mask.sum()
    mean = (values * mask).sum() / count.clamp(min=1)
    var = (((values - mean) * mask) ** 2).sum() / (count - 1).clamp(min=1)  # unbiased, as verl
    return torch.where(mask.bool(), (values - mean) * torch.rsqrt(var + eps), torch.zeros_like(values))


def reinforce_pp_advantages(
    token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0
) -> torch.Tensor:
    """REINFORCE++ advantages ``[B, C]``: the returns of ``token_rewards [B, C]``, whitened over the batch.
    verl: ``compute_reinforce_plus_plus_outcome_advantage(token_level_rewards, response_mask)``.

    >>> reinforce_pp_advantages(torch.tensor([[0.0, 1.0], [0.0, 0.0]]), torch.ones(2, 2))  # returns [[1, 1], [0, 0]]
    tensor([[ 0.8660,  0.8660],
            [-0.8660, -0.8660]])
    """
    return masked_whiten(token_returns(token_rewards, mask, gamma), mask)


def reinforce_pp_baseline_advantages(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """REINFORCE++-baseline advantages ``[B, C]`` (B = Q·G): the reward minus its group mean, on every
    valid token, whitened over the batch. ``rewards [Q, G]``, ``mask [B, C]``.
    verl: ``compute_reinforce_plus_plus_baseline_outcome_advantage``.

    >>> reinforce_pp_baseline_advantages(torch.tensor([[1.0, 0.0]]), torch.ones(2, 2))  # ±0.5, std 0.577
    tensor([[ 0.8660,  0.8660],
            [-0.8660, -0.8660]])
    """
    centered = (rewards - rewards.mean(dim=1, keepdim=True)).reshape(-1, 1)  # [B, 1]
    return masked_whiten(centered.to(torch.get_default_dtype()) * mask, mask)


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
    if args.group_size < 2:
        raise SystemExit(f"--group-size must be >= 2 for a group-relative advantage, got {args.group_size}")
    if args.micro_batch_size < 1 or args.prompts_per_step < 1 or args.num_steps < 0:
        raise SystemExit("--micro-batch-size and --prompts-per-step must be >= 1 and --num-steps >= 0")
    if args.updates_per_batch < 1:
        raise SystemExit(f"--updates-per-batch must be >= 1, got {args.updates_per_batch}")
    if args.kl_coef < 0:  # Modification 1 (vs GRPO)
        raise SystemExit(f"--kl-coef must be >= 0, got {args.kl_coef}")
    if not 0 < args.gamma <= 1:  # Modification 2 (vs GRPO)
        raise SystemExit(f"--gamma must be in (0, 1], got {args.gamma}")
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

            # ALGO LOGIC: the policy update (PPO-clip surrogate + optional KL), in micro-batches
            mask = rollout.completion_mask  # [B, C]
            B, C = mask.shape
            num_tokens = int(mask.sum())
            micro_batches = [slice(i, i + args.micro_batch_size) for i in range(0, B, args.micro_batch_size)]
            old_logprobs = ref_logprobs = None
            kl_in_reward = args.kl_coef > 0 and args.baseline == "none"  # Modification 1 (vs GRPO)
            if args.updates_per_batch > 1 or args.kl_coef > 0:
                with torch.no_grad():
                    if (
                        args.updates_per_batch > 1 or kl_in_reward
                    ):  # Modification 1 (vs GRPO): π_old for the KL
                        old_logprobs = torch.cat([completion_logprobs(model, rollout.input_ids[mb], rollout.attention_mask[mb], C, args.temperature)[0] for mb in micro_batches])  # fmt: skip
                    if ref_model is not None:
                        ref_logprobs = torch.cat([completion_logprobs(ref_model, rollout.input_ids[mb], rollout.attention_mask[mb], C, args.temperature)[0] for mb in micro_batches])  # fmt: skip

            # ALGO LOGIC: REINFORCE++ advantages, one per token
            # Modification 2 (vs GRPO): returns (or group-centred rewards) whitened over the whole batch
            if args.baseline == "group":
                advantages = reinforce_pp_baseline_advantages(rewards.to(args.device), mask)  # [B, C]
            else:
                kl = old_logprobs - ref_logprobs if kl_in_reward else torch.zeros_like(mask)  # [B, C] k1
                token_rewards = kl_folded_rewards(rewards.view(-1).to(args.device), kl, mask, args.kl_coef)
                advantages = reinforce_pp_advantages(token_rewards, mask, args.gamma)  # [B, C]
            model.train()
            stats = {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "entropy": 0.0, "logprob_mismatch": 0.0}
            if kl_in_reward:  # Modification 1 (vs GRPO): the KL of the reward, log π_old − log π_ref
                stats["kl"] = float((kl * mask).sum()) / num_tokens
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
                    # Modification 3 (vs GRPO): one advantage per token (each token as a length-1 row)
                    per_token_loss, clipped = clipped_surrogate(
                        logprobs.reshape(-1, 1),
                        old.reshape(-1, 1),
                        advantages[mb].reshape(-1),
                        args.clip_low,
                        args.clip_high,
                    )
                    per_token_loss, clipped = per_token_loss.view_as(logprobs), clipped.view_as(logprobs)
                    if args.tis_cap > 0:  # sampler/trainer mismatch correction
                        per_token_loss = per_token_loss * truncated_is_weights(
                            old, rollout.behavior_logprobs[mb], args.tis_cap
                        )
                    if (
                        ref_logprobs is not None and not kl_in_reward
                    ):  # Modification 1 (vs GRPO): group: a loss
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

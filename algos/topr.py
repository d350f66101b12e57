"""TOPR: Tapered Off-Policy REINFORCE — SFT on the positives, truncated importance sampling on the negatives.

Paper: Le Roux, Bellemare, Lebensold, Bergeron, Greaves, Fréchette, Pelletier, Thibodeau-Laufer, Toth,
Work, "Tapered Off-Policy REINFORCE: Stable and efficient reinforcement learning for LLMs",
arXiv 2503.14286. No official code; third-party versions exist in ROLL and Trinity-RFT.

Idea: off-policy by construction. A dataset of n completions per question is sampled ONCE from a
behaviour policy μ (here: the model at the start of the iteration), with μ's per-token log-probs stored,
then trained on for several epochs in shuffled mini-batches. Rewards are ±1. Positives get weight 1 (plain
SFT, however unlikely they have become under π); negatives get the stop-gradient weight clip(π/μ, 0, 1),
which fades to 0 once a wrong answer has been unlearned, so the negative push stops by itself and the
objective stays bounded without KL or PPO clipping (naive off-policy REINFORCE drives log π → −∞).
``--iterations`` regenerates the dataset with the current policy (iterated offline).

Objective (gradient, maximised; R ∈ {+1, −1}, c = ``--baseline``):

    ∇J = Σ_{τ∈T⁺} μ(τ) (R − c) ∇log π(τ)  +  Σ_{τ∈T⁻} μ(τ) clip(π(τ)/μ(τ), 0, 1) (R − c) ∇log π(τ)

    per sample (Algorithm 1):  loss = −sg(α) · (R − c) · log π(y|x),   log π(y|x) = Σ_t log π(y_t | x, y_<t)
                               α = 1 if R > 0, else exp(min(0, log π(y|x) − log μ(y|x)))

The baseline c weights positives by (1 − c) and negatives by (1 + c): off-policy it mainly sets the
effective share of positives p̃ = p (1 − c) / (1 + (1 − 2p) c), p = the dataset's positive fraction
(logged as ``effective_positive_share``; the paper reports p̃ as the lever that matters).

Defaults: n = 16 completions per question, c = 0, sequence-level ratio, no KL (paper). The tiny world
uses 4 iterations × 160 questions × 16 samples = 10,240 completions (grpo.py's default rollout budget),
2 epochs per dataset, 64 sequences per optimizer step and AdamW at 2e-4 [ours; the paper trained Llama 3
8B Instruct with Adafactor at a constant 5e-7, batch 1 per GPU on 8 GPUs [2nd], a rate at which a
0.9M-parameter model does not move].

Deviations / choices:
- Ratio granularity (``--ratio-level``): ``seq`` (paper: the product over tokens, computed in log space),
  ``seq-mean`` (exp of the mean token log-ratio, as the verl PR) or ``token`` (per-token ratios, as ROLL).
- Loss normalisation (``--loss-agg``): ``seq-mean-token-sum`` (default, the paper's form: the sequence
  log-likelihood Σ_t, averaged over the mini-batch) or ``token-mean``. Within a mini-batch both weigh
  every token alike; they differ by a per-batch constant (the token count), which AdamW largely absorbs.
  We keep the paper's form because the tapered weight is defined on the sequence likelihood.
- The optimizer and its state carry over from one iteration to the next (the paper does not say).
- ``--curation anna-karenina`` keeps one correct (the first sampled) and every incorrect completion per
  question [2nd: the paper's description as reported by digests]; ``uniform`` keeps everything.
- ``--negatives drop`` is SFT on the positives only, from the same generated data (STaR/RFT-style; fewer
  optimizer steps, since the negatives are removed from the dataset); ``--negatives reinforce`` is naive
  off-policy REINFORCE (α = 1 for negatives, the paper's unstable baseline). Both are for comparisons.
- Sampler/trainer mismatch (``--rollout vllm``). The taper clip(π/μ, 0, 1) is already a truncated
  importance ratio, so by default (``--tis-cap 0``) μ is the sampler's own log-probs: the behaviour policy
  is whatever drew the data, vLLM included, and its numerical gap to the trainer enters π/μ like any
  other difference between the policies (positives get weight 1 whatever μ is, as in the paper).
  ``--tis-cap C`` [ours] takes the trainer's view instead: μ = the trainer's log-probs of the same samples
  under the policy that drew them (one extra forward pass per dataset, stored with it), the taper is
  taken against that μ, and every token's loss (positives too) is multiplied by min(μ / π_sampler, C),
  grpo.py's truncated IS correction. ``sampler_logprob_mismatch`` logs that dataset's mean
  |log μ − log π_sampler|; with HF rollouts both views coincide (up to float32 rounding between
  generate's cached forward and a full forward). ``logprob_mismatch`` is
  |log π − log π_sampler| on each mini-batch: the policy's drift since the dataset was drawn plus that gap.
- The iteration's dataset is written to ``run_dir/dataset.pt`` so a run stopped mid-iteration resumes
  exactly (it is overwritten by the next iteration). Mini-batches are not trimmed to their longest row.
"""

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
from common.rollout import Rollout, make_sampler
from common.tracking import Progress, Tracker, report_before_after
from common.verify import Verifier


@dataclass
class Args:
    # --- experiment ---
    exp_name: str = "topr"
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
    # Modification 1 (vs GRPO): one dataset per iteration (questions × n) instead of a batch per step
    rollout: Literal["hf", "vllm"] = "hf"
    """rollout engine: HF generate or vLLM"""
    questions_per_iteration: int = 160
    """training questions in each iteration's dataset (capped at the training set's size)"""
    samples_per_question: int = 16
    """n: completions sampled from the behaviour policy per question (paper: 16)"""
    max_new_tokens: int = 80
    """completion length limit"""
    temperature: float = 1.0
    """sampling temperature (training and evaluation); must be > 0, μ's log-probs are needed"""
    top_p: float = 1.0
    """nucleus sampling threshold"""
    vllm_gpu_memory_utilization: float = 0.3
    """share of GPU memory vLLM may take (weights + KV cache) with --rollout vllm"""
    tis_cap: float = 0.0
    """C: take μ from the trainer's log-probs and weight each token's loss by min(μ / π_sampler, C) to correct the sampler/trainer mismatch (0: off, μ = the sampler's log-probs; see Deviations)"""

    # --- optimisation ---
    iterations: int = 4
    """datasets generated in turn, each by the current policy (1 = fully offline, the paper's main setting)"""
    epochs: int = 2
    """passes over each iteration's dataset"""
    batch_size: int = 64
    """sequences per optimizer step (a shuffled mini-batch of the dataset)"""
    learning_rate: float = 2e-4
    """AdamW learning rate (constant after warm-up)"""
    warmup_steps: int = 5
    """linear learning-rate warm-up steps"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    max_grad_norm: float = 1.0
    """gradient clipping threshold"""
    micro_batch_size: int = 64
    """sequences per forward/backward pass (gradient accumulation over the mini-batch)"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass to save memory"""

    # --- algorithm ---
    # Modification 2 (vs GRPO): TOPR's knobs replace the PPO clip, the KL and the group normalisation
    baseline: float = 0.0
    """c: rewards become R − c (positives 1 − c, negatives −1 − c); sets the effective positive share p̃"""
    ratio_level: Literal["seq", "seq-mean", "token"] = "seq"
    """granularity of π/μ: sequence (paper), length-normalised sequence, or per token"""
    curation: Literal["uniform", "anna-karenina"] = "uniform"
    """keep every completion, or per question one correct and all incorrect ones"""
    negatives: Literal["topr", "drop", "reinforce"] = "topr"
    """negatives' weight: tapered clip(π/μ, 0, 1) (TOPR); dropped (SFT on positives); 1 (naive REINFORCE)"""
    loss_agg: Literal["seq-mean-token-sum", "token-mean"] = "seq-mean-token-sum"
    """Σ_t per sequence averaged over the mini-batch (paper), or a mean over the mini-batch's tokens"""

    # --- evaluation, logging, checkpoints ---
    eval_every: int = 80
    """evaluate held-out pass@k every N optimizer steps (0: only before and after training)"""
    eval_problems: int = 300
    """held-out problems per evaluation"""
    eval_n: int = 8
    """samples per held-out problem (pass@k for k up to eval_n)"""
    log_completions: int = 16  # Modification 1 (vs GRPO): once per dataset, not every N steps
    """completions of each new dataset written to completions.jsonl (one per question)"""
    save_every: int = 20
    """checkpoint every N optimizer steps (and at the end of every iteration)"""
    keep_last: int = 2
    """checkpoints kept on disk"""


# ALGO LOGIC: the tapered weights, the loss, its aggregation, curation and the baseline's effect (pure functions)


def ratio_logprobs(token_logprobs: torch.Tensor, mask: torch.Tensor, ratio_level: str) -> torch.Tensor:
    """The log-probability on which π/μ is taken: ``token_logprobs [N, C]`` -> ``[N]`` (seq, seq-mean) or
    ``[N, C]`` (token; padding set to 0).

    >>> lp, m = torch.tensor([[-1.0, -2.0, -9.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    >>> ratio_logprobs(lp, m, "seq"), ratio_logprobs(lp, m, "seq-mean"), ratio_logprobs(lp, m, "token")
    (tensor([-3.]), tensor([-1.5000]), tensor([[-1., -2., -0.]]))
    """
    masked = token_logprobs * mask  # [N, C]
    if ratio_level == "seq":
        return masked.sum(-1)
    if ratio_level == "seq-mean":
        return masked.sum(-1) / mask.sum(-1).clamp(min=1)
    if ratio_level == "token":
        return masked
    raise ValueError(f"unknown --ratio-level {ratio_level!r}")


def topr_weights(logp: torch.Tensor, behavior_logp: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """TOPR's stop-gradient weight α: 1 for positives (R > 0), clip(π/μ, 0, 1) for negatives (R < 0).

    ``logp [N]`` = log π(y|x), ``behavior_logp [N]`` = log μ(y|x), ``rewards [N]`` -> ``weights [N]``
    (detached). The ratio is taken in log space, exp(min(0, log π − log μ)), so it never overflows and
    an unlearned negative reaches exactly 0 instead of inf·0. Token-level ratios: pass ``[N, C]`` log-probs;
    ``rewards [N]`` broadcasts over the tokens.

    >>> topr_weights(torch.tensor([-1.0, -5.0, -5.0]), torch.tensor([-3.0, -3.0, -6.0]), torch.tensor([1.0, -1.0, -1.0]))
    tensor([1.0000, 0.1353, 1.0000])
    """
    log_ratio = (logp - behavior_logp).detach()  # [N] (or [N, C])
    rewards = rewards.view(-1, *[1] * (log_ratio.dim() - 1))  # [N] (or [N, 1])
    tapered = torch.exp(log_ratio.clamp(max=0.0))  # clip(π/μ, 0, 1)
    return torch.where(rewards < 0, tapered, torch.ones_like(tapered))


def truncated_is_weights(
    old_logprobs: torch.Tensor, behavior_logprobs: torch.Tensor, cap: float
) -> torch.Tensor:
    """Truncated importance weights min(π_old / π_sampler, C), detached: they correct for the sampler
    (e.g. vLLM) computing slightly different probabilities than the trainer (as TRL and verl do).

    >>> truncated_is_weights(torch.log(torch.tensor([[0.5, 0.9]])), torch.log(torch.tensor([[0.1, 0.9]])), cap=2.0)
    tensor([[2., 1.]])
    """
    return torch.exp(old_logprobs - behavior_logprobs).clamp(max=cap).detach()


def topr_token_loss(
    logprobs: torch.Tensor,  # [N, C] log π_θ of the completion tokens (with gradient)
    weights: torch.Tensor,  # [N] or [N, C] α from topr_weights
    rewards: torch.Tensor,  # [N] ±1
    baseline: float,  # c
) -> torch.Tensor:
    """Per-token loss −sg(α) · (R − c) · log π(y_t | ...) ``[N, C]``; summing over t gives Algorithm 1's
    −sg(α) (R − c) log π(y|x).

    A positive (R = 1, c = 0.5) and a negative (R = −1, α = 0.3), one token each of log-prob −2:

    >>> topr_token_loss(torch.full((2, 1), -2.0), torch.tensor([1.0, 0.3]), torch.tensor([1.0, -1.0]), 0.5)
    tensor([[ 1.0000],
            [-0.9000]])
    """
    coef = weights.detach() * (rewards - baseline).view(-1, *[1] * (weights.dim() - 1))  # [N] or [N, C]
    if coef.dim() == 1:
        coef = coef[:, None]  # [N, 1]
    return -coef * logprobs


def topr_aggregate_loss(
    per_token_loss: torch.Tensor,  # [b, C] losses of one micro-batch
    mask: torch.Tensor,  # [b, C] completion mask
    mode: str,
    num_sequences: int,  # sequences in the WHOLE mini-batch (all micro-batches)
    num_tokens: int,  # completion tokens in the whole mini-batch
) -> torch.Tensor:
    """Reduce per-token losses to a scalar so that summing over micro-batches gives the mini-batch loss.

    Two sequences, losses [[1, 1, 0], [4, 0, 0]] with masks [[1, 1, 0], [1, 0, 0]]:
      seq-mean-token-sum:  (1+1+4) / 2 = 3.0   (the paper: sequence log-likelihood, batch mean)
      token-mean:          (1+1+4) / 3 = 2.0
    """
    masked = per_token_loss * mask
    if mode == "seq-mean-token-sum":
        return masked.sum() / max(num_sequences, 1)
    if mode == "token-mean":
        return masked.sum() / max(num_tokens, 1)
    raise ValueError(f"unknown --loss-agg {mode!r}")


def anna_karenina_keep(correct: torch.Tensor) -> torch.Tensor:
    """Anna Karenina curation: per question keep the first correct completion and every incorrect one.
    ``correct [Q, n]`` bool -> ``keep [Q, n]`` bool.

    >>> anna_karenina_keep(torch.tensor([[True, False, True], [False, False, False], [True, True, True]]))
    tensor([[ True,  True, False],
            [ True,  True,  True],
            [ True, False, False]])
    """
    first_correct = correct & (correct.long().cumsum(dim=1) == 1)  # [Q, n]
    return first_correct | ~correct


def effective_positive_share(p: float, baseline: float) -> float:
    """p̃ = p (1 − c) / (1 + (1 − 2p) c): the share of the gradient weight on positives when a fraction p
    of the data is positive and the rewards are R − c with R = ±1 (at π = μ).

    >>> effective_positive_share(0.3, 0.0), round(effective_positive_share(0.3, 0.2), 4)
    (0.3, 0.2222)
    """
    return p * (1 - baseline) / (1 + (1 - 2 * p) * baseline)


def positive_weight_share(weights: torch.Tensor, rewards: torch.Tensor, baseline: float) -> float | None:
    """Realised share of the weight on positives, Σ_{R>0} |α (R − c)| / Σ |α (R − c)|, over ``[N]``
    sequences; equals p̃ when every α = 1. None when every weight is 0 (nothing to share).

    >>> positive_weight_share(torch.ones(4), torch.tensor([1.0, -1.0, -1.0, -1.0]), 0.0)
    0.25
    """
    magnitude = (weights * (rewards - baseline)).abs()  # [N]
    total = float(magnitude.sum())
    return float(magnitude[rewards > 0].sum()) / total if total > 0 else None


# TRY NOT TO MODIFY: the training loop


def validate(args: Args) -> None:
    """Contradictory flags fail here, before anything is loaded."""
    if args.samples_per_question < 1 or args.questions_per_iteration < 1:
        raise SystemExit("--samples-per-question and --questions-per-iteration must be >= 1")
    if args.micro_batch_size < 1 or args.batch_size < 1 or args.iterations < 0 or args.epochs < 1:
        raise SystemExit("--micro-batch-size, --batch-size and --epochs must be >= 1 and --iterations >= 0")
    if not -1 < args.baseline < 1:  # Modification 3 (vs GRPO): |c| < 1 keeps every sign as the reward's
        raise SystemExit(f"--baseline must be in (-1, 1), got {args.baseline}")
    if args.temperature <= 0:
        raise SystemExit("--temperature must be > 0: TOPR needs the behaviour policy's sampling log-probs")
    check_run_args(args)  # TRY NOT TO MODIFY: model path, data, template, shared flags


def build_dataset(args, sampler, verifier, tokenizer, questions) -> dict:
    """Sample n completions per question from the current policy (μ), score them ±1 and curate them.

    Returns ``{"rollout": Rollout [D rows], "rewards": [D] ±1, "stats": {...}, "log": [rows]}``.
    """
    n, Q = args.samples_per_question, len(questions)
    prompts = [build_prompt(e.question, args.template, tokenizer) for e in questions]
    rollout = sampler.generate(prompts, n, args.max_new_tokens, args.temperature, args.top_p)
    results = verifier.verify_batch(rollout.completions, [e.answer for e in questions for _ in range(n)])
    correct = torch.tensor([r.correct for r in results]).view(Q, n)  # [Q, n] bool
    keep = anna_karenina_keep(correct) if args.curation == "anna-karenina" else torch.ones_like(correct)
    if args.negatives == "drop":
        keep = keep & correct  # SFT on the positives only
    keep = keep.view(-1)  # [Q·n]
    dataset = rollout.select(keep.to(rollout.completion_mask.device))  # [D rows]
    rewards = torch.where(correct.view(-1)[keep], 1.0, -1.0).to(rollout.completion_mask.device)  # [D]
    lengths = rollout.completion_mask.sum(-1)
    p = float((rewards > 0).float().mean()) if len(rewards) else 0.0
    stats = {
        "accuracy": correct.float().mean().item(),  # of μ's samples, before curation
        "reward_mean": 2 * correct.float().mean().item() - 1,  # mean ±1 reward, before curation
        "unparsed_frac": 1 - sum(r.parsed for r in results) / len(results),
        "zero_std_frac": (correct.float().std(dim=1) == 0).float().mean().item() if n > 1 else 1.0,
        "completion_len_mean": lengths.float().mean().item(),
        "completion_len_max": lengths.max().item(),
        "truncated_frac": rollout.truncated.float().mean().item(),
        "dataset_size": len(rewards),
        "positive_frac": p,  # p, after curation
        "effective_positive_share": effective_positive_share(p, args.baseline),  # p̃
    }
    log = [
        {"prompt": prompts[i // n], "completion": rollout.completions[i], "answer": results[i].answer,
         "gold": questions[i // n].answer, "reward": 1.0 if correct.view(-1)[i] else -1.0}
        for i in range(0, Q * n, n)[: args.log_completions]
    ]  # fmt: skip
    return {"rollout": dataset, "rewards": rewards, "stats": stats, "log": log}


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
    # Modification 3 (vs GRPO): no reference model and no KL (TOPR is stable without one)
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
    Q = min(args.questions_per_iteration, len(train_examples))
    dataset_path = run_dir / "dataset.pt"

    # Modification 4 (vs GRPO): the loop is iterations → (generate a dataset) → epochs → mini-batches.
    # extra["iteration"] = (iteration, its first step, its number of steps) of the newest dataset; a run
    # stopped inside an iteration reloads that dataset from dataset.pt and continues at the same mini-batch.
    step = start_step
    first_iteration = 1
    if "iteration" in extra:
        last, last_first_step, last_num_steps = extra["iteration"]
        first_iteration = last if step < last_first_step + last_num_steps else last + 1
    with StopRequest() as stop:
        for iteration in range(first_iteration, args.iterations + 1):
            gen_start = time.time()
            if "iteration" in extra and extra["iteration"][0] == iteration:  # resumed inside this iteration
                data = torch.load(dataset_path, map_location=args.device, weights_only=False)
                if data["iteration"] != iteration:
                    raise RuntimeError(f"{dataset_path} holds iteration {data['iteration']}, not {iteration}")
                data["rollout"] = Rollout(**data["rollout"])
            else:
                # Modification 1 (vs GRPO): sample this iteration's questions once from μ = the current policy
                epoch, offset = divmod((iteration - 1) * Q, len(train_examples))
                order = torch.randperm(
                    len(train_examples), generator=torch.Generator().manual_seed(args.seed + epoch)
                )
                questions = [train_examples[i] for i in order.roll(-offset)[:Q].tolist()]
                data = build_dataset(args, sampler, verifier, tokenizer, questions)
                D = len(data["rewards"])
                if args.tis_cap > 0 and D > 0:  # Modification 5 (vs GRPO): μ as the trainer computes it
                    ds, mbs = data["rollout"], [slice(i, i + args.micro_batch_size) for i in range(0, D, args.micro_batch_size)]  # fmt: skip
                    with torch.no_grad():
                        trainer_logprobs = [
                            completion_logprobs(model, ds.input_ids[mb], ds.attention_mask[mb], ds.completion_ids.shape[1], args.temperature)[0]
                            for mb in mbs
                        ]  # fmt: skip
                        data["trainer_logprobs"] = ds.completion_mask * torch.cat(trainer_logprobs)
                    gap = (data["trainer_logprobs"] - ds.behavior_logprobs).abs()  # [D, C], 0 on padding
                    data["stats"]["sampler_logprob_mismatch"] = float(gap.sum() / ds.completion_mask.sum())
                num_steps = args.epochs * -(-D // args.batch_size)
                extra["iteration"] = (iteration, step, num_steps)
                to_save = {**data, "rollout": vars(data["rollout"]), "iteration": iteration}
                torch.save(to_save, dataset_path.with_suffix(".tmp"))
                dataset_path.with_suffix(".tmp").replace(dataset_path)
                tracker.log_completions(step + 1, data["log"])
            dataset, rewards, D = data["rollout"], data["rewards"], len(data["rewards"])  # [D rows], [D]
            _, first_step, num_steps = extra["iteration"]
            if D == 0:
                extra["skipped_iterations"] = extra.get("skipped_iterations", 0) + 1
                print(f"iteration {iteration}: the curated dataset is empty (no positives?); skipped")
                continue
            # Modification 4 (vs GRPO): epochs of shuffled mini-batches, seeded per (iteration, epoch) for resume
            schedule = []
            for epoch in range(args.epochs):
                gen = torch.Generator().manual_seed(args.seed * 1_000_003 + iteration * 1_009 + epoch)
                schedule += torch.randperm(D, generator=gen).split(args.batch_size)
            progress = Progress(num_steps, desc=f"train iteration {iteration}/{args.iterations}")
            if step > first_step:
                progress.update(step - first_step)
            generation_time = time.time() - gen_start

            for index in range(step - first_step, num_steps):
                step += 1
                step_start = time.time()
                rows = schedule[index].to(rewards.device)  # [B] dataset rows of this mini-batch
                batch, batch_rewards = dataset.select(rows), rewards[rows]  # B rows, [B]
                # log μ [B, C]: the sampler's log-probs, or the trainer's with --tis-cap (Modification 5)
                behavior = data["trainer_logprobs"][rows] if args.tis_cap > 0 else batch.behavior_logprobs

                # ALGO LOGIC: the TOPR update on one mini-batch, in micro-batches
                mask = batch.completion_mask  # [B, C]
                B, C = mask.shape
                num_tokens = int(mask.sum())
                micro_batches = [
                    slice(i, i + args.micro_batch_size) for i in range(0, B, args.micro_batch_size)
                ]
                model.train()
                stats = {"loss": 0.0, "entropy": 0.0, "logprob_mismatch": 0.0}
                seq_weights = []
                for mb in micro_batches:
                    logprobs, entropy = completion_logprobs(
                        model,
                        batch.input_ids[mb],
                        batch.attention_mask[mb],
                        C,
                        args.temperature,
                        with_entropy=True,
                    )  # [b, C] each
                    m, r = mask[mb], batch_rewards[mb]  # [b, C], [b]
                    weights = topr_weights(
                        ratio_logprobs(logprobs.detach(), m, args.ratio_level),
                        ratio_logprobs(behavior[mb], m, args.ratio_level),
                        r,
                    )  # [b] (or [b, C] for --ratio-level token)
                    if args.negatives == "reinforce":  # naive off-policy REINFORCE: no taper
                        weights = torch.ones_like(weights)
                    per_token_loss = topr_token_loss(logprobs, weights, r, args.baseline)  # [b, C]
                    if args.tis_cap > 0:  # sampler/trainer mismatch correction (π_old: the trainer's μ)
                        per_token_loss = per_token_loss * truncated_is_weights(
                            behavior[mb], batch.behavior_logprobs[mb], args.tis_cap
                        )
                    loss = topr_aggregate_loss(per_token_loss, m, args.loss_agg, B, num_tokens)
                    loss.backward()
                    stats["loss"] += loss.item()
                    stats["entropy"] += float((entropy * m).sum()) / num_tokens
                    # how far π has moved from μ on this data (0 at the first step of an HF iteration)
                    gap = (logprobs.detach() - batch.behavior_logprobs[mb]).abs()
                    stats["logprob_mismatch"] += float((gap * m).sum()) / num_tokens
                    if weights.dim() == 2:  # token-level: a sequence's weight is its tokens' mean
                        weights = (weights * m).sum(-1) / m.sum(-1).clamp(min=1)
                    seq_weights.append(weights)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                sampler.update_weights(model)  # TRY NOT TO MODIFY: the sampler must see the new weights

                # TRY NOT TO MODIFY: logging
                seq_weights = torch.cat(seq_weights)  # [B]
                negative = batch_rewards < 0  # [B]
                metrics = {
                    **data["stats"],  # of this iteration's dataset (constant within the iteration)
                    "iteration": iteration,
                    "epoch": index * args.epochs // num_steps + 1,
                    # Modification 6 (vs GRPO): the taper's state and the realised share of positives
                    "negative_weight_mean": seq_weights[negative].mean().item() if negative.any() else None,
                    "clip_frac": (seq_weights[negative] < 1).float().mean().item()
                    if negative.any()
                    else None,
                    "positive_weight_share": positive_weight_share(seq_weights, batch_rewards, args.baseline),
                    "skipped_iterations": extra.get("skipped_iterations", 0),
                    "grad_norm": float(grad_norm),
                    "lr": scheduler.get_last_lr()[0],
                    "step_time": time.time() - step_start,
                    "generation_time": generation_time,
                    "samples_per_s": B / (time.time() - step_start),
                    **stats,
                }
                is_last = iteration == args.iterations and index == num_steps - 1
                if is_last:  # the final evaluation, with the full n
                    extra["final_eval"] = evaluate(args.eval_n, "eval final")
                    metrics.update({f"eval/pass@{k}": v for k, v in extra["final_eval"]["curve"].items()})
                elif args.eval_every and step % args.eval_every == 0:
                    ev = evaluate(max(1, args.eval_n // 2), f"eval step {step}")
                    metrics.update({f"eval/pass@{k}": v for k, v in ev["curve"].items()})
                tracker.log(step, metrics)
                progress.update(1, loss=metrics["loss"], neg_w=metrics["negative_weight_mean"] or 0.0)

                # TRY NOT TO MODIFY: checkpoint (periodically, at the end, and when asked to stop)
                extra["elapsed"] = elapsed_before + time.time() - session_start
                # Modification 7 (vs GRPO): also at the end of every iteration, before dataset.pt is replaced
                if step % args.save_every == 0 or index == num_steps - 1 or stop.requested:
                    save_checkpoint(
                        run_dir, step, model, optimizer, scheduler, extra, args.keep_last, tokenizer
                    )
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
        tracker, args.exp_name, step, extra["base_eval"], final_eval, eval_name,
        extra["base_wall_time"], total_time,
    )  # fmt: skip
    tracker.close()
    verifier.close()
    return {"base": extra["base_eval"], "final": final_eval, "run_dir": str(run_dir)}


if __name__ == "__main__":
    main(tyro.cli(Args))

"""ExPO: Self-Explanation Policy Optimization — ExP-GRPO (GRPO + a self-explanation SFT term) and ExP-DPO.

Paper: Zhou, Li, Zhang, Leqi, "ExPO: Unlocking Hard Reasoning with Self-Explanation-Guided Reinforcement
Learning", arXiv 2507.02834 (NeurIPS 2025). Official code (HumainLab/ExPO_rl_reasoning_by_explanation)
was not retrievable; this file follows the paper's text. ``[ours]`` marks a choice the paper leaves open.

Idea: on a question the policy never solves, GRPO has nothing to learn from (every advantage is 0).
Expert solutions would help but are out of distribution. Instead, show the *current* policy the question
and the gold answer a* and let it explain how to get there: c̃ ~ π_θ(· | q, hint(a*)). Such a
self-explanation is in-distribution (the policy wrote it) and reaches a* more often than its own
unhinted CoT. Train on it with the hint removed from the context, i.e. raise log π_θ(c̃ | q).

Objective (maximised; the GRPO part exactly as in grpo.py, over the G unhinted rollouts only):

    J(θ) = J_GRPO(θ) + β · E_q [ (1/|c̃_q|) Σ_t log π_θ(c̃_{q,t} | q, c̃_{q,<t}) ]

c̃_q (the explanation, its boxed a* and EOS) is kept only if the verifier confirms it reaches a*;
a question with no confirmed explanation after ``--explanation-tries`` samples contributes 0 (it is
counted). The explanation is not part of the group and gets no advantage.

ExP-DPO (``--variant dpo``): preferred = the explanation c̃_q, dispreferred = one incorrect own sample o⁻_q,
both given the plain prompt q; the loss is DPO's against the frozen initial policy π_ref:

    L_DPO = −log σ( β_DPO · [ (log π_θ(c̃|q) − log π_ref(c̃|q)) − (log π_θ(o⁻|q) − log π_ref(o⁻|q)) ] )

Defaults: β = 0.04 (the paper's best, Table 5; β = 0.5 was worse than GRPO); everything else as grpo.py
(the same rollout budget; the tiny world's learning rate). The paper does not give G, lr or the KL
coefficient ([ours]: G = 8, lr 1e-6 and KL 0 on a real model). ``--hint-template`` defaults to the tiny
world's warm-up format (``common.tiny_world.HINT_TEMPLATE``), so on the CPU the base policy really
uses the hint; the README's GPU command passes an [ours] template for instruct models (it asks the
model to explain the answer without simply restating it).

Deviations / choices:
- ``--explain all`` (default) explains every question of the batch, as the paper's formula is written
  (the term is inside E_q for all q); ``--explain all-wrong`` explains only groups with no correct
  sample, where GRPO alone has no signal (the paper says the term matters most there). ``all`` costs
  Q · tries extra samples per step (one sampler call), next to the Q · G rollouts.
- Explanations are regenerated every step with the current policy (the paper is inconsistent about
  once vs every step; fresh samples keep them in-distribution, the point of the method).
- [ours] Verification: an explanation is kept only if its answer verifies against a* AND it ended
  (EOS) within ``--max-new-tokens``; a truncated text is not a finished explanation.
  ``--explanation-tries`` samples per question are drawn in one sampler call and the first good one
  is kept (the same distribution as retrying until one verifies, in one call instead of several).
  The verifier cannot tell an explanation from a bare restatement of a* ("\\boxed{25}"); on a real model
  the hint template asks the model not to restate it.
- [ours] Normalisation: token-mean NLL per explanation, averaged over the Q questions of the batch
  (a question without an explanation adds 0), whatever ``--loss-agg`` does to the GRPO part; so with
  one all-wrong question the gradient is exactly β × ∇ token-mean NLL(c̃ | q).
- Log-probs of the explanation use the sampling temperature, like every log-prob in grpo.py (the
  same at the default temperature 1).
- With ``--beta 0`` (GRPO variant) no explanation is sampled and the script is exactly grpo.py.
- ``--tis-cap`` (the sampler/trainer mismatch correction, as in grpo.py) weights the GRPO term only: the
  explanation term is a likelihood (SFT) term on text sampled under another (hinted) prompt, not an
  estimate under the sampler's distribution, so there is nothing for it to correct. ExP-DPO has no GRPO
  term, so ``--variant dpo --tis-cap C`` is an error.
- ExP-DPO here is the paper's online variant, regenerated every step (the paper's offline variant
  generates the explanations once with the initial policy). One pair per question: the explanation
  against the question's first incorrect rollout; a question with no incorrect rollout or no
  explanation has no pair (counted). Sequence log-probs are summed over tokens (standard DPO).
  β_DPO was not retrieved from the paper: 0.1 ([ours], the DPO paper's common value). The GRPO
  surrogate is not used in this variant; the G rollouts only provide the dispreferred samples and
  the reward metrics.
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
from common.tiny_task import HINT_TEMPLATE
from common.tracking import Progress, Tracker, report_before_after
from common.verify import Verifier


@dataclass
class Args:
    # --- experiment ---
    exp_name: str = "expo"
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
    loss_agg: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"] = "seq-mean-token-mean"
    """how per-token losses are averaged (see the module docstring)"""
    scale_rewards: Literal["group", "none"] = "group"
    """divide advantages by the group std (GRPO) or not (Dr. GRPO)"""
    variant: Literal["grpo", "dpo"] = "grpo"
    """ExP-GRPO (GRPO + β · explanation NLL) or ExP-DPO (explanation preferred over an incorrect own sample)"""
    beta: float = 0.04
    """β: weight of the ExP-SFT term (token-mean NLL of the self-explanation given the plain prompt); 0 is GRPO"""
    explain: Literal["all", "all-wrong"] = "all"
    """which questions get a self-explanation: every question of the batch (the paper's formula) or only
    those whose G rollouts are all wrong"""
    hint_template: str = HINT_TEMPLATE
    """the hinted question, with {question} and {answer} placeholders, then wrapped in --template; the
    default is the tiny world's warm-up format"""
    explanation_tries: int = 4
    """explanations sampled per question (at once); the first that verifies is kept, none: skipped, counted"""
    dpo_beta: float = 0.1
    """β_DPO: inverse temperature of the ExP-DPO loss (--variant dpo)"""

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


# ALGO LOGIC: ExPO's additions — which questions to explain, the hinted prompt, the ExP-SFT term, the
# DPO loss (pure functions), then the self-explanation step itself (uses the sampler and the verifier)


def questions_to_explain(rewards: torch.Tensor, explain: str) -> torch.Tensor:
    """Which questions get a self-explanation. ``rewards [Q, G]`` -> ``bool [Q]``.

    >>> questions_to_explain(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), "all")
    tensor([True, True])
    >>> questions_to_explain(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), "all-wrong")
    tensor([False,  True])
    """
    if explain == "all":
        return torch.ones(rewards.shape[0], dtype=torch.bool)
    if explain == "all-wrong":
        return (rewards == 0).all(dim=1)
    raise ValueError(f"unknown --explain {explain!r}")


def hint_prompt(question: str, answer: str, hint_template: str) -> str:
    """The hinted question: the template with {question} and {answer} replaced verbatim (str.replace, so a
    literal ``\\boxed{}`` in the template stays as it is).

    >>> hint_prompt("Compute 23+7-5.", "25", "{question} The answer is {answer}. Show the working.")
    'Compute 23+7-5. The answer is 25. Show the working.'
    """
    return hint_template.replace("{question}", question).replace("{answer}", answer)


def explanation_nll(
    logprobs: torch.Tensor,  # [E, C] log π_θ(c̃_t | q, c̃_<t) of the explanation tokens (plain context)
    mask: torch.Tensor,  # [E, C] 1 on explanation tokens (EOS included)
    num_questions: int,  # Q: questions in the WHOLE batch (a question without an explanation adds 0)
) -> torch.Tensor:
    """The ExP-SFT term as a loss: (1/Q) Σ_e (1/|c̃_e|) Σ_t −log π_θ(c̃_{e,t} | q_e, c̃_{e,<t}).

    Summing it over micro-batches of explanations gives the batch value. Two explanations of a batch of
    Q = 4 questions, log-probs [[-1, -3], [-2, 0]] with masks [[1, 1], [1, 0]]:
      (mean(1, 3) + mean(2)) / 4 = (2 + 2) / 4 = 1.0

    >>> explanation_nll(torch.tensor([[-1.0, -3.0], [-2.0, 0.0]]), torch.tensor([[1.0, 1.0], [1.0, 0.0]]), 4)
    tensor(1.)
    """
    per_explanation = -(logprobs * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # [E]
    return per_explanation.sum() / max(num_questions, 1)


def dpo_loss(
    chosen_logps: torch.Tensor,  # [N] log π_θ(c̃ | q), summed over tokens (the explanation)
    rejected_logps: torch.Tensor,  # [N] log π_θ(o⁻ | q) (an incorrect own sample)
    ref_chosen_logps: torch.Tensor,  # [N] the same under the frozen initial policy
    ref_rejected_logps: torch.Tensor,  # [N]
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO's loss per pair, −log σ(β_DPO · margin), and the margin (detached), where
    margin = (log π_θ(c̃) − log π_ref(c̃)) − (log π_θ(o⁻) − log π_ref(o⁻)).

    At the reference (margin 0) the loss is log 2; a margin of +2 with β_DPO = 0.5 gives −log σ(1) = 0.3133.

    >>> losses, margins = dpo_loss(torch.tensor([-3.0, -1.0]), torch.tensor([-5.0, -5.0]), torch.tensor([-3.0, -3.0]), torch.tensor([-5.0, -5.0]), 0.5)
    >>> losses, margins
    (tensor([0.6931, 0.3133]), tensor([0., 2.]))
    """
    margins = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)  # [N]
    losses = -torch.nn.functional.logsigmoid(beta * margins)  # [N]
    return losses, margins.detach()


def sample_explanations(
    sampler,
    verifier: Verifier,
    hinted_prompts: list[str],  # [E] prompts that state the gold answer
    golds: list[str],  # [E]
    tries: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
) -> tuple[list[torch.Tensor | None], list[str | None]]:
    """Sample ``tries`` explanations per hinted prompt from the current policy, in one call, and keep the
    first that verifies against its gold answer and ends (EOS) within ``max_new_tokens``.

    Keeping the first good one of ``tries`` i.i.d. samples is the same as retrying up to ``tries`` times;
    drawing them at once costs one sampler call instead of ``tries`` (on a CPU and with vLLM alike the
    number of calls, not of rows, dominates). Returns, per prompt, the explanation's token ids up to and
    including EOS (a 1-D tensor) or None, and its text or None. Only the completion is returned: the
    hinted prompt is never trained on (``explanation_rows`` puts the plain prompt in front).
    """
    found: list[torch.Tensor | None] = [None] * len(hinted_prompts)
    texts: list[str | None] = [None] * len(hinted_prompts)
    if not hinted_prompts:
        return found, texts
    out = sampler.generate(
        hinted_prompts, tries, max_new_tokens, temperature, top_p
    )  # rows grouped by prompt
    results = verifier.verify_batch(out.completions, [gold for gold in golds for _ in range(tries)])
    for row, result in enumerate(results):
        j = row // tries
        if found[j] is None and result.correct and not bool(out.truncated[row]):
            found[j] = out.completion_ids[row, : int(out.completion_mask[row].sum())]
            texts[j] = out.completions[row]
    return found, texts


def explanation_rows(
    tokenizer, prompts: list[str], completions: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training rows "prompt -> completion" from prompt texts and completion token ids (1-D tensors).

    ExPO trains the explanation with the hint removed: ``prompts`` are the PLAIN prompts the rollouts
    used, so the gold answer appears only in the target. Returns ``input_ids [N, P + C]`` (prompt
    left-padded, completion right-padded), ``attention_mask [N, P + C]`` and ``completion_mask [N, C]``,
    the layout of ``Rollout.input_ids`` that ``completion_logprobs`` expects.
    """
    device = completions[0].device
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    C = max(len(c) for c in completions)
    completion_ids = torch.full(
        (len(completions), C), tokenizer.pad_token_id, dtype=torch.long, device=device
    )
    completion_mask = torch.zeros(len(completions), C, device=device)  # [N, C]
    for i, ids in enumerate(completions):
        completion_ids[i, : len(ids)] = ids
        completion_mask[i, : len(ids)] = 1
    input_ids = torch.cat([enc["input_ids"], completion_ids], dim=1)  # [N, P + C]
    attention_mask = torch.cat([enc["attention_mask"], completion_mask.long()], dim=1)  # [N, P + C]
    return input_ids, attention_mask, completion_mask


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
    # Modification 1 (vs GRPO): ExPO's flags
    if args.beta < 0 or args.explanation_tries < 1 or args.dpo_beta <= 0:
        raise SystemExit("--beta must be >= 0, --explanation-tries >= 1 and --dpo-beta > 0")
    if "{question}" not in args.hint_template or "{answer}" not in args.hint_template:
        raise SystemExit(f"--hint-template needs {{question}} and {{answer}}, got {args.hint_template!r}")
    if args.variant == "dpo" and args.kl_coef > 0:
        raise SystemExit("--variant dpo has no GRPO term to add a KL to (its reference is in the DPO loss)")
    if args.variant == "dpo" and args.tis_cap > 0:
        raise SystemExit("--variant dpo has no GRPO term for --tis-cap to weight")
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
    if args.kl_coef > 0 or args.variant == "dpo":  # Modification 2 (vs GRPO): ExP-DPO's reference policy
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

            # ALGO LOGIC: group-relative advantages, one per completion
            advantages = grpo_advantages(rewards, args.scale_rewards).view(-1).to(args.device)  # [B]

            # Modification 3 (vs GRPO): self-explanations, sampled from the current policy with the gold
            # answer in the prompt and kept only if they verify against it
            all_wrong = (rewards == 0).all(dim=1)  # [Q] groups where GRPO alone has no signal
            explain = questions_to_explain(rewards, args.explain)  # [Q]
            if args.variant == "dpo":
                explain &= (rewards == 0).any(dim=1)  # a DPO pair needs an incorrect own sample
            elif args.beta == 0:
                explain[:] = False  # β = 0 is GRPO: nothing would be trained on, so nothing is sampled
            asked = explain.nonzero().squeeze(-1).tolist()  # question indices
            hinted_prompts = [
                build_prompt(hint_prompt(batch[j].question, batch[j].answer, args.hint_template), args.template, tokenizer)
                for j in asked
            ]  # fmt: skip
            found, texts = sample_explanations(
                sampler, verifier, hinted_prompts, [batch[j].answer for j in asked], args.explanation_tries,
                args.max_new_tokens, args.temperature, args.top_p,
            )  # fmt: skip
            explained = [j for j, ids in zip(asked, found) if ids is not None]
            explanations = [ids for ids in found if ids is not None]  # [E] 1-D token ids, EOS included
            explanation_texts = {j: text for j, text in zip(asked, texts) if text is not None}

            # Modification 4 (vs GRPO): the rows of the explanation term, the hint removed: (plain prompt,
            # explanation) for ExP-GRPO; for ExP-DPO interleaved pairs (plain prompt, explanation), (plain
            # prompt, the question's first incorrect rollout)
            row_prompts, row_completions = [], []
            for j, ids in zip(explained, explanations):
                row_prompts.append(prompts[j])
                row_completions.append(ids)
                if args.variant == "dpo":
                    wrong = j * G + int((rewards[j] == 0).nonzero()[0])
                    row_prompts.append(prompts[j])
                    row_completions.append(
                        rollout.completion_ids[wrong, : int(rollout.completion_mask[wrong].sum())]
                    )
            explanation_batches, num_pairs = [], len(explained)
            if row_completions:
                expl_ids, expl_attn, expl_mask = explanation_rows(tokenizer, row_prompts, row_completions)
                Ce = expl_mask.shape[1]  # expl_ids, expl_attn [R, P' + Ce]; expl_mask [R, Ce]
                rows = args.micro_batch_size  # per micro-batch; ExP-DPO: even, so that pairs stay together
                if args.variant == "dpo":
                    rows = max(2, rows // 2 * 2)
                explanation_batches = [slice(i, i + rows) for i in range(0, len(row_completions), rows)]
            if args.variant == "dpo" and explanation_batches:
                with torch.no_grad():
                    ref_seq_logps = torch.cat([
                        (completion_logprobs(ref_model, expl_ids[eb], expl_attn[eb], Ce, args.temperature)[0] * expl_mask[eb]).sum(-1)
                        for eb in explanation_batches
                    ])  # fmt: skip

            # ALGO LOGIC: the policy update (PPO-clip surrogate + optional KL), in micro-batches
            mask = rollout.completion_mask  # [B, C]
            B, C = mask.shape
            num_tokens = int(mask.sum())
            micro_batches = [slice(i, i + args.micro_batch_size) for i in range(0, B, args.micro_batch_size)]
            old_logprobs = ref_logprobs = None
            # Modification 5 (vs GRPO): old/reference log-probs for the GRPO term only (ExP-DPO has no ratio)
            if args.variant == "grpo" and (args.updates_per_batch > 1 or args.kl_coef > 0):
                with torch.no_grad():
                    if args.updates_per_batch > 1:
                        old_logprobs = torch.cat([completion_logprobs(model, rollout.input_ids[mb], rollout.attention_mask[mb], C, args.temperature)[0] for mb in micro_batches])  # fmt: skip
                    if ref_model is not None:
                        ref_logprobs = torch.cat([completion_logprobs(ref_model, rollout.input_ids[mb], rollout.attention_mask[mb], C, args.temperature)[0] for mb in micro_batches])  # fmt: skip
            model.train()
            stats = {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "entropy": 0.0, "logprob_mismatch": 0.0}
            # Modification 6 (vs GRPO): the explanation term's statistics; ExP-DPO has no GRPO term, so no
            # micro-batches of rollouts
            if args.variant == "grpo":
                stats["explanation_nll"] = 0.0
            else:
                stats.update(dpo_margin=0.0, dpo_accuracy=0.0)
            rollout_batches = micro_batches if args.variant == "grpo" else []
            for update in range(args.updates_per_batch):
                for mb in rollout_batches:
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
                # Modification 7 (vs GRPO): the explanation term, on its own rows (plain prompt -> explanation)
                for eb in explanation_batches:
                    expl_logprobs, expl_entropy = completion_logprobs(
                        model, expl_ids[eb], expl_attn[eb], Ce, args.temperature, with_entropy=True
                    )  # [r, Ce] each
                    if args.variant == "grpo":
                        # + β · token-mean NLL of the explanation, averaged over the Q questions of the batch
                        nll = explanation_nll(expl_logprobs, expl_mask[eb], Q)
                        loss = args.beta * nll
                        if update == 0:
                            stats["explanation_nll"] += nll.item() * Q / len(explanations)
                    else:  # ExP-DPO: rows alternate (explanation, incorrect sample) of the same question
                        seq_logps = (expl_logprobs * expl_mask[eb]).sum(-1).view(-1, 2)  # [r/2, 2]
                        ref = ref_seq_logps[eb].view(-1, 2)  # [r/2, 2]
                        losses, margins = dpo_loss(
                            seq_logps[:, 0], seq_logps[:, 1], ref[:, 0], ref[:, 1], args.dpo_beta
                        )
                        loss = losses.sum() / num_pairs
                        if update == 0:
                            stats["dpo_margin"] += margins.sum().item() / num_pairs
                            stats["dpo_accuracy"] += (margins > 0).sum().item() / num_pairs
                            # the policy's entropy on the pair rows (ExP-DPO computes none on the rollouts)
                            stats["entropy"] += float((expl_entropy * expl_mask[eb]).sum() / expl_mask.sum())
                    loss.backward()
                    stats["loss"] += loss.item() / args.updates_per_batch
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
                # Modification 8 (vs GRPO): how often GRPO had no signal, and how often ExPO supplied one
                "all_wrong_groups": int(all_wrong.sum()),
                "all_wrong_frac": all_wrong.float().mean().item(),
                "explain_asked": len(asked),
                "explained": len(explained),
                "explained_all_wrong": sum(bool(all_wrong[j]) for j in explained),
                "explain_skipped": len(asked) - len(explained),
                "explanation_samples": len(asked) * args.explanation_tries,
                "explanation_len_mean": float(np.mean([len(ids) for ids in explanations] or [0])),
            }
            if args.variant == "dpo":
                metrics.update(dpo_pairs=num_pairs, batch_skipped=float(num_pairs == 0))
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
                     "gold": batch[i // G].answer, "reward": rewards.view(-1)[i].item(),
                     "explanation": explanation_texts.get(i // G)}  # Modification 9 (vs GRPO): the explanation
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

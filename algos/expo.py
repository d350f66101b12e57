"""ExPO: Self-Explanation Policy Optimization — ExP-GRPO (GRPO + a self-explanation SFT term) and ExP-DPO.

Paper: Zhou, Li, Zhang, Leqi, "ExPO: Unlocking Hard Reasoning with Self-Explanation-Guided Reinforcement
Learning", arXiv 2507.02834 (NeurIPS 2025). Official code (HumainLab/ExPO_rl_reasoning_by_explanation)
was not retrievable; this file follows the paper's text. ``[ours]`` marks a choice the paper leaves open.

Idea: on a question the policy never solves, GRPO has nothing to learn from (every advantage is 0).
Expert solutions would help but are out of distribution. Instead, show the *current* policy the question
and the gold answer a* and let it explain how to get there: c̃ ~ π_θ(· | q, hint(a*)). Such a
self-explanation is in-distribution (the policy wrote it) and reaches a* more often than its own
unhinted CoT. Train on it with the hint removed from the context, i.e. raise log π_θ(c̃ | q).

Objective (maximised; the GRPO part exactly as in grpo.py, over the G unhinted rollouts only;
λ = ``--explanation-weight``, the paper's β; the KL's β stays ``--kl-coef``):

    J(θ) = J_GRPO(θ) + λ · E_q [ (1/|c̃_q|) Σ_t log π_θ(c̃_{q,t} | q, c̃_{q,<t}) ]

c̃_q (the explanation, its boxed a* and EOS) is kept only if the verifier confirms it reaches a*;
a question with no confirmed explanation after ``--explanation-tries`` samples contributes 0 (it is
counted). The explanation is not part of the group and gets no advantage.

ExP-DPO (``--variant dpo``): preferred = the explanation c̃_q, dispreferred = one incorrect own sample o⁻_q,
both given the plain prompt q; the loss is DPO's against the frozen initial policy π_ref:

    L_DPO = −log σ( β_DPO · [ (log π_θ(c̃|q) − log π_ref(c̃|q)) − (log π_θ(o⁻|q) − log π_ref(o⁻|q)) ] )

Modification 1: ExPO's flags: the variant, the explanation term's weight, which questions, the hint, the tries
Modification 2: which questions, the hinted prompt, the ExP-SFT term, the DPO loss, sampling the explanations
Modification 3: the update adds the explanation term of each mini-batch's questions (ExP-DPO: only that term)
Modification 4: validate: ExPO's flags, and ExP-DPO has no GRPO term for a KL or a rollout correction
Modification 5: the step: self-explanations from the hinted prompt, ExP-DPO's reference, samples counted

Defaults: ``--explanation-weight`` 0.04 (the paper's best β, Table 5; 0.5 was worse than GRPO);
everything else as grpo.py (the same rollout budget; the tiny world's learning rate). The paper does not
give G, lr or the KL coefficient ([ours]: G = 8, lr 1e-6 and KL 0 on a real model). ``--hint-template``
defaults to the tiny world's warm-up format (``common.tiny_task.HINT_TEMPLATE``), so on the CPU the base
policy really uses the hint; the GPU command of docs/methods/expo.md passes an [ours] template for
instruct models (it asks the model to explain the answer without simply restating it). β_DPO
(``--dpo-beta``) 0.1 [ours, the DPO paper's common value; not retrieved from the ExPO paper].

Deviations / choices:
- ``--explain all`` (default) explains every question of the batch, as the paper's formula is written
  (the term is inside E_q for all q); ``--explain all-wrong`` explains only groups with no correct
  sample, where GRPO alone has no signal (the paper says the term matters most there). ``all`` costs
  Q · tries extra samples per step (one sampler call), next to the Q · G rollouts; they count in
  ``samples_generated`` (and in ``--max-samples``).
- Explanations are regenerated every step with the current policy (the paper is inconsistent about
  once vs every step; fresh samples keep them in-distribution, the point of the method).
- [ours] Verification: an explanation is kept only if its answer verifies against a* AND it ended
  (EOS) within ``--max-new-tokens``; a truncated text is not a finished explanation.
  ``--explanation-tries`` samples per question are drawn in one sampler call and the first good one
  is kept (the same distribution as retrying until one verifies, in one call instead of several).
  The verifier cannot tell an explanation from a bare restatement of a* ("\\boxed{25}"); on a real model
  the hint template asks the model not to restate it.
- [ours] Normalisation: token-mean NLL per explanation, averaged over the questions of the mini-batch (a
  question without an explanation adds 0), whatever ``--loss-agg`` does to the GRPO part; so with one
  all-wrong question the gradient is exactly λ × ∇ token-mean NLL(c̃ | q). An explanation is trained in
  the mini-batch that holds its question's first rollout (with one mini-batch, the default: all of them).
- Log-probs of the explanation use the sampling temperature, like every log-prob in grpo.py (the
  same at the default temperature 1).
- With ``--explanation-weight 0`` (GRPO variant) no explanation is sampled and the script is exactly
  grpo.py.
- ``--rollout-is``/``--rollout-rs`` (the sampler/trainer mismatch correction, as in grpo.py) weight the
  GRPO term only: the explanation term is a likelihood (SFT) term on text sampled under another (hinted)
  prompt, not an estimate under the sampler's distribution, so there is nothing for it to correct.
  ExP-DPO has no GRPO term, so ``--variant dpo`` with either is an error.
- ExP-DPO here is the paper's online variant, regenerated every step (the paper's offline variant
  generates the explanations once with the initial policy). One pair per question: the explanation
  against the question's first incorrect rollout; a question with no incorrect rollout or no
  explanation has no pair (counted). Sequence log-probs are summed over tokens (standard DPO). The GRPO
  surrogate is not used in this variant; the G rollouts only provide the dispreferred samples and
  the reward metrics.
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
from common.rollout_types import Rollout, sampler_gap
from common.run import Run, warmup_scheduler
from common.tiny_task import HINT_TEMPLATE
from common.verify import Verifier

METHOD = MethodInfo(
    name="ExPO",
    paper="Zhou et al., ExPO: Unlocking Hard Reasoning with Self-Explanation-Guided Reinforcement Learning, "
    "arXiv 2507.02834",
    arxiv="2507.02834",
    change="GRPO plus an SFT term on self-explanations the policy writes when shown the gold answer",
    gradient_tier=3,
    gradient_claim="no exact form: the explanation term is a likelihood on text sampled under a hinted "
    "prompt (auxiliary data), not an estimate of the policy gradient; --explanation-weight 0 is grpo.py",
    verl="no (self-explanations)",
    contradiction=({"group_size": 1}, "--group-size must be >= 2"),
    compare_default=True,
)


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
    loss_agg: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = "seq-mean-token-mean"  # fmt: skip
    """how per-token losses are averaged over a mini-batch (grpo.py's module docstring)"""
    scale_rewards: Literal["group", "none"] = "group"
    """divide advantages by the group std (GRPO) or not (Dr. GRPO)"""
    # Modification 1 (vs GRPO): ExPO's flags
    variant: Literal["grpo", "dpo"] = "grpo"
    """ExP-GRPO (GRPO + λ · explanation NLL) or ExP-DPO (the explanation preferred over a wrong own sample)"""
    explanation_weight: float = 0.04
    """λ (the paper's β): weight of the ExP-SFT term, the explanation's token-mean NLL; 0 is GRPO"""
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


# ALGO LOGIC: Modification 2 (vs GRPO): ExPO's additions: which questions to explain, the hinted prompt, the
# ExP-SFT term, the DPO loss (pure functions), then the self-explanations (the sampler and the verifier)


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

    >>> chosen, rejected = torch.tensor([-3.0, -1.0]), torch.tensor([-5.0, -5.0])
    >>> losses, margins = dpo_loss(chosen, rejected, torch.tensor([-3.0, -3.0]), rejected, 0.5)
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
    tokenizer, prompts: list[str], completions: list[torch.Tensor], questions: list[int]
) -> Rollout:
    """Training rows "prompt -> completion" from prompt texts and completion token ids (1-D tensors), as
    a ``Rollout`` whose ``group_index`` is each row's question (behaviour log-probs 0: not sampled here).

    ExPO trains the explanation with the hint removed: ``prompts`` are the PLAIN prompts the rollouts
    used, so the gold answer appears only in the target. The prompt is left-padded, the completion
    right-padded (the layout of every rollout, which ``completion_logprobs`` expects).
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
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    truncated = torch.zeros(len(completions), dtype=torch.bool, device=device)
    behavior_logprobs, question_index = (
        torch.zeros_like(completion_mask),
        torch.tensor(questions, device=device),
    )
    return Rollout(
        enc["input_ids"], enc["attention_mask"], completion_ids, completion_mask, behavior_logprobs,
        truncated, texts, question_index,
    )  # fmt: skip


def self_explanations(
    run, sampler, batch, prompts, rollout, rewards, args
) -> tuple[Rollout | None, dict, dict]:
    """This step's explanation rows: the questions ``--explain`` picks (ExP-DPO: those with an incorrect
    rollout) are explained by the current policy from the hinted prompt; each kept explanation becomes a row
    "plain prompt -> explanation" (ExP-DPO: followed by the question's first incorrect rollout). Returns the
    rows (a ``Rollout``, None without any), the counts and the kept texts by question."""
    Q, G = rewards.shape
    all_wrong = (rewards == 0).all(dim=1)  # [Q] groups where GRPO alone has no signal
    explain = questions_to_explain(rewards, args.explain)  # [Q]
    if args.variant == "dpo":
        explain &= (rewards == 0).any(dim=1)  # a DPO pair needs an incorrect own sample
    elif args.explanation_weight == 0:
        explain[:] = False  # λ = 0 is GRPO: nothing would be trained on, so nothing is sampled
    asked = explain.nonzero().squeeze(-1).tolist()  # question indices
    hinted_prompts = [
        run.prompt(hint_prompt(batch[j].question, batch[j].answer, args.hint_template)) for j in asked
    ]
    found, texts = sample_explanations(
        sampler, run.verifier, hinted_prompts, [batch[j].answer for j in asked], args.explanation_tries,
        args.max_new_tokens, args.temperature, args.top_p,
    )  # fmt: skip
    explained = [(j, ids) for j, ids in zip(asked, found) if ids is not None]  # ids: 1-D, EOS included
    row_prompts, row_completions, row_questions = [], [], []
    for j, ids in explained:
        row_prompts.append(prompts[j])
        row_completions.append(ids)
        if args.variant == "dpo":  # the pair's dispreferred row: the question's first incorrect rollout
            wrong = j * G + int((rewards[j] == 0).nonzero()[0])
            row_prompts.append(prompts[j])
            row_completions.append(rollout.completion_ids[wrong, : int(rollout.completion_mask[wrong].sum())])
        row_questions += [j] * (2 if args.variant == "dpo" else 1)
    rows = explanation_rows(run.tokenizer, row_prompts, row_completions, row_questions) if explained else None
    stats = {
        "all_wrong_groups": int(all_wrong.sum()),
        "all_wrong_frac": all_wrong.float().mean().item(),
        "explain_asked": len(asked),
        "explained": len(explained),
        "explained_all_wrong": sum(bool(all_wrong[j]) for j, _ in explained),
        "explain_skipped": len(asked) - len(explained),
        "explanation_samples": len(asked) * args.explanation_tries,
        "explanation_len_mean": float(sum(len(ids) for _, ids in explained) / max(len(explained), 1)),
    }
    if args.variant == "dpo":
        stats.update(dpo_pairs=len(explained), batch_skipped=float(not explained))
    return rows, stats, {j: text for j, text in zip(asked, texts) if text is not None}


def explanation_term(
    model, explanations: Rollout, ref_logprobs: torch.Tensor | None, questions: torch.Tensor, args: Args,
    first_pass: bool,
) -> dict[str, float]:  # fmt: skip
    """Backward of the explanation term of one mini-batch, in micro-batches: λ × the token-mean NLL of the
    explanations of ``questions`` averaged over those questions (ExP-GRPO), or the DPO loss of their pairs
    averaged over the pairs (ExP-DPO; ``ref_logprobs [R, Ce]``: π_ref's). Returns the loss and, on the
    first pass, the statistics' shares (a sum over the batch's explanations or pairs, over their count)."""
    rows = torch.isin(explanations.group_index, questions).nonzero().squeeze(-1)  # [r] (pairs stay adjacent)
    mask = explanations.completion_mask  # [R, Ce]
    R, Ce = mask.shape
    size = args.micro_batch_size if args.variant == "grpo" else max(2, args.micro_batch_size // 2 * 2)
    stats = {"loss": 0.0}
    for eb in rows.split(size):  # ExP-DPO: an even size, so a pair never straddles two micro-batches
        logprobs, entropy = completion_logprobs(model, explanations.input_ids[eb], explanations.attention_mask[eb], Ce, args.temperature, with_entropy=True)  # fmt: skip
        if args.variant == "grpo":  # + λ · token-mean NLL of the explanation, averaged over the questions
            nll = explanation_nll(logprobs, mask[eb], len(questions))
            loss = args.explanation_weight * nll
            sums = {"explanation_nll": nll.item() * len(questions) / R}
        else:  # ExP-DPO: rows alternate (explanation, incorrect sample) of the same question
            seq_logps = (logprobs * mask[eb]).sum(-1).view(-1, 2)  # [r/2, 2]
            ref = (ref_logprobs[eb] * mask[eb]).sum(-1).view(-1, 2)  # [r/2, 2]
            losses, margins = dpo_loss(seq_logps[:, 0], seq_logps[:, 1], ref[:, 0], ref[:, 1], args.dpo_beta)
            loss = losses.sum() / (len(rows) // 2)
            # the margins, and the policy's entropy on the pair rows (ExP-DPO computes none on the rollouts)
            sums = {
                "dpo_margin": margins.sum().item() / (R // 2),
                "dpo_accuracy": (margins > 0).sum().item() / (R // 2),
            }
            sums["entropy"] = float((entropy * mask[eb]).sum() / mask.sum())
        loss.backward()
        stats["loss"] += loss.item()
        for key, value in sums.items() if first_pass else ():
            stats[key] = stats.get(key, 0.0) + value
    return stats


# ALGO LOGIC: the policy update (the same signature in every file; callable without main())


def update_policy(model, optimizer, batch: dict, args: Args) -> dict[str, float]:
    """Update the policy on one rollout batch: ``--updates-per-batch`` passes, each split into
    ``--num-mini-batches`` optimizer steps, each accumulated over micro-batches (the micro-batch size never
    changes the gradient). ``batch``: ``rollout`` (a ``common.rollout_types.Rollout``), ``advantages [B]`` and,
    when ``--kl-coef`` > 0, ``ref_logprobs [B, C]``. Returns the update's statistics (means over its steps).
    Modification 3 (vs GRPO): and ``explanations`` (the rows of ``self_explanations``, or None) with, for
    ExP-DPO, ``explanation_ref_logprobs [R, Ce]``; ExP-DPO trains the explanation term alone."""
    rollout, advantages, ref_logprobs = batch["rollout"], batch["advantages"], batch.get("ref_logprobs")
    mask = rollout.completion_mask  # [B, C]
    B, C = mask.shape
    steps, stats = args.updates_per_batch * args.num_mini_batches, {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0}
    # Modification 3 (vs GRPO): the explanation term's statistics; π_old for the GRPO term only
    stats.update(
        {"explanation_nll": 0.0} if args.variant == "grpo" else {"dpo_margin": 0.0, "dpo_accuracy": 0.0}
    )
    # π_old: the trainer's log-probs before the first optimizer step, needed once the ratio can leave 1
    needs_old = args.variant == "grpo" and (
        steps > 1 or args.rollout_is != "none" or args.rollout_rs != "none"
    )
    old_logprobs = rollout_logprobs(model, rollout, args.temperature, args.micro_batch_size) if needs_old else None  # fmt: skip
    weights, stats_rc = rollout_correction(old_logprobs, rollout.behavior_logprobs, mask, advantages, args)
    model.train()
    total_tokens = mask.sum().item()
    for update in range(args.updates_per_batch):
        for rows in torch.arange(B).tensor_split(args.num_mini_batches):  # one optimizer step each
            num_tokens = int(mask[rows].sum())
            # Modification 3 (vs GRPO): ExP-DPO has no GRPO term: its rollouts only provide the rejected rows
            for mb in rows.split(args.micro_batch_size) if args.variant == "grpo" else ():
                logprobs, entropy = completion_logprobs(model, rollout.input_ids[mb], rollout.attention_mask[mb], C, args.temperature, with_entropy=True)  # fmt: skip
                old = old_logprobs[mb] if old_logprobs is not None else logprobs.detach()
                per_token_loss, clipped = clipped_surrogate(
                    logprobs, old, advantages[mb], args.clip_low, args.clip_high
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
            if batch.get("explanations") is not None:  # Modification 3 (vs GRPO): the explanation term of
                first_rows = rows[rows % args.group_size == 0]  # the questions whose first rollout is here
                questions = rollout.group_index[first_rows]
                sums = explanation_term(model, batch["explanations"], batch.get("explanation_ref_logprobs"), questions, args, update == 0)  # fmt: skip
                for key, value in sums.items():
                    stats[key] = stats.get(key, 0.0) + value / (steps if key == "loss" else 1)
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
    # Modification 4 (vs GRPO): ExPO's flags; ExP-DPO has no GRPO term for a KL or a rollout correction
    if args.explanation_weight < 0 or args.explanation_tries < 1 or args.dpo_beta <= 0:
        raise SystemExit("--explanation-weight must be >= 0, --explanation-tries >= 1 and --dpo-beta > 0")
    if "{question}" not in args.hint_template or "{answer}" not in args.hint_template:
        raise SystemExit(f"--hint-template needs {{question}} and {{answer}}, got {args.hint_template!r}")
    if args.variant == "dpo" and args.kl_coef > 0:
        raise SystemExit("--variant dpo has no GRPO term to add a KL to (its reference is in the DPO loss)")
    if args.variant == "dpo" and (args.rollout_is != "none" or args.rollout_rs != "none"):
        raise SystemExit("--variant dpo has no GRPO term for --rollout-is/--rollout-rs to weight")
    check_run_args(args)  # TRY NOT TO MODIFY: model path, data, template, shared flags


def main(args: Args) -> dict:
    validate(args)
    run = Run(args)  # TRY NOT TO MODIFY: run directory, seeding, data, verifier (common/run.py)
    model, tokenizer = load_policy(args.model_name_or_path, args.dtype, args.device, args.gradient_checkpointing)  # fmt: skip
    # Modification 5 (vs GRPO): ExP-DPO's reference policy
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if args.kl_coef > 0 or args.variant == "dpo" else None  # fmt: skip
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
        if args.kl_coef > 0:  # Modification 5 (vs GRPO): ExP-DPO's reference is for its own loss only
            update["ref_logprobs"] = rollout_logprobs(ref_model, rollout, args.temperature, args.micro_batch_size)  # fmt: skip
        # Modification 5 (vs GRPO): self-explanations from the current policy given the gold answer, kept if
        # they verify; trained from the plain prompt (ExP-DPO: against an incorrect rollout, with π_ref)
        update["explanations"], explained, texts = self_explanations(run, sampler, batch, prompts, rollout, rewards, args)  # fmt: skip
        if args.variant == "dpo" and update["explanations"] is not None:
            update["explanation_ref_logprobs"] = rollout_logprobs(ref_model, update["explanations"], args.temperature, args.micro_batch_size)  # fmt: skip
        stats = update_policy(model, optimizer, update, args)
        scheduler.step()
        sampler.update_weights(model)  # TRY NOT TO MODIFY: the sampler must see the new weights
        if args.log_completions_every and step % args.log_completions_every == 0:  # and the kept explanations
            run.tracker.log_completions(step, [{"prompt": prompts[j], "explanation": t, "gold": batch[j].answer} for j, t in texts.items()])  # fmt: skip

        # Modification 5 (vs GRPO): the explanations count in the sample budget
        run.log(step, rollout, results, rewards, {**stats, **explained}, samples=len(results) + explained["explanation_samples"])  # fmt: skip
    return run.finish()  # TRY NOT TO MODIFY: the before/after table and plots


if __name__ == "__main__":
    main(tyro.cli(Args))

"""TOPR: Tapered Off-Policy REINFORCE — SFT on the positives, truncated importance sampling on the negatives.

Paper: Le Roux, Bellemare, Lebensold, Bergeron, Greaves, Fréchette, Pelletier, Thibodeau-Laufer, Toth,
Work, "Tapered Off-Policy REINFORCE: Stable and efficient reinforcement learning for LLMs",
arXiv 2503.14286. No official code; third-party versions exist in ROLL and Trinity-RFT.

Idea: off-policy by construction. A dataset of n completions per question is sampled from a behaviour
policy μ (here: the policy at the start of the step), with μ's per-token log-probs stored, then trained on
for several passes in shuffled mini-batches. Rewards are ±1. Positives get weight 1 (plain SFT, however
unlikely they have become under π); negatives get the stop-gradient weight clip(π/μ, 0, 1), which fades to
0 once a wrong answer has been unlearned, so the negative push stops by itself and the objective stays
bounded without KL or PPO clipping (naive off-policy REINFORCE drives log π → −∞).

Objective (gradient, maximised; R ∈ {+1, −1}, c = ``--reward-baseline``):

    ∇J = Σ_{τ∈T⁺} μ(τ) (R − c) ∇log π(τ)  +  Σ_{τ∈T⁻} μ(τ) clip(π(τ)/μ(τ), 0, 1) (R − c) ∇log π(τ)

    per sample (Algorithm 1):  loss = −sg(α) · (R − c) · log π(y|x),   log π(y|x) = Σ_t log π(y_t | x, y_<t)
                               α = 1 if R > 0, else exp(min(0, log π(y|x) − log μ(y|x)))

The baseline c weights positives by (1 − c) and negatives by (1 + c): off-policy it mainly sets the
effective share of positives p̃ = p (1 − c) / (1 + (1 − 2p) c), p = the dataset's positive fraction
(logged as ``effective_positive_share``; the paper reports p̃ as the lever that matters).

The paper's datasets map onto grpo.py's loop: each step samples one dataset (``--prompts-per-step``
questions × ``--group-size`` completions from the current policy, μ) and trains ``--updates-per-batch``
passes of ``--num-mini-batches`` optimizer steps on it. The flags of the earlier TOPR script map so:
--iterations → --num-steps, --questions-per-iteration → --prompts-per-step, --samples-per-question →
--group-size, --epochs → --updates-per-batch, --batch-size b → --num-mini-batches (dataset rows / b),
--baseline → --reward-baseline, --tis-cap C → --taper-mu trainer --rollout-is token-tis
--rollout-is-threshold C, --log-completions → --log-completions-every.

Modification 1: the off-policy schedule's defaults: per step a dataset of 160 × 16, 2 passes × 40 mini-batches
Modification 2: TOPR's flags (c, ratio level, curation, negatives, μ) replace the clip and the std scaling
Modification 3: evaluation, completions and checkpoints once per dataset (every step)
Modification 4: the taper, the TOPR loss, curation, the dataset and the baseline's effect (pure functions)
Modification 5: the update reads ±1 rewards, shuffles its mini-batches and logs the taper's state
Modification 6: the loss −sg(α)(R − c) log π, α tapered on π/μ, in place of the clipped surrogate
Modification 7: validate: no group needed, |c| < 1, sampled behaviour log-probs, one view of μ
Modification 8: rewards ±1 and the step's curated dataset; a step with an empty one makes no update

Defaults: n = 16 completions per question, c = 0, sequence-level ratio, no KL (paper). The tiny world uses
4 steps × 160 questions × 16 samples = 10,240 completions, 2 passes over each dataset in 40 mini-batches of
64 sequences, AdamW at 2e-4 with no warm-up [ours; the paper trained Llama 3 8B Instruct with Adafactor at a
constant 5e-7, batch 1 per GPU on 8 GPUs [2nd], a rate at which a 0.9M-parameter model does not move].
``--loss-agg`` defaults to seq-mean-token-sum (the paper's sequence log-likelihood, averaged over the
mini-batch); evaluation, completions and checkpoints come once per dataset (``--eval-every 1``,
``--log-completions-every 1``, ``--save-every 1``).

Deviations / choices:
- Ratio granularity (``--ratio-level``): ``seq`` (paper: the product over tokens, computed in log space),
  ``seq-mean`` (exp of the mean token log-ratio, as the verl PR) or ``token`` (per-token ratios, as ROLL).
- Loss normalisation: ``seq-mean-token-sum`` (default, the paper's form) or ``token-mean``. Within a
  mini-batch both weigh every token alike; they differ by a per-batch constant (the token count), which
  AdamW largely absorbs. We keep the paper's form because the tapered weight is defined on the sequence
  likelihood.
- The optimizer and its state carry over from one dataset to the next (the paper does not say).
- ``--curation anna-karenina`` keeps one correct (the first sampled) and every incorrect completion per
  question [2nd: the paper's description as reported by digests]; ``uniform`` keeps everything.
- ``--negatives drop`` is SFT on the positives only, from the same generated data (STaR/RFT-style: the same
  number of optimizer steps on the positive rows); ``--negatives reinforce`` is naive off-policy REINFORCE
  (α = 1 for negatives, the paper's unstable baseline). Both are for comparisons.
- Sampler/trainer mismatch (``--rollout vllm``). The taper clip(π/μ, 0, 1) is already a truncated
  importance ratio, so by default (``--taper-mu sampler``) μ is the sampler's own log-probs: the behaviour
  policy is whatever drew the data, vLLM included, and its numerical gap to the trainer enters π/μ like any
  other difference between the policies (positives get weight 1 whatever μ is, as in the paper).
  ``--taper-mu trainer`` [ours] takes the trainer's view instead: μ = π_old, the trainer's log-probs of the
  same samples under the policy that drew them; the shared ``--rollout-is``/``--rollout-rs`` then correct the
  gap between π_old and the sampler on every token (positives too). With ``--taper-mu sampler`` they would
  count that gap twice on the negatives, so ``validate`` refuses them there. ``logprob_mismatch`` is
  |log π_old − log π_sampler| (the sampler gap alone, as in every file).
- The learning rate's warm-up counts steps (datasets), as in every file; the tiny world uses none.
- A dataset is trained within its step, so a stop (Ctrl-C) finishes the dataset before it saves; a dataset
  with no row (``--negatives drop`` without a positive) makes no update and is counted (``skipped_batches``).
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

METHOD = MethodInfo(
    name="TOPR",
    paper="Le Roux et al., Tapered Off-Policy REINFORCE, arXiv 2503.14286",
    arxiv="2503.14286",
    change="off-policy REINFORCE on ±1 rewards: weight 1 on positives, tapered clip(π/μ, 0, 1) on negatives",
    gradient_tier=1,
    gradient_claim="biased by design: at π = μ it is REINFORCE on R − c with R = ±1 (c a constant "
    "baseline, so unbiased there); off the policy positives keep weight 1 (no importance ratio) and "
    "negatives take the truncated ratio clip(π/μ, 0, 1): bounded, tilted towards the positives",
    verl="loss only: `rlvr_topr` on on-policy batches (not its off-policy passes)",
    contradiction=({"reward_baseline": 1.0}, "--reward-baseline must be in (-1, 1)"),
    variants={"topr-sft": ["--negatives", "drop"]},
    compare_default=True,
    smoke_flags=("--num-mini-batches=2",),
)


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
    rollout: Literal["hf", "vllm"] = "hf"
    """rollout engine: HF generate or vLLM"""
    # Modification 1 (vs GRPO): each step's rollout batch is one dataset from μ, 160 questions × 16 samples
    prompts_per_step: int = 160
    """prompts per training step"""
    group_size: int = 16
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
    # Modification 1 (vs GRPO): 4 datasets, each trained 2 passes × 40 mini-batches, no warm-up
    num_steps: int = 4
    """training steps (one rollout batch each)"""
    max_samples: int = 0
    """stop after the step whose generated completions reach this many (0: no budget; bench/compare.py)"""
    learning_rate: float = 2e-4
    """AdamW learning rate (constant after warm-up)"""
    warmup_steps: int = 0
    """linear learning-rate warm-up steps"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    max_grad_norm: float = 1.0
    """gradient clipping threshold"""
    micro_batch_size: int = 64
    """sequences per forward/backward pass (gradient accumulation over the batch)"""
    updates_per_batch: int = 2
    """passes over each rollout batch (μ in the paper, PPO's epochs); the ratio π_θ / π_old is 1 on the first"""
    num_mini_batches: int = 40
    """optimizer steps per pass: each pass splits the rollout batch into this many mini-batches"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass to save memory"""

    # --- algorithm ---
    # Modification 2 (vs GRPO): TOPR's knobs replace the PPO clip and the group normalisation
    kl_coef: float = 0.0
    """β: weight of the k3 KL to the initial policy, a loss term; 0 loads no reference model"""
    loss_agg: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = "seq-mean-token-sum"  # fmt: skip
    """how per-token losses are averaged over a mini-batch (grpo.py's module docstring)"""
    reward_baseline: float = 0.0
    """c: rewards become R − c (positives 1 − c, negatives −1 − c); sets the effective positive share p̃"""
    ratio_level: Literal["seq", "seq-mean", "token"] = "seq"
    """granularity of π/μ: sequence (paper), length-normalised sequence, or per token"""
    curation: Literal["uniform", "anna-karenina"] = "uniform"
    """keep every completion, or per question one correct and all incorrect ones"""
    negatives: Literal["topr", "drop", "reinforce"] = "topr"
    """negatives' weight: tapered clip(π/μ, 0, 1) (TOPR); dropped (SFT on positives); 1 (naive REINFORCE)"""
    taper_mu: Literal["sampler", "trainer"] = "sampler"
    """μ of the taper clip(π/μ, 0, 1): the sampler's log-probs (paper) or the trainer's π_old of them"""

    # --- evaluation, logging, checkpoints ---
    # Modification 3 (vs GRPO): evaluation, completions and a checkpoint once per dataset
    eval_every: int = 1
    """evaluate held-out pass@k every N steps (0: only before and after training)"""
    eval_problems: int = 300
    """held-out problems per evaluation"""
    eval_n: int = 8
    """samples per held-out problem (pass@k for k up to eval_n)"""
    log_completions_every: int = 1
    """write a sample of completions to completions.jsonl every N steps"""
    save_every: int = 1
    """checkpoint every N steps (and at the end)"""
    keep_last: int = 2
    """checkpoints kept on disk"""


# ALGO LOGIC: the KL penalty and loss aggregation (grpo.py's); Modification 4 (vs GRPO): TOPR's functions
# (the taper, the loss, curation, the dataset, the baseline's effect) replace the advantages and the clip
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


# Modification 4 (vs GRPO): TOPR's pure functions


def ratio_logprobs(token_logprobs: torch.Tensor, mask: torch.Tensor, ratio_level: str) -> torch.Tensor:
    """Modification 4 (vs GRPO): the log-probability on which π/μ is taken: ``token_logprobs [N, C]`` ->
    ``[N]`` (seq, seq-mean) or ``[N, C]`` (token; padding set to 0).

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
    """Modification 4 (vs GRPO): TOPR's stop-gradient weight α: 1 for positives (R > 0), clip(π/μ, 0, 1)
    for negatives (R < 0).

    ``logp [N]`` = log π(y|x), ``behavior_logp [N]`` = log μ(y|x), ``rewards [N]`` -> ``weights [N]``
    (detached). The ratio is taken in log space, exp(min(0, log π − log μ)), so it never overflows and
    an unlearned negative reaches exactly 0 instead of inf·0. Token-level ratios: pass ``[N, C]`` log-probs;
    ``rewards [N]`` broadcasts over the tokens.

    >>> logp, behavior_logp = torch.tensor([-1.0, -5.0, -5.0]), torch.tensor([-3.0, -3.0, -6.0])
    >>> topr_weights(logp, behavior_logp, torch.tensor([1.0, -1.0, -1.0]))
    tensor([1.0000, 0.1353, 1.0000])
    """
    log_ratio = (logp - behavior_logp).detach()  # [N] (or [N, C])
    rewards = rewards.view(-1, *[1] * (log_ratio.dim() - 1))  # [N] (or [N, 1])
    tapered = torch.exp(log_ratio.clamp(max=0.0))  # clip(π/μ, 0, 1)
    return torch.where(rewards < 0, tapered, torch.ones_like(tapered))


def topr_token_loss(
    logprobs: torch.Tensor,  # [N, C] log π_θ of the completion tokens (with gradient)
    weights: torch.Tensor,  # [N] or [N, C] α from topr_weights
    rewards: torch.Tensor,  # [N] ±1
    baseline: float,  # c
) -> torch.Tensor:
    """Modification 4 (vs GRPO): the per-token loss −sg(α) · (R − c) · log π(y_t | ...) ``[N, C]``;
    summing over t gives Algorithm 1's −sg(α) (R − c) log π(y|x).

    A positive (R = 1, c = 0.5) and a negative (R = −1, α = 0.3), one token each of log-prob −2:

    >>> topr_token_loss(torch.full((2, 1), -2.0), torch.tensor([1.0, 0.3]), torch.tensor([1.0, -1.0]), 0.5)
    tensor([[ 1.0000],
            [-0.9000]])
    """
    coef = weights.detach() * (rewards - baseline).view(-1, *[1] * (weights.dim() - 1))  # [N] or [N, C]
    if coef.dim() == 1:
        coef = coef[:, None]  # [N, 1]
    return -coef * logprobs


def anna_karenina_keep(correct: torch.Tensor) -> torch.Tensor:
    """Modification 4 (vs GRPO): Anna Karenina curation: per question keep the first correct completion and
    every incorrect one. ``correct [Q, n]`` bool -> ``keep [Q, n]`` bool.

    >>> anna_karenina_keep(torch.tensor([[True, False, True], [False, False, False], [True, True, True]]))
    tensor([[ True,  True, False],
            [ True,  True,  True],
            [ True, False, False]])
    """
    first_correct = correct & (correct.long().cumsum(dim=1) == 1)  # [Q, n]
    return first_correct | ~correct


def curate(correct: torch.Tensor, curation: str, negatives: str) -> torch.Tensor:
    """Modification 4 (vs GRPO): the dataset's rows: ``correct [Q, n]`` bool -> ``keep [Q, n]`` bool
    (``--curation``, then ``--negatives drop`` removes the incorrect ones: SFT on the positives).

    >>> correct = torch.tensor([[True, False, True]])
    >>> curate(correct, "anna-karenina", "topr"), curate(correct, "uniform", "drop")
    (tensor([[ True,  True, False]]), tensor([[ True, False,  True]]))
    """
    keep = anna_karenina_keep(correct) if curation == "anna-karenina" else torch.ones_like(correct)
    return keep & correct if negatives == "drop" else keep


def effective_positive_share(p: float, baseline: float) -> float:
    """Modification 4 (vs GRPO): p̃ = p (1 − c) / (1 + (1 − 2p) c), the share of the gradient weight on
    positives when a fraction p of the data is positive and the rewards are R − c with R = ±1 (at π = μ).

    >>> effective_positive_share(0.3, 0.0), round(effective_positive_share(0.3, 0.2), 4)
    (0.3, 0.2222)
    """
    return p * (1 - baseline) / (1 + (1 - 2 * p) * baseline)


def positive_weight_share(weights: torch.Tensor, rewards: torch.Tensor, baseline: float) -> float | None:
    """Modification 4 (vs GRPO): the realised share of the weight on positives, Σ_{R>0} |α (R − c)| /
    Σ |α (R − c)|, over ``[N]`` sequences; equals p̃ when every α = 1. None when every weight is 0.

    >>> positive_weight_share(torch.ones(4), torch.tensor([1.0, -1.0, -1.0, -1.0]), 0.0)
    0.25
    """
    magnitude = (weights * (rewards - baseline)).abs()  # [N]
    total = float(magnitude.sum())
    return float(magnitude[rewards > 0].sum()) / total if total > 0 else None


def build_dataset(rollout: Rollout, correct: torch.Tensor, args: Args) -> dict:
    """Modification 4 (vs GRPO): the step's dataset: the curated rows of ``rollout`` (μ's behaviour log-probs
    travel with them), their ±1 rewards ``[D]`` and its statistics. ``correct [Q, n]`` bool."""
    keep = curate(correct, args.curation, args.negatives).view(-1)  # [Q·n]
    device = rollout.completion_mask.device
    rewards = torch.where(correct.view(-1)[keep], 1.0, -1.0).to(device)  # [D]
    p = float((rewards > 0).float().mean()) if len(rewards) else 0.0
    stats = {"dataset_size": len(rewards), "positive_frac": p, "effective_positive_share": effective_positive_share(p, args.reward_baseline)}  # fmt: skip
    return {"rollout": rollout.select(keep.to(device)), "rewards": rewards, "stats": stats}


# ALGO LOGIC: the policy update (the same signature in every file; callable without main())


def update_policy(model, optimizer, batch: dict, args: Args) -> dict[str, float]:
    """Update the policy on one rollout batch: ``--updates-per-batch`` passes, each split into
    ``--num-mini-batches`` optimizer steps, each accumulated over micro-batches (the micro-batch size never
    changes the gradient). ``batch``: ``rollout`` (a ``common.rollout_types.Rollout``), ``rewards [B]`` and,
    when ``--kl-coef`` > 0, ``ref_logprobs [B, C]``. Returns the update's statistics (means over its steps).
    Modification 5 (vs GRPO): ``rewards`` are ±1 (no advantages); the mini-batches are shuffled."""
    # Modification 5 (vs GRPO): ±1 rewards; every pass's sequence weight α, for the statistics
    rollout, rewards, ref_logprobs = batch["rollout"], batch["rewards"], batch.get("ref_logprobs")
    mask = rollout.completion_mask  # [B, C]
    B, C = mask.shape
    steps, stats = args.updates_per_batch * args.num_mini_batches, {"loss": 0.0, "kl": 0.0}
    alphas = torch.ones(args.updates_per_batch, B)  # [passes, B]
    # π_old: the trainer's log-probs before the first optimizer step, needed once the ratio can leave 1
    needs_old = steps > 1 or args.rollout_is != "none" or args.rollout_rs != "none"
    old_logprobs = rollout_logprobs(model, rollout, args.temperature, args.micro_batch_size) if needs_old else None  # fmt: skip
    weights, stats_rc = rollout_correction(old_logprobs, rollout.behavior_logprobs, mask, rewards, args)
    model.train()
    total_tokens = mask.sum().item()
    for update in range(args.updates_per_batch):
        # Modification 5 (vs GRPO): the dataset's rows in a fresh random order every pass
        for rows in torch.randperm(B).tensor_split(args.num_mini_batches):  # one optimizer step each
            num_tokens = int(mask[rows].sum())
            for mb in rows.split(args.micro_batch_size):
                logprobs, entropy = completion_logprobs(model, rollout.input_ids[mb], rollout.attention_mask[mb], C, args.temperature, with_entropy=True)  # fmt: skip
                old = old_logprobs[mb] if old_logprobs is not None else logprobs.detach()
                # Modification 6 (vs GRPO): α tapered on π/μ (μ: --taper-mu), loss −sg(α)(R − c) log π
                mu = old if args.taper_mu == "trainer" else rollout.behavior_logprobs[mb]  # [b, C] log μ
                level = args.ratio_level
                alpha = topr_weights(ratio_logprobs(logprobs, mask[mb], level), ratio_logprobs(mu, mask[mb], level), rewards[mb])  # fmt: skip
                if args.negatives == "reinforce":  # naive off-policy REINFORCE: no taper
                    alpha = torch.ones_like(alpha)
                per_token_loss = topr_token_loss(logprobs, alpha, rewards[mb], args.reward_baseline)
                alphas[update, mb] = (ratio_logprobs(alpha, mask[mb], "seq-mean") if level == "token" else alpha).cpu()  # fmt: skip
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
                if update == 0:  # the first pass: the policy's entropy and its gap to the sampler
                    sums = {"entropy": float((entropy * mask[mb]).sum()), **sampler_gap(old, rollout, mb)}
                    for key, value in sums.items():
                        stats[key] = stats.get(key, 0.0) + value / total_tokens
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            stats["grad_norm"] = stats.get("grad_norm", 0.0) + float(grad_norm) / steps
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    # Modification 5 (vs GRPO): the taper's state over every pass, and the realised share of the positives
    negative = (rewards < 0).cpu()  # [B]
    stats["negative_taper_weight"] = alphas[:, negative].mean().item() if negative.any() else None
    tapered = (alphas[:, negative] < 0.99).float()  # by more than 1% (float noise at π = μ is no taper)
    stats["taper_frac"] = tapered.mean().item() if negative.any() else None
    stats["positive_weight_share"] = positive_weight_share(alphas.flatten(), rewards.cpu().repeat(args.updates_per_batch), args.reward_baseline)  # fmt: skip
    return {**stats, **stats_rc}


# TRY NOT TO MODIFY: the training loop


def validate(args: Args) -> None:
    """Contradictory flags fail here, before anything is loaded."""
    # Modification 7 (vs GRPO): no group needed; |c| < 1 keeps every sign as the reward's; μ's log-probs
    if not -1 < args.reward_baseline < 1:
        raise SystemExit(f"--reward-baseline must be in (-1, 1), got {args.reward_baseline}")
    if args.temperature <= 0:
        raise SystemExit("--temperature must be > 0: TOPR needs the behaviour policy's sampling log-probs")
    if args.taper_mu == "sampler" and (args.rollout_is != "none" or args.rollout_rs != "none"):
        raise SystemExit(
            "--rollout-is/--rollout-rs correct the trainer/sampler gap, which the taper already holds with "
            "--taper-mu sampler: add --taper-mu trainer"
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
        rewards = correct.view(Q, G) * 2 - 1  # [Q, G] Modification 8 (vs GRPO): ±1

        # ALGO LOGIC: Modification 8 (vs GRPO): the step's dataset from μ, curated, then the off-policy update
        data = build_dataset(rollout, correct.view(Q, G).bool(), args)
        update = {"rollout": data["rollout"], "rewards": data["rewards"]}
        run.extra["skipped_batches"] = run.extra.get("skipped_batches", 0) + int(len(data["rewards"]) == 0)
        if ref_model is not None and len(data["rewards"]):
            update["ref_logprobs"] = rollout_logprobs(ref_model, data["rollout"], args.temperature, args.micro_batch_size)  # fmt: skip
        stats = update_policy(model, optimizer, update, args) if len(data["rewards"]) else {}
        stats.update(data["stats"], skipped_batches=run.extra["skipped_batches"])
        scheduler.step()
        sampler.update_weights(model)  # TRY NOT TO MODIFY: the sampler must see the new weights

        run.log(step, rollout, results, rewards, stats)  # TRY NOT TO MODIFY: metrics, evaluation, completions
    return run.finish()  # TRY NOT TO MODIFY: the before/after table and plots


if __name__ == "__main__":
    main(tyro.cli(Args))

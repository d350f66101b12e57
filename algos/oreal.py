"""OREAL: Outcome REwArd-based reinforcement Learning.

Paper: Lyu, Gao, Gu, Zhang et al., "Exploring the Limit of Outcome Reward for Learning Mathematical
Reasoning", arXiv 2502.06781. Official code: InternLM/OREAL (``train_oreal.py`` and the configs in
``oreal/configs/``).

Idea: with a binary verifier, behaviour cloning on the correct samples of best-of-N is enough to learn the
KL-regularised optimal policy; the incorrect samples are kept too, but their reward is reshaped so that
their gradient is consistent with the cloning term (a REINFORCE term at half weight). Rewards are ±1 and
the advantage is RLOO over the whole group. Only groups with both outcomes are kept, and from each one
correct and one incorrect sample. A token-level reward model (a copy of the initial policy with a scalar
head, trained on the outcomes) decides which tokens matter: positive samples learn mostly on the tokens
it finds promising, negative samples mostly on the tokens it finds wrong.

Objective (minimised; D⁺/D⁻ the kept correct/incorrect samples, N⁺/N⁻/N their completion tokens,
ℓ_{i,t} = log π_θ(o_{i,t} | q, o_{i,<t}), sg = stop-gradient, r_i = ±1, G = K the group):

    A_i     = r_i − mean_{j≠i} r_j                                (RLOO over all K samples of the group)
    L(θ)    = η⁺ · Σ_{i∈D⁺} Σ_t ω⁺_{i,t} · A_i · (−ℓ_{i,t}) / N⁺                     behaviour cloning
            − η⁻ · Σ_{i∈D⁻} Σ_t ω⁻_{i,t} · A_i · exp(ℓ_{i,t} − sg ℓ_{i,t}) / N⁻        reshaped negatives
            + β  · Σ_{i∈D}  Σ_t k3(π_θ ‖ π_ref)_{i,t} / N                             KL to the initial policy
    token RM: s_{i,t} = w · h^RM_{i,t}   L_RM = (1/|D|) Σ_i BCE(mean_t s_{i,t}, 1[r_i = +1])
    q_{i,t} = σ(mean_{u≤t} s_{i,u}),  ω⁺ = clamp(2q − 1, 0, 1),  ω⁻ = clamp(1 − 2q, 0, 1)   (detached)

With c = pK correct in a group, A⁺ = 2K(1−p)/(K−1) and A⁻ = −2Kp/(K−1), so |A⁻|/A⁺ = p/(1−p): the
paper's reshaping of negative rewards. The exp(ℓ − sg ℓ) factor equals 1 but carries the gradient
−η⁻·ω⁻·A⁻·∇ℓ/N⁻ (REINFORCE; A⁻ < 0, so a descent step lowers the log-prob of a wrong token).

Modification 1: OREAL's flags (η⁺, η⁻, the filter, the token RM, the freeze) replace the clip and the scaling
Modification 2: RLOO on ±1 rewards, the pair filter, the token RM and its weights, OREAL's losses
Modification 3: the update: cloning on the positives, reshaped REINFORCE on the negatives, token-weighted
Modification 4: the token RM's own update, whose scores (before its step) weight the actor's tokens
Modification 5: validate: the freeze
Modification 6: the token RM and its optimizer, checkpointed with the policy (``run.start(modules=...)``)
Modification 7: the step: ±1 rewards, RLOO advantages, the pair filter, the RM step, the actor's freeze

Defaults: η⁺ = 1 (positive_loss_factor), η⁻ = 0.5 (negative_loss_factor), β = ``--kl-coef`` 0.01 (k3,
"unbias"), BC scaled by A⁺ (pos_mult_adv), RM threshold 0.5, one optimizer step per batch (on the policy),
actor frozen for the first steps while the RM learns: all from the official OREAL-7B-SFT config with token
RM. Weight decay (``--weight-decay``, actor and RM): OREAL 0.01; the tiny world uses 0. The paper scale
(K = 16, 64 prompts, actor lr 5e-7, RM lr 2e-6, 10 frozen steps of 90) is the command line of
docs/methods/oreal.md; the tiny world keeps grpo.py's rollout budget (16 prompts × 8) and a larger
learning rate.

Deviations / choices:
- Positive term: the paper describes pure behaviour cloning; the code (and this file, by default)
  multiplies it by the RLOO advantage A⁺ ∝ 1 − p. ``--no-advantage-scaled-bc`` gives pure cloning.
- Filtering: the code keeps one random correct and one random incorrect sample per mixed group (0 < p < 1)
  when the token RM is on, and keeps everything in its no-RM config. Here the pair filter is the default
  for both; ``--keep-all`` keeps every sample of every group (uniform groups then add only KL and RM
  data, since their A = 0). The official no-RM config is ``--no-token-rm --keep-all``.
- Token alignment [ours] (``--rm-alignment after``, the default): the RM score of completion token t
  is read from the hidden state that has seen token t. The official code reads it one position earlier
  (the state that predicts token t), so the first token's score there depends only on the prompt:
  ``--rm-alignment before``. Scores are averaged cumulatively as in the code (the paper writes w(s_t)
  per token).
- The RM head is a bias-free ``nn.Linear(hidden, 1)`` on the copied transformer body (the code replaces
  the LM head the same way); its scores of this step's rows, before its own optimizer step, weight the
  actor's tokens (as in the code; Algorithm 1 in the paper updates the RM first). Its own AdamW, warm-up
  and grad clip.
- Learning rates are constant after warm-up for both models (the code decays both with a cosine).
- Not implemented: the official data pipeline's difficulty-balanced prompt repetition. Its prompt set
  carries a precomputed pass rate per question, and each question is repeated by its pass-rate bucket
  before shuffling (6x for [0, 0.2), 4x for [0.2, 0.6), 2x for [0.6, 0.8); questions at 0.8 or above
  are dropped). Here every training question appears once per epoch; a dataset with such pass rates
  can be repeated the same way before it is passed as a ``.jsonl`` file.
- The actor's warm-up starts when it unfreezes [ours]; the code's schedule runs during the freeze, so
  its actor starts at the full learning rate. While frozen its losses are computed and logged (no
  backward; ``lr`` logs 0). The freeze is ignored with ``--no-token-rm``.
- A batch with no kept sample (no mixed group) makes no update and is counted in ``skipped_batches``.
- Checkpoints: the RM's weights, optimizer and scheduler states are saved by name beside the policy's
  (``run.start(modules=...)``, ``state.pt``) and restored on ``--resume``.
- Verifier rewards are 1 (correct) / −1 (wrong or unparsable), as the code maps a missing judgement to −1.
- On the policy by design: one update per batch, as in the code, so π_old = π_θ and the exp(ℓ − sg ℓ)
  factor is 1. With ``--updates-per-batch`` or ``--num-mini-batches`` above 1 [ours] the factor becomes
  the ratio exp(ℓ − ℓ_old) against π_old (no clip), and the cloning term stays as it is.
"""

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
import tyro

from common.model import completion_logprobs, load_policy, position_ids_from_mask, rollout_logprobs
from common.preflight import check_run_args
from common.registry import MethodInfo
from common.rollout import make_sampler
from common.rollout_correction import rollout_correction
from common.rollout_types import sampler_gap
from common.run import Run, warmup_scheduler

METHOD = MethodInfo(
    name="OREAL",
    paper="Lyu et al., Exploring the Limit of Outcome Reward for Learning Mathematical Reasoning, "
    "arXiv 2502.06781",
    arxiv="2502.06781",
    change="cloning on a positive of each mixed group, reshaped REINFORCE on a negative, token RM weights",
    gradient_tier=3,
    gradient_claim="no exact form: the token weights come from a token-level reward model trained beside the "
    "policy; without it (--no-token-rm --keep-all) it is behaviour cloning scaled by the RLOO advantage on "
    "the positives plus REINFORCE at half weight on the negatives, each normalised by its own token count",
    verl="no (token reward model)",
    contradiction=({"group_size": 1}, "--group-size must be >= 2"),
    compare_default=True,
)


@dataclass
class Args:
    # --- experiment ---
    exp_name: str = "oreal"
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
    # Modification 1 (vs GRPO): no PPO clip, no loss-aggregation or reward-scaling choice; OREAL's own knobs
    kl_coef: float = 0.01
    """β: weight of the k3 KL to the initial policy, a loss term; 0 loads no reference model"""
    positive_coef: float = 1.0
    """η⁺: weight of the behaviour-cloning term on correct samples (positive_loss_factor)"""
    negative_coef: float = 0.5
    """η⁻: weight of the REINFORCE term on incorrect samples (negative_loss_factor)"""
    advantage_scaled_bc: bool = True
    """multiply the cloning term by the RLOO advantage A⁺ (the code's pos_mult_adv); off: pure cloning"""
    keep_all: bool = False
    """train on every sample of every group instead of one correct + one incorrect per mixed group"""
    token_rm: bool = True
    """weight tokens with the token-level reward model (--no-token-rm: ω ≡ 1, the simpler variant)"""
    rm_learning_rate: float = 4e-4
    """token RM AdamW learning rate (OREAL: 2e-6, 4x the actor's)"""
    rm_alignment: Literal["after", "before"] = "after"
    """which hidden state scores completion token t: the one that has read it ("after", ours) or the one
    that predicts it ("before", the official code)"""
    actor_freeze_steps: int = 5
    """first steps in which only the token RM learns (OREAL: 10 of 90); ignored with --no-token-rm"""

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


# ALGO LOGIC: the KL penalty and the loss aggregation (grpo.py's); Modification 2 (vs GRPO): OREAL's functions
# (RLOO on ±1 rewards, the pair filter, the token RM, its weights, the losses) replace advantages and clip
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


# Modification 2 (vs GRPO): OREAL's pure functions


def oreal_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Modification 2 (vs GRPO): RLOO's leave-one-out advantages A_i = r_i − mean_{j≠i} r_j on OREAL's ±1
    rewards. ``rewards [Q, G]`` -> ``advantages [Q, G]``.

    One correct of four (K = 4, p = 1/4): A⁺ = 2K(1−p)/(K−1) = 2, A⁻ = −2Kp/(K−1) = −2/3.

    >>> oreal_advantages(torch.tensor([[1.0, -1.0, -1.0, -1.0]]))
    tensor([[ 2.0000, -0.6667, -0.6667, -0.6667]])
    """
    G = rewards.shape[1]
    baseline = (rewards.sum(dim=1, keepdim=True) - rewards) / (G - 1)  # [Q, G] mean of the others
    return rewards - baseline


def pair_filter(correct: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Modification 2 (vs GRPO): keep one random correct and one random incorrect sample of every mixed group.

    ``correct [Q, G]`` bool -> ``keep [Q, G]`` bool; uniform groups keep nothing.

    >>> pair_filter(torch.tensor([[True, False], [True, True], [False, False]]))
    tensor([[ True,  True],
            [False, False],
            [False, False]])

    With several correct (or incorrect) samples in a group, the one kept is drawn uniformly among them.
    """
    Q, G = correct.shape
    draw = torch.rand(Q, G, generator=generator)  # [Q, G]
    pick_correct = torch.where(correct, draw, -1.0).argmax(dim=1)  # [Q]
    pick_wrong = torch.where(~correct, draw, -1.0).argmax(dim=1)  # [Q]
    mixed = correct.any(dim=1) & (~correct).any(dim=1)  # [Q]
    keep = torch.zeros(Q, G, dtype=torch.bool)
    rows = torch.arange(Q)
    keep[rows, pick_correct] = mixed
    keep[rows, pick_wrong] = mixed
    return keep


class TokenRewardModel(torch.nn.Module):
    """Modification 2 (vs GRPO): a copy of the policy's transformer body with a bias-free scalar head: one
    score per token.

    ``scores(input_ids [B, P + C], attention_mask [B, P + C], C)`` -> ``[B, C]``: the score of completion
    token t is the head applied to the hidden state that has read token t (``alignment="after"``), or
    to the one before it, which predicts token t (``"before"``, as the official code). The copy shares
    nothing with the policy, so the RM loss never reaches the actor.
    """

    def __init__(self, policy, alignment: str = "after"):
        super().__init__()
        self.body = copy.deepcopy(policy.base_model)  # the transformer without the LM head
        self.head = torch.nn.Linear(policy.config.hidden_size, 1, bias=False, device=policy.device)
        self.shift = {"after": 0, "before": 1}[alignment]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_completion_tokens: int):
        hidden = self.body(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        ).last_hidden_state  # [B, P + C, H]
        end = hidden.shape[1] - self.shift
        hidden = hidden[:, end - num_completion_tokens : end]  # [B, C, H]
        return self.head(hidden.float()).squeeze(-1)  # [B, C]


def token_weights(rm_scores: torch.Tensor, mask: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Modification 2 (vs GRPO): OREAL's token weights from RM scores, detached. ``rm_scores [N, T]``,
    ``mask [N, T]``, ``positive [N]`` bool -> ``weights [N, T]`` in [0, 1], 0 on padding.

    q_t = σ(mean_{u≤t} s_u) over the masked tokens; positives get clamp(2q − 1, 0, 1) (tokens the RM finds
    promising), negatives clamp(1 − 2q, 0, 1) (tokens it finds wrong).

    Scores [2, −2]: cumulative means [2, 0], q = [0.881, 0.5].

    >>> token_weights(torch.tensor([[2.0, -2.0], [-2.0, 2.0]]), torch.ones(2, 2), torch.tensor([True, False]))
    tensor([[0.7616, 0.0000],
            [0.7616, 0.0000]])
    """
    scores = rm_scores.detach() * mask  # [N, T]
    cumulative_mean = scores.cumsum(dim=-1) / mask.cumsum(dim=-1).clamp(min=1)  # [N, T]
    q = torch.sigmoid(cumulative_mean)  # [N, T] the RM's probability that the answer will be correct
    positive_weight = (2 * q - 1).clamp(0, 1)
    negative_weight = (1 - 2 * q).clamp(0, 1)
    return torch.where(positive[:, None], positive_weight, negative_weight) * mask


def token_rm_loss(
    rm_scores: torch.Tensor,  # [b, C] token scores of one micro-batch (with gradient)
    mask: torch.Tensor,  # [b, C]
    positive: torch.Tensor,  # [b] bool: the sample is correct
    num_sequences: int,  # kept sequences in the WHOLE batch
) -> torch.Tensor:
    """Modification 2 (vs GRPO): the token RM's loss, BCE of the sequence logit (mean token score) against
    the outcome, summed, divided by the batch size.

    >>> token_rm_loss(torch.zeros(2, 3), torch.ones(2, 3), torch.tensor([True, False]), num_sequences=2)
    tensor(0.6931)
    """
    sequence_logit = (rm_scores * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # [b]
    bce = F.binary_cross_entropy_with_logits(sequence_logit, positive.float(), reduction="sum")
    return bce / num_sequences


def oreal_policy_loss(
    logprobs: torch.Tensor,  # [b, C] log π_θ of the sampled tokens (with gradient)
    mask: torch.Tensor,  # [b, C] completion mask
    positive: torch.Tensor,  # [b] bool: the sample is correct
    advantages: torch.Tensor,  # [b] RLOO advantage of each sample
    weights: torch.Tensor,  # [b, C] token weights ω (ω⁺ on positive rows, ω⁻ on negative rows; detached)
    num_positive_tokens: int,  # completion tokens of correct samples in the whole mini-batch
    num_negative_tokens: int,  # completion tokens of incorrect samples in the whole mini-batch
    positive_coef: float = 1.0,
    negative_coef: float = 0.5,
    advantage_scaled_bc: bool = True,
    old_logprobs: torch.Tensor | None = None,  # [b, C] log π_old (detached)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Modification 2 (vs GRPO): the behaviour-cloning loss on positives and the REINFORCE loss on negatives,
    each summed over tokens and divided by its mini-batch token count, so summing micro-batches gives the
    mini-batch loss. ``old_logprobs`` (π_old; default: ``logprobs`` detached, on the policy) makes the
    negatives' factor exp(ℓ − ℓ_old), 1 on the policy.

    One positive row (ℓ = [−1, −1], A = 2, ω = 1) and one negative row (A = −0.5, ω = [1, 0.5]):
      positive: 1.0 · 2 · (1 + 1) / 2           = 2.0
      negative: −0.5 · (−0.5) · (1 + 0.5) / 2   = 0.1875   (the ratio term equals 1)

    >>> positive, advantages = torch.tensor([True, False]), torch.tensor([2.0, -0.5])
    >>> oreal_policy_loss(-torch.ones(2, 2), torch.ones(2, 2), positive, advantages,
    ...                   torch.tensor([[1.0, 1.0], [1.0, 0.5]]), 2, 2)
    (tensor(2.), tensor(0.1875))
    """
    positive_mask = positive[:, None].float() * mask  # [b, C]
    negative_mask = (~positive)[:, None].float() * mask  # [b, C]
    adv = advantages[:, None]  # [b, 1]
    bc_scale = adv if advantage_scaled_bc else 1.0
    positive_loss = (positive_mask * weights * bc_scale * -logprobs).sum() / max(num_positive_tokens, 1)
    old = logprobs.detach() if old_logprobs is None else old_logprobs
    ratio = torch.exp(logprobs - old)  # [b, C] value 1 on the policy, gradient ∇ℓ
    negative_loss = -(negative_mask * weights * adv * ratio).sum() / max(num_negative_tokens, 1)
    return positive_coef * positive_loss, negative_coef * negative_loss


# ALGO LOGIC: the policy update (the same signature in every file; callable without main())


def update_policy(model, optimizer, batch: dict, args: Args) -> dict[str, float]:
    """Update the policy on one rollout batch: ``--updates-per-batch`` passes, each split into
    ``--num-mini-batches`` optimizer steps, each accumulated over micro-batches (the micro-batch size never
    changes the gradient). ``batch``: ``rollout`` (a ``common.rollout_types.Rollout``), ``advantages [B]`` and,
    when ``--kl-coef`` > 0, ``ref_logprobs [B, C]``. Returns the update's statistics (means over its steps).
    Modification 3 (vs GRPO): also ``positive [B]`` (bool), ``token_weights [B, C]`` (ω; default 1) and
    ``update_actor`` (False while the actor is frozen: the losses and statistics, no backward, no step)."""
    rollout, advantages, ref_logprobs = batch["rollout"], batch["advantages"], batch.get("ref_logprobs")
    mask = rollout.completion_mask  # [B, C]
    B, C = mask.shape
    # Modification 3 (vs GRPO): which rows are correct, the token weights ω, the actor's freeze
    positive, omega = batch["positive"], batch.get("token_weights", mask)  # ω ≡ 1 without the token RM
    update_actor = batch.get("update_actor", True)
    steps, stats = args.updates_per_batch * args.num_mini_batches, {"loss": 0.0, "kl": 0.0}
    stats.update(positive_loss=0.0, negative_loss=0.0)
    # π_old: the trainer's log-probs before the first optimizer step, needed once the ratio can leave 1
    needs_old = steps > 1 or args.rollout_is != "none" or args.rollout_rs != "none"
    old_logprobs = rollout_logprobs(model, rollout, args.temperature, args.micro_batch_size) if needs_old else None  # fmt: skip
    weights, stats_rc = rollout_correction(old_logprobs, rollout.behavior_logprobs, mask, advantages, args)
    model.train()
    total_tokens = mask.sum().item()
    for update in range(args.updates_per_batch):
        for rows in torch.arange(B).tensor_split(args.num_mini_batches):  # one optimizer step each
            num_tokens = int(mask[rows].sum())
            num_positive_tokens = int(mask[rows][positive[rows]].sum())  # Modification 3 (vs GRPO): N⁺
            for mb in rows.split(args.micro_batch_size):
                logprobs, entropy = completion_logprobs(model, rollout.input_ids[mb], rollout.attention_mask[mb], C, args.temperature, with_entropy=True)  # fmt: skip
                old = old_logprobs[mb] if old_logprobs is not None else logprobs.detach()
                # Modification 3 (vs GRPO): cloning on the positives and reshaped REINFORCE on the negatives,
                # each token weighted by ω times the sampler/trainer mismatch correction
                positive_loss, negative_loss = oreal_policy_loss(
                    logprobs, mask[mb], positive[mb], advantages[mb], omega[mb] * weights[mb],
                    num_positive_tokens, num_tokens - num_positive_tokens,
                    args.positive_coef, args.negative_coef, args.advantage_scaled_bc, old,
                )  # fmt: skip
                loss = positive_loss + negative_loss
                if ref_logprobs is not None:  # Modification 3 (vs GRPO): the KL, a token mean, added to it
                    kl = k3_kl(logprobs, ref_logprobs[mb])  # [b, C]
                    loss = loss + args.kl_coef * aggregate_loss(
                        kl, mask[mb], "token-mean", len(rows), num_tokens, C
                    )
                    stats["kl"] += float((kl * mask[mb]).sum()) / num_tokens / steps
                if update_actor:  # frozen: no backward, so the step below changes nothing
                    loss.backward()
                stats["loss"] += loss.item() / steps
                stats["positive_loss"] += positive_loss.item() / steps
                stats["negative_loss"] += negative_loss.item() / steps
                if update == 0:  # the first pass: the policy's entropy and its gap to the sampler
                    sums = {"entropy": float((entropy * mask[mb]).sum()), **sampler_gap(old, rollout, mb)}
                    for key, value in sums.items():
                        stats[key] = stats.get(key, 0.0) + value / total_tokens
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            stats["grad_norm"] = stats.get("grad_norm", 0.0) + float(grad_norm) / steps
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    # Modification 3 (vs GRPO): the mean token weight ω over the positive and over the negative tokens
    for name, rows in (("positive_token_weight", positive), ("negative_token_weight", ~positive)):
        stats[name] = float(omega[rows].sum()) / max(float(mask[rows].sum()), 1.0)
    return {**stats, **stats_rc}


def update_token_rm(reward_model, rm_optimizer, rollout, positive: torch.Tensor, args: Args) -> tuple:
    """Modification 4 (vs GRPO): one optimizer step of the token RM on the kept rows (BCE of each row's mean
    score against its outcome), in micro-batches. Returns the token weights ω ``[N, C]`` from the scores
    before the step (detached, 0 on padding) and the RM's statistics."""
    mask = rollout.completion_mask  # [N, C]
    N, C = mask.shape
    weights, stats = [], {"rm_loss": 0.0, "rm_accuracy": 0.0}
    for mb in torch.arange(N).split(args.micro_batch_size):
        rm_scores = reward_model(rollout.input_ids[mb], rollout.attention_mask[mb], C)  # [b, C]
        weights.append(token_weights(rm_scores, mask[mb], positive[mb]))
        rm_loss = token_rm_loss(rm_scores, mask[mb], positive[mb], N)
        rm_loss.backward()  # reaches only the RM: it shares no parameter with the actor
        sequence_logit = (rm_scores.detach() * mask[mb]).sum(-1) / mask[mb].sum(-1).clamp(min=1)
        stats["rm_loss"] += rm_loss.item()
        stats["rm_accuracy"] += float(((sequence_logit > 0) == positive[mb]).sum()) / N
    stats["rm_grad_norm"] = float(
        torch.nn.utils.clip_grad_norm_(reward_model.parameters(), args.max_grad_norm)
    )
    rm_optimizer.step()
    rm_optimizer.zero_grad(set_to_none=True)
    return torch.cat(weights), stats


# TRY NOT TO MODIFY: the training loop


def validate(args: Args) -> None:
    """Contradictory flags fail here, before anything is loaded."""
    if args.group_size < 2:
        raise SystemExit(f"--group-size must be >= 2 for a group-relative advantage, got {args.group_size}")
    if args.actor_freeze_steps < 0:  # Modification 5 (vs GRPO): the freeze
        raise SystemExit(f"--actor-freeze-steps must be >= 0, got {args.actor_freeze_steps}")
    check_run_args(args)  # TRY NOT TO MODIFY: model path, data, template, shared flags


def main(args: Args) -> dict:
    validate(args)
    run = Run(args)  # TRY NOT TO MODIFY: run directory, seeding, data, verifier (common/run.py)
    model, tokenizer = load_policy(args.model_name_or_path, args.dtype, args.device, args.gradient_checkpointing)  # fmt: skip
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if args.kl_coef > 0 else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = warmup_scheduler(optimizer, args.warmup_steps)
    # Modification 6 (vs GRPO): the token RM (a copy of the initial policy with a scalar head), its own AdamW
    # and warm-up, saved and restored by name with every checkpoint
    modules = {}
    if args.token_rm:
        reward_model = TokenRewardModel(model, args.rm_alignment).train()
        rm_optimizer = torch.optim.AdamW(reward_model.parameters(), lr=args.rm_learning_rate, weight_decay=args.weight_decay)  # fmt: skip
        modules = {"token_rm": reward_model, "token_rm_optimizer": rm_optimizer, "token_rm_scheduler": warmup_scheduler(rm_optimizer, args.warmup_steps)}  # fmt: skip
    sampler = make_sampler(args.rollout, model, tokenizer, gpu_memory_utilization=args.vllm_gpu_memory_utilization)  # fmt: skip
    run.start(model, tokenizer, optimizer, scheduler, sampler, modules=modules)  # resume, base evaluation
    Q, G = args.prompts_per_step, args.group_size

    for step in run.steps():  # TRY NOT TO MODIFY: progress, Ctrl-C, checkpoints, the sample budget
        # TRY NOT TO MODIFY: sample G completions for each of this step's prompts and score them
        batch, prompts = run.next_batch(Q)
        rollout = sampler.generate(prompts, G, args.max_new_tokens, args.temperature, args.top_p)
        results, correct = run.verify(rollout, batch)
        rewards = correct.view(Q, G) * 2 - 1  # [Q, G] Modification 7 (vs GRPO): ±1

        # ALGO LOGIC: Modification 7 (vs GRPO): RLOO advantages over the whole group; one correct and one
        # incorrect sample of each mixed group (or all); the token RM's step gives ω; the actor's freeze
        advantages = oreal_advantages(rewards).view(-1).to(args.device)  # [B]
        keep = torch.ones(Q, G, dtype=torch.bool) if args.keep_all else pair_filter(rewards > 0)  # [Q, G]
        rows = keep.view(-1).nonzero().squeeze(-1)  # [N] kept rows of the rollout
        train, positive = rollout.select(rows), (correct[rows] > 0).to(args.device)  # N rows, [N]
        update_actor = step > args.actor_freeze_steps or not args.token_rm
        update = {"rollout": train, "advantages": advantages[rows], "positive": positive, "update_actor": update_actor}  # fmt: skip
        stats = {"kept_frac": len(rows) / (Q * G), "actor_frozen": float(not update_actor)}
        run.extra["skipped_batches"] = run.extra.get("skipped_batches", 0) + int(len(rows) == 0)
        if len(rows):  # else no mixed group in this batch: nothing to learn from, no update (counted)
            if args.token_rm:
                update["token_weights"], rm_stats = update_token_rm(modules["token_rm"], modules["token_rm_optimizer"], train, positive, args)  # fmt: skip
                stats.update(rm_stats)
            if ref_model is not None:
                update["ref_logprobs"] = rollout_logprobs(ref_model, train, args.temperature, args.micro_batch_size)  # fmt: skip
            stats.update(update_policy(model, optimizer, update, args))
        stats["skipped_batches"] = run.extra["skipped_batches"]
        if args.token_rm:
            modules["token_rm_scheduler"].step()
        if update_actor:  # the actor's warm-up starts when it unfreezes
            scheduler.step()
        else:
            stats["lr"] = 0.0  # the frozen actor does not move
        sampler.update_weights(model)  # TRY NOT TO MODIFY: the sampler must see the new weights

        run.log(step, rollout, results, rewards, stats)  # TRY NOT TO MODIFY: metrics, evaluation, completions
    return run.finish()  # TRY NOT TO MODIFY: the before/after table and plots


if __name__ == "__main__":
    main(tyro.cli(Args))

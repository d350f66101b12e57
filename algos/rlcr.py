"""RLCR: Reinforcement Learning with Calibration Rewards — GRPO whose reward also scores a stated confidence.

Paper: Damani, Puri, Slocum, Shenfeld, Choshen, Kim, Andreas, "Beyond Binary Rewards: Training LMs to
Reason About Their Uncertainty", arXiv 2507.16806. Official code: github.com/damanimehul/RLCR
(``reward_fns.py``, ``configs/Qwen-7B/math/RLCR.yaml`` and ``RLVR.yaml``, ``eval/eval_utils.py``).

Idea: ask for the answer AND a verbalised confidence q in [0, 1], and reward correctness plus the Brier
score of q. The Brier score is a bounded proper scoring rule: for an answer that is right with
probability p, the expected reward is maximised by reporting q = p, and since a right answer with the
worst confidence still scores at least as much as a wrong answer with the best one, the policy never
gains by trading accuracy for calibration. A binary reward (RLVR) leaves the confidence untrained.

Reward (official ``reward_weights [0.5, 0.5, 0.5]`` on the format, accuracy and brier functions; c = 1[correct]):

    format = 1 if the answer parses AND the completion ends in <confidence>q</confidence> with 0 <= q <= 1, else 0
    acc    = c if format else 0                      (a malformed completion earns nothing)
    brier  = 1 − (acc − q)²  if format else 0
    R      = w_f · format + w_a · acc + w_b · brier  (= 0.5 · (1[correct] − (q − 1[correct])²) + const if format)

then Dr. GRPO-style advantages A_i = R_i − mean_group(R) (official ``scale_rewards: false``) and the
PPO-clip loss of grpo.py with token-mean aggregation (the official TRL fork's default ``loss_type: bnpo``).
The RLVR control is ``--brier-weight 0`` (official RLVR: weight 1e-5, i.e. none).

Format on the tiny world: the prompt is the question plus ``CONFIDENCE_SUFFIX`` (" State your
confidence."), and the completion is the worked solution ending in ``\\boxed{a}`` followed by
``<confidence>q</confidence>``: the tiny world's warm-up teaches exactly this, with q drawn from
{0.2, 0.4, 0.6, 0.8} independently of correctness, so the base policy's confidence is uninformative. It
maps to the paper's ``<think>…</think><answer>a</answer><analysis>…</analysis><confidence>q</confidence>``
(format ``tabc``) as: working = think, ``\\boxed{a}`` = answer, no analysis, the same confidence tag. A real
model needs to be told the format: pass a longer ``--confidence-instruction`` (see docs/methods/rlcr.md);
the answer is still read from the last ``\\boxed{}`` and the confidence from the last tag.

Calibration (held-out, at every evaluation; before and after training also ``calibration.json`` and
``plots/reliability.png``): accuracy, Brier = mean (q − c)², ECE over ``--ece-bins`` (10, as the official
``get_ece``) equal-width bins binned exactly as ``get_ece`` does, AUROC of q as a score for c, and the
format rate. A missing or invalid confidence counts as q = 0, as the official ``confidence_extractor`` does.

Modification 1: room for the confidence tag, the official Dr. GRPO advantages and token-mean loss, the weights
Modification 2: the reward adds a format term and the Brier score of the stated confidence
Modification 3: a held-out calibration evaluation (accuracy, Brier, ECE, AUROC) at every evaluation
Modification 4: every question (train and held-out) asks for a stated confidence
Modification 5: the batch's calibration is logged every step
Modification 6: the held-out calibration table, calibration.json and plots/reliability.png at the end

Defaults run the CPU demo on the tiny world; ``--max-new-tokens 112`` (the confidence tag adds about 30
tokens to the tiny world's working). Official (Qwen2.5-7B, Big-Math-Digits): G = 32, temperature 0.7, lr
5e-6 linear with 20% warm-up, β = 0, max completion 4096, 0.5 epoch, one optimizer step per generation
batch; reward weights 0.5 each (the control: ``--brier-weight 0``); ``--ece-bins 10`` is ``get_ece``'s.
Reported on Big-Math-Digits (``results/``): RLVR acc 65.4, Brier 0.319, ECE 0.30, AUROC 0.50; RLCR acc
68.7, Brier 0.181, ECE 0.05, AUROC 0.73.

Deviations / choices:
- The tiny world has no ``<answer>``/``<analysis>`` tags: format = the boxed answer parses and the
  completion ends in a confidence tag (the official regex also requires the tags to end the text).
- A confidence that is not a plain number in [0, 1] (e.g. "90", "1.3", "nan") fails the format; the
  official evaluation rescales 1..100 to a fraction, its training reward does not: this file never does.
- The official RLVR run also switches to a prompt without confidence (``sys_prompt_name: gen``, format
  ``ta``); here the control keeps the confidence prompt and the format term, so its calibration can be
  measured on the same format (its confidence is simply never rewarded).
- The loss's normaliser: the official loss (TRL's ``loss_type="bnpo"``) averages the token losses over each
  local batch of ``per_device_train_batch_size`` = 6 completions, and gradient accumulation averages those 64
  local means, so a token's weight depends on the token count of its local batch. Here ``token-mean`` divides
  by the tokens of the whole mini-batch, so the micro-batch size never changes the gradient; the two agree
  when the completions have equal lengths.
- The two 1e-5 logging-only reward terms of the official config are left out; ``mask_truncated_completions``
  is not implemented (the tiny world rarely truncates; ``truncated_frac`` is logged).
- Confidences are kept in float64, as the official evaluation's Python floats: a float32 0.3 would fall in
  the bin above the one ``get_ece`` gives it.
"""

import copy
import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
import tyro
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from common.model import completion_logprobs, load_policy, rollout_logprobs
from common.preflight import check_run_args
from common.registry import MethodInfo
from common.rollout import make_sampler
from common.rollout_correction import rollout_correction
from common.rollout_types import sampler_gap
from common.run import Run, warmup_scheduler
from common.tiny_task import CONFIDENCE_SUFFIX
from common.verify import parse_tag

METHOD = MethodInfo(
    name="RLCR",
    paper="Damani et al., Beyond Binary Rewards: Training LMs to Reason About Their Uncertainty, "
    "arXiv 2507.16806",
    arxiv="2507.16806",
    change="reward = format + correctness + the Brier score of a stated confidence; Dr. GRPO advantages",
    gradient_tier=1,
    gradient_claim="biased by design, as Dr. GRPO's: the group mean that includes the sample gives (G − 1)/G "
    "of the gradient of the expected reward, whose Brier term is a proper scoring rule (maximised by "
    "stating the true probability of being right)",
    verl="no (not yet: its reward is a verl reward function, not an estimator)",
    contradiction=({"ece_bins": 0}, "--ece-bins must be >= 1"),
    variants={"rlvr": ["--brier-weight", "0"]},
    min_new_tokens=112,
)


@dataclass
class Args:
    # --- experiment ---
    exp_name: str = "rlcr"
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
    max_new_tokens: int = 112  # Modification 1 (vs GRPO): room for the confidence tag after the answer
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
    # Modification 1 (vs GRPO): Dr. GRPO advantages and token-mean loss (official), the reward's weights
    loss_agg: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = "token-mean"  # fmt: skip
    """how per-token losses are averaged over a mini-batch (grpo.py's module docstring)"""
    scale_rewards: Literal["group", "none"] = "none"
    """divide advantages by the group std (GRPO) or not (Dr. GRPO)"""
    format_weight: float = 0.5
    """w_f: weight of the format term"""
    accuracy_weight: float = 0.5
    """w_a: weight of the correctness term"""
    brier_weight: float = 0.5
    """w_b: weight of the Brier term; 0 is the RLVR control"""
    confidence_instruction: str = CONFIDENCE_SUFFIX
    """appended to every question (train and held-out): asks for the <confidence> tag"""
    ece_bins: int = 10
    """equal-width bins of the expected calibration error"""

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


# ALGO LOGIC: Modification 2 (vs GRPO): the calibration reward; Modification 3 (vs GRPO): the calibration
# metrics (pure functions)


def parse_confidence(text: str) -> float | None:
    """The stated confidence: the LAST ``<confidence>`` tag, which must end the completion and hold a
    plain number in [0, 1]; None otherwise (the format fails).

    >>> parse_confidence("4+2\\n6\\n\\\\boxed{6}\\n<confidence> 0.9 </confidence>")
    0.9
    >>> parse_confidence("<confidence>0.2</confidence> <confidence>0.6</confidence>")  # the last tag wins
    0.6
    >>> [parse_confidence(t) for t in ["no tag", "<confidence>1.3</confidence>", "<confidence>0.5</confidence> x"]]
    [None, None, None]
    >>> parse_confidence("\\\\boxed{10}\\n<confide>0.2\\n1</confidence>")  # a closing tag without its opening one
    """
    if not re.search(r"</confidence>\s*\Z", text):
        return None
    tag = parse_tag(text, "confidence")
    if tag is None:
        return None
    try:
        q = float(tag)
    except ValueError:
        return None
    return q if 0.0 <= q <= 1.0 else None  # also rejects nan


def nan_if_none(q: float | None) -> float:
    """A parsed confidence as a float, nan for a failed format (the encoding ``rlcr_rewards`` expects)."""
    return math.nan if q is None else q


def rlcr_rewards(
    correct: torch.Tensor,  # [B] bool: the answer is right
    confidence: torch.Tensor,  # [B] stated q in [0, 1], nan where the format failed
    format_weight: float = 0.5,
    accuracy_weight: float = 0.5,
    brier_weight: float = 0.5,
) -> torch.Tensor:
    """R = w_f·format + w_a·acc + w_b·(1 − (acc − q)²), with acc = correct·format and 0 for every term
    when the format fails (official ``reward_fns.py``). Returns ``[B]``.

    >>> rlcr_rewards(torch.tensor([True, False, True]), torch.tensor([0.8, 0.8, float("nan")]))
    tensor([1.4800, 0.6800, 0.0000])
    """
    formatted = ~torch.isnan(confidence)  # [B]
    acc = (correct & formatted).float()  # [B]
    q = torch.nan_to_num(confidence, nan=0.0)  # [B]
    brier = torch.where(formatted, 1 - (acc - q) ** 2, torch.zeros_like(q))  # [B]
    return format_weight * formatted.float() + accuracy_weight * acc + brier_weight * brier


def brier_score(correct: torch.Tensor, confidence: torch.Tensor) -> float:
    """Mean squared error (q − c)² of the confidences ``[N]`` against correctness ``[N]`` (lower is better).

    >>> brier_score(torch.tensor([1.0, 0.0]), torch.tensor([0.9, 0.4]))  # (0.01 + 0.16) / 2
    0.085
    """
    return round(float(((confidence.double() - correct.double()) ** 2).mean()), 6)


def bin_index(confidence: torch.Tensor, bins: int) -> torch.Tensor:
    """Equal-width bin of each confidence ``[N]`` (float64, as parsed), exactly as the official ``get_ece``:
    its edges are ``np.linspace(0, 1, bins + 1)``, k · (1/bins) in float64, with the first and last opened to
    ±inf, and ``np.digitize`` puts q in bin k when edge_k <= q < edge_{k+1}. So on 0.1-step confidences 0.3,
    0.6 and 0.7 fall in the bin BELOW their value (3 · 0.1 = 0.30000000000000004 > 0.3); q = 1 in the last.

    >>> bin_index(torch.tensor([0.0, 0.1, 0.3, 0.6, 0.7, 0.8, 0.95, 1.0], dtype=torch.float64), 10)
    tensor([0, 1, 2, 5, 6, 8, 9, 9])
    """
    inner_edges = torch.arange(1, bins, dtype=torch.float64) * (1.0 / bins)  # [bins − 1] as np.linspace's
    return torch.bucketize(confidence.double(), inner_edges, right=True)  # edge_{k} <= q < edge_{k+1}


def expected_calibration_error(correct: torch.Tensor, confidence: torch.Tensor, bins: int = 10) -> float:
    """ECE: Σ_b (n_b / N) · |mean q in b − accuracy in b| over ``bins`` equal-width bins (``bin_index``: the
    official ``get_ece``'s binning, q = 1 in the last bin). ``confidence [N]`` in float64, as parsed.

    >>> expected_calibration_error(torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([0.2, 0.2, 0.9, 0.7]))
    0.25
    """
    correct, confidence = correct.double(), confidence.double()
    index = bin_index(confidence, bins)  # [N] bin of each confidence
    ece = 0.0
    for b in range(bins):
        in_bin = index == b
        if in_bin.any():
            gap = confidence[in_bin].mean() - correct[in_bin].float().mean()
            ece += float(in_bin.float().mean() * gap.abs())
    return round(ece, 6)


def auroc(correct: torch.Tensor, confidence: torch.Tensor) -> float:
    """Area under the ROC curve of q as a score for correctness: the chance that a random right answer has a
    higher confidence than a random wrong one, ties counting 1/2. 0.5 when one class is empty.

    >>> auroc(torch.tensor([1, 1, 0, 0]), torch.tensor([0.9, 0.5, 0.5, 0.1]))  # pairs: 1, 1, 1/2, 1 out of 4
    0.875
    """
    pos, neg = confidence[correct.bool()], confidence[~correct.bool()]
    if len(pos) == 0 or len(neg) == 0:
        return 0.5
    diff = pos[:, None] - neg[None, :]  # [N_pos, N_neg]
    return float((diff > 0).float().mean() + 0.5 * (diff == 0).float().mean())


def calibration_report(correct: torch.Tensor, confidence: torch.Tensor, bins: int = 10) -> dict:
    """Accuracy, Brier, ECE, AUROC, mean confidence and format rate of held-out samples. ``confidence [N]``
    is nan where the format failed, scored as q = 0 (official ``confidence_extractor``)."""
    q = torch.nan_to_num(confidence, nan=0.0)
    return {
        "accuracy": float(correct.float().mean()),
        "brier": brier_score(correct, q),
        "ece": expected_calibration_error(correct, q, bins),
        "ece_bins": bins,
        "auroc": auroc(correct, q),
        "mean_confidence": float(q.mean()),
        "format_rate": float((~torch.isnan(confidence)).float().mean()),
    }


def save_reliability_diagram(
    reports: dict[str, tuple[torch.Tensor, torch.Tensor]], png_path: Path, bins: int
) -> None:
    """Reliability diagram: accuracy per confidence bin (marker size ~ samples) against the diagonal, one line
    per ``name -> (correct, confidence)``, drawn like ``common.evaluate``'s plots (Figure + Agg, no pyplot)."""
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(5, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
    for name, (correct, confidence) in reports.items():
        q = torch.nan_to_num(confidence, nan=0.0)
        index = bin_index(q, bins)
        xs, ys, ns = [], [], []
        for b in range(bins):
            if (in_bin := index == b).any():
                xs.append(float(q[in_bin].mean()))
                ys.append(float(correct[in_bin].float().mean()))
                ns.append(int(in_bin.sum()))
        ax.plot(xs, ys, marker="o", label=f"{name} (ECE {expected_calibration_error(correct, q, bins):.3f})")
        ax.scatter(xs, ys, s=[20 + 200 * n / len(q) for n in ns], alpha=0.3)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"stated confidence ({bins} bins)")
    ax.set_ylabel("accuracy")
    ax.set_title("held-out reliability")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)


# Modification 3 (vs GRPO): the held-out calibration, run.start's extra evaluation
def held_out_calibration(run: Run, sampler, n: int) -> dict[str, float]:
    """Sample ``n`` completions for every held-out problem of ``run`` (their questions ask for a confidence),
    score them, and return the calibration report as ``eval/`` metrics. The first call's samples (the base
    policy) are kept in ``run.extra["base_calibration"]``, every later call's in ``"final_calibration"``
    (the last is the final evaluation), for ``calibration.json`` and the reliability diagram."""
    a = run.args
    correct, confidence = [], []
    for start in range(0, len(run.eval_examples), max(1, 512 // n)):
        chunk = run.eval_examples[start : start + max(1, 512 // n)]
        out = sampler.generate(
            [run.prompt(e.question) for e in chunk], n, a.max_new_tokens, a.temperature, a.top_p
        )
        results = run.verifier.verify_batch(out.completions, [e.answer for e in chunk for _ in range(n)])
        correct += [r.correct for r in results]
        confidence += [nan_if_none(parse_confidence(t)) if r.parsed else math.nan for t, r in zip(out.completions, results)]  # fmt: skip
    key = "final_calibration" if "base_calibration" in run.extra else "base_calibration"
    run.extra[key] = {"correct": correct, "confidence": confidence}  # saved with every checkpoint
    report = calibration_report(
        torch.tensor(correct), torch.tensor(confidence, dtype=torch.float64), a.ece_bins
    )
    return {f"eval/{k}": v for k, v in report.items() if k != "ece_bins"}


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
    # Modification 2 (vs GRPO): the reward's weights, the ECE's bins and the instruction must make sense
    weights = (args.format_weight, args.accuracy_weight, args.brier_weight)
    if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) == 0:
        raise SystemExit(
            "--format-weight, --accuracy-weight, --brier-weight must be finite, >= 0 and not all 0, "
            f"got {weights}"
        )
    if args.ece_bins < 1:
        raise SystemExit(f"--ece-bins must be >= 1, got {args.ece_bins}")
    if "confidence" not in args.confidence_instruction.lower():
        raise SystemExit(
            f"--confidence-instruction must ask for a confidence, got {args.confidence_instruction!r}"
        )
    check_run_args(args)  # TRY NOT TO MODIFY: model path, data, template, shared flags


def main(args: Args) -> dict:
    validate(args)
    run = Run(args)  # TRY NOT TO MODIFY: run directory, seeding, data, verifier (common/run.py)
    # ALGO LOGIC: Modification 4 (vs GRPO): every question (train and held-out) asks for a stated confidence
    for name in ("train_examples", "eval_examples"):
        setattr(run, name, [replace(e, question=e.question + args.confidence_instruction) for e in getattr(run, name)])  # fmt: skip
    model, tokenizer = load_policy(args.model_name_or_path, args.dtype, args.device, args.gradient_checkpointing)  # fmt: skip
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if args.kl_coef > 0 else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = warmup_scheduler(optimizer, args.warmup_steps)
    sampler = make_sampler(args.rollout, model, tokenizer, gpu_memory_utilization=args.vllm_gpu_memory_utilization)  # fmt: skip
    # Modification 3 (vs GRPO): every evaluation also measures the held-out calibration
    run.start(model, tokenizer, optimizer, scheduler, sampler, extra_eval=lambda n, desc: held_out_calibration(run, sampler, n))  # fmt: skip
    Q, G = args.prompts_per_step, args.group_size

    for step in run.steps():  # TRY NOT TO MODIFY: progress, Ctrl-C, checkpoints, the sample budget
        # TRY NOT TO MODIFY: sample G completions for each of this step's prompts and score them
        batch, prompts = run.next_batch(Q)
        rollout = sampler.generate(prompts, G, args.max_new_tokens, args.temperature, args.top_p)
        results, correct = run.verify(rollout, batch)
        # Modification 2 (vs GRPO): the reward adds a format term and the Brier score of the stated confidence
        parsed = [nan_if_none(parse_confidence(t)) if r.parsed else math.nan for t, r in zip(rollout.completions, results)]  # fmt: skip
        confidence = torch.tensor(parsed, dtype=torch.float64)  # [B] nan where the format failed
        rewards = rlcr_rewards(correct.bool(), confidence, args.format_weight, args.accuracy_weight, args.brier_weight)  # fmt: skip
        rewards = rewards.float().view(Q, G)  # [Q, G]

        # ALGO LOGIC: group-relative advantages, one per completion, then the policy update
        advantages = grpo_advantages(rewards, args.scale_rewards).view(-1).to(args.device)  # [B]
        update = {"rollout": rollout, "advantages": advantages}
        if ref_model is not None:
            update["ref_logprobs"] = rollout_logprobs(ref_model, rollout, args.temperature, args.micro_batch_size)  # fmt: skip
        stats = update_policy(model, optimizer, update, args)
        # Modification 5 (vs GRPO): the batch's calibration (accuracy itself is logged by run.log)
        stats.update({f"calib/{k}": v for k, v in calibration_report(correct, confidence, args.ece_bins).items() if k not in ("accuracy", "ece_bins")})  # fmt: skip
        scheduler.step()
        sampler.update_weights(model)  # TRY NOT TO MODIFY: the sampler must see the new weights

        run.log(step, rollout, results, rewards, stats)  # TRY NOT TO MODIFY: metrics, evaluation, completions
    result = run.finish()  # TRY NOT TO MODIFY: the before/after table and plots
    # Modification 6 (vs GRPO): the held-out calibration table, calibration.json and plots/reliability.png
    samples = {k: run.extra[f"{k}_calibration"] for k in ("base", "final")}
    tensors = {k: (torch.tensor(v["correct"]), torch.tensor(v["confidence"], dtype=torch.float64)) for k, v in samples.items()}  # fmt: skip
    calibration = {k: calibration_report(*t, args.ece_bins) for k, t in tensors.items()}
    (run.run_dir / "calibration.json").write_text(json.dumps(calibration, indent=2) + "\n")
    save_reliability_diagram(tensors, run.run_dir / "plots" / "reliability.png", args.ece_bins)
    print(f"held-out calibration ({args.ece_bins}-bin ECE), base -> final:")
    for key in ["accuracy", "brier", "ece", "auroc", "mean_confidence", "format_rate"]:
        print(f"  {key:16s} {calibration['base'][key]:.3f} -> {calibration['final'][key]:.3f}")
    return {**result, "calibration": calibration}


if __name__ == "__main__":
    main(tyro.cli(Args))

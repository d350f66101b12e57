"""PPO with a value head after an SFT warm-up (ReFT): a per-token critic replaces GRPO's group baseline.

Paper: Luong et al., "ReFT: Reasoning with Reinforced Fine-Tuning", arXiv 2401.08967 (Section 3);
official code lqtrung1998/mwp_ReFT (train_rl_reft.py, exps/paper_exps/ReFT/_template.sh, gsm8k.sh).

Idea: Stage 1 fine-tunes the policy on the dataset's worked solutions (prompt tokens masked). Stage 2 is
PPO from that warm-up policy: ONE sampled completion per prompt, a terminal reward from the verifier,
a KL penalty to the warm-up policy folded into every token's reward, and per-token advantages from GAE
over a learned value V(s_t) read by a scalar head on the policy's own last hidden state.

Stage 1 (SFT):   L_SFT = − mean over solution tokens (EOS included) of log π_θ(y_t | x, y_<t)
Stage 2 (PPO):   r_t = −β (log π_old(y_t) − log π_ref(y_t))  + [t = last] · R(x, y)
                 R = 1 if the answer is right, 0.1 if an answer is extracted but wrong, else 0
                 δ_t = r_t + γ V_old(s_{t+1}) − V_old(s_t),   Â_t = Σ_l (γλ)^l δ_{t+l},   G_t = Â_t + V_old(s_t)
                 Â ← whiten(Â) over all tokens of the batch
                 L = agg_t −min(ρ_t Â_t, clip(ρ_t, 1 − ε, 1 + ε) Â_t)
                     + c_vf · agg_t ½ max((V_θ − G_t)², (clip(V_θ, V_old ± ε_v) − G_t)²)

Modification 1: one sample per prompt (ReFT), 64 prompts per step; no group: the critic is the baseline
Modification 2: two PPO epochs on every rollout batch (ReFT's ppo_epochs)
Modification 3: Stage 1, the SFT warm-up on the dataset's worked solutions, evaluated on its own
Modification 4: the KL to the warm-up policy is a per-token reward (--kl-reward-coef), not a loss term
Modification 5: a critic (a value head on the policy's hidden states), GAE, whitening and a clipped value loss
Modification 6: partial credit for a wrong answer that could be extracted (ReFT's reward)

Defaults run the CPU demo on the tiny built-in world (``./run.sh ppo``); paper-scale settings are the
command lines of docs/methods/ppo.md. ReFT's own settings [code, _template.sh and gsm8k.sh]: SFT lr 1e-5 for
2 epochs (the RL stage starts from the ``epoch_2`` checkpoint); then lr 3e-7, 1 sample per prompt, pure
sampling (top_k 0, top_p 1), β = 0.05 for natural-language CoT (0.01 for Python programs), γ = 1,
λ = 0.95, advantages whitened over the global batch, policy clip 0.2, value clip 0.2, vf_coef 5, partial
reward 0.1, 2 PPO epochs per batch (one mini-batch each), batch 4 per GPU x 8 GPUs, grad clip 1, max
generation 700 tokens. Losses are averaged per sequence then over sequences (seq-mean-token-mean) for both
terms [code].

The tiny world: its base policy was already warmed up by the world's builder on workings with 30%
slips per line (``common.tiny_world``). Stage 1 here trains on the SLIP-FREE workings of the training
split, so on the tiny world the SFT stage is itself a large improvement (it teaches "do not slip"), not
ReFT's "teach the format". A run therefore reports three policies: the given model (``eval/pass@k`` at
step 0), the warm-up policy (``eval/warmup_pass@k`` at step 0, also printed under the table) and the PPO
policy; what PPO adds over the warm-up is the number to read. The tiny-world defaults were not tuned: SFT 1
epoch (``--sft-epochs``; ReFT: 2) at lr 1e-4 (``--sft-learning-rate``; ReFT: 1e-5) in batches of 32, PPO at
grpo.py's tiny-world lr 1e-4 (``--learning-rate``, policy and value head; ``--warmup-steps`` is the PPO
stage's), 64 prompts x 1 sample per step (half grpo.py's 128 samples per step), β = 0.05
(``--kl-reward-coef``, ReFT's), γ = 1 and λ = 0.95 (``--gamma``, ``--gae-lambda``: ReFT's), ε_v = 0.2
(``--value-clip``, ReFT's), partial reward 0.1 (ReFT's), ``--vf-coef`` 0.5 (CleanRL's PPO default: with lr
1e-4 ReFT's 5 lets the value loss dominate the small shared backbone's gradient; not measured).
``--skip-warmup`` starts PPO from the given model.

Deviations / choices:
- Value head: a scalar linear head on the SHARED backbone's last hidden state (as ReFT, which uses trl's
  ``AutoModelForCausalLMWithValueHead``), not a separate critic copy: one forward pass gives log-probs and
  values (``common.model.logprobs_from_hidden`` and the head on the same hidden states), one optimizer holds
  both, and the checkpoint adds only the head. The price is that the value loss moves the policy's backbone;
  ``--vf-coef`` weighs it. The head is zero-initialised (V ≡ 0 at the start, so the first advantages are
  whitened λ-returns), where trl draws it at random and adds dropout 0.1; it reads the state before each
  completion token, as the log-probs do, in float32.
- The value is that of the state predicting each completion token, EOS included; the terminal reward sits
  on the EOS token (the last unmasked one), or on the last token of a truncated completion (as verl).
- The KL in the reward is k1 of the rollout-time policy against the warm-up policy (π_ref = the Stage 1
  output, saved in the run directory as ``warmup-model/`` and reloaded on resume); β = 0 loads no reference.
  ``kl_folded_rewards`` and ``masked_whiten`` are reinforce_pp.py's, byte for byte (verl's semantics).
- ``--group-size`` is the number of independent samples per prompt (ReFT: 1); they share no baseline
  (the critic is the baseline), so G > 1 only spends more samples on a prompt.
- ``--updates-per-batch`` is ReFT's ``ppo_epochs`` (2), with one mini-batch per epoch (``--num-mini-batches``
  1), as ReFT's mini-batch equals its per-GPU batch; the data order within a step does not matter for a full
  batch, so there is no shuffle.
- No dual clip (verl's ``clip_ratio_c`` = 3 caps the loss for A < 0 and ρ > 3); ReFT has none.
- No per-token entropy bonus, no adaptive KL controller (ReFT's is fixed).
- The SFT stage's time is not counted in the run's training time (as the base evaluation's).
"""

import math
from dataclasses import dataclass
from typing import Literal

import torch
import tyro

from common.data import build_prompt
from common.model import (
    completion_logprobs,
    load_policy,
    logprobs_from_hidden,
    position_ids_from_mask,
    rollout_logprobs,
)
from common.preflight import check_run_args
from common.registry import MethodInfo
from common.rollout import make_sampler
from common.rollout_correction import rollout_correction
from common.rollout_types import sampler_gap
from common.run import Run, warmup_scheduler
from common.tracking import Progress

METHOD = MethodInfo(
    name="PPO (ReFT)",
    paper="Luong et al., ReFT: Reasoning with Reinforced Fine-Tuning, arXiv 2401.08967 (Section 3)",
    arxiv="2401.08967",
    change="an SFT warm-up, then PPO: a value head, GAE, a clipped value loss, a KL to the warm-up in reward",
    gradient_tier=3,
    gradient_claim="no exact form: the learned critic (a value head) is an auxiliary model, and the SFT "
    "stage trains on demonstrations; with a perfect critic GAE (λ = 1) is an unbiased advantage",
    verl="RL stage: verl's `gae` + `rlvr_ppo` (SFT stage: verl's SFT trainer)",
    contradiction=({"group_size": 0}, "--group-size must be >= 1"),
    smoke_flags=("--sft-epochs", "0.01"),
)


@dataclass
class Args:
    # --- experiment ---
    exp_name: str = "ppo"
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
    # Modification 1 (vs GRPO): 64 prompts of one sample each (ReFT); samples of a prompt share no baseline
    prompts_per_step: int = 64
    """prompts per training step"""
    group_size: int = 1
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
    updates_per_batch: int = 2  # Modification 2 (vs GRPO): two PPO epochs on every rollout batch (ReFT)
    """passes over each rollout batch (μ in the paper, PPO's epochs); the ratio π_θ / π_old is 1 on the first"""
    num_mini_batches: int = 1
    """optimizer steps per pass: each pass splits the rollout batch into this many mini-batches"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass to save memory"""

    # --- Modification 3 (vs GRPO): Stage 1, the SFT warm-up on the dataset's worked solutions ---
    skip_warmup: bool = False
    """skip Stage 1 (the model is already fine-tuned on solutions); PPO then starts from the given model"""
    sft_epochs: float = 1.0
    """passes over the training solutions in Stage 1 (the SFT warm-up)"""
    sft_learning_rate: float = 1e-4
    """AdamW learning rate of Stage 1 (the SFT warm-up), constant"""
    sft_batch_size: int = 32
    """(prompt, solution) pairs per optimizer step of Stage 1 (the SFT warm-up)"""

    # --- algorithm ---
    clip_low: float = 0.2
    """ε_low: lower clip of the ratio (1 − ε_low)"""
    clip_high: float = 0.2
    """ε_high: upper clip of the ratio (1 + ε_high)"""
    # Modification 4 (vs GRPO): the KL to the warm-up policy is a per-token reward, not a loss term
    kl_reward_coef: float = 0.05
    """β: KL to the reference folded into every token's reward, −β (log π_old − log π_ref); 0 loads no reference model"""
    loss_agg: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = "seq-mean-token-mean"  # fmt: skip
    """how per-token losses are averaged over a mini-batch (grpo.py's module docstring)"""
    # Modification 5 (vs GRPO): a critic (value head), GAE and a clipped value loss, not the group's z-score
    gamma: float = 1.0
    """γ: discount of the per-token rewards in the returns (1: no discount)"""
    gae_lambda: float = 0.95
    """λ: GAE's bias/variance trade-off (1: Monte-Carlo returns minus V)"""
    vf_coef: float = 0.5
    """c_vf: weight of the value loss, which shares the backbone with the policy"""
    value_clip: float = 0.2
    """ε_v: new values are clipped to V_old ± ε_v in the value loss"""
    # Modification 6 (vs GRPO): partial credit for a wrong answer that could be extracted
    partial_reward: float = 0.1
    """reward of a parseable but wrong answer (0: plain 0/1 reward)"""

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


# ALGO LOGIC: Modification 5 (vs GRPO): loss aggregation, then the SFT batch, the reward, GAE, PPO's losses


# Modification 5 (vs GRPO): no group advantage, sequence-level surrogate or k3 KL: PPO's functions follow
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


# Modification 3 (vs GRPO): the SFT batch, laid out like a rollout
def sft_batch(
    prompt_ids: list[list[int]], solution_ids: list[list[int]], eos_id: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Modification 3 (vs GRPO): a Stage 1 batch laid out like a rollout, so ``completion_logprobs`` scores
    it. Prompts are left-padded, solutions (+ EOS) right-padded. Returns ``input_ids [B, P + C]``,
    ``attention_mask [B, P + C]`` and ``loss_mask [B, C]``, 1 on solution tokens and EOS only: the prompt
    is never a target.
    >>> ids, attn, loss_mask = sft_batch([[5, 6], [7]], [[8], [9, 9]], eos_id=0, pad_id=1)
    >>> ids.tolist(), attn.tolist(), loss_mask.tolist()
    ([[5, 6, 8, 0, 1], [1, 7, 9, 9, 0]], [[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]], [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    """
    P = max(len(p) for p in prompt_ids)
    C = max(len(s) for s in solution_ids) + 1
    input_ids = torch.full((len(prompt_ids), P + C), pad_id, dtype=torch.long)  # [B, P + C]
    attention_mask = torch.zeros_like(input_ids)  # [B, P + C]
    for i, (p, s) in enumerate(zip(prompt_ids, solution_ids)):
        input_ids[i, P - len(p) : P + len(s) + 1] = torch.tensor(p + s + [eos_id])
        attention_mask[i, P - len(p) : P + len(s) + 1] = 1
    return input_ids, attention_mask, attention_mask[:, P:].float()


# Modification 6 (vs GRPO): ReFT's reward
def reft_reward(correct: torch.Tensor, parsed: torch.Tensor, partial_reward: float) -> torch.Tensor:
    """Modification 6 (vs GRPO): ReFT's terminal reward. ``correct [B]``, ``parsed [B]`` (bool) -> ``[B]``:
    1 if right, ``partial_reward`` if an answer was extracted but is wrong, 0 if none was.
    >>> reft_reward(torch.tensor([True, False, False]), torch.tensor([True, True, False]), 0.1)
    tensor([1.0000, 0.1000, 0.0000])
    """
    return torch.where(correct, 1.0, torch.where(parsed, partial_reward, 0.0))


# Modification 4 (vs GRPO): the KL to the reference folded into the per-token rewards (reinforce_pp.py's)
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


# Modification 5 (vs GRPO): GAE over the critic's values
def gae_advantages(
    token_rewards: torch.Tensor,  # [B, C]
    values: torch.Tensor,  # [B, C] V_old(s_t), the state before token t
    mask: torch.Tensor,  # [B, C]
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Modification 5 (vs GRPO): generalised advantage estimation, ``advantages [B, C]`` and
    ``returns [B, C]`` (= advantages + values, the critic's target). δ_t = r_t + γ V_{t+1} − V_t,
    Â_t = δ_t + γλ Â_{t+1}, with V and Â past the end taken as 0; masked positions are skipped (their V and
    Â carried through), as verl's ``compute_gae_advantage_return``, which is
    ``(masked_whiten(advantages, mask), returns)`` of this.
    Rewards [0, 0, 0, 1], values [0.1, 0.2, 0.3, 0.4], γ = 1, λ = 0.5: δ = [0.1, 0.1, 0.1, 0.6],
    Â_3 = 0.6, Â_2 = 0.1 + 0.3 = 0.4, Â_1 = 0.1 + 0.2 = 0.3, Â_0 = 0.1 + 0.15 = 0.25.
    >>> adv, ret = gae_advantages(torch.tensor([[0.0, 0, 0, 1]]), torch.tensor([[0.1, 0.2, 0.3, 0.4]]), torch.ones(1, 4), 1.0, 0.5)
    >>> adv, ret
    (tensor([[0.2500, 0.3000, 0.4000, 0.6000]]), tensor([[0.3500, 0.5000, 0.7000, 1.0000]]))
    """
    next_value = torch.zeros_like(values[:, 0])  # [B]
    next_advantage = torch.zeros_like(values[:, 0])  # [B]
    advantages = torch.zeros_like(values)  # [B, C]
    for t in reversed(range(values.shape[1])):
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        m = mask[:, t]
        next_value = m * values[:, t] + (1 - m) * next_value
        next_advantage = m * advantage + (1 - m) * next_advantage
        advantages[:, t] = next_advantage
    return advantages, advantages + values


# Modification 5 (vs GRPO): whitening over the batch's tokens (reinforce_pp.py's)
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


# Modification 5 (vs GRPO): the clipped surrogate with one advantage per token
def ppo_policy_loss(
    logprobs: torch.Tensor,  # [B, C] log π_θ of the sampled tokens
    old_logprobs: torch.Tensor,  # [B, C] log π_old (detached)
    advantages: torch.Tensor,  # [B, C] one advantage per TOKEN (grpo.py's clipped_surrogate takes [B])
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Modification 5 (vs GRPO): PPO's clipped surrogate with per-token advantages, per-token loss ``[B, C]``
    and the mask of clipped tokens. verl's ``compute_policy_loss_vanilla`` before ``agg_loss``, without
    its dual clip (``clip_ratio_c``: for A < 0 verl caps the loss at −3·A, which binds only when ρ > 3).
    >>> loss, clipped = ppo_policy_loss(torch.log(torch.tensor([[1.5, 0.5]])), torch.zeros(1, 2), torch.tensor([[2.0, -1.0]]), 0.2, 0.2)
    >>> loss, clipped
    (tensor([[-2.4000,  0.8000]]), tensor([[True, True]]))
    """
    ratio = torch.exp(logprobs - old_logprobs)  # [B, C]
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * advantages
    return -torch.min(unclipped, clipped), (clipped < unclipped).detach()


# Modification 5 (vs GRPO): the critic's clipped value loss
def value_loss(
    values: torch.Tensor,  # [B, C] V_θ (with gradient)
    old_values: torch.Tensor,  # [B, C] V_old, from the rollout-time critic
    returns: torch.Tensor,  # [B, C] GAE's returns
    clip: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Modification 5 (vs GRPO): the clipped value loss ½ max((V − G)², (clip(V, V_old ± ε_v) − G)²) per token
    ``[B, C]``, and the mask of tokens where the clipped branch is the larger. verl's ``compute_value_loss``
    is ``agg_loss`` of this (the ½ is inside here), its ``vf_clipfrac`` the masked mean of the mask.
    V = 1.5, V_old = 1, G = 2, ε_v = 0.2: clip(V) = 1.2, max((−0.5)², (−0.8)²) / 2 = 0.32 (clipped);
    V = 0.9: clip(V) = 0.9, (−1.1)² / 2 = 0.605 (not clipped).
    >>> value_loss(torch.tensor([[1.5, 0.9]]), torch.ones(1, 2), torch.full((1, 2), 2.0), 0.2)
    (tensor([[0.3200, 0.6050]]), tensor([[ True, False]]))
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    return 0.5 * torch.max(unclipped_loss, clipped_loss), (clipped_loss > unclipped_loss).detach()


# Modification 5 (vs GRPO): how much of the returns' variance the critic explains
def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """Modification 5 (vs GRPO): 1 − Var(G − V) / Var(G) over the masked tokens: 1 for a perfect critic, 0
    for a constant one.
    >>> explained_variance(torch.tensor([[0.0, 1.0, 5.0]]), torch.tensor([[0.0, 2.0, 0.0]]), torch.tensor([[1.0, 1.0, 0.0]]))
    0.75
    """
    n = mask.sum()
    mean_g = (returns * mask).sum() / n
    residual = (returns - values) * mask
    var_g = (((returns - mean_g) * mask) ** 2).sum() / n
    var_r = ((residual - residual.sum() / n) * mask).pow(2).sum() / n
    return float(1 - var_r / var_g) if var_g > 0 else 0.0


# Modification 3 (vs GRPO): Stage 1, the SFT warm-up
def sft_warmup(model, tokenizer, examples: list, args: Args) -> list[float]:
    """Modification 3 (vs GRPO): Stage 1, supervised fine-tuning on (prompt, solution + EOS) with the prompt
    masked, ``--sft-epochs`` passes in a seeded order, AdamW at a constant ``--sft-learning-rate``.
    Returns the loss (mean NLL per solution token) of every step."""
    pairs = [(build_prompt(e.question, args.template, tokenizer), e.solution) for e in examples if e.solution]
    prompt_ids = tokenizer([p for p, _ in pairs], add_special_tokens=False)["input_ids"]
    solution_ids = tokenizer([s for _, s in pairs], add_special_tokens=False)["input_ids"]
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.sft_learning_rate, weight_decay=args.weight_decay
    )
    num_steps = math.ceil(args.sft_epochs * len(pairs) / args.sft_batch_size)
    generator = torch.Generator().manual_seed(args.seed)
    order = torch.cat(
        [torch.randperm(len(pairs), generator=generator) for _ in range(math.ceil(args.sft_epochs) + 1)]
    )
    model.train()
    losses, progress = [], Progress(num_steps, desc="sft warm-up")
    for step in range(num_steps):
        rows = order[step * args.sft_batch_size : (step + 1) * args.sft_batch_size].tolist()
        pairs_ids = [prompt_ids[i] for i in rows], [solution_ids[i] for i in rows]
        batch = sft_batch(*pairs_ids, tokenizer.eos_token_id, tokenizer.pad_token_id)
        input_ids, attention_mask, loss_mask = (t.to(args.device) for t in batch)
        loss_value = 0.0
        for mb in torch.arange(len(rows)).split(args.micro_batch_size):
            logprobs, _ = completion_logprobs(model, input_ids[mb], attention_mask[mb], loss_mask.shape[1])
            loss = -(logprobs * loss_mask[mb]).sum() / loss_mask.sum()  # token-mean NLL over the whole batch
            loss.backward()
            loss_value += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss_value)
        progress.update(1, loss=loss_value)
    progress.close()
    return losses


# Modification 5 (vs GRPO): the policy's log-probs and the critic's values from one body pass
def logprobs_and_values(
    model, value_head, input_ids, attention_mask, C: int, temperature: float, with_entropy: bool = False
):
    """Modification 5 (vs GRPO): ``completion_logprobs`` plus the value head on the same hidden states, one
    body pass: ``logprobs [B, C]``, ``entropy [B, C]`` (or None) and ``values [B, C]`` (float32), each read
    from the state before completion token t (the state that predicts it)."""
    hidden = model.base_model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    ).last_hidden_state[:, -C - 1 : -1]  # [B, C, H]
    lm_head = model.get_output_embeddings()
    logprobs, entropy = logprobs_from_hidden(lm_head, hidden, input_ids[:, -C:], temperature, with_entropy)
    return logprobs, entropy, value_head(hidden.float()).squeeze(-1)  # [B, C] each


# Modification 5 (vs GRPO): π_old and V_old of a whole rollout, before the update
@torch.no_grad()
def rollout_logprobs_and_values(model, value_head, rollout, temperature: float, micro_batch_size: int):
    """Modification 5 (vs GRPO): ``common.model.rollout_logprobs`` plus the critic: ``[B, C]`` log-probs and
    values (0 past each completion's end) of a rollout's completion tokens, no gradient, in micro-batches."""
    mask = rollout.completion_mask  # [B, C]
    parts = [
        logprobs_and_values(
            model, value_head, rollout.input_ids[mb], rollout.attention_mask[mb], mask.shape[1], temperature
        )  # fmt: skip
        for mb in torch.arange(len(mask)).split(micro_batch_size)
    ]
    return torch.cat([p[0] for p in parts]), torch.cat([p[2] for p in parts]) * mask


# ALGO LOGIC: the policy update (the same signature in every file; callable without main())


def update_policy(model, optimizer, batch: dict, args: Args) -> dict[str, float]:
    """Update the policy on one rollout batch: ``--updates-per-batch`` passes, each split into
    ``--num-mini-batches`` optimizer steps, each accumulated over micro-batches (the micro-batch size never
    changes the gradient). ``batch``: ``rollout`` (a ``common.rollout_types.Rollout``), ``advantages [B, C]``
    (Modification 5 (vs GRPO): GAE's, one per token), ``returns [B, C]``, ``old_logprobs [B, C]`` and
    ``old_values [B, C]`` of the rollout-time pass, and the ``value_head``. Returns the update's
    statistics (means over its steps)."""
    rollout, advantages, value_head = batch["rollout"], batch["advantages"], batch["value_head"]
    mask = rollout.completion_mask  # [B, C]
    B, C = mask.shape
    steps, stats = (
        args.updates_per_batch * args.num_mini_batches,
        {"loss": 0.0, "value_loss": 0.0, "clip_frac": 0.0},
    )
    # Modification 5 (vs GRPO): π_old and V_old are the rollout-time pass that GAE read
    old_logprobs, old_values, returns = batch["old_logprobs"], batch["old_values"], batch["returns"]
    weights, stats_rc = rollout_correction(old_logprobs, rollout.behavior_logprobs, mask, advantages, args)
    model.train()
    total_tokens = mask.sum().item()
    for update in range(args.updates_per_batch):
        for rows in torch.arange(B).tensor_split(args.num_mini_batches):  # one optimizer step each
            num_tokens = int(mask[rows].sum())
            for mb in rows.split(args.micro_batch_size):
                # Modification 5 (vs GRPO): log-probs and values in one pass, per-token surrogate, value loss
                logprobs, entropy, values = logprobs_and_values(model, value_head, rollout.input_ids[mb], rollout.attention_mask[mb], C, args.temperature, with_entropy=True)  # fmt: skip
                old = old_logprobs[mb]
                per_token_loss, clipped = ppo_policy_loss(
                    logprobs, old, advantages[mb], args.clip_low, args.clip_high
                )
                per_token_loss = per_token_loss * weights[mb]  # the sampler/trainer mismatch correction
                per_token_vf, vf_clipped = value_loss(
                    values, old_values[mb], returns[mb], args.value_clip
                )  # [b, C]
                vf = aggregate_loss(
                    per_token_vf, mask[mb], args.loss_agg, len(rows), num_tokens, args.max_new_tokens
                )
                loss = aggregate_loss(
                    per_token_loss, mask[mb], args.loss_agg, len(rows), num_tokens, args.max_new_tokens
                )
                (
                    loss + args.vf_coef * vf
                ).backward()  # Modification 5 (vs GRPO): the critic learns with the policy
                stats["loss"] += loss.item() / steps
                stats["clip_frac"] += float((clipped * mask[mb]).sum()) / num_tokens / steps
                stats["value_loss"] += vf.item() / steps  # Modification 5 (vs GRPO): the critic's statistics
                stats["value_clip_frac"] = (
                    stats.get("value_clip_frac", 0.0)
                    + float((vf_clipped * mask[mb]).sum()) / num_tokens / steps
                )
                if update == 0:  # the first pass: the policy's entropy and its gap to the sampler
                    sums = {"entropy": float((entropy * mask[mb]).sum()), **sampler_gap(old, rollout, mb)}
                    for key, value in sums.items():
                        stats[key] = stats.get(key, 0.0) + value / total_tokens
            grad_norm = torch.nn.utils.clip_grad_norm_([*model.parameters(), *value_head.parameters()], args.max_grad_norm)  # fmt: skip  # Modification 5 (vs GRPO)
            stats["grad_norm"] = stats.get("grad_norm", 0.0) + float(grad_norm) / steps
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return {**stats, **stats_rc}


# TRY NOT TO MODIFY: the training loop


def validate(args: Args) -> None:
    """Contradictory flags fail here, before anything is loaded."""
    if args.group_size < 1:  # Modification 1 (vs GRPO): no group baseline, so one sample per prompt is enough
        raise SystemExit(f"--group-size must be >= 1, got {args.group_size}")
    problems = [  # Modification 3 (vs GRPO): the flags of the SFT stage, the critic (5) and the reward (6)
        (not args.skip_warmup and args.sft_epochs <= 0, f"--sft-epochs must be > 0 (or --skip-warmup), got {args.sft_epochs}"),
        (args.sft_learning_rate <= 0, f"--sft-learning-rate must be > 0, got {args.sft_learning_rate}"),
        (args.sft_batch_size < 1, f"--sft-batch-size must be >= 1, got {args.sft_batch_size}"),
        (args.kl_reward_coef < 0, f"--kl-reward-coef must be >= 0, got {args.kl_reward_coef}"),
        (not 0 <= args.gamma <= 1, f"--gamma must be in [0, 1], got {args.gamma}"),
        (not 0 <= args.gae_lambda <= 1, f"--gae-lambda must be in [0, 1], got {args.gae_lambda}"),
        (args.vf_coef <= 0, f"--vf-coef must be > 0 (the critic must learn), got {args.vf_coef}"),
        (args.value_clip <= 0, f"--value-clip must be > 0, got {args.value_clip}"),
        (not 0 <= args.partial_reward < 1, f"--partial-reward must be in [0, 1) (below a right answer's 1), got {args.partial_reward}"),
    ]  # fmt: skip
    for failed, message in problems:
        if failed:
            raise SystemExit(f"error: {message}")
    check_run_args(args)  # TRY NOT TO MODIFY: model path, data, template, shared flags


def main(args: Args) -> dict:
    validate(args)
    run = Run(args)  # TRY NOT TO MODIFY: run directory, seeding, data, verifier (common/run.py)
    if not args.skip_warmup and not any(e.solution for e in run.train_examples):  # Modification 3 (vs GRPO)
        raise SystemExit(f"error: --dataset {args.dataset!r} has no worked solutions for the SFT warm-up; pass --skip-warmup")  # fmt: skip
    model, tokenizer = load_policy(args.model_name_or_path, args.dtype, args.device, args.gradient_checkpointing)  # fmt: skip
    # Modification 5 (vs GRPO): the value head (zero-initialised: V ≡ 0 at the start), trained with the policy
    value_head = torch.nn.Linear(model.config.hidden_size, 1, device=args.device)
    torch.nn.init.zeros_(value_head.weight)
    torch.nn.init.zeros_(value_head.bias)
    optimizer = torch.optim.AdamW([*model.parameters(), *value_head.parameters()], lr=args.learning_rate, weight_decay=args.weight_decay)  # fmt: skip
    scheduler = warmup_scheduler(optimizer, args.warmup_steps)
    sampler = make_sampler(args.rollout, model, tokenizer, gpu_memory_utilization=args.vllm_gpu_memory_utilization)  # fmt: skip
    warmup_dir = run.run_dir / "warmup-model"  # Modification 3 (vs GRPO): Stage 1's policy, PPO's reference

    def warmup_stage() -> dict[str, float]:  # Modification 3 (vs GRPO): Stage 1, then its own evaluation
        losses = sft_warmup(model, tokenizer, run.train_examples, args)
        model.save_pretrained(warmup_dir)
        tokenizer.save_pretrained(warmup_dir)
        sampler.update_weights(model)
        run.extra["warmup_eval"], metrics = run.evaluate(args.eval_n, "eval warm-up")
        return {
            **{key.replace("eval/", "eval/warmup_"): value for key, value in metrics.items()},
            "sft_loss_first": losses[0],
            "sft_loss_last": sum(losses[-10:]) / len(losses[-10:]),
        }

    run.start(model, tokenizer, optimizer, scheduler, sampler, modules={"value_head": value_head}, before_training=None if args.skip_warmup else warmup_stage)  # fmt: skip
    # Modification 4 (vs GRPO): the reference is the warm-up policy (reloaded on resume)
    ref_source = args.model_name_or_path if args.skip_warmup else str(warmup_dir)
    ref_model = load_policy(ref_source, args.dtype, args.device)[0].eval().requires_grad_(False) if args.kl_reward_coef > 0 else None  # fmt: skip
    Q, G = args.prompts_per_step, args.group_size

    for step in run.steps():  # TRY NOT TO MODIFY: progress, Ctrl-C, checkpoints, the sample budget
        # TRY NOT TO MODIFY: sample G completions for each of this step's prompts and score them
        batch, prompts = run.next_batch(Q)
        rollout = sampler.generate(prompts, G, args.max_new_tokens, args.temperature, args.top_p)
        results, correct = run.verify(rollout, batch)
        # Modification 6 (vs GRPO): 1 if right, --partial-reward if an answer was extracted, else 0
        rewards = reft_reward(correct.bool(), torch.tensor([r.parsed for r in results]), args.partial_reward).view(Q, G)  # fmt: skip

        # ALGO LOGIC: Modification 5 (vs GRPO): rollout-time log-probs and values, the token rewards, GAE
        mask = rollout.completion_mask  # [B, C]
        old_logprobs, old_values = rollout_logprobs_and_values(model, value_head, rollout, args.temperature, args.micro_batch_size)  # fmt: skip
        # Modification 4 (vs GRPO): k1 of π_old against the warm-up policy (0 without one), in the reward
        ref_logprobs = rollout_logprobs(ref_model, rollout, args.temperature, args.micro_batch_size) if ref_model is not None else old_logprobs  # fmt: skip
        kl = old_logprobs - ref_logprobs  # [B, C]
        token_rewards = kl_folded_rewards(rewards.view(-1).to(args.device), kl, mask, args.kl_reward_coef)
        advantages, returns = gae_advantages(token_rewards, old_values, mask, args.gamma, args.gae_lambda)
        update = {"rollout": rollout, "advantages": masked_whiten(advantages, mask), "returns": returns, "old_logprobs": old_logprobs, "old_values": old_values, "value_head": value_head}  # fmt: skip
        stats = update_policy(model, optimizer, update, args)
        scheduler.step()
        sampler.update_weights(model)  # TRY NOT TO MODIFY: the sampler must see the new weights

        # Modification 5 (vs GRPO): the critic's statistics and the KL to the reference
        num_tokens = mask.sum()
        stats.update(kl=float((kl * mask).sum() / num_tokens), value_mean=float((old_values * mask).sum() / num_tokens), explained_variance=explained_variance(old_values, returns, mask))  # fmt: skip
        run.log(step, rollout, results, rewards, stats)  # TRY NOT TO MODIFY: metrics, evaluation, completions
    out = run.finish()  # TRY NOT TO MODIFY: the before/after table and plots
    if warmup_eval := run.extra.get("warmup_eval"):  # Modification 3 (vs GRPO): the SFT stage's own row
        k = warmup_eval["n"]
        print(f"after the SFT warm-up (Stage 1): pass@1 {warmup_eval['pass@1']:.3f}  pass@{k} {warmup_eval[f'pass@{k}']:.3f}")  # fmt: skip
    return {**out, "warmup": warmup_eval}


if __name__ == "__main__":
    main(tyro.cli(Args))

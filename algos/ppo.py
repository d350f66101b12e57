"""PPO with a value head after an SFT warm-up (ReFT): a learned per-token critic replaces GRPO's group baseline.

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

Defaults run the CPU demo on the tiny built-in world (``./run.sh ppo``); paper-scale settings are the
README's command line. ReFT's own settings [code, _template.sh and gsm8k.sh]: SFT lr 1e-5 for 2 epochs (the
RL stage starts from the ``epoch_2`` checkpoint); then lr 3e-7, 1 sample per prompt, pure sampling
(top_k 0, top_p 1), β = 0.05 for natural-language CoT (0.01 for Python programs), γ = 1, λ = 0.95,
advantages whitened over the global batch, policy clip 0.2, value clip 0.2, vf_coef 5, 2 PPO epochs
per batch (one mini-batch each), batch 4 per GPU x 8 GPUs, grad clip 1, max generation 700 tokens.
Losses are averaged per sequence then over sequences (seq-mean-token-mean) for both terms [code].

The tiny world: its base policy was already warmed up by the world's builder on workings with 30%
slips per line (``common.tiny_world``). Stage 1 here trains on the SLIP-FREE workings of the training
split, so on the tiny world the SFT stage is itself a strong, cheap improvement (it teaches "do not
slip"), not ReFT's "teach the format". The run therefore reports three rows: the given model, the
warm-up policy (``eval/warmup_pass@k``, logged at step 0) and the PPO policy, and the learning test checks
that PPO raises pass@1 over the warm-up, not only over the base. Tiny-world SFT defaults (1 epoch, lr 1e-4,
batch 32) and RL defaults (lr 2e-5, 64 prompts per step, β = 0.05, vf_coef 0.5) were picked on the tiny
world (module test and README); ``--skip-warmup`` starts PPO from the given model.

Deviations / choices:
- Value head: a scalar linear head on the SHARED backbone's last hidden state (as ReFT, which uses trl's
  ``AutoModelForCausalLMWithValueHead``), not a separate critic copy: one forward pass gives log-probs and
  values, one optimizer holds both, and the checkpoint adds only the head. The price is that the value
  loss moves the policy's backbone; ``--vf-coef`` weighs it (ReFT: 5; the tiny world: 0.5). The head is
  zero-initialised (V ≡ 0 at the start, so the first advantages are whitened λ-returns), where trl
  draws it at random and adds dropout 0.1; it reads the state before each completion token, as the
  log-probs do, in float32.
- The value is that of the state predicting each completion token, EOS included; the terminal reward sits
  on the EOS token (the last unmasked one), or on the last token of a truncated completion (as verl).
- The KL in the reward is k1 of the rollout-time policy against the warm-up policy (π_ref = the Stage 1
  output, saved in the run directory as ``warmup-model/`` and reloaded on resume); β = 0 loads no reference.
- ``--group-size`` is the number of independent samples per prompt (ReFT: 1); they share no baseline
  (the critic is the baseline), so G > 1 only spends more samples on a prompt.
- ``--updates-per-batch`` is ReFT's ``ppo_epochs`` (2): full-batch updates, as ReFT's mini-batch equals its
  per-GPU batch; the data order within a step does not matter for a full batch, so there is no shuffle.
- No dual clip (verl's ``clip_ratio_c`` = 3 caps the loss for A < 0 and ρ > 3); ReFT has none.
- No per-token entropy bonus, no adaptive KL controller (ReFT's is fixed).
"""

import math
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
from common.model import completion_logprobs, load_policy, position_ids_from_mask
from common.preflight import check_run_args
from common.rollout import make_sampler
from common.tracking import Progress, Tracker, report_before_after
from common.verify import Verifier


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
    prompts_per_step: int = 64
    """prompts per training step"""
    # Modification 1 (vs GRPO): one sample per prompt (ReFT); samples of one prompt share no baseline
    group_size: int = 1
    """completions sampled per prompt, each on its own (the critic is the baseline, not the group)"""
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
    learning_rate: float = 2e-5
    """AdamW learning rate of the PPO stage, policy and value head (constant after warm-up)"""
    warmup_steps: int = 5
    """linear learning-rate warm-up steps of the PPO stage (not the SFT warm-up stage)"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    max_grad_norm: float = 1.0
    """gradient clipping threshold"""
    micro_batch_size: int = 64
    """sequences per forward/backward pass (gradient accumulation over the batch)"""
    # Modification 2 (vs GRPO): two PPO epochs on every rollout batch (ReFT's ppo_epochs)
    updates_per_batch: int = 2
    """optimizer steps (PPO epochs) on each rollout batch, each on the whole batch"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass to save memory"""

    # --- Modification 3 (vs GRPO): Stage 1, SFT warm-up on the dataset's worked solutions ---
    skip_warmup: bool = False
    """skip Stage 1 (the model is already fine-tuned on solutions); PPO then starts from the given model"""
    sft_epochs: float = 1.0
    """passes over the training solutions in Stage 1 (ReFT: 2)"""
    sft_learning_rate: float = 1e-4
    """AdamW learning rate of Stage 1, constant (ReFT: 1e-5)"""
    sft_batch_size: int = 32
    """(prompt, solution) pairs per Stage 1 optimizer step"""

    # --- algorithm ---
    clip_low: float = 0.2
    """ε_low: lower clip of the ratio (1 − ε_low)"""
    clip_high: float = 0.2
    """ε_high: upper clip of the ratio (1 + ε_high); 0.28 is DAPO's clip-higher"""
    # Modification 4 (vs GRPO): the KL to the warm-up policy is a per-token reward, not a loss term
    kl_coef: float = 0.05
    """β: per-token reward −β (log π_old − log π_ref) to the warm-up policy (ReFT: 0.05); 0 loads no reference"""
    # Modification 5 (vs GRPO): a critic (value head), GAE and a clipped value loss
    gamma: float = 1.0
    """γ: discount of GAE (ReFT: 1)"""
    lam: float = 0.95
    """λ: GAE's bias/variance trade-off (ReFT: 0.95; 1 gives Monte-Carlo returns minus V)"""
    vf_coef: float = 0.5
    """c_vf: weight of the value loss, which shares the backbone (ReFT: 5)"""
    value_clip: float = 0.2
    """ε_v: new values are clipped to V_old ± ε_v in the value loss (ReFT: 0.2)"""
    # Modification 6 (vs GRPO): partial credit for a wrong answer that could be extracted
    partial_reward: float = 0.1
    """reward of a parseable but wrong answer (ReFT: 0.1; 0: plain 0/1 reward)"""
    loss_agg: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"] = "seq-mean-token-mean"
    """how per-token losses (policy and value) are averaged (grpo.py's docstring; ReFT: seq-mean-token-mean)"""

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


# ALGO LOGIC: the SFT batch, the reward, GAE, whitening, the policy and value losses (pure functions)


def sft_batch(
    prompt_ids: list[list[int]], solution_ids: list[list[int]], eos_id: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Modification 3 (vs GRPO): a Stage 1 batch laid out like a rollout, so ``completion_logprobs`` scores it.

    Prompts are left-padded, solutions (+ EOS) right-padded. Returns ``input_ids [B, P + C]``,
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


def reft_reward(correct: torch.Tensor, parsed: torch.Tensor, partial_reward: float) -> torch.Tensor:
    """Modification 6 (vs GRPO): ReFT's terminal reward. ``correct [B]``, ``parsed [B]`` (bool) -> ``[B]``:
    1 if right, ``partial_reward`` if an answer was extracted but is wrong, 0 if none was.

    >>> reft_reward(torch.tensor([True, False, False]), torch.tensor([True, True, False]), 0.1)
    tensor([1.0000, 0.1000, 0.0000])
    """
    return torch.where(correct, 1.0, torch.where(parsed, partial_reward, 0.0))


def kl_folded_rewards(
    scores: torch.Tensor,  # [B] terminal reward of each completion
    old_logprobs: torch.Tensor,  # [B, C] log π_old of the sampled tokens
    ref_logprobs: torch.Tensor | None,  # [B, C] log π_ref, or None (β = 0)
    mask: torch.Tensor,  # [B, C] completion mask (right-padded)
    kl_coef: float,
) -> torch.Tensor:
    """Modification 4 (vs GRPO): per-token rewards ``[B, C]``: −β (log π_old − log π_ref) on every token,
    plus the score on the last unmasked token. verl's ``apply_kl_penalty`` with ``kl_penalty="kl"`` (k1) and
    the score on the last response token, as its reward managers place it.

    >>> kl_folded_rewards(torch.tensor([1.0]), torch.tensor([[-1.0, -2.0, 0.0]]), torch.tensor([[-1.5, -1.0, 0.0]]),
    ...                   torch.tensor([[1.0, 1.0, 0.0]]), kl_coef=0.1)
    tensor([[-0.0500,  1.1000,  0.0000]])
    """
    last = (mask.cumsum(-1) == mask.sum(-1, keepdim=True)) & (mask > 0)  # [B, C] the last real token
    rewards = scores[:, None] * last  # [B, C]
    if ref_logprobs is not None:
        rewards = rewards - kl_coef * (old_logprobs - ref_logprobs) * mask
    return rewards


def gae_advantages(
    token_rewards: torch.Tensor,  # [B, C]
    values: torch.Tensor,  # [B, C] V_old(s_t), the state before token t
    mask: torch.Tensor,  # [B, C]
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Modification 5 (vs GRPO): generalised advantage estimation, ``advantages [B, C]`` and ``returns [B, C]``
    (= advantages + values, the critic's target). δ_t = r_t + γ V_{t+1} − V_t, Â_t = δ_t + γλ Â_{t+1}, with
    V and Â past the end taken as 0; masked positions are skipped (their V and Â carried through), as verl's
    ``compute_gae_advantage_return``, which is ``(whiten(advantages, mask), returns)`` of this.

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


def whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x − mean) / sqrt(var + ε) over the masked entries of the whole batch, unbiased var (verl's and trl's
    ``masked_whiten``). ``[B, C]`` -> ``[B, C]``; masked entries are shifted too and must stay masked.
    With a single masked entry the var is taken as 0 (verl raises there).

    >>> whiten(torch.tensor([[1.0, 2.0, 9.0], [3.0, 0.0, 0.0]]), torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    tensor([[-1.,  0.,  7.],
            [ 1., -2., -2.]])
    """
    n = mask.sum()
    mean = (values * mask).sum() / n
    var = (((values - mean) ** 2) * mask).sum() / (n - 1).clamp(min=1)
    return (values - mean) * torch.rsqrt(var + eps)


def ppo_policy_loss(
    logprobs: torch.Tensor,  # [B, C] log π_θ of the sampled tokens
    old_logprobs: torch.Tensor,  # [B, C] log π_old (detached)
    advantages: torch.Tensor,  # [B, C] one advantage per TOKEN (grpo.py's clipped_surrogate takes [B])
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Modification 7 (vs GRPO): PPO's clipped surrogate with per-token advantages, per-token loss ``[B, C]``
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


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var(G − V) / Var(G) over the masked tokens: 1 for a perfect critic, 0 for a constant one.

    >>> explained_variance(torch.tensor([[0.0, 1.0, 5.0]]), torch.tensor([[0.0, 2.0, 0.0]]), torch.tensor([[1.0, 1.0, 0.0]]))
    0.75
    """
    n = mask.sum()
    mean_g = (returns * mask).sum() / n
    residual = (returns - values) * mask
    var_g = (((returns - mean_g) * mask) ** 2).sum() / n
    var_r = ((residual - residual.sum() / n) * mask).pow(2).sum() / n
    return float(1 - var_r / var_g) if var_g > 0 else 0.0


def truncated_is_weights(
    old_logprobs: torch.Tensor, behavior_logprobs: torch.Tensor, cap: float
) -> torch.Tensor:
    """Truncated importance weights min(π_old / π_sampler, C), detached: they correct for the sampler
    (e.g. vLLM) computing slightly different probabilities than the trainer (as TRL and verl do).

    >>> truncated_is_weights(torch.log(torch.tensor([[0.5, 0.9]])), torch.log(torch.tensor([[0.1, 0.9]])), cap=2.0)
    tensor([[2., 1.]])
    """
    return torch.exp(old_logprobs - behavior_logprobs).clamp(max=cap).detach()


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
        input_ids, attention_mask, loss_mask = sft_batch(
            [prompt_ids[i] for i in rows], [solution_ids[i] for i in rows], tokenizer.eos_token_id, tokenizer.pad_token_id
        )  # fmt: skip
        input_ids, attention_mask, loss_mask = (
            input_ids.to(args.device),
            attention_mask.to(args.device),
            loss_mask.to(args.device),
        )
        loss_value = 0.0
        for mb in [slice(i, i + args.micro_batch_size) for i in range(0, len(rows), args.micro_batch_size)]:
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


def logprobs_and_values(
    model, value_head, input_ids, attention_mask, C: int, temperature: float, with_entropy=False
):
    """Modification 5 (vs GRPO): ``completion_logprobs`` plus the value head on the same hidden states, one
    body pass: ``logprobs [B, C]``, ``entropy [B, C]`` (or None) and ``values [B, C]`` (float32), each read from
    the state before completion token t (the state that predicts it)."""
    hidden = model.base_model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    ).last_hidden_state[:, -C - 1 : -1]  # [B, C, H]
    logprob_chunks, entropy_chunks = [], []
    for start in range(0, hidden.shape[0], 16):  # the LM head on 16 rows at a time, as completion_logprobs
        logits = model.get_output_embeddings()(hidden[start : start + 16]).float() / temperature  # [b, C, V]
        logp_all = torch.log_softmax(logits, dim=-1)
        logprob_chunks.append(logp_all.gather(-1, input_ids[start : start + 16, -C:, None]).squeeze(-1))
        if with_entropy:
            entropy_chunks.append(-(logp_all.exp() * logp_all).sum(-1).detach())
    entropy = torch.cat(entropy_chunks) if with_entropy else None  # [B, C]
    values = value_head(hidden.float()).squeeze(-1)  # [B, C]
    return torch.cat(logprob_chunks), entropy, values


# TRY NOT TO MODIFY: the training loop


def validate(args: Args) -> None:
    """Contradictory flags fail here, before anything is loaded."""
    if args.group_size < 1:
        raise SystemExit(f"--group-size must be >= 1, got {args.group_size}")
    if args.micro_batch_size < 1 or args.prompts_per_step < 1 or args.num_steps < 0:
        raise SystemExit("--micro-batch-size and --prompts-per-step must be >= 1 and --num-steps >= 0")
    if args.updates_per_batch < 1:
        raise SystemExit(f"--updates-per-batch must be >= 1, got {args.updates_per_batch}")
    if args.tis_cap > 0 and args.temperature == 0:
        raise SystemExit(
            "--tis-cap needs sampled behaviour log-probs; it cannot be used with --temperature 0"
        )
    problems = [  # Modifications 3-6 (vs GRPO): the flags of the SFT stage, the critic and the reward
        (not args.skip_warmup and args.sft_epochs <= 0, f"--sft-epochs must be > 0 (or --skip-warmup), got {args.sft_epochs}"),
        (args.sft_learning_rate <= 0, f"--sft-learning-rate must be > 0, got {args.sft_learning_rate}"),
        (args.sft_batch_size < 1, f"--sft-batch-size must be >= 1, got {args.sft_batch_size}"),
        (args.kl_coef < 0, f"--kl-coef must be >= 0, got {args.kl_coef}"),
        (not 0 <= args.gamma <= 1, f"--gamma must be in [0, 1], got {args.gamma}"),
        (not 0 <= args.lam <= 1, f"--lam must be in [0, 1], got {args.lam}"),
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
    if not args.skip_warmup and not any(e.solution for e in train_examples):  # Modification 3 (vs GRPO)
        raise SystemExit(
            f"error: --dataset {args.dataset!r} has no worked solutions for the SFT warm-up; pass --skip-warmup"
        )
    eval_name = args.eval_dataset or ("math500" if args.dataset == "math" else args.dataset)
    eval_examples = load_examples(
        eval_name, "test", args.question_field, args.answer_field, limit=args.eval_problems
    )
    model, tokenizer = load_policy(
        args.model_name_or_path, args.dtype, args.device, args.gradient_checkpointing
    )
    # Modification 5 (vs GRPO): the value head (zero-initialised: V ≡ 0 at the start), trained with the policy
    value_head = torch.nn.Linear(model.config.hidden_size, 1, device=args.device)
    torch.nn.init.zeros_(value_head.weight)
    torch.nn.init.zeros_(value_head.bias)
    optimizer = torch.optim.AdamW(
        [*model.parameters(), *value_head.parameters()], lr=args.learning_rate, weight_decay=args.weight_decay
    )
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
        state = load_checkpoint(ckpt, model, optimizer, scheduler, modules={"value_head": value_head})
        start_step, extra = state["step"], state["extra"]
        sampler.update_weights(model)
        print(f"resumed from {ckpt} (step {start_step})")
    tracker = Tracker(
        run_dir, asdict(args), args.track, args.wandb_project, run_name, start_step if ckpt else None
    )
    warmup_dir = run_dir / "warmup-model"
    if "base_eval" not in extra:
        extra["base_eval"] = evaluate(args.eval_n, "eval base")
        extra["elapsed"] = extra["base_wall_time"] = time.time() - wall_start
        step0 = {f"eval/pass@{k}": v for k, v in extra["base_eval"]["curve"].items()}
        # Modification 3 (vs GRPO): Stage 1 (SFT warm-up), saved as the reference policy, then evaluated
        if not args.skip_warmup:
            sft_losses = sft_warmup(model, tokenizer, train_examples, args)
            model.save_pretrained(warmup_dir)
            tokenizer.save_pretrained(warmup_dir)
            sampler.update_weights(model)
            extra["warmup_eval"] = evaluate(args.eval_n, "eval warm-up")
            step0.update({f"eval/warmup_pass@{k}": v for k, v in extra["warmup_eval"]["curve"].items()})
            step0.update(
                sft_loss_first=sft_losses[0], sft_loss_last=sum(sft_losses[-10:]) / len(sft_losses[-10:])
            )
        tracker.log(0, step0)
    ref_model = None  # Modification 4 (vs GRPO): the reference is the warm-up policy (reloaded on resume)
    if args.kl_coef > 0:
        ref_source = args.model_name_or_path if args.skip_warmup else str(warmup_dir)
        ref_model = load_policy(ref_source, args.dtype, args.device)[0].eval().requires_grad_(False)
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
            correct = torch.tensor([r.correct for r in results])  # [B]
            # Modification 6 (vs GRPO): 1 if right, --partial-reward if an answer was extracted, else 0
            rewards = reft_reward(
                correct, torch.tensor([r.parsed for r in results]), args.partial_reward
            )  # [B]

            # ALGO LOGIC: rollout-time log-probs and values, the KL-folded token rewards and GAE advantages
            mask = rollout.completion_mask  # [B, C]
            B, C = mask.shape
            num_tokens = int(mask.sum())
            micro_batches = [slice(i, i + args.micro_batch_size) for i in range(0, B, args.micro_batch_size)]
            ref_logprobs = None
            with torch.no_grad():
                old = [logprobs_and_values(model, value_head, rollout.input_ids[mb], rollout.attention_mask[mb], C, args.temperature) for mb in micro_batches]  # fmt: skip
                old_logprobs = torch.cat([o[0] for o in old])  # [B, C]
                old_values = torch.cat([o[2] for o in old]) * mask  # [B, C]
                if ref_model is not None:
                    ref_logprobs = torch.cat([completion_logprobs(ref_model, rollout.input_ids[mb], rollout.attention_mask[mb], C, args.temperature)[0] for mb in micro_batches])  # fmt: skip
            # Modification 4 (vs GRPO): the KL to the warm-up policy is part of the reward
            token_rewards = kl_folded_rewards(
                rewards.to(args.device), old_logprobs, ref_logprobs, mask, args.kl_coef
            )
            # Modification 5 (vs GRPO): per-token advantages from GAE over the critic's values, whitened
            advantages, returns = gae_advantages(
                token_rewards, old_values, mask, args.gamma, args.lam
            )  # [B, C]
            advantages = whiten(advantages, mask)

            # ALGO LOGIC: the update (PPO-clip policy loss + clipped value loss), in micro-batches
            model.train()
            stats = {"loss": 0.0, "value_loss": 0.0, "clip_frac": 0.0, "value_clip_frac": 0.0, "entropy": 0.0,
                     "logprob_mismatch": 0.0}  # fmt: skip
            for update in range(args.updates_per_batch):
                for mb in micro_batches:
                    logprobs, entropy, values = logprobs_and_values(
                        model,
                        value_head,
                        rollout.input_ids[mb],
                        rollout.attention_mask[mb],
                        C,
                        args.temperature,
                        with_entropy=True,
                    )  # [b, C] each
                    # Modification 7 (vs GRPO): the clipped surrogate with one advantage per token
                    per_token_loss, clipped = ppo_policy_loss(
                        logprobs, old_logprobs[mb], advantages[mb], args.clip_low, args.clip_high
                    )
                    if args.tis_cap > 0:  # sampler/trainer mismatch correction
                        per_token_loss = per_token_loss * truncated_is_weights(
                            old_logprobs[mb], rollout.behavior_logprobs[mb], args.tis_cap
                        )
                    policy_loss = aggregate_loss(
                        per_token_loss, mask[mb], args.loss_agg, B, num_tokens, args.max_new_tokens
                    )
                    # Modification 5 (vs GRPO): the critic's clipped value loss, aggregated like the policy loss
                    per_token_vf, vf_clipped = value_loss(
                        values, old_values[mb], returns[mb], args.value_clip
                    )
                    vf = aggregate_loss(
                        per_token_vf, mask[mb], args.loss_agg, B, num_tokens, args.max_new_tokens
                    )
                    loss = policy_loss + args.vf_coef * vf
                    loss.backward()
                    stats["loss"] += policy_loss.item() / args.updates_per_batch
                    stats["value_loss"] += vf.item() / args.updates_per_batch
                    stats["clip_frac"] += (
                        float((clipped * mask[mb]).sum()) / num_tokens / args.updates_per_batch
                    )
                    stats["value_clip_frac"] += (
                        float((vf_clipped * mask[mb]).sum()) / num_tokens / args.updates_per_batch
                    )
                    if update == 0:
                        stats["entropy"] += float((entropy * mask[mb]).sum()) / num_tokens
                        gap = (logprobs.detach() - rollout.behavior_logprobs[mb]).abs()
                        stats["logprob_mismatch"] += float((gap * mask[mb]).sum()) / num_tokens
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    [*model.parameters(), *value_head.parameters()], args.max_grad_norm
                )
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            sampler.update_weights(model)  # TRY NOT TO MODIFY: the sampler must see the new weights

            # TRY NOT TO MODIFY: logging
            lengths = mask.sum(-1)
            metrics = {
                "reward_mean": rewards.mean().item(),
                "accuracy": correct.float().mean().item(),
                "unparsed_frac": 1 - sum(r.parsed for r in results) / len(results),
                "kl": float(((old_logprobs - ref_logprobs) * mask).sum()) / num_tokens
                if ref_model is not None
                else 0.0,
                "value_mean": float((old_values * mask).sum()) / num_tokens,
                "explained_variance": explained_variance(old_values, returns, mask),
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
                     "gold": batch[i // G].answer, "reward": rewards[i].item()}
                    for i in range(0, B, G)
                ])  # fmt: skip
            progress.update(1, reward=metrics["reward_mean"], len=metrics["completion_len_mean"])

            # TRY NOT TO MODIFY: checkpoint (periodically, at the end, and when asked to stop)
            extra["elapsed"] = elapsed_before + time.time() - session_start
            if step % args.save_every == 0 or step == args.num_steps or stop.requested:
                save_checkpoint(
                    run_dir,
                    step,
                    model,
                    optimizer,
                    scheduler,
                    extra,
                    args.keep_last,
                    tokenizer,
                    {"value_head": value_head},
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
        tracker, args.exp_name, args.num_steps, extra["base_eval"], final_eval, eval_name,
        extra["base_wall_time"], total_time,
    )  # fmt: skip
    if warmup_eval := extra.get("warmup_eval"):  # Modification 3 (vs GRPO): the SFT stage's own row
        k = warmup_eval["n"]
        print(
            f"after the SFT warm-up (Stage 1): pass@1 {warmup_eval['pass@1']:.3f}  pass@{k} {warmup_eval[f'pass@{k}']:.3f}"
        )
    tracker.close()
    verifier.close()
    return {
        "base": extra["base_eval"],
        "warmup": extra.get("warmup_eval"),
        "final": final_eval,
        "run_dir": str(run_dir),
    }


if __name__ == "__main__":
    main(tyro.cli(Args))

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
ℓ_{i,t} = log π_θ(o_{i,t} | q, o_{i,<t}), sg = stop-gradient, r_i = ±1):

    A_i     = r_i − mean_{j≠i} r_j                                (RLOO over all K samples of the group)
    L(θ)    = η⁺ · Σ_{i∈D⁺} Σ_t ω⁺_{i,t} · A_i · (−ℓ_{i,t}) / N⁺                     behaviour cloning
            − η⁻ · Σ_{i∈D⁻} Σ_t ω⁻_{i,t} · A_i · exp(ℓ_{i,t} − sg ℓ_{i,t}) / N⁻        reshaped negatives
            + β  · Σ_{i∈D}  Σ_t k3(π_θ ‖ π_ref)_{i,t} / N                             KL to the initial policy
    token RM: s_{i,t} = w · h^RM_{i,t}   L_RM = (1/|D|) Σ_i BCE(mean_t s_{i,t}, 1[r_i = +1])
    q_{i,t} = σ(mean_{u≤t} s_{i,u}),  ω⁺ = clamp(2q − 1, 0, 1),  ω⁻ = clamp(1 − 2q, 0, 1)   (detached)

With c = pK correct in a group, A⁺ = 2K(1−p)/(K−1) and A⁻ = −2Kp/(K−1), so |A⁻|/A⁺ = p/(1−p): the
paper's reshaping of negative rewards. The exp(ℓ − sg ℓ) factor equals 1 but carries the gradient
−η⁻·ω⁻·A⁻·∇ℓ/N⁻ (REINFORCE; A⁻ < 0, so a descent step lowers the log-prob of a wrong token).

Defaults: η⁺ = 1 (positive_loss_factor), η⁻ = 0.5 (negative_loss_factor), β = 0.01 (k3, "unbias"),
BC scaled by A⁺ (pos_mult_adv), RM threshold 0.5, one optimizer step per batch, actor frozen for the
first steps while the RM learns: all from the official OREAL-7B-SFT config with token RM. The paper
scale (K = 16, 64 prompts, actor lr 5e-7, RM lr 2e-6, 10 frozen steps of 90) is the README's command
line; the tiny world keeps grpo.py's rollout budget (16 prompts × 8) and a larger learning rate.

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
  the LM head the same way), trained in the same forward pass that gives the weights of this step (as
  in the code; Algorithm 1 in the paper updates the RM first). Its own AdamW, warm-up and grad clip.
- Learning rates are constant after warm-up for both models (the code decays both with a cosine).
  Weight decay: the official configs use 0.01 for both the actor and the RM (``wd``); the tiny world
  uses 0 (as grpo.py), the README's paper-scale command passes ``--weight-decay 0.01`` (and the
  official sampling ``--top-p 0.9``).
- Not implemented: the official data pipeline's difficulty-balanced prompt repetition. Its prompt set
  carries a precomputed pass rate per question, and each question is repeated by its pass-rate bucket
  before shuffling (6x for [0, 0.2), 4x for [0.2, 0.6), 2x for [0.6, 0.8); questions at 0.8 or above
  are dropped). Here every training question appears once per epoch; a dataset with such pass rates
  can be repeated the same way before it is passed as a ``.jsonl`` file.
- The actor's warm-up starts when it unfreezes [ours]; the code's schedule runs during the freeze, so
  its actor starts at the full learning rate. The freeze is ignored with ``--no-token-rm``.
- A batch with no kept sample (no mixed group) makes no update and is counted in ``skipped_batches``.
- Checkpoints: the RM's weights, optimizer and scheduler states are stored in the checkpoint's
  ``extra`` dict (``state.pt``) and restored on ``--resume``.
- Verifier rewards are 1 (correct) / −1 (wrong or unparsable), as the code maps a missing judgement to −1.
- No importance ratio against the sampler: one update per batch, on-policy, as in the code, so the
  PPO clip of grpo.py and ``--updates-per-batch`` are gone.
"""

import copy
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
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
    """K: completions sampled per prompt (the RLOO group)"""
    max_new_tokens: int = 80
    """completion length limit"""
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
    """actor AdamW learning rate (constant after warm-up)"""
    warmup_steps: int = 5
    """linear learning-rate warm-up steps (token RM from step 1, actor from its first unfrozen step)"""
    weight_decay: float = 0.0
    """AdamW weight decay (actor and token RM; OREAL: 0.01)"""
    max_grad_norm: float = 1.0
    """gradient clipping threshold (actor and token RM)"""
    micro_batch_size: int = 64
    """sequences per forward/backward pass (gradient accumulation over the batch)"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass to save memory"""

    # --- algorithm ---
    # Modification 1 (vs GRPO): no PPO clip, no loss-aggregation or reward-scaling choice; OREAL's own knobs.
    kl_coef: float = 0.01
    """β: weight of the k3 KL to the initial policy (OREAL: 0.01); 0 loads no reference model"""
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


# ALGO LOGIC: RLOO advantages, the pair filter, the token reward model and its weights, the losses


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Leave-one-out advantages A_i = r_i − mean_{j≠i} r_j. ``rewards [Q, G]`` -> ``advantages [Q, G]``.

    One correct of four (K = 4, p = 1/4): A⁺ = 2K(1−p)/(K−1) = 2, A⁻ = −2Kp/(K−1) = −2/3.

    >>> rloo_advantages(torch.tensor([[1.0, -1.0, -1.0, -1.0]]))
    tensor([[ 2.0000, -0.6667, -0.6667, -0.6667]])
    """
    G = rewards.shape[1]
    baseline = (rewards.sum(dim=1, keepdim=True) - rewards) / (G - 1)  # [Q, G] mean of the others
    return rewards - baseline


def pair_filter(correct: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Keep one random correct and one random incorrect sample of every mixed group (0 < p < 1).

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
    """A copy of the policy's transformer body with a bias-free scalar head: one score per token.

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
    """OREAL's token weights from RM scores, detached. ``rm_scores [N, T]``, ``mask [N, T]``, ``positive [N]``
    bool -> ``weights [N, T]`` in [0, 1], 0 on padding.

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
    """BCE of the sequence logit (mean token score) against the outcome, summed, divided by the batch size.

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
    num_positive_tokens: int,  # completion tokens of correct samples in the WHOLE batch
    num_negative_tokens: int,  # completion tokens of incorrect samples in the whole batch
    positive_coef: float = 1.0,
    negative_coef: float = 0.5,
    advantage_scaled_bc: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The behaviour-cloning loss on positives and the REINFORCE loss on negatives, each summed over tokens
    and divided by its global token count, so summing micro-batches gives the batch loss.

    One positive row (ℓ = [−1, −1], A = 2, ω = 1) and one negative row (A = −0.5, ω = [1, 0.5]):
      positive: 1.0 · 2 · (1 + 1) / 2           = 2.0
      negative: −0.5 · (−0.5) · (1 + 0.5) / 2   = 0.1875   (the ratio term equals 1)

    >>> oreal_policy_loss(-torch.ones(2, 2), torch.ones(2, 2), torch.tensor([True, False]), torch.tensor([2.0, -0.5]),
    ...                   torch.tensor([[1.0, 1.0], [1.0, 0.5]]), 2, 2)
    (tensor(2.), tensor(0.1875))
    """
    positive_mask = positive[:, None].float() * mask  # [b, C]
    negative_mask = (~positive)[:, None].float() * mask  # [b, C]
    adv = advantages[:, None]  # [b, 1]
    bc_scale = adv if advantage_scaled_bc else 1.0
    positive_loss = (positive_mask * weights * bc_scale * -logprobs).sum() / max(num_positive_tokens, 1)
    ratio = torch.exp(logprobs - logprobs.detach())  # [b, C] value 1, gradient ∇ℓ
    negative_loss = -(negative_mask * weights * adv * ratio).sum() / max(num_negative_tokens, 1)
    return positive_coef * positive_loss, negative_coef * negative_loss


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


# TRY NOT TO MODIFY: the training loop


def validate(args: Args) -> None:
    """Contradictory flags fail here, before anything is loaded."""
    if args.group_size < 2:
        raise SystemExit(f"--group-size must be >= 2 for a leave-one-out advantage, got {args.group_size}")
    if args.micro_batch_size < 1 or args.prompts_per_step < 1 or args.num_steps < 0:
        raise SystemExit("--micro-batch-size and --prompts-per-step must be >= 1 and --num-steps >= 0")
    if args.tis_cap > 0 and args.temperature == 0:
        raise SystemExit(
            "--tis-cap needs sampled behaviour log-probs; it cannot be used with --temperature 0"
        )
    if args.actor_freeze_steps < 0:
        raise SystemExit(f"--actor-freeze-steps must be >= 0, got {args.actor_freeze_steps}")
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
    # Modification 2 (vs GRPO): the token-level reward model, a copy of the initial policy with a scalar head.
    reward_model = rm_optimizer = rm_scheduler = None
    if args.token_rm:
        reward_model = TokenRewardModel(model, args.rm_alignment).train()
        rm_optimizer = torch.optim.AdamW(
            reward_model.parameters(), lr=args.rm_learning_rate, weight_decay=args.weight_decay
        )
        rm_scheduler = torch.optim.lr_scheduler.LambdaLR(
            rm_optimizer, lambda s: min(1.0, (s + 1) / max(1, args.warmup_steps))
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
        # Modification 3 (vs GRPO): the token RM and its optimizer come back from the checkpoint's extra dict.
        if reward_model is not None:
            rm_state = extra.pop("token_rm")
            reward_model.load_state_dict(rm_state["model"])
            rm_optimizer.load_state_dict(rm_state["optimizer"])
            rm_scheduler.load_state_dict(rm_state["scheduler"])
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
    extra.setdefault("skipped_batches", 0)
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
            # Modification 4 (vs GRPO): rewards ±1 and RLOO advantages over the whole group (before filtering).
            correct = torch.tensor([r.correct for r in results]).view(Q, G)  # [Q, G] bool
            rewards = correct.float() * 2 - 1  # [Q, G]
            advantages = rloo_advantages(rewards)  # [Q, G]

            # Modification 5 (vs GRPO): keep one correct + one incorrect sample per mixed group (or all).
            keep = torch.ones(Q, G, dtype=torch.bool) if args.keep_all else pair_filter(correct)  # [Q, G]
            rows = keep.view(-1).nonzero().squeeze(-1)  # [N] kept rows of the rollout
            train = rollout.select(rows)
            positive = correct.view(-1)[rows].to(args.device)  # [N] bool
            train_advantages = advantages.view(-1)[rows].to(args.device)  # [N]
            update_actor = step > args.actor_freeze_steps or reward_model is None

            # ALGO LOGIC: the OREAL update (cloning + reshaped negatives + KL) and the token RM, in micro-batches
            mask = train.completion_mask  # [N, C]
            N, C = mask.shape
            num_tokens = int(mask.sum())
            num_positive_tokens = int(mask[positive].sum())
            num_negative_tokens = num_tokens - num_positive_tokens
            micro_batches = [slice(i, i + args.micro_batch_size) for i in range(0, N, args.micro_batch_size)]
            ref_logprobs = None
            if ref_model is not None and N > 0:
                with torch.no_grad():
                    ref_logprobs = torch.cat([completion_logprobs(ref_model, train.input_ids[mb], train.attention_mask[mb], C, args.temperature)[0] for mb in micro_batches])  # fmt: skip
            model.train()
            stats = {"loss": 0.0, "positive_loss": 0.0, "negative_loss": 0.0, "kl": 0.0, "rm_loss": 0.0,
                     "rm_accuracy": 0.0, "positive_weight_mean": 0.0, "negative_weight_mean": 0.0,
                     "entropy": 0.0, "logprob_mismatch": 0.0}  # fmt: skip
            for mb in micro_batches:
                mb_mask, pos = mask[mb], positive[mb]  # [b, C], [b]
                if reward_model is not None:
                    rm_scores = reward_model(train.input_ids[mb], train.attention_mask[mb], C)  # [b, C]
                    weights = token_weights(rm_scores, mb_mask, pos)  # [b, C] detached
                    rm_loss = token_rm_loss(rm_scores, mb_mask, pos, N)
                    rm_loss.backward()  # reaches only the RM: it shares no parameter with the actor
                    sequence_logit = (rm_scores.detach() * mb_mask).sum(-1) / mb_mask.sum(-1).clamp(min=1)
                    stats["rm_loss"] += rm_loss.item()
                    stats["rm_accuracy"] += float(((sequence_logit > 0) == pos).sum()) / N
                else:
                    weights = mb_mask  # [b, C] ω ≡ 1
                with torch.set_grad_enabled(update_actor):  # no actor graph while it is frozen
                    logprobs, entropy = completion_logprobs(
                        model,
                        train.input_ids[mb],
                        train.attention_mask[mb],
                        C,
                        args.temperature,
                        with_entropy=True,
                    )  # [b, C] each
                    if args.tis_cap > 0:  # sampler/trainer mismatch correction, on the token weights
                        weights = weights * truncated_is_weights(
                            logprobs.detach(), train.behavior_logprobs[mb], args.tis_cap
                        )
                    positive_loss, negative_loss = oreal_policy_loss(
                        logprobs, mb_mask, pos, train_advantages[mb], weights,
                        num_positive_tokens, num_negative_tokens, args.positive_coef, args.negative_coef,
                        args.advantage_scaled_bc,
                    )  # fmt: skip
                    loss = positive_loss + negative_loss
                    if ref_logprobs is not None:
                        kl_sum = (k3_kl(logprobs, ref_logprobs[mb]) * mb_mask).sum()  # over [b, C]
                        loss = loss + args.kl_coef * kl_sum / num_tokens
                        stats["kl"] += kl_sum.item() / num_tokens
                if update_actor:
                    loss.backward()
                stats["loss"] += loss.item()
                stats["positive_loss"] += positive_loss.item()
                stats["negative_loss"] += negative_loss.item()
                # weights are 0 on padding, so these are means over the positive / negative tokens
                stats["positive_weight_mean"] += float(weights[pos].sum()) / max(num_positive_tokens, 1)
                stats["negative_weight_mean"] += float(weights[~pos].sum()) / max(num_negative_tokens, 1)
                stats["entropy"] += float((entropy * mb_mask).sum()) / num_tokens
                gap = (logprobs.detach() - train.behavior_logprobs[mb]).abs()
                stats["logprob_mismatch"] += float((gap * mb_mask).sum()) / num_tokens
            grad_norm = rm_grad_norm = torch.tensor(0.0)
            if N == 0:  # no mixed group in this batch: nothing to learn from, no update (counted)
                extra["skipped_batches"] += 1
            else:
                if update_actor:
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                    optimizer.step()
                if reward_model is not None:
                    rm_grad_norm = torch.nn.utils.clip_grad_norm_(
                        reward_model.parameters(), args.max_grad_norm
                    )
                    rm_optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if reward_model is not None:
                rm_optimizer.zero_grad(set_to_none=True)
                rm_scheduler.step()
            if update_actor:  # the actor's warm-up starts when it unfreezes
                scheduler.step()
            sampler.update_weights(model)  # TRY NOT TO MODIFY: the sampler must see the new weights

            # TRY NOT TO MODIFY: logging
            lengths = rollout.completion_mask.sum(-1)
            metrics = {
                "reward_mean": rewards.mean().item(),
                "accuracy": correct.float().mean().item(),
                "unparsed_frac": 1 - sum(r.parsed for r in results) / len(results),
                "zero_std_frac": (rewards.std(dim=1) == 0).float().mean().item(),
                "kept_frac": N / (Q * G),
                "skipped_batches": extra["skipped_batches"],
                "actor_frozen": float(not update_actor),
                "completion_len_mean": lengths.mean().item(),
                "completion_len_max": lengths.max().item(),
                "truncated_frac": rollout.truncated.float().mean().item(),
                "grad_norm": float(grad_norm),
                "rm_grad_norm": float(rm_grad_norm),
                "lr": scheduler.get_last_lr()[0] if update_actor else 0.0,
                "step_time": time.time() - step_start,
                "samples_per_s": Q * G / (time.time() - step_start),
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
                    for i in range(0, Q * G, G)
                ])  # fmt: skip
            progress.update(1, reward=metrics["reward_mean"], len=metrics["completion_len_mean"])

            # TRY NOT TO MODIFY: checkpoint (periodically, at the end, and when asked to stop)
            extra["elapsed"] = elapsed_before + time.time() - session_start
            if step % args.save_every == 0 or step == args.num_steps or stop.requested:
                if reward_model is not None:  # Modification 3 (vs GRPO): the token RM travels in extra
                    extra["token_rm"] = {"model": reward_model.state_dict(), "optimizer": rm_optimizer.state_dict(),
                                         "scheduler": rm_scheduler.state_dict()}  # fmt: skip
                save_checkpoint(run_dir, step, model, optimizer, scheduler, extra, args.keep_last, tokenizer)
                extra.pop("token_rm", None)
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

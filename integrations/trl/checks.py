"""Checks run in the TRL environment (``.venv-trl``) by tests/test_trl.py: ``python integrations/trl/checks.py``.

Each check prints ``PASS name`` or ``FAIL name: why``; the exit status is the number of failures. TRL is the
oracle for what verl 0.9.1 lacks: DeepSeek-V3.2's off-policy sequence masking (``--rollout-rs opsm``),
``GRPOTrainer.get_off_policy_mask``, fed the same random log-probs, ragged masks and advantages as
``common.rollout_correction``; and the defaults that module's docstring quotes. TRL's four importance-sampling
modes are computed inline in its trainer (no function to call), so tests/test_rollout_correction.py checks
them by hand.

This module is not under tests/ because it imports TRL, which the main environment does not have.
"""

import dataclasses
import sys
import traceback

import torch

SEEDS = (0, 1, 2, 3, 4)
CHECKS = []


def check(function):
    CHECKS.append(function)
    return function


def opsm_batch(seed: int, spread: float, B: int = 16, T: int = 9):
    """Sampler and trainer log-probs [B, T] (log-ratios spread·N(0, 1) plus a per-row drift, so that the
    sequences' KL to the sampler straddles δ), a ragged mask (one full row, one of length 1), finite garbage
    on the padding of both, and advantages [B] of both signs."""
    generator = torch.Generator().manual_seed(500 + seed)
    lengths = torch.randint(1, T + 1, (B,), generator=generator)
    lengths[0], lengths[-1] = T, 1
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    behavior = -3 * torch.rand(B, T, generator=generator)
    drift = spread * torch.randn(B, 1, generator=generator)
    old = behavior + drift + spread * torch.randn(B, T, generator=generator)
    padding = mask == 0
    old = torch.where(padding, 30 * torch.randn(B, T, generator=generator), old)
    behavior = torch.where(padding, 30 * torch.randn(B, T, generator=generator), behavior)
    return old, behavior, mask, torch.randn(B, generator=generator)


def opsm_weights(old, behavior, mask, advantages, delta):
    from types import SimpleNamespace

    from common.rollout_correction import rollout_correction

    args = SimpleNamespace(rollout_is="none", rollout_is_threshold=2.0, rollout_is_threshold_low=None,
                           rollout_rs="opsm", rollout_rs_threshold=delta)  # fmt: skip
    return rollout_correction(old, behavior, mask, advantages, args)


def trl_mask(advantages, old, behavior, mask, delta):
    """TRL's mask [B, 1] or [B, T], called as GRPOTrainer._compute_loss calls it: advantages [B] unsqueezed
    to [B, 1]; ``per_token_logps`` is the policy's current log-probs, π_old on a batch's first update."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    advantages = advantages[:, None] if advantages.dim() == 1 else advantages
    return GRPOTrainer.get_off_policy_mask(
        advantages=advantages,
        per_token_logps=old,
        sampling_per_token_logps=behavior,
        mask=mask,
        off_policy_threshold=delta,
    )


@check
def trl_is_the_pinned_version_with_the_documented_defaults():
    """The TRL defaults quoted in common/rollout_correction.py: IS on (when vLLM samples), "sequence_mask",
    C_max 3.0, C_min None; OPSM off (``off_policy_mask_threshold`` None)."""
    import trl
    from trl import GRPOConfig

    assert trl.__version__ == "1.16.0", trl.__version__
    defaults = {field.name: field.default for field in dataclasses.fields(GRPOConfig)}
    documented = {
        "vllm_importance_sampling_correction": True,
        "vllm_importance_sampling_mode": "sequence_mask",
        "vllm_importance_sampling_clip_max": 3.0,
        "vllm_importance_sampling_clip_min": None,
        "off_policy_mask_threshold": None,
    }
    assert {name: defaults[name] for name in documented} == documented, defaults


@check
def opsm_matches_trl_get_off_policy_mask():
    """--rollout-rs opsm against TRL's get_off_policy_mask, advantages [B] and the same broadcast to [B, T],
    δ from 0.01 to 0.5: the kept tokens, exactly."""
    outcomes = set()
    for seed in SEEDS:
        for spread in (0.05, 0.3):
            old, behavior, mask, advantages = opsm_batch(seed, spread)
            for delta in (0.01, 0.05, 0.1, 0.5):
                theirs = trl_mask(advantages, old, behavior, mask, delta).expand_as(mask) * mask
                for shaped in (advantages, advantages[:, None].expand_as(mask)):
                    ours, stats = opsm_weights(old, behavior, mask, shaped, delta)
                    assert torch.equal(ours * mask, theirs), (
                        f"seed {seed} spread {spread} δ {delta} {shaped.shape}"
                    )
                    rejected = 1 - (theirs.sum(-1) > 0).float().mean().item()
                    assert abs(stats["correction/rs_rejected_seq_frac"] - rejected) < 1e-6
                outcomes |= {bool(x) for x in (theirs.sum(-1) == 0)}
    assert outcomes == {True, False}, "every check rejected all or none of the sequences"


@check
def opsm_per_token_advantages_differ_from_trl_as_documented():
    """Difference on purpose: with per-token advantages of mixed sign, TRL compares each token's advantage
    (it keeps token t iff A_t >= 0 or the sequence's KL <= δ), while the menu rejects whole sequences, by
    the mean advantage over their real tokens. Which sequences exceed δ comes from TRL (all advantages −1)."""
    for seed in SEEDS:
        old, behavior, mask, _ = opsm_batch(seed, 0.3)
        generator = torch.Generator().manual_seed(600 + seed)
        token_advantages = torch.randn(mask.shape, generator=generator)  # [B, T], mixed signs within rows
        for delta in (0.05, 0.1):
            high_kl = trl_mask(-torch.ones(len(mask)), old, behavior, mask, delta)[:, 0] == 0  # [B]
            assert high_kl.any() and (~high_kl).any()
            theirs = trl_mask(token_advantages, old, behavior, mask, delta)
            assert torch.equal(theirs, ((token_advantages >= 0) | ~high_kl[:, None]).float())
            ours, _ = opsm_weights(old, behavior, mask, token_advantages, delta)
            mean_advantage = (token_advantages * mask).sum(-1) / mask.sum(-1)
            expected = ~(high_kl & (mean_advantage < 0))
            assert torch.equal(ours * mask, expected[:, None].float() * mask), f"seed {seed} δ {delta}"
            assert not torch.equal(ours * mask, theirs * mask)


# ------------------------------------------------------------------------------------------------------
# GSPO and GMPO (issue 23): TRL's own _compute_loss, in a trainer built from its config, against the files
# ------------------------------------------------------------------------------------------------------


def tiny_trainer(trainer_class=None, config_class=None, **config):
    """A GRPOTrainer (or ``trainer_class``) built from its config on a one-layer Qwen2 with the tiny world's
    tokenizer (``common.tiny_world.build_tokenizer``), in train mode with one gradient-accumulation step, as its
    ``training_step`` leaves it. Its ``_compute_loss`` is then called on prepared inputs: the per-token log-probs
    come from ``set_logprobs`` (a leaf tensor, so the gradient is read off it) instead of a forward pass."""
    import tempfile

    from datasets import Dataset
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from common.tiny_world import build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(
        Qwen2Config(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    num_key_value_heads=2, intermediate_size=32, max_position_embeddings=64)
    )  # fmt: skip
    args = (config_class or GRPOConfig)(
        output_dir=tempfile.mkdtemp(), use_cpu=True, report_to=[], per_device_train_batch_size=4,
        num_generations=4, save_strategy="no", beta=0.0, **config,
    )  # fmt: skip
    trainer = (trainer_class or GRPOTrainer)(
        model=model,
        reward_funcs=lambda completions, **kwargs: [0.0] * len(completions),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["1+1="] * 8}),
        processing_class=tokenizer,
    )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def trl_loss(trainer, logprobs, old, advantages, mask, num_items=None):
    """TRL's loss and the gradient on ``logprobs [B, T]`` (π_θ), from ``trainer._compute_loss`` with
    ``old_per_token_logps`` π_old, ``advantages [B]`` and ``completion_mask``; the forward pass is replaced by
    the given log-probs (entropies 0). ``num_items``: ``num_items_in_batch`` (default: this batch's tokens)."""
    B, T = mask.shape
    leaf = logprobs.clone().requires_grad_()
    trainer._get_per_token_logps_and_entropies = lambda *args, **kwargs: (leaf, torch.zeros(B, T), None)
    inputs = {
        "prompt_ids": torch.ones(B, 2, dtype=torch.long),
        "prompt_mask": torch.ones(B, 2, dtype=torch.long),
        "completion_ids": torch.ones(B, T, dtype=torch.long),
        "completion_mask": mask.long(),
        "advantages": advantages,
        "old_per_token_logps": old,
        "num_items_in_batch": mask.sum() if num_items is None else torch.tensor(float(num_items)),
    }
    trainer._metrics["train"].clear()
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    return loss.detach(), leaf.grad


def policy_batch(seed: int, spread: float, B: int = 12, T: int = 9):
    """π_old and π_θ log-probs [B, T] (log-ratios spread·N(0, 1)), a ragged mask (one full row, one of length 1),
    finite garbage on the padding of both, advantages [B] of both signs with one exact zero."""
    generator = torch.Generator().manual_seed(700 + seed)
    lengths = torch.randint(1, T + 1, (B,), generator=generator)
    lengths[0], lengths[-1] = T, 1
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    old = -3 * torch.rand(B, T, generator=generator)
    new = old + spread * torch.randn(B, T, generator=generator)
    padding = mask == 0
    old = torch.where(padding, 5 * torch.randn(B, T, generator=generator), old)
    new = torch.where(padding, 5 * torch.randn(B, T, generator=generator), new)
    advantages = torch.randn(B, generator=generator)
    advantages[1] = 0.0
    return old, new, advantages, mask


@check
def gspo_matches_trl_sequence_importance_sampling():
    """gspo.py (GSPO and --gspo-token) against TRL's ``importance_sampling_level="sequence"``, loss and gradient,
    in every aggregation TRL honours with it: loss_type "grpo" (the paper's sequence mean; our
    seq-mean-token-mean), "bnpo" (token-mean over the batch), "dr_grpo" (seq-mean-token-sum-norm, L_max =
    max_completion_length) and "dapo" (token-mean over num_items_in_batch); the paper's ε 3e-4/4e-4 and a
    wide 0.2/0.28, sequence ratios inside and outside the band. TRL's clip_ratio/region_mean (a share of
    sequences at the sequence level) is the share of our rows whose clip binds."""
    from algos.gspo import aggregate_loss, clipped_surrogate, sequence_log_ratio

    modes = {"grpo": "seq-mean-token-mean", "bnpo": "token-mean", "dr_grpo": "seq-mean-token-sum-norm",
             "dapo": "token-mean"}  # fmt: skip
    T = 9
    for (low, high), spread in (((3e-4, 4e-4), 1e-3), ((0.2, 0.28), 0.4)):
        for loss_type, mode in modes.items():
            trainer = tiny_trainer(
                loss_type=loss_type, importance_sampling_level="sequence", epsilon=low, epsilon_high=high,
                max_completion_length=T,
            )  # fmt: skip
            shares = []
            for seed in SEEDS:
                old, new, advantages, mask = policy_batch(seed, spread, T=T)
                theirs, their_grad = trl_loss(trainer, new, old, advantages, mask)
                region = trainer._metrics["train"]["clip_ratio/region_mean"][-1]
                for token in (False, True):
                    leaf = new.clone().requires_grad_()
                    log_ratio = sequence_log_ratio(leaf, old, mask, token)
                    per_token, clipped = clipped_surrogate(log_ratio, 0 * log_ratio, advantages, low, high)
                    ours = aggregate_loss(per_token, mask, mode, len(mask), int(mask.sum()), T)
                    ours.backward()
                    ours, our_grad = ours.detach(), leaf.grad
                    what = f"{loss_type} ε {low}/{high} seed {seed} token {token}"
                    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-7), (
                        f"loss {what}: {ours} vs {theirs}"
                    )
                    assert torch.allclose(our_grad, their_grad, rtol=1e-4, atol=1e-7), f"gradient {what}"
                    assert abs(clipped[:, 0].float().mean().item() - region) < 1e-6, f"clip share {what}"
                shares.append(region)
            assert 0 < max(shares) < 1, (
                f"{loss_type} ε {low}/{high}: every seed clipped all or none: {shares}"
            )


@check
def gmpo_matches_trl_gmpo_trainer():
    """gmpo.py's geometric_mean_surrogate + the mean over sequences against TRL's
    ``experimental.gmpo.GMPOTrainer`` (GMPOConfig's default ε = 0.4 in log space, and ε = 0.2), loss and
    gradient, with log-ratios beyond ±ε on both sides and an exact zero advantage; the clip share equals TRL's
    clip_ratio/region_mean (both sign-aware, per token)."""
    from trl.experimental.gmpo import GMPOConfig, GMPOTrainer

    from algos.gmpo import aggregate_loss, geometric_mean_surrogate

    for epsilon in (0.4, 0.2):
        config = {} if epsilon == 0.4 else {"epsilon": epsilon}
        trainer = tiny_trainer(GMPOTrainer, GMPOConfig, **config)
        assert trainer.epsilon_low == trainer.epsilon_high == epsilon
        for seed in SEEDS:
            old, new, advantages, mask = policy_batch(seed, 0.5)
            theirs, their_grad = trl_loss(trainer, new, old, advantages, mask)

            leaf = new.clone().requires_grad_()
            per_token, clipped = geometric_mean_surrogate(leaf, old, advantages, mask, epsilon)
            ours = aggregate_loss(per_token, mask, "seq-mean-token-mean", len(mask), int(mask.sum()), 1)
            ours.backward()
            ours, our_grad = ours.detach(), leaf.grad
            assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-7), f"loss ε {epsilon} seed {seed}"
            assert torch.allclose(our_grad, their_grad, rtol=1e-4, atol=1e-7), (
                f"gradient ε {epsilon} seed {seed}"
            )
            share = ((clipped * mask).sum() / mask.sum()).item()
            assert (
                0 < share < 1 and abs(share - trainer._metrics["train"]["clip_ratio/region_mean"][-1]) < 1e-6
            )


# ------------------------------------------------------------------------------------------------------
# CISPO and SAPO (algos/cispo.py, algos/sapo.py) against GRPOTrainer._compute_loss
# ------------------------------------------------------------------------------------------------------


def algo(name: str):
    """``algos/<name>.py``. The files import tyro for their command line only; the TRL environment has none, so
    an empty module stands in for it (nothing here parses a command line)."""
    import importlib
    import importlib.util
    import types

    if "tyro" not in sys.modules and importlib.util.find_spec("tyro") is None:
        sys.modules["tyro"] = types.ModuleType("tyro")
    return importlib.import_module(f"algos.{name}")


def grpo_trainer(**config):
    """A real GRPOTrainer (TRL's GRPOConfig with ``config``) around a one-layer Qwen2 with the tiny world's
    tokenizer: its loss is called directly, nothing is generated or trained."""
    import tempfile

    from datasets import Dataset
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from common.tiny_world import build_tokenizer

    tokenizer = build_tokenizer()
    model = Qwen2ForCausalLM(
        Qwen2Config(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    num_key_value_heads=2, intermediate_size=32, max_position_embeddings=64)
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as output_dir:
        args = GRPOConfig(output_dir=output_dir, per_device_train_batch_size=4, num_generations=4,
                          max_completion_length=8, report_to="none", use_cpu=True, bf16=False, **config)  # fmt: skip
        return GRPOTrainer(model=model, reward_funcs=lambda completions, **_: [0.0] * len(completions), args=args,
                           train_dataset=Dataset.from_dict({"prompt": ["1+1="] * 8}), processing_class=tokenizer)  # fmt: skip


def loss_batch(seed: int, spread: float, B: int = 10, T: int = 7):
    """π_old and π_θ log-probs [B, T] (log-ratios spread·N(0, 1)), a ragged mask with one full row and one empty
    row, and advantages [B] of both signs with zeros."""
    generator = torch.Generator().manual_seed(700 + seed)
    lengths = torch.randint(1, T + 1, (B,), generator=generator)
    lengths[0], lengths[-1] = T, 0
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    old = -3 * torch.rand(B, T, generator=generator)
    new = old + spread * torch.randn(B, T, generator=generator)
    advantages = torch.randn(B, generator=generator)
    advantages[::3] = 0.0
    return old, new, advantages, mask


def trl_loss_and_metrics(trainer, old, new, advantages, mask, train: bool):
    """GRPOTrainer._compute_loss on the batch, its policy's log-probs replaced by ``new`` (a leaf): the loss, its
    gradient with respect to ``new``, and the trainer's logged metrics. In training mode with one gradient
    accumulation step and one step per generation, as in eval mode, TRL divides by the local batch's counts."""
    import collections

    leaf = new.clone().requires_grad_()
    trainer._get_per_token_logps_and_entropies = lambda *args, **kwargs: (leaf, torch.zeros_like(leaf), None)
    trainer.model.train(train)
    trainer.current_gradient_accumulation_steps = 1
    trainer._metrics = {"train": collections.defaultdict(list), "eval": collections.defaultdict(list)}
    B, T = mask.shape
    inputs = {
        "prompt_ids": torch.ones(B, 1, dtype=torch.long),
        "prompt_mask": torch.ones(B, 1, dtype=torch.long),
        "completion_ids": torch.ones(B, T, dtype=torch.long),
        "completion_mask": mask,
        "advantages": advantages,
        "old_per_token_logps": old,
        "num_items_in_batch": mask.sum(),
    }
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    return loss.detach(), leaf.grad, trainer._metrics["train" if train else "eval"]


@check
def trl_cispo_and_sapo_defaults_are_the_documented_ones():
    """The TRL settings algos/cispo.py and algos/sapo.py quote: τ_pos 1.0, τ_neg 1.05 (the paper's); ε 0.2 and
    ε_high None, so a ``loss_type="cispo"`` trainer left at its defaults caps every weight at ε = 0.2 (below 1:
    TRL's docs recommend epsilon_high=5.0)."""
    from trl import GRPOConfig

    defaults = {field.name: field.default for field in dataclasses.fields(GRPOConfig)}
    documented = {
        "sapo_temperature_pos": 1.0,
        "sapo_temperature_neg": 1.05,
        "epsilon": 0.2,
        "epsilon_high": None,
    }
    assert {name: defaults[name] for name in documented} == documented, defaults
    assert grpo_trainer(loss_type="cispo").epsilon_high == 0.2


@check
def cispo_matches_trl_compute_loss():
    """loss_type="cispo" against cispo.py: TRL clamps ρ at epsilon_high itself (no lower bound), i.e.
    ``--is-clip-high epsilon_high − 1``, and normalises by the batch's tokens (``--loss-agg token-mean``). Losses
    and gradients for epsilon_high 1.2 and 5.0, log-ratios 0.5 and 2·N(0, 1), training and eval mode. TRL's
    ``cispo_clip_ratio`` counts capped tokens with A > 0 only (cispo.py's ``is_clip_frac`` counts all)."""
    cispo = algo("cispo")
    for epsilon_high in (1.2, 5.0):
        trainer = grpo_trainer(loss_type="cispo", epsilon_high=epsilon_high)
        for seed in SEEDS:
            for spread in (0.5, 2.0):
                old, new, advantages, mask = loss_batch(seed, spread)
                B, T = mask.shape
                for train in (True, False):
                    theirs, their_grad, metrics = trl_loss_and_metrics(
                        trainer, old, new, advantages, mask, train
                    )
                    leaf = new.clone().requires_grad_()
                    per_token, capped = cispo.cispo_loss(leaf, old, advantages, None, epsilon_high - 1)
                    ours = cispo.aggregate_loss(per_token, mask, "token-mean", B, int(mask.sum()), T)
                    ours.backward()
                    what = f"ε_high {epsilon_high} seed {seed} spread {spread} train {train}"
                    assert torch.allclose(theirs, ours.detach(), rtol=1e-5, atol=1e-6), f"loss {what}"
                    assert torch.allclose(their_grad, leaf.grad, rtol=1e-5, atol=1e-7), f"gradient {what}"
                    positive = ((capped & (advantages[:, None] > 0)) * mask).sum() / mask.sum()
                    assert abs(metrics["cispo_clip_ratio"][-1] - positive.item()) < 1e-6, f"clip ratio {what}"
                    if epsilon_high == 1.2 and spread == 2.0:
                        assert (capped * mask).sum() > ((capped & (advantages[:, None] > 0)) * mask).sum() > 0


@check
def sapo_matches_trl_compute_loss():
    """loss_type="sapo" against sapo.py's soft_gated_surrogate + aggregate_loss("seq-mean-token-mean"): losses
    and gradients for τ (1.0, 1.05) and (0.5, 2.0), log-ratios 0.5 and 4·N(0, 1), advantages with zeros (both
    use τ_neg there), an empty row (both count it in the mean over sequences), training and eval mode."""
    sapo = algo("sapo")
    for tau_pos, tau_neg in ((1.0, 1.05), (0.5, 2.0)):
        trainer = grpo_trainer(loss_type="sapo", sapo_temperature_pos=tau_pos, sapo_temperature_neg=tau_neg)
        for seed in SEEDS:
            for spread in (0.5, 4.0):
                old, new, advantages, mask = loss_batch(seed, spread)
                B, T = mask.shape
                for train in (True, False):
                    theirs, their_grad, _ = trl_loss_and_metrics(trainer, old, new, advantages, mask, train)
                    leaf = new.clone().requires_grad_()
                    per_token, _ = sapo.soft_gated_surrogate(leaf, old, advantages, tau_pos, tau_neg)
                    ours = sapo.aggregate_loss(per_token, mask, "seq-mean-token-mean", B, int(mask.sum()), T)
                    ours.backward()
                    what = f"τ {tau_pos}/{tau_neg} seed {seed} spread {spread} train {train}"
                    assert torch.allclose(theirs, ours.detach(), rtol=1e-5, atol=1e-6), f"loss {what}"
                    assert torch.allclose(their_grad, leaf.grad, rtol=1e-5, atol=1e-7), f"gradient {what}"


@check
def trl_has_no_dppo_or_kimi_loss():
    """The Rosetta cells of dppo.py and kimi.py (issue 23): the pinned TRL computes neither loss. Its
    GRPOTrainer branches on the loss types below (grpo and dapo, the default, are the fall-through), none of
    them DPPO's divergence mask or Kimi's squared log-ratio, and it has no ``trl.experimental.dppo`` (a later
    TRL adds that trainer; docs/methods/dppo.md describes it, read only)."""
    import importlib.util
    import inspect
    import re

    from trl.trainer import grpo_trainer

    source = inspect.getsource(grpo_trainer)
    branches = set(re.findall(r'loss_type == "(\w+)"', source))
    assert branches == {"bnpo", "cispo", "dr_grpo", "luspo", "sapo", "vespo"}, branches
    assert importlib.util.find_spec("trl.experimental.dppo") is None
    assert not re.search(r"\b(dppo|kimi|dro_beta)\b", source, re.I)


# ------------------------------------------------------------------------------------------------------
# On-policy distillation (algos/opd.py) against TRL's sampled-token IW-OPD loss at γ = 0
# ------------------------------------------------------------------------------------------------------


def iw_opd_loss(logits, tokens, mask, teacher, temperature: float, gamma: float):
    """TRL's ``IWOPDTrainer._compute_iw_opd_loss`` (trl/experimental/iw_opd) on prepared inputs, called on a
    stand-in for the trainer that carries the attributes the method reads; ``rollout_logprobs`` None (the live
    student's log-probs, as TRL does when the rollout's are not kept)."""
    from collections import defaultdict
    from types import SimpleNamespace

    from trl.experimental.iw_opd.iw_opd_trainer import IWOPDTrainer

    trainer = SimpleNamespace(
        temperature=temperature, iw_opd_gamma=gamma, iw_opd_epsilon=1e-8, model=torch.nn.Module(),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )  # fmt: skip
    labels = torch.where(mask.bool(), tokens, torch.full_like(tokens, -100))
    return IWOPDTrainer._compute_iw_opd_loss(trainer, logits, tokens, labels, teacher)


@check
def opd_gradient_matches_trl_iw_opd_at_gamma_0():
    """TRL's IW-OPD loss with γ = 0 (every weight 1) is −sg(log π_T − log π_θ)·log π_θ, token-mean over the
    batch: the REINFORCE form of opd.py's per-token advantage. At ρ = 1 (π_old = π_θ) opd.py's
    distillation_surrogate + aggregate_loss("token-mean") has the same gradient with respect to the logits
    (random logits [B, T, V] at temperature 0.7, teacher log-probs 0.7·N(0, 1) from the student's, ragged
    masks); the loss values differ by design (−A·ρ against −A·log π). With γ = 0.5 TRL reweights each token
    by 1 + γ(1 − its share of the row's |A| so far), a different method, and the gradients differ. (opd.py
    imports tyro for its command line only; the TRL environment has none, so an empty module stands in.)"""
    import importlib.util
    import types

    if importlib.util.find_spec("tyro") is None:
        sys.modules.setdefault("tyro", types.ModuleType("tyro"))
    import algos.opd as opd

    for seed in SEEDS:
        generator = torch.Generator().manual_seed(700 + seed)
        B, T, V, temperature = 6, 8, 11, 0.7
        logits = torch.randn(B, T, V, generator=generator)
        tokens = torch.randint(0, V, (B, T), generator=generator)
        lengths = torch.randint(1, T + 1, (B,), generator=generator)
        lengths[0], lengths[-1] = T, 1
        mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
        student = torch.log_softmax(logits / temperature, -1).gather(-1, tokens[..., None])[..., 0]
        teacher = student + 0.7 * torch.randn(B, T, generator=generator)
        gradients = {}
        for gamma in (0.0, 0.5):
            theirs_logits = logits.clone().requires_grad_()
            iw_opd_loss(theirs_logits, tokens, mask, teacher, temperature, gamma).backward()
            gradients[gamma] = theirs_logits.grad
        ours_logits = logits.clone().requires_grad_()
        logprobs = torch.log_softmax(ours_logits / temperature, -1).gather(-1, tokens[..., None])[..., 0]
        per_token, clipped = opd.distillation_surrogate(logprobs, logprobs.detach(), teacher, 0.2, 0.2)
        opd.aggregate_loss(per_token, mask, "token-mean", B, int(mask.sum()), T).backward()
        assert not clipped.any(), "ρ = 1 clips nothing"
        error = (ours_logits.grad - gradients[0.0]).abs().max().item()
        assert error < 1e-6, f"seed {seed}: max |gradient difference| {error}"
        assert (ours_logits.grad - gradients[0.5]).abs().max().item() > 1e-3, "γ = 0.5 should differ"


# ------------------------------------------------------------------------------------------------------
# GRPO, Dr. GRPO and DAPO (issue 23): grpo.py, dr_grpo.py and dapo.py against TRL's loss types of their names
# ------------------------------------------------------------------------------------------------------


def clipped_loss_matches_trl(name: str, loss_type: str, mode: str):
    """``algos/<name>.py``'s clipped_surrogate + aggregate_loss(``mode``) against GRPOTrainer._compute_loss with
    ``loss_type``: loss and gradient off the policy (log-ratios 0.4·N(0, 1): ratios beyond both clip bounds), ε
    0.2/0.2 and 0.2/0.28, five seeds, the whole batch and as two micro-batches of a gradient-accumulation window
    of 2 (``num_items_in_batch`` the window's tokens; our sizes the window's); the clipped share equals TRL's
    clip_ratio/region_mean (low: ρ < 1 − ε_low with Â < 0, high: ρ > 1 + ε_high with Â > 0, as our mask)."""
    module = algo(name)
    T = 9
    for low, high in ((0.2, 0.2), (0.2, 0.28)):
        trainer, window = (
            tiny_trainer(loss_type=loss_type, epsilon=low, epsilon_high=high, max_completion_length=T,
                         gradient_accumulation_steps=steps)
            for steps in (1, 2)
        )  # fmt: skip
        window.current_gradient_accumulation_steps = 2
        assert (trainer.epsilon_low, trainer.epsilon_high, window.args.steps_per_generation) == (low, high, 2)
        sides = set()
        for seed in SEEDS:
            old, new, advantages, mask = policy_batch(seed, 0.4, T=T)
            B, tokens = len(mask), int(mask.sum())
            leaf = new.clone().requires_grad_()
            per_token, clipped = module.clipped_surrogate(leaf, old, advantages, low, high)
            ours = module.aggregate_loss(per_token, mask, mode, B, tokens, T)
            ours.backward()
            what = f"{loss_type} ε {low}/{high} seed {seed}"
            theirs, their_grad = trl_loss(trainer, new, old, advantages, mask)
            assert torch.allclose(ours.detach(), theirs, rtol=1e-5, atol=1e-7), (
                f"loss {what}: {ours} vs {theirs}"
            )
            assert torch.allclose(leaf.grad, their_grad, rtol=1e-4, atol=1e-7), f"gradient {what}"
            share = ((clipped * mask).sum() / mask.sum()).item()
            assert abs(share - trainer._metrics["train"]["clip_ratio/region_mean"][-1]) < 1e-6, (
                f"clip share {what}"
            )
            for side, sign in (("low", -1), ("high", 1)):
                if ((clipped & (advantages[:, None] * sign > 0)) * mask).any():
                    sides.add(side)
            halves = (slice(0, B // 2), slice(B // 2, B))  # equal halves, as TRL's micro-batches
            theirs = sum(
                trl_loss(window, new[h], old[h], advantages[h], mask[h], num_items=tokens)[0] for h in halves
            )
            ours = sum(
                module.aggregate_loss(module.clipped_surrogate(new[h], old[h], advantages[h], low, high)[0], mask[h],
                                      mode, B, tokens, T)
                for h in halves
            )  # fmt: skip
            assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-7), (
                f"two micro-batches {what}: {ours} vs {theirs}"
            )
        assert sides == {"low", "high"}, f"{what}: only {sides} clipped (a test of ρ = 1, not of the clip)"


@check
def grpo_matches_trl_loss_type_grpo():
    """grpo.py's clipped_surrogate + aggregate_loss("seq-mean-token-mean") against loss_type="grpo" (each
    sequence's token mean, averaged over the local batch, divided by the accumulation steps): see
    clipped_loss_matches_trl. The advantage: TRL computes it inline in _generate_and_score_completions (no
    function to call, read only): (r − group mean)/(std + 1e-4) with its ``nanstd``, the unbiased std as
    grpo_advantages' (checked here against TRL's nanstd with ε 1e-4), and r − group mean for
    scale_rewards="none"; difference on purpose: grpo.py's ε is 1e-6."""
    import inspect

    from trl.trainer.grpo_trainer import GRPOTrainer
    from trl.trainer.utils import nanstd

    clipped_loss_matches_trl("grpo", "grpo", "seq-mean-token-mean")
    source = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    assert "advantages = advantages / (std_rewards + 1e-4)" in source
    assert 'if self.scale_rewards != "none":' in source
    grpo = algo("grpo")
    rewards = torch.tensor(
        [[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.3, 0.9, 0.1, 0.5]]
    )
    trl_like = (rewards - rewards.mean(1, keepdim=True)) / (nanstd(rewards, dim=1, keepdim=True) + 1e-4)
    assert torch.allclose(grpo.grpo_advantages(rewards, "group", eps=1e-4), trl_like, atol=1e-7)
    assert torch.equal(grpo.grpo_advantages(rewards, "none"), rewards - rewards.mean(1, keepdim=True))


@check
def dr_grpo_matches_trl_loss_type_dr_grpo():
    """dr_grpo.py's clipped_surrogate + aggregate_loss("seq-mean-token-sum-norm", L_max = max_completion_length)
    against loss_type="dr_grpo" (the masked token sum over B·max_completion_length of the local batch, divided by
    the accumulation steps): see clipped_loss_matches_trl. Its advantage is TRL's scale_rewards="none" (the
    inline r − group mean, grpo_matches_trl_loss_type_grpo); dr_grpo_advantages is that."""
    clipped_loss_matches_trl("dr_grpo", "dr_grpo", "seq-mean-token-sum-norm")
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.3, 0.9, 0.1, 0.5]])
    assert torch.equal(algo("dr_grpo").dr_grpo_advantages(rewards), rewards - rewards.mean(1, keepdim=True))


@check
def dapo_matches_trl_loss_type_dapo():
    """dapo.py's clipped_surrogate + aggregate_loss("token-mean") against loss_type="dapo", TRL's default (the
    masked token sum over num_items_in_batch, the tokens of the whole generation batch): see
    clipped_loss_matches_trl, with dapo.py's clip-higher 0.2/0.28 among the bounds. Only the loss half: DAPO's
    dynamic sampling and overlong shaping are not in TRL's loss (TRL's ``mask_truncated_completions`` is a
    different treatment of long answers: it drops them, read only)."""
    clipped_loss_matches_trl("dapo", "dapo", "token-mean")
    dapo = algo("dapo")
    assert (dapo.Args.clip_low, dapo.Args.clip_high, dapo.Args.loss_agg) == (0.2, 0.28, "token-mean")


def main() -> int:
    failures = 0
    for function in CHECKS:
        try:
            function()
            print(f"PASS {function.__name__}", flush=True)
        except Exception as error:  # noqa: BLE001 - every failure is reported, then counted
            failures += 1
            traceback.print_exc()
            print(f"FAIL {function.__name__}: {error}".splitlines()[0], flush=True)
    return failures


if __name__ == "__main__":
    sys.exit(main())

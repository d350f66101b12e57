"""SAPO (algos/sapo.py): its soft gate against hand-computed values, the identity with grpo.py on the policy,
the gate acting in the default run, and one learning test."""

import copy
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_grpo import RecordingOptimizer

from algos import grpo, sapo
from algos.sapo import Args, soft_gated_surrogate, validate


def _token(ratio: float, advantage: float, tau_pos: float = 1.0, tau_neg: float = 1.05):
    """Loss, gate weight and d loss / d log π of one token whose ratio π/π_old is ``ratio``."""
    logp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss, weight = soft_gated_surrogate(logp, torch.zeros(1, 1), torch.tensor([advantage]), tau_pos, tau_neg)
    loss.sum().backward()
    return loss.item(), weight.item(), logp.grad.item()


@pytest.mark.parametrize(
    "ratio, advantage, loss, weight, grad",
    [
        # σ(0) = 1/2: f = 2/τ, slope w = 1, gradient −A·ρ = −1 (GRPO's at ρ = 1)
        (1.0, 1.0, -2.0, 1.0, -1.0),
        # τ_pos = 1, ρ = 3: σ(2) = 0.880797, f = 4σ = 3.523188, w = 4σ(1 − σ) = 0.419974, grad −w·ρ = −1.259923
        (3.0, 1.0, -3.523188, 0.419974, -1.259923),
        # τ_pos = 1, ρ = 1.5: σ(0.5) = 0.622459, f = 2.489837, w = 0.940015, grad −1.410022 (PPO's clip: 0)
        (1.5, 1.0, -2.489837, 0.940015, -1.410022),
        # A = −1 takes τ_neg = 1.05, ρ = 0.5: σ(−0.525) = 0.371685, f = 1.415938, w = 0.934140, grad +0.467070
        (0.5, -1.0, 1.415938, 0.934140, 0.467070),
        # A = −1, ρ = 1.5: σ(0.525) = 0.628315, f = 2.393585, the same w (symmetric in ρ − 1), grad 1.401210
        (1.5, -1.0, 2.393585, 0.934140, 1.401210),
    ],
)
def test_gate_hand_computed(ratio, advantage, loss, weight, grad):
    got = _token(ratio, advantage)
    assert got == pytest.approx((loss, weight, grad), rel=1e-5)


def test_negative_advantages_are_gated_harder_and_zero_advantage_takes_tau_neg():
    """At the same |ρ − 1| the slope is smaller for A < 0 (τ_neg = 1.05 > τ_pos = 1); verl and TRL both use
    τ_neg for A = 0 (its loss and gradient are 0 either way)."""
    _, positive, _ = _token(2.0, 1.0)
    _, negative, _ = _token(2.0, -1.0)
    assert negative < positive < 1
    loss, weight, grad = _token(2.0, 0.0, tau_pos=1.0, tau_neg=2.0)
    assert loss == 0.0 and grad == 0.0 and weight == pytest.approx(4 * (1 / (1 + math.exp(-2))) * (1 / (1 + math.exp(2))))  # fmt: skip


def test_far_off_policy_tokens_are_attenuated_not_dropped():
    """Where PPO's clip (ε = 0.2) gives no gradient (A > 0, ρ = 1.5; A < 0, ρ = 0.5) the gate gives a smaller
    one of the same sign; far out (ρ = 20) it vanishes smoothly."""
    for ratio, advantage in [(1.5, 1.0), (0.5, -1.0)]:
        logp = torch.tensor([[math.log(ratio)]], requires_grad=True)
        ppo, clipped = grpo.clipped_surrogate(logp, torch.zeros(1, 1), torch.tensor([advantage]), 0.2, 0.2)
        assert clipped.item() and torch.autograd.grad(ppo.sum(), logp)[0].item() == 0.0
        _, weight, grad = _token(ratio, advantage)
        assert 0.9 < weight < 1 and grad * advantage < 0
    _, weight, grad = _token(20.0, 1.0)
    assert weight < 1e-6 and abs(grad) < 1e-4


def test_validate_rejects_non_positive_temperatures():
    for fields in ({"tau_pos": 0.0}, {"tau_neg": -1.0}):
        with pytest.raises(SystemExit, match="--tau-pos and --tau-neg must be > 0"):
            validate(Args(**fields))


@settings(max_examples=60, deadline=None)
@given(data=st.data(), B=st.integers(1, 6), C=st.integers(1, 6), tau=st.floats(0.1, 5.0))
def test_loss_is_finite_padding_gets_no_gradient_and_micro_batches_add_up(data, B, C, tau):
    floats = lambda lo, hi: st.lists(st.floats(lo, hi, width=32), min_size=B * C, max_size=B * C)  # noqa: E731
    logp = torch.tensor(data.draw(floats(-50, 0))).view(B, C).requires_grad_(True)
    old = (logp.detach() + torch.tensor(data.draw(floats(-30, 30))).view(B, C)).clamp(max=0)  # beyond e^±20
    advantages = torch.tensor(data.draw(st.lists(st.floats(-3, 3), min_size=B, max_size=B)))
    lengths = torch.tensor(data.draw(st.lists(st.integers(0, C), min_size=B, max_size=B)))
    mask = (torch.arange(C)[None, :] < lengths[:, None]).float()
    per_token_loss, weight = soft_gated_surrogate(logp, old, advantages, tau, tau * 1.05)
    assert ((weight > 0) | (weight == 0)).all() and (weight <= 1).all()
    num_tokens, size = int(mask.sum()), data.draw(st.integers(1, B))
    whole = sapo.aggregate_loss(per_token_loss, mask, "seq-mean-token-mean", B, num_tokens, C)
    parts = [sapo.aggregate_loss(per_token_loss[i : i + size], mask[i : i + size], "seq-mean-token-mean", B, num_tokens, C) for i in range(0, B, size)]  # fmt: skip
    assert torch.isfinite(whole) and torch.allclose(sum(parts), whole, rtol=1e-4, atol=1e-3)
    whole.backward()
    assert torch.isfinite(logp.grad).all() and (logp.grad[mask == 0] == 0).all()


# ---------------------------------------------------------------------------------------------------
# The update: the identity with grpo.py on the policy, and the gate off it
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch_and_model(random_model_dir):
    """A real rollout of the random model (12 rows, 3 prompts x 4) and group advantages."""
    from common.model import load_policy
    from common.rollout import HFSampler

    model, tok = load_policy(str(random_model_dir))
    torch.manual_seed(0)
    rollout = HFSampler(model, tok).generate(["1+1=", "2+3=", "7-4="], n=4, max_new_tokens=6)
    rewards = torch.tensor([[1.0, 0, 0, 1], [0, 0, 0, 1], [1, 1, 0, 0]])
    return model, {"rollout": rollout, "advantages": grpo.grpo_advantages(rewards).view(-1)}


def test_on_the_policy_the_gradient_is_grpo(batch_and_model):
    """One optimizer step per batch (ρ = 1, slope 1): sapo.py's gradient is grpo.py's, in every aggregation."""
    model, batch = batch_and_model
    for loss_agg in ("seq-mean-token-mean", "token-mean"):
        grads = []
        for module in (sapo, grpo):
            optimizer = RecordingOptimizer(model)
            args = module.Args(num_mini_batches=1, max_grad_norm=1e9, micro_batch_size=5, loss_agg=loss_agg)
            stats = module.update_policy(model, optimizer, batch, args)
            assert len(optimizer.grads) == 1
            grads.append(optimizer.grads[0])
        assert stats["clip_frac"] == 0.0 and grads[0].abs().sum() > 0
        assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7), loss_agg


def test_off_the_policy_the_gate_attenuates_where_grpo_would_clip(batch_and_model):
    """2 passes x 3 mini-batches with large SGD steps: the ratios leave 1, SAPO's mean slope falls below 1, and
    its steps differ from grpo.py's at the same schedule."""
    model, batch = batch_and_model
    schedule = dict(updates_per_batch=2, num_mini_batches=3, max_grad_norm=1e9)
    params, stats = {}, {}
    for name, module in (("sapo", sapo), ("grpo", grpo)):
        moved = copy.deepcopy(model)
        optimizer = torch.optim.SGD(moved.parameters(), lr=20.0)
        stats[name] = module.update_policy(moved, optimizer, batch, module.Args(**schedule))
        params[name] = torch.cat([p.detach().flatten() for p in moved.parameters()])
    assert stats["grpo"]["clip_frac"] > 0 and stats["sapo"]["gate_weight_mean"] < 0.999
    assert not torch.allclose(params["sapo"], params["grpo"], rtol=1e-3, atol=1e-5)


def test_the_gate_acts_in_the_default_run(tiny_world_dir, tmp_path):
    """The default schedule (4 mini-batches) on the tiny world: after the first mini-batch the ratios leave 1
    and the gate's mean slope ``gate_weight_mean`` drops below 1 (measured: about 0.9999; its minimum over
    tokens is far lower, but most tokens of the tiny world's policy barely move)."""
    from common.tracking import read_jsonl

    args = Args(
        num_steps=2, eval_problems=3, eval_n=1, save_every=1000, output_dir=str(tmp_path), run_name="m"
    )
    assert args.num_mini_batches == 4 and (args.tau_pos, args.tau_neg) == (1.0, 1.05)
    sapo.main(args)
    steps = [r for r in read_jsonl(tmp_path / "m" / "metrics.jsonl") if r["step"] > 0]
    assert all(r["gate_weight_mean"] < 1 - 1e-6 for r in steps), steps


@pytest.mark.slow
def test_sapo_learns_on_the_tiny_world(tiny_world_dir, tmp_path):
    """20 steps of 8 prompts x 8 samples with the default 4 mini-batches (seed 1) raise held-out pass@1 (60
    problems x 4 samples); measured: 0.338 -> 0.454 (+0.117; 30 steps: 0.458). About 28 CPU seconds on a
    loaded machine."""
    out = sapo.main(
        Args(num_steps=20, prompts_per_step=8, group_size=8, max_new_tokens=64, eval_problems=60, eval_n=4,
             eval_every=0, save_every=1000, output_dir=str(tmp_path), run_name="learn", seed=1)
    )  # fmt: skip
    gain = out["final"]["pass@1"] - out["base"]["pass@1"]
    print(json.dumps({"base": out["base"]["pass@1"], "final": out["final"]["pass@1"]}))
    assert gain >= 0.05, f"held-out pass@1 {out['base']['pass@1']:.3f} -> {out['final']['pass@1']:.3f}"

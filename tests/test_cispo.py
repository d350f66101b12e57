"""CISPO (algos/cispo.py): its loss against hand-computed values, the identity with grpo.py on the policy (and
with the unified form's mask, off it), the mechanism in the default run, and one learning test."""

import copy
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_grpo import RecordingOptimizer

from algos import cispo, grpo
from algos.cispo import Args, cispo_loss, validate


def _grad(ratio: float, advantage: float, prob: float = 0.3, is_clip_low=None, is_clip_high=0.2):
    """Loss and d loss / d log π of one token with π = ``prob`` and π_old = π / ``ratio``."""
    logp = torch.tensor([[math.log(prob)]], requires_grad=True)
    old = logp.detach() - math.log(ratio)
    loss, capped = cispo_loss(logp, old, torch.tensor([advantage]), is_clip_low, is_clip_high)
    loss.sum().backward()
    return loss.item(), logp.grad.item(), bool(capped.item())


def test_the_weight_is_the_ratio_capped_above_and_detached():
    # ρ = 1.1 inside the cap 1.2: loss −1.1·2·log 0.3 = 2.64874, gradient −1.1·2 = −2.2
    loss, grad, capped = _grad(1.1, 2.0)
    assert loss == pytest.approx(2.648740, rel=1e-5) and grad == pytest.approx(-2.2) and not capped
    # ρ = 1.5 above it: the weight is 1.2, and the token keeps the gradient −1.2·2 = −2.4 (PPO's clip: 0)
    loss, grad, capped = _grad(1.5, 2.0)
    assert loss == pytest.approx(2.889535, rel=1e-5) and grad == pytest.approx(-2.4) and capped
    # ρ = 0.3 with a negative advantage: no lower bound by default, weight 0.3, gradient −0.3·(−1) = 0.3
    loss, grad, capped = _grad(0.3, -1.0)
    assert grad == pytest.approx(0.3) and not capped
    # with --is-clip-low 0.2 the weight is 0.8: gradient 0.8
    loss, grad, capped = _grad(0.3, -1.0, is_clip_low=0.2)
    assert grad == pytest.approx(0.8) and capped


def test_every_token_keeps_a_gradient_where_ppo_clip_drops_it():
    """A > 0 and ρ = 2, A < 0 and ρ = 0.5: PPO's clip (ε = 0.2) gives these tokens no gradient; CISPO gives
    them −w·A with w = 1.2 and 0.5."""
    logp = torch.log(torch.tensor([[0.4, 0.1]])).requires_grad_(True)
    old = logp.detach() - torch.log(torch.tensor([[2.0, 0.5]]))
    advantages = torch.tensor([1.0, -1.0])  # one per row: two rows of one token each
    logp2, old2 = logp.view(2, 1), old.view(2, 1)
    ppo, clipped = grpo.clipped_surrogate(logp2, old2, advantages, 0.2, 0.2)
    ppo_grad = torch.autograd.grad(ppo.sum(), logp)[0]
    ours, _ = cispo_loss(logp2, old2, advantages, None, 0.2)
    our_grad = torch.autograd.grad(ours.sum(), logp)[0]
    assert clipped.all() and torch.equal(ppo_grad, torch.zeros(1, 2))
    assert torch.allclose(our_grad, torch.tensor([[-1.2, 0.5]]))


def test_trl_absolute_cap_is_is_clip_high_minus_one():
    """TRL's CISPO clamps ρ at ``epsilon_high`` itself (5.0 recommended): --is-clip-high 4 here."""
    _, grad, capped = _grad(7.0, 1.0, is_clip_high=4.0)
    assert grad == pytest.approx(-5.0) and capped


def test_validate_rejects_negative_bounds():
    for fields in ({"is_clip_high": -0.1}, {"is_clip_low": -0.1}):
        with pytest.raises(SystemExit, match="--is-clip-high must be >= 0"):
            validate(Args(**fields))
    with pytest.raises(SystemExit, match="--group-size must be >= 2"):
        validate(Args(group_size=1))


@settings(max_examples=60, deadline=None)
@given(data=st.data(), B=st.integers(1, 6), C=st.integers(1, 6), cap=st.floats(0.0, 5.0))
def test_loss_is_finite_padding_gets_no_gradient_and_micro_batches_add_up(data, B, C, cap):
    floats = lambda lo, hi: st.lists(st.floats(lo, hi, width=32), min_size=B * C, max_size=B * C)  # noqa: E731
    logp = torch.tensor(data.draw(floats(-50, 0))).view(B, C).requires_grad_(True)
    old = (logp.detach() + torch.tensor(data.draw(floats(-10, 10))).view(B, C)).clamp(max=0)
    advantages = torch.tensor(data.draw(st.lists(st.floats(-3, 3), min_size=B, max_size=B)))
    lengths = torch.tensor(data.draw(st.lists(st.integers(0, C), min_size=B, max_size=B)))
    mask = (torch.arange(C)[None, :] < lengths[:, None]).float()
    per_token_loss, capped = cispo_loss(logp, old, advantages, None, cap)
    num_tokens, size = int(mask.sum()), data.draw(st.integers(1, B))
    whole = cispo.aggregate_loss(per_token_loss, mask, "token-mean", B, num_tokens, C)
    parts = [cispo.aggregate_loss(per_token_loss[i : i + size], mask[i : i + size], "token-mean", B, num_tokens, C) for i in range(0, B, size)]  # fmt: skip
    assert torch.isfinite(whole) and torch.allclose(sum(parts), whole, rtol=1e-4, atol=1e-3)
    whole.backward()
    assert torch.isfinite(logp.grad).all() and (logp.grad[mask == 0] == 0).all()
    weights = -(logp.grad * max(num_tokens, 1))[mask == 1] / advantages[:, None].expand(B, C)[mask == 1]
    nonzero = advantages[:, None].expand(B, C)[mask == 1].abs() > 1e-3
    assert (weights[nonzero] <= 1 + cap + 1e-4).all()  # the weight never exceeds the cap


# ---------------------------------------------------------------------------------------------------
# The update: the identity with grpo.py, on and off the policy
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


def test_on_the_policy_the_gradient_is_grpo_with_token_mean(batch_and_model):
    """One optimizer step per batch (ρ = 1, the weight 1): cispo.py's gradient is grpo.py's with --loss-agg
    token-mean, i.e. REINFORCE −Â·∇log π averaged over the batch's tokens; grpo.py's default
    seq-mean-token-mean gives another one."""
    model, batch = batch_and_model
    grads = {}
    for name, module, fields in [
        ("cispo", cispo, {}),
        ("grpo token-mean", grpo, {"loss_agg": "token-mean"}),
        ("grpo", grpo, {}),
    ]:
        optimizer = RecordingOptimizer(model)
        args = module.Args(num_mini_batches=1, max_grad_norm=1e9, micro_batch_size=5, **fields)
        stats = module.update_policy(model, optimizer, batch, args)
        assert len(optimizer.grads) == 1 and stats["clip_frac"] == 0.0
        grads[name] = optimizer.grads[0]
    assert grads["cispo"].abs().sum() > 0
    assert torch.allclose(grads["cispo"], grads["grpo token-mean"], rtol=1e-4, atol=1e-7)
    assert not torch.allclose(grads["cispo"], grads["grpo"], rtol=1e-2, atol=1e-5)


def test_off_the_policy_the_masked_form_without_a_cap_is_grpo(batch_and_model):
    """--token-mask with no cap on the weight: the unified form's gradient sg(ρ)·M·Â·∇log π is PPO's clipped
    surrogate's, so 2 passes x 3 mini-batches with SGD move the weights exactly as grpo.py at the same schedule
    (ρ leaves 1 after the first step). Without the mask the steps differ: CISPO keeps the clipped tokens."""
    model, batch = batch_and_model
    schedule = dict(updates_per_batch=2, num_mini_batches=3, max_grad_norm=1e9, loss_agg="token-mean")
    params, stats = {}, {}
    for name, module, fields in [
        ("grpo", grpo, {"clip_low": 0.01, "clip_high": 0.01}),
        ("masked", cispo, {"clip_low": 0.01, "clip_high": 0.01, "token_mask": True, "is_clip_high": 1e9}),
        ("cispo", cispo, {"clip_low": 0.01, "clip_high": 0.01, "is_clip_high": 1e9}),
    ]:
        moved = copy.deepcopy(model)
        optimizer = torch.optim.SGD(moved.parameters(), lr=20.0)  # large steps: ratios well outside ±1%
        stats[name] = module.update_policy(moved, optimizer, batch, module.Args(**schedule, **fields))
        params[name] = torch.cat([p.detach().flatten() for p in moved.parameters()])
    assert stats["grpo"]["clip_frac"] > 0  # the clip bound: the identity is tested where it matters
    assert stats["masked"]["clip_frac"] == pytest.approx(stats["grpo"]["clip_frac"])
    assert torch.allclose(params["masked"], params["grpo"], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(params["cispo"], params["grpo"], rtol=1e-3, atol=1e-5)


def test_the_mechanism_fires_in_the_default_run(tiny_world_dir, tmp_path):
    """The default schedule (16 mini-batches of one group each) on the tiny world: once the warm-up's learning
    rate has grown (step 1 runs at a fifth of it), the ratios leave [0.8, 1.2] within a batch's 16 updates, so
    tokens PPO's clip would drop (``clip_frac``) keep their gradient here, and some weights hit the cap 1.2
    (``is_clip_frac``). Measured: step 1 0.0 and 0.0, step 2 0.0045 and 0.0054."""
    from common.tracking import read_jsonl

    args = Args(
        num_steps=3, eval_problems=3, eval_n=1, save_every=1000, output_dir=str(tmp_path), run_name="m"
    )
    assert args.num_mini_batches == 16 and args.is_clip_high == 0.2 and args.loss_agg == "token-mean"
    cispo.main(args)
    steps = [r for r in read_jsonl(tmp_path / "m" / "metrics.jsonl") if r["step"] > 0]
    shares = [(r["clip_frac"], r["is_clip_frac"]) for r in steps]
    assert len(steps) == 3 and max(c for c, _ in shares) > 0 and max(i for _, i in shares) > 0, shares


@pytest.mark.slow
def test_cispo_learns_on_the_tiny_world(tiny_world_dir, tmp_path):
    """30 steps of 8 prompts x 8 samples with the default 16 mini-batches (seed 1) raise held-out pass@1 (60
    problems x 4 samples); measured: 0.338 -> 0.525 (+0.188; at 20 steps only +0.067, the learning rate being a
    quarter of grpo.py's). About 43 CPU seconds on a loaded machine: 16 optimizer steps per batch."""
    out = cispo.main(
        Args(num_steps=30, prompts_per_step=8, group_size=8, max_new_tokens=64, eval_problems=60, eval_n=4,
             eval_every=0, save_every=1000, output_dir=str(tmp_path), run_name="learn", seed=1)
    )  # fmt: skip
    gain = out["final"]["pass@1"] - out["base"]["pass@1"]
    print(json.dumps({"base": out["base"]["pass@1"], "final": out["final"]["pass@1"]}))
    assert gain >= 0.05, f"held-out pass@1 {out['base']['pass@1']:.3f} -> {out['final']['pass@1']:.3f}"

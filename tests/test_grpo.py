"""GRPO's pure functions against hand-computed values (specs: more-methods.md A1, A2)."""

import pytest
import torch

from algos.grpo import aggregate_loss, clipped_surrogate, grpo_advantages, k3_kl


def test_advantages_hand_computed():
    # rewards [1,0,0,0]: mean 0.25, unbiased std 0.5 -> A = [1.5, -0.5, -0.5, -0.5]
    adv = grpo_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]))
    assert torch.allclose(adv[0], torch.tensor([1.5, -0.5, -0.5, -0.5]), atol=1e-5)
    # [1,1,0,0]: mean 0.5, unbiased std sqrt(1/3)
    s = (1 / 3) ** 0.5
    assert torch.allclose(adv[1], torch.tensor([0.5, 0.5, -0.5, -0.5]) / s, atol=1e-5)
    assert torch.allclose(adv.sum(1), torch.zeros(2), atol=1e-5)


def test_advantages_uniform_group_is_zero_and_finite():
    adv = grpo_advantages(torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    assert torch.equal(adv, torch.zeros(2, 3))


def test_dr_grpo_advantages_have_no_std():
    adv = grpo_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), scale_rewards="none")
    assert torch.allclose(adv, torch.tensor([[0.75, -0.25, -0.25, -0.25]]))


def _grad_of_surrogate(ratio: float, adv: float, clip=0.2):
    logp = torch.tensor([[float(torch.log(torch.tensor(ratio)))]], requires_grad=True)
    loss, clipped = clipped_surrogate(logp, torch.zeros(1, 1), torch.tensor([adv]), clip, clip)
    loss.sum().backward()
    return logp.grad.item(), bool(clipped.item()), loss.item()


def test_clip_positive_advantage_above_range_has_no_gradient():
    grad, clipped, loss = _grad_of_surrogate(1.5, 1.0)
    assert clipped and grad == 0.0 and loss == pytest.approx(-1.2)


def test_clip_negative_advantage_below_range_has_no_gradient():
    grad, clipped, loss = _grad_of_surrogate(0.5, -1.0)
    assert clipped and grad == 0.0 and loss == pytest.approx(0.8)


def test_unclipped_gradient_is_ratio_times_advantage():
    # d/dlogp of -(ratio*A) = -ratio*A
    grad, clipped, _ = _grad_of_surrogate(1.1, 2.0)
    assert not clipped and grad == pytest.approx(-2.2, rel=1e-5)
    # ratio outside the range but on the side that makes things worse is NOT clipped (pessimistic bound)
    grad, clipped, _ = _grad_of_surrogate(0.5, 1.0)
    assert not clipped and grad == pytest.approx(-0.5, rel=1e-5)


def test_clip_high_is_separate_from_clip_low():
    logp = torch.log(torch.tensor([[1.25, 1.30]]))
    _, clipped = clipped_surrogate(logp, torch.zeros(1, 2), torch.tensor([1.0]), 0.2, 0.28)
    assert clipped.tolist() == [[False, True]]


def test_k3_kl_zero_with_zero_gradient_when_equal_and_positive_otherwise():
    logp = torch.tensor([-1.0, -2.0], requires_grad=True)
    kl = k3_kl(logp, torch.tensor([-1.0, -2.0]))
    kl.sum().backward()
    assert torch.equal(kl.detach(), torch.zeros(2)) and torch.equal(logp.grad, torch.zeros(2))
    assert (k3_kl(torch.tensor([-1.0]), torch.tensor([-3.0])) > 0).all()


LOSSES = torch.tensor([[1.0, 1.0, 0.0], [4.0, 0.0, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    "mode,expected", [("seq-mean-token-mean", 2.5), ("token-mean", 2.0), ("seq-mean-token-sum-norm", 1.0)]
)
def test_aggregation_hand_computed(mode, expected):
    assert aggregate_loss(
        LOSSES, MASK, mode, num_sequences=2, num_tokens=3, max_len=3
    ).item() == pytest.approx(expected)


@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"])
def test_micro_batches_sum_to_the_batch_loss(mode):
    torch.manual_seed(0)
    losses, mask = torch.randn(6, 5), (torch.rand(6, 5) > 0.3).float()
    mask[:, 0] = 1
    n_tok = int(mask.sum())
    full = aggregate_loss(losses, mask, mode, 6, n_tok, 5)
    parts = sum(aggregate_loss(losses[i : i + 2], mask[i : i + 2], mode, 6, n_tok, 5) for i in range(0, 6, 2))
    assert parts.item() == pytest.approx(full.item(), rel=1e-6)


def test_dr_grpo_removes_length_bias():
    """Two wrong answers of lengths 10 and 100 (same advantage): GRPO's per-token gradient weight is 10x
    larger for the short one; Dr. GRPO's seq-mean-token-sum-norm weighs every token equally."""
    mask = torch.zeros(2, 100)
    mask[0, :10] = 1
    mask[1, :100] = 1
    for mode, expected_ratio in [("seq-mean-token-mean", 10.0), ("seq-mean-token-sum-norm", 1.0)]:
        logp = torch.zeros(2, 100, requires_grad=True)
        per_token, _ = clipped_surrogate(logp, logp.detach(), torch.tensor([-1.0, -1.0]), 0.2, 0.2)
        aggregate_loss(per_token, mask, mode, 2, int(mask.sum()), 100).backward()
        assert (logp.grad[0, 0] / logp.grad[1, 0]).item() == pytest.approx(expected_ratio)


def test_importing_the_script_has_no_side_effects(capsys):
    import importlib

    import algos.grpo

    importlib.reload(algos.grpo)
    assert capsys.readouterr().out == ""


def test_truncated_importance_weights_cap_and_no_gradient():
    from algos.grpo import truncated_is_weights

    old = torch.log(torch.tensor([[0.5, 0.9, 0.2]])).requires_grad_()
    w = truncated_is_weights(old, torch.log(torch.tensor([[0.1, 0.9, 0.4]])), cap=2.0)
    assert torch.allclose(w, torch.tensor([[2.0, 1.0, 0.5]])) and not w.requires_grad

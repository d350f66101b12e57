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


class RecordingOptimizer:
    """An optimizer that takes no step: it records the gradient it is given at every step."""

    def __init__(self, model):
        self.model, self.grads = model, []

    def step(self):
        self.grads.append(
            torch.cat([p.grad.flatten().clone() for p in self.model.parameters() if p.grad is not None])
        )

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=set_to_none)


@pytest.fixture(scope="module")
def batch_and_model(random_model_dir):
    """A real rollout of the random model (12 rows) and group advantages, for update_policy."""
    from common.model import load_policy
    from common.rollout import HFSampler

    model, tok = load_policy(str(random_model_dir))
    torch.manual_seed(0)
    rollout = HFSampler(model, tok).generate(["1+1=", "2+3=", "7-4="], n=4, max_new_tokens=6)
    rewards = torch.tensor([[1.0, 0, 0, 1], [0, 0, 0, 1], [1, 1, 0, 0]])
    return model, {"rollout": rollout, "advantages": grpo_advantages(rewards).view(-1)}


def test_update_policy_is_callable_and_micro_batching_never_changes_the_gradient(batch_and_model):
    """grpo.update_policy on a batch without main(): one optimizer step per pass and mini-batch, and the
    gradient of each step is the same for every micro-batch size (the aggregation divides by the whole
    mini-batch's counts)."""
    from algos.grpo import Args, update_policy

    model, batch = batch_and_model
    grads = {}
    for size in (12, 5, 1):
        optimizer = RecordingOptimizer(model)
        stats = update_policy(model, optimizer, batch, Args(micro_batch_size=size, max_grad_norm=1e9))
        grads[size] = optimizer.grads
        assert len(optimizer.grads) == 1 and stats["clip_frac"] == 0.0  # one step, ratio 1: nothing clipped
    for size in (5, 1):
        assert torch.allclose(grads[size][0], grads[12][0], rtol=1e-4, atol=1e-7)
    assert grads[12][0].abs().sum() > 0


def test_update_policy_takes_passes_times_mini_batches_steps(batch_and_model):
    """--updates-per-batch 2 --num-mini-batches 3: six optimizer steps; the first mini-batch's gradient is that
    of its rows alone (groups stay whole: 4 rows = one prompt each), and the logged stats are finite."""
    import copy

    from algos.grpo import Args, update_policy

    model, batch = batch_and_model
    copied = copy.deepcopy(model)
    optimizer = RecordingOptimizer(copied)
    update_policy(copied, optimizer, batch, Args(updates_per_batch=2, num_mini_batches=3, max_grad_norm=1e9))
    assert len(optimizer.grads) == 6
    first_rows = {"rollout": batch["rollout"].select(torch.arange(4)), "advantages": batch["advantages"][:4]}
    alone = RecordingOptimizer(model)
    update_policy(model, alone, first_rows, Args(max_grad_norm=1e9))
    assert torch.allclose(optimizer.grads[0], alone.grads[0], rtol=1e-4, atol=1e-7)

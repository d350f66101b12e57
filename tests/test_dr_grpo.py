"""Dr. GRPO's pure functions against hand-computed values (more-methods.md A2 (e))."""

import pytest
import torch

from algos.dr_grpo import Args, aggregate_loss, clipped_surrogate, dr_grpo_advantages, validate
from algos.grpo import grpo_advantages


def test_advantages_sum_to_zero_per_group():
    rewards = (torch.rand(6, 8, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    assert torch.allclose(dr_grpo_advantages(rewards).sum(1), torch.zeros(6), atol=1e-6)


def _per_token_grad(advantages, mode):
    mask = torch.zeros(3, 100)
    mask[0, :50], mask[1, :10], mask[2, :100] = 1, 1, 1  # one right answer, wrong ones of 10 and 100 tokens
    logp = torch.zeros(3, 100, requires_grad=True)
    loss, _ = clipped_surrogate(logp, logp.detach(), advantages, 0.2, 0.2)
    aggregate_loss(loss, mask, mode, 3, int(mask.sum()), 100).backward()
    return logp.grad[1, 0].item(), logp.grad[2, 0].item()


def test_wrong_answers_of_10_and_100_tokens():
    rewards = torch.tensor([[1.0, 0.0, 0.0]])
    short, long = _per_token_grad(dr_grpo_advantages(rewards).view(-1), "seq-mean-token-sum-norm")
    assert short == pytest.approx(long)
    short, long = _per_token_grad(grpo_advantages(rewards).view(-1), "seq-mean-token-mean")
    assert short / long == pytest.approx(10.0)


def test_bad_flags_fail_in_validate():
    with pytest.raises(SystemExit, match="--group-size must be >= 2"):
        validate(Args(group_size=1))

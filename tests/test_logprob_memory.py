"""The LM head in position chunks (common.model.logprobs_from_hidden): the same log-probs, entropies and
gradients as the row-chunked head it replaced (bench.logprob_memory.rowwise_completion_logprobs), and a
backward pass whose peak memory is set by the chunk, not by the batch."""

import pytest
import torch
import torch.nn.functional as F

from bench.logprob_memory import (
    PeakTensorMemory,
    peak_of_training_pass,
    random_batch,
    random_policy,
    rowwise_completion_logprobs,
)
from common.model import completion_logprobs, logprobs_from_hidden

VOCAB = 1000
ROWS, PROMPT, C = 3, 5, 7  # 21 completion tokens: chunks of 4 end inside rows


def loss_of(logprobs, entropy, seed=0):
    """A loss that weighs every position differently, so a misplaced token or row changes the gradient."""
    generator = torch.Generator().manual_seed(seed)
    loss = (logprobs * torch.randn(logprobs.shape, generator=generator)).sum()
    if entropy is not None and entropy.requires_grad:
        loss = loss + (entropy * torch.randn(entropy.shape, generator=generator)).sum()
    return loss


def run(fn, model, input_ids, attention_mask, **kwargs):
    """Values and the gradient of every parameter after ``loss_of``'s backward pass."""
    model.zero_grad(set_to_none=True)
    logprobs, entropy = fn(model, input_ids, attention_mask, C, **kwargs)
    loss_of(logprobs, entropy).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return logprobs.detach(), None if entropy is None else entropy.detach(), grads


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(
    ("with_entropy", "entropy_grad", "temperature"),
    [(False, False, 1.0), (True, False, 0.7), (True, True, 1.0), (True, True, 0.6)],
)
def test_values_and_parameter_gradients_equal_the_row_chunked_head(
    dtype, with_entropy, entropy_grad, temperature
):
    model = random_policy(VOCAB, hidden_size=32, num_layers=1, dtype=getattr(torch, dtype))
    input_ids, attention_mask = random_batch(VOCAB, ROWS, PROMPT, C)
    flags = {"temperature": temperature, "with_entropy": with_entropy, "entropy_grad": entropy_grad}
    old_lp, old_ent, old_grads = run(
        rowwise_completion_logprobs, model, input_ids, attention_mask, chunk_size=2, **flags
    )
    new_lp, new_ent, new_grads = run(
        completion_logprobs, model, input_ids, attention_mask, chunk_tokens=4, **flags
    )
    assert new_lp.shape == (ROWS, C) and new_lp.dtype == torch.float32
    # float32: rounding only; bfloat16: the same up to the rounding of the logits in bfloat16
    atol, rtol = (2e-5, 1e-4) if dtype == "float32" else (2e-2, 2e-2)
    torch.testing.assert_close(new_lp, old_lp, atol=atol, rtol=rtol)
    if with_entropy:
        torch.testing.assert_close(new_ent, old_ent, atol=atol, rtol=rtol)
    else:
        assert new_ent is None
    assert old_grads.keys() == new_grads.keys() and len(new_grads) == len(list(model.parameters()))
    for name, grad in new_grads.items():
        scale = old_grads[name].abs().max().item()
        torch.testing.assert_close(grad, old_grads[name], atol=atol * max(scale, 1e-3), rtol=rtol, msg=name)


@pytest.mark.parametrize(("with_entropy", "entropy_grad"), [(False, False), (True, False), (True, True)])
def test_logprobs_from_hidden_gradients_reach_the_hidden_states_as_a_full_log_softmax(
    with_entropy, entropy_grad
):
    """Against the plain formula on the whole [B, C, V] tensor, with a leaf ``hidden`` and a bias in the head."""
    torch.manual_seed(0)
    lm_head = torch.nn.Linear(16, 50)
    hidden = torch.randn(3, 5, 16, requires_grad=True)
    targets = torch.randint(0, 50, (3, 5))
    logprobs, entropy = logprobs_from_hidden(
        lm_head, hidden, targets, 0.8, with_entropy, entropy_grad, chunk_tokens=4
    )
    assert (entropy is not None) == with_entropy
    if with_entropy:
        assert entropy.requires_grad == entropy_grad
    loss_of(logprobs, entropy).backward()
    got = (hidden.grad.clone(), lm_head.weight.grad.clone(), lm_head.bias.grad.clone())

    hidden.grad = lm_head.weight.grad = lm_head.bias.grad = None
    logp_all = F.log_softmax(lm_head(hidden) / 0.8, dim=-1)  # [3, 5, 50]
    want_lp = logp_all.gather(-1, targets[..., None]).squeeze(-1)
    want_ent = -(logp_all.exp() * logp_all).sum(-1)
    if not entropy_grad:
        want_ent = want_ent.detach()
    loss_of(want_lp, want_ent if with_entropy else None).backward()
    torch.testing.assert_close(logprobs, want_lp)
    if with_entropy:
        torch.testing.assert_close(entropy, want_ent)
    for g, want in zip(got, (hidden.grad, lm_head.weight.grad, lm_head.bias.grad)):
        torch.testing.assert_close(g, want)


def test_without_gradients_nothing_is_recorded_and_the_values_are_the_same():
    model = random_policy(VOCAB, hidden_size=32, num_layers=1)
    input_ids, attention_mask = random_batch(VOCAB, ROWS, PROMPT, C)
    with_grad, _ = completion_logprobs(model, input_ids, attention_mask, C, chunk_tokens=5)
    with torch.no_grad():
        without, entropy = completion_logprobs(
            model, input_ids, attention_mask, C, with_entropy=True, chunk_tokens=5
        )
    assert with_grad.requires_grad and not without.requires_grad and not entropy.requires_grad
    torch.testing.assert_close(without, with_grad.detach())
    # chunk_size keeps its old meaning as a bound (rows' worth of tokens per chunk): same values
    one_row_chunks, _ = completion_logprobs(model, input_ids, attention_mask, C, chunk_size=1)
    torch.testing.assert_close(one_row_chunks.detach(), without)


def test_peak_memory_of_a_backward_pass_is_set_by_the_chunk_not_the_batch():
    """Qwen2.5's vocabulary (151,936), 2 x 128 and 4 x 128 completion tokens; chunks of 32 tokens.

    The old head keeps float32 [tokens, V] tensors (155 MB each at 256 tokens) for the backward pass, so
    its peak doubles with the tokens; the new one stays near a few [32, V] chunks plus the head's
    weight gradient, whatever the batch."""
    vocab = 151_936
    model = random_policy(vocab, hidden_size=32, num_layers=1)
    peaks = {}
    for rows in (2, 4):
        input_ids, attention_mask = random_batch(vocab, rows, 8, 128)
        for name, fn, kwargs in [("old", rowwise_completion_logprobs, {}), ("new", completion_logprobs, {"chunk_tokens": 32})]:  # fmt: skip
            peaks[name, rows] = peak_of_training_pass(fn, model, input_ids, attention_mask, 128, **kwargs)[
                "tensor_bytes"
            ]
    one_full_tensor = 2 * 128 * vocab * 4  # float32 logits of the 2-row batch
    assert peaks["old", 2] > 3 * one_full_tensor  # logits, log-softmax and the entropy's temporaries
    assert peaks["old", 4] > 1.8 * peaks["old", 2]
    assert peaks["new", 2] < peaks["old", 2] / 4
    assert peaks["new", 4] < 1.2 * peaks["new", 2]


def test_peak_tensor_memory_counts_what_is_alive_at_once():
    with PeakTensorMemory() as tracker:
        a = torch.zeros(1000, requires_grad=True)  # 4,000 bytes
        b = (a * 2).exp()  # a * 2 is freed at once; exp keeps its result for backward: 8,000 alive
        del b
        c = torch.zeros(250)  # 1,000
    assert (tracker.peak_bytes, tracker.live_bytes) == (12_000, 5_000)
    del a, c

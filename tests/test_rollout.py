"""The sampler's masks and log-probs, on the real tiny model."""

import torch

from common.model import completion_logprobs
from common.rollout import HFSampler, completion_mask_from_ids, sampling_scores


def test_mask_keeps_eos_and_drops_padding_when_pad_equals_eos():
    ids = torch.tensor([[5, 6, 0, 0, 0], [5, 0, 0, 0, 0], [5, 6, 7, 8, 9]])
    mask, truncated = completion_mask_from_ids(ids, eos_ids=[0])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert truncated.tolist() == [False, False, True]


def test_mask_with_several_eos_ids():
    mask, truncated = completion_mask_from_ids(torch.tensor([[5, 2, 0, 0], [0, 5, 5, 5]]), eos_ids=[0, 2])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 0, 0, 0]] and not truncated.any()


def test_empty_completion_is_just_eos():
    mask, truncated = completion_mask_from_ids(torch.tensor([[0, 0]]), eos_ids=[0])
    assert mask.tolist() == [[1, 0]] and not truncated.any()


def test_hf_sampler_fields_and_groups(tiny_policy):
    model, tok = tiny_policy
    torch.manual_seed(0)
    prompts = ["Compute 12+3-4.\n", "Compute (5+2)*3-1.\n", "Compute 40-9-9+2.\n"]
    r = HFSampler(model, tok).generate(prompts, n=4, max_new_tokens=40)
    B, C = r.completion_ids.shape
    assert B == 12 and r.group_index.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert len(r.completions) == 12 and r.prompt_ids.shape[0] == 12
    lengths = r.completion_mask.sum(-1).long()
    for i in range(B):
        n = int(lengths[i])
        if not r.truncated[i]:  # the last kept token is EOS, everything after it is padding
            assert r.completion_ids[i, n - 1].item() == tok.eos_token_id
        assert (r.completion_mask[i, n:] == 0).all()
        assert r.completions[i] == tok.decode(r.completion_ids[i, :n], skip_special_tokens=True)
    # behaviour log-probs are those of the sampled tokens: negative where kept, 0 on padding
    assert (r.behavior_logprobs[r.completion_mask.bool()] <= 0).all()
    assert (r.behavior_logprobs[~r.completion_mask.bool()] == 0).all()


def test_truncation_flag_at_the_limit(tiny_policy):
    model, tok = tiny_policy
    r = HFSampler(model, tok).generate(["Compute 12+3-4+5.\n"], n=3, max_new_tokens=4)
    assert r.truncated.all() and r.completion_mask.sum().item() == 12


def test_training_logprobs_match_the_sampler_and_ignore_left_padding(tiny_policy):
    """Recomputing log-probs with the training forward gives the sampler's values (ratio 1), and a
    left-padded row gives the same log-probs as the same row alone (position ids skip padding)."""
    model, tok = tiny_policy
    torch.manual_seed(1)
    r = HFSampler(model, tok).generate(["Compute 3+4-1.\n", "Compute (11+9)*2+7.\n"], n=2, max_new_tokens=40)
    C = r.completion_ids.shape[1]
    with torch.no_grad():
        lp, ent = completion_logprobs(model, r.input_ids, r.attention_mask, C, with_entropy=True)
        m = r.completion_mask.bool()
        # the sampler records them from generate's incremental (KV-cache) forward: float32 rounding only
        assert torch.allclose(lp[m], r.behavior_logprobs[m], atol=2e-4)
        assert (ent[m] >= 0).all()
        # the shorter prompt (row 0) is left-padded in the batch; alone it has no padding
        alone = r.select(torch.tensor([0]))
        keep = alone.prompt_mask[0].bool()
        ids = torch.cat([alone.prompt_ids[:, keep], alone.completion_ids], 1)
        att = torch.cat([alone.prompt_mask[:, keep], alone.completion_mask.long()], 1)
        lp_alone, _ = completion_logprobs(model, ids, att, C)
        assert torch.allclose(lp_alone[0][m[0]], lp[0][m[0]], atol=1e-5)


def test_recorded_logprobs_match_a_forward_pass_at_any_temperature_and_chunking(tiny_policy):
    """The log-probs recorded during generate (no second forward) equal a training forward's, at a
    temperature other than 1 and with the rows split over several generate calls of different lengths."""
    model, tok = tiny_policy
    torch.manual_seed(2)
    sampler = HFSampler(model, tok, batch_size=3)
    r = sampler.generate(
        ["Compute 3+4-1.\n", "Compute 9-8+7-6+5-4.\n"], n=4, max_new_tokens=40, temperature=0.7
    )
    C = r.completion_ids.shape[1]
    with torch.no_grad():
        lp, _ = completion_logprobs(model, r.input_ids, r.attention_mask, C, temperature=0.7)
    m = r.completion_mask.bool()
    assert torch.allclose(lp[m], r.behavior_logprobs[m], atol=2e-4)  # KV-cache vs full forward: rounding
    assert (r.behavior_logprobs[~m] == 0).all() and m.sum() > 8 * 5
    # a wrong temperature or an off-by-one token alignment would be far outside that tolerance
    with torch.no_grad():
        lp_t1, _ = completion_logprobs(model, r.input_ids, r.attention_mask, C, temperature=1.0)
    assert (lp_t1[m] - r.behavior_logprobs[m]).abs().max() > 1e-2
    assert (lp[:, :-1][m[:, 1:]] - r.behavior_logprobs[:, 1:][m[:, 1:]]).abs().max() > 1e-2
    off = HFSampler(model, tok, compute_logprobs=False).generate(["Compute 3+4-1.\n"], n=2, max_new_tokens=20)
    assert (off.behavior_logprobs == 0).all()


def test_a_truncated_continuation_after_a_shorter_prefix_gets_no_eos_from_the_padding(tiny_policy):
    """Prefix-RFT's hybrids: rows with prefixes of 10, 0 and 5 tokens, continuations cut at 6 new tokens
    (too few to finish). A row whose prefix is shorter than the longest ends in padding, and the tiny
    tokenizer's pad id is its EOS id: the mask must stop after the 6 sampled tokens and the row count as
    truncated (before the fix it gained an EOS with behaviour log-prob 0, 15 nats off the trainer's).
    Behaviour log-probs equal the trainer's on every sampled token."""
    model, tok = tiny_policy
    assert tok.pad_token_id == tok.eos_token_id  # what makes the case
    torch.manual_seed(0)
    prompts = ["Compute 12+3-4.\n", "Compute (5+2)*3-1.\n", "Compute 40-9-9+2.\n"]
    solution = tok("12+3-4\n15-4\n11\n\\boxed{11}", add_special_tokens=False)["input_ids"]
    prefixes = [solution[:10], [], solution[:5]]
    r = HFSampler(model, tok).generate(prompts, n=2, max_new_tokens=6, prefix_ids=prefixes)
    assert r.completion_ids.shape[1] == 10 + 6
    for row in range(6):
        k = len(prefixes[row // 2])
        assert r.completion_ids[row, :k].tolist() == prefixes[row // 2]
        length = int(r.completion_mask[row].sum())
        assert length <= k + 6 and (r.completion_mask[row, :length] == 1).all()
        assert bool(r.truncated[row]) == (tok.eos_token_id not in r.completion_ids[row, k:length].tolist())
        if r.truncated[row]:
            assert length == k + 6, (row, length)
    assert r.truncated[4] and r.truncated[5]  # 6 tokens cannot finish this working
    ids = torch.cat([r.prompt_ids, r.completion_ids], 1)
    attention = torch.cat([r.prompt_mask, r.completion_mask], 1)
    logprobs = completion_logprobs(model, ids, attention, r.completion_ids.shape[1])[0]
    sampled = r.completion_mask.clone()
    for row in range(6):
        sampled[row, : len(prefixes[row // 2])] = 0
    assert ((logprobs - r.behavior_logprobs).abs() * sampled).max() < 1e-4


def teacher_forced_sampling_logprobs(model, rollout, temperature: float, top_p: float) -> torch.Tensor:
    """[B, C] log-probs of the rollout's tokens under ``sampling_scores`` of a full forward pass: what the
    sampler should have recorded, computed without the sampler."""
    from common.model import position_ids_from_mask

    C = rollout.completion_ids.shape[1]
    with torch.no_grad():
        logits = model(
            input_ids=rollout.input_ids, attention_mask=rollout.attention_mask,
            position_ids=position_ids_from_mask(rollout.attention_mask),
        ).logits[:, -C - 1 : -1]  # fmt: skip
    scores = torch.stack([sampling_scores(logits[:, t], temperature, top_p) for t in range(C)], dim=1)
    return torch.log_softmax(scores, -1).gather(-1, rollout.completion_ids[..., None]).squeeze(-1)


def test_top_p_behaviour_logprobs_are_the_nucleus_distribution_and_raw_ones_are_not(tiny_policy):
    """With top-p < 1 the sampler records the log-probs of the distribution it drew from (temperature, then
    the nucleus renormalised) as behavior_logprobs, and the temperature-only ones as raw_logprobs, which the
    trainer's completion_logprobs reproduce. Every drawn token lies in its nucleus."""
    model, tok = tiny_policy
    torch.manual_seed(3)
    r = HFSampler(model, tok).generate(["Compute 3+4-1.\n", "Compute (11+9)*2+7.\n"], n=4, max_new_tokens=40,
                                       temperature=0.7, top_p=0.9)  # fmt: skip
    m = r.completion_mask.bool()
    C = r.completion_ids.shape[1]
    want = teacher_forced_sampling_logprobs(model, r, 0.7, 0.9)
    assert torch.isfinite(want[m]).all()  # no drawn token was outside its nucleus
    assert torch.allclose(r.behavior_logprobs[m], want[m], atol=2e-4)
    with torch.no_grad():
        raw, _ = completion_logprobs(model, r.input_ids, r.attention_mask, C, temperature=0.7)
    assert torch.allclose(r.raw_logprobs[m], raw[m], atol=2e-4)
    mass = torch.exp(r.raw_logprobs[m] - r.behavior_logprobs[m])
    assert (mass <= 1 + 1e-5).all() and (mass >= 0.9 - 1e-5).all() and (mass < 1 - 1e-3).any()


def test_sampling_scores_keep_the_same_nucleus_as_transformers():
    """The nucleus rule is transformers' TopPLogitsWarper's (and vLLM's): the same tokens survive."""
    from transformers.generation.logits_process import TopPLogitsWarper

    torch.manual_seed(0)
    logits = torch.randn(64, 50) * 3
    for top_p in (0.3, 0.7, 0.9, 0.99):
        ours = torch.isfinite(sampling_scores(logits, 1.0, top_p))
        theirs = torch.isfinite(TopPLogitsWarper(top_p)(None, logits.clone()))
        assert torch.equal(ours, theirs), top_p
    assert torch.equal(sampling_scores(logits, 0.5, 1.0), logits / 0.5)

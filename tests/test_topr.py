"""TOPR's pure functions against hand-computed values and gradient identities on a toy policy
(specs: core-methods.md §3, "CPU tests" 1-5), plus a short end-to-end run and an exact resume on the
tiny world."""

import math
import os
import signal

import pytest
import torch

import algos.topr as topr
from algos.topr import (
    Args,
    anna_karenina_keep,
    build_dataset,
    effective_positive_share,
    main,
    positive_weight_share,
    ratio_logprobs,
    topr_aggregate_loss,
    topr_token_loss,
    topr_weights,
    validate,
)
from common.rollout import Rollout
from common.tracking import read_jsonl

LEVELS = ["seq", "seq-mean", "token"]


def toy_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """A context-free toy policy: position t draws from softmax(logits[t]). ``logits [C, V]``,
    ``tokens [N, C]`` -> token log-probs ``[N, C]``."""
    logp_all = torch.log_softmax(logits, dim=-1)  # [C, V]
    return logp_all.gather(-1, tokens.T).T  # [N, C]


def topr_loss(logprobs, behavior, mask, rewards, baseline=0.0, level="seq", agg="seq-mean-token-sum"):
    """The loss exactly as algos/topr.py assembles it for one mini-batch."""
    weights = topr_weights(
        ratio_logprobs(logprobs.detach(), mask, level), ratio_logprobs(behavior, mask, level), rewards
    )
    per_token = topr_token_loss(logprobs, weights, rewards, baseline)
    return topr_aggregate_loss(per_token, mask, agg, mask.shape[0], int(mask.sum()))


def toy_batch(seed=0, N=6, C=5, V=7):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(C, V, generator=gen).requires_grad_(True)
    tokens = torch.randint(V, (N, C), generator=gen)
    mask = torch.ones(N, C)
    mask[1, 3:] = 0  # sequences of different lengths
    mask[4, 2:] = 0
    return logits, tokens, mask


def grad_of(loss_fn, logits):
    logits.grad = None
    loss = loss_fn()
    loss.backward()
    return loss.detach(), logits.grad.clone()


# --- CPU test 1: all-positive data is SFT, whatever μ is -----------------------------------------


@pytest.mark.parametrize("level", LEVELS)
def test_all_positive_batch_is_sft_and_independent_of_mu(level):
    logits, tokens, mask = toy_batch()
    N = tokens.shape[0]
    rewards = torch.ones(N)
    sft_loss, sft_grad = grad_of(lambda: -(toy_logprobs(logits, tokens) * mask).sum() / N, logits)
    for mu_seed in (1, 2):  # two unrelated behaviour policies
        behavior = torch.randn(tokens.shape, generator=torch.Generator().manual_seed(mu_seed)) * 3 - 2
        loss, grad = grad_of(lambda b=behavior: topr_loss(toy_logprobs(logits, tokens), b, mask, rewards, level=level), logits)  # fmt: skip
        assert loss.item() == pytest.approx(sft_loss.item(), rel=1e-6)
        assert torch.allclose(grad, sft_grad, atol=1e-7)


# --- CPU test 2: on-policy (π = μ) TOPR is REINFORCE with ±1 rewards --------------------------------


@pytest.mark.parametrize("level", LEVELS)
def test_on_policy_topr_is_reinforce_with_plus_minus_one(level):
    logits, tokens, mask = toy_batch(seed=3)
    rewards = torch.tensor([1.0, -1.0, -1.0, 1.0, -1.0, -1.0])
    N = len(rewards)
    behavior = toy_logprobs(logits, tokens).detach()  # μ = π

    def reinforce():
        return -(rewards * (toy_logprobs(logits, tokens) * mask).sum(-1)).sum() / N

    want_loss, want_grad = grad_of(reinforce, logits)
    loss, grad = grad_of(lambda: topr_loss(toy_logprobs(logits, tokens), behavior, mask, rewards, level=level), logits)  # fmt: skip
    assert loss.item() == pytest.approx(want_loss.item(), rel=1e-6)
    assert torch.allclose(grad, want_grad, atol=1e-7)
    # the weights themselves are all exactly 1
    w = topr_weights(ratio_logprobs(behavior, mask, level), ratio_logprobs(behavior, mask, level), rewards)
    assert torch.equal(w, torch.ones_like(w))


# --- CPU test 3: the weight is 1 above μ, π/μ below it, and carries no gradient ---------------------


def test_negative_weight_values_and_no_gradient_through_the_weight():
    behavior = torch.tensor([-2.0, -2.0, -2.0])
    logp = torch.tensor([-2.0 + 2.0, -2.0 + math.log(0.3), -2.0 + math.log(0.3)], requires_grad=True)
    rewards = torch.tensor([-1.0, -1.0, 1.0])  # two negatives (π/μ = e², 0.3), one positive at π/μ = 0.3
    weights = topr_weights(logp, behavior, rewards)
    assert weights.tolist() == pytest.approx([1.0, 0.3, 1.0], rel=1e-6)
    assert weights[0].item() == 1.0  # exactly 1, not e² clipped to almost 1
    assert not weights.requires_grad
    topr_token_loss(logp[:, None], weights, rewards, 0.0).sum().backward()
    # d/dlogp of −sg(α) R logp = −α R: [1, 0.3, −1]. A weight that leaked its gradient would add −R α logp.
    assert logp.grad.tolist() == pytest.approx([1.0, 0.3, -1.0], rel=1e-6)


def test_weights_are_finite_for_extreme_log_ratios():
    w = topr_weights(torch.tensor([1000.0, -1000.0, 0.0]), torch.zeros(3), -torch.ones(3))
    assert w.tolist() == [1.0, 0.0, 1.0]


def test_token_level_weights_broadcast_rewards_over_tokens():
    logp = torch.log(torch.tensor([[0.5, 0.2], [0.5, 0.2]]))
    behavior = torch.log(torch.tensor([[0.25, 0.4], [0.25, 0.4]]))
    w = topr_weights(logp, behavior, torch.tensor([-1.0, 1.0]))  # token ratios [2, 0.5]
    assert torch.allclose(w, torch.tensor([[1.0, 0.5], [1.0, 1.0]]))


# --- CPU test 4: repeated SGD on one negative: TOPR's gradient fades, naive REINFORCE's does not ------


def sgd_on_one_negative(taper: bool, steps=300, lr=1.0):
    C, V = 5, 4
    logits = torch.zeros(C, V, requires_grad=True)  # μ(y) = (1/4)^5
    tokens = torch.tensor([[0, 1, 2, 3, 0]])
    mask, rewards = torch.ones(1, C), torch.tensor([-1.0])
    behavior = toy_logprobs(logits, tokens).detach()
    norms = []
    for _ in range(steps):
        logprobs = toy_logprobs(logits, tokens)
        w = topr_weights(
            ratio_logprobs(logprobs.detach(), mask, "seq"), ratio_logprobs(behavior, mask, "seq"), rewards
        )
        if not taper:
            w = torch.ones_like(w)
        loss = topr_aggregate_loss(
            topr_token_loss(logprobs, w, rewards, 0.0), mask, "seq-mean-token-sum", 1, C
        )
        logits.grad = None
        loss.backward()
        norms.append(logits.grad.norm().item())
        with torch.no_grad():
            logits -= lr * logits.grad
    log_ratio = (toy_logprobs(logits, tokens) - behavior).sum().item()
    return norms, log_ratio


def test_repeated_sgd_on_a_negative_gradient_decays_for_topr_not_for_naive_reinforce():
    topr_norms, topr_log_ratio = sgd_on_one_negative(taper=True)
    naive_norms, naive_log_ratio = sgd_on_one_negative(taper=False)
    assert topr_norms[0] == pytest.approx(naive_norms[0])  # π = μ at the start: identical first step
    assert topr_norms[-1] < 0.01 * topr_norms[0]  # the push stops once the negative is unlearned
    assert all(b <= a + 1e-9 for a, b in zip(topr_norms[1:], topr_norms[2:]))  # and keeps fading
    assert min(naive_norms) >= 0.9 * naive_norms[0]  # naive REINFORCE never lets go
    assert -15 < topr_log_ratio < 0  # π(y)/μ(y) falls, but only logarithmically slowly
    assert naive_log_ratio < -200  # log π → −∞ linearly: the collapse TOPR avoids


# --- CPU test 5: the baseline sets the effective share of positives p̃ -------------------------------


@pytest.mark.parametrize("c", [-0.5, 0.0, 0.3, 0.8])
def test_weight_sums_reproduce_the_effective_positive_share(c):
    N, num_pos = 20, 5  # p = 0.25
    p = num_pos / N
    rewards = torch.tensor([1.0] * num_pos + [-1.0] * (N - num_pos))
    logp = torch.linspace(-9.0, -3.0, N).requires_grad_(True)  # one sequence log-likelihood each, π = μ
    weights = topr_weights(logp, logp.detach(), rewards)
    topr_aggregate_loss(topr_token_loss(logp[:, None], weights, rewards, c), torch.ones(N, 1), "seq-mean-token-sum", N, N).backward()  # fmt: skip
    grad_share = (
        logp.grad[rewards > 0].abs().sum() / logp.grad.abs().sum()
    )  # the share in the actual gradient
    assert grad_share.item() == pytest.approx(effective_positive_share(p, c), rel=1e-5)
    assert positive_weight_share(weights, rewards, c) == pytest.approx(
        effective_positive_share(p, c), rel=1e-6
    )


def test_effective_positive_share_hand_computed():
    assert effective_positive_share(0.25, 0.0) == 0.25  # c = 0: the raw share
    assert effective_positive_share(0.25, 0.3) == pytest.approx(0.25 * 0.7 / 1.15)  # 0.1522
    assert effective_positive_share(0.5, 0.6) == pytest.approx(0.2)  # p = 1/2: p̃ = (1 − c)/2
    shares = [effective_positive_share(0.1, c) for c in (-0.9, -0.5, 0.0, 0.5, 0.9)]
    assert shares == sorted(shares, reverse=True)  # a larger baseline, fewer effective positives


def test_positive_weight_share_with_every_weight_zero_is_none_not_nan():
    assert positive_weight_share(torch.zeros(3), -torch.ones(3), 0.0) is None


# --- the remaining pieces, by hand ------------------------------------------------------------------


def test_ratio_logprobs_hand_computed():
    lp = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -0.5, -0.5]])
    m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    assert ratio_logprobs(lp, m, "seq").tolist() == [-3.0, -1.5]
    assert ratio_logprobs(lp, m, "seq-mean").tolist() == [-1.5, -0.5]
    assert ratio_logprobs(lp, m, "token").tolist() == [[-1.0, -2.0, 0.0], [-0.5, -0.5, -0.5]]
    with pytest.raises(ValueError):
        ratio_logprobs(lp, m, "sequence")


def test_seq_and_seq_mean_ratios_differ_on_long_sequences():
    """Four tokens each 0.5 below μ: the sequence ratio is e^-2, the length-normalised one e^-0.5."""
    lp, behavior, m = torch.full((1, 4), -1.5), torch.full((1, 4), -1.0), torch.ones(1, 4)
    r = torch.tensor([-1.0])
    seq = topr_weights(ratio_logprobs(lp, m, "seq"), ratio_logprobs(behavior, m, "seq"), r)
    seq_mean = topr_weights(ratio_logprobs(lp, m, "seq-mean"), ratio_logprobs(behavior, m, "seq-mean"), r)
    assert seq.item() == pytest.approx(math.exp(-2)) and seq_mean.item() == pytest.approx(math.exp(-0.5))


def test_token_loss_hand_computed():
    loss = topr_token_loss(torch.full((2, 1), -2.0), torch.tensor([1.0, 0.3]), torch.tensor([1.0, -1.0]), 0.5)
    assert loss.flatten().tolist() == pytest.approx([1.0, -0.9])  # −(1·0.5)(−2), −(0.3·(−1.5))(−2)


LOSSES = torch.tensor([[1.0, 1.0, 0.0], [4.0, 0.0, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize("mode,expected", [("seq-mean-token-sum", 3.0), ("token-mean", 2.0)])
def test_aggregation_hand_computed(mode, expected):
    assert topr_aggregate_loss(LOSSES, MASK, mode, num_sequences=2, num_tokens=3).item() == pytest.approx(
        expected
    )


@pytest.mark.parametrize("mode", ["seq-mean-token-sum", "token-mean"])
def test_micro_batches_sum_to_the_batch_loss(mode):
    torch.manual_seed(0)
    losses, mask = torch.randn(6, 5), (torch.rand(6, 5) > 0.3).float()
    mask[:, 0] = 1
    n_tok = int(mask.sum())
    full = topr_aggregate_loss(losses, mask, mode, 6, n_tok)
    parts = sum(
        topr_aggregate_loss(losses[i : i + 2], mask[i : i + 2], mode, 6, n_tok) for i in range(0, 6, 2)
    )
    assert parts.item() == pytest.approx(full.item(), rel=1e-6)


def test_anna_karenina_keeps_one_correct_and_all_incorrect():
    correct = torch.tensor(
        [[False, True, False, True], [False, False, False, False], [True, True, True, True]]
    )
    keep = anna_karenina_keep(correct)
    assert keep.tolist() == [[True, True, True, False], [True, True, True, True], [True, False, False, False]]
    assert (keep & correct).sum(1).tolist() == [1, 0, 1]  # at most one positive per question


class FakeSampler:
    """Returns fixed completions (two questions × three samples) with recognisable behaviour log-probs."""

    TEXTS = ["\\boxed{5}", "\\boxed{4}", "\\boxed{5}", "\\boxed{1}", "\\boxed{2}", "\\boxed{3}"]

    def generate(self, prompts, n, max_new_tokens, temperature=1.0, top_p=1.0):
        B = len(prompts) * n
        return Rollout(
            prompt_ids=torch.zeros(B, 2, dtype=torch.long), prompt_mask=torch.ones(B, 2, dtype=torch.long),
            completion_ids=torch.ones(B, 3, dtype=torch.long), completion_mask=torch.ones(B, 3),
            behavior_logprobs=-torch.arange(B, dtype=torch.float)[:, None].expand(B, 3).clone(),
            truncated=torch.zeros(B, dtype=torch.bool), completions=list(self.TEXTS),
            group_index=torch.arange(len(prompts)).repeat_interleave(n),
        )  # fmt: skip


@pytest.mark.parametrize(
    "curation,negatives,rows,rewards",
    [
        ("uniform", "topr", [0, 1, 2, 3, 4, 5], [1, -1, 1, -1, -1, -1]),
        ("anna-karenina", "topr", [0, 1, 3, 4, 5], [1, -1, -1, -1, -1]),
        ("uniform", "drop", [0, 2], [1, 1]),
        ("anna-karenina", "drop", [0], [1]),
    ],
)
def test_build_dataset_curates_and_scores_plus_minus_one(curation, negatives, rows, rewards):
    """Question 1 (gold 5) is solved by samples 0 and 2, question 2 (gold 7) by none."""
    from common.data import Example
    from common.verify import Verifier

    args = Args(samples_per_question=3, curation=curation, negatives=negatives, baseline=0.5)
    verifier = Verifier()
    try:
        data = build_dataset(args, FakeSampler(), verifier, None, [Example("q1", "5"), Example("q2", "7")])
    finally:
        verifier.close()
    assert data["rewards"].tolist() == rewards
    assert data["rollout"].completions == [FakeSampler.TEXTS[i] for i in rows]
    assert data["rollout"].behavior_logprobs[:, 0].tolist() == [-float(i) for i in rows]  # μ's log-probs kept
    stats = data["stats"]
    assert stats["accuracy"] == pytest.approx(2 / 6) and stats["reward_mean"] == pytest.approx(-1 / 3)
    assert stats["zero_std_frac"] == 0.5  # question 2: all wrong (its negatives are still trained on)
    p = rewards.count(1) / len(rewards)
    assert stats["positive_frac"] == pytest.approx(p)
    assert stats["effective_positive_share"] == pytest.approx(effective_positive_share(p, 0.5))


def test_validate_rejects_bad_flags():
    for bad in [dict(baseline=1.0), dict(baseline=-1.0), dict(temperature=0.0), dict(epochs=0)]:
        with pytest.raises(SystemExit):
            validate(Args(**bad))
    validate(Args())


def test_importing_the_script_has_no_side_effects(capsys):
    import importlib

    importlib.reload(topr)
    assert capsys.readouterr().out == ""


# --- end to end on the tiny world -------------------------------------------------------------------

# 2 iterations × 16 completions, 2 optimizer steps each
SMALL = dict(
    questions_per_iteration=4, samples_per_question=4, iterations=2, epochs=1, batch_size=8,
    micro_batch_size=8, eval_problems=12, eval_n=2, max_new_tokens=40, log_completions=2, eval_every=0,
)  # fmt: skip


@pytest.fixture(scope="module")
def reference_run(tiny_world_dir, tmp_path_factory):
    """One small uninterrupted run, shared by the smoke test and the resume test."""
    out_dir = tmp_path_factory.mktemp("topr")
    return out_dir, main(Args(output_dir=str(out_dir), run_name="ref", **SMALL))


def test_topr_smoke_run(reference_run):
    out_dir, out = reference_run
    rows = [r for r in read_jsonl(out_dir / "ref" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and [r["iteration"] for r in rows] == [1, 1, 2, 2]
    for key in ["loss", "grad_norm", "entropy", "logprob_mismatch", "accuracy", "reward_mean", "dataset_size",
                "positive_frac", "effective_positive_share", "positive_weight_share", "clip_frac", "lr"]:  # fmt: skip
        assert key in rows[-1], key
    assert rows[0]["dataset_size"] == 16
    assert rows[0]["reward_mean"] == pytest.approx(2 * rows[0]["accuracy"] - 1)
    # each iteration's first mini-batch is on-policy (μ = the policy that just sampled it) ...
    for first in (rows[0], rows[2]):
        assert first["logprob_mismatch"] < 1e-4
        assert first["negative_weight_mean"] in (None, pytest.approx(1.0, abs=1e-4))
    assert rows[1]["logprob_mismatch"] > rows[0]["logprob_mismatch"]  # ... the second is off-policy
    assert "eval/pass@1" not in rows[1] and "eval/pass@2" in rows[3]
    assert (out_dir / "ref" / "dataset.pt").stat().st_size > 0
    assert (out_dir / "ref" / "results.txt").read_text().count("pass@1") == 1
    assert 0.0 <= out["final"]["pass@1"] <= 1.0


@pytest.mark.slow
def test_topr_interrupted_inside_an_iteration_resumes_exactly(reference_run, monkeypatch):
    """Ctrl-C after step 3 (inside iteration 2), then --resume: dataset.pt is reloaded, not resampled,
    and every step's metrics equal the uninterrupted run's."""
    out_dir, _ = reference_run

    class InterruptAtStep3(topr.Tracker):
        def log(self, step, metrics):
            super().log(step, metrics)
            if step == 3:
                os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(topr, "Tracker", InterruptAtStep3)
    with pytest.raises(SystemExit) as stopped:
        main(Args(output_dir=str(out_dir), run_name="cut", **SMALL))
    assert stopped.value.code == 130
    monkeypatch.setattr(topr, "Tracker", InterruptAtStep3.__base__)
    main(Args(output_dir=str(out_dir), run_name="cut", resume=True, **SMALL))
    got, want = read_jsonl(out_dir / "cut" / "metrics.jsonl"), read_jsonl(out_dir / "ref" / "metrics.jsonl")
    assert [r["step"] for r in got] == [r["step"] for r in want] == [0, 1, 2, 3, 4]
    for g, w in zip(got, want):
        for key in ["loss", "grad_norm", "accuracy", "negative_weight_mean", "eval/pass@1"]:
            if w.get(key) is None:  # not logged at this step (or nothing to average): must match too
                assert g.get(key) is None, (g["step"], key)
            else:
                assert g.get(key) == pytest.approx(w[key], rel=1e-5, abs=1e-6), (g["step"], key)


@pytest.mark.slow
def test_sft_on_positives_only_flag_drops_the_negatives(tiny_world_dir, tmp_path):
    small = {**SMALL, "iterations": 1, "eval_problems": 4, "eval_n": 1}
    main(Args(output_dir=str(tmp_path), run_name="sft", negatives="drop", **small))
    rows = [r for r in read_jsonl(tmp_path / "sft" / "metrics.jsonl") if r["step"] > 0]
    assert rows, "no positives among 16 samples: pick another seed"
    for r in rows:
        assert r["positive_frac"] == 1.0 and r["negative_weight_mean"] is None and r["clip_frac"] is None
        assert r["dataset_size"] == round(r["accuracy"] * 16) and r["positive_weight_share"] == 1.0

"""MaxRL's advantage against hand-computed values, its expected gradient against the paper's formula (every reward
pattern enumerated), its update against grpo.py's and against the paper's estimator written out, its mechanism
in the default run, and its learning on the tiny world."""

import itertools
import json
import math

import pytest
import torch

from algos.maxrl import Args, maxrl_advantages, validate


def test_advantages_hand_computed():
    rewards = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0],  # μ = 1/4: the right one N/K − 1 = 3, the wrong ones −1
            [1.0, 1.0, 1.0, 0.0],  # μ = 3/4: 1/3 and −1
            [1.0, 1.0, 1.0, 1.0],  # μ = 1: no signal
            [0.0, 0.0, 0.0, 0.0],  # μ = 0: A = 0 (Algorithm 1), not 0/0
        ]
    )
    expected = torch.tensor([[3.0, -1, -1, -1], [1 / 3, 1 / 3, 1 / 3, -1], [0, 0, 0, 0], [0, 0, 0, 0]])
    assert torch.allclose(maxrl_advantages(rewards), expected, atol=1e-6)
    # G = 8 with one right answer: 7 and −1 (GRPO's z-scores would be 2.47 and −0.35)
    one_of_eight = maxrl_advantages(torch.tensor([[1.0] + [0.0] * 7]))
    assert one_of_eight[0, 0].item() == pytest.approx(7.0) and one_of_eight[0, 1].item() == pytest.approx(
        -1.0
    )
    # non-binary, non-negative rewards: μ = 1, (2 − 1)/1 and (0 − 1)/1
    assert maxrl_advantages(torch.tensor([[2.0, 0.0]])).tolist() == [[1.0, -1.0]]


def test_advantages_are_dr_grpo_over_the_pass_rate():
    """(r − μ)/μ: the centred reward (Dr. GRPO's advantage) divided by the group's pass rate, so a prompt solved
    once in eight (μ = 1/8: factor 8) weighs 6 times more than one solved six times in eight (μ = 6/8: 8/6)."""
    hard, easy = torch.tensor([[1.0] + [0.0] * 7]), torch.tensor([[1.0] * 6 + [0.0] * 2])
    centred_hard, centred_easy = hard - hard.mean(), easy - easy.mean()
    assert torch.allclose(maxrl_advantages(hard), centred_hard * 8)
    assert torch.allclose(maxrl_advantages(easy), centred_easy * 8 / 6)
    assert maxrl_advantages(hard).sum().item() == pytest.approx(0.0, abs=1e-6)


def expected_estimate(p: float, N: int, advantage_fn) -> float:
    """E[(1/N) Σ_i A_i S_i] for one Bernoulli action (success probability p = σ(θ), score S = r − p), every one of
    the 2^N reward patterns enumerated: the expected gradient with respect to θ, as a multiple of ∇p = p(1 − p)."""
    total = 0.0
    for pattern in itertools.product([0.0, 1.0], repeat=N):
        rewards = torch.tensor([pattern])
        probability = math.prod(p if r else 1 - p for r in pattern)
        scores = rewards - p  # ∇_θ log π(r) for the logit θ
        total += probability * float((advantage_fn(rewards) * scores).sum()) / N
    return total / (p * (1 - p))


@pytest.mark.parametrize("N", [2, 4, 6])
@pytest.mark.parametrize("p", [0.05, 0.3, 0.8])
def test_expected_gradient_is_the_truncated_likelihood_minus_the_dropped_control_variate(p, N):
    """The paper's Section 4-5: the conditional estimator (1/K) Σ r_i S_i is unbiased for ∇J_N, whose weight on
    ∇p is w(p) = (1 − (1 − p)^N)/p (Σ_{k≤N} (1/k) ∇pass@k); Algorithm 1 also drops the control variate when
    K = 0, which removes (1 − p)^(N−1) from the weight. REINFORCE (A = r − μ, times N/(N − 1)) has w = 1."""
    truncated = (1 - (1 - p) ** N) / p
    assert expected_estimate(p, N, maxrl_advantages) == pytest.approx(
        truncated - (1 - p) ** (N - 1), rel=1e-5
    )

    def unbiased(
        rewards,
    ):  # the control variate kept where K = 0: A = N r/K − 1, and −1 everywhere when K = 0
        K = rewards.sum()
        return N * rewards / K - 1 if K > 0 else -torch.ones_like(rewards)

    assert expected_estimate(p, N, unbiased) == pytest.approx(truncated, rel=1e-5)
    assert expected_estimate(p, N, lambda r: (r - r.mean()) * N / (N - 1)) == pytest.approx(1.0, rel=1e-5)
    # and the weight tends to maximum likelihood's 1/p as N grows
    assert (1 - (1 - p) ** 200) / p == pytest.approx(1 / p, rel=1e-4)


def test_bad_flags_fail_in_validate():
    with pytest.raises(SystemExit, match="--group-size must be >= 2"):
        validate(Args(group_size=1))


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
def model_and_rollout(random_model_dir):
    from common.model import load_policy
    from common.rollout import HFSampler

    model, tokenizer = load_policy(str(random_model_dir))
    torch.manual_seed(0)
    rollout = HFSampler(model, tokenizer).generate(["1+1=", "2+3=", "7-4="], n=4, max_new_tokens=6)
    return model, rollout


def test_update_equals_grpo_scale_none_over_the_pass_rate(model_and_rollout):
    """The identity at ρ = 1: with every group at pass rate 1/4, maxrl.update_policy's gradient is grpo.py's
    `--scale-rewards none` gradient (its REINFORCE variant, seq-mean-token-sum-norm) times 4, for the same batch
    through both files' update_policy."""
    import algos.grpo as grpo
    import algos.maxrl as maxrl

    model, rollout = model_and_rollout
    rewards = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0]])  # [Q, G], μ = 1/4 everywhere
    flags = dict(loss_agg="seq-mean-token-sum-norm", max_grad_norm=1e9, max_new_tokens=6)
    ours, theirs = RecordingOptimizer(model), RecordingOptimizer(model)
    maxrl.update_policy(model, ours, {"rollout": rollout, "advantages": maxrl_advantages(rewards).view(-1)},
                        maxrl.Args(**flags))  # fmt: skip
    grpo.update_policy(model, theirs, {"rollout": rollout, "advantages": grpo.grpo_advantages(rewards, "none").view(-1)},
                       grpo.Args(scale_rewards="none", **flags))  # fmt: skip
    assert len(ours.grads) == len(theirs.grads) == 1
    assert torch.allclose(ours.grads[0], 4 * theirs.grads[0], rtol=1e-4, atol=1e-7)
    assert theirs.grads[0].abs().sum() > 0


def test_update_is_the_papers_estimator_written_out(model_and_rollout):
    """With --loss-agg seq-mean-token-sum (each completion's log-prob a token sum) and pass rates 1/4, 2/4 and 3/4,
    the update's gradient is −(N/B) Σ_q [(1/K_q) Σ_{i right} ∇log π(o_i) − (1/N) Σ_i ∇log π(o_i)] (the paper's
    Eq. for the estimator with its control variate), each ∇log π(o_i) computed on its own by autograd."""
    import algos.maxrl as maxrl
    from common.model import completion_logprobs

    model, rollout = model_and_rollout
    rewards = torch.tensor([[1.0, 0, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]])
    optimizer = RecordingOptimizer(model)
    args = maxrl.Args(loss_agg="seq-mean-token-sum", max_grad_norm=1e9, max_new_tokens=6)
    maxrl.update_policy(
        model, optimizer, {"rollout": rollout, "advantages": maxrl_advantages(rewards).view(-1)}, args
    )
    params = [p for p in model.parameters() if p.requires_grad]
    C = rollout.completion_ids.shape[1]
    scores = []  # ∇ log π(o_i), one flat vector per completion
    for i in range(12):
        logprobs, _ = completion_logprobs(
            model, rollout.input_ids[i : i + 1], rollout.attention_mask[i : i + 1], C
        )
        total = (logprobs * rollout.completion_mask[i : i + 1]).sum()
        scores.append(torch.cat([g.flatten() for g in torch.autograd.grad(total, params)]))
    scores = torch.stack(scores).view(3, 4, -1)  # [Q, N, P]
    N, B = 4, 12
    estimate = sum(
        (scores[q][rewards[q] > 0].sum(0) / rewards[q].sum() - scores[q].mean(0)) for q in range(3)
    )  # Σ_q of the paper's estimator
    assert torch.allclose(optimizer.grads[0], -N / B * estimate, rtol=1e-4, atol=1e-6)


def test_mechanism_fires_in_the_default_run(tiny_world_dir, tmp_path):
    """The default run (grpo.py's schedule, token-mean) on the tiny world, shortened: the logged mean 1/μ over
    the prompts with a signal is above 1 (hard prompts weighted up against Dr. GRPO) at every step."""
    from algos.maxrl import main
    from common.tracking import read_jsonl

    main(Args(num_steps=2, prompts_per_step=6, group_size=4, max_new_tokens=64, eval_problems=2, eval_n=1,
              eval_every=0, save_every=100, output_dir=str(tmp_path), run_name="m"))  # fmt: skip
    rows = [r for r in read_jsonl(tmp_path / "m" / "metrics.jsonl") if r["step"] > 0]
    assert len(rows) == 2 and all(r["inverse_pass_rate"] > 1 for r in rows), rows
    assert all(r["grad_norm"] > 0 for r in rows)


@pytest.mark.slow
def test_maxrl_learns_on_the_tiny_world(tiny_world_dir, tmp_path):
    """30 steps of 8 prompts x 8 samples (seed 1, its defaults) raise held-out pass@1 (60 problems x 4 samples);
    measured: 0.338 -> 0.496 (+0.158)."""
    from algos.maxrl import main

    out = main(
        Args(num_steps=30, prompts_per_step=8, group_size=8, max_new_tokens=64, eval_problems=60, eval_n=4,
             eval_every=0, save_every=1000, output_dir=str(tmp_path), run_name="learn", seed=1)
    )  # fmt: skip
    gain = out["final"]["pass@1"] - out["base"]["pass@1"]
    print(json.dumps({"base": out["base"]["pass@1"], "final": out["final"]["pass@1"]}))
    assert gain >= 0.05, f"held-out pass@1 {out['base']['pass@1']:.3f} -> {out['final']['pass@1']:.3f}"

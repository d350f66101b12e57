"""Numerics for every method: property-based tests (hypothesis) of each file's pure advantage / weight /
loss functions on random rewards, masks and log-probs, and every script's real training loop on
degenerate batches (all correct, all wrong, empty completions, completions truncated at the limit,
batches in which every sample is filtered out): no NaN or inf reaches a loss, a logged metric or a weight.

Log-probs are drawn from [-50, 0] (a sampled token far below e^-50 is not drawn in practice) and the
policy's log-prob from within ±10 of the old/behaviour one (a ratio up to e^10); masks are right-padded
with any completion length from 0 (an empty row) to C (truncated at the limit)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from smoke import smoke_args

import common.run
from algos import bnpo, dapo, expo, grpo, maxrl, nsr, opd, oreal, topr
from common.registry import methods

PROPERTY = settings(max_examples=60, deadline=None)


def finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


@st.composite
def binary_rewards(draw, min_group: int = 2) -> torch.Tensor:
    """rewards [Q, G] in {0, 1}; uniform groups (all correct / all wrong) are drawn often."""
    Q, G = draw(st.integers(1, 5)), draw(st.integers(min_group, 8))
    rows = [draw(st.sampled_from(["ones", "zeros", "mixed"])) for _ in range(Q)]
    values = [
        [1.0] * G
        if kind == "ones"
        else [0.0] * G
        if kind == "zeros"
        else draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=G, max_size=G))  # fmt: skip
        for kind in rows
    ]
    return torch.tensor(values)


@st.composite
def token_batch(draw, min_rows: int = 1) -> dict:
    """A batch of B completions of up to C tokens: log-probs, old/behaviour/reference log-probs, mask."""
    B, C = draw(st.integers(min_rows, 6)), draw(st.integers(1, 6))
    floats = lambda lo, hi: st.lists(st.floats(lo, hi, width=32), min_size=B * C, max_size=B * C)  # noqa: E731
    logprobs = torch.tensor(draw(floats(-50, 0))).view(B, C)
    delta = torch.tensor(draw(floats(-10, 10))).view(B, C)
    old = (logprobs + delta).clamp(max=0)  # the policy moved by at most e^±10 since sampling
    ref = torch.tensor(draw(floats(-50, 0))).view(B, C)
    lengths = draw(st.lists(st.integers(0, C), min_size=B, max_size=B))  # 0: empty, C: truncated
    mask = (torch.arange(C)[None, :] < torch.tensor(lengths)[:, None]).float()
    return {"logprobs": logprobs, "old": old, "ref": ref, "mask": mask, "B": B, "C": C}


def micro_batches(B: int, size: int) -> list[slice]:
    return [slice(i, i + size) for i in range(0, B, size)]


# ---------------------------------------------------------------------------------------------------
# GRPO (and the identical copies in ExPO)
# ---------------------------------------------------------------------------------------------------


@PROPERTY
@given(rewards=binary_rewards(), scale=st.sampled_from(["group", "none"]))
def test_grpo_advantages_are_finite_sum_to_zero_per_group_and_vanish_on_uniform_groups(rewards, scale):
    for module in (grpo, expo):
        advantages = module.grpo_advantages(rewards, scale)
        assert finite(advantages)
        assert torch.allclose(advantages.sum(dim=1), torch.zeros(len(rewards)), atol=1e-4)
        uniform = (rewards == rewards[:, :1]).all(dim=1)
        assert (advantages[uniform] == 0).all()
        assert (torch.sign(advantages) == torch.sign(rewards - rewards.mean(1, keepdim=True))).all()


@PROPERTY
@given(batch=token_batch(), clip=st.floats(0.0, 0.5), advantage_scale=st.floats(0.0, 10.0), data=st.data())
def test_grpo_loss_is_finite_and_micro_batches_add_up(batch, clip, advantage_scale, data):
    B, mask = batch["B"], batch["mask"]
    advantages = torch.tensor(data.draw(st.lists(st.floats(-1, 1), min_size=B, max_size=B))) * advantage_scale
    logprobs = batch["logprobs"].clone().requires_grad_(True)
    per_token_loss, _ = grpo.clipped_surrogate(logprobs, batch["old"], advantages, clip, clip)
    per_token_loss = per_token_loss + 0.04 * grpo.k3_kl(logprobs, batch["ref"])
    per_token_loss = per_token_loss * torch.exp(batch["old"] - batch["ref"]).clamp(max=2.0)  # token TIS
    size = data.draw(st.integers(1, B))  # any micro-batch size, dividing B or not
    num_tokens = int(mask.sum())
    for mode in ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"):
        whole = grpo.aggregate_loss(per_token_loss, mask, mode, B, num_tokens, batch["C"])
        parts = [grpo.aggregate_loss(per_token_loss[mb], mask[mb], mode, B, num_tokens, batch["C"]) for mb in micro_batches(B, size)]  # fmt: skip
        assert finite(whole) and torch.allclose(sum(parts), whole, rtol=1e-4, atol=1e-3)
    whole.backward()
    assert finite(logprobs.grad)
    assert (logprobs.grad[mask == 0] == 0).all()  # padding (and empty rows) get no gradient


@PROPERTY
@given(batch=token_batch())
def test_k3_kl_is_finite_non_negative_and_zero_at_the_reference(batch):
    kl = grpo.k3_kl(batch["logprobs"], batch["ref"])
    assert finite(kl) and (kl >= -1e-6).all()
    assert (grpo.k3_kl(batch["logprobs"], batch["logprobs"]) == 0).all()


# ---------------------------------------------------------------------------------------------------
# NSR / PSR / W-REINFORCE
# ---------------------------------------------------------------------------------------------------


@PROPERTY
@given(
    rewards=binary_rewards(min_group=1), lam=st.floats(0.0, 2.0), objective=st.sampled_from(nsr.OBJECTIVES)
)
def test_nsr_advantages_depend_on_the_own_reward_only(rewards, lam, objective):
    correct = rewards.view(-1).bool()
    advantages, keep = nsr.nsr_advantages(correct, objective, lam)
    assert finite(advantages) and advantages.shape == keep.shape == correct.shape
    assert (advantages[~keep] == 0).all()  # dropped samples carry nothing
    positive = {"psr": 1.0, "nsr": 0.0, "w-reinforce": lam, "reinforce": 1.0}[objective]
    negative = {"psr": 0.0, "nsr": -1.0, "w-reinforce": -1.0, "reinforce": -1.0}[objective]
    assert torch.allclose(advantages[correct], torch.tensor(positive))
    assert torch.allclose(advantages[~correct], torch.tensor(negative))
    if objective == "nsr" and correct.all():  # everything filtered out: the loop skips the step
        assert not keep.any()


# ---------------------------------------------------------------------------------------------------
# BNPO
# ---------------------------------------------------------------------------------------------------


@PROPERTY
@given(rewards=binary_rewards(), max_weight=st.sampled_from([10.0, 1e6]))
def test_bnpo_advantages_are_finite_bounded_zero_on_uniform_groups_and_sum_to_zero(rewards, max_weight):
    alpha, beta = bnpo.beta_params(rewards.mean(dim=1))
    assert math.isfinite(alpha) and math.isfinite(beta) and alpha >= 1 and beta >= 1
    advantages = bnpo.bnpo_advantages(rewards, alpha, beta, max_weight)
    assert finite(advantages) and (advantages.abs() <= max_weight).all()
    pass_rate = rewards.mean(dim=1)
    assert (advantages[(pass_rate == 0) | (pass_rate == 1)] == 0).all()  # p ∈ {0, 1}: exactly zero
    assert torch.allclose(advantages.sum(dim=1), torch.zeros(len(rewards)), atol=1e-3 * max(1.0, advantages.abs().max().item()))  # fmt: skip
    components = torch.stack([rewards, torch.ones_like(rewards), rewards.flip(1)])  # [K, Q, G]
    decomposed, params = bnpo.decomposed_advantages(components, max_weight)
    assert finite(decomposed) and len(params) == 3


@PROPERTY
@given(pass_rates=st.lists(st.floats(0.0, 1.0), min_size=0, max_size=8))
def test_beta_fit_is_finite_for_any_pass_rates(pass_rates):
    alpha, beta = bnpo.beta_params(torch.tensor(pass_rates))
    assert math.isfinite(alpha) and math.isfinite(beta) and alpha >= 1 and beta >= 1


@PROPERTY
@given(batch=token_batch(), dual_clip=st.sampled_from([0.0, 3.0]), data=st.data())
def test_bnpo_loss_is_finite(batch, dual_clip, data):
    B, mask = batch["B"], batch["mask"]
    advantages = torch.tensor(data.draw(st.lists(st.floats(-1e3, 1e3), min_size=B, max_size=B)))
    logprobs = batch["logprobs"].clone().requires_grad_(True)
    per_token_loss, _ = bnpo.dual_clipped_surrogate(logprobs, batch["old"], advantages, 0.2, 0.28, dual_clip)
    loss = bnpo.aggregate_loss(per_token_loss, mask, bnpo.Args().loss_agg, B, int(mask.sum()), batch["C"])
    loss.backward()
    assert finite(loss, logprobs.grad)


# ---------------------------------------------------------------------------------------------------
# TOPR
# ---------------------------------------------------------------------------------------------------


@PROPERTY
@given(batch=token_batch(), level=st.sampled_from(["seq", "seq-mean", "token"]), baseline=st.floats(-0.9, 0.9), data=st.data())  # fmt: skip
def test_topr_weights_are_one_for_positives_in_zero_one_for_negatives_and_the_loss_is_finite(batch, level, baseline, data):  # fmt: skip
    B, mask = batch["B"], batch["mask"]
    rewards = torch.tensor(data.draw(st.lists(st.sampled_from([1.0, -1.0]), min_size=B, max_size=B)))
    logprobs = batch["logprobs"].clone().requires_grad_(True)
    logp = topr.ratio_logprobs(logprobs, mask, level)
    behavior_logp = topr.ratio_logprobs(batch["old"], mask, level)
    weights = topr.topr_weights(logp, behavior_logp, rewards)
    assert finite(weights) and not weights.requires_grad
    rows = rewards.view(-1, *[1] * (weights.dim() - 1)).expand_as(weights)
    assert (weights[rows > 0] == 1).all()
    assert (weights[rows < 0] >= 0).all() and (weights[rows < 0] <= 1).all()
    per_token_loss = topr.topr_token_loss(logprobs, weights, rewards, baseline)
    size = data.draw(st.integers(1, B))
    for mode in ("seq-mean-token-sum", "token-mean"):
        whole = topr.aggregate_loss(per_token_loss, mask, mode, B, int(mask.sum()), batch["C"])
        parts = [topr.aggregate_loss(per_token_loss[mb], mask[mb], mode, B, int(mask.sum()), batch["C"]) for mb in micro_batches(B, size)]  # fmt: skip
        assert finite(whole) and torch.allclose(sum(parts), whole, rtol=1e-4, atol=1e-3)
    whole.backward()
    assert finite(logprobs.grad)
    share = topr.positive_weight_share(weights if weights.dim() == 1 else weights.mean(-1), rewards, baseline)
    assert share is None or 0.0 <= share <= 1.0


def test_topr_dataset_with_every_sample_filtered_out_is_empty_and_finite():
    """--negatives drop on an all-wrong batch: no row, finite statistics (the loop then makes no update, so
    no loss divides by zero sequences: test_degenerate_batches_keep_losses_metrics_and_weights_finite)."""
    from common.rollout_types import Rollout

    B, C = 4, 3
    rollout = Rollout(
        torch.zeros(B, 2, dtype=torch.long), torch.ones(B, 2), torch.zeros(B, C, dtype=torch.long), torch.ones(B, C),
        torch.zeros(B, C), torch.zeros(B, dtype=torch.bool), ["x"] * B, torch.arange(2).repeat_interleave(2),
    )  # fmt: skip
    data = topr.build_dataset(rollout, torch.zeros(2, 2, dtype=torch.bool), topr.Args(negatives="drop"))
    assert len(data["rewards"]) == 0 and data["rollout"].completion_mask.shape == (0, C)
    assert data["stats"]["dataset_size"] == 0
    assert all(math.isfinite(v) for v in data["stats"].values())


@PROPERTY
@given(rewards=binary_rewards(min_group=1), baseline=st.floats(-0.99, 0.99))
def test_topr_curation_and_effective_share(rewards, baseline):
    correct = rewards.bool()
    keep = topr.anna_karenina_keep(correct)
    assert (keep[~correct]).all()  # every incorrect completion is kept
    assert ((keep & correct).sum(dim=1) == correct.any(dim=1).long()).all()  # one correct, where any
    p = rewards.mean().item()
    share = topr.effective_positive_share(p, baseline)
    assert math.isfinite(share) and -1e-9 <= share <= 1 + 1e-9


# ---------------------------------------------------------------------------------------------------
# OREAL
# ---------------------------------------------------------------------------------------------------


@PROPERTY
@given(rewards=binary_rewards(), seed=st.integers(0, 2**31 - 1))
def test_oreal_advantages_and_pair_filter(rewards, seed):
    advantages = oreal.oreal_advantages(rewards)
    assert finite(advantages)
    assert torch.allclose(advantages.sum(dim=1), torch.zeros(len(rewards)), atol=1e-5)  # leave-one-out
    uniform = (rewards == rewards[:, :1]).all(dim=1)
    assert (advantages[uniform] == 0).all()
    keep = oreal.pair_filter(rewards.bool(), torch.Generator().manual_seed(seed))
    assert (keep.sum(dim=1) == torch.where(uniform, 0, 2)).all()  # a pair from each mixed group, else nothing
    assert ((keep & rewards.bool()).sum(dim=1) == (~uniform).long()).all()


@PROPERTY
@given(batch=token_batch(), score_scale=st.floats(0.0, 100.0), data=st.data())
def test_oreal_weights_and_losses_are_finite(batch, score_scale, data):
    B, mask = batch["B"], batch["mask"]
    positive = torch.tensor(data.draw(st.lists(st.booleans(), min_size=B, max_size=B)))
    scores = (batch["ref"] / 50 * score_scale).requires_grad_(True)  # RM scores, any sign and size
    weights = oreal.token_weights(scores, mask, positive)
    assert (
        finite(weights) and (weights >= 0).all() and (weights <= 1).all() and (weights[mask == 0] == 0).all()
    )
    rm_loss = oreal.token_rm_loss(scores, mask, positive, num_sequences=B)
    rm_loss.backward()
    assert finite(rm_loss, scores.grad) and rm_loss >= 0
    advantages = torch.tensor(data.draw(st.lists(st.floats(-8, 8), min_size=B, max_size=B)))
    logprobs = batch["logprobs"].clone().requires_grad_(True)
    num_positive = int((mask * positive[:, None]).sum())
    positive_loss, negative_loss = oreal.oreal_policy_loss(
        logprobs, mask, positive, advantages, weights, num_positive, int(mask.sum()) - num_positive
    )
    (positive_loss + negative_loss).backward()
    assert finite(positive_loss, negative_loss, logprobs.grad)


# ---------------------------------------------------------------------------------------------------
# ExPO
# ---------------------------------------------------------------------------------------------------


@PROPERTY
@given(batch=token_batch(), num_questions=st.integers(0, 8), beta=st.floats(0.01, 10.0))
def test_expo_explanation_nll_and_dpo_loss_are_finite(batch, num_questions, beta):
    nll = expo.explanation_nll(batch["logprobs"], batch["mask"], num_questions)
    assert finite(nll) and nll >= 0
    sums = (batch["logprobs"] * batch["mask"]).sum(-1)  # [B] sequence log-probs, down to -300
    losses, margins = expo.dpo_loss(sums, sums.flip(0), (batch["ref"] * batch["mask"]).sum(-1), sums, beta)
    assert finite(losses, margins) and (losses >= 0).all()


@PROPERTY
@given(rewards=binary_rewards())
def test_expo_explains_all_wrong_groups_exactly(rewards):
    assert torch.equal(expo.questions_to_explain(rewards, "all-wrong"), (rewards == 0).all(dim=1))
    assert expo.questions_to_explain(rewards, "all").all()


# ---------------------------------------------------------------------------------------------------
# DAPO
# ---------------------------------------------------------------------------------------------------


@PROPERTY
@given(rewards=binary_rewards(), data=st.data())
def test_dapo_rewards_penalty_and_filter_are_finite_and_bounded(rewards, data):
    Q, G = rewards.shape
    max_len = data.draw(st.integers(1, 64))
    cache_len = data.draw(st.integers(0, max_len - 1))
    lengths = torch.tensor(data.draw(st.lists(st.integers(0, max_len + 5), min_size=Q * G, max_size=Q * G))).view(Q, G)  # fmt: skip
    penalty = dapo.overlong_penalty(lengths, max_len, cache_len)
    assert finite(penalty) and (penalty <= 0).all() and (penalty >= -1).all()
    assert (penalty[lengths <= max_len - cache_len] == 0).all()
    if cache_len > 0:
        assert (penalty[lengths >= max_len] == -1).all()
    shaped = dapo.dapo_rewards(rewards, lengths, max_len, cache_len)
    assert finite(shaped) and torch.allclose(shaped - penalty, 2 * rewards - 1, atol=1e-6)
    keep = dapo.keep_groups(rewards)
    assert torch.equal(keep, (rewards.mean(dim=1) > 0) & (rewards.mean(dim=1) < 1))
    assert finite(dapo.grpo_advantages(shaped[keep]))


@PROPERTY
@given(rounds=st.lists(binary_rewards(), min_size=1, max_size=6), num_groups=st.integers(1, 8), max_rounds=st.integers(1, 6))  # fmt: skip
def test_dapo_dynamic_sampling_never_overfills_and_stops_when_full(rounds, num_groups, max_rounds):
    draws = iter(rounds + [torch.zeros(1, 2)] * max_rounds)  # all-wrong rounds after the drawn ones
    masks, kept = dapo.dynamic_sampling(lambda: next(draws), num_groups, max_rounds)
    trained = [int(m.sum()) for m in masks]
    assert 1 <= len(masks) <= max_rounds and sum(trained) <= num_groups
    assert sum(trained) == num_groups or len(masks) == max_rounds  # full, or at the cap
    assert sum(trained[:-1]) < num_groups  # never a round more than needed
    for mask, accuracy in zip(masks, rounds):
        assert not (mask & ~dapo.keep_groups(accuracy)).any()  # only groups of mixed accuracy are trained
    assert kept >= sum(trained)


# ---------------------------------------------------------------------------------------------------
# MaxRL and on-policy distillation
# ---------------------------------------------------------------------------------------------------


@PROPERTY
@given(rewards=binary_rewards())
def test_maxrl_advantages_are_finite_sum_to_zero_and_vanish_without_a_right_answer(rewards):
    advantages = maxrl.maxrl_advantages(rewards)
    assert finite(advantages)
    assert torch.allclose(advantages.sum(dim=1), torch.zeros(len(rewards)), atol=1e-4)
    uniform = (rewards == rewards[:, :1]).all(dim=1)
    assert (advantages[uniform] == 0).all()
    G = rewards.shape[1]
    right = rewards > 0
    K = right.sum(dim=1, keepdim=True).float()
    expected = torch.where(K > 0, G / K.clamp(min=1) - 1, 0.0).expand_as(
        rewards
    )  # N/K − 1 for a right answer
    assert torch.allclose(advantages[right], expected[right], atol=1e-4)


@PROPERTY
@given(batch=token_batch(), clip=st.floats(0.0, 0.5))
def test_distillation_loss_is_finite_and_micro_batches_add_up(batch, clip):
    B, mask = batch["B"], batch["mask"]
    logprobs = batch["logprobs"].clone().requires_grad_(True)
    per_token_loss, _ = opd.distillation_surrogate(logprobs, batch["old"], batch["ref"], clip, clip)
    tokens = int(mask.sum())
    full = opd.aggregate_loss(per_token_loss, mask, "token-mean", B, tokens, batch["C"])
    full.backward()
    assert finite(per_token_loss, full, logprobs.grad)
    parts = sum(
        opd.aggregate_loss(per_token_loss[s], mask[s], "token-mean", B, tokens, batch["C"])
        for s in micro_batches(B, 2)
    )
    assert math.isclose(float(parts), float(full), rel_tol=1e-4, abs_tol=1e-4)


# ---------------------------------------------------------------------------------------------------
# Every script's real loop on degenerate batches
# ---------------------------------------------------------------------------------------------------

# Every method of the registry with its defaults at the smoke size (tests/smoke.py), several steps on each
# batch, plus the variants whose degenerate cases differ (a filter that can drop everything).
RUNS = {key: (key, ["--updates-per-batch=2", "--micro-batch-size=3"]) for key in methods()}
RUNS.update({
    "grpo-kl": ("grpo", ["--updates-per-batch=2", "--micro-batch-size=3", "--kl-coef=0.05"]),
    "nsr-nsr": ("nsr", ["--objective=nsr", "--updates-per-batch=2", "--micro-batch-size=3", "--kl-coef=0.05"]),
    "expo-dpo": ("expo", ["--variant=dpo"]),
    "topr-drop": ("topr", ["--negatives=drop"]),
    "dapo-filter": ("dapo", ["--overlong-filter"]),
})  # fmt: skip
SCENARIOS = ["all-correct", "all-wrong", "empty", "truncated"]


class ScriptedSampler:
    """Rollouts with chosen completions (the Sampler protocol of common.rollout), log-probs from the model:
    "empty" = EOS at once; "truncated" = no EOS within max_new_tokens; otherwise random lengths."""

    def __init__(self, model, tokenizer, scenario: str):
        from common.model import eos_token_ids

        self.model, self.tokenizer, self.scenario = model, tokenizer, scenario
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.digits = tokenizer("0123456789+-= ", add_special_tokens=False)["input_ids"]
        self.generator = torch.Generator().manual_seed(0)

    def update_weights(self, model):
        self.model = model

    @torch.no_grad()
    def generate(self, prompts, n, max_new_tokens, temperature=1.0, top_p=1.0, prefix_ids=None):
        from common.model import completion_logprobs
        from common.rollout import Rollout, completion_mask_from_ids

        rows = [p for p in prompts for _ in range(n)]
        enc = self.tokenizer(rows, return_tensors="pt", padding=True, add_special_tokens=False)
        B, eos = len(rows), self.eos_ids[0]
        picks = torch.randint(len(self.digits), (B, max_new_tokens), generator=self.generator)
        ids = torch.tensor(self.digits)[picks]  # [B, max_new_tokens] no EOS: truncated
        if self.scenario == "empty":
            ids = torch.full((B, 1), eos)
        elif self.scenario != "truncated":  # EOS after a random number of tokens, or none
            lengths = torch.randint(max_new_tokens + 1, (B,), generator=self.generator)
            ids = torch.where(torch.arange(max_new_tokens)[None, :] >= lengths[:, None], eos, ids)
        mask, truncated = completion_mask_from_ids(ids, self.eos_ids)
        rollout = Rollout(
            enc["input_ids"], enc["attention_mask"], ids, mask, torch.zeros_like(mask), truncated,
            self.tokenizer.batch_decode(ids, skip_special_tokens=True),
            torch.arange(len(prompts)).repeat_interleave(n),
        )  # fmt: skip
        if temperature > 0:
            logprobs, _ = completion_logprobs(self.model, rollout.input_ids, rollout.attention_mask, ids.shape[1], temperature)  # fmt: skip
            rollout.behavior_logprobs = rollout.raw_logprobs = logprobs * mask
        return rollout


class FixedVerifier:
    """Every completion right (or every one wrong), whatever it says."""

    def __init__(self, correct: bool):
        self.correct = correct

    def verify_batch(self, completions, golds):
        from common.verify import VerifyResult

        return [VerifyResult(True, self.correct, "0") for _ in completions]

    def close(self):
        pass


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("run", list(RUNS))
def test_degenerate_batches_keep_losses_metrics_and_weights_finite(
    run, scenario, random_model_dir, tmp_path, monkeypatch, capsys
):
    import importlib

    from safetensors.torch import load_file

    from common.checkpoint import latest_checkpoint
    from common.tracking import read_jsonl
    from common.verify import Verifier

    script, flags = RUNS[run]
    module = importlib.import_module(f"algos.{script}")
    monkeypatch.setattr(module, "make_sampler", lambda kind, model, tokenizer, **kw: ScriptedSampler(model, tokenizer, scenario))  # fmt: skip
    if scenario in ("all-correct", "all-wrong"):
        monkeypatch.setattr(common.run, "Verifier", lambda: FixedVerifier(scenario == "all-correct"))
    else:  # what the real verifier makes of empty or cut-off completions
        monkeypatch.setattr(common.run, "Verifier", lambda: Verifier(num_workers=1))
    args = smoke_args(
        script, "--num-steps=2", "--max-new-tokens=6", "--eval-problems=1", "--eval-n=1", "--eval-every=1", *flags,
        model_name_or_path=str(random_model_dir), output_dir=str(tmp_path), run_name=run,
    )  # fmt: skip
    out = module.main(args)

    assert "[tracking] warning" not in capsys.readouterr().err  # how a NaN/inf metric shows up
    rows = [r for r in read_jsonl(tmp_path / run / "metrics.jsonl") if r["step"] > 0]
    for row in rows:
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float)), row
        if "loss" in row:
            assert row["loss"] is not None and row["grad_norm"] is not None, row
    if run == "nsr-nsr" and scenario == "all-correct" or run == "topr-drop" and scenario != "all-correct":
        assert all(r.get("grad_norm", 0.0) == 0.0 for r in rows)  # every sample filtered out: no update
    if run.startswith("dapo") and scenario in ("all-correct", "all-wrong") or run == "dapo-filter" and scenario == "truncated":  # fmt: skip
        assert all(
            r.get("grad_norm", 0.0) == 0.0 for r in rows
        )  # no group kept / every token filtered: no update
    weights = load_file(latest_checkpoint(tmp_path / run) / "model" / "model.safetensors")
    assert all(bool(torch.isfinite(w).all()) for w in weights.values())
    assert math.isfinite(out["final"]["pass@1"])


class AlternatingVerifier:
    """Within every call, completion 0, 2, 4, ... right and 1, 3, 5, ... wrong: every batch of an even size
    (each round here: 2 prompts x 4) is exactly half right, whatever the completions say."""

    def verify_batch(self, completions, golds):
        from common.verify import VerifyResult

        return [VerifyResult(True, i % 2 == 0, "0") for i in range(len(completions))]

    def close(self):
        pass


@pytest.mark.parametrize("key", list(methods()))
def test_accuracy_is_the_verifiers_share_of_right_answers_in_every_method(
    key, random_model_dir, tmp_path, monkeypatch
):
    """``accuracy`` means one thing in every file (common.run.SHARED_METRICS): the verifier's share of right
    answers among the step's completions, whatever the method's own reward is (RLCR's Brier term, OPD's
    teacher, ExPO's explanations, a DAPO round that is filtered)."""
    import importlib

    from common.tracking import read_jsonl

    module = importlib.import_module(f"algos.{key}")
    monkeypatch.setattr(module, "make_sampler", lambda kind, model, tokenizer, **kw: ScriptedSampler(model, tokenizer, "all-correct"))  # fmt: skip
    monkeypatch.setattr(common.run, "Verifier", AlternatingVerifier)
    args = smoke_args(
        key, "--num-steps=2", "--max-new-tokens=6", "--eval-problems=1", "--eval-n=1",
        model_name_or_path=str(random_model_dir), output_dir=str(tmp_path), run_name=key,
    )  # fmt: skip
    module.main(args)
    rows = [r for r in read_jsonl(tmp_path / key / "metrics.jsonl") if r["step"] > 0 and "accuracy" in r]
    assert len(rows) >= 2 and all(r["accuracy"] == 0.5 for r in rows), [r["accuracy"] for r in rows]

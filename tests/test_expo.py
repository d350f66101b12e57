"""ExPO's maths against hand-computed values (specs: core-methods.md §5, "CPU tests" 1-4), the
self-explanation step with a stub sampler, and short end-to-end runs on the tiny world."""

import math
import re

import pytest
import torch

import algos.expo as expo
import algos.grpo as grpo
from common.data import build_prompt
from common.rollout import Rollout, completion_mask_from_ids
from common.tiny_task import HINT_TEMPLATE
from common.tiny_world import build_tokenizer
from common.tracking import read_jsonl
from common.verify import Verifier

# ---------------------------------------------------------------------------------------------------
# A toy policy: one free logit vector per position, log π(y_t) = log_softmax(θ_t)[y_t]. Its NLL gradient
# is known in closed form: ∂/∂θ_t [−log softmax(θ_t)[y]] = softmax(θ_t) − onehot(y).
# ---------------------------------------------------------------------------------------------------

V, T = 5, 4  # vocabulary size, positions


def toy_logprobs(theta: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``theta [T, V]``, ``tokens [N, L]`` (L <= T) -> log-probs ``[N, L]``."""
    logp = torch.log_softmax(theta, dim=-1)  # [T, V]
    return logp[torch.arange(tokens.shape[1]), tokens]  # [N, L]


ROLLOUT_TOKENS = torch.tensor([[0, 1, 2, 3], [1, 1, 0, 2], [4, 3, 3, 0], [2, 0, 1, 1]])  # [G=4, 4]
ROLLOUT_MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]]).float()
EXPLANATION = torch.tensor([[3, 4, 2]])  # [1, 3] one explanation (all positions real)


def total_loss(theta, rewards, weight, module):
    """The batch loss the script minimises for one question: GRPO part (+ β · ExP-SFT term for expo)."""
    advantages = module.grpo_advantages(rewards).view(-1)  # [G]
    logp = toy_logprobs(theta, ROLLOUT_TOKENS)
    per_token, _ = module.clipped_surrogate(logp, logp.detach(), advantages, 0.2, 0.2)
    G = ROLLOUT_TOKENS.shape[0]
    loss = module.aggregate_loss(
        per_token, ROLLOUT_MASK, "seq-mean-token-mean", G, int(ROLLOUT_MASK.sum()), T
    )
    if module is expo:
        expl = toy_logprobs(theta, EXPLANATION)
        loss = loss + weight * expo.explanation_nll(expl, torch.ones_like(expl), num_questions=1)
    return loss


def grad_of(theta0, loss_fn):
    theta = theta0.clone().requires_grad_(True)
    loss = loss_fn(theta)
    loss.backward()
    return loss.detach(), theta.grad


THETA0 = torch.randn(T, V, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------------
# Pure functions, hand-computed
# ---------------------------------------------------------------------------------------------------


def test_questions_to_explain():
    rewards = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    assert expo.questions_to_explain(rewards, "all").tolist() == [True, True, True]
    assert expo.questions_to_explain(rewards, "all-wrong").tolist() == [False, True, False]
    with pytest.raises(ValueError):
        expo.questions_to_explain(rewards, "some")


def test_hint_prompt_keeps_latex_braces():
    template = "{question}\n\nThe correct final answer is {answer}. Put it within \\boxed{}."
    assert expo.hint_prompt("Find x.", "\\frac{1}{2}", template) == (
        "Find x.\n\nThe correct final answer is \\frac{1}{2}. Put it within \\boxed{}."
    )
    assert expo.hint_prompt("Compute 23+7-5.", "25", HINT_TEMPLATE) == (
        "Compute 23+7-5. The answer is 25. Show the working."
    )


def test_explanation_nll_hand_computed_and_summable_over_micro_batches():
    logp = torch.tensor([[-1.0, -3.0, 0.0], [-2.0, 0.0, 0.0], [-0.5, -0.5, -2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    # token means 2, 2, 1 -> sum 5, over Q = 10 questions of the batch
    assert expo.explanation_nll(logp, mask, 10).item() == pytest.approx(0.5)
    parts = expo.explanation_nll(logp[:2], mask[:2], 10) + expo.explanation_nll(logp[2:], mask[2:], 10)
    assert parts.item() == pytest.approx(0.5)


def test_dpo_loss_hand_computed():
    chosen, rejected = torch.tensor([-3.0, -1.0]), torch.tensor([-5.0, -5.0])
    losses, margins = expo.dpo_loss(
        chosen, rejected, torch.tensor([-3.0, -3.0]), torch.tensor([-5.0, -5.0]), 0.5
    )
    assert margins.tolist() == [0.0, 2.0]
    assert losses[0].item() == pytest.approx(math.log(2))
    assert losses[1].item() == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))))
    # at the reference, ∂L/∂log π(c̃) = −β/2 and ∂L/∂log π(o⁻) = +β/2
    c = torch.tensor([-3.0], requires_grad=True)
    r = torch.tensor([-5.0], requires_grad=True)
    expo.dpo_loss(c, r, torch.tensor([-3.0]), torch.tensor([-5.0]), 0.5)[0].sum().backward()
    assert c.grad.item() == pytest.approx(-0.25) and r.grad.item() == pytest.approx(0.25)


def test_grpo_functions_are_unchanged_copies():
    torch.manual_seed(0)
    rewards = (torch.rand(3, 5) > 0.5).float()
    assert torch.equal(expo.grpo_advantages(rewards), grpo.grpo_advantages(rewards))
    logp, old, adv = torch.randn(4, 6), torch.randn(4, 6), torch.randn(4)
    assert torch.equal(expo.clipped_surrogate(logp, old, adv, 0.2, 0.28)[0], grpo.clipped_surrogate(logp, old, adv, 0.2, 0.28)[0])  # fmt: skip
    mask = (torch.rand(4, 6) > 0.3).float()
    for mode in ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"]:
        assert expo.aggregate_loss(logp, mask, mode, 4, 9, 6) == grpo.aggregate_loss(
            logp, mask, mode, 4, 9, 6
        )


# ---------------------------------------------------------------------------------------------------
# CPU test 1: λ = 0 (--explanation-weight, the paper's β) gives GRPO's loss and gradient
# ---------------------------------------------------------------------------------------------------


def test_explanation_weight_zero_equals_grpo_loss_and_gradient():
    rewards = torch.tensor([[1.0, 0.0, 1.0, 0.0]])  # a mixed group: GRPO's gradient is not zero
    loss_grpo, grad_grpo = grad_of(THETA0, lambda th: total_loss(th, rewards, 0.0, grpo))
    loss_expo, grad_expo = grad_of(THETA0, lambda th: total_loss(th, rewards, 0.0, expo))
    assert grad_grpo.abs().sum() > 0
    assert loss_expo.item() == pytest.approx(loss_grpo.item(), abs=1e-7)
    assert torch.allclose(grad_expo, grad_grpo, atol=1e-7)
    # and β > 0 does change the gradient (so the comparison above can fail)
    _, grad_weighted = grad_of(THETA0, lambda th: total_loss(th, rewards, 0.04, expo))
    assert not torch.allclose(grad_weighted, grad_grpo, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# CPU test 2: all G samples wrong — GRPO gives nothing, the total gradient is λ × ∇NLL(c̃ | q)
# ---------------------------------------------------------------------------------------------------


def test_all_wrong_group_gradient_is_weight_times_explanation_nll_gradient():
    rewards = torch.zeros(1, 4)
    weight = 0.04
    _, grad_grpo_part = grad_of(THETA0, lambda th: total_loss(th, rewards, 0.0, expo))
    assert torch.equal(grad_grpo_part, torch.zeros(T, V))
    loss, grad = grad_of(THETA0, lambda th: total_loss(th, rewards, weight, expo))
    # closed form: the token-mean NLL of c̃ = (3, 4, 2) has gradient (softmax(θ_t) − onehot(c̃_t)) / 3 at t < 3
    probs = torch.softmax(THETA0, dim=-1)
    expected = torch.zeros(T, V)
    for t, y in enumerate(EXPLANATION[0].tolist()):
        expected[t] = (probs[t] - torch.nn.functional.one_hot(torch.tensor(y), V)) / 3
    assert torch.allclose(grad, weight * expected, atol=1e-7)
    nll = -torch.log(probs[torch.arange(3), EXPLANATION[0]]).mean()
    assert loss.item() == pytest.approx(weight * nll.item(), rel=1e-6)


# ---------------------------------------------------------------------------------------------------
# CPU test 3: the explanation is trained without the hint (the gold answer only in the target)
# ---------------------------------------------------------------------------------------------------


class StubSampler:
    """Answers a hinted prompt by reading the answer out of it. ``behaviour[question]`` says what its n
    samples write, in order: "ok" (working, then the boxed answer, then EOS), "wrong" (a boxed wrong
    answer) or "truncated" (the boxed answer but no EOS: cut off at the length limit)."""

    def __init__(self, tokenizer, behaviour: dict[str, list[str]]):
        self.tok, self.behaviour, self.calls = tokenizer, behaviour, []

    def generate(self, prompts, n, max_new_tokens, temperature=1.0, top_p=1.0):
        self.calls.append((list(prompts), n))
        texts, eos = [], []
        for prompt in prompts:
            question, answer = re.match(r"(.*) The answer is (\S+)\. Show the working\.\n$", prompt).groups()
            for kind in self.behaviour[question][:n]:
                boxed = answer if kind != "wrong" else str(int(answer) + 1)
                texts.append(f"{kind}: 1 + 2 = 3\n\\boxed{{{boxed}}}")
                eos.append(kind != "truncated")
        tok = self.tok
        enc = tok(
            [p for p in prompts for _ in range(n)],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
        rows = [
            tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] * e for t, e in zip(texts, eos)
        ]
        C = max(len(r) for r in rows) + 2
        space = tok(" ", add_special_tokens=False)["input_ids"][0]
        ids = torch.full((len(rows), C), tok.pad_token_id)
        for i, (r, e) in enumerate(zip(rows, eos)):
            ids[i, : len(r)] = torch.tensor(r)
            if not e:  # cut off at the length limit: text up to the last position, no EOS
                ids[i, len(r) :] = space
        mask, truncated = completion_mask_from_ids(ids, [tok.eos_token_id])
        completions = tok.batch_decode(ids, skip_special_tokens=True)
        return Rollout(enc["input_ids"], enc["attention_mask"], ids, mask, torch.zeros_like(mask), truncated,
                       completions, torch.arange(len(rows)))  # fmt: skip


def test_explanation_training_rows_have_no_hint_and_the_answer_only_in_the_target():
    tok = build_tokenizer()
    questions, golds = ["Compute 23+7-5.", "Compute (12+9)*3-4."], ["25", "59"]
    stub = StubSampler(tok, {questions[0]: ["ok", "ok"], questions[1]: ["wrong", "ok"]})
    hinted = [build_prompt(expo.hint_prompt(q, a, HINT_TEMPLATE), "plain") for q, a in zip(questions, golds)]
    assert all(a in h for a, h in zip(golds, hinted))  # the hint does state the answer
    found, texts = expo.sample_explanations(stub, Verifier(), hinted, golds, 2, 40, 1.0, 1.0)
    assert all(f is not None for f in found)
    plain = [build_prompt(q, "plain") for q in questions]
    rows = expo.explanation_rows(tok, plain, found, [0, 1])
    input_ids, attention_mask, completion_mask = rows.input_ids, rows.attention_mask, rows.completion_mask
    assert rows.group_index.tolist() == [0, 1]  # each row knows its question
    C = completion_mask.shape[1]
    for i, gold in enumerate(golds):
        context = tok.decode(input_ids[i, :-C][attention_mask[i, :-C].bool()])
        target = tok.decode(input_ids[i, -C:][completion_mask[i].bool()], skip_special_tokens=True)
        assert context == plain[i]
        assert gold not in context and "answer" not in context and "working" not in context
        assert target == texts[i] and f"\\boxed{{{gold}}}" in target
        assert input_ids[i, -C:][completion_mask[i].bool()][-1].item() == tok.eos_token_id  # EOS is trained
    # right-padded completions, nothing attended after them
    assert completion_mask.sum(-1).tolist() == [len(f) for f in found]


def test_explanations_keep_the_first_good_try_and_skip_wrong_or_unfinished_ones():
    tok = build_tokenizer()
    questions = ["Compute 3+4-1.", "Compute 9-2+5.", "Compute 8+8-3.", "Compute 7+1+1."]
    golds = ["6", "12", "13", "9"]
    stub = StubSampler(
        tok,
        {questions[0]: ["ok", "wrong", "ok"], questions[1]: ["wrong", "truncated", "ok"],
         questions[2]: ["wrong"] * 3, questions[3]: ["truncated"] * 3},
    )  # fmt: skip
    hinted = [build_prompt(expo.hint_prompt(q, a, HINT_TEMPLATE), "plain") for q, a in zip(questions, golds)]
    found, texts = expo.sample_explanations(stub, Verifier(), hinted, golds, 3, 40, 1.0, 1.0)
    assert [f is not None for f in found] == [True, True, False, False]
    assert texts[0].startswith("ok") and texts[1].startswith("ok")  # try 3 for question 1
    assert texts[2] is None and texts[3] is None  # all wrong / all cut off: skipped
    assert stub.calls == [(hinted, 3)]  # one sampler call, `tries` samples per question
    assert expo.sample_explanations(stub, Verifier(), [], [], 3, 40, 1.0, 1.0) == ([], [])


# ---------------------------------------------------------------------------------------------------
# CPU test 4: one ExP-DPO step raises log π(c̃ | q) − log π(o⁻ | q)
# ---------------------------------------------------------------------------------------------------


def test_one_dpo_step_raises_the_preferred_minus_dispreferred_margin():
    chosen, rejected = torch.tensor([[3, 4, 2, 0]]), torch.tensor([[1, 0, 4, 4]])  # [1, 4] each
    theta = THETA0.clone().requires_grad_(True)
    ref = THETA0.clone()

    def seq(th, tokens):
        return toy_logprobs(th, tokens).sum(-1)  # [1]

    margin_before = (seq(theta, chosen) - seq(theta, rejected)).item()
    losses, margins = expo.dpo_loss(
        seq(theta, chosen), seq(theta, rejected), seq(ref, chosen), seq(ref, rejected), 0.1
    )
    assert margins.item() == 0.0 and losses.item() == pytest.approx(math.log(2))
    losses.sum().backward()
    with torch.no_grad():
        theta -= 1.0 * theta.grad
    margin_after = (seq(theta, chosen) - seq(theta, rejected)).item()
    assert margin_after > margin_before + 1e-3


# ---------------------------------------------------------------------------------------------------
# End to end on the tiny world
# ---------------------------------------------------------------------------------------------------

# 80 new tokens: a careful six-step explanation is about 70 characters
SMALL = dict(
    prompts_per_step=4, group_size=4, eval_problems=4, eval_n=2, micro_batch_size=8, max_new_tokens=80,
    num_steps=2, eval_every=0, save_every=100, log_completions_every=1,
)  # fmt: skip


def test_expo_smoke_run_trains_explanations_without_the_hint(tiny_world_dir, tmp_path, monkeypatch):
    """The real loop: every explanation row's context is the plain prompt of its question (the hinted
    prompt minus the hint), the target verifies against the gold answer, and the counts are logged."""
    hinted_to_gold, seen_rows = {}, []
    real_sample, real_rows = expo.sample_explanations, expo.explanation_rows

    def spy_sample(sampler, verifier, hinted_prompts, golds, *args):
        hinted_to_gold.update(zip(hinted_prompts, golds))
        return real_sample(sampler, verifier, hinted_prompts, golds, *args)

    def spy_rows(tokenizer, prompts, completions, questions):
        seen_rows.extend(
            (p, tokenizer.decode(c, skip_special_tokens=True)) for p, c in zip(prompts, completions)
        )
        return real_rows(tokenizer, prompts, completions, questions)

    monkeypatch.setattr(expo, "sample_explanations", spy_sample)
    monkeypatch.setattr(expo, "explanation_rows", spy_rows)
    expo.main(expo.Args(output_dir=str(tmp_path), run_name="smoke", **SMALL))
    rows = [r for r in read_jsonl(tmp_path / "smoke" / "metrics.jsonl") if "reward_mean" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["explain_asked"] == 4  # --explain all
        assert r["explained"] + r["explain_skipped"] == 4
        assert r["explanation_samples"] == 4 * 4  # --explanation-tries 4
        assert 0 <= r["all_wrong_groups"] <= 4 and 0 <= r["explained_all_wrong"] <= r["explained"]
        assert math.isfinite(r["loss"]) and math.isfinite(r["explanation_nll"])
    assert sum(r["explained"] for r in rows) > 0  # the tiny base does use the hint
    assert len(seen_rows) == sum(r["explained"] for r in rows)
    verifier = Verifier()
    for context, target in seen_rows:
        question = context.removesuffix("\n")
        hinted = build_prompt(expo.hint_prompt(question, "ANSWER", HINT_TEMPLATE), "plain")
        matches = [g for h, g in hinted_to_gold.items() if h == hinted.replace("ANSWER", g)]
        assert len(matches) == 1, context  # the context is exactly the plain prompt of a hinted question
        assert "The answer is" not in context
        assert verifier.verify_batch([target], matches)[0].correct
    logged = read_jsonl(tmp_path / "smoke" / "completions.jsonl")
    assert any(row.get("explanation") for row in logged)


def test_explanation_weight_zero_run_is_exactly_grpo(random_model_dir, tmp_path):
    """λ = 0 samples no explanation, so the run is grpo.py's metric for metric (the random model: no world
    needed)."""
    small = {
        **SMALL,
        "model_name_or_path": str(random_model_dir),
        "max_new_tokens": 16,
        "updates_per_batch": 2,
    }
    expo.main(expo.Args(output_dir=str(tmp_path), run_name="expo0", explanation_weight=0.0, **small))
    grpo.main(grpo.Args(output_dir=str(tmp_path), run_name="grpo", **small))
    got = read_jsonl(tmp_path / "expo0" / "metrics.jsonl")
    want = read_jsonl(tmp_path / "grpo" / "metrics.jsonl")
    assert [r["step"] for r in got] == [r["step"] for r in want] == [0, 1, 2]
    for g, w in zip(got, want):
        for key in w:
            if key not in ("step_time", "samples_per_s", "time", "wall_time"):
                assert g[key] == pytest.approx(w[key], rel=1e-6, abs=1e-7), (g["step"], key)
        if g["step"] > 0:
            assert g["explanation_samples"] == 0 and g["explained"] == 0


def test_dpo_smoke_run(tiny_world_dir, tmp_path):
    expo.main(expo.Args(output_dir=str(tmp_path), run_name="dpo", variant="dpo", **SMALL))
    rows = [r for r in read_jsonl(tmp_path / "dpo" / "metrics.jsonl") if "reward_mean" in r]
    for r in rows:
        assert r["dpo_pairs"] == r["explained"] <= r["explain_asked"] <= 4
        assert r["batch_skipped"] == float(r["dpo_pairs"] == 0)
        assert all(math.isfinite(r[k]) for k in ["loss", "dpo_margin", "dpo_accuracy", "grad_norm"])
    assert rows[0]["dpo_margin"] == pytest.approx(0.0, abs=1e-4)  # step 1: the policy is the reference


def test_contradictory_flags_fail_early():
    with pytest.raises(SystemExit):
        expo.validate(expo.Args(variant="dpo", kl_coef=0.1))
    with pytest.raises(SystemExit):  # ExP-DPO has no GRPO term for the sampler correction to weight
        expo.validate(expo.Args(variant="dpo", rollout_is="token-tis"))
    with pytest.raises(SystemExit):
        expo.validate(expo.Args(hint_template="{question} Show the working."))
    with pytest.raises(SystemExit):
        expo.validate(expo.Args(explanation_tries=0))


def test_importing_the_script_has_no_side_effects(capsys):
    import importlib

    importlib.reload(expo)
    assert capsys.readouterr().out == ""


@pytest.mark.slow
def test_expo_learns_on_the_tiny_world(tiny_world_dir, tmp_path):
    """10 steps of 8 prompts × 8 rollouts plus 4 explanation tries per prompt (ExPO's defaults otherwise, seed
    1) raise held-out pass@1 (60 problems × 4 samples) by at least 0.04, training on verified
    self-explanations every step. Measured over seeds 1 / 2 / 3: +0.104 (0.338 -> 0.442) / +0.071 / +0.083;
    about 20 s of CPU on one thread (pytest's start excluded)."""
    out = expo.main(
        expo.Args(num_steps=10, prompts_per_step=8, group_size=8, max_new_tokens=64, eval_problems=60, eval_n=4,
                  eval_every=0, save_every=1000, output_dir=str(tmp_path), run_name="learn", seed=1)
    )  # fmt: skip
    rows = [r for r in read_jsonl(tmp_path / "learn" / "metrics.jsonl") if "loss" in r]
    gain = out["final"]["pass@1"] - out["base"]["pass@1"]
    print({"base": out["base"]["pass@1"], "final": out["final"]["pass@1"], "explained": [r["explained"] for r in rows]})  # fmt: skip
    assert all(r["explained"] > 0 and r["samples_generated"] == 8 * (8 + 4) for r in rows)  # the term acts
    assert gain >= 0.04, f"held-out pass@1 {out['base']['pass@1']:.3f} -> {out['final']['pass@1']:.3f}"

"""On-policy distillation: the per-token advantage and surrogate against hand-computed values, the expected
gradient against the reverse KL's (a one-token vocabulary enumerated), the update against grpo.py's, the null
case of a teacher equal to the student, the flag checks, a GRPO checkpoint as the teacher, the mechanism in the
default run, and the learning on the tiny world."""

import json
import math

import pytest
import torch

from algos.opd import Args, aggregate_loss, distillation_advantages, distillation_surrogate, validate


def test_advantages_hand_computed():
    teacher = torch.log(torch.tensor([[0.5, 0.1, 0.3]]))
    student = torch.log(torch.tensor([[0.25, 0.1, 0.6]])).requires_grad_()
    advantages = distillation_advantages(teacher, student)
    assert torch.allclose(advantages, torch.tensor([[math.log(2), 0.0, -math.log(2)]]), atol=1e-6)
    assert not advantages.requires_grad  # an advantage, not a loss: no gradient flows through it


def test_surrogate_hand_computed():
    """At ρ = 1 the loss is −A and its gradient −A; above 1 + ε with A > 0 the clip takes the token out; with
    A < 0 and ρ below 1 − ε as well. Student 0.25 (teacher 0.5, A = log 2) at ρ = 1; student 0.3 sampled at 0.2
    (ρ = 1.5, teacher 0.6: A = log 2, clipped: loss −1.2 log 2); student 0.1 sampled at 0.2 (ρ = 0.5, teacher
    0.05: A = −log 2, clipped at 0.8: loss 0.8 log 2)."""
    logprobs = torch.log(torch.tensor([[0.25, 0.3, 0.1]])).requires_grad_()
    old = torch.log(torch.tensor([[0.25, 0.2, 0.2]]))
    teacher = torch.log(torch.tensor([[0.5, 0.6, 0.05]]))
    loss, clipped = distillation_surrogate(logprobs, old, teacher, 0.2, 0.2)
    log2 = math.log(2)
    assert torch.allclose(loss, torch.tensor([[-log2, -1.2 * log2, 0.8 * log2]]), atol=1e-6)
    assert clipped.tolist() == [[False, True, True]]
    loss.sum().backward()
    assert torch.allclose(logprobs.grad, torch.tensor([[-log2, 0.0, 0.0]]), atol=1e-6)


def test_expected_gradient_is_the_reverse_kl_gradient_on_a_one_token_vocabulary():
    """One position, a softmax over 2 tokens with logits θ = (0, 0) (π = 1/2, 1/2) and a teacher (0.8, 0.2):
    E_{y~π}[∇ loss(y)] at ρ = 1, every token enumerated, is ∇_θ KL(π ‖ π_T). By hand: KL = ½ log(.5/.8) +
    ½ log(.5/.2) = 0.2231, ∂KL/∂θ_k = π_k (log(π_k/π_T,k) − KL) = (−0.3466, 0.3466). And on 5 tokens with random
    logits and teacher, against autograd of the KL itself."""
    teacher = torch.log(torch.tensor([0.8, 0.2]))
    theta = torch.zeros(2, requires_grad=True)
    logprobs = torch.log_softmax(theta, -1)
    loss, _ = distillation_surrogate(logprobs[None], logprobs.detach()[None], teacher[None], 0.2, 0.2)
    (logprobs.exp().detach() * loss[0]).sum().backward()  # Σ_y π(y) loss(y): the expectation, exactly
    assert torch.allclose(theta.grad, torch.tensor([-0.3466, 0.3466]), atol=1e-4)

    generator = torch.Generator().manual_seed(0)
    teacher = torch.log_softmax(torch.randn(5, generator=generator), -1)
    theta = torch.randn(5, generator=generator).requires_grad_()
    logprobs = torch.log_softmax(theta, -1)
    loss, _ = distillation_surrogate(logprobs[None], logprobs.detach()[None], teacher[None], 0.2, 0.2)
    (logprobs.exp().detach() * loss[0]).sum().backward()
    kl_theta = theta.detach().clone().requires_grad_()
    student = torch.log_softmax(kl_theta, -1)
    (student.exp() * (student - teacher)).sum().backward()
    assert torch.allclose(theta.grad, kl_theta.grad, atol=1e-6)


def test_bad_flags_fail_in_validate():
    with pytest.raises(SystemExit, match="is the student's own model at the sampling temperature"):
        validate(Args(teacher_model="tiny"))
    with pytest.raises(SystemExit, match="--teacher-temperature > 0"):
        validate(Args(teacher_temperature=0.0))
    validate(Args(group_size=1))  # no group baseline: one sample per prompt is enough
    validate(
        Args(teacher_model="tiny", teacher_temperature=0.5)
    )  # the world's own policy, sharpened: allowed
    validate(Args())  # the default teacher is made by a command; main() says how when it is missing


def test_a_missing_teacher_says_how_to_make_the_default_before_any_model_loads(monkeypatch, tmp_path):
    import algos.opd as opd

    def must_not_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the teacher was checked")

    monkeypatch.setattr(opd, "load_policy", must_not_load)
    missing = tmp_path / "no_teacher"
    with pytest.raises(SystemExit) as exited:
        opd.main(Args(teacher_model=str(missing), output_dir=str(tmp_path / "runs")))
    message = str(exited.value.code)
    assert f"--teacher-model '{missing}': no such directory" in message, message
    assert "./run.sh grpo --run-name opd-teacher" in message and "\n" not in message


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
    from common.model import load_policy, rollout_logprobs
    from common.rollout import HFSampler

    model, tokenizer = load_policy(str(random_model_dir))
    torch.manual_seed(0)
    rollout = HFSampler(model, tokenizer).generate(["1+1=", "2+3=", "7-4="], n=4, max_new_tokens=6)
    return model, rollout, rollout_logprobs(model, rollout)


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean"])
def test_update_equals_grpo_when_the_teacher_shifts_each_sequence(model_and_rollout, loss_agg):
    """The identity at ρ = 1: a teacher whose log-probs are the student's plus c_i on every token of sequence i
    gives every token of it the advantage c_i, so opd.update_policy's gradient is grpo.py's update_policy
    gradient with the advantages c (the same aggregation), through both files on the same batch."""
    import algos.grpo as grpo
    import algos.opd as opd

    model, rollout, student = model_and_rollout
    shifts = torch.linspace(-1.0, 1.5, 12)  # [B] c_i
    ours, theirs = RecordingOptimizer(model), RecordingOptimizer(model)
    opd.update_policy(model, ours, {"rollout": rollout, "teacher_logprobs": student + shifts[:, None]},
                      opd.Args(loss_agg=loss_agg, max_grad_norm=1e9))  # fmt: skip
    grpo.update_policy(model, theirs, {"rollout": rollout, "advantages": shifts},
                       grpo.Args(loss_agg=loss_agg, max_grad_norm=1e9))  # fmt: skip
    assert len(ours.grads) == len(theirs.grads) == 1
    assert torch.allclose(ours.grads[0], theirs.grads[0], rtol=1e-4, atol=1e-7)
    assert theirs.grads[0].abs().sum() > 0


def test_a_teacher_equal_to_the_student_gives_no_gradient(model_and_rollout):
    """The null case validate() refuses: the teacher's log-probs are the student's, every advantage is 0."""
    import algos.opd as opd

    model, rollout, student = model_and_rollout
    optimizer = RecordingOptimizer(model)
    stats = opd.update_policy(model, optimizer, {"rollout": rollout, "teacher_logprobs": student},
                              opd.Args(max_grad_norm=1e9))  # fmt: skip
    assert optimizer.grads[0].abs().max().item() < 1e-6 and abs(stats["loss"]) < 1e-6


def test_mechanism_fires_in_the_default_run(random_model_dir, tmp_path):
    """The default schedule (one step per batch, token-mean) with a random student and the tiny world as its
    teacher, shortened: the logged per-token KL to the teacher and the reward (−the sequences' KL) are non-zero,
    every token is trained (the loss is not 0) and accuracy is still the verifier's."""
    from algos.opd import main
    from common.tracking import read_jsonl

    main(Args(model_name_or_path=str(random_model_dir), teacher_model="tiny", num_steps=2, prompts_per_step=2, group_size=4,
              micro_batch_size=8, max_new_tokens=8, eval_problems=2, eval_n=2, eval_every=0, save_every=100,
              output_dir=str(tmp_path), run_name="d"))  # fmt: skip
    rows = [r for r in read_jsonl(tmp_path / "d" / "metrics.jsonl") if r["step"] > 0]
    assert len(rows) == 2
    for row in rows:
        assert row["teacher_kl"] > 1 and row["reward_mean"] < -1 and row["grad_norm"] > 0, row
        assert row["loss"] == pytest.approx(row["teacher_kl"], rel=1e-4)  # at ρ = 1, token-mean of −A
        assert 0 <= row["accuracy"] <= 1


def test_a_grpo_checkpoint_is_a_teacher_and_another_tokenizer_is_refused(random_model_dir, tmp_path):
    """The documented teacher: a checkpoint of grpo.py (here one step of the random model) loads as
    --teacher-model; a model with another tokenizer ends in one line."""
    import algos.grpo as grpo
    from algos.opd import main
    from common.model import load_policy

    small = dict(num_steps=1, prompts_per_step=2, group_size=4, micro_batch_size=8, max_new_tokens=8,
                 eval_problems=2, eval_n=1, eval_every=0, save_every=1, output_dir=str(tmp_path))  # fmt: skip
    grpo.main(grpo.Args(model_name_or_path=str(random_model_dir), run_name="teacher", **small))
    teacher = tmp_path / "teacher" / "checkpoints" / "step-00000001" / "model"
    out = main(Args(model_name_or_path=str(random_model_dir), teacher_model=str(teacher),
                    run_name="student", **small))  # fmt: skip
    assert out["final"] is not None

    model, tokenizer = load_policy(str(random_model_dir))
    tokenizer.add_tokens(["<other>"])
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(tmp_path / "other"), tokenizer.save_pretrained(tmp_path / "other")
    with pytest.raises(SystemExit, match="has another tokenizer than the student"):
        main(Args(model_name_or_path=str(random_model_dir), teacher_model=str(tmp_path / "other"),
                  run_name="refused", **small))  # fmt: skip


def test_aggregation_is_token_mean_by_default():
    losses, mask = (
        torch.tensor([[1.0, 1.0, 0.0], [4.0, 0.0, 0.0]]),
        torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]),
    )
    assert Args().loss_agg == "token-mean"
    assert aggregate_loss(losses, mask, Args().loss_agg, 2, 3, 3).item() == pytest.approx(
        2.0
    )  # (1 + 1 + 4)/3


def slip_free_teacher(
    out_dir, steps: int = 40, batch_size: int = 16, learning_rate: float = 3e-4, seed: int = 0
):
    """A stronger policy of the tiny world, made in seconds: the world's policy fine-tuned on the training split's
    worked solutions, which never slip (its warm-up's had a 30% slip per line). 40 steps of 16 at lr 3e-4: held-out
    pass@1 0.52 (60 problems × 2) against the base's 0.34. Saved like a checkpoint's model/ (weights + tokenizer)."""
    from common.data import build_prompt, load_examples
    from common.model import load_policy

    model, tokenizer = load_policy("tiny")
    examples = [e for e in load_examples("tiny", "train", seed=seed) if e.solution]
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        rows = torch.randint(len(examples), (batch_size,), generator=generator).tolist()
        pairs = [
            (tokenizer(build_prompt(examples[i].question, "plain"), add_special_tokens=False)["input_ids"],
             tokenizer(examples[i].solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
            for i in rows
        ]  # fmt: skip
        width = max(len(q) + len(a) for q, a in pairs)
        ids = torch.full((batch_size, width), tokenizer.pad_token_id)
        labels = torch.full((batch_size, width), -100)  # the prompt and the padding are no targets
        attention = torch.zeros(batch_size, width, dtype=torch.long)
        for b, (q, a) in enumerate(pairs):
            ids[b, : len(q) + len(a)] = torch.tensor(q + a)
            labels[b, len(q) : len(q) + len(a)] = torch.tensor(a)
            attention[b, : len(q) + len(a)] = 1
        model(input_ids=ids, attention_mask=attention, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.mark.slow
def test_opd_learns_on_the_tiny_world(tiny_world_dir, tmp_path):
    """A teacher made by a short training run (``slip_free_teacher``), then 20 steps of 8 prompts x 8 samples
    (seed 1, the defaults otherwise): held-out pass@1 rises (60 problems x 4 samples) and the per-token KL to the
    teacher falls; measured: 0.338 -> 0.538 (+0.200), the KL's mean over the first five steps 0.061, over the
    last five 0.021."""
    from algos.opd import main
    from common.tracking import read_jsonl

    teacher = slip_free_teacher(tmp_path / "teacher")
    out = main(
        Args(teacher_model=str(teacher), num_steps=20, prompts_per_step=8, group_size=8, max_new_tokens=64,
             eval_problems=60, eval_n=4, eval_every=0, save_every=1000, output_dir=str(tmp_path), run_name="learn",
             seed=1)
    )  # fmt: skip
    gain = out["final"]["pass@1"] - out["base"]["pass@1"]
    kl = [r["teacher_kl"] for r in read_jsonl(tmp_path / "learn" / "metrics.jsonl") if r["step"] > 0]
    print(
        json.dumps({"base": out["base"]["pass@1"], "final": out["final"]["pass@1"], "kl": [kl[:5], kl[-5:]]})
    )
    assert gain >= 0.05, f"held-out pass@1 {out['base']['pass@1']:.3f} -> {out['final']['pass@1']:.3f}"
    assert sum(kl[-5:]) < 0.6 * sum(kl[:5]), kl

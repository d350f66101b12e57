"""The mismatch lab (bench/mismatch_lab.py), CI's short version: its vehicle is grpo.py, the log-prob gap grows
with staleness k, at k = 0 with a float32 sampler every ratio is 1 (and what "exactly" can mean there), the
corrections' weights on the lab's stressed rollouts are their formulas', and the lab's plan, sweep rule and
verdicts on fake results.

Not repeated here: every --rollout-is and --rollout-rs mode against hand-computed tensors
(tests/test_rollout_correction.py) and against verl's and TRL's own functions (tests/test_verl.py,
tests/test_trl.py); REC's masks and weights by hand (tests/test_rec.py); the mismatched sampler's definitions
(tests/test_mismatched_sampler.py). What is new: the lab's flags reach those weights through rec.py, on
rollouts of the tiny world under the stresses the lab applies.
"""

import copy
import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import tyro
from test_grpo import RecordingOptimizer

import bench.compare as compare
import bench.mismatch_lab as lab
from algos import grpo, rec
from bench.mismatch_lab import ARMS, CONTROL, DROP, RATIO_ONE, STALENESS, TARGETS, VEHICLE, Cell, Stress
from common.data import build_prompt
from common.mismatched_sampler import MismatchedSampler
from common.model import rollout_logprobs
from common.rollout import HFSampler
from common.rollout_correction import rollout_correction
from common.tiny_task import tiny_examples
from common.tracking import read_jsonl

REWARDS = torch.tensor([[1.0, 0, 0, 1], [0, 0, 0, 1], [1, 1, 0, 0], [0, 1, 0, 0]])  # [4 prompts, 4 samples]


def vehicle_args(*flags: str) -> rec.Args:
    return tyro.cli(rec.Args, args=[*VEHICLE, *CONTROL.flags(), *flags])


def prompts(tokenizer, start=0, num=4):
    return [
        build_prompt(e["question"], "plain", tokenizer)
        for e in tiny_examples("train", num=start + num)[start:]
    ]


# ---------------------------------------------------------------------------------------------------
# The vehicle: rec.py with VEHICLE is grpo.py
# ---------------------------------------------------------------------------------------------------


def test_the_vehicle_sets_every_flag_of_grpo_to_grpos_default():
    """Every field grpo.py's Args has, the vehicle's Args hold at grpo.py's default (the experiment's name
    aside); rec.py's own fields are off: no mask, no weight, a sampler synced every step in float32 without
    noise. rec.py's default aggregation is token-mean, so --loss-agg is part of VEHICLE."""
    vehicle, default = vehicle_args(), grpo.Args()
    differ = {f.name for f in fields(default) if getattr(vehicle, f.name) != getattr(default, f.name)}
    assert differ == {"exp_name"}
    assert (vehicle.clip_mode, vehicle.importance_weight) == ("none", False)
    assert (vehicle.sync_interval, vehicle.sampler_dtype, vehicle.logit_noise) == (1, "float32", 0.0)
    assert rec.Args().loss_agg == "token-mean" != grpo.Args().loss_agg


@pytest.fixture(scope="module")
def on_policy_batch(tiny_policy):
    """The tiny world's policy and its own rollout (4 prompts x 4, up to 48 tokens: lengths differ, so the
    aggregation matters)."""
    model, tokenizer = tiny_policy
    torch.manual_seed(0)
    rollout = HFSampler(model, tokenizer).generate(prompts(tokenizer), n=4, max_new_tokens=48)
    assert len(set(rollout.completion_mask.sum(-1).tolist())) > 1
    return model, rollout


def test_one_update_of_the_vehicle_is_grpos_bit_for_bit(on_policy_batch):
    """On the policy (k = 0, float32), one update of rec.py with VEHICLE moves the weights exactly as
    grpo.py's update_policy with grpo.py's defaults (AdamW, the scripts' optimizer): the same bits. Its
    gradient is grpo.py's exactly; with rec.py's own aggregation (token-mean) it is another one."""
    model, rollout = on_policy_batch
    moved, grads = {}, {}
    for name, module, args in [("grpo", grpo, grpo.Args()), ("vehicle", rec, vehicle_args()),
                               ("token-mean", rec, vehicle_args("--loss-agg", "token-mean"))]:  # fmt: skip
        batch = {
            "rollout": rollout,
            "advantages": module.grpo_advantages(REWARDS, args.scale_rewards).view(-1),
        }
        recorder = RecordingOptimizer(model)
        module.update_policy(model, recorder, batch, args)
        grads[name] = recorder.grads[0]
        copied = copy.deepcopy(model)
        module.update_policy(
            copied, torch.optim.AdamW(copied.parameters(), lr=args.learning_rate), batch, args
        )
        moved[name] = torch.cat([p.detach().flatten() for p in copied.parameters()])
    assert torch.equal(grads["vehicle"], grads["grpo"]) and grads["grpo"].abs().sum() > 0
    assert torch.equal(moved["vehicle"], moved["grpo"])
    assert not torch.allclose(grads["token-mean"], grads["grpo"], rtol=1e-3, atol=1e-6)


def test_a_vehicle_run_is_a_grpo_run(tiny_world_dir, tmp_path):
    """Two steps of rec.py with VEHICLE at k = 0 (rollouts from its float32 copy) and of grpo.py, the same
    flags otherwise: the same samples, rewards, gradient norms, entropies and held-out evaluations, every
    logged number equal but the loss (rec.py logs the value of −Â·log π, grpo.py the surrogate's, whose
    gradients are equal), the timings, and the sampler/trainer gap, which is rounding in both (the copy's
    cached decode rounds differently from the trainer's own: measured 1.3e-7 against 9.1e-8)."""
    shared = ["--num-steps=2", "--prompts-per-step=4", "--group-size=4", "--max-new-tokens=48", "--eval-problems=3",
              "--eval-n=2", "--eval-every=0", "--save-every=100", f"--output-dir={tmp_path}"]  # fmt: skip
    for name, module, flags in (("grpo", grpo, []), ("vehicle", rec, [*VEHICLE, *CONTROL.flags()])):
        module.main(tyro.cli(module.Args, args=[*flags, *shared, f"--run-name={name}"]))
    want, got = (read_jsonl(tmp_path / name / "metrics.jsonl") for name in ("grpo", "vehicle"))
    assert [r["step"] for r in got] == [r["step"] for r in want] == [0, 1, 2]
    assert got[1]["grad_norm"] > 0
    gaps = {
        "logprob_mismatch",
        "logprob_mismatch_raw",
    }  # rounding: the copy's cached decode, not the trainer's
    for g, w in zip(got, want):
        assert set(g) == set(w)
        for key in sorted(set(w) - {"loss", "step_time", "samples_per_s"} - gaps):
            assert g[key] == w[key], (g["step"], key, g[key], w[key])
        assert all(g.get(key, 0) <= RATIO_ONE and w.get(key, 0) <= RATIO_ONE for key in gaps)


# ---------------------------------------------------------------------------------------------------
# The gap: it grows with staleness; at k = 0 in float32 every ratio is 1
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stale_training(tiny_policy):
    """Five steps of the vehicle at each staleness k = 0, 1, 4 (--sync-interval k + 1), from the tiny world's
    policy, AdamW at grpo.py's learning rate without warm-up, fixed rewards (the gap depends on how far the
    weights move, not on why). Per k: the gap of every step, and at k = 0 the checks of every step."""
    base, tokenizer = tiny_policy
    args = vehicle_args()
    out = {}
    for k in (0, *STALENESS):
        model = copy.deepcopy(base)
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
        sampler = MismatchedSampler(model, tokenizer, sync_interval=k + 1)
        steps = []
        for step in range(5):
            torch.manual_seed(step)
            rollout = sampler.generate(prompts(tokenizer, 4 * step), 4, 48)
            mask = rollout.completion_mask.bool()
            trainer = rollout_logprobs(model, rollout)  # [B, C] log π_trainer
            log_ratio = (trainer - rollout.behavior_logprobs)[mask]  # log ρ per real token
            record = {"gap": float(log_ratio.abs().mean()), "rollout": rollout, "trainer": trainer}
            if k == 0:
                record["same_weights"] = all(
                    torch.equal(a, b)
                    for a, b in zip(sampler.copy.state_dict().values(), model.state_dict().values())
                )
                record["same_full_forward"] = torch.equal(rollout_logprobs(sampler.copy, rollout), trainer)
                record["exactly_one"] = float((log_ratio == 0).float().mean())
                record["max_abs_log_ratio"] = float(log_ratio.abs().max())
            steps.append(record)
            advantages = rec.grpo_advantages(REWARDS, args.scale_rewards).view(-1)
            rec.update_policy(model, optimizer, {"rollout": rollout, "advantages": advantages}, args)
            sampler.update_weights(model)
        out[k] = steps
    return out


def test_the_gap_grows_with_staleness(stale_training):
    """Mean |log π_trainer − log π_sampler| over 5 steps: k = 0 is rounding (measured 1.2e-7), k = 1 lags
    0, 1, 0, 1, 0 steps (0.0034), k = 4 lags 0, 1, 2, 3, 4 (0.012); within k = 4 every step lagging 2 or
    more is further off than the step lagging 1 (measured 0.0089 at lag 1; 0.012, 0.020, 0.019 after)."""
    mean = {k: sum(s["gap"] for s in steps) / len(steps) for k, steps in stale_training.items()}
    assert mean[0] < RATIO_ONE < mean[1] < mean[4], mean
    lag4 = [s["gap"] for s in stale_training[4]]  # lags 0, 1, 2, 3, 4
    assert min(lag4[2:]) > lag4[1] > RATIO_ONE > lag4[0], lag4


def test_at_k0_in_float32_every_ratio_is_one(stale_training):
    """What "exactly 1" means at k = 0 with a float32 sampler, at every step of a run that trains: the copy
    holds the trainer's weights bit for bit and a full forward of it gives the trainer's log-probs bit for bit
    (ratio exactly 1 when both score the same way). The sampler records its log-probs in generate's cached
    decode, which rounds differently: most ratios are exactly 1 (measured 85-87% per step) and every one is
    within 1e-4 of it (measured max |log ρ| 1.0e-5, at the fifth step; bf16's reaches 0.09, and the nearest
    threshold of any correction here is REC's 1 ± 0.2), and each step's mean |log ρ| is under the lab's bound
    RATIO_ONE (measured 1.0e-7 to 1.3e-7; bf16 opens 1.7e-3)."""
    for step in stale_training[0]:
        assert step["same_weights"] and step["same_full_forward"]
        assert step["exactly_one"] > 0.5 and step["max_abs_log_ratio"] < 1e-4, step
        assert step["gap"] <= RATIO_ONE


def test_each_correction_gives_its_formulas_weights_on_its_stress(tiny_policy, stale_training):
    """Every correction cell of the lab, its flags parsed by rec.py, on a rollout under the stress it targets
    (k = 4 at its largest lag, bf16, noise at σ = 2): the weights rollout_correction gives are the formula's,
    computed here from ρ = π_trainer / π_sampler (token-TIS min(ρ, 2); IcePop ρ inside [0.5, 2], else 0; OPSM
    0 on a sequence with A < 0 and mean(−log ρ) > 0.1), and on noise the ratio leaves [0.5, 2] (the
    corrections act: measured 3% of tokens)."""
    model, tokenizer = tiny_policy
    rollouts = {"staleness": (stale_training[4][-1]["rollout"], stale_training[4][-1]["trainer"])}
    for stress in (Stress("precision"), Stress("noise", 2.0)):
        sampler = MismatchedSampler(model, tokenizer, dtype="bfloat16" if stress.axis == "precision" else "float32",
                                    logit_noise=stress.level)  # fmt: skip
        torch.manual_seed(0)
        rollout = sampler.generate(prompts(tokenizer), 4, 48)
        rollouts[stress.axis] = (rollout, rollout_logprobs(model, rollout))
    advantages = rec.grpo_advantages(REWARDS, "group").view(-1)
    checked = set()
    for cell in lab.plan_cells(lab.Args(noise_levels=[2.0]), {"fp32-grpo": (0.5, False), "noise2-grpo": (0.4, False)}):  # fmt: skip
        if cell.arm not in ("grpo-tis", "grpo-icepop", "grpo-opsm"):
            continue
        args = tyro.cli(rec.Args, args=cell.flags())
        rollout, trainer = rollouts[cell.stress.axis]
        mask = rollout.completion_mask
        ratio = torch.exp(trainer - rollout.behavior_logprobs)
        weights, stats = rollout_correction(trainer, rollout.behavior_logprobs, mask, advantages, args)
        if cell.arm == "grpo-tis":
            by_hand = ratio.clamp(max=2.0)
        elif cell.arm == "grpo-icepop":
            by_hand = torch.where((ratio >= 0.5) & (ratio <= 2.0), ratio, torch.zeros(()))
        else:
            kl = ((-torch.log(ratio)) * mask).sum(-1) / mask.sum(-1)
            by_hand = torch.where(((advantages < 0) & (kl > 0.1))[:, None], 0.0, 1.0).expand_as(ratio)
        real = mask.bool()
        assert torch.allclose(weights[real], by_hand[real], rtol=1e-5, atol=1e-6), cell.name
        if cell.stress.axis == "noise":
            acted = stats["correction/is_masked_token_frac"] + stats["correction/is_truncated_token_frac"]
            assert acted > 0, cell.name
        checked.add((cell.arm, cell.stress.axis))
    assert checked == {("grpo-tis", "staleness"), ("grpo-opsm", "staleness"), ("grpo-icepop", "precision"),
                       ("grpo-icepop", "noise"), ("grpo-tis", "noise")}  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# The plan, the sweep rule and the verdicts (no model: milliseconds)
# ---------------------------------------------------------------------------------------------------


def test_the_staleness_mapping_and_the_cells():
    """Staleness k is --sync-interval k + 1; every cell's flags parse and validate with rec.py; the grpo arms
    start with VEHICLE, rec-grpo is rec.py's own variant, and each correction runs only on its axis."""
    assert [Stress("staleness", k).flags()[1] for k in (0, 1, 4)] == ["1", "2", "5"]
    assert CONTROL.flags() == ["--sync-interval", "1"]
    assert ARMS["rec-grpo"] == tuple(rec.METHOD.variants["rec-grpo"]) and ARMS["rec"] == ()
    every = {c.name: (0.5, False) for c in [Cell("grpo", CONTROL), *lab.axis_cells(lab.Args())["noise"]]}
    cells = lab.plan_cells(lab.Args(), every)
    assert len(cells) == len({c.name for c in cells}) == 14
    for cell in cells:
        args = tyro.cli(rec.Args, args=cell.flags())
        rec.validate(args)
        if cell.arm.startswith("grpo"):
            assert tuple(cell.flags()[: len(VEHICLE)]) == VEHICLE
        if cell.arm != "grpo":
            assert cell.arm in TARGETS[cell.stress.axis], cell.name
        assert args.sync_interval == (int(cell.stress.level) + 1 if cell.stress.axis == "staleness" else 1)
    corrected = {(c.arm, c.stress.name) for c in cells if c.arm != "grpo"}
    assert corrected == {("grpo-tis", "k4"), ("grpo-opsm", "k4"), ("rec", "k4"), ("rec-grpo", "k4"),
                         ("grpo-icepop", "bf16"), ("grpo-icepop", "noise2"), ("grpo-tis", "noise2")}  # fmt: skip


def test_the_sweep_rule():
    """A drop of exactly DROP counts; divergence counts whatever the drop; a level whose runs all failed ends
    the sweep as failed; the largest level is reported when nothing dropped; a missing level leaves it pending."""
    control = 0.40
    assert lab.sweep(["a", "b"], {"a": (control - DROP, False)}, control) == ("a", "reached")
    assert lab.sweep(["a", "b"], {"a": (0.39, False), "b": (0.45, True)}, control) == ("b", "reached")
    assert lab.sweep(["a", "b"], {"a": (None, True)}, control) == ("a", "failed")
    assert lab.sweep(["a", "b"], {"a": (0.39, False), "b": (0.36, False)}, control) == ("b", "not reached")
    assert lab.sweep(["a", "b"], {"b": (0.0, False)}, control) == (None, "pending")


def test_the_noise_sweep_goes_on_only_while_nothing_dropped():
    names = lambda known: [c.name for c in lab.plan_cells(lab.Args(), known) if c.stress.axis == "noise"]  # noqa: E731
    assert names({}) == ["noise0.5-grpo"]  # the control's result is needed to judge the first level
    assert names({"fp32-grpo": (0.5, False)}) == ["noise0.5-grpo"]
    assert names({"fp32-grpo": (0.5, False), "noise0.5-grpo": (0.48, False)}) == [
        "noise0.5-grpo",
        "noise1-grpo",
    ]
    assert names({"fp32-grpo": (0.5, False), "noise0.5-grpo": (0.48, False), "noise1-grpo": (0.40, False)}) == [
        "noise0.5-grpo", "noise1-grpo", "noise1-grpo-icepop", "noise1-grpo-tis"]  # fmt: skip


def fake_row(pass1, gap=0.01, seed=1, diverged=False, shares=None):
    return {"seed": seed, "pass_at_k": {1: pass1}, "diverged": diverged, "gap_mean": gap,
            "gap_curve": [[1, gap], [2, gap]], "shares": shares or {}}  # fmt: skip


def test_verdicts_on_fake_results():
    """Noise drops the control's 0.50 to 0.40 at σ = 1: the sweep stops there; IcePop wins it back (0.48),
    TIS does not (0.42); staleness never drops 0.05, so its corrections are not testable; rec is 0.04 below
    rec-grpo (held: less than DROP)."""
    args = lab.Args(seeds=1, noise_levels=[0.5, 1.0, 2.0])
    p1 = {"fp32-grpo": 0.50, "noise0.5-grpo": 0.49, "noise1-grpo": 0.40, "noise1-grpo-icepop": 0.48,
          "noise1-grpo-tis": 0.42, "k1-grpo": 0.49, "k4-grpo": 0.47, "bf16-grpo": 0.50, "k4-grpo-tis": 0.47,
          "k4-grpo-opsm": 0.46, "k4-rec": 0.44, "k4-rec-grpo": 0.48, "bf16-grpo-icepop": 0.50}  # fmt: skip
    gaps = {"fp32-grpo": 1e-7, "noise0.5-grpo": 0.03, "noise1-grpo": 0.06, "k1-grpo": 0.005, "k4-grpo": 0.02,
            "bf16-grpo": 0.002}  # fmt: skip
    rows = {name: [fake_row(v, gaps.get(name, 0.01))] for name, v in p1.items()}
    outcome = lab.outcomes(rows, {}, seeds=1)
    cells = lab.plan_cells(args, outcome)
    assert {c.name for c in cells} == set(p1)
    judged = lab.verdicts(args, cells, rows, outcome)
    assert judged["sweeps"]["noise"] == {"levels": ["noise0.5-grpo", "noise1-grpo"], "stop": "noise1-grpo",
                                         "status": "reached", "drop": pytest.approx(0.10)}  # fmt: skip
    assert (
        judged["sweeps"]["staleness"]["status"] == "not reached"
        and judged["sweeps"]["staleness"]["stop"] == "k4-grpo"
    )
    verdict = {c["claim"]: c["verdict"] for c in judged["claims"]}
    assert judged["ratio_one"] is True
    assert verdict["At k = 0 with a float32 sampler every ratio π_trainer/π_sampler is 1"] == "held"
    assert verdict["The gap grows with staleness k"] == "held"
    assert verdict["The gap grows with logit noise σ"] == "held"
    assert verdict["grpo-icepop wins back what noise1 (noise) costs uncorrected GRPO"] == "held"
    assert verdict["grpo-tis wins back what noise1 (noise) costs uncorrected GRPO"] == "not held"
    assert verdict["grpo-opsm wins back what k4 (staleness) costs uncorrected GRPO"] == "not testable here"
    rec_claim = [c for c in judged["claims"] if c["claim"].startswith("Under staleness")][0]
    assert rec_claim["verdict"] == "held"
    rows["k4-rec"] = [fake_row(0.43)]  # 0.05 below rec-grpo: not as well
    again = lab.verdicts(args, cells, rows, lab.outcomes(rows, {}, seeds=1))
    assert [c for c in again["claims"] if c["claim"].startswith("Under staleness")][0][
        "verdict"
    ] == "not held"
    rows["fp32-grpo"] = [fake_row(0.50, gap=2e-6)]
    assert lab.verdicts(args, cells, rows, outcome)["ratio_one"] is False


class FakeRuns:
    """Stands in for rec.py and the evaluations (bench/compare.py's run_child): writes what they would write.
    Held-out pass@1 falls with σ ≥ 1; every run logs the gap its stress would have."""

    def __init__(self, control_gap=1e-7):
        self.calls, self.control_gap = [], control_gap

    def __call__(self, argv, log_path, threads):
        self.calls.append(argv)
        if argv[1] == "-c":  # an evaluation
            config, out_path = json.loads(argv[3]), Path(argv[4])
            name = Path(config["model"]).parts[-4] if config["model"] != "tiny" else "base"
            p1 = 0.30 if "noise1" in name or "noise2" in name else 0.45
            curve = {str(k): min(1.0, p1 * k**0.5) for k in (1, 2)}
            compare.write_json(out_path, {"config": config, "wall_s": 1.0, "eval": {
                "pass@1": p1, "curve": curve, "pass_hat_curve": {"1": p1, "2": p1 * p1}, "n": 2}})  # fmt: skip
            return 0, 1.0, 1.0, 100.0
        flags = {a: b for a, b in zip(argv, argv[1:] + [""]) if a.startswith("--") and not b.startswith("--")}
        run_dir = compare.ROOT / flags["--output-dir"] / flags["--run-name"]
        run_dir.mkdir(parents=True, exist_ok=True)
        if "--logit-noise" in flags:
            gap = 0.05 * float(flags["--logit-noise"])
        elif "--sampler-dtype" in flags:
            gap = 0.002
        else:
            gap = {"1": self.control_gap, "2": 0.005, "5": 0.02}[flags["--sync-interval"]]
        records = [{"step": 0, "eval/pass@1": 0.3}]
        records += [{"step": s, "accuracy": 0.3, "grad_norm": 1.0, "loss": 0.1, "logprob_mismatch": gap,
                     "clip_frac": 0.0, "correction/is_masked_token_frac": 0.01 if "icepop" in argv else 0.0}
                    for s in range(1, int(flags["--num-steps"]) + 1)]  # fmt: skip
        (run_dir / "config.json").write_text(json.dumps({"prompts_per_step": 2, "group_size": 2}))
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        checkpoint = run_dir / "checkpoints" / f"step-{records[-1]['step']:08d}"
        (checkpoint / "model").mkdir(parents=True, exist_ok=True)
        (checkpoint / "COMPLETE").write_text("{}")
        return 0, 2.0, 2.0, 200.0


@pytest.fixture
def fake_lab(monkeypatch, tmp_path):
    import common.tiny_world

    monkeypatch.setattr(
        common.tiny_world, "ensure_world", lambda name="tiny": tmp_path / f"{name}-world-test"
    )
    monkeypatch.setattr(compare, "git_commit", lambda: "abc1234")
    runs = FakeRuns()
    monkeypatch.setattr(compare, "run_child", runs)
    page = tmp_path / "docs" / "mismatch-lab.md"
    page.parent.mkdir()
    page.write_text("# The mismatch lab\n\nhand-written\n")
    args = lab.Args(seeds=2, steps=2, eval_n=2, eval_problems=3, out_dir=str(tmp_path / "out"), page=str(page),
                    img_dir=str(tmp_path / "docs" / "img"))  # fmt: skip
    return args, runs


def test_a_fake_lab_sweeps_reports_and_resumes(fake_lab):
    """The noise sweep stops at σ = 1 (σ = 2 never runs) and its corrections run there; the page keeps its
    hand-written part and gets the section, the plots are written; a second call runs nothing."""
    args, runs = fake_lab
    summary = lab.main(args)
    trainings = [call for call in runs.calls if call[1] != "-c"]
    assert len(trainings) == 2 * 13 and not any("noise2" in " ".join(call) for call in trainings)
    assert summary["sweeps"]["noise"]["stop"] == "noise1-grpo" and summary["ratio_one"] is True
    assert "noise1-grpo-icepop" in summary["cells"] and summary["meta"]["failed"] == []
    text = Path(args.page).read_text()
    begin, end = compare.markers(lab.SECTION, lab.BY)
    assert text.startswith("# The mismatch lab\n\nhand-written\n\n" + begin) and text.rstrip().endswith(end)
    assert "| noise1-grpo |" in text and "./run.sh rec --clip-mode none" in text and "**held**" in text
    for kind in ("learning_curves", "gap", "pass_at_k"):
        assert (Path(args.img_dir) / f"mismatch-lab_{kind}.png").stat().st_size > 1000
    assert (
        "| noise1-grpo-icepop | --rollout-is icepop --sync-interval 1 --logit-noise 1 | 0.050 | 0.050 | — | 0.010 | — | 0.000 |"
        in text
    )
    runs.calls.clear()
    assert lab.main(args)["sweeps"] == summary["sweeps"] and runs.calls == []
    Path(args.page).write_text("# The mismatch lab\n")
    assert lab.main(lab.Args(**{**vars(args), "report_only": True}))["claims"] == summary["claims"]
    assert runs.calls == [] and "| noise1-grpo |" in Path(args.page).read_text()


def test_the_lab_fails_when_a_control_ratio_is_not_one(fake_lab):
    args, runs = fake_lab
    runs.control_gap = 5e-6
    with pytest.raises(SystemExit, match="k = 0 with a float32 sampler"):
        lab.main(args)


def test_the_page_has_the_sections_markers():
    """docs/mismatch-lab.md holds the generated section's markers, so the full run replaces what is between
    them and leaves the hand-written rest (bench/compare.py's replace_between_markers)."""
    text = (compare.ROOT / "docs" / "mismatch-lab.md").read_text()
    begin, end = compare.markers(lab.SECTION, lab.BY)
    assert text.count(begin) == 1 and text.count(end) == 1 and text.index(begin) < text.index(end)
    assert lab.Args().page == "docs/mismatch-lab.md" and lab.Args().img_dir == "docs/img"


def test_run_sh_lab_dry_run_prints_the_plan_and_runs_nothing(tmp_path):
    """`./run.sh lab` reaches bench/mismatch_lab.py: the dry run prints the estimate and every cell's command."""
    env = {**os.environ, "RLVR_PYTHON": sys.executable}
    done = subprocess.run([str(compare.ROOT / "run.sh"), "lab", "--dry-run", "--out-dir", str(tmp_path / "lab")],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert (
        "Estimate: 29 minutes" in done.stdout and "k4-rec-grpo: OMP_NUM_THREADS=1 ./run.sh rec" in done.stdout
    )
    assert not (tmp_path / "lab").exists()

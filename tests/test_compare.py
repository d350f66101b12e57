"""The comparison harness (bench/compare.py): budget arithmetic, aggregation, the markdown section between
its markers, resume/caching with fake run outputs, and one tiny real run of grpo.py end to end."""

import dataclasses
import doctest
import inspect
import json
import re
import shlex
from pathlib import Path

import pytest

import algos.topr
import bench.compare as compare
from bench.compare import (
    BEGIN_MARKER,
    END_MARKER,
    METHODS,
    Args,
    aggregate,
    budget_flags,
    budget_kind,
    budget_samples,
    fmt_mean_std,
    grad_norm_stats,
    mean_std,
    plan_runs,
    replace_between_markers,
    samples_seen,
    script_args,
)


def test_doctests():
    assert doctest.testmod(compare).failed == 0


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_gets_the_same_budget(method):
    args = Args(steps=30)
    flags, samples, eval_every = budget_flags(method, args)
    assert samples == budget_samples(args) == 3840
    assert eval_every >= 1
    # the flags really say so: recompute the samples from the flags the script receives
    value = dict(zip(flags[::2], map(int, flags[1::2])))
    if budget_kind(method) == "datasets":
        assert (
            value["--iterations"] * value["--questions-per-iteration"] * value["--samples-per-question"]
            == 3840
        )
    else:
        tries = 4 if method == "expo" else 0  # METHODS["expo"]: --explain all --explanation-tries 4
        assert value["--num-steps"] * value["--prompts-per-step"] * (value["--group-size"] + tries) == 3840


def test_method_settings_come_from_the_scripts_own_args(monkeypatch):
    """What the budget needs of a method is read from its script's Args with the method's flags applied:
    a changed default in the script reaches the harness, with no copy to keep in step."""
    assert script_args("topr") == algos.topr.Args() and script_args("expo").explanation_tries == 4
    assert script_args("topr-sft").negatives == "drop" and script_args("w-reinforce").positive_weight == 0.1
    assert script_args("rft-2x").neg_weight == 0 and script_args("rft-2x").updates_per_batch == 2
    assert script_args("nft-2x").neg_weight == script_args("nft").neg_weight == 1
    assert script_args("dr_grpo-2x").updates_per_batch == 2 and script_args("dr_grpo").updates_per_batch == 1
    assert [budget_kind(m) for m in ("grpo", "expo", "oreal", "topr", "topr-sft")] == ["steps"] * 3 + [
        "datasets"
    ] * 2
    flags = budget_flags("topr", Args(steps=30))[0]
    assert flags[flags.index("--samples-per-question") + 1] == str(algos.topr.Args().samples_per_question)

    @dataclasses.dataclass
    class Changed(algos.topr.Args):
        samples_per_question: int = 8  # as if topr.py's default changed

    monkeypatch.setattr(algos.topr, "Args", Changed)
    script_args.cache_clear()
    flags, samples, _ = budget_flags("topr", Args(steps=30))
    assert flags[flags.index("--samples-per-question") + 1] == "8" and samples == 3840
    # a new method is one entry: name -> script and flags
    monkeypatch.setitem(METHODS, "grpo-lr", {"script": "grpo", "flags": ["--learning-rate", "3e-4"]})
    script_args.cache_clear()
    assert script_args("grpo-lr").learning_rate == 3e-4 and budget_flags("grpo-lr", Args(steps=30))[1] == 3840
    script_args.cache_clear()


def test_the_methods_help_names_every_method():
    """--methods' help lists the names by hand (tyro reads it from the source): every METHODS key is in it."""
    doc = re.search(r'methods: list\[str\].*?"""(.*?)"""', inspect.getsource(Args), re.S).group(1)
    assert sorted(set(re.findall(r"[\w-]+", doc)) & set(METHODS)) == sorted(METHODS)


def test_budget_rounding_stays_within_one_step():
    args = Args(steps=7)  # 896 samples: ExPO's 192-sample steps cannot hit it exactly
    for method in METHODS:
        _, samples, _ = budget_flags(method, args)
        assert abs(samples - 896) <= 96, method


def test_plan_is_seed_major_with_one_run_dir_each(tmp_path):
    specs = plan_runs(Args(methods=["grpo", "topr"], seeds=2), tmp_path)
    assert [s.name for s in specs] == ["grpo__1", "topr__1", "grpo__2", "topr__2"]
    cmd = shlex.split(specs[1].command(threads=1))
    assert cmd[:2] == ["OMP_NUM_THREADS=1", "./run.sh"] and cmd[2] == "topr"
    assert cmd[cmd.index("--seed") + 1] == "1" and cmd[cmd.index("--run-name") + 1] == "topr__1"
    with pytest.raises(SystemExit, match="unknown method"):
        plan_runs(Args(methods=["nope"]), tmp_path)


def test_mean_std_and_format():
    mean, std = mean_std([0.1, 0.2, 0.6])
    assert mean == pytest.approx(0.3) and std == pytest.approx(0.264575, abs=1e-6)  # sqrt(0.14 / 2)
    assert mean_std([]) == (None, None)
    assert fmt_mean_std([0.1, 0.2, 0.6]) == "0.300 ± 0.265"
    assert fmt_mean_std([None, 0.5]) == "0.500"


def test_samples_seen_counts_expo_explanations_and_topr_datasets():
    records = [{"step": 0}, {"step": 1, "explanation_samples": 64}, {"step": 2, "explanation_samples": 64}]
    assert samples_seen(records, {"prompts_per_step": 16, "group_size": 8}) == [0, 192, 384]
    records = [{"step": 0}, {"step": 30, "iteration": 1}, {"step": 31, "iteration": 2}]
    config = {"questions_per_iteration": 60, "samples_per_question": 16}
    assert samples_seen(records, config) == [0, 960, 1920]
    # a script whose samples per step vary (dynamic sampling) logs samples_generated: that is what counts
    records = [
        {"step": 0},
        {"step": 1, "samples_generated": 384},
        {"step": 2, "samples_generated": 128},
        {"step": 3},
    ]
    assert samples_seen(records, {"prompts_per_step": 16, "group_size": 8}) == [0, 384, 512, 640]


def test_grad_norm_stats_skip_steps_without_an_update():
    records = [{"step": s, "grad_norm": g, "accuracy": 0.5} for s, g in enumerate([2.0, 4.0, 0.0, 6.0], 1)]
    records.append({"step": 5, "grad_norm": 100.0, "actor_frozen": 1.0})
    stats = grad_norm_stats(records)
    assert stats["steps"] == 3 and stats["mean"] == pytest.approx(4.0)
    assert stats["var"] == pytest.approx(4.0) and stats["cv"] == pytest.approx(0.5)


def fake_eval(p1: float, n: int = 64) -> dict:
    curve = {str(k): min(1.0, p1 * (1 + k) ** 0.5) for k in (1, 2, 4, 8, 16, 32, 64)}
    curve["1"] = p1
    tiers = {t: {"pass@1": p1, f"pass@{n}": curve[str(n)], "count": 10} for t in ("easy", "medium", "hard")}
    return {"pass@1": p1, f"pass@{n}": curve[str(n)], "curve": curve, "per_category": tiers, "n": n}


def test_aggregate_over_seeds():
    runs = [
        {"method": "grpo", "seed": s, "samples": 3840, "final_train_accuracy": acc, "wall_s": 100.0 * s,
         "peak_rss_mib": 500.0, "grad_norm": {"mean": 1.0, "std": 0.1, "var": 0.01, "cv": 0.1, "train_accuracy": 0.3},
         "curve": [[0, 0.2]], "train_curve": [[128, 0.2]], "command": f"cmd {s}"}
        for s, acc in ((1, 0.3), (2, 0.5))
    ]  # fmt: skip
    evals = {"grpo__1": {"eval": fake_eval(0.2)}, "grpo__2": {"eval": fake_eval(0.4)}}
    agg = aggregate(runs, evals, n=64)
    assert agg["grpo"]["seeds"] == [1, 2]
    assert agg["grpo"]["pass_at_k"][1] == [0.2, 0.4]
    assert fmt_mean_std(agg["grpo"]["pass_at_k"][1]) == "0.300 ± 0.141"
    assert mean_std(agg["grpo"]["final_train_accuracy"])[0] == pytest.approx(0.4)
    assert agg["grpo"]["per_tier"]["hard"]["pass@1"] == [0.2, 0.4]
    # a run without its evaluation is left out
    assert aggregate(runs, {"grpo__1": {"eval": fake_eval(0.2)}}, n=64)["grpo"]["seeds"] == [1]


def test_markers_keep_the_hand_written_rest():
    text = f"# Results\n\nhand-written\n\n{BEGIN_MARKER}\nold table\n{END_MARKER}\n\n## After\nmore\n"
    out = replace_between_markers(text, "new table")
    assert out == f"# Results\n\nhand-written\n\n{BEGIN_MARKER}\nnew table\n{END_MARKER}\n\n## After\nmore\n"
    assert replace_between_markers(out, "new table") == out  # idempotent
    appended = replace_between_markers("# Results\n\nhand-written\n", "table")
    assert appended == f"# Results\n\nhand-written\n\n{BEGIN_MARKER}\ntable\n{END_MARKER}\n"
    with pytest.raises(ValueError):
        replace_between_markers(f"# R\n{BEGIN_MARKER}\n", "x")


def test_named_sections_leave_each_other_alone():
    text = replace_between_markers("# Results\n", "default table")
    both = replace_between_markers(text, "long table", "compare-long")
    begin, end = compare.markers("compare-long")
    assert both == f"{text}\n{begin}\nlong table\n{end}\n"
    again = replace_between_markers(both, "new default table")
    assert "new default table" in again and "long table" in again and "\ndefault table" not in again


def test_dataset_reaches_every_run_and_evaluation(tmp_path):
    args = Args(methods=["grpo", "topr"], seeds=1, dataset="tiny:hard,long")
    for spec in plan_runs(args, tmp_path):
        assert spec.argv[spec.argv.index("--dataset") + 1] == "tiny:hard,long"
    assert compare.eval_config(args, "tiny", 0)["dataset"] == "tiny:hard,long"
    default = Args(methods=["grpo"], seeds=1)  # the default dataset adds no flag: earlier runs stay cached
    assert "--dataset" not in plan_runs(default, tmp_path)[0].argv
    assert "dataset" not in compare.eval_config(default, "tiny", 0)
    for bad in ("gsm8k", "tiny:huge"):
        with pytest.raises(SystemExit, match="--dataset"):
            compare.main(Args(dataset=bad, dry_run=True))
    with pytest.raises(SystemExit, match="--model 'gpt2'"):
        compare.main(Args(model="gpt2", dry_run=True))
    other = Args(methods=["grpo"], seeds=1, model="tiny-hinted-long")
    argv = plan_runs(other, tmp_path)[0].argv
    assert argv[argv.index("--model-name-or-path") + 1] == "tiny-hinted-long"
    assert compare.eval_config(other, other.model, 0)["model"] == "tiny-hinted-long"
    with pytest.raises(SystemExit, match="--report-name"):
        compare.main(Args(report_name="../x", dry_run=True))


class FakeChildren:
    """Stands in for the training and evaluation subprocesses: writes the files they would write."""

    def __init__(self):
        self.calls = []
        self.samples_generated = None  # per step, for a script whose samples per step vary
        self.own = None  # (step-0 record extras, last-record extras): a script's own held-out measures

    def __call__(self, argv, log_path, threads):
        self.calls.append(argv)
        if argv[1] == "-c":  # an evaluation: argv = [python, -c, code, config json, out path]
            config, out_path = json.loads(argv[3]), Path(argv[4])
            p1 = 0.25 if config["model"] == "tiny" else 0.3 + 0.01 * config["seed"]
            compare.write_json(
                out_path, {"config": config, "eval": fake_eval(p1, config["n"]), "wall_s": 1.0}
            )
            return 0, 1.0, 1.0, 300.0
        script = Path(argv[1]).stem
        flags = dict(zip(argv[2::2], argv[3::2]))  # every flag the harness passes has a value
        run_dir = compare.ROOT / flags["--output-dir"] / flags["--run-name"]
        run_dir.mkdir(parents=True, exist_ok=True)
        if script == "topr":
            config = {"questions_per_iteration": int(flags["--questions-per-iteration"]),
                      "samples_per_question": int(flags["--samples-per-question"])}  # fmt: skip
            records = [{"step": 0, "eval/pass@1": 0.25}]
            records += [{"step": s, "iteration": (s - 1) // 2 + 1, "accuracy": 0.3, "grad_norm": 1.0 + s % 2}
                        for s in range(1, 2 * int(flags["--iterations"]) + 1)]  # fmt: skip
        else:
            config = {
                "prompts_per_step": int(flags["--prompts-per-step"]),
                "group_size": int(flags["--group-size"]),
            }
            records = [{"step": 0, "eval/pass@1": 0.25}]
            records += [{"step": s, "accuracy": 0.25 + 0.01 * s, "grad_norm": 1.0 + s % 2}
                        for s in range(1, int(flags["--num-steps"]) + 1)]  # fmt: skip
            if self.samples_generated:
                for record in records[1:]:
                    record["samples_generated"] = self.samples_generated
        records[-1]["eval/pass@1"] = 0.3
        if self.own:
            records[0].update(self.own[0])
            records[-1].update(self.own[1])
        (run_dir / "config.json").write_text(json.dumps(config))
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        ckpt = run_dir / "checkpoints" / f"step-{records[-1]['step']:08d}"
        (ckpt / "model").mkdir(parents=True, exist_ok=True)
        (ckpt / "COMPLETE").write_text("{}")
        return 0, 10.0, 9.0, 400.0


@pytest.fixture
def fake_world(monkeypatch, tmp_path):
    import common.tiny_world

    monkeypatch.setattr(
        common.tiny_world, "ensure_world", lambda name="tiny": tmp_path / f"{name}-world-test"
    )
    children = FakeChildren()
    monkeypatch.setattr(compare, "run_child", children)
    monkeypatch.setattr(compare, "git_commit", lambda: "abc1234")  # others may commit while the test runs
    # a results file with a hand-written part, and every output under tmp_path (inside ROOT's view: absolute)
    results = tmp_path / "docs" / "results.md"
    results.parent.mkdir()
    results.write_text("# Results\n\nhand-written\n")
    args = Args(methods=["grpo", "topr", "expo"], seeds=2, steps=4, out_dir=str(tmp_path / "out"),
                results_md=str(results), img_dir=str(tmp_path / "docs" / "img"))  # fmt: skip
    return args, children


def test_fake_comparison_writes_report_and_resumes(fake_world):
    args, children = fake_world
    summary = compare.main(args)
    assert len(children.calls) == 6 + 6 + 1  # 6 trainings, 6 evaluations, the base
    assert summary["meta"]["failed"] == []
    text = Path(args.results_md).read_text()
    assert text.startswith("# Results\n\nhand-written\n\n" + BEGIN_MARKER)
    assert text.rstrip().endswith(END_MARKER)
    assert "| grpo |" in text and "| topr |" in text and "| expo |" in text and "| base |" in text
    assert "0.315 ± 0.007" in text  # grpo pass@1 over seeds 1, 2: 0.31, 0.32
    assert "./run.sh grpo --num-steps 4" in text
    for png in ("compare_learning_curves.png", "compare_pass_at_k.png"):
        assert (Path(args.img_dir) / png).stat().st_size > 1000
    saved = json.loads((Path(args.out_dir) / "summary.json").read_text())
    assert saved["methods"]["topr"]["curves"][0] == [[0, 0.25], [512, 0.3]]  # 4 datasets x 8 x 16

    # everything finished: a second call launches nothing and writes the same section
    children.calls.clear()
    compare.main(args)
    assert children.calls == []
    assert Path(args.results_md).read_text() == text

    # one result lost: only that run is redone (it resumes from its checkpoint); the cached evaluation stays
    run_dir = Path(args.out_dir) / "runs" / "topr__2"
    (run_dir / "compare_result.json").unlink()
    compare.main(args)
    assert len(children.calls) == 1 and children.calls[0][-1] == "--resume"

    # a changed budget changes the commands: every run is redone from scratch, no --resume
    children.calls.clear()
    args.steps = 8
    compare.main(args)
    assert len(children.calls) == 6 + 6  # the base evaluation does not depend on the budget
    assert all("--resume" not in call for call in children.calls)


def test_a_method_with_varying_samples_per_step_counts_what_it_logged(fake_world, monkeypatch):
    """Dynamic sampling (DAPO, Reinforce-Ada) logs samples_generated per step: the report's samples and the
    learning curve's x-axis count those, not prompts_per_step x group_size."""
    args, children = fake_world
    monkeypatch.setitem(METHODS, "dyn", {"script": "grpo", "flags": []})
    args.methods, args.seeds = ["dyn"], 1
    children.samples_generated = 300  # per step, against 16 x 8 = 128 planned
    summary = compare.main(args)
    run = summary["runs"][0]
    assert run["samples"] == 4 * 300 and run["curve"] == [[0, 0.25], [1200, 0.3]]
    assert "| dyn | `grpo.py` | 1,200 |" in Path(args.results_md).read_text()


def test_a_scripts_own_held_out_measures_are_reported_before_and_after(fake_world, monkeypatch):
    """RLCR logs its calibration as eval/brier, eval/ece ... at step 0 and at its last step, PPO its warm-up
    pass@k at step 0 only: the report has a row per measure with both ends, mean ± std over seeds."""
    args, children = fake_world
    args.methods = ["grpo"]
    children.own = ({"eval/brier": 0.30, "eval/warmup_pass@1": 0.6}, {"eval/brier": 0.20})
    compare.main(args)
    text = Path(args.results_md).read_text()
    assert "| grpo | brier | 0.300 ± 0.000 | 0.200 ± 0.000 |" in text
    assert "| grpo | warmup_pass@1 | 0.600 ± 0.000 | — |" in text


def test_dapo_and_reinforce_ada_are_given_the_budget_in_samples(tmp_path):
    """Their steps draw a varying number of samples (at least prompts x group): --max-samples stops them at
    the budget, --num-steps stays as the cap."""
    for spec in plan_runs(Args(methods=["dapo", "reinforce_ada", "grpo"], seeds=1, steps=30), tmp_path):
        flags = dict(zip(spec.argv[::2], spec.argv[1::2]))
        assert flags.get("--max-samples") == ("3840" if spec.method != "grpo" else None), spec.method
        assert flags["--num-steps"] == "30"


def test_report_only_and_dry_run_run_nothing(fake_world, capsys):
    args, children = fake_world
    args.dry_run = True
    assert compare.main(args) is None
    assert children.calls == []
    assert "./run.sh topr --iterations 4" in capsys.readouterr().out
    args.dry_run, args.report_only = False, True
    with pytest.raises(SystemExit, match="no base evaluation"):
        compare.main(args)
    args.report_only = False
    compare.main(args)
    children.calls.clear()
    args.report_only = True
    Path(args.results_md).write_text("# Results\n")
    compare.main(args)
    assert children.calls == [] and BEGIN_MARKER in Path(args.results_md).read_text()


def test_comparison_on_other_tiers_writes_its_own_section_and_plots(fake_world):
    args, children = fake_world
    compare.main(args)
    default_text = Path(args.results_md).read_text()
    children.calls.clear()
    args.dataset, args.report_name, args.out_dir = "tiny:hard,long", "compare-long", args.out_dir + "-long"
    compare.main(args)
    text = Path(args.results_md).read_text()
    assert text.startswith(default_text.rstrip("\n"))  # the default section is untouched
    assert (
        "## Side by side on `tiny:hard,long`: every method at the same sample budget (compare-long)" in text
        and "compare-long_pass_at_k.png" in text
    )
    trainings = [call for call in children.calls if call[1] != "-c"]
    assert len(trainings) == 6 and all("tiny:hard,long" in call for call in trainings)
    for png in ("compare-long_learning_curves.png", "compare-long_pass_at_k.png"):
        assert (Path(args.img_dir) / png).stat().st_size > 1000


def test_failed_run_is_reported_and_the_rest_goes_on(fake_world):
    args, children = fake_world
    real = compare.run_child

    def failing(argv, log_path, threads):
        if "grpo__2" in argv:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.write_text("Traceback: boom\n")
            return 1, 1.0, 1.0, 100.0
        return real(argv, log_path, threads)

    compare.run_child = failing
    summary = compare.main(args)
    assert summary["meta"]["failed"] == ["grpo__2"]
    assert summary["methods"]["grpo"]["seeds"] == [1]
    assert "Failed or missing runs" in Path(args.results_md).read_text()


def test_tiny_real_run(tiny_world_dir, tmp_path):
    """grpo.py for 2 steps of 2 prompts x 2 samples, evaluated on 3 problems x 4 samples, through the harness."""
    args = Args(methods=["grpo"], seeds=1, steps=2, prompts_per_step=2, group_size=2, max_new_tokens=40,
                eval_n=4, eval_problems=3, train_eval_problems=3, train_eval_n=2, curve_points=1,
                out_dir=str(tmp_path / "out"), results_md=str(tmp_path / "results.md"),
                img_dir=str(tmp_path / "img"))  # fmt: skip
    summary = compare.main(args)
    assert summary["meta"]["failed"] == []
    run = summary["runs"][0]
    assert run["samples"] == 8 and run["checkpoint_step"] == 2 and run["peak_rss_mib"] > 50
    assert run["curve"][0][0] == 0 and run["curve"][-1][0] == 8
    ev = json.loads((tmp_path / "out" / "runs" / "grpo__1" / "eval_n4_p3.json").read_text())
    assert ev["eval"]["n"] == 4 and ev["eval"]["num_problems"] == 3
    assert "| grpo |" in (tmp_path / "results.md").read_text()


def test_a_method_whose_format_needs_more_tokens_gets_them_in_training_and_evaluation(tmp_path):
    """RLCR's completions end in a confidence tag: it and its RLVR control train and are evaluated with 112
    new tokens while the others keep --max-new-tokens; a larger --max-new-tokens applies to all."""
    for limit, want in (
        (80, {"grpo": "80", "rlcr": "112", "rlvr": "112"}),
        (128, dict.fromkeys(("grpo", "rlcr", "rlvr"), "128")),
    ):
        args = Args(methods=["grpo", "rlcr", "rlvr"], seeds=1, max_new_tokens=limit)
        for spec in plan_runs(args, tmp_path):
            assert spec.argv[spec.argv.index("--max-new-tokens") + 1] == want[spec.method]
            assert compare.eval_config(args, "x", 1, spec.method)["max_new_tokens"] == int(want[spec.method])
        assert compare.eval_config(args, "tiny", 0)["max_new_tokens"] == limit  # the base

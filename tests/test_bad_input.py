"""Bad input, for every script: one clear message naming the flag, file, line or field, a non-zero exit,
and nothing expensive done first (no data or model loaded, no run directory created)."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from smoke import smoke_args

import common.run
from common.registry import methods

ROOT = Path(__file__).resolve().parent.parent
METHODS = methods()
SCRIPTS = list(METHODS)


class Loaded(Exception):
    """Raised by the patched loaders: the script got past its checks and started loading."""


@pytest.fixture
def guarded(monkeypatch):
    """Each script's module with its data and model loaders replaced by ones that raise `Loaded`."""

    def get(name):
        module = importlib.import_module(f"algos.{name}")

        def fail(*args, **kwargs):
            raise Loaded(name)

        monkeypatch.setattr(common.run, "load_examples", fail)  # the data: common/run.py's Run
        monkeypatch.setattr(module, "load_policy", fail)
        return module

    return get


def _write(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def _bad_inputs(tmp_path: Path) -> list[tuple[str, dict, str]]:
    """(case id, flags, text the message must contain)."""
    no_config = tmp_path / "not_a_model"
    no_config.mkdir()
    good = json.dumps({"question": "1+1?", "answer": "2"})
    malformed = _write(tmp_path / "malformed.jsonl", [good, "", '{"question": "2+2?", "answer": 4'])
    no_question = _write(
        tmp_path / "no_question.jsonl", [good, json.dumps({"problem": "2+2?", "answer": "4"})]
    )
    empty_question = _write(tmp_path / "empty_q.jsonl", [json.dumps({"question": "  ", "answer": "4"})])
    not_object = _write(tmp_path / "list.jsonl", [good, "[1, 2]"])
    no_answers = _write(tmp_path / "no_answers.jsonl", [json.dumps({"question": "2+2?", "solution": "4"})])
    empty = _write(tmp_path / "empty.jsonl", [])
    return [
        ("model-missing", {"model_name_or_path": "/nonexistent/model"}, "--model-name-or-path '/nonexistent/model'"),
        ("model-no-config", {"model_name_or_path": str(no_config)}, "not a model directory (no config.json)"),
        ("dataset-unknown", {"dataset": "gsm9k"}, "unknown dataset 'gsm9k'"),
        ("dataset-split", {"dataset": "math500"}, "dataset 'math500' has splits ['test'], not 'train'"),
        ("eval-dataset-unknown", {"eval_dataset": "math501"}, "unknown dataset 'math501'"),
        ("hf-without-fields", {"dataset": "hf:org/name"}, "needs a name and both question_field and answer_field"),
        ("jsonl-missing", {"dataset": str(tmp_path / "nope.jsonl")}, f"no such dataset file: {tmp_path}/nope.jsonl"),
        ("jsonl-malformed", {"dataset": malformed}, f"{malformed}:3: not valid JSON"),
        ("jsonl-not-object", {"dataset": not_object}, f"{not_object}:2: expected a JSON object, got list"),
        ("jsonl-no-question", {"dataset": no_question}, f"{no_question}:2: missing question field 'question'"),
        ("jsonl-empty-question", {"dataset": empty_question}, f"{empty_question}:1: question field 'question' is empty"),
        ("jsonl-no-answers", {"dataset": no_answers}, "no row has a non-empty answer field 'answer'"),
        ("jsonl-custom-field", {"dataset": no_answers, "answer_field": "answer_text"}, "answer field 'answer_text'"),
        ("jsonl-empty", {"dataset": empty}, f"no rows in '{empty}'"),
        ("template", {"template": "qwen_math"}, "unknown template 'qwen_math'"),
        ("max-new-tokens", {"max_new_tokens": 0}, "--max-new-tokens must be >= 1"),
        ("temperature", {"temperature": -1.0}, "--temperature must be"),  # TOPR: > 0, the others: >= 0
        ("top-p", {"top_p": 0.0}, "--top-p must be in (0, 1]"),
        ("eval-n", {"eval_n": 0}, "--eval-n must be >= 1"),
        ("eval-problems", {"eval_problems": 0}, "--eval-problems must be >= 1"),
        ("save-every", {"save_every": 0}, "--save-every must be >= 1"),
        ("learning-rate", {"learning_rate": 0.0}, "--learning-rate must be > 0"),
        ("output-dir-under-a-file", {"output_dir": f"{empty}/runs"}, f"--output-dir '{empty}/runs': {empty} is a file"),
    ]  # fmt: skip


@pytest.mark.parametrize("script", SCRIPTS)
def test_bad_input_fails_before_anything_is_loaded(script, guarded, tmp_path):
    module = guarded(script)
    contradiction = METHODS[script].info.contradiction
    assert contradiction is not None, (
        f"algos/{script}.py: METHOD.contradiction names no flags that contradict it"
    )
    cases = _bad_inputs(tmp_path) + [("contradictory",) + contradiction]
    for case, flags, expected in cases:
        args = module.Args(**{"output_dir": str(tmp_path / "runs"), "run_name": case, **flags})
        with pytest.raises(SystemExit) as exited:
            module.main(args)
        message = str(exited.value.code)
        assert expected in message, (case, message)
        assert "\n" not in message, (case, message)  # one message
        assert not (tmp_path / "runs" / case).exists(), case  # nothing written either
    # and the good flags get past the checks, to the (patched) loading
    with pytest.raises(Loaded):
        module.main(module.Args(output_dir=str(tmp_path / "runs"), run_name="good"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_command_line_prints_one_message_and_exits_non_zero(script, tmp_path):
    """From the shell: the message names the file, line and field; no traceback; exit status 1."""
    bad = _write(
        tmp_path / "bad.jsonl", [json.dumps({"question": "1+1?", "answer": "2"}), json.dumps({"q": "?"})]
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "algos" / f"{script}.py"), f"--dataset={bad}", f"--output-dir={tmp_path}"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == f"error: {bad}:2: missing question field 'question' (fields: ['q'])"
    assert list(tmp_path.iterdir()) == [tmp_path / "bad.jsonl"]  # no run directory


@pytest.mark.parametrize("script", SCRIPTS)
def test_unusable_gold_rows_are_skipped_counted_and_reported(script, monkeypatch, tmp_path, capsys):
    """Rows whose gold answer is missing or does not parse are skipped (never scored), counted in one line,
    and reported on stderr with their file and line; training goes on with the rest."""
    module = importlib.import_module(f"algos.{script}")
    data = _write(
        tmp_path / "golds.jsonl",
        [
            json.dumps(
                {"question": "1+1?", "answer": "2", "solution": "\\boxed{2}"}
            ),  # demonstrations: prefix_rft
            json.dumps({"question": "2+2?", "answer": "???"}),  # math-verify finds no expression
            json.dumps({"question": "3+3?"}),  # no answer field
            json.dumps({"question": "4+4?", "answer": r"\frac{1}{"}),  # unclosed LaTeX
            json.dumps({"question": "5+5?", "answer": r"\boxed{10}", "solution": r"\boxed{10}"}),
        ],
    )
    loaded = {}

    def stop_at_model(*args, **kwargs):
        raise Loaded

    real_load_examples = common.run.load_examples

    def spy(dataset, split, *args, **kwargs):
        loaded[split] = real_load_examples(dataset, split, *args, **kwargs)
        return loaded[split]

    monkeypatch.setattr(common.run, "load_examples", spy)
    monkeypatch.setattr(module, "load_policy", stop_at_model)
    with pytest.raises(Loaded):
        module.main(
            smoke_args(script, dataset=data, output_dir=str(tmp_path / "runs"))
        )  # opd: the tiny teacher
    assert [(e.question, e.answer) for e in loaded["train"]] == [("1+1?", "2"), ("5+5?", "10")]
    out, err = capsys.readouterr()
    assert f"loaded 2 examples from {data} (skipped 3: 2 unusable gold, 1 empty answer)" in out
    for line, field in [
        (2, "gold answer '???'"),
        (3, "answer field 'answer' is missing"),
        (4, "gold answer"),
    ]:
        assert f"skipped {data}:{line}: {field}" in err, err


def test_offline_machine_gets_one_line_naming_what_to_fetch_and_how(tmp_path):
    """No network (the Hub's endpoint refuses connections) and an empty cache: a hub dataset or a hub model
    id ends in one line that names what could not be fetched and how to bring it onto such a machine,
    not a traceback. Both runs go in parallel (each spends the download library's retries)."""
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
    }  # fmt: skip
    common = [sys.executable, str(ROOT / "algos" / "grpo.py"), "--num-steps=1", f"--output-dir={tmp_path}"]
    runs = {
        "dataset 'gsm8k': could not download openai/gsm8k": ["--dataset=gsm8k"],
        "--model-name-or-path 'some-org/some-model': could not download some-org/some-model": [
            "--model-name-or-path=some-org/some-model"
        ],
    }
    procs = {
        expected: subprocess.Popen(common + flags, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for expected, flags in runs.items()
    }  # fmt: skip
    for expected, proc in procs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 1, err
        assert "Traceback" not in err, err
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"error: {expected} from the Hugging Face Hub"), last
        assert "HF_HUB_OFFLINE=1" in last and "where there is network" in last, last


@pytest.mark.parametrize("script", SCRIPTS)
def test_jsonl_without_eval_dataset_says_it_is_evaluated_on_its_training_rows(script, tmp_path, capsys):
    module = importlib.import_module(f"algos.{script}")
    train = _write(tmp_path / "train.jsonl", [json.dumps({"question": "2+2?", "answer": "4"})])
    held_out = _write(tmp_path / "test.jsonl", [json.dumps({"question": "3+3?", "answer": "6"})])
    module.validate(module.Args(dataset=train, output_dir=str(tmp_path)))
    note = capsys.readouterr().err
    assert f"note: --dataset {train} has no held-out split" in note and "--eval-dataset" in note, note
    module.validate(module.Args(dataset=train, eval_dataset=held_out, output_dir=str(tmp_path)))
    assert "note:" not in capsys.readouterr().err


def test_prompts_longer_than_the_context_are_skipped_with_one_line(random_model_dir, tmp_path, capsys):
    """A prompt plus --max-new-tokens beyond the model's context (256 positions here; the tokenizer is
    character-level) is skipped before training, with one line that counts the rows and names the longest
    and the limit; the run goes on with the rest. When no row fits, the run stops with that line."""
    from smoke import smoke_args

    from algos.grpo import main

    long_question = "Compute " + "+".join(["1"] * 150) + "."  # 308 characters, past 256 on its own
    data = _write(
        tmp_path / "mixed.jsonl",
        [
            json.dumps({"question": q, "answer": a})
            for q, a in [("1+1?", "2"), (long_question, "150"), ("2+2?", "4")]
        ],
    )
    args = smoke_args("grpo", "--num-steps=1", model_name_or_path=str(random_model_dir), dataset=data,
                      eval_dataset=data, output_dir=str(tmp_path / "runs"))  # fmt: skip
    main(args)
    err = capsys.readouterr().err
    assert (
        f"note: 1 of 3 training prompts plus --max-new-tokens 8 exceed the model's context of 256 tokens (the longest, {data}:2,"
        in err
    ), err
    assert "1 of 2 held-out prompts" in err  # --eval-problems 2: the first two rows
    only_long = _write(tmp_path / "long.jsonl", [json.dumps({"question": long_question, "answer": "150"})])
    args.dataset = args.eval_dataset = only_long
    with pytest.raises(SystemExit, match="none is left: lower --max-new-tokens"):
        main(args)

"""Tests for common/data.py: loading, row checks and skips, gold extraction, prompt templates.

No network: Hugging Face datasets are replaced by `datasets.Dataset.from_list` through a monkeypatched
`datasets.load_dataset`.
"""

import json

import datasets
import pytest

from common.data import (
    TEMPLATES,
    Example,
    build_prompt,
    check_dataset,
    gsm8k_gold,
    load_examples,
    math_gold,
)


def write_jsonl(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return str(path)


def fake_hub(monkeypatch, rows):
    """Make `datasets.load_dataset` return `rows` and record how it was called."""
    calls = []

    def load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


# ---------------------------------------------------------------------------------------------------
# JSONL files
# ---------------------------------------------------------------------------------------------------


def test_jsonl_happy_path(tmp_path, capsys):
    path = write_jsonl(
        tmp_path / "data.jsonl",
        [{"question": "1+1?", "answer": "2", "category": "easy"}, "", {"question": "6*7?", "answer": 42}],
    )  # the blank line 2 is ignored; line numbers still count it
    examples = load_examples(path)
    assert examples == [
        Example("1+1?", "2", "easy", f"{path}:1"),
        Example("6*7?", "42", "", f"{path}:3"),
    ]
    assert f"loaded 2 examples from {path}" in capsys.readouterr().out


def test_jsonl_custom_fields_and_limit(tmp_path):
    rows = [{"problem": f"q{i}", "final": str(i), "question": "ignored"} for i in range(1, 6)]
    path = write_jsonl(tmp_path / "custom.jsonl", rows)
    examples = load_examples(path, question_field="problem", answer_field="final", limit=3)
    assert [(e.question, e.answer) for e in examples] == [(f"q{i}", str(i)) for i in (1, 2, 3)]


def test_jsonl_malformed_line_names_file_and_line(tmp_path):
    path = write_jsonl(
        tmp_path / "bad.jsonl", [{"question": "a", "answer": "1"}, '{"question": "b", "answer":']
    )
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not valid JSON"):
        load_examples(path)


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = write_jsonl(tmp_path / "list.jsonl", ['["a", "1"]'])
    with pytest.raises(ValueError, match=r"list\.jsonl:1: expected a JSON object"):
        load_examples(path)


def test_jsonl_missing_question_field_names_line_and_field(tmp_path):
    path = write_jsonl(
        tmp_path / "noq.jsonl", [{"question": "a", "answer": "1"}, {"prompt": "b", "answer": "2"}]
    )
    with pytest.raises(ValueError, match=r"noq\.jsonl:2: missing question field 'question'"):
        load_examples(path)


def test_unusable_golds_are_skipped_counted_and_reported(tmp_path, capsys):
    rows = [{"question": "ok", "answer": "7"}]
    rows += [{"question": f"empty {i}", "answer": ""} for i in range(4)]
    rows += [
        {"question": "no answer"},
        {"question": "na", "answer": "???"},
        {"question": "null", "answer": None},
    ]
    path = write_jsonl(tmp_path / "skips.jsonl", rows)
    examples = load_examples(path)
    assert [e.question for e in examples] == ["ok"]
    captured = capsys.readouterr()
    assert f"skipped {path}:2: answer field 'answer' is missing or empty" in captured.err
    assert captured.err.count("skipped ") == 5  # the first five one by one ...
    assert "... and 2 more rows skipped" in captured.err  # ... then a count
    assert f"loaded 1 examples from {path} (skipped 7: 6 empty answer, 1 unusable gold)" in captured.out


def test_all_rows_skipped_is_an_error(tmp_path):
    path = write_jsonl(
        tmp_path / "none.jsonl", [{"question": "a", "gold": "1"}, {"question": "b", "gold": "2"}]
    )
    with pytest.raises(ValueError, match=r"no usable examples in .*none\.jsonl.*field 'answer'.*'gold'"):
        load_examples(path)


def test_empty_file_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "empty.jsonl", [""])
    with pytest.raises(ValueError, match=r"no rows in .*empty\.jsonl"):
        load_examples(path)


def test_nonexistent_path(tmp_path):
    missing = str(tmp_path / "missing.jsonl")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_examples(missing)


def test_unknown_dataset_lists_valid_forms():
    with pytest.raises(ValueError, match="unknown dataset 'gsm9k'") as error:
        load_examples("gsm9k")
    for form in ("'tiny'", "'gsm8k'", "'math'", "'math500'", "hf:NAME", ".jsonl"):
        assert form in str(error.value)


def test_bad_limit():
    with pytest.raises(ValueError, match="limit"):
        load_examples("gsm8k", limit=0)


# ---------------------------------------------------------------------------------------------------
# Hugging Face datasets (monkeypatched hub)
# ---------------------------------------------------------------------------------------------------


def test_gsm8k_takes_the_text_after_hashes(monkeypatch):
    rows = [
        {"question": "How many?", "answer": "She has 3 + 4 = 7.\n#### 7"},
        {"question": "How much?", "answer": "1000 + 234 = 1,234\n#### 1,234"},
        {"question": "Broken?", "answer": "no final answer marker"},
    ]
    calls = fake_hub(monkeypatch, rows)
    examples = load_examples("gsm8k", split="test")
    assert calls == [("openai/gsm8k", "main", "test")]
    assert [e.answer for e in examples] == ["7", "1234"]
    assert [e.source for e in examples] == ["gsm8k:test:0", "gsm8k:test:1"]


def test_math_takes_the_last_boxed_answer_with_nested_braces(monkeypatch):
    rows = [
        {
            "problem": "P1",
            "solution": r"First $\boxed{2}$, then $\boxed{\frac{1}{\sqrt{2}}}$.",
            "level": "Level 4",
        },
        {"problem": "P2", "solution": "no box here", "level": "Level 1"},
    ]
    calls = fake_hub(monkeypatch, rows)
    examples = load_examples("math")
    assert calls == [("DigitalLearningGmbH/MATH-lighteval", "default", "train")]
    solution = r"First $\boxed{2}$, then $\boxed{\frac{1}{\sqrt{2}}}$."  # the reference solution is kept
    assert examples == [Example("P1", r"\frac{1}{\sqrt{2}}", "Level 4", "math:train:0", solution)]


def test_math500(monkeypatch):
    rows = [{"problem": "P", "solution": r"... \boxed{5}", "answer": "5", "level": 3, "subject": "Algebra"}]
    calls = fake_hub(monkeypatch, rows)
    assert load_examples("math500", split="test") == [
        Example("P", "5", "Level 3", "math500:test:0", r"... \boxed{5}")
    ]
    assert calls == [("HuggingFaceH4/MATH-500", None, "test")]
    with pytest.raises(ValueError, match="splits"):
        load_examples("math500", split="train")


def test_generic_hf_dataset(monkeypatch):
    calls = fake_hub(monkeypatch, [{"prompt": "Q", "target": "9"}])
    examples = load_examples(
        "hf:someone/data:cfg", split="test", question_field="prompt", answer_field="target"
    )
    assert examples == [Example("Q", "9", "", "hf:someone/data:cfg:test:0")]
    assert calls == [("someone/data", "cfg", "test")]


def test_generic_hf_dataset_needs_both_fields(monkeypatch):
    calls = fake_hub(monkeypatch, [{"prompt": "Q", "target": "9"}])
    with pytest.raises(ValueError, match="question_field and answer_field"):
        load_examples("hf:someone/data", question_field="prompt")
    assert calls == []  # the error comes before any download


def test_tiny_world():
    examples = load_examples("tiny", split="test", limit=6, seed=1)
    assert len(examples) == 6
    assert all(e.source == f"tiny:test:{i}" and e.category for i, e in enumerate(examples))


def test_tiny_world_tiers():
    examples = load_examples("tiny:long", split="test")
    assert len(examples) == 100 and {e.category for e in examples} == {"long"}
    assert examples[0].source == "tiny:long:test:0"
    with pytest.raises(
        ValueError, match="unknown tier 'hardest'; tiers are easy, medium, hard, long, wide-easy"
    ):
        load_examples("tiny:hard,hardest")
    with pytest.raises(ValueError, match="unknown tier"):
        check_dataset("tiny:hardest")  # what every script runs before loading anything


# ---------------------------------------------------------------------------------------------------
# Gold extraction helpers
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"$\boxed{3}$ and $\boxed{\frac{a}{b}}$", r"\frac{a}{b}"),
        ("the answer is 5", None),
        (r"\boxed{\{1,2\}}", r"\{1,2\}"),
        (r"\fbox{7}", "7"),
        (r"so \boxed 5$.", "5"),
        (r"\boxed{unbalanced", None),
        ("no box", None),
    ],
)
def test_math_gold(text, expected):
    assert math_gold(text) == expected


def test_gsm8k_gold():
    assert gsm8k_gold("work\n#### -12,000") == "-12000"
    assert gsm8k_gold("no marker") is None


# ---------------------------------------------------------------------------------------------------
# Prompt templates
# ---------------------------------------------------------------------------------------------------


def test_templates_produce_the_exact_text():
    question = "What is {x} + 1?"  # braces in the question are kept as they are
    assert build_prompt(question, "plain") == "What is {x} + 1?\n"
    assert build_prompt(question, "qwen-math") == (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
        "<|im_start|>user\nWhat is {x} + 1?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert build_prompt(question, "r1") == (
        "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. "
        "The Assistant first thinks about the reasoning process in the mind and then provides the User with "
        "the answer. The reasoning process is enclosed within <think> </think> and answer is enclosed within "
        "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer "
        "here </answer>.\nUser: What is {x} + 1?\nAssistant: <think>"
    )
    assert set(TEMPLATES) == {"plain", "qwen-math", "r1"}


def test_chat_template_uses_the_tokenizer():
    class FakeTokenizer:
        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert tokenize is False and add_generation_prompt is True
            return f"<user>{messages[0]['content']}</user><assistant>"

    assert build_prompt("Q", "chat", FakeTokenizer()) == "<user>Q</user><assistant>"
    with pytest.raises(ValueError, match="needs a tokenizer"):
        build_prompt("Q", "chat")


def test_unknown_template_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown template 'qwen'.*'plain'.*'qwen-math'.*'r1'"):
        build_prompt("Q", "qwen")


def test_reference_solutions_of_gsm8k_and_the_tiny_world(monkeypatch):
    rows = [{"question": "Q", "answer": "3 packs of 4: 3*4=<<3*4=12>>12.\nPlus 1,000.\n#### 1,012"}]
    fake_hub(monkeypatch, rows)
    (example,) = load_examples("gsm8k")
    assert example.answer == "1012"
    assert example.solution == "3 packs of 4: 3*4=12.\nPlus 1,000.\n\\boxed{1012}"
    tiny = load_examples("tiny", "train", limit=3)
    for e in tiny:  # the slip-free worked solution, ending in the gold answer's box
        assert e.solution.endswith(f"\\boxed{{{e.answer}}}"), e
        assert e.solution.count("\n") == {"easy": 3, "medium": 4, "hard": 6}[e.category]

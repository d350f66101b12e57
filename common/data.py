"""Datasets and prompt templates: every algorithm reads its questions and gold answers through here.

`load_examples(dataset, split)` turns one of these into a list of `Example`s:

    "tiny"             the built-in toy world (`common.tiny_task`), runs on CPU in seconds
    "tiny:T1,T2,..."   the toy world's tiers T1, T2, ... (easy, medium, hard, and long: never warmed up on;
                       wide-easy ... wide-long: two-digit numbers, for the world "tiny-wide")
    "gsm8k"            openai/gsm8k (config "main"); gold = the text after "####" in `answer`
    "math"             DigitalLearningGmbH/MATH-lighteval; gold = the LAST \\boxed{...} of `solution`
    "math500"          HuggingFaceH4/MATH-500 (split "test" only); gold = `answer`
    "hf:NAME[:CONFIG]" any Hugging Face dataset; `question_field` and `answer_field` are required
    "path/to.jsonl"    one JSON object per line, fields "question" and "answer" unless overridden

Every gold answer goes through `common.verify.gold_is_usable` and `normalize_gold`, so training and
evaluation compare against the same string. A row whose answer is missing, empty or unusable is skipped
and reported on stderr; a malformed row (bad JSON, no question) is an error, never a silent skip.

`build_prompt(question, template)` wraps a question in one of `TEMPLATES` ("plain", "qwen-math", "r1")
or in the tokenizer's own chat template ("chat"). Which template a run uses matters: Liu et al. (2025,
"Understanding R1-Zero-Like Training", arXiv:2503.20783) find it strongly shapes R1-Zero dynamics.
"""

import json
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from common.hub import hub_unreachable, unreachable_exit
from common.tiny_task import parse_tiers, tiny_examples


@dataclass(frozen=True)
class Example:
    question: str
    """The question text, without any prompt template."""
    answer: str
    """The normalized gold answer (`common.verify.normalize_gold`)."""
    category: str = ""
    """Difficulty tier / subject / level, for per-category metrics and curricula ("" when unknown)."""
    source: str = ""
    """Where the row came from: "gsm8k:test:17" (0-based dataset index) or "file.jsonl:12" (1-based line)."""
    solution: str = ""
    """A reference worked solution ending in the boxed answer, for methods that learn from demonstrations
    (an SFT warm-up, a demonstration prefix); "" when the dataset has none (`DatasetSpec.solution`)."""


# ---------------------------------------------------------------------------------------------------
# Gold-answer extraction: dataset-specific, before the shared normalization in common.verify
# ---------------------------------------------------------------------------------------------------


def gsm8k_gold(answer: str) -> str | None:
    """The final answer of a GSM8K solution: the text after "####", thousands separators removed.

    "Natalia sold 48/2 = 24 clips ... #### 1,234" -> "1234";  no "####" -> None
    """
    if "####" not in answer:
        return None
    return answer.split("####")[-1].strip().replace(",", "")


def math_gold(solution: str) -> str | None:
    r"""The content of the LAST \boxed{...} of a MATH solution, nested braces kept; None if it has none.

    Reads the box with the verifier's own parser (`common.verify.extract_answer`, no number fallback),
    so gold answers and completions are extracted alike.

    "First $\boxed{2}$, then $\boxed{\frac{1}{\sqrt{2}}}$." -> "\frac{1}{\sqrt{2}}";  "no box" -> None
    """
    from common.verify import extract_answer

    return extract_answer(solution, fallback=False)


_CALCULATOR = re.compile(r"<<[^<>]*>>")


def gsm8k_solution(row: dict) -> str:
    """A GSM8K answer as a worked solution: calculator annotations removed, "#### 72" -> "\\boxed{72}".

    >>> gsm8k_solution({"answer": "She has 3*4=<<3*4=12>>12 apples.\\n#### 12"})
    'She has 3*4=12 apples.\\n\\\\boxed{12}'
    """
    answer = str(row.get("answer", ""))
    if "####" not in answer:
        return ""
    reasoning, _, final = answer.rpartition("####")
    return _CALCULATOR.sub("", reasoning).rstrip() + "\n\\boxed{" + final.strip().replace(",", "") + "}"


def _solution_field(row: dict) -> str:
    """MATH, MATH-500 and JSONL files: an optional "solution" field (a worked solution with its box)."""
    return str(row.get("solution", "") or "")


def _math_level(row: dict) -> str:
    """MATH-lighteval stores "Level 3", MATH-500 stores 3: both become "Level 3"."""
    level = row.get("level", "")
    return f"Level {level}" if isinstance(level, int) else str(level)


def _category_field(row: dict) -> str:
    """Generic datasets and JSONL files: an optional "category" field."""
    return str(row.get("category", "") or "")


# ---------------------------------------------------------------------------------------------------
# Registry: adding a Hugging Face dataset is one entry here
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    hf_path: str = ""
    """The Hugging Face dataset name passed to `datasets.load_dataset` ("" for local data)."""
    config: str | None = None
    """The dataset config ("main" for gsm8k), or None for the default."""
    question_field: str = "question"
    answer_field: str = "answer"
    gold_from_answer: Callable[[str], str | None] = str.strip
    """Turns the answer field into the gold answer string; None means "no final answer in this row"."""
    category: Callable[[dict], str] = _category_field
    """Reads the category of a row."""
    splits: tuple[str, ...] = ("train", "test")
    """The splits the dataset has; asking for another is an error before anything is downloaded."""
    solution: Callable[[dict], str] = _solution_field
    """Reads a row's reference worked solution ("" when it has none)."""


DATASETS: dict[str, DatasetSpec] = {
    "gsm8k": DatasetSpec("openai/gsm8k", "main", "question", "answer", gsm8k_gold, solution=gsm8k_solution),
    "math": DatasetSpec(
        "DigitalLearningGmbH/MATH-lighteval", "default", "problem", "solution", math_gold, _math_level
    ),
    "math500": DatasetSpec(
        "HuggingFaceH4/MATH-500", None, "problem", "answer", category=_math_level, splits=("test",)
    ),
}

VALID_FORMS = (
    f"'tiny' or 'tiny:TIER,...', {', '.join(repr(name) for name in DATASETS)}, "
    "'hf:NAME' or 'hf:NAME:CONFIG' (with question_field and answer_field), or a path to a .jsonl file"
)


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------


def load_examples(
    dataset: str,
    split: str = "train",
    question_field: str | None = None,
    answer_field: str | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> list[Example]:
    """Load `dataset` as a list of `Example`s, in file / dataset order (the training loop shuffles).

    `question_field` / `answer_field` override the dataset's defaults (required for "hf:" datasets).
    `limit` keeps the first `limit` usable examples. `seed` only matters for "tiny", whose questions
    are generated. Raises FileNotFoundError for a missing .jsonl file, and ValueError for an unknown
    dataset or split, a malformed row, or when no row has a usable gold answer.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number or None, got {limit}")

    spec = _dataset_spec(dataset, split, question_field, answer_field)
    if is_tiny(dataset):
        generated = tiny_examples(split, limit, seed, parse_tiers(dataset))
        rows = ((f"{dataset}:{split}:{i}", row) for i, row in enumerate(generated))
    elif spec.hf_path:
        import datasets

        try:
            hf_rows = datasets.load_dataset(spec.hf_path, spec.config, split=split)
        except Exception as error:  # no network and not cached: one line saying how to get it (common.hub)
            if not hub_unreachable(error):
                raise
            config = f", {spec.config!r}" if spec.config else ""
            fetch = f'python -c "import datasets; datasets.load_dataset({spec.hf_path!r}{config})"'
            raise unreachable_exit(f"dataset {dataset!r}", spec.hf_path, fetch) from None
        rows = ((f"{dataset}:{split}:{i}", row) for i, row in enumerate(hf_rows))
    else:
        rows = _read_jsonl(dataset)

    return _examples_from_rows(
        rows,
        dataset,
        question_field or spec.question_field,
        answer_field or spec.answer_field,
        spec.gold_from_answer,
        spec.category,
        limit,
        spec.solution,
    )


def is_tiny(dataset: str) -> bool:
    """``"tiny"`` or ``"tiny:TIER,TIER,..."``: the built-in world's generated problems."""
    return dataset == "tiny" or dataset.startswith("tiny:")


def _dataset_spec(
    dataset: str, split: str, question_field: str | None, answer_field: str | None
) -> DatasetSpec:
    """The spec of a dataset argument, or the error for a name, split or file that cannot work."""
    if is_tiny(dataset):
        parse_tiers(dataset)  # raises on an unknown tier
        return DatasetSpec()
    if dataset in DATASETS:
        spec = DATASETS[dataset]
        if split not in spec.splits:
            raise ValueError(f"dataset {dataset!r} has splits {list(spec.splits)}, not {split!r}")
        return spec
    if dataset.startswith("hf:"):
        name, _, config = dataset.removeprefix("hf:").partition(":")
        if not name or not question_field or not answer_field:
            raise ValueError(
                f"{dataset!r}: a generic 'hf:NAME[:CONFIG]' dataset needs a name and both "
                "question_field and answer_field (e.g. --question-field problem --answer-field answer)"
            )
        return DatasetSpec(name, config or None)
    if dataset.endswith(".jsonl"):
        if not os.path.isfile(dataset):
            raise FileNotFoundError(f"no such dataset file: {dataset}")
        return DatasetSpec()
    raise ValueError(f"unknown dataset {dataset!r}; valid forms: {VALID_FORMS}")


def check_dataset(
    dataset: str, split: str = "train", question_field: str | None = None, answer_field: str | None = None
) -> None:
    """Fail fast on a dataset argument that cannot work, before anything is downloaded or loaded.

    Checks the name, the split and the fields a generic "hf:" dataset needs; a local .jsonl file is read
    through once: every line must be a JSON object with a non-empty question, and at least one row must
    have the answer field. Gold answers are not verified here (`load_examples` skips and counts those).
    Raises the same errors as `load_examples`, naming the file, line and field.

    >>> check_dataset("gsm9k")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: unknown dataset 'gsm9k'; valid forms: 'tiny' or 'tiny:TIER,...', 'gsm8k', 'math', ... .jsonl file
    """
    spec = _dataset_spec(dataset, split, question_field, answer_field)
    if is_tiny(dataset) or spec.hf_path:
        return
    question_field, answer_field = question_field or spec.question_field, answer_field or spec.answer_field
    rows_with_answer, first_row_fields = 0, None
    for source, row in _read_jsonl(dataset):
        first_row_fields = first_row_fields or sorted(row)
        _check_question(source, row, question_field)
        rows_with_answer += row.get(answer_field) is not None and bool(str(row[answer_field]).strip())
    if first_row_fields is None:
        raise ValueError(f"no rows in {dataset!r}")
    if not rows_with_answer:
        raise ValueError(
            f"no usable examples in {dataset!r}: no row has a non-empty answer field {answer_field!r} "
            f"(fields of the first row: {first_row_fields})"
        )


def check_template(template: str) -> None:
    """Fail fast on an unknown prompt template (the same error `build_prompt` raises).

    >>> check_template("qwen_math")
    Traceback (most recent call last):
    ValueError: unknown template 'qwen_math'; valid: ['plain', 'qwen-math', 'r1', 'chat']
    """
    if template != "chat" and template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; valid: {[*TEMPLATES, 'chat']}")


def _check_question(source: str, row: dict, question_field: str) -> None:
    if question_field not in row:
        raise ValueError(f"{source}: missing question field {question_field!r} (fields: {sorted(row)})")
    question = row[question_field]
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{source}: question field {question_field!r} is empty or not text: {question!r}")


def _read_jsonl(path: str) -> Iterator[tuple[str, dict]]:
    """Yield ("path:line", row) for each non-blank line; a line that is not a JSON object is an error."""
    with open(path, encoding="utf-8") as file:
        for line_number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{path}:{line_number}: not valid JSON ({error.msg}, column {error.colno})"
                ) from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{line_number}: expected a JSON object, got {type(row).__name__}")
            yield f"{path}:{line_number}", row


def _examples_from_rows(
    rows: Iterable[tuple[str, dict]],
    dataset: str,
    question_field: str,
    answer_field: str,
    gold_from_answer: Callable[[str], str | None],
    category: Callable[[dict], str],
    limit: int | None,
    solution: Callable[[dict], str] = _solution_field,
) -> list[Example]:
    """The row handling shared by every dataset form: check, extract, normalize, skip and report."""
    from common.verify import gold_is_usable, normalize_gold

    examples: list[Example] = []
    skipped: list[tuple[str, str, str]] = []  # (source, kind, detail)
    first_row_fields: list[str] | None = None
    for source, row in rows:
        if first_row_fields is None:
            first_row_fields = sorted(row)
        _check_question(source, row, question_field)
        question = row[question_field]

        raw_answer = row.get(answer_field)
        if raw_answer is None or not str(raw_answer).strip():
            skipped.append((source, "empty answer", f"answer field {answer_field!r} is missing or empty"))
            continue
        gold = gold_from_answer(str(raw_answer))
        if gold is None:
            skipped.append((source, "no final answer", f"no final answer found in field {answer_field!r}"))
            continue
        answer = normalize_gold(gold) if gold_is_usable(gold) else None
        if answer is None:
            skipped.append((source, "unusable gold", f"gold answer {gold!r} is not usable"))
            continue
        examples.append(Example(question, answer, category(row), source, solution(row)))
        if limit is not None and len(examples) >= limit:
            break

    _report_skipped(skipped)
    if first_row_fields is None:
        raise ValueError(f"no rows in {dataset!r}")
    if not examples:
        raise ValueError(
            f"no usable examples in {dataset!r}: all {len(skipped)} rows skipped, none had a usable gold "
            f"answer in field {answer_field!r} (fields of the first row: {first_row_fields})"
        )
    counts = Counter(kind for _, kind, _ in skipped)
    summary = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    print(
        f"loaded {len(examples)} examples from {dataset}"
        + (f" (skipped {len(skipped)}: {summary})" if skipped else "")
    )
    return examples


def _report_skipped(skipped: list[tuple[str, str, str]], show: int = 5) -> None:
    """The first `show` skipped rows one by one on stderr, then a count of the rest."""
    for source, _, detail in skipped[:show]:
        print(f"skipped {source}: {detail}", file=sys.stderr)
    if len(skipped) > show:
        print(f"... and {len(skipped) - show} more rows skipped", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------
# Prompt templates: "{question}" is replaced verbatim (str.replace, so the braces of \boxed{} stay)
# ---------------------------------------------------------------------------------------------------

TEMPLATES: dict[str, str] = {
    # What the tiny built-in world is trained on.
    "plain": "{question}\n",
    # Qwen2.5-Math's chat format, written out so that no tokenizer is needed.
    "qwen-math": (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
        "<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    ),
    # DeepSeek-R1-Zero. Answers are still scored from the last \boxed{} or the final number (common.verify),
    # not from the <answer> tags.
    "r1": (
        "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. "
        "The Assistant first thinks about the reasoning process in the mind and then provides the User with "
        "the answer. The reasoning process is enclosed within <think> </think> and answer is enclosed within "
        "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer "
        "here </answer>.\nUser: {question}\nAssistant: <think>"
    ),
}


def build_prompt(question: str, template: str, tokenizer=None) -> str:
    """The prompt text for `question` under `template`.

    "plain", "qwen-math" and "r1" are the fixed strings in `TEMPLATES`. "chat" uses the tokenizer's own
    chat template (a single user turn plus the generation prompt) and needs `tokenizer`.
    With "r1" the model is asked for <answer> tags, but answers are still scored from the last \\boxed{}
    or the final number, like every other template.

    build_prompt("1+1=?", "plain") -> "1+1=?\\n"
    """
    if template == "chat":
        if tokenizer is None:
            raise ValueError("template 'chat' needs a tokenizer (it uses tokenizer.apply_chat_template)")
        messages = [{"role": "user", "content": question}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    check_template(template)
    return TEMPLATES[template].replace("{question}", question)

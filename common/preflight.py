"""The checks every script's `validate()` ends with: bad input fails in a second, not after the model loads.

`check_run_args(args)` reads the fields that every `algos/*.py` `Args` shares (model, data, template,
sampling, evaluation and checkpoint flags) and exits with one message naming the flag, file, line or
field at fault: a model path that does not exist, an unknown dataset or split, a JSONL file with a
malformed line or a row without a question, an unknown template, a flag out of range, an output
directory that cannot be written. A local .jsonl training file without --eval-dataset is not an error,
but a note says that it is evaluated on its own rows. It loads nothing
and writes nothing, with one exception once every check has passed: a tiny world named by
--model-name-or-path is made ready here (``common.tiny_world.ensure_world``: its shipped copy, or built on
first use), the one place a script triggers that. What it cannot know cheaply (whether a hub id or an "hf:" dataset exists, whether
each gold answer parses) is found when the data and model load, still before the first rollout.
The method's own flags (e.g. a group size of 1 for a group-relative advantage) stay in its `validate()`.

    >>> check_run_args(Args(template="qwen_math"))  # doctest: +SKIP
    SystemExit: error: unknown template 'qwen_math'; valid: ['plain', 'qwen-math', 'r1', 'chat']
"""

import os
import sys
from pathlib import Path

from common.data import check_dataset, check_template
from common.model import check_model_path
from common.rollout_correction import check_args as check_correction_args
from common.tiny_task import WORLD_NAMES
from common.tiny_world import ensure_world


def default_eval_dataset(dataset: str) -> str:
    """The held-out dataset when --eval-dataset is not given: MATH evaluates on MATH-500."""
    return "math500" if dataset == "math" else dataset


def check_output_dir(path: str) -> None:
    """Raise ValueError unless the run directory can be created under ``path`` (checked, not created):
    the nearest part of it that exists must be a directory this process may write to."""
    existing = Path(path).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"--output-dir {path!r}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--output-dir {path!r}: no permission to write in {existing}")


def check_run_args(args) -> None:
    """Exit (SystemExit, non-zero) with one clear message if a shared flag cannot work."""
    problems = [
        (args.max_new_tokens < 1, f"--max-new-tokens must be >= 1, got {args.max_new_tokens}"),
        (args.temperature < 0, f"--temperature must be >= 0, got {args.temperature}"),
        (not 0 < args.top_p <= 1, f"--top-p must be in (0, 1], got {args.top_p}"),
        (args.eval_every < 0, f"--eval-every must be >= 0 (0: only before and after), got {args.eval_every}"),
        (args.eval_problems < 1, f"--eval-problems must be >= 1, got {args.eval_problems}"),
        (args.eval_n < 1, f"--eval-n must be >= 1, got {args.eval_n}"),
        (args.save_every < 1, f"--save-every must be >= 1, got {args.save_every}"),
        (args.warmup_steps < 0, f"--warmup-steps must be >= 0, got {args.warmup_steps}"),
        (args.learning_rate <= 0, f"--learning-rate must be > 0, got {args.learning_rate}"),
        (args.max_grad_norm <= 0, f"--max-grad-norm must be > 0, got {args.max_grad_norm}"),
        (args.num_steps < 0, f"--num-steps must be >= 0, got {args.num_steps}"),
        (args.prompts_per_step < 1, f"--prompts-per-step must be >= 1, got {args.prompts_per_step}"),
        (args.micro_batch_size < 1, f"--micro-batch-size must be >= 1, got {args.micro_batch_size}"),
        (args.updates_per_batch < 1, f"--updates-per-batch must be >= 1, got {args.updates_per_batch}"),
        (
            not 1 <= args.num_mini_batches <= args.prompts_per_step * max(args.group_size, 1),
            f"--num-mini-batches must be in [1, --prompts-per-step x --group-size], got {args.num_mini_batches}",
        ),
        (args.max_samples < 0, f"--max-samples must be >= 0 (0: no budget), got {args.max_samples}"),
    ]
    for failed, message in problems:
        if failed:
            raise SystemExit(f"error: {message}")
    check_correction_args(args)
    try:
        check_model_path(args.model_name_or_path)
        check_template(args.template)
        check_dataset(args.dataset, "train", args.question_field, args.answer_field)
        eval_dataset = args.eval_dataset or default_eval_dataset(args.dataset)
        check_dataset(eval_dataset, "test", args.question_field, args.answer_field)
        check_output_dir(args.output_dir)
    except (ValueError, OSError) as error:
        raise SystemExit(f"error: {error}") from None
    if eval_dataset == args.dataset and args.dataset.endswith(".jsonl"):
        print(
            f"note: --dataset {args.dataset} has no held-out split and no --eval-dataset was given, so the "
            "held-out evaluation uses the training rows themselves; pass --eval-dataset FILE.jsonl for a real "
            "held-out number",
            file=sys.stderr,
        )
    if args.model_name_or_path in WORLD_NAMES:
        ensure_world(args.model_name_or_path)

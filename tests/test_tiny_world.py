"""The tiny built-in world: the task, the tokenizer, and the measured quality of the base policy."""

import json
import random

from common.tiny_world import (
    HINT_TEMPLATE,
    TIERS,
    Problem,
    build_tokenizer,
    generate_problems,
    sample_problem,
    tiny_examples,
    worked_solution,
)
from common.verify import verify


def test_problems_are_deterministic_and_splits_disjoint():
    train, test = generate_problems(600, "train", seed=0), generate_problems(300, "test", seed=0)
    assert train == generate_problems(600, "train", seed=0)
    assert not {p.question for p in train} & {p.question for p in test}
    assert len({p.question for p in test}) == 300
    assert [p.category for p in test[:6]] == list(TIERS) * 2


def test_worked_solutions_reach_the_answer_unless_they_slip():
    rng = random.Random(0)
    for category in TIERS:
        for _ in range(50):
            p = sample_problem(rng, category)
            for careful in (False, True):
                text = worked_solution(p, careful=careful)
                assert verify(text, str(p.answer)).correct, text
            assert len(text.splitlines()) == len(p.steps) + 1  # one line per step, then the box
    # slips change the answer; careful lines never slip
    p = Problem("Compute 23+7-5.", 25, "easy", ((23, "+", 7), (30, "-", 5)))
    slipped = worked_solution(p, random.Random(0), slip_rate=1.0)
    assert not verify(slipped, "25").correct and verify(slipped, "25").parsed
    assert verify(worked_solution(p, random.Random(0), slip_rate=1.0, careful=True), "25").correct


def test_tiers_have_three_four_and_six_single_digit_steps():
    rng = random.Random(1)
    for category, num_steps in [("easy", 3), ("medium", 4), ("hard", 6)]:
        for _ in range(200):
            p = sample_problem(rng, category)
            assert len(p.steps) == num_steps and 0 <= p.answer <= 9
            assert all(0 <= v <= 9 and 1 <= x <= 9 for v, _, x in p.steps)


def test_tiny_examples_rows():
    rows = tiny_examples("test", 9)
    assert len(rows) == 9 and set(rows[0]) == {"question", "answer", "category"}
    assert HINT_TEMPLATE.format(question="Q.", answer=3) == "Q. The answer is 3. Show the working."


def test_tokenizer_is_one_token_per_character_and_round_trips(tmp_path):
    from transformers import AutoTokenizer

    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)  # exactly how every script loads it
    text = "Compute (12+9)*3-4.\n12 + 9 = 21\n\\boxed{59}"
    ids = loaded(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and loaded.decode(ids) == text
    assert loaded.eos_token == loaded.pad_token == "<|endoftext|>"
    assert loaded.convert_tokens_to_ids("<|im_end|>") != loaded.unk_token_id


def test_base_policy_is_imperfect_but_capable(tiny_world_dir):
    """Measured at build time on 300 held-out problems with 16 samples each (world_card.json)."""
    card = json.loads((tiny_world_dir / "world_card.json").read_text())
    curve = {int(k): v for k, v in card["base_policy"]["curve"].items()}
    assert 0.10 <= curve[1] <= 0.60, curve
    assert curve[16] >= curve[1] + 0.15, curve
    # measured with max_new_tokens 48: six careful steps can run past it, so a few answers are cut off
    assert card["base_policy"]["parsed_rate"] > 0.9
    assert 1e6 < card["num_parameters"] < 1e7

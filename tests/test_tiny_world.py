"""The tiny built-in world: the task, the tokenizer, and the measured quality of the base policy."""

import json
import random

import pytest

from common.tiny_task import (
    HINT_TEMPLATE,
    TIER_STEPS,
    TIERS,
    WIDE_TIERS,
    WORLD_NAMES,
    Problem,
    generate_problems,
    parse_tiers,
    sample_problem,
    tiny_examples,
    worked_solution,
    world_dir,
)
from common.tiny_world import (
    WORLDS,
    WorldConfig,
    build_tiny_world,
    build_tokenizer,
    ensure_world,
    ship_world,
    shipped_world_dir,
    shipped_world_problem,
    warmup_pairs,
    working_report,
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
            text = worked_solution(p)
            assert verify(text, str(p.answer)).correct, text
            assert len(text.splitlines()) == len(p.steps) + 1  # one line per step, then the box
            assert text.splitlines()[-2] == str(p.answer)
    # a slip is carried forward: the working stays consistent, the answer is wrong but parsed
    p = Problem("Compute 3+5-4.", 4, "easy", ((3, "+", 5), (8, "-", 4)))
    assert worked_solution(p) == "8-4\n4\n\\boxed{4}"
    slipped = worked_solution(p, random.Random(0), slip_rate=1.0)
    assert slipped.splitlines()[0] in ("7-4", "9-4")
    assert not verify(slipped, "4").correct and verify(slipped, "4").parsed


def test_warmup_data_mixes_slips_hints_and_confidence_tags():
    from common.tiny_task import CONFIDENCE_SUFFIX

    cfg = WorldConfig(num_train_problems=2000)
    pairs = warmup_pairs(cfg)
    hinted = [(q, c) for q, c in pairs if "The answer is" in q]
    tagged = [(q, c) for q, c in pairs if CONFIDENCE_SUFFIX in q]
    plain = [(q, c) for q, c in pairs if (q, c) not in hinted and (q, c) not in tagged]
    assert abs(len(hinted) / len(pairs) - cfg.hint_share) < 0.03
    assert abs(len(tagged) / len(pairs) - cfg.confidence_share) < 0.03
    assert all(c.endswith("</confidence>") for _, c in tagged)
    # hinted working never slips; plain working slips on about slip_rate of its lines
    for q, c in hinted:
        assert verify(c, q.split("The answer is ")[1].split(".")[0]).correct
    first_lines_right = []
    for q, c in plain:
        a, op, b = q[len("Compute ") : len("Compute ") + 3]
        first_lines_right.append(int(c.split("\n")[0].split("+")[0].split("-")[0]) == eval(a + op + b))
    slip = 1 - sum(first_lines_right) / len(first_lines_right)
    assert abs(slip - cfg.slip_rate) < 0.04, slip


def test_tiers_have_three_four_six_and_eight_single_digit_steps():
    rng = random.Random(1)
    for category, num_steps in [("easy", 3), ("medium", 4), ("hard", 6), ("long", 8)]:
        for _ in range(200):
            p = sample_problem(rng, category)
            assert len(p.steps) == num_steps and 0 <= p.answer <= 9
            assert all(0 <= v <= 9 and 1 <= x <= 9 for v, _, x in p.steps)


def test_tiny_examples_rows():
    rows = tiny_examples("test", 9)
    assert len(rows) == 9 and set(rows[0]) == {"question", "answer", "category", "solution"}
    assert all(
        row["solution"].endswith(f"\\boxed{{{row['answer']}}}") for row in rows
    )  # the slip-free working
    first = generate_problems(9, "test", seed=0)[0]
    assert rows[0]["question"] == first.question and rows[0]["solution"] == worked_solution(first)
    assert HINT_TEMPLATE.format(question="Q.", answer=3) == "Q. The answer is 3. Show the working."
    assert len(tiny_examples("test")) == 300 and len(tiny_examples("train")) == 3000  # 100 / 1,000 per tier


def test_long_tier_is_selected_by_name_and_never_in_the_warm_up():
    assert parse_tiers("tiny") == ("easy", "medium", "hard")
    assert parse_tiers("tiny:easy,medium,hard,long") == ("easy", "medium", "hard", "long")
    rows = tiny_examples("test", tiers=parse_tiers("tiny:hard,long"))
    assert len(rows) == 200 and [r["category"] for r in rows[:4]] == ["hard", "long", "hard", "long"]
    long_rows = [r for r in rows if r["category"] == "long"]
    assert all(r["question"].count("+") + r["question"].count("-") == 8 for r in long_rows)
    # adding the long tier leaves the problems of the other tiers as they were (same generator, same order)
    assert (
        tiny_examples("test", 3)
        == tiny_examples("test", 4, tiers=parse_tiers("tiny:easy,medium,hard,long"))[:3]
    )
    warm_questions = {
        q.split(" ")[1].rstrip(".\n") for q, _ in warmup_pairs(WorldConfig(num_train_problems=2000))
    }
    assert max(q.count("+") + q.count("-") for q in warm_questions) == 6
    for bad, message in [
        ("tiny:huge", "unknown tier 'huge'"),
        ("tiny:hard,hard", "named twice"),
        ("tiny:", "unknown tier ''"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_tiers(bad)


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
    assert card["base_policy"]["parsed_rate"] > 0.97  # the model has learned the format
    assert card["base_policy"]["truncated_rate"] < 0.01
    assert 5e5 < card["num_parameters"] < 1e7


def test_working_report_separates_right_answers_from_right_working(tiny_world_dir):
    """On the hard tier the base writes one line per step; on the long tier it never writes eight lines, so
    none of its right answers there comes with right working (they are slips that cancel, or guesses)."""
    report = working_report(str(tiny_world_dir), ("hard", "long"), num_problems=8, n=8, max_new_tokens=112)
    for row in report.values():
        assert 0 <= row["exact"] <= row["correct"] <= 1 and 0 <= row["full_length"] <= 1
    assert report["hard"]["full_length"] > 0.9 and report["hard"]["correct"] > 0.1
    assert report["long"]["exact"] == 0 and report["long"]["full_length"] < 0.1


def test_hinted_long_world_adds_only_hinted_long_problems_to_the_warm_up():
    base = warmup_pairs(WorldConfig(num_train_problems=500))
    variant_cfg = WorldConfig(num_train_problems=500, hinted_only_tiers=("long",), hinted_only_share=0.1)
    variant = warmup_pairs(variant_cfg)
    assert variant[: len(base)] == base  # the default pairs are untouched
    assert len(base) + 35 < len(variant) < len(base) + 50  # 50 drawn; held-out questions are skipped
    for prompt, completion in variant[len(base) :]:
        question = prompt.split(" The answer")[0]
        assert question.count("+") + question.count("-") == 8 and " The answer is " in prompt
        assert completion.count("\n") == 8  # the full working, one line per step, no slips
    assert WORLDS["tiny"] == WorldConfig() and WORLDS["tiny-hinted-long"].hinted_only_tiers == ("long",)
    assert world_dir("tiny").name == "tiny-world-v5"
    with pytest.raises(ValueError, match="unknown tiny world 'tiny-huge'"):
        build_tiny_world(name="tiny-huge")


def test_building_a_world_leaves_the_callers_random_state_alone(tmp_path, monkeypatch):
    """A script seeds, then loads "tiny": a first run that builds the world must sample like a run that
    finds it cached, so the build may not reseed the caller's generators."""
    import torch

    import common.tiny_world as tw

    monkeypatch.setenv("RLVR_CACHE_DIR", str(tmp_path))
    small = WorldConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, warmup_steps=2,
                        batch_size=2, num_train_problems=20)  # fmt: skip
    monkeypatch.setitem(tw.WORLDS, "tiny-test", small)
    torch.manual_seed(1)
    random.seed(1)
    expected = (torch.rand(3).tolist(), random.random())
    torch.manual_seed(1)
    random.seed(1)
    build_tiny_world(name="tiny-test", measure=False)
    assert (tmp_path / "tiny-test-world-v5" / "world_card.json").is_file()
    assert (torch.rand(3).tolist(), random.random()) == expected


def test_wide_tiers_change_one_digit_per_step_without_a_carry():
    """The wide tiers: two-digit numbers, each operation adds or subtracts units (1..9) or tens (10..90)
    and never carries, so every line is a single-digit sum on one digit and the answer is one of 0..99."""
    rng = random.Random(0)
    answers = set()
    for tier in ("wide-easy", "wide-medium", "wide-hard", "wide-long"):
        for _ in range(100):
            p = sample_problem(rng, tier)
            assert p.category == tier and len(p.steps) == TIER_STEPS[tier]
            for value, op, operand in p.steps:
                place = 10 if operand >= 10 else 1
                assert operand % place == 0 and 1 <= operand // place <= 9
                after = value + operand if op == "+" else value - operand
                assert 0 <= after <= 99
                assert after // (110 - place) == value // (110 - place)  # the other digit is untouched
            text = worked_solution(p)
            assert verify(text, str(p.answer)).correct and len(text.splitlines()) == len(p.steps) + 1
            answers.add(p.answer)
    assert len(answers) > 60  # a guess is rarely right
    # a slip writes another digit for the one the step changed, and is carried forward
    p = Problem("Compute 47+20-3.", 64, "wide-easy", ((47, "+", 20), (67, "-", 3)))
    assert worked_solution(p) == "67-3\n64\n\\boxed{64}"
    firsts = set()
    for seed in range(40):
        first, second = worked_solution(p, random.Random(seed), slip_rate=1.0).splitlines()[:2]
        assert first.endswith("7-3") and first != "67-3"
        value = int(first[:-2]) - 3
        assert second != str(value) and second[:-1] == str(value)[:-1]  # the units digit is wrong
        firsts.add(first)
    assert len(firsts) == 9  # any other tens digit: two slips rarely cancel


def test_wide_world_warms_up_on_wide_tiers_with_extra_hinted_long_problems():
    import dataclasses

    cfg = dataclasses.replace(WORLDS["tiny-wide"], num_train_problems=1000)
    assert cfg.tiers == (*WIDE_TIERS, "wide-long") and cfg.hinted_only_tiers == ("wide-long",)
    pairs = warmup_pairs(cfg)
    expressions = [q.split(" ")[1] for q, _ in pairs]
    steps = [e.count("+") + e.count("-") for e in expressions]
    assert set(steps) == {3, 4, 6, 8} and all(int(e.split("+")[0].split("-")[0]) >= 10 for e in expressions)
    long = [(q, c) for (q, c), k in zip(pairs, steps) if k == 8]
    hinted = [(q, c) for q, c in long if " The answer is " in q]
    plain = [(q, c) for q, c in long if q.endswith(".\n") and " The answer is " not in q]
    assert 150 < len(hinted) < 240  # ~180 extra (200 drawn, held-out skipped) + ~10 from the 10% hint share
    assert 50 < len(plain) < 110  # 10% of the plain problems
    for q, c in hinted:  # hinted working never slips: it ends with the stated answer
        assert q.split(" The answer is ")[1].startswith(c.splitlines()[-2] + ".")
    assert [e["category"] for e in tiny_examples("test", 4, tiers=("wide-hard", "wide-long"))] == [
        "wide-hard",
        "wide-long",
        "wide-hard",
        "wide-long",
    ]


def test_world_names_resolve_without_the_builder(tmp_path):
    """Naming a world resolves to its cache directory with the task module only: the model and data
    helpers never import the builder (common.tiny_world), whose registry has the same names."""
    import subprocess
    import sys

    assert tuple(WORLDS) == WORLD_NAMES
    code = (
        "import sys; from common.model import check_model_path, resolve_model_path; import common.data;"
        "check_model_path('tiny-wide'); print(resolve_model_path('tiny'));"
        "assert 'common.tiny_world' not in sys.modules, 'the builder was imported'"
    )
    cache = tmp_path / "cache"
    (cache / "tiny-world-v5").mkdir(parents=True)
    (cache / "tiny-world-v5" / "world_card.json").write_text("{}")
    env = {**__import__("os").environ, "RLVR_CACHE_DIR": str(cache)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == str(cache / "tiny-world-v5")
    (cache / "tiny-world-v5" / "world_card.json").unlink()  # not made yet: one line saying how
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert "FileNotFoundError: --model-name-or-path 'tiny': the world is not in" in out.stderr
    assert "python -m common.tiny_world build --name tiny" in out.stderr


def test_the_shipped_worlds_match_their_checksums_and_cards():
    """Every world shipped in worlds/ is complete and intact, and its card is the card of WORLDS' config."""
    shipped = [name for name in WORLD_NAMES if shipped_world_dir(name).is_dir()]
    assert "tiny" in shipped  # the default world ships, so a first run needs no build
    for name in shipped:
        src = shipped_world_dir(name)
        assert shipped_world_problem(src) is None, name
        card = json.loads((src / "world_card.json").read_text())
        expected = json.loads(json.dumps(__import__("dataclasses").asdict(WORLDS[name])))
        assert card["config"] == expected and card["version"] == "v5" and "base_policy" in card
        listed = {line.split("  ")[1] for line in (src / "SHA256SUMS").read_text().splitlines()}
        assert listed == {p.name for p in src.iterdir()} - {"SHA256SUMS"}


def test_ensure_world_copies_a_matching_shipped_copy_and_builds_otherwise(tmp_path, monkeypatch, capsys):
    import common.tiny_world as tw

    monkeypatch.setenv("RLVR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(tw, "SHIPPED_WORLDS", tmp_path / "shipped")
    small = WorldConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, warmup_steps=2,
                        batch_size=2, num_train_problems=20)  # fmt: skip
    monkeypatch.setitem(tw.WORLDS, "tiny-test", small)
    built = []
    real_build = tw._build
    monkeypatch.setattr(
        tw, "_build", lambda out, cfg, measure: built.append(out) or real_build(out, cfg, False)
    )

    # nothing shipped: one line says so, and the world is built
    out = ensure_world("tiny-test")
    assert built == [out] and (out / "world_card.json").is_file()
    assert (
        f"tiny world 'tiny-test': no shipped copy ({tmp_path}/shipped/tiny-test-world-v5/SHA256SUMS is absent); building it"
        in capsys.readouterr().err
    )
    assert ensure_world("tiny-test") == out and len(built) == 1  # cached: nothing else happens

    # ship it, empty the cache: the shipped copy is copied in, card and weights included, with no build
    src = ship_world("tiny-test")
    assert shipped_world_problem(src) is None
    weights = (out / "model.safetensors").read_bytes()
    __import__("shutil").rmtree(out)
    assert ensure_world("tiny-test") == out and len(built) == 1
    assert (out / "model.safetensors").read_bytes() == weights and (out / "world_card.json").is_file()
    assert "the shipped copy" in capsys.readouterr().err

    # a shipped file that does not match its checksum: said in one line, and built instead
    data = bytearray((src / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (src / "model.safetensors").write_bytes(bytes(data))
    __import__("shutil").rmtree(out)
    ensure_world("tiny-test")
    err = capsys.readouterr().err
    assert "fails its checksum (model.safetensors is missing or differs); building it" in err
    assert len(built) == 2
    with pytest.raises(ValueError, match="unknown tiny world 'tiny-huge'"):
        ensure_world("tiny-huge")

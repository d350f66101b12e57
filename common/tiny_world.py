"""The tiny built-in world's builder: a character tokenizer, a small Qwen2 policy and its warm-up.

Everything here is built locally (no downloads) so that every algorithm runs, and learns, on a laptop CPU.
The task (problems, tiers, worked solutions, the train/test split) is ``common/tiny_task.py``; this module
makes a policy for it and sits above the helpers of ``common/`` (it measures the policy with them):

* **Tokenizer.** One token per character: the stock byte-level ``Qwen2Tokenizer`` with no merges, and
  the special tokens of the Qwen2.5 family (``<|endoftext|>`` is both EOS and padding, as in
  Qwen2.5-Math, so the code must keep an explicit completion mask), saved with a chat template in the
  Hugging Face format.
* **Model.** A ``Qwen2ForCausalLM`` of under a million parameters, saved with ``save_pretrained``, so
  the scripts load it exactly as they load ``Qwen/Qwen2.5-Math-1.5B``.
* **Warm-up.** A short supervised run on worked solutions in which every line has a 30% chance of a
  plausible *slip* (its result off by one, carried forward consistently). The model learns the method
  (the most likely result on a line is almost always the right one: greedy decoding solves 84% of the
  held-out problems) and also learns to slip, if less often than its data does. Sampled at temperature
  1 the base policy is therefore capable but unreliable: it solves some problems at the first try and
  many more given several. RL has a real behaviour to sharpen. (The reward checks only the boxed answer;
  most right answers come with some wrong lines whose slips cancel, and RL raises the right-answer rate
  far more than the share of workings with every line right: ``working_report``.) The long tier is never
  seen in the default world's warm-up: the base policy does not write its eight-line working at all, and
  its right answers there (about one in ten) are guesses (``working_report``). The warm-up mix
  also contains the formats later methods need: a *hinted* prompt that states the answer and asks for
  the working (ExPO's self-explanations; hinted solutions never slip) and a prompt that asks for a
  ``<confidence>`` tag (RLCR).
* **Worlds.** ``WORLDS`` configures each world a model name selects (``tiny_task.WORLD_NAMES``). The world
  ``"tiny-wide"`` warms up on the ``wide-*`` tiers, all four plain (``wide-long`` the rarest) plus extra
  hinted ``wide-long`` problems: its base policy rarely solves ``wide-long`` (about one sample in thirty)
  yet, given the answer, writes a right eight-line working three times in five, which is the setting ExPO
  and the NSR paper's large-k claim need (``docs/results.md``).

First use: ``ensure_world(name)`` is the one place a world is made ready; every script reaches it through
``common.preflight.check_run_args``. It returns the cached world (``tiny_task.world_dir``) if there is
one; otherwise it copies the world shipped in ``worlds/<name>-world-<version>/`` when every file matches
that directory's ``SHA256SUMS``, and builds it when the shipped copy is absent or does not match (saying
which, in one line). ``build_tiny_world()`` builds it (a few minutes on two CPU cores); the measured
pass@k of the base policy is written next to the weights in ``world_card.json``. The shipped copies are
reproduced with ``python -m common.tiny_world build --name NAME --force --ship`` (a CPU build on
another machine or thread count may differ in the last bits of the weights, so it writes new checksums).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from common.evaluate import evaluate_policy
from common.model import load_policy
from common.rollout import HFSampler
from common.tiny_task import (
    CONFIDENCE_SUFFIX,
    HINT_TEMPLATE,
    TIER_STEPS,
    TIERS,
    WIDE_TIERS,
    WORLD_NAMES,
    WORLD_VERSION,
    generate_problems,
    is_test_question,
    sample_problem,
    tiny_examples,
    worked_solution,
    world_dir,
)
from common.verify import Verifier

# --------------------------------------------------------------------------------------------------
# Tokenizer and model
# --------------------------------------------------------------------------------------------------

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_tokenizer():
    """A byte-level tokenizer with no merges: exactly one token per byte (one per character for ASCII).

    It is the stock ``Qwen2Tokenizer`` (byte-level BPE) with an empty merge list, so ``AutoTokenizer``,
    vLLM and every other loader treat it exactly like the Qwen2.5 tokenizer. Special tokens follow
    Qwen2.5: ``<|endoftext|>`` is both EOS and padding (as in Qwen2.5-Math), plus the chat markers.
    """
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # the 256 byte symbols
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + alphabet)}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                               unk_token="<|endoftext|>", padding_side="left", model_max_length=512)  # fmt: skip
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@dataclass
class WorldConfig:
    """Sizes and warm-up settings of the tiny world (recorded in ``world_card.json``)."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    warmup_steps: int = 1200
    batch_size: int = 32
    learning_rate: float = 3e-3
    slip_rate: float = 0.3
    tiers: tuple[str, ...] = TIERS  # the warm-up's plain problems (and the base policy's measurement)
    tier_weights: tuple[float, ...] = (0.4, 0.4, 0.2)
    hint_share: float = 0.1
    confidence_share: float = 0.1
    num_train_problems: int = 20000
    seed: int = 0
    hinted_only_tiers: tuple[str, ...] = ()  # tiers added to the warm-up in hinted form only (see WORLDS)
    hinted_only_share: float = 0.0  # how many of them, as a share of num_train_problems


# The worlds a model name selects: "tiny" is the default world of every script. "tiny-hinted-long" is the
# same world plus about 1,800 long-tier problems in the warm-up (2,000 drawn, held-out questions skipped),
# all in the hinted form (the prompt states the answer, the working is always right) and none plain: the
# base can then write a long tier's working when given the answer, as ExPO needs, while a plain long-tier
# prompt is still unlike anything it saw (but its explanations turned out right in shape, not in content).
# "tiny-wide" is on the wide tiers (two-digit numbers, answers 0..99): plain problems of all four, wide-long
# the rarest (10%) and, with eight lines that may each slip, rarely solved; plus about 3,600 extra wide-long
# problems in hinted form (never slipping), so that given the answer the base writes a right long working
# most of the time; 1,600 steps. (A build without plain wide-long problems could not even copy a long
# expression after a plain prompt (only after a hinted one), and ExPO's self-explanations, right as they
# were, did not transfer to the plain prompt in 20 steps.) A slip writes any other digit, so slips rarely
# cancel and a right answer is rarely a guess.
WORLDS: dict[str, WorldConfig] = {
    "tiny": WorldConfig(),
    "tiny-hinted-long": WorldConfig(hinted_only_tiers=("long",), hinted_only_share=0.1),
    "tiny-wide": WorldConfig(
        tiers=(*WIDE_TIERS, "wide-long"),
        tier_weights=(0.35, 0.35, 0.2, 0.1),
        hinted_only_tiers=("wide-long",),
        hinted_only_share=0.2,
        warmup_steps=1600,
    ),
}


def build_model(tokenizer, cfg: WorldConfig):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen2ForCausalLM(config)


# --------------------------------------------------------------------------------------------------
# Warm-up (supervised) and the build entry point
# --------------------------------------------------------------------------------------------------


def warmup_pairs(cfg: WorldConfig) -> list[tuple[str, str]]:
    """(prompt, completion) pairs for the supervised warm-up, prompts in the "plain" template."""
    rng = random.Random(f"tiny-warmup-{cfg.seed}")
    problems = []
    while len(problems) < cfg.num_train_problems:
        p = sample_problem(rng, rng.choices(cfg.tiers, weights=cfg.tier_weights)[0])
        if not is_test_question(p.question):  # never warm up on held-out questions
            problems.append(p)
    pairs = []
    for p in problems:
        u = rng.random()
        if u < cfg.hint_share:  # ExPO-style hinted prompt: the working is always right
            question = HINT_TEMPLATE.format(question=p.question, answer=p.answer)
            pairs.append((question + "\n", worked_solution(p)))
        elif u < cfg.hint_share + cfg.confidence_share:  # RLCR-style confidence tag (uninformative)
            solution = worked_solution(p, rng, cfg.slip_rate)
            conf = rng.choice([0.2, 0.4, 0.6, 0.8])
            pairs.append(
                (p.question + CONFIDENCE_SUFFIX + "\n", f"{solution}\n<confidence>{conf}</confidence>")
            )
        else:
            pairs.append((p.question + "\n", worked_solution(p, rng, cfg.slip_rate)))
    extra_rng = random.Random(f"tiny-hinted-only-{cfg.seed}")  # its own stream: the pairs above never change
    for i in range(round(cfg.num_train_problems * cfg.hinted_only_share) if cfg.hinted_only_tiers else 0):
        p = sample_problem(extra_rng, cfg.hinted_only_tiers[i % len(cfg.hinted_only_tiers)])
        if not is_test_question(p.question):
            pairs.append(
                (HINT_TEMPLATE.format(question=p.question, answer=p.answer) + "\n", worked_solution(p))
            )
    return pairs


def warmup(model, tokenizer, cfg: WorldConfig, log_every: int = 100) -> list[float]:
    """Supervised fine-tuning on completion tokens (EOS included), AdamW with cosine decay."""
    pairs = warmup_pairs(cfg)
    eos = tokenizer.eos_token_id
    prompt_ids = tokenizer([p for p, _ in pairs], add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer([c for _, c in pairs], add_special_tokens=False)["input_ids"]
    encoded = [(p, c + [eos]) for p, c in zip(prompt_ids, completion_ids)]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.01, betas=(0.9, 0.98))
    warm = max(1, cfg.warmup_steps // 20)

    def lr_at(step):
        if step < warm:
            return (step + 1) / warm
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, cfg.warmup_steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = random.Random(f"tiny-batches-{cfg.seed}")
    model.train()
    losses, start = [], time.time()
    for step in range(cfg.warmup_steps):
        batch = gen.sample(encoded, cfg.batch_size)
        width = max(len(p) + len(c) for p, c in batch)
        ids = torch.full((len(batch), width), eos, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (p, c) in enumerate(batch):  # right padding for training
            seq = p + c
            ids[i, : len(seq)] = torch.tensor(seq)
            labels[i, len(p) : len(seq)] = torch.tensor(c)
            attn[i, : len(seq)] = 1
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % log_every == 0 or step == 0:
            rate = (step + 1) / (time.time() - start)
            eta = (cfg.warmup_steps - step - 1) / rate
            print(
                f"  warm-up step {step + 1}/{cfg.warmup_steps}  loss {sum(losses[-log_every:]) / len(losses[-log_every:]):.3f}"
                f"  ({rate:.1f} steps/s, ~{eta:.0f}s left)",
                file=sys.stderr,
                flush=True,
            )
    model.eval()
    return losses


SHIPPED_WORLDS = Path(__file__).resolve().parent.parent / "worlds"  # built worlds committed with the code


def shipped_world_dir(name: str = "tiny") -> Path:
    """The shipped copy of the world ``name``: ``worlds/<name>-world-<version>/`` at the repository root."""
    return SHIPPED_WORLDS / world_dir(name).name


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shipped_world_problem(src: Path) -> str | None:
    """Why the shipped world at ``src`` cannot be used, or None when every file listed in its
    ``SHA256SUMS`` (``sha256sum`` format) exists and matches its checksum."""
    sums = src / "SHA256SUMS"
    if not sums.is_file():
        return f"no shipped copy ({sums} is absent)"
    for line in sums.read_text().splitlines():
        digest, _, filename = line.partition("  ")
        if not (src / filename).is_file() or _sha256(src / filename) != digest:
            return f"the shipped copy {src} fails its checksum ({filename} is missing or differs)"
    return None


@contextmanager
def _world_lock(out: Path):
    """Hold the lock file of the world directory ``out``: another process making the same world waits."""
    import fcntl

    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_world(name: str = "tiny") -> Path:
    """The world ``name`` ready to load (its ``world_dir``): the one place a world is made on first use.

    A cached world is used as it is. Otherwise the shipped copy (``shipped_world_dir``) is copied in when
    every file matches its ``SHA256SUMS``; when it is absent or does not match, one line says so and the
    world is built (``build_tiny_world``, minutes). The copy appears atomically, like a build.
    """
    if name not in WORLDS:
        raise ValueError(f"unknown tiny world {name!r}; worlds: {', '.join(WORLDS)}")
    out = world_dir(name)
    if (out / "world_card.json").exists():
        return out
    with _world_lock(out):
        if (out / "world_card.json").exists():
            return out
        src = shipped_world_dir(name)
        problem = shipped_world_problem(src)
        if problem is not None:
            print(f"tiny world {name!r}: {problem}; building it", file=sys.stderr, flush=True)
            return _build(out, WORLDS[name], measure=True)
        tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        os.replace(tmp, out)
        print(f"tiny world {name!r}: the shipped copy {src} (checksums match) -> {out}", file=sys.stderr)
        return out


def ship_world(name: str = "tiny") -> Path:
    """Copy the built world ``name`` into ``shipped_world_dir(name)`` with a ``SHA256SUMS`` of its files
    (what the repository commits; ``python -m common.tiny_world build --name NAME --ship``)."""
    src, dst = world_dir(name), shipped_world_dir(name)
    if not (src / "world_card.json").exists():
        raise FileNotFoundError(f"world {name!r} is not built in {src}")
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("SHA256SUMS"))
    files = sorted(p.name for p in dst.iterdir() if p.is_file())
    (dst / "SHA256SUMS").write_text("".join(f"{_sha256(dst / f)}  {f}\n" for f in files))
    return dst


def build_tiny_world(
    force: bool = False, cfg: WorldConfig | None = None, measure: bool = True, name: str = "tiny"
) -> Path:
    """Build (or reuse the cached) world ``name`` (a key of ``WORLDS``) and return the directory holding
    the model and tokenizer; the shipped copy is not looked at (``ensure_world`` does that).

    The directory appears atomically: it is written under a temporary name and renamed at the end,
    so an interrupted build is simply redone next time. Concurrent callers wait on a lock file.
    """
    if name not in WORLDS:
        raise ValueError(f"unknown tiny world {name!r}; worlds: {', '.join(WORLDS)}")
    cfg = cfg or WORLDS[name]
    out = world_dir(name)
    if (out / "world_card.json").exists() and not force:
        return out
    with _world_lock(out):
        if (out / "world_card.json").exists() and not force:
            return out
        return _build(out, cfg, measure)


def _build(out: Path, cfg: WorldConfig, measure: bool) -> Path:
    """Build the world into ``out``. The caller's random state is left as it was (the build seeds its own),
    so a run that builds the world on first use samples exactly as a run that finds it cached."""
    python_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        try:
            return _build_seeded(out, cfg, measure)
        finally:
            random.setstate(python_state)


def _build_seeded(out: Path, cfg: WorldConfig, measure: bool) -> Path:
    print(f"Building the tiny world in {out} (once; cached afterwards)...", file=sys.stderr, flush=True)
    start = time.time()
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, cfg)
    num_params = sum(p.numel() for p in model.parameters())
    print(f"  model: Qwen2, {num_params / 1e6:.2f}M parameters; vocab {len(tokenizer)}", file=sys.stderr)
    losses = warmup(model, tokenizer, cfg)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    card = {
        "version": WORLD_VERSION,
        "config": asdict(cfg),
        "num_parameters": num_params,
        "final_warmup_loss": sum(losses[-50:]) / len(losses[-50:]),
        "build_seconds": round(time.time() - start, 1),
    }
    if measure:
        card["base_policy"] = measure_base_policy(tmp, tiers=cfg.tiers)
    (tmp / "world_card.json").write_text(json.dumps(card, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    print(f"  tiny world ready in {time.time() - start:.0f}s: {out}", file=sys.stderr, flush=True)
    return out


def measure_base_policy(
    model_dir: Path, n: int = 16, num_problems: int = 300, tiers: tuple[str, ...] = TIERS
) -> dict:
    """pass@k (k = 1..n) of the warmed-up policy on held-out problems, overall and per tier."""
    model, tokenizer = load_policy(str(model_dir))
    examples = tiny_examples("test", num_problems, tiers=tiers)
    max_new_tokens = 128 if any(t.startswith("wide-") for t in tiers) else 80  # wide-long: up to 119
    return evaluate_policy(
        model, tokenizer, examples, n=n, template="plain", max_new_tokens=max_new_tokens, temperature=1.0
    )


def working_report(
    model: str, tiers: tuple[str, ...] = ("hard", "long"), num_problems: int = 48, n: int = 32,
    max_new_tokens: int = 112, seed: int = 0, hint: bool = False,
) -> dict[str, dict[str, float]]:  # fmt: skip
    """How a policy reaches its answers, per tier: the reward only checks the boxed answer, so this looks
    at the working too. For ``num_problems`` held-out problems of each tier and ``n`` samples each
    (temperature 1): ``correct`` is the share of samples with the right answer (pass@1), ``exact`` the
    share with the right answer *and* every line of the working right (the completion equals
    ``worked_solution``), and ``full_length`` the share that write one line per operation (any values).
    A right answer after wrong lines comes from slips that cancel, or from a guess: answers are 0..9
    (0..99 in the wide tiers). With ``hint`` the prompts state the answer (``HINT_TEMPLATE``, as ExPO asks for explanations)."""
    policy, tokenizer = load_policy(str(ensure_world(model)) if model in WORLD_NAMES else model)
    sampler, verifier = HFSampler(policy, tokenizer, compute_logprobs=False), Verifier()
    report = {}
    try:
        for tier in tiers:
            torch.manual_seed(seed)
            problems = generate_problems(num_problems, "test", seed, (tier,))
            counts = {"correct": 0, "exact": 0, "full_length": 0}
            for start in range(0, num_problems, 8):
                batch = problems[start : start + 8]
                questions = [
                    HINT_TEMPLATE.format(question=p.question, answer=p.answer) if hint else p.question
                    for p in batch
                ]
                rollout = sampler.generate([q + "\n" for q in questions], n, max_new_tokens)
                golds = [str(p.answer) for p in batch for _ in range(n)]
                for i, (text, result) in enumerate(
                    zip(rollout.completions, verifier.verify_batch(rollout.completions, golds))
                ):
                    problem = batch[i // n]
                    counts["correct"] += result.correct
                    counts["exact"] += result.correct and text.strip() == worked_solution(problem)
                    counts["full_length"] += text.count("\n") >= len(problem.steps)
            report[tier] = {key: value / (num_problems * n) for key, value in counts.items()}
    finally:
        verifier.close()
    return report


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="tiny-world tools")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build a world into the cache (tiny_task.world_dir)")
    build.add_argument("--name", default="tiny", choices=list(WORLDS))
    build.add_argument("--force", action="store_true", help="rebuild even if the cache has it")
    build.add_argument("--ship", action="store_true", help="then copy it into worlds/ with its SHA256SUMS")
    working = sub.add_parser("working", help=working_report.__doc__.split(".")[0])
    working.add_argument(
        "models", nargs="+", help='model directories, or a world\'s name ("tiny") for its base'
    )
    working.add_argument("--tiers", nargs="+", default=["hard", "long"], choices=list(TIER_STEPS))
    working.add_argument("--num-problems", type=int, default=48)
    working.add_argument("--n", type=int, default=32)
    working.add_argument("--max-new-tokens", type=int, default=112)
    working.add_argument("--hint", action="store_true", help="prompts that state the answer (ExPO's)")
    cli = parser.parse_args()
    if cli.command == "build":
        print(build_tiny_world(force=cli.force, name=cli.name))
        if cli.ship:
            print(ship_world(cli.name))
        sys.exit(0)
    print("| model | tier | right answer | right answer, every line right | one line per step |")
    print("|---|---|---|---|---|")
    for name in cli.models:
        report = working_report(
            name, tuple(cli.tiers), cli.num_problems, cli.n, cli.max_new_tokens, hint=cli.hint
        )
        for tier, row in report.items():
            print(
                f"| {name} | {tier} | {row['correct']:.3f} | {row['exact']:.3f} | {row['full_length']:.3f} |",
                flush=True,
            )

"""Speed and memory: algos/grpo.py against TRL's GRPOTrainer, same model, prompts and settings, alternating.

TRL lives in an environment of its own, never in .venv (about 1.5 GB, the CPU torch wheel is the one on
disk): ``./run.sh test`` makes it from requirements-trl.txt, or by hand:

    python3.11 -m venv .venv-trl
    .venv-trl/bin/pip install -r requirements-trl.txt

Run it from the repository root with the main environment; it starts each side as a subprocess, ours
with this interpreter and TRL's with ``--trl-python``:

    PYTHONPATH=. .venv/bin/python bench/trl_bench.py                 # 10 steps x 3 repetitions per side
    PYTHONPATH=. .venv/bin/python bench/trl_bench.py --steps 3 --repeats 1 --eval-problems 30   # a quick check

Each repetition runs both sides one after the other, the order alternating (ours first in odd
repetitions, TRL first in even ones), so slow drifts in the machine's load hit both alike. Repetition r
uses seed ``--seed`` + r on both sides (so the same prompts on both sides, other prompts and samples in
each repetition: with one seed each side would reproduce its own run exactly). Each side is
a fresh process that trains the tiny world's policy for ``--steps`` steps from the same weights; the
report gives per side the median step time (each run's first step, which pays one-time warm-up, is left
out), the mean and spread over repetitions, the process's peak resident memory (VmHWM) and its resident
memory after setup (model loaded, before the first step), the ratio ours / TRL, and, to check that
speed was not bought with learning, held-out pass@1 of every final policy, evaluated here by the same
code (``common.evaluate.evaluate_policy``) with the same seed.

What both do per step (matched):
- the same model (``ensure_world()``), float32, 1 torch thread each (``--threads``), no gradient
  checkpointing, no reference model (KL coefficient 0: TRL's ``beta=0.0`` loads none);
- the same prompts in the same order: grpo.py's own data order for ``--seed``, given to TRL as a dataset
  with ``shuffle_dataset=False``; ``--prompts-per-step`` prompts × ``--group-size`` samples per step;
- HF ``generate`` on the training model (``use_vllm=False``), temperature 1, top-p 1, no top-k, at most
  ``--max-new-tokens`` new tokens, the whole batch in one ``generate`` call;
- the same reward: ``common.verify.Verifier`` (1 if the last boxed answer is right), TRL calls it as its
  reward function;
- the same loss: GRPO's group-normalised advantages (``scale_rewards="group"``), PPO-clip ε = 0.2, the
  per-sequence token mean averaged over sequences (ours ``seq-mean-token-mean``, TRL ``loss_type="grpo"``),
  one optimizer step per batch (``num_iterations=1``, ``steps_per_generation`` = gradient accumulation
  steps, so TRL computes no old log-probs), micro-batches of ``--micro-batch-size`` sequences
  (TRL: ``per_device_train_batch_size``, gradient accumulation = batch / micro-batch);
- AdamW (torch), constant learning rate ``--learning-rate``, no warm-up, weight decay 0, gradient
  clipping at 1.0; entropy is computed by both (logged, not in the loss).

Remaining differences:
- ours records the behaviour log-prob of every sampled token while ``generate`` samples (a logits
  processor, ``common.rollout.SampledTokenLogprobs``: one log-softmax over the vocabulary per decoding step,
  no extra forward pass; grpo.py logs the sampler/trainer mismatch from them, ``--tis-cap`` uses them);
  TRL records nothing when generation and optimisation are aligned;
- step time: ours is grpo.py's logged ``step_time`` (prompt selection to weight sync, without logging
  and checkpointing); TRL's is the time from ``on_step_begin`` to ``on_step_end`` (all micro-batches,
  generation and scoring included, the optimizer step; without the logging after it);
- TRL's advantage uses ε = 1e-4 in the std denominator, ours 1e-6; TRL's group std and ours are both the
  unbiased sample std;
- each side's process imports its own stack (ours: tyro, tensorboard; TRL: accelerate, datasets, pandas),
  so resident memory after setup differs before any training: compare the peak, and the growth from
  setup to peak;
- sampling randomness differs (different generate call sites), so rewards and final pass@1 agree only
  within noise, which the repetitions show.

This is a benchmark, not a test: numbers depend on the machine and its load. CI does not run it.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def memory_mib() -> dict:
    """This process's resident memory now (VmRSS) and at its peak so far (VmHWM), in MiB (Linux)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return {"rss": fields.get("VmRSS"), "peak": fields.get("VmHWM")}


def training_prompts(steps: int, prompts_per_step: int, seed: int) -> list[dict]:
    """grpo.py's prompts for steps 1..steps, in its order (a fresh permutation of the training set every
    epoch, seeded with seed + epoch): ``[{"prompt", "answer"}]``, ``prompts_per_step`` per step."""
    import torch

    from common.data import build_prompt, load_examples

    examples = load_examples("tiny", "train", seed=seed)
    rows = []
    for step in range(1, steps + 1):
        epoch, offset = divmod((step - 1) * prompts_per_step, len(examples))
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed + epoch))
        for i in order.roll(-offset)[:prompts_per_step].tolist():
            rows.append({"prompt": build_prompt(examples[i].question, "plain"), "answer": examples[i].answer})
    return rows


# ------------------------------------------------------------------------------------------------------
# The two sides, each run as a worker subprocess: --worker ours | trl
# ------------------------------------------------------------------------------------------------------


def timed(function, times: list):
    """``function``, appending the seconds each call takes to ``times``."""

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            times.append(time.perf_counter() - start)

    return wrapper


def worker_ours(cfg: dict, out_dir: Path) -> dict:
    """algos/grpo.py's main() for cfg["steps"] steps; its in-run evaluations cut to one problem x one sample."""
    import algos.grpo as grpo
    from common.tracking import read_jsonl

    setup, generate_times = {}, []
    load_policy, make_sampler = grpo.load_policy, grpo.make_sampler

    def sampler_with_timer(
        *args, **kwargs
    ):  # times the training rollouts (evaluations sample with compute_logprobs=False)
        sampler = make_sampler(*args, **kwargs)
        sampler.generate = timed(sampler.generate, generate_times)
        return sampler

    def load_and_measure(*args, **kwargs):  # the RSS once the model is loaded (setup done)
        loaded = load_policy(*args, **kwargs)
        setup.update(memory_mib())
        return loaded

    grpo.load_policy, grpo.make_sampler = load_and_measure, sampler_with_timer
    args = grpo.Args(
        exp_name="bench-ours", seed=cfg["seed"], output_dir=str(out_dir), run_name="ours", device="cpu",
        prompts_per_step=cfg["prompts_per_step"], group_size=cfg["group_size"],
        max_new_tokens=cfg["max_new_tokens"], num_steps=cfg["steps"], learning_rate=cfg["learning_rate"],
        warmup_steps=0, micro_batch_size=cfg["micro_batch_size"], loss_agg="seq-mean-token-mean",
        scale_rewards="group", kl_coef=0.0, updates_per_batch=1, eval_every=0, eval_problems=1, eval_n=1,
        log_completions_every=0, save_every=10**9, keep_last=1,
    )  # fmt: skip
    result = grpo.main(args)
    records = [r for r in read_jsonl(Path(result["run_dir"]) / "metrics.jsonl") if r["step"] > 0]
    checkpoint = sorted((Path(result["run_dir"]) / "checkpoints").glob("step-*"))[-1]
    # the sampler also serves the base and final evaluations (one call each, before step 1 and after the last)
    return {
        "step_times": [r["step_time"] for r in records],
        "generate_times": generate_times[1 : 1 + len(records)],
        "rewards": [r["reward_mean"] for r in records],
        "setup_rss_mib": setup.get("rss"),
        "model_dir": str(checkpoint / "model"),
    }


def worker_trl(cfg: dict, out_dir: Path) -> dict:
    """TRL's GRPOTrainer on the same prompts, with the settings of the module docstring."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from common.tiny_world import ensure_world
    from common.verify import Verifier

    torch.manual_seed(cfg["seed"])
    path = ensure_world()
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    verifier = Verifier()

    first_batch = []

    def correct(prompts, completions, answer, **kwargs) -> list[float]:
        rewards = [float(r.correct) for r in verifier.verify_batch(completions, answer)]
        if not first_batch:  # kept in the result, to check by eye that both sides see the same task
            first_batch.extend({"prompt": p, "completion": c, "answer": a, "reward": r}
                               for p, c, a, r in zip(prompts, completions, answer, rewards))  # fmt: skip
        return rewards

    batch = cfg["prompts_per_step"] * cfg["group_size"]
    if batch % cfg["micro_batch_size"]:
        raise SystemExit(
            "--micro-batch-size must divide prompts-per-step x group-size (TRL's gradient accumulation)"
        )
    config = GRPOConfig(
        output_dir=str(out_dir / "trl"), seed=cfg["seed"], use_cpu=True, bf16=False, fp16=False,
        max_steps=cfg["steps"], per_device_train_batch_size=cfg["micro_batch_size"],
        gradient_accumulation_steps=batch // cfg["micro_batch_size"], num_generations=cfg["group_size"],
        num_iterations=1, beta=0.0, epsilon=0.2, loss_type="grpo", scale_rewards="group",
        max_completion_length=cfg["max_new_tokens"], temperature=1.0, top_p=1.0, top_k=0,
        use_vllm=False, gradient_checkpointing=False, shuffle_dataset=False, learning_rate=cfg["learning_rate"],
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch",
        logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, log_completions=False,
        dataloader_num_workers=0, remove_unused_columns=False, mask_truncated_completions=False,
    )  # fmt: skip
    dataset = Dataset.from_list(training_prompts(cfg["steps"], cfg["prompts_per_step"], cfg["seed"]))

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.start, self.times = None, []

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.start)

    timer, generate_times = StepTimer(), []
    trainer = GRPOTrainer(
        model=model, reward_funcs=correct, args=config, train_dataset=dataset, processing_class=tokenizer,
        callbacks=[timer],
    )  # fmt: skip
    trainer._generate = timed(trainer._generate, generate_times)  # HF generate and decoding, once per step
    setup = memory_mib()
    trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    model_dir = out_dir / "trl-final"
    trainer.save_model(str(model_dir))
    tokenizer.save_pretrained(model_dir)
    verifier.close()
    return {
        "step_times": timer.times,
        "generate_times": generate_times,
        "rewards": rewards,
        "setup_rss_mib": setup["rss"],
        "model_dir": str(model_dir),
        "first_batch": first_batch,
    }


def run_worker(side: str, cfg: dict, out_path: Path) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(cfg["threads"])
    start = time.time()
    result = (worker_ours if side == "ours" else worker_trl)(cfg, out_path.parent)
    result.update(side=side, wall_s=time.time() - start, peak_rss_mib=memory_mib()["peak"])
    out_path.write_text(json.dumps(result) + "\n")


# ------------------------------------------------------------------------------------------------------
# The driver: alternate the sides, evaluate the final policies, report
# ------------------------------------------------------------------------------------------------------


def spawn(side: str, python: str, cfg: dict, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    out_path = work / "result.json"
    env = dict(
        os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(cfg["threads"]), TOKENIZERS_PARALLELISM="false"
    )
    argv = [python, str(Path(__file__).resolve()), "--worker", side, "--worker-config", json.dumps(cfg),
            "--worker-out", str(out_path)]  # fmt: skip
    with open(work / "log.txt", "w") as log:
        code = subprocess.run(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0:
        tail = (work / "log.txt").read_text(errors="replace").replace("\r", "\n").splitlines()[-20:]
        raise SystemExit(f"the {side} worker failed ({code}); end of {work / 'log.txt'}:\n" + "\n".join(tail))
    return json.loads(out_path.read_text())


def evaluate_final(model_dir: str, problems: int, n: int, max_new_tokens: int, seed: int) -> float:
    import torch

    from common.data import load_examples
    from common.evaluate import evaluate_policy
    from common.model import load_policy

    torch.manual_seed(seed)
    model, tokenizer = load_policy(model_dir)
    model.eval()
    examples = load_examples("tiny", "test", limit=problems)
    return evaluate_policy(model, tokenizer, examples, n=n, max_new_tokens=max_new_tokens, desc="eval")[
        "pass@1"
    ]


def summarize(runs: list[dict]) -> dict:
    """Per side: each run's median step time (first step left out when there are others), their mean and
    spread over repetitions, and memory."""
    medians = [statistics.median(r["step_times"][1:] or r["step_times"]) for r in runs]
    generate = [statistics.median(r["generate_times"][1:] or r["generate_times"]) for r in runs]
    return {
        "step_s_median_per_run": medians,
        "generate_s": statistics.mean(generate),
        "step_s": statistics.mean(medians),
        "step_s_sd": statistics.stdev(medians) if len(medians) > 1 else 0.0,
        "first_step_s": statistics.mean(r["step_times"][0] for r in runs),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "setup_rss_mib": statistics.mean(r["setup_rss_mib"] for r in runs),
        "reward_mean": statistics.mean(statistics.mean(r["rewards"]) for r in runs if r["rewards"]),
        "final_pass_at_1": [r.get("final_pass_at_1") for r in runs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="training steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per side, alternating the order")
    parser.add_argument("--prompts-per-step", type=int, default=16)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=80)
    parser.add_argument("--micro-batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per side")
    parser.add_argument(
        "--eval-problems", type=int, default=150, help="held-out problems for final pass@1 (0: skip)"
    )
    parser.add_argument("--eval-n", type=int, default=4, help="samples per held-out problem")
    parser.add_argument("--trl-python", default=str(ROOT / ".venv-trl" / "bin" / "python"))
    parser.add_argument("--out", default="runs/trl_bench", help="work directory and result.json")
    parser.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--worker-config", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker, json.loads(args.worker_config), Path(args.worker_out))
        return
    if not Path(args.trl_python).exists():
        raise SystemExit(f"no TRL environment at {args.trl_python}; install it as the module docstring says")

    from common.tiny_world import ensure_world

    ensure_world()  # once, before either side starts (both load it)
    cfg = {key: getattr(args, key) for key in ("steps", "prompts_per_step", "group_size", "max_new_tokens",
                                               "micro_batch_size", "learning_rate", "seed", "threads")}  # fmt: skip
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    runs = {"ours": [], "trl": []}
    pythons = {"ours": sys.executable, "trl": args.trl_python}
    for rep in range(args.repeats):
        for side in ("ours", "trl") if rep % 2 == 0 else ("trl", "ours"):
            result = spawn(side, pythons[side], {**cfg, "seed": args.seed + rep}, out / f"{side}-{rep}")
            if args.eval_problems:
                result["final_pass_at_1"] = evaluate_final(
                    result["model_dir"], args.eval_problems, args.eval_n, args.max_new_tokens, seed=rep
                )
            runs[side].append(result)
            times = result["step_times"]
            print(f"[trl_bench] repetition {rep + 1}/{args.repeats} {side}: median step "
                  f"{statistics.median(times[1:] or times):.2f}s (first {times[0]:.2f}s), peak RSS "
                  f"{result['peak_rss_mib']:.0f} MiB, reward {statistics.mean(result['rewards']):.3f}, final pass@1 "
                  f"{result.get('final_pass_at_1', float('nan')):.3f}", flush=True)  # fmt: skip
    summary = {side: summarize(side_runs) for side, side_runs in runs.items()}
    ours, trl = summary["ours"], summary["trl"]
    summary.update(
        config={**cfg, "repeats": args.repeats, "eval_problems": args.eval_problems, "eval_n": args.eval_n},
        step_time_ratio=ours["step_s"] / trl["step_s"],
        peak_memory_ratio=ours["peak_rss_mib"] / trl["peak_rss_mib"],
        command="PYTHONPATH=. .venv/bin/python bench/trl_bench.py " + " ".join(sys.argv[1:]),
    )
    (out / "result.json").write_text(json.dumps(summary, indent=2) + "\n")

    def p1(side):
        values = [v for v in summary[side]["final_pass_at_1"] if v is not None]
        return f"{statistics.mean(values):.3f}" if values else "—"

    print(f"\n{args.prompts_per_step} prompts × {args.group_size} samples per step, {args.steps} steps, "
          f"{args.repeats} repetitions, {args.threads} thread(s); step time = mean over repetitions of each run's "
          f"median step (first step left out)\n")  # fmt: skip
    print(
        "| side | step time (s) | of it in generate (s) | rest of the step (s) | first step (s) | peak RSS (MiB) "
        "| RSS after setup (MiB) | train reward | final pass@1 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for side, name in (("ours", "algos/grpo.py"), ("trl", "TRL GRPOTrainer")):
        s = summary[side]
        print(f"| {name} | {s['step_s']:.2f} ± {s['step_s_sd']:.2f} | {s['generate_s']:.2f} | "
              f"{s['step_s'] - s['generate_s']:.2f} | {s['first_step_s']:.2f} | {s['peak_rss_mib']:.0f} "
              f"| {s['setup_rss_mib']:.0f} | {s['reward_mean']:.3f} | {p1(side)} |")  # fmt: skip
    print(f"\nstep time ours / TRL = {summary['step_time_ratio']:.2f}; peak memory ours / TRL = "
          f"{summary['peak_memory_ratio']:.2f}; details in {out / 'result.json'}")  # fmt: skip
    floor = ours["generate_s"] / trl["step_s"]
    print(f"ours' generate alone is {floor:.2f} of TRL's step: the lowest ratio reachable while both sample "
          f"with HF generate (the rest of ours' step is {(ours['step_s'] - ours['generate_s']) / trl['step_s']:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()

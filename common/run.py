"""The training run around an algorithm: every part of ``main()`` that is the same in every ``algos/*.py``.

An algorithm file keeps what it changes (the advantages, the loss, its update) and hands the rest to a
``Run``, in CleanRL's order:

    run = Run(args)                       # run directory, seeding, data, verifier
    model, tokenizer = load_policy(...)   # the file's own models, optimizer and sampler
    run.start(model, tokenizer, optimizer, scheduler, sampler)  # resume, tracker, base evaluation
    for step in run.steps():              # progress, Ctrl-C, checkpoints, the sample budget
        batch, prompts = run.next_batch(Q)                          # this step's prompts
        rollout = sampler.generate(prompts, G, ...)
        results, correct = run.verify(rollout, batch)               # the verifier, one result per row
        ... the algorithm ...
        run.log(step, rollout, results, rewards, stats)            # shared metrics, evaluation, completions
    return run.finish()                   # the before/after table and plots

What it keeps exactly as a hand-written loop would (tests/test_e2e.py, test_checkpoint.py, test_faults.py):
- **Resume is exact.** The data order is a fresh seeded permutation per epoch read at a cursor that the
  checkpoint stores, the RNG states travel in the checkpoint (``common.checkpoint``), and ``run.extra`` (a
  dict the algorithm may use for its own counters) is saved with it.
- **Ctrl-C or SIGTERM** finishes the current step, saves a checkpoint and exits with code 130.
- **Checkpoints** every ``--save-every`` steps, at the last step and on a stop, atomically.
- **Evaluation**: the base policy before training (n = ``--eval-n``), every ``--eval-every`` steps with half
  the samples, and the final policy at the last step with the full n, logged as ``eval/pass@k``.
- **The sample budget**: ``--max-samples`` (0: none) ends the run after the step whose samples reach it;
  every step counts the completions it generated (``samples`` of ``run.log``, default the rollout's rows).

The metrics every file logs, with one meaning everywhere (``SHARED_METRICS``), are computed here.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from common.checkpoint import StopRequest, check_writable, load_checkpoint, resume_checkpoint, save_checkpoint
from common.data import Example, build_prompt, load_examples
from common.evaluate import evaluate_policy
from common.preflight import default_eval_dataset
from common.rollout_types import Rollout
from common.tracking import Progress, Tracker, report_before_after
from common.verify import Verifier, VerifyResult

# Logged by every script at every step, computed by `Run.log` (a script adds its own keys through `stats`).
SHARED_METRICS = {
    "accuracy": "share of this step's completions the verifier scores right (whatever the method's reward)",
    "reward_mean": "mean of the method's own reward (equals accuracy where the reward is the verifier's 0/1)",
    "unparsed_frac": "share of completions with no extractable answer",
    "zero_std_frac": "share of prompts whose completions all got the same reward (no group signal)",
    "completion_len_mean": "mean completion length in tokens (EOS included)",
    "completion_len_max": "longest completion in tokens",
    "truncated_frac": "share of completions cut at --max-new-tokens (no EOS)",
    "samples_generated": "completions sampled this step (all rounds; what the sample budget counts)",
    "lr": "learning rate after this step's scheduler step",
    "step_time": "wall seconds of this step (sampling, verifying, updating; not evaluation)",
    "samples_per_s": "samples_generated / step_time",
}


def warmup_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps`` rollout steps, then constant (every script's schedule).

    >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    >>> sched = warmup_scheduler(opt, 4)
    >>> [round(sched.get_last_lr()[0], 2) for _ in range(5) if not sched.step()]
    [0.5, 0.75, 1.0, 1.0, 1.0]
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, warmup_steps)))


class Run:
    """One training run's infrastructure (see the module docstring). ``args`` is the script's ``Args``."""

    def __init__(self, args):
        self.args = args
        self.run_name = args.run_name or f"{args.exp_name}__{args.seed}"
        self.run_dir = Path(args.output_dir) / self.run_name
        check_writable(self.run_dir)
        self.wall_start = time.time()
        random.seed(args.seed)
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)
        self.train_examples = load_examples(
            args.dataset, "train", args.question_field, args.answer_field, seed=args.seed
        )
        self.eval_name = args.eval_dataset or default_eval_dataset(args.dataset)
        self.eval_examples = load_examples(
            self.eval_name, "test", args.question_field, args.answer_field, limit=args.eval_problems
        )
        self.verifier = Verifier()
        self.extra: dict = {}  # saved with every checkpoint; an algorithm may keep its own counters here
        self.start_step = 0
        self.step_examples: list[Example] = []
        self.tracker: Tracker | None = None

    # --- start: resume, tracker, base evaluation ---

    def start(
        self,
        model,
        tokenizer,
        optimizer,
        scheduler,
        sampler,
        modules: dict[str, torch.nn.Module] | None = None,
        extra_eval: Callable[[int, str], dict[str, float]] | None = None,
        before_training: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        """Resume from the newest checkpoint with ``--resume`` (``modules``: further trained modules, saved by
        name), open the tracker and evaluate the base policy. ``extra_eval(n, desc)`` returns further held-out
        measures of the policy (logged as given, e.g. ``{"eval/brier": ..}``) at every evaluation. Anything with
        ``state_dict``/``load_state_dict`` can go in ``modules``: a second model's optimizer and scheduler too.
        ``before_training()``: a stage that runs once, on a fresh run, after the base evaluation (PPO's SFT
        warm-up); the metrics it returns join the step-0 row, and its time is not counted as training time."""
        args = self.args
        self.model, self.tokenizer, self.optimizer, self.scheduler = model, tokenizer, optimizer, scheduler
        self.sampler, self.modules, self.extra_eval = sampler, modules or {}, extra_eval
        self.train_examples = self.fitting(self.train_examples, "training")
        self.eval_examples = self.fitting(self.eval_examples, "held-out")
        ckpt = resume_checkpoint(self.run_dir, args.resume)  # None: a fresh run
        if ckpt:
            state = load_checkpoint(ckpt, model, optimizer, scheduler, modules=self.modules)
            self.start_step, self.extra = state["step"], state["extra"]
            sampler.update_weights(model)
            print(f"resumed from {ckpt} (step {self.start_step})")
        self.tracker = Tracker(
            self.run_dir, asdict(args), args.track, args.wandb_project, self.run_name,
            self.start_step if ckpt else None,
        )  # fmt: skip
        self.extra.setdefault("prompt_cursor", 0)
        self.extra.setdefault("samples_total", 0)
        if "base_eval" not in self.extra:
            self.extra["base_eval"], metrics = self.evaluate(args.eval_n, "eval base")
            self.extra["elapsed"] = self.extra["base_wall_time"] = time.time() - self.wall_start
            if before_training is not None:
                metrics.update(before_training())
            self.tracker.log(0, metrics)
        self.elapsed_before, self.session_start = self.extra["elapsed"], time.time()

    def fitting(self, examples: list[Example], split: str) -> list[Example]:
        """The examples whose prompt plus ``--max-new-tokens`` fit the model's context; the others are skipped
        with one line that counts them and names the longest prompt and the limit (a longer sequence would
        index past the position embeddings). None fitting is an error."""
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if not limit or not examples:
            return examples
        ids = self.tokenizer([self.prompt(e.question) for e in examples], add_special_tokens=False)[
            "input_ids"
        ]
        lengths = [len(x) for x in ids]
        keep = [e for e, n in zip(examples, lengths) if n + self.args.max_new_tokens <= limit]
        if len(keep) < len(examples):
            longest = max(range(len(examples)), key=lengths.__getitem__)
            message = (
                f"{len(examples) - len(keep)} of {len(examples)} {split} prompts plus --max-new-tokens "
                f"{self.args.max_new_tokens} exceed the model's context of {limit} tokens (the longest, "
                f"{examples[longest].source or 'row ' + str(longest)}, has {lengths[longest]} prompt tokens)"
            )
            if not keep:
                raise SystemExit(
                    f"error: {message}; none is left: lower --max-new-tokens or use shorter prompts"
                )
            print(f"note: {message}: skipped", file=sys.stderr)
        return keep

    def evaluate(self, n: int, desc: str) -> tuple[dict, dict[str, float]]:
        """Held-out pass@k of the current policy (``common.evaluate.evaluate_policy``) and its metrics."""
        a = self.args
        result = evaluate_policy(
            self.model, self.tokenizer, self.eval_examples, n=n, template=a.template, max_new_tokens=a.max_new_tokens,
            temperature=a.temperature, top_p=a.top_p, sampler=self.sampler, verifier=self.verifier, desc=desc,
        )  # fmt: skip
        metrics = {f"eval/pass@{k}": v for k, v in result["curve"].items()}
        if self.extra_eval is not None:
            metrics.update(self.extra_eval(n, desc))
        return result, metrics

    # --- the loop ---

    def steps(self) -> Iterator[int]:
        """The training steps still to run. After each step's body: the checkpoint and the stop request."""
        args = self.args
        progress = self.progress = Progress(args.num_steps - self.start_step, desc="train")
        if 0 < args.max_samples <= self.extra["samples_total"]:  # a resumed run that had spent its budget
            progress.close()
            return
        with StopRequest() as stop:
            for step in range(self.start_step + 1, args.num_steps + 1):
                self.step_start, self.step_examples, self.last = time.time(), [], step == args.num_steps
                yield step
                self.extra["steps_done"] = step
                self.extra["elapsed"] = self.elapsed_before + time.time() - self.session_start
                if step % args.save_every == 0 or self.last or stop.requested:
                    save_checkpoint(
                        self.run_dir, step, self.model, self.optimizer, self.scheduler, self.extra, args.keep_last,
                        self.tokenizer, modules=self.modules,
                    )  # fmt: skip
                if stop.requested:
                    progress.close()
                    print(f"Stopped after step {step}. Resume with the same command plus --resume.")
                    self.tracker.close()
                    self.verifier.close()
                    raise SystemExit(130)
                if self.last:
                    break
        progress.close()

    def next_batch(self, n: int) -> tuple[list[Example], list[str]]:
        """The next ``n`` training examples and their prompts: a fresh seeded permutation every epoch, read
        at a cursor the checkpoint stores (so a resumed run draws exactly what it would have drawn)."""
        epoch, offset = divmod(self.extra["prompt_cursor"], len(self.train_examples))
        order = torch.randperm(
            len(self.train_examples), generator=torch.Generator().manual_seed(self.args.seed + epoch)
        )
        batch = [self.train_examples[i] for i in order.roll(-offset)[:n].tolist()]
        self.extra["prompt_cursor"] += n
        self.step_examples += batch
        return batch, [self.prompt(e.question) for e in batch]

    def prompt(self, question: str) -> str:
        """The question in the run's ``--template``."""
        return build_prompt(question, self.args.template, self.tokenizer)

    def verify(self, rollout: Rollout, batch: list[Example]) -> tuple[list[VerifyResult], torch.Tensor]:
        """Score every row of ``rollout`` against its prompt's gold answer (row i answers
        ``batch[rollout.group_index[i]]``). Returns the results and ``correct [B]`` (float 0/1)."""
        golds = [batch[int(g)].answer for g in rollout.group_index.tolist()]
        results = self.verifier.verify_batch(rollout.completions, golds)
        return results, torch.tensor([float(r.correct) for r in results])

    # --- logging ---

    def log(
        self,
        step: int,
        rollout: Rollout,
        results: list[VerifyResult],
        rewards: torch.Tensor,  # [Q, G] the method's reward per completion, one row per prompt
        stats: dict[str, float],
        samples: int | None = None,
    ) -> dict[str, float]:
        """Log the shared metrics (``SHARED_METRICS``) and the update's ``stats``; evaluate on schedule; write
        a sample of completions. ``samples``: completions generated this step (default: the rollout's rows)."""
        args = self.args
        samples = rollout.completion_mask.shape[0] if samples is None else samples
        self.extra["samples_total"] += samples
        if 0 < args.max_samples <= self.extra["samples_total"]:
            self.last = True
        lengths = rollout.completion_mask.sum(-1)
        step_time = time.time() - self.step_start
        metrics = {
            "accuracy": sum(r.correct for r in results) / max(len(results), 1),
            "reward_mean": rewards.mean().item(),
            "unparsed_frac": 1 - sum(r.parsed for r in results) / max(len(results), 1),
            "zero_std_frac": (rewards.std(dim=1) == 0).float().mean().item()
            if rewards.shape[1] > 1
            else None,
            "completion_len_mean": lengths.mean().item(),
            "completion_len_max": lengths.max().item(),
            "truncated_frac": rollout.truncated.float().mean().item(),
            "samples_generated": samples,
            "lr": self.scheduler.get_last_lr()[0],
            "step_time": step_time,
            "samples_per_s": samples / step_time,
            **stats,
        }
        if self.last:  # the final evaluation, with the full n
            self.extra["final_eval"], eval_metrics = self.evaluate(args.eval_n, "eval final")
            metrics.update(eval_metrics)
        elif args.eval_every and step % args.eval_every == 0:
            metrics.update(self.evaluate(max(1, args.eval_n // 2), f"eval step {step}")[1])
        self.tracker.log(step, metrics)
        if args.log_completions_every and step % args.log_completions_every == 0:
            G = max(1, rewards.shape[1])
            rows = range(0, len(results), G)  # the first completion of every prompt
            self.tracker.log_completions(step, [
                {"prompt": self.prompt(self.step_examples[int(rollout.group_index[i])].question),
                 "completion": rollout.completions[i], "answer": results[i].answer,
                 "gold": self.step_examples[int(rollout.group_index[i])].answer, "reward": rewards.view(-1)[i].item()}
                for i in rows
            ])  # fmt: skip
        self.progress.update(1, reward=metrics["reward_mean"], len=metrics["completion_len_mean"])
        return metrics

    # --- the end ---

    def finish(self) -> dict:
        """The before/after table and plots; returns ``{"base", "final", "run_dir"}``."""
        final_eval = self.extra.get("final_eval") or self.evaluate(self.args.eval_n, "eval final")[0]
        total_time = self.elapsed_before + time.time() - self.session_start
        report_before_after(
            self.tracker, self.args.exp_name, self.extra.get("steps_done", self.start_step), self.extra["base_eval"],
            final_eval, self.eval_name, self.extra["base_wall_time"], total_time,
        )  # fmt: skip
        self.tracker.close()
        self.verifier.close()
        return {"base": self.extra["base_eval"], "final": final_eval, "run_dir": str(self.run_dir)}

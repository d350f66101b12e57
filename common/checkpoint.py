"""Atomic training checkpoints: weights, optimizer, scheduler and RNG states, so a killed run resumes exactly.

Layout:

    run_dir/checkpoints/
      step-00000100/
        model/         model.save_pretrained(...) (safetensors + config) and the tokenizer, if given
        state.pt       {"step", "optimizer", "scheduler", "rng", "extra"}
        COMPLETE       written last; a directory without it is never loaded
      step-00000200/
      .tmp-step-00000300-<pid>/   a save in progress (or one killed mid-write): ignored, deleted later

A checkpoint is written into a hidden temporary directory, fsync'ed, and only then renamed to its final
name (a rename is atomic on POSIX file systems). So `latest_checkpoint` never sees a half-written one.
A save that fails with an error (disk full, I/O error) deletes its temporary directory, so the space is
given back, and re-raises with a note naming the checkpoint; the previous checkpoints are untouched.
"""

import json
import os
import random
import re
import shutil
import sys
import uuid
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

CHECKPOINT_NAME = re.compile(r"^step-(\d+)$")
COMPLETE_MARKER = "COMPLETE"


def capture_rng_state() -> dict:
    """The states of every random number generator we use: Python, NumPy, torch CPU and all CUDA devices.

    >>> state = capture_rng_state()
    >>> a = torch.rand(2)
    >>> restore_rng_state(state)
    >>> torch.equal(torch.rand(2), a)
    True
    """
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng_state(state: dict) -> None:
    """Set every random number generator back to a state from `capture_rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("torch_cuda") is not None and torch.cuda.is_available():
        cuda_states = state["torch_cuda"][: torch.cuda.device_count()]  # resumed on fewer GPUs: restore those
        for device, cuda_state in enumerate(cuda_states):
            torch.cuda.set_rng_state(cuda_state, device)


def _fsync_tree(root: Path) -> None:
    """Flush every file under `root`, then the directories themselves, to disk."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _complete_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, dir) of every complete checkpoint of a run, oldest first."""
    checkpoints_dir = Path(run_dir) / "checkpoints"
    if not checkpoints_dir.is_dir():
        return []
    found = []
    for path in checkpoints_dir.iterdir():
        match = CHECKPOINT_NAME.match(path.name)
        if match and path.is_dir() and (path / COMPLETE_MARKER).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler=None,
    extra: dict | None = None,
    keep_last: int = 2,
    tokenizer=None,
    modules: dict[str, torch.nn.Module] | None = None,
) -> Path:
    """Atomically save run_dir/checkpoints/step-{step:08d}/ and delete all but the `keep_last` newest.

    `extra` holds anything else the run needs to resume (e.g. the data loader position). `modules` are
    further modules trained beside the model (e.g. a value head), saved by name as state dicts in state.pt.
    `keep_last <= 0` keeps every checkpoint. Returns the checkpoint directory.

    >>> save_checkpoint("runs/grpo_demo", step=100, model=policy, optimizer=optimizer)  # doctest: +SKIP
    PosixPath('runs/grpo_demo/checkpoints/step-00000100')
    """
    checkpoints_dir = Path(run_dir) / "checkpoints"
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    final_dir = checkpoints_dir / f"step-{step:08d}"
    tmp_dir = checkpoints_dir / f".tmp-step-{step:08d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp_dir.mkdir()

    try:
        if hasattr(model, "save_pretrained"):
            model.save_pretrained(tmp_dir / "model")
        else:
            (tmp_dir / "model").mkdir()
            torch.save(model.state_dict(), tmp_dir / "model" / "model.pt")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp_dir / "model")
        state = {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": capture_rng_state(),
            "extra": extra,
            "modules": {name: module.state_dict() for name, module in (modules or {}).items()},
        }
        torch.save(state, tmp_dir / "state.pt")
        (tmp_dir / COMPLETE_MARKER).write_text(json.dumps({"step": step}) + "\n")
        _fsync_tree(tmp_dir)
    except Exception as error:  # e.g. disk full (torch and safetensors raise their own types for it)
        shutil.rmtree(tmp_dir, ignore_errors=True)  # give the space back; older checkpoints stay as they are
        error.add_note(
            f"checkpoint {final_dir} was not written (nothing of it kept); the newest complete checkpoint "
            f"is {latest_checkpoint(run_dir)}"
        )
        raise

    if final_dir.exists():  # saving the same step again: move the old one aside, never rename onto it
        old_dir = checkpoints_dir / f".tmp-replaced-{final_dir.name}-{uuid.uuid4().hex[:8]}"
        os.replace(final_dir, old_dir)
    os.replace(tmp_dir, final_dir)
    _fsync_dir(checkpoints_dir)

    # Clean up: stale temporary dirs (from crashed saves) and checkpoints beyond keep_last.
    for path in checkpoints_dir.glob(".tmp-*"):
        shutil.rmtree(path, ignore_errors=True)
    if keep_last > 0:
        older = [path for _, path in _complete_checkpoints(run_dir) if path != final_dir]
        for path in older[: max(0, len(older) - (keep_last - 1))]:
            shutil.rmtree(path, ignore_errors=True)
    return final_dir


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint directory of a run, or None (ignores .tmp-* and unmarked dirs).

    >>> latest_checkpoint("runs/grpo_demo")  # doctest: +SKIP
    PosixPath('runs/grpo_demo/checkpoints/step-00000200')
    """
    checkpoints = _complete_checkpoints(run_dir)
    return checkpoints[-1][1] if checkpoints else None


def resume_checkpoint(run_dir: str | Path, resume: bool) -> Path | None:
    """The checkpoint a run continues from: with ``resume``, the newest complete one; else None.

    ``--resume`` when the run directory holds no checkpoint (a first run, or one stopped before its
    first save) starts a fresh run and says so in one line, so the caller treats it exactly as a run
    without ``--resume`` (its old logs are replaced, every step is logged once).

    >>> resume_checkpoint("runs/never-ran", resume=True)  # doctest: +SKIP
    --resume: no checkpoint in runs/never-ran, starting a fresh run
    """
    if not resume:
        return None
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        print(f"--resume: no checkpoint in {run_dir}, starting a fresh run", file=sys.stderr, flush=True)
    return checkpoint


def _load_model_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    """Read the weights that save_checkpoint wrote: one safetensors file, shards with an index, or model.pt."""
    index_path = model_dir / "model.safetensors.index.json"
    if index_path.is_file():
        shard_names = sorted(set(json.loads(index_path.read_text())["weight_map"].values()))
        state_dict = {}
        for shard_name in shard_names:
            state_dict.update(load_file(model_dir / shard_name))
        return state_dict
    if (model_dir / "model.safetensors").is_file():
        return load_file(model_dir / "model.safetensors")
    if (model_dir / "model.pt").is_file():
        return torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"no model weights (model.safetensors, its index, or model.pt) in {model_dir}")


def load_checkpoint(
    ckpt_dir: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
    modules: dict[str, torch.nn.Module] | None = None,
) -> dict:
    """Load a checkpoint into `model` (and `optimizer`, `scheduler`, and the `modules` saved by name with
    it), restore the RNG states.

    Returns {"step": ..., "extra": ...}; training resumes at step + 1.

    >>> ckpt_dir = latest_checkpoint(args.output_dir)  # doctest: +SKIP
    >>> start_step = load_checkpoint(ckpt_dir, policy, optimizer, scheduler)["step"] + 1  # doctest: +SKIP
    """
    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / COMPLETE_MARKER).is_file():
        raise FileNotFoundError(f"{ckpt_dir} is not a complete checkpoint (no {COMPLETE_MARKER} marker)")

    state_dict = _load_model_state_dict(ckpt_dir / "model")
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    # save_pretrained stores a tied weight once (e.g. lm_head.weight = embed_tokens.weight): such a
    # missing key is fine when it shares memory with a loaded one.
    parameters = dict(model.state_dict(keep_vars=True))
    loaded_pointers = {parameters[key].data_ptr() for key in state_dict if key in parameters}
    missing = [key for key in missing if parameters[key].data_ptr() not in loaded_pointers]
    if missing or unexpected:
        raise RuntimeError(
            f"checkpoint {ckpt_dir} does not match the model: missing {missing}, unexpected {unexpected}"
        )

    # The checkpoint is one this project wrote (it holds NumPy RNG state and arbitrary `extra`), so full unpickling.
    state = torch.load(ckpt_dir / "state.pt", map_location="cpu", weights_only=False)
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    for name, module in (modules or {}).items():
        if name not in state.get("modules", {}):
            raise RuntimeError(
                f"checkpoint {ckpt_dir} holds no module {name!r} (saved: {sorted(state.get('modules', {}))})"
            )
        module.load_state_dict(state["modules"][name])
    restore_rng_state(state["rng"])
    return {"step": state["step"], "extra": state["extra"]}


def check_writable(path: str | Path, min_free_bytes: int = 100 * 2**20) -> None:
    """Fail fast, before training, if `path` cannot be created and written or its disk is nearly full.

    Raises OSError naming the path and the reason.

    >>> check_writable("runs/grpo_demo")  # doctest: +SKIP
    >>> check_writable("/etc/hostname/runs")  # doctest: +SKIP
    Traceback (most recent call last):
    OSError: cannot use output directory /etc/hostname/runs: Not a directory
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        with open(probe, "wb") as f:
            f.write(b"ok")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as error:
        raise OSError(f"cannot use output directory {path}: {error.strerror or error}") from error
    free_bytes = shutil.disk_usage(path).free
    if free_bytes < min_free_bytes:
        raise OSError(
            f"cannot use output directory {path}: only {free_bytes / 2**20:.0f} MiB free on its disk, "
            f"need at least {min_free_bytes / 2**20:.0f} MiB"
        )


class StopRequest:
    """Turn Ctrl-C (SIGINT) and SIGTERM into a request to stop at the end of the current step.

    The training loop checks ``stop.requested`` after each step, saves a checkpoint and exits cleanly;
    a second Ctrl-C interrupts at once. Use as a context manager so the previous handlers come back.
    """

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested:  # second signal: give up on a clean stop
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\nStop requested: finishing this step, then saving a checkpoint (Ctrl-C again to abort).",
            flush=True,
        )

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

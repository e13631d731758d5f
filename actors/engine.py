"""The vLLM engine wrapper: one place that builds prompts, samples groups and reloads weights.

vLLM's engine core runs in a process of its own (`VLLM_ENABLE_V1_MULTIPROCESSING=1`), on CPU as on
GPU: everything that reaches it is serialisable. Weights go in packed through the worker extension
(actors.weight_sync); the vision placeholders are banned by a logits processor loaded by name
(actors.vision_ban). Every weight update resets every cache that depends on weights (prefix,
multimodal, encoder).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from actors.config import RolloutConfig
from actors.cpu import pin_from_env
from actors.types import IMAGE_PAD, Completion, Group, ImageRef, PromptRequest, SamplingSettings


@dataclass(frozen=True)
class EngineSettings:
    """What an engine is built with. `from_rollout` takes them from the rollout section of the config,
    which holds their defaults and meanings; nothing is restated here."""

    model_path: str
    dtype: str
    max_model_len: int
    max_num_seqs: int
    kv_cache_mib: int
    gpu_memory_utilization: float
    tensor_parallel_size: int
    enforce_eager: bool
    seed: int
    weight_transfer: str | None = None  # the weight-transfer backend this engine receives through, if any

    @classmethod
    def from_rollout(cls, rollout: RolloutConfig, model_path: str, seed: int = 0) -> EngineSettings:
        r = rollout
        return cls(
            model_path=model_path,
            dtype=r.dtype,
            max_model_len=r.max_model_len,
            max_num_seqs=r.max_num_seqs,
            kv_cache_mib=r.kv_cache_mib,
            gpu_memory_utilization=r.gpu_memory_utilization,
            tensor_parallel_size=r.tensor_parallel_size,
            enforce_eager=r.enforce_eager,
            seed=seed,
        )


class _DropThreadWarning(logging.Filter):
    """vLLM's CPU worker replaces torch.set_num_threads by a function that warns on every call;
    in an in-process engine the image processor calls it per request."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "torch.set_num_threads" not in record.getMessage()


def quiet_cpu_worker_logs() -> None:
    logging.getLogger("vllm.v1.worker.cpu_worker").addFilter(_DropThreadWarning())


class Engine:
    """A vLLM engine holding the policy (or judge) weights at a known version."""

    def __init__(self, settings: EngineSettings, image_loader: Callable[[ImageRef], Any], version: int = 0):
        """`version`: the policy version the weights at `settings.model_path` are (a resumed run's checkpoint)."""
        on_gpu = torch.cuda.is_available()
        if not on_gpu:
            quiet_cpu_worker_logs()
            pin_from_env()  # this role's cores (cluster.cpu_affinity), before the engine process starts
        from vllm import LLM

        from actors.vision_ban import BAN_VISION_TOKENS
        from actors.weight_sync import WEIGHT_SYNC_EXTENSION

        memory = (
            # tensor parallel: one worker process per GPU the actor owns (Ray gave it exactly those)
            {
                "gpu_memory_utilization": settings.gpu_memory_utilization,
                "distributed_executor_backend": "mp" if settings.tensor_parallel_size > 1 else "uni",
            }
            if on_gpu
            else {
                "kv_cache_memory_bytes": settings.kv_cache_mib * 2**20,
                "distributed_executor_backend": "uni",
                # vLLM's CPU runner crashes ("CPU Generator does not use offset") when it discards the token
                # sampled for a partially prefilled request that has its own seed: prefill whole prompts.
                "enable_chunked_prefill": False,
                "max_num_batched_tokens": max(settings.max_model_len, 16384),
            }
        )
        self.llm = LLM(
            model=settings.model_path,
            dtype=settings.dtype,
            max_model_len=settings.max_model_len,
            max_num_seqs=settings.max_num_seqs,
            enforce_eager=settings.enforce_eager,
            tensor_parallel_size=settings.tensor_parallel_size,
            limit_mm_per_prompt={"image": 1, "video": 0},
            seed=settings.seed,
            logits_processors=[BAN_VISION_TOKENS],  # the policy never samples a vision placeholder
            worker_extension_cls=WEIGHT_SYNC_EXTENSION,  # load_packed: weights across the process boundary
            weight_transfer_config={"backend": settings.weight_transfer}
            if settings.weight_transfer
            else None,
            **memory,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.image_loader = image_loader
        self.version = version
        self._image_pad_id = self.tokenizer.convert_tokens_to_ids(IMAGE_PAD)

    def render(self, user_text: str, with_image: bool) -> str:
        """The chat-templated prompt text; the only place prompts are built."""
        content: list[dict[str, str]] = [{"type": "image"}] if with_image else []
        content.append({"type": "text", "text": user_text})
        messages = [{"role": "user", "content": content}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, requests: Sequence[PromptRequest], sampling: SamplingSettings) -> list[Group]:
        """Sample `sampling.n` completions for each request, one engine batch; one Group per request, in
        order."""
        start = time.perf_counter()
        prompts = [self._engine_prompt(r) for r in requests]
        params = [self._params(sampling, r.seed) for r in requests]
        with self._one_batch():
            self.llm.enqueue(prompts, params, use_tqdm=False)
        outputs = self.llm.wait_for_completion(use_tqdm=False)  # in request order, as LLM.generate's
        elapsed = (time.perf_counter() - start) / max(len(requests), 1)
        return [self._group(r, out, elapsed) for r, out in zip(requests, outputs, strict=True)]

    def generate_stream(
        self, requests: Sequence[PromptRequest], sampling: SamplingSettings
    ) -> Iterator[Group]:
        """As `generate`, one engine batch, but each Group is yielded the moment its last completion
        finishes (finishing order); its `generate_s` is the time from the call to then.

        The same requests and the same engine step loop as `LLM.generate` (enqueue, then step), so the
        samples are the same; a caller that stops early leaves no request behind in the engine.
        """
        start = time.perf_counter()
        prompts = [self._engine_prompt(r) for r in requests]
        params = [self._params(sampling, r.seed) for r in requests]
        # enqueue returns vLLM's internal ids ("<id>-<suffix>"); outputs carry the id before the suffix
        with self._one_batch():
            enqueued = self.llm.enqueue(prompts, params, use_tqdm=False)
        internal = {rid.rsplit("-", 1)[0]: rid for rid in enqueued}
        position = {request_id: i for i, request_id in enumerate(internal)}
        engine = self.llm.llm_engine
        try:
            while position:
                if not engine.has_unfinished_requests():
                    raise RuntimeError(f"the engine finished without requests {sorted(position)}")
                for output in engine.step():
                    if output.finished and output.request_id in position:
                        request = requests[position.pop(output.request_id)]
                        yield self._group(request, output, time.perf_counter() - start)
        finally:
            if position:  # abandoned (the caller stopped, an error): nothing left running in the engine
                engine.abort_request([internal[request_id] for request_id in position], internal=True)

    @contextmanager
    def _one_batch(self) -> Iterator[None]:
        """Every request added inside reaches the scheduler before its first step: the engine core in
        its own process holds its scheduler while they arrive (else it starts stepping on the first ones,
        and which requests share a batch, and so the last bits of the logprobs, depend on timing)."""
        core = self.llm.llm_engine.engine_core
        if not hasattr(core, "call_utility"):  # the core in this process steps only when asked
            yield
            return
        core.call_utility("pause_scheduler", "keep", False)
        try:
            yield
        finally:
            core.call_utility("resume_scheduler")

    def _engine_prompt(self, request: PromptRequest) -> dict[str, Any]:
        prompt: dict[str, Any] = {"prompt": self.render(request.user_text, request.image is not None)}
        if request.image is not None:
            prompt["multi_modal_data"] = {"image": self.image_loader(request.image)}
        return prompt

    def _params(self, sampling: SamplingSettings, seed: int | None):
        from vllm import SamplingParams

        return SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            logprobs=0 if sampling.logprobs else None,
            seed=seed,
            stop=sampling.stop or None,
        )

    def _group(self, request: PromptRequest, output: Any, generate_s: float) -> Group:
        prompt_ids = list(output.prompt_token_ids)
        if request.image is None and self._image_pad_id in prompt_ids:
            raise ValueError(f"group {request.group_id}: text-only prompt contains image placeholders")
        completions = [_completion(c) for c in output.outputs]
        return Group(request.group_id, self.version, prompt_ids, completions, generate_s)

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Reload weights in place (HF checkpoint names) and move to `version`; resets caches."""
        from actors.weight_sync import pack

        self.llm.collective_rpc("load_packed", args=(pack(named_tensors),))
        self.reset_caches()
        self.version = version

    def join_weight_group(self, init_info: dict) -> None:
        """Join the collective transport's group (actors.collective; blocks until every member joined)."""
        self.llm.init_weight_transfer_engine({"init_info": init_info})

    def receive_weights(self, version: int, update_info: dict) -> None:
        """The learner's weights through the group, in place; move to `version` and reset the caches."""
        self.llm.start_weight_update()
        self.llm.update_weights({"update_info": update_info})
        self.llm.finish_weight_update()
        self.reset_caches()
        self.version = version

    def leave_weight_group(self) -> None:
        self.llm.shutdown_weight_transfer_engine()

    def receive_raw(self, bucket_bytes: list[int]) -> None:
        """Bytes through the group, dropped: the floor of a push (WeightSyncExtension.receive_raw)."""
        self.llm.collective_rpc("receive_raw", args=(bucket_bytes,))

    def process_memory(self, reset_peak: bool = False) -> dict[str, float]:
        """Resident and peak MiB of the engine's process (vLLM's engine core: where the model is)."""
        (memory,) = self.llm.collective_rpc("process_memory", args=(reset_peak,))
        return memory

    def weight_checksums(self) -> dict[str, float]:
        """Per parameter of the engine's model (vLLM's names), the sum of its values."""
        (checksums,) = self.llm.collective_rpc("weight_checksums")
        return checksums

    def reset_caches(self) -> None:
        """Forget everything computed with the previous weights (prefix KV, encoder outputs, mm inputs)."""
        self.llm.reset_prefix_cache()
        self.llm.reset_mm_cache()
        self.llm.llm_engine.reset_encoder_cache()


def _completion(output: Any) -> Completion:
    token_ids = list(output.token_ids)
    if output.logprobs is None:
        logprobs: list[float] = []
    else:
        logprobs = [step[tok].logprob for tok, step in zip(token_ids, output.logprobs, strict=True)]
    return Completion(token_ids, logprobs, output.text, str(output.finish_reason))

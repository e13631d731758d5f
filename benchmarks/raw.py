"""Raw `vllm.LLM.generate` on the benchmark's prompts: the baseline the rollout worker is compared to."""

from __future__ import annotations

import statistics
import time

from cluster.config import RunConfig
from cluster.data.images import load_image
from cluster.settings import image_policy
from rewards.prompts import build_user_text


def raw_tokens_per_s(cfg: RunConfig, model_path: str, samples: list, repeats: int) -> float:
    """Median completion tokens/s of an in-process vllm.LLM with the rollout settings."""
    from cluster.launch import use_service_env

    use_service_env(cfg.cluster.num_cpus, on_gpu=False)
    from transformers import AutoProcessor
    from vllm import LLM, SamplingParams

    r = cfg.rollout
    llm = LLM(
        model=model_path,
        dtype=r.dtype,
        max_model_len=r.max_model_len,
        max_num_seqs=r.max_num_seqs,
        enforce_eager=True,
        distributed_executor_backend="uni",
        kv_cache_memory_bytes=r.kv_cache_mib * 2**20,
        limit_mm_per_prompt={"image": 1, "video": 0},
        seed=cfg.cluster.seed,
    )
    processor = AutoProcessor.from_pretrained(model_path)
    policy = image_policy(cfg.data)
    prompts = []
    for sample in samples:
        content = [
            {"type": "image"},
            {"type": "text", "text": build_user_text(sample.question, cfg.data.prompt_style)},
        ]
        text = processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True
        )
        prompts.append({"prompt": text, "multi_modal_data": {"image": load_image(sample.image, policy)}})
    params = SamplingParams(
        n=r.group_size, temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_new_tokens, logprobs=0
    )
    llm.generate(prompts, params, use_tqdm=False)  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
        rates.append(tokens / (time.perf_counter() - start))
    return statistics.median(rates)

"""`emo-r3 bench ban`: generation speed with the vision placeholders banned per request by an allow list
(the way the engine used to do it) against the engine's logits processor (actors.vision_ban), side by
side in one process, at Qwen2.5-VL's real vocabulary size.

The model is the embedded tiny model with its embeddings and output layer grown to 151,936 rows
(random, as the tiny model's own are before pretraining). The allow list is what the old engine built
for Qwen2.5-VL's real tokenizer: its 151,665 ids less the five placeholders. The tiny tokenizer knows
439 ids, so the processor bans every row past them (151,497 ids) plus the placeholders: more columns
than the real model's 276, so its cost here is an upper bound.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

REAL_VOCAB = 151_936  # Qwen2.5-VL's embedding rows
REAL_TOKENIZER = 151_665  # ids its tokenizer knows


def big_vocab_model(out: Path, vocab: int = REAL_VOCAB) -> Path:
    """The random-init tiny model with `vocab` embedding and output rows (built once into `out`)."""
    if (out / "config.json").is_file():
        return out
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from cluster.embedded.corpus import tiny_corpus
    from cluster.embedded.tiny_model import ensure_tiny_model
    from cluster.paths import cache_dir

    tiny = ensure_tiny_model(cache_dir() / "models", tiny_corpus())
    model = AutoModelForImageTextToText.from_pretrained(tiny)
    model.resize_token_embeddings(vocab, mean_resizing=False)
    model.save_pretrained(out)
    AutoProcessor.from_pretrained(tiny).save_pretrained(out)
    return out


def _llm(model: Path, ban: bool):
    from vllm import LLM

    from actors.vision_ban import BAN_VISION_TOKENS

    return LLM(
        model=str(model),
        dtype="float32",
        max_model_len=512,
        max_num_seqs=256,
        enforce_eager=True,
        distributed_executor_backend="uni",
        kv_cache_memory_bytes=256 * 2**20,
        seed=0,
        limit_mm_per_prompt={"image": 0, "video": 0},
        logits_processors=[BAN_VISION_TOKENS] if ban else None,
    )


def _tokens_per_s(llm, prompts: list[str], params: list) -> float:
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    tokens = sum(len(c.token_ids) for out in outputs for c in out.outputs)
    return tokens / (time.perf_counter() - start)


def run(
    prompts: int = 16, group: int = 8, tokens: int = 64, repeats: int = 3, out: Path | None = None
) -> dict:
    """Median tokens/s of each way over `repeats` interleaved rounds, after one warm-up round each."""
    from vllm import SamplingParams

    from cluster.launch import use_service_env
    from cluster.paths import cache_dir

    use_service_env(num_cpus=2, on_gpu=False)
    model = big_vocab_model(cache_dir() / "models" / f"tiny-vocab{REAL_VOCAB}")
    from transformers import AutoTokenizer

    from actors.vision_ban import VISION_TOKENS

    tokenizer = AutoTokenizer.from_pretrained(model)
    placeholders = {tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS}
    allowed = [i for i in range(REAL_TOKENIZER) if i not in placeholders]
    texts = [f"Describe scene {i}." for i in range(prompts)]

    def params(allow: bool) -> list:
        extra = {"allowed_token_ids": allowed} if allow else {}
        return [
            SamplingParams(
                n=group, temperature=1.0, max_tokens=tokens, ignore_eos=True, seed=i, logprobs=0, **extra
            )
            for i in range(prompts)
        ]

    engines = {"allow_list": (_llm(model, ban=False), True), "ban_processor": (_llm(model, ban=True), False)}
    speeds: dict[str, list[float]] = {name: [] for name in engines}
    for round_ in range(repeats + 1):
        for name, (llm, allow) in engines.items():
            speed = _tokens_per_s(llm, texts, params(allow))
            if round_:  # the first round warms up
                speeds[name].append(speed)
    result = {name: statistics.median(v) for name, v in speeds.items()}
    result |= {"ratio": result["ban_processor"] / result["allow_list"], "allow_list_ids": len(allowed)}
    print(
        f"generation at vocabulary {REAL_VOCAB:,}, {prompts} prompts x {group} x {tokens} tokens, median of {repeats}:\n"
        f"  allow list ({len(allowed):,} ids per request): {result['allow_list']:.0f} tokens/s\n"
        f"  ban processor (once per step, in the engine):  {result['ban_processor']:.0f} tokens/s\n"
        f"  ratio {result['ratio']:.2f}x"
    )
    if out is not None:
        out.write_text(json.dumps(result, indent=2) + "\n")
    return result

"""`emo-r3 bench learner-memory`: peak memory of one micro-batch's GRPO loss, forward and backward, with
the learner's former full-vocabulary logits against the chunked output layer (learner.head), and with
gradient checkpointing on top, at Qwen2.5-VL's real vocabulary of 151,936 ids.

The model is the Qwen2.5-VL architecture at random initialisation: the embedded tiny model's config
(hidden size 256) with the real vocabulary and `layers` decoder layers (the 3B model has 36). The
micro-batch is text-only (random prompt and completion ids; the vision tower's memory does not depend
on the output layer): `rows` rollouts of `completion_tokens` tokens after a `prompt_tokens`-token
prompt, one sequence each (share_prompts off), float32 as the learner's default.

Each variant runs in a fresh process, on CPU. Its peak is the kernel's high-water mark of resident
memory (VmHWM, reset through /proc/self/clear_refs just before the step) less the resident memory at
that moment: everything the forward and backward allocate, the parameters' gradients included, and
nothing from building the model. Each process also writes its gradients, which the parent compares
with the former path's.
"""

from __future__ import annotations

import gc
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REAL_VOCAB = 151_936  # Qwen2.5-VL's embedding and output rows
TARGET_RATIO = 3.0  # issue 21: the chunked loss needs at least 3x less peak memory than full logits
BEFORE, CHUNKED, CHECKPOINTED = (
    "before: full-vocabulary logits",
    "chunked",
    "chunked + gradient checkpointing",
)


@dataclass(frozen=True)
class Setup:
    """One micro-batch and the model it runs through."""

    rows: int = 4
    completion_tokens: int = 1024
    prompt_tokens: int = 32
    layers: int = 12
    chunk_tokens: int = 1024  # learner.logprob_chunk_tokens


# -------------------------------------------------------------------------------------------------
# In the measuring process


def build_model(layers: int, checkpointing: bool) -> Any:
    """The random-init tiny Qwen2.5-VL grown to the real vocabulary and `layers` layers (seed 0: the
    same weights in every process), lm_head a CompletionHead, eval mode as in the learner."""
    import torch
    from transformers import AutoConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from learner.forward import enable_gradient_checkpointing
    from learner.head import install_completion_head

    config = AutoConfig.from_pretrained(_tiny_model()).to_dict()
    text = {key: value for key, value in config["text_config"].items() if key != "layer_types"}
    text.update(vocab_size=REAL_VOCAB, num_hidden_layers=layers)
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**{**config, "text_config": text})).eval()
    install_completion_head(model)
    if checkpointing:
        enable_gradient_checkpointing(model)
    return model


def micro_batch(setup: Setup) -> Any:
    """The text-only micro-batch: random ids clear of the special tokens, advantages 1, 0.5, 0, −0.5, …"""
    import torch

    from learner.batch import TrainRollout, collate
    from learner.policy import load_processor

    gen = torch.Generator().manual_seed(0)
    rollouts = []
    for i in range(setup.rows):
        prompt = torch.randint(1000, REAL_VOCAB, (setup.prompt_tokens,), generator=gen).tolist()
        completion = torch.randint(1000, REAL_VOCAB, (setup.completion_tokens,), generator=gen).tolist()
        zeros = [0.0] * len(completion)
        rollouts.append(TrainRollout(i, prompt, completion, zeros, 1.0 - 0.5 * i, None, 0))
    return collate(rollouts, load_processor(_tiny_model()), image_loader=None)


def full_logits_step(model: Any, batch: Any, chunk_tokens: int) -> Any:
    """The learner before the chunked head: logits [N, T, V] alive through the backward (the policy
    held them for the entropy metric), a float32 log-softmax over them with gradient, the entropy's
    softmax without (learner.grpo computed it under no_grad)."""
    import torch

    from learner.batch import completion_logits
    from learner.grpo import entropy_from_logits, token_logprobs

    logits = completion_logits(model(**batch.model_inputs()).logits, batch)  # [N, T, V]
    logprobs = token_logprobs(logits, batch.completion_ids)
    with torch.no_grad():
        entropy = entropy_from_logits(logits)
    return _grpo_backward(batch, logprobs, entropy)


def chunked_step(model: Any, batch: Any, chunk_tokens: int) -> Any:
    """The learner now: hidden states of the completion tokens through the chunked head."""
    from learner.forward import completion_logprobs

    return _grpo_backward(batch, *completion_logprobs(model, batch, chunk_tokens))


def _grpo_backward(batch: Any, logprobs: Any, entropy: Any) -> float:
    """The GRPO loss at ratio 1 (no KL: no reference) backpropagated; its value."""
    from learner.grpo import GrpoLossConfig, grpo_loss

    loss, _ = grpo_loss(
        logprobs,
        logprobs.detach(),
        None,
        batch.advantages,
        batch.mask,
        batch.num_tokens,
        GrpoLossConfig(),
        entropy=entropy,
    )
    loss.backward()
    return loss.item()


STEPS = {
    BEFORE: (full_logits_step, False),
    CHUNKED: (chunked_step, False),
    CHECKPOINTED: (chunked_step, True),
}


def measure(variant: str, setup: Setup, grads_file: str) -> dict[str, float]:
    """One variant's step in this process: its peak MiB above the memory before it, its loss and its
    seconds; the gradients go to `grads_file` (safetensors)."""
    from safetensors.torch import save_file

    step, checkpointing = STEPS[variant]
    model = build_model(setup.layers, checkpointing)
    batch = micro_batch(setup)
    gc.collect()
    before = _reset_peak_kib()
    start = time.perf_counter()
    loss = step(model, batch, setup.chunk_tokens)
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM") - before
    # the vision tower has no gradient: the micro-batch is text-only
    save_file({name: p.grad for name, p in model.named_parameters() if p.grad is not None}, grads_file)
    grad_max = max(float(p.grad.abs().max()) for p in model.parameters() if p.grad is not None)
    return {"peak_mib": peak / 1024, "loss": loss, "grad_max": grad_max, "step_s": seconds}


def _status_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def _reset_peak_kib() -> int:
    """Reset the high-water mark of resident memory to the current resident memory; that, in KiB."""
    Path("/proc/self/clear_refs").write_text("5")  # Linux ≥ 4.0: VmHWM := VmRSS
    return _status_kib("VmRSS")


def _tiny_model() -> Path:
    from cluster.embedded.corpus import tiny_corpus
    from cluster.embedded.tiny_model import ensure_tiny_model
    from cluster.paths import cache_dir

    return ensure_tiny_model(cache_dir() / "models", tiny_corpus())


# -------------------------------------------------------------------------------------------------
# The parent


def run(setup: Setup = Setup(), out: Path | None = None) -> dict:
    """Every variant in a process of its own; the table; the numbers (and JSON to `out`)."""
    _tiny_model()  # built once, before the measuring processes read it
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        grads = {variant: str(Path(tmp) / f"{i}.safetensors") for i, variant in enumerate(STEPS)}
        for variant in STEPS:
            results[variant] = _measure_in_process(variant, setup, grads[variant])
            if variant != BEFORE:
                results[variant]["max_grad_diff"] = _max_difference(grads[BEFORE], grads[variant])
    for numbers in results.values():
        numbers["ratio"] = results[BEFORE]["peak_mib"] / numbers["peak_mib"]
    print(_table(setup, results))
    if out is not None:
        Path(out).write_text(json.dumps({"setup": asdict(setup), "results": results}, indent=2))
    return results


def _measure_in_process(variant: str, setup: Setup, grads_file: str) -> dict[str, float]:
    code = (
        "import json, sys; from benchmarks.learner_memory import Setup, measure; "
        f"print(json.dumps(measure({variant!r}, Setup(**{asdict(setup)!r}), {grads_file!r})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{variant}: the measuring process failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _max_difference(path_a: str, path_b: str) -> float:
    """max |a − b| over every gradient element, one tensor in memory at a time."""
    from safetensors import safe_open

    with safe_open(path_a, "pt") as a, safe_open(path_b, "pt") as b:
        return max(float((a.get_tensor(k) - b.get_tensor(k)).abs().max()) for k in a.keys())  # noqa: SIM118


def _table(setup: Setup, results: dict[str, dict[str, float]]) -> str:
    tokens = setup.rows * setup.completion_tokens
    lines = [
        f"learner memory: {setup.rows} rows x {setup.completion_tokens:,} completion tokens = {tokens:,} "
        f"(+{setup.prompt_tokens} prompt tokens each, text-only), vocabulary {REAL_VOCAB:,}, {setup.layers} "
        f"layers, hidden 256, float32, chunks of {setup.chunk_tokens:,} tokens; target: >= {TARGET_RATIO:.0f}x "
        "lower peak than before",
        "",
        "| variant | peak MiB | lower than before | loss | max \\|Δgrad\\| vs before | step s |",
        "|---|---|---|---|---|---|",
    ]
    scale = f"(largest gradient element before: {results[BEFORE]['grad_max']:.1e})"
    for variant, numbers in results.items():
        difference = f"{numbers['max_grad_diff']:.1e}" if "max_grad_diff" in numbers else "-"
        mark = " (target met)" if variant != BEFORE and numbers["ratio"] >= TARGET_RATIO else ""
        lines.append(
            f"| {variant} | {numbers['peak_mib']:,.0f} | {numbers['ratio']:.2f}x{mark} | "
            f"{numbers['loss']:.6f} | {difference} | {numbers['step_s']:.1f} |"
        )
    return "\n".join([*lines, "", scale])

"""Cue recall: how well a model reads the synthetic scenes, the perception under every emotion answer.

On the synthetic set the gold label follows from the five cues of a scene (the majority label's), so
a model that describes the scene correctly can answer from its own description, and one that does
not can only guess. This measures the reading directly, teacher-forced: the model gets the caption
prompt ("Describe the image.", cluster.embedded.tiny_model.CAPTION_PROMPT) and the reference description as
the answer; a cue counts as read when every token of its phrase is the model's argmax given the
correct prefix. One forward pass per batch, so it is quick and free of sampling noise; on the tiny
model it tracks greedy generation closely (README, "The embedded tiny model"). The same reading under
the task's own prompt (the question with the SET instruction) is the perception the emotion answer
can use: a model pretrained on the caption prompt alone read 92% of the cues under it and 20% under
the SET prompt.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

PromptKind = Literal["caption", "set", "grpo"]

BATCH_SIZE = 32
SOURCES = ("synthetic:emoset:test", "synthetic:emotion6:test")


def phrase_read(text: str, phrase: str, offsets: Sequence[tuple[int, int]], token_ok: Sequence[bool]) -> bool:
    """Whether `phrase` occurs in `text` and every token overlapping it (offsets: character spans of
    the tokens of `text`) was predicted correctly. A phrase the text does not contain is not read."""
    start = text.find(phrase)
    if start < 0:
        return False
    end = start + len(phrase)
    return all(ok for ok, (a, b) in zip(token_ok, offsets, strict=True) if a < end and b > start)


Row = tuple[str, str, dict[str, str], str]  # (image path, scene description, {slot: cue name}, question)


def manifest_rows(path: Path, limit: int | None = None) -> list[Row]:
    """The first `limit` rows of a synthetic manifest."""
    from cluster.embedded.responses import scene_description

    rows = []
    for line in path.read_text().splitlines()[:limit]:
        row = json.loads(line)
        description = scene_description(row["response"])
        rows.append((str(path.parent / row["images"][0]), description, row["cues"], row["problem"]))
    return rows


def cue_recall(
    model: Any, processor: Any, rows: Sequence[Row], prompt: PromptKind = "caption"
) -> dict[str, Any]:
    """Per-slot share of cues read, the mean over slots, and the share of images read fully, with the
    caption prompt or the row's question under the SET / GRPO instruction as the user text."""
    import torch

    from cluster.data.images import load_image
    from cluster.embedded.scenes import CUES
    from cluster.embedded.tiny_model import CAPTION_PROMPT
    from learner.batch import collate, completion_logits
    from learner.sft import ANSWER, ExampleText, encode
    from rewards.prompts import build_user_text

    def user_text(question: str) -> str:
        return CAPTION_PROMPT if prompt == "caption" else build_user_text(question, prompt)

    tokenizer = processor.tokenizer
    examples = [
        encode(ExampleText(ANSWER, user_text(question), image, text), processor, load_image).rollout(i)
        for i, (image, text, _, question) in enumerate(rows)
    ]
    read: dict[str, int] = {}
    full = 0
    with torch.no_grad():
        for start in range(0, len(rows), BATCH_SIZE):
            batch = collate(examples[start : start + BATCH_SIZE], processor, load_image)
            predicted = completion_logits(model(**batch.model_inputs()).logits, batch).argmax(-1)  # [N, T]
            for j, (_, text, cues, _) in enumerate(rows[start : start + BATCH_SIZE]):
                encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
                n = len(encoded["input_ids"])
                token_ok = (predicted[j, :n] == batch.completion_ids[j, :n]).tolist()
                hits = {
                    slot: phrase_read(text, CUES[cue].phrase, encoded["offset_mapping"], token_ok)
                    for slot, cue in cues.items()
                }
                for slot, hit in hits.items():
                    read[slot] = read.get(slot, 0) + hit
                full += all(hits.values())
    n = len(rows)
    return {
        "slots": {slot: count / n for slot, count in read.items()},
        "mean": sum(read.values()) / (n * len(read)),
        "all_read": full / n,
        "images": n,
    }


def run(model_paths: Sequence[str], overrides: Sequence[str], limit: int, out: Path | None) -> list[dict]:
    """Cue recall of every model on both synthetic styles' test splits; prints a markdown table."""
    from transformers import AutoModelForImageTextToText

    from cluster.config import load_config
    from cluster.models import resolve_model
    from cluster.sources import resolve_source
    from learner.policy import load_processor

    cfg = load_config(None, overrides)
    data = {source: manifest_rows(Path(resolve_source(source, cfg.data)), limit) for source in SOURCES}
    results = []
    for given in model_paths:
        path = resolve_model(given)
        model = AutoModelForImageTextToText.from_pretrained(path, dtype="float32").eval()
        processor = load_processor(path)
        for source, rows in data.items():
            for prompt in ("caption", "set"):
                recall = cue_recall(model, processor, rows, prompt)
                results.append({"model": given, "source": source, "prompt": prompt, **recall})
    print("| model | data | prompt | cues read | images read fully | per slot |")
    print("|---|---|---|---|---|---|")
    for r in results:
        slots = ", ".join(f"{slot} {share:.1%}" for slot, share in r["slots"].items())
        print(
            f"| {r['model']} | {r['source']} | {r['prompt']} | {r['mean']:.1%} | {r['all_read']:.1%} | {slots} |"
        )
    if out is not None:
        out.write_text(json.dumps(results, indent=2) + "\n")
    return results

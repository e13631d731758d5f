"""The policy model of a run: a folder path, or the embedded tiny model built offline on first use."""

from __future__ import annotations

import os

from cluster.paths import cache_dir

TINY = "tiny"
CORPUS_SIZE = 2000  # reference responses per style the tiny tokenizer is trained on
CORPUS_SEED = 1234  # distinct from the data seeds: the tokenizer does not depend on the data split


def tiny_corpus() -> list[str]:
    """The task's own text: reference reasoning of both synthetic styles (SET and GRPO forms)."""
    from cluster.data.synthetic import reference_corpus

    return [text for style in ("emoset", "emotion6") for text in reference_corpus(style, CORPUS_SIZE, CORPUS_SEED)]


def resolve_model(path: str) -> str:
    """An HF-format folder for `path`; 'tiny' builds (once) and returns the embedded model."""
    if path != TINY:
        return path
    from cluster.tiny_model import ensure_tiny_model

    return os.fspath(ensure_tiny_model(cache_dir() / "models", tiny_corpus()))

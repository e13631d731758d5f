"""The policy model of a run: a folder path, or the embedded tiny model built offline on first use."""

from __future__ import annotations

import os

from cluster.paths import cache_dir

TINY = "tiny"
CORPUS_SIZE = 2000  # reference responses per style the tiny tokenizer is trained on
CORPUS_SEED = 1234  # distinct from the data seeds: the tokenizer does not depend on the data split
PRETRAIN_IMAGES = 1024  # caption-pretraining images per style (cluster.pretrain)
PRETRAIN_SEED = 4321  # their generator seed: none of them is a train or test image of a run
PRETRAIN_AMBIGUITY = 1.0  # every scene mixes two labels' cues: the most varied cue combinations


def tiny_corpus() -> list[str]:
    """The task's own text: reference reasoning of both synthetic styles (SET and GRPO forms)."""
    from cluster.data.synthetic import reference_corpus

    return [
        text for style in ("emoset", "emotion6") for text in reference_corpus(style, CORPUS_SIZE, CORPUS_SEED)
    ]


def resolve_model(path: str) -> str:
    """An HF-format folder or hub id for `path`; 'tiny' builds (once) and returns the embedded model.

    A hub id is checked here, on the driver, before any actor starts: its config.json must be in the
    local HF cache or downloadable (each actor then loads the weights itself), else a ConfigError.
    """
    from cluster.config import is_hub_id

    if is_hub_id(path):
        check_hub_model(path)
    if path != TINY:
        return path
    from cluster.tiny_model import ensure_tiny_model

    return os.fspath(ensure_tiny_model(cache_dir() / "models", tiny_corpus(), captions=tiny_captions()))


def check_hub_model(repo: str) -> None:
    from huggingface_hub import hf_hub_download

    from cluster.config import ConfigError

    try:
        hf_hub_download(repo, "config.json", etag_timeout=10)
    except Exception as err:  # offline, unknown repo, gated: all mean the same to the user here
        raise ConfigError(
            f"model.path {repo!r} is not a local folder and its config.json could not be found on the hub "
            f"({type(err).__name__}); give a local HF-format model folder, a reachable hub id, or 'tiny'"
        ) from None


def tiny_captions() -> list[tuple[str, str, str]]:
    """(image, user text, description) triples of the caption pretraining: PRETRAIN_IMAGES synthetic
    images per style (generated into the cache once), as target step 1 of their reference reasoning
    without tags, and as user text in turn "Describe the image.", the image's task question with the
    SET instruction, and with the GRPO instruction: a hub VLM describes what it sees whatever the
    instruction around the image, and a model pretrained on the caption prompt alone reads the scene
    under it only (README, "The embedded tiny model")."""
    import json

    from cluster.data.responses import scene_description
    from cluster.data.synthetic import generate
    from cluster.tiny_model import CAPTION_PROMPT
    from rewards.prompts import build_user_text

    triples = []
    for style in ("emoset", "emotion6"):
        root = cache_dir() / "data" / f"pretrain-{style}"
        train, _ = generate(root, style=style, n_train=PRETRAIN_IMAGES, n_test=0, seed=PRETRAIN_SEED,
                            ambiguity=PRETRAIN_AMBIGUITY)  # fmt: skip
        for i, line in enumerate(train.read_text().splitlines()):
            row = json.loads(line)
            prompts = (
                CAPTION_PROMPT,
                build_user_text(row["problem"], "set"),
                build_user_text(row["problem"], "grpo"),
            )
            description = scene_description(row["response"])
            triples.append((os.fspath(root / row["images"][0]), prompts[i % len(prompts)], description))
    return triples

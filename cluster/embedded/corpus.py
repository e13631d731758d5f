"""What the embedded tiny model is built from: the tokenizer's text corpus and the caption-pretraining
triples, both from the synthetic scene generator with their own fixed seeds (the model does not
depend on any run's data). Their values are part of the model's build hash: changing one rebuilds it.
"""

from __future__ import annotations

import os

from cluster.paths import cache_dir

CORPUS_SIZE = 2000  # reference responses per style the tiny tokenizer is trained on
CORPUS_SEED = 1234  # distinct from the data seeds: the tokenizer does not depend on the data split
CORPUS_AMBIGUITY = 0.25  # a quarter of the corpus scenes mix two labels' cues
PRETRAIN_IMAGES = 1024  # caption-pretraining images per style (cluster.embedded.pretrain)
PRETRAIN_SEED = 4321  # their generator seed: none of them is a train or test image of a run
PRETRAIN_SIZE = 112  # their side in pixels, the data set's
PRETRAIN_AMBIGUITY = 1.0  # every scene mixes two labels' cues: the most varied cue combinations
PRETRAIN_TWO_BORROWED = 0.5  # half of them borrow two cues (3-2), half one (4-1)


def tiny_corpus() -> list[str]:
    """The task's own text: reference reasoning of both synthetic styles (SET and GRPO forms)."""
    from cluster.embedded.synthetic import reference_corpus

    return [
        text
        for style in ("emoset", "emotion6")
        for text in reference_corpus(style, CORPUS_SIZE, CORPUS_SEED, CORPUS_AMBIGUITY)
    ]


def tiny_captions() -> list[tuple[str, str, str]]:
    """(image, user text, description) triples of the caption pretraining: PRETRAIN_IMAGES synthetic
    images per style (generated into the cache once), as target step 1 of their reference reasoning
    without tags, and as user text in turn "Describe the image.", the image's task question with the
    SET instruction, and with the GRPO instruction: a hub VLM describes what it sees whatever the
    instruction around the image, and a model pretrained on the caption prompt alone reads the scene
    under it only (docs/embedded-default.md, "The embedded tiny model")."""
    import json

    from cluster.embedded.responses import scene_description
    from cluster.embedded.synthetic import generate
    from cluster.embedded.tiny_model import CAPTION_PROMPT
    from rewards.prompts import build_user_text

    triples = []
    for style in ("emoset", "emotion6"):
        root = cache_dir() / "data" / f"pretrain-{style}"
        train, _ = generate(
            root,
            style=style,
            n_train=PRETRAIN_IMAGES,
            n_test=0,
            seed=PRETRAIN_SEED,
            size=PRETRAIN_SIZE,
            ambiguity=PRETRAIN_AMBIGUITY,
            two_borrowed=PRETRAIN_TWO_BORROWED,
        )
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

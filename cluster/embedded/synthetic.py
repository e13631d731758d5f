"""The synthetic affective-scene data set: the embedded default data of the CPU run.

`generate` writes `out_dir/images/*.png` and `train.jsonl` / `test.jsonl` manifests in the loader's
format (EasyR1 columns plus `labels`, `label_dist`, `response`, `response_grpo`, `cues`), balanced
over the style's label set. Everything is a function of the parameters: the same seed gives
byte-identical PNGs and manifests. A `meta.json` with the parameters and a fingerprint of the
generator's source makes a second call with the same parameters and code a no-op; an edit to the
generator regenerates the data on its own. Cue design: `scenes.py`; drawing: `render.py`; texts: `responses.py`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

from rewards.prompts import build_question

from .render import render
from .responses import grpo_response, set_response
from .scenes import Scene, balanced_labels, get_style, sample_scene

# what decides the bytes of an image or a manifest row: the modules that draw and word the scenes,
# and the question text
GENERATOR_SOURCES = tuple(
    f"cluster.embedded.{name}"
    for name in (
        "accents",
        "backdrops",
        "faces",
        "objects",
        "render",
        "responses",
        "scenes",
        "shapes",
        "synthetic",
    )
) + ("rewards.prompts",)
MIN_SIZE = 56
SPLITS: dict[str, int] = {"train": 0, "test": 1}
STYLE_CODES: dict[str, int] = {"emoset": 0, "emotion6": 1}  # stable seed-stream ids
_IMAGE_NAME = re.compile(r"^(train|test)-\d+\.png$")


def generate(
    out_dir: str | os.PathLike[str],
    *,
    style: str,
    n_train: int,
    n_test: int,
    seed: int,
    size: int,
    ambiguity: float,
    two_borrowed: float,
) -> tuple[Path, Path]:
    """Write the data set (or keep it, if `meta.json` matches) and return (train.jsonl, test.jsonl).

    Every parameter is given by the caller (the run's `data.synthetic` section, `SyntheticConfig`, holds
    the defaults); none is restated here.

    `size` is the image side in pixels (>= 56); `ambiguity` the probability that a scene borrows one
    or two cues from its label's confusable partner.
    """
    params = _params(
        style=style,
        n_train=n_train,
        n_test=n_test,
        seed=seed,
        size=size,
        ambiguity=ambiguity,
        two_borrowed=two_borrowed,
    )
    out = Path(out_dir)
    paths = out / "train.jsonl", out / "test.jsonl"
    meta = out / "meta.json"
    if all(path.is_file() for path in paths) and _read_json(meta) == params:
        return paths
    meta.unlink(missing_ok=True)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    for stale in images.iterdir():
        if _IMAGE_NAME.match(stale.name):
            stale.unlink()
    # Each image has its own random stream, so the pool's scheduling cannot change any byte.
    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        for split, path in zip(SPLITS, paths, strict=True):
            scenes = _scenes(params, split)
            indices = range(len(scenes))
            rows = pool.map(_write_sample, repeat(images), scenes, repeat(split), indices, repeat(params))
            _write_text(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
    _write_text(meta, json.dumps(params, indent=2, sort_keys=True) + "\n")
    return paths


def reference_corpus(style: str, n: int, seed: int, ambiguity: float) -> list[str]:
    """SET and GRPO reference responses of `n` scenes, without rendering images.

    With the same `seed` and `ambiguity`, these are exactly the responses of the `n` training samples
    that `generate(..., n_train=n)` writes, in order (two texts per scene: SET, then GRPO).
    """
    params = _params(style=style, n_train=n, n_test=0, seed=seed, size=MIN_SIZE, ambiguity=ambiguity)
    texts: list[str] = []
    for scene in _scenes(params, "train"):
        texts += [set_response(scene), grpo_response(scene)]
    return texts


def _params(
    *,
    style: str,
    n_train: int,
    n_test: int,
    seed: int,
    size: int,
    ambiguity: float,
    two_borrowed: float = 0.5,
) -> dict[str, Any]:
    """Validated parameters, as stored in meta.json."""
    get_style(style)
    if n_train < 0 or n_test < 0:
        raise ValueError(f"n_train and n_test must be >= 0, got {n_train}, {n_test}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE} px, got {size}")
    if not 0.0 <= ambiguity <= 1.0:
        raise ValueError(f"ambiguity must be in [0, 1], got {ambiguity}")
    if not 0.0 <= two_borrowed <= 1.0:
        raise ValueError(f"two_borrowed must be in [0, 1], got {two_borrowed}")
    return {
        "generator": generator_fingerprint(),
        "style": style,
        "n_train": int(n_train),
        "n_test": int(n_test),
        "seed": int(seed),
        "size": int(size),
        "ambiguity": float(ambiguity),
        "two_borrowed": float(two_borrowed),
    }


@cache
def generator_fingerprint() -> str:
    """Short hash of the generator's source files (GENERATOR_SOURCES), stored in meta.json: data
    generated by other code is regenerated, with no version number to remember to bump."""
    digest = hashlib.sha256()
    for name in GENERATOR_SOURCES:
        digest.update(Path(importlib.util.find_spec(name).origin).read_bytes())
    return digest.hexdigest()[:16]


def _rng(params: dict[str, Any], split: str, *key: int) -> np.random.Generator:
    """An independent random stream per (seed, style, split, key)."""
    return np.random.default_rng([params["seed"], STYLE_CODES[params["style"]], SPLITS[split], *key])


def _scenes(params: dict[str, Any], split: str) -> list[Scene]:
    """The scenes of one split: balanced labels, then each scene from its own stream."""
    style = get_style(params["style"])
    labels = balanced_labels(style, params[f"n_{split}"], _rng(params, split, 0))
    return [
        sample_scene(style, label, params["ambiguity"], _rng(params, split, 1, i), params["two_borrowed"])
        for i, label in enumerate(labels)
    ]


def _write_sample(
    images: Path, scene: Scene, split: str, index: int, params: dict[str, Any]
) -> dict[str, Any]:
    """Render and save one image; return its manifest row."""
    name = f"{split}-{index:05d}.png"
    image = render(scene, params["size"], _rng(params, split, 2, index))
    image.save(images / name, format="PNG", compress_level=3)
    labels = get_style(scene.style).labels
    return {
        "id": f"synthetic-{scene.style}-{split}-{index:05d}",
        "images": [f"images/{name}"],
        "problem": build_question(labels),
        "answer": scene.label,
        "labels": list(labels),
        "label_dist": [round(share, 4) for share in scene.label_dist()],
        "response": set_response(scene),
        "response_grpo": grpo_response(scene),
        "cues": scene.cue_dict(),
        "dataset": f"synthetic-{scene.style}",
    }


def _write_text(path: Path, text: str) -> None:
    """Write atomically (a reader never sees half a manifest)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None

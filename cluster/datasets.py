"""Data sources of a run: resolve config strings to manifests, load and validate samples.

A source is a manifest path (JSONL / parquet), a class-per-folder tree, or
`synthetic:<style>:<split>`, which generates the embedded data set into the cache on first use.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from cluster.config import SYNTHETIC_PREFIX, DataConfig, SyntheticConfig
from cluster.data.images import ImagePolicy
from cluster.data.rows import Columns
from cluster.data.sample import LoadResult
from cluster.paths import cache_dir


def image_policy(cfg: DataConfig) -> ImagePolicy:
    return ImagePolicy(
        min_side=cfg.min_side, max_aspect=cfg.max_aspect, max_source_pixels=cfg.max_source_pixels,
        min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels,
    )  # fmt: skip


def columns(cfg: DataConfig) -> Columns:
    c = cfg.columns
    return Columns(image_key=c.image, problem_key=c.problem, answer_key=c.answer, labels_key=c.labels,
                   response_key=c.response)  # fmt: skip


def synthetic_root(cfg: SyntheticConfig, style: str) -> Path:
    """Cache folder of one style of the synthetic set, keyed by its parameters."""
    digest = hashlib.sha256(json.dumps(cfg.model_dump(), sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir() / "data" / f"synthetic-{digest}" / style


def resolve_source(source: str, cfg: DataConfig) -> str:
    """A loadable path for `source`; synthetic sources are generated (once) into the cache."""
    if not source.startswith(SYNTHETIC_PREFIX):
        return os.fspath(Path(source).expanduser())
    from cluster.data.synthetic import generate

    _, style, split = source.split(":")
    s = cfg.synthetic
    train, test = generate(
        synthetic_root(s, style), style=style, n_train=s.n_train, n_test=s.n_test, seed=s.seed,
        size=s.size, ambiguity=s.ambiguity, two_borrowed=s.two_borrowed,
    )  # fmt: skip
    return os.fspath(train if split == "train" else test)


def read_samples(source: str, cfg: DataConfig) -> LoadResult:
    """The source's rows as samples, without opening their images (load_samples checks those)."""
    from cluster.data.manifest import load_dataset

    return load_dataset(
        resolve_source(source, cfg), label_set=cfg.label_set, columns=columns(cfg),
        allow_outside_paths=cfg.allow_outside_paths,
    )  # fmt: skip


def load_samples(source: str, cfg: DataConfig, *, workers: int | None = None) -> LoadResult:
    """Load a source and decode every image once: good samples, skipped ones counted by reason.

    The loader's hints (which setting would fix a kind of skip) are printed and kept in the result.
    """
    from cluster.data.manifest import validate_samples

    loaded = read_samples(source, cfg)
    for hint in loaded.hints:
        print(f"data: {source}: {hint}")
    checked = validate_samples(loaded.samples, image_policy(cfg), workers=workers)
    checked.skipped.update(loaded.skipped)
    checked.errors[:0] = loaded.errors
    checked.hints[:0] = loaded.hints
    return checked


def check_command(
    path: str, *, label_set: str | None, workers: int, allow_outside_paths: bool = False
) -> int:
    """`emo-r3 data check`: print the report; exit 1 only when nothing usable is left."""
    from cluster.data.check import check_dataset, format_report

    if not Path(path).exists():
        raise FileNotFoundError(f"{path!r} does not exist")
    report = check_dataset(
        path, label_set=label_set, workers=workers, allow_outside_paths=allow_outside_paths
    )
    print(format_report(report))
    return 0 if report.ok else 1

"""Data sources of a run: resolve config strings to manifests, load and validate samples.

A source is a manifest path (JSONL / parquet), a class-per-folder tree, or
`synthetic:<style>:<split>`, which generates the embedded data set into the cache on first use.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from cluster.config import SYNTHETIC_PREFIX, ConfigError, DataConfig, RunConfig, SyntheticConfig
from cluster.data.sample import LoadResult
from cluster.paths import cache_dir
from cluster.settings import columns, image_policy


def synthetic_root(cfg: SyntheticConfig, style: str) -> Path:
    """Cache folder of one style of the synthetic set, keyed by its parameters."""
    digest = hashlib.sha256(json.dumps(cfg.model_dump(), sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir() / "data" / f"synthetic-{digest}" / style


def resolve_source(source: str, cfg: DataConfig) -> str:
    """A loadable path for `source`; synthetic sources are generated (once) into the cache."""
    if not source.startswith(SYNTHETIC_PREFIX):
        return os.fspath(Path(source).expanduser())
    from cluster.embedded.synthetic import generate

    _, style, split = source.split(":")
    train, test = generate(synthetic_root(cfg.synthetic, style), style=style, **cfg.synthetic.model_dump())
    return os.fspath(train if split == "train" else test)


def read_samples(source: str, cfg: DataConfig) -> LoadResult:
    """The source's rows as samples, without opening their images (load_samples checks those)."""
    from cluster.data.manifest import load_dataset

    return load_dataset(
        resolve_source(source, cfg),
        label_set=cfg.label_set,
        columns=columns(cfg),
        allow_outside_paths=cfg.allow_outside_paths,
    )


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


DATA_REPORT = "data_report.json"


def load_training_set(cfg: RunConfig) -> LoadResult:
    """The training samples, or a ConfigError saying why there are none to train on."""
    try:
        loaded = load_samples(cfg.data.train, cfg.data)
    except (OSError, ValueError) as err:
        raise ConfigError(f"data.train={cfg.data.train!r} cannot be loaded: {err}") from None
    if not loaded.samples:
        skipped = (
            ", ".join(f"{n} {reason}" for reason, n in loaded.skipped.most_common()) or "it holds no rows"
        )
        hint = "".join(f"; {h}" for h in loaded.hints)
        raise ConfigError(f"data.train={cfg.data.train!r} has no usable sample ({skipped}){hint}")
    return loaded


def write_data_report(run: Path, source: str, loaded: LoadResult) -> None:
    """Print one line on what training uses and skips; keep the counts and the first locations."""
    skipped = sum(loaded.skipped.values())
    reasons = ", ".join(f"{reason} {n}" for reason, n in loaded.skipped.most_common())
    print(
        f"data: {len(loaded.samples)} training samples from {source}"
        + (f"; skipped {skipped}: {reasons}" if skipped else "")
    )
    report = {
        "source": source,
        "usable": len(loaded.samples),
        "skipped": dict(loaded.skipped),
        "first_skipped": [list(e) for e in loaded.errors[:50]],
    }
    (run / DATA_REPORT).write_text(json.dumps(report, indent=1) + "\n")

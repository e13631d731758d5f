"""The policy model of a run: a folder path, or the embedded tiny model built offline on first use."""

from __future__ import annotations

import os

from cluster.paths import cache_dir

TINY = "tiny"


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
    from cluster.embedded.corpus import tiny_captions, tiny_corpus
    from cluster.embedded.tiny_model import ensure_tiny_model

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

"""A run's checkpoints: where they are, how they are written atomically, which one a resume uses.

`<run>/checkpoints/iter_<N>/` holds the policy after N iterations (HF safetensors + processor, loadable
by transformers and vLLM), every rank's optimizer state (`optimizer/`, when saved) and
`trainer_state.json`: the next iteration, the policy version, the data stream's position, the replay
buffer and a digest of the training set. A checkpoint is written into `iter_<N>.partial/` and renamed
once complete, so a crash mid-write never leaves a directory that looks finished; a finished one that
was damaged later (a truncated file) is detected and skipped in favour of the previous one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from cluster.config import ConfigError, RunConfig
from cluster.data.sample import Sample

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
CONFIG_FILE = "config.yaml"
_NAME = re.compile(r"iter_(\d{6})")
_PARTIAL = ".partial"

# What a resumed run must share with the run it continues: what decides the data stream, the batches'
# shape and the reference policy. Everything else (worker counts, deadlines, iterations, lr, logging)
# may change between attempts.
RESUME_FIXED = (
    "model.path",
    "data.train",
    "data.synthetic",
    "data.columns",
    "data.label_set",
    "data.prompt_style",
    "data.shuffle",
    "cluster.seed",
    "cluster.prompts_per_iteration",
    "rollout.group_size",
)


def checkpoint_path(run: Path, iterations_done: int) -> Path:
    return run / CHECKPOINTS / f"iter_{iterations_done:06d}"


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` in one step: readers see the old file or the new one, never a part."""
    partial = path.with_name(path.name + _PARTIAL)
    partial.write_text(text)
    os.replace(partial, path)


def save_checkpoint(path: Path, state: dict[str, Any], save_weights: Callable[[Path], None]) -> None:
    """Write a checkpoint at `path` atomically: `save_weights(dir)` fills a `.partial` directory (the
    learner ranks write into it), the trainer state goes in last, then the directory is renamed."""
    partial = path.with_name(path.name + _PARTIAL)
    shutil.rmtree(partial, ignore_errors=True)  # what a crashed attempt left
    save_weights(partial)
    (partial / STATE_FILE).write_text(json.dumps(state))
    shutil.rmtree(path, ignore_errors=True)  # a redone iteration: the previous checkpoint stays until here
    os.replace(partial, path)


def latest_checkpoint(run: Path, report: Callable[[str], None] = print) -> Path | None:
    """The newest complete checkpoint of `run`; a damaged newer one is reported and skipped."""
    found = sorted((p for p in (run / CHECKPOINTS).glob("iter_*") if _NAME.fullmatch(p.name)), reverse=True)
    for path in found:
        if problem := checkpoint_problem(path):
            report(f"skipping checkpoint {path}: {problem}")
            continue
        return path
    return None


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be resumed from (None: it can)."""
    try:
        state = json.loads((path / STATE_FILE).read_text())
        int(state["next_iteration"]), int(state["version"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{STATE_FILE} unreadable ({type(err).__name__})"
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        return "no model weights"
    for file in [*weights, *sorted((path / "optimizer").glob("*.safetensors"))]:
        if problem := safetensors_problem(file):
            return f"{file.name}: {problem}"
    return None


def safetensors_problem(path: Path) -> str | None:
    """Whether a safetensors file is whole: its header parses and its size is what the header says."""
    try:
        with path.open("rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > 100 * 2**20:
                return "corrupt header"
            header = json.loads(f.read(header_len))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return "corrupt header"
    size = path.stat().st_size
    return None if size == 8 + header_len + end else f"{size} bytes, the header says {8 + header_len + end}"


def read_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / STATE_FILE).read_text())


def data_digest(samples: Sequence[Sample]) -> dict[str, Any]:
    """What identifies a training set for the stream: its size and its samples' ids in order."""
    digest = hashlib.sha256("\n".join(s.sample_id for s in samples).encode()).hexdigest()[:16]
    return {"samples": len(samples), "digest": digest}


def check_same_data(state: dict[str, Any], samples: Sequence[Sample], source: str) -> None:
    """Refuse to resume on a training set other than the checkpoint's: the stream's position (an index
    into the epoch's permutation of the samples) would point at other prompts."""
    saved = state.get("data")
    if saved is None or saved == data_digest(samples):
        return
    raise ConfigError(
        f"cannot resume: the training set {source!r} has changed since the checkpoint ({saved['samples']} samples "
        f"then, {len(samples)} now, or other ids/order); resume with the same data, or start a new run"
    )


def check_resumable_config(run: Path, cfg: RunConfig) -> list[str]:
    """Compare `cfg` with the config the run was started with: refuse a change of a RESUME_FIXED field;
    return the other changes, one line each ("learner.lr: 1e-05 -> 5e-06")."""
    path = run / CONFIG_FILE
    try:
        before = _flat(yaml.safe_load(path.read_text()) or {})
    except (OSError, yaml.YAMLError):
        return [f"({CONFIG_FILE} of the run unreadable: nothing to compare)"]
    now = _flat(cfg.model_dump(mode="json"))
    changed = {k for k in before.keys() | now.keys() if before.get(k) != now.get(k)}
    fixed = sorted(k for k in changed if any(k == f or k.startswith(f + ".") for f in RESUME_FIXED))
    if fixed:
        what = "; ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in fixed)
        raise ConfigError(
            f"cannot resume run {run.name!r} with a different {what} (these decide its data stream, batches or "
            "reference policy); use the run's values, or start a new run under another cluster.run_name"
        )
    return [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(changed)]


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def find_resume_point(run: Path, cfg: RunConfig, resume: bool) -> tuple[Path | None, dict]:
    """The checkpoint to continue from and its trainer state; refuses what would silently go wrong:
    --resume without a checkpoint, a new run over one that has checkpoints, a changed fixed field."""
    checkpoint = latest_checkpoint(run)
    if resume and checkpoint is None:
        raise ConfigError(
            f"--resume: run {run.name!r} has no complete checkpoint in {run / 'checkpoints'}; "
            "drop --resume to start it anew"
        )
    if not resume and checkpoint is not None:
        raise ConfigError(
            f"run {run.name!r} already has checkpoints (latest {checkpoint.name}); pass --resume to continue it, "
            "or choose another cluster.run_name"
        )
    if checkpoint is None:
        return None, {}
    for change in check_resumable_config(run, cfg):
        print(f"resuming with a changed setting: {change}")
    return checkpoint, read_state(checkpoint)


def save_point(run: Path, point: dict[str, Any], save_weights: Callable[[Path], None]) -> Path:
    """A checkpoint of the trainer state `point` (RunState.resumable) under its iteration's name."""
    path = checkpoint_path(run, point["next_iteration"])
    save_checkpoint(path, point, save_weights)
    return path

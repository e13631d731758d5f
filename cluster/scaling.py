"""Growing and shrinking the rollout pool of a running run.

`emo-r3 scale RUN rollout=N` writes the request into the run folder (`scale.json`, atomically); the
run takes it before its next iteration's generation (the asynchronous loop: before its next
production), when no rollout worker has work: removed workers are stopped, new ones start in
bundles reserved for them (a placement group each, within the cluster's resources) and join at the
current version (the synchronous loop pushes it to them as soon as they answer; the asynchronous one
at its next push). Every iteration's prompts are split over the workers taking work at the time, so
the rollout share follows the live pool. What was applied is written to `scale.applied.json`; a run
that restarts itself after losing a learner rank keeps it (a `--resume` starts from the config's
`rollout.num_workers`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from cluster.config import ConfigError

if TYPE_CHECKING:
    from cluster.session import TrainingCluster

SCALE_FILE = "scale.json"
APPLIED_FILE = "scale.applied.json"
ROLES = ("rollout",)


def parse_target(text: str) -> tuple[str, int]:
    """`rollout=3` → ("rollout", 3); a clear error otherwise."""
    role, _, count = text.partition("=")
    if role not in ROLES or not count.strip().isdigit() or int(count) < 1:
        raise ConfigError(
            f"scale: expected rollout=N with N >= 1 (the rollout pool is what scales), got {text!r}"
        )
    return role, int(count)


def request_scale(run: Path, role: str, count: int) -> Path:
    """Ask the run in folder `run` to scale `role` to `count` workers; returns the request's file."""
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"scale: {run} is not a run folder (no config.yaml); give runs/<name>")
    path = run / SCALE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({role: count}) + "\n")
    tmp.replace(path)  # the run never reads half a request
    return path


def take_request(run: Path) -> int | None:
    """The rollout worker count a pending request asks for (the request is consumed); None: none."""
    path = run / SCALE_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    path.unlink(missing_ok=True)
    try:
        return parse_target(f"rollout={json.loads(text)['rollout']}")[1]
    except (ValueError, KeyError, TypeError):
        print(f"ignored a malformed scale request {text.strip()!r}; write it with `emo-r3 scale`", flush=True)
        return None


def applied_workers(run: Path) -> int | None:
    """The rollout worker count this run's process last applied (None: it never scaled)."""
    try:
        return int(json.loads((run / APPLIED_FILE).read_text())["rollout_workers"])
    except (FileNotFoundError, ValueError, KeyError):
        return None


def apply_scale(tc: TrainingCluster, run: Path, iteration: int) -> None:
    """Take a pending request and resize the rollout pool (between iterations: no rollout work out)."""
    count = take_request(run)
    if count is None:
        return
    before = len(tc.rollout.actors)
    after = tc.scale_rollout(count)
    record = {"iteration": iteration, "requested": count, "rollout_workers": after}
    (run / APPLIED_FILE).write_text(json.dumps(record) + "\n")
    print(f"iteration {iteration}: rollout workers {before} -> {after} (asked for {count})", flush=True)

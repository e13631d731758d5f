"""Per-iteration metrics (names in the style of veRL/TRL) and where they are written.

Always `metrics.jsonl` in the run directory (one JSON object per iteration); TensorBoard and wandb
(cluster.wandb) on top.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from rewards.rules import COMPONENTS

if TYPE_CHECKING:  # ray-free at import: `emo-r3 compare` reads metrics without starting anything
    from cluster.config import WandbConfig
    from cluster.generation import IterationRollouts

METRICS_FILE = "metrics.jsonl"
ROLLOUTS_FILE = "rollouts.jsonl"  # a few scored rollouts per iteration (cluster.dump_rollouts)
REPLACED_SUFFIX = ".replaced.jsonl"  # records of iterations an attempt redoes, set aside


def _mean_std(values: list[float], prefix: str) -> dict[str, float]:
    if not values:
        return {}
    return {f"{prefix}/mean": statistics.fmean(values), f"{prefix}/std": statistics.pstdev(values)}


def rollout_metrics(rollouts: IterationRollouts) -> dict[str, float]:
    """Reward components, rates and lengths of one iteration's rollouts."""
    scores = [s for sg in rollouts.groups for s in sg.scores]
    scored = [s for s in scores if s.rewards is not None]
    lengths = [len(c.token_ids) for sg in rollouts.groups for c in sg.group.completions]
    metrics: dict[str, float] = {}
    for name in COMPONENTS:
        metrics |= _mean_std([getattr(s.rewards, name) for s in scored], f"reward/{name}")
    reflected = [s for s in scored if s.coherence_reflection is not None]
    metrics |= {
        "rollout/groups": float(len({sg.group.group_id for sg in rollouts.groups})),
        "rollout/rollouts": float(len(scores)),
        "rollout/unscorable_rate": 1 - len(scored) / max(len(scores), 1),
        "rollout/accuracy": metrics.get("reward/accuracy/mean", 0.0),
        "rollout/format_rate": metrics.get("reward/format/mean", 0.0),
        "rollout/truncated_rate": statistics.fmean(
            [c.finish_reason == "length" for sg in rollouts.groups for c in sg.group.completions]
        ),
        "response_length/mean": statistics.fmean(lengths) if lengths else 0.0,
        "response_length/max": float(max(lengths, default=0)),
        "reward/failures": float(len(rollouts.reward_failures)),
    }
    if reflected:
        metrics["reflection/coherence_agree_rate"] = statistics.fmean(
            [s.rewards.coherence == 1.0 for s in reflected]
        )
        metrics["reflection/consistency_yes_rate"] = statistics.fmean(
            [s.rewards.consistency == 1.0 for s in reflected]
        )
        metrics["reflection/undecided_rate"] = statistics.fmean(
            [0.5 in (s.rewards.coherence, s.rewards.consistency) for s in reflected]
        )
    return metrics


class MetricsLog:
    """Where every iteration's metrics go: metrics.jsonl (always), TensorBoard and wandb (optional).

    It appends, so a resumed run keeps one history. `start`: the first iteration this attempt logs.
    TensorBoard is told to drop what an earlier attempt logged from there on (a session start at
    `purge_step`), as set_aside_from does for the JSON lines, so a redone iteration shows once. wandb
    resumes the run of the same folder name and plots against an `iteration` axis, so a redone
    iteration's points are drawn again at the same x.
    """

    def __init__(self, run_dir: Path, tensorboard: bool, start: int = 0, wandb: WandbConfig | None = None):
        self.path = run_dir / METRICS_FILE
        self.writer = None
        self.wandb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start)
        if wandb is not None and wandb.enabled:
            self.wandb = _wandb_run(wandb, run_dir)

    def log(self, iteration: int, metrics: dict[str, float]) -> None:
        record = {"iteration": iteration, **metrics}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(key, value, iteration)
            self.writer.flush()
        if self.wandb is not None:
            self.wandb.log(record)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()


def _wandb_run(cfg: WandbConfig, run_dir: Path):
    """The wandb run of this run folder: its id is the folder's name, so a resumed attempt continues it."""
    import re

    import wandb

    run = wandb.init(
        project=cfg.project,
        entity=cfg.entity,
        mode=cfg.mode,
        dir=str(run_dir),
        name=run_dir.name,
        id=re.sub(r"[^A-Za-z0-9_-]+", "-", run_dir.name),
        resume="allow",
    )
    run.define_metric("iteration")
    run.define_metric("*", step_metric="iteration")
    return run


def replaced_path(path: Path) -> Path:
    """Where `set_aside_from` keeps the records of `path` an attempt redid: `<stem>.replaced.jsonl`."""
    return path.with_name(path.name.removesuffix(".jsonl") + REPLACED_SUFFIX)


def set_aside_from(path: Path, start: int) -> int:
    """Move the records of `path` (JSON lines with an "iteration") from iteration `start` on — what
    an earlier attempt logged after the checkpoint this one starts from (start 0: no checkpoint), and
    that this attempt redoes — to `<name>.replaced.jsonl` beside it (appended: nothing is lost), so
    `path` holds one history. Returns how many were moved; a line that is not a record stays."""
    if not path.is_file():
        return 0
    kept, moved = [], []
    for line in path.read_text().splitlines(keepends=True):
        try:
            redone = int(json.loads(line)["iteration"]) >= start
        except (ValueError, KeyError, TypeError):
            redone = False
        (moved if redone else kept).append(line)
    if moved:
        with replaced_path(path).open("a") as f:
            f.writelines(moved)
        path.write_text("".join(kept))
    return len(moved)


def read_metrics(run_dir: Path) -> list[dict]:
    """Every record of a run's metrics.jsonl, in order (none if the run has not logged yet)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

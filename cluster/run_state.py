"""Where a run stands between iterations: the data stream, the replay buffer, the policy version, and
the last point a checkpoint can resume exactly from.

The data side runs ahead of the learner in the asynchronous mode (the next iterations' prompts are
drawn while the learner trains): `draw` keeps the data state from before each batch, so the point
after iteration i resumes by drawing iteration i+1's batch again, the same prompts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cluster.checkpoints import data_digest
from cluster.config import RunConfig
from cluster.data.sample import Sample
from cluster.generation import IterationRollouts, accuracies
from cluster.replay import ReplayBuffer
from cluster.stream import PromptStream, StreamState


@dataclass
class RunState:
    """`resumable` is the trainer state of the last exact point (the learner holds exactly `version`
    and the next iteration is `iteration`); None while the learner's weights move."""

    stream: PromptStream[Sample]
    replay: ReplayBuffer
    iteration: int = 0
    version: int = 0
    resumable: dict[str, Any] | None = None
    drawn: dict[int, dict[str, Any]] = field(default_factory=dict)  # iteration → data state before its batch
    restarts: int = 0  # how often this run restarted itself from a checkpoint (a learner rank was lost)
    restart_s: float | None = None  # how long the last restart took, until its first iteration is logged

    @classmethod
    def start(cls, cfg: RunConfig, samples: list[Sample], saved: dict[str, Any] | None = None) -> RunState:
        """A run on `samples` at iteration 0, or where a checkpoint's trainer state `saved` left it."""
        saved = saved or {}
        stream = PromptStream(
            samples,
            cfg.cluster.prompts_per_iteration,
            seed=cfg.cluster.seed,
            shuffle=cfg.data.shuffle,
            state=StreamState(**saved.get("stream", {})),
        )
        replay = ReplayBuffer(samples, cfg.data.replay_share, cfg.cluster.seed, saved.get("replay"))
        return cls(stream, replay, saved.get("next_iteration", 0), saved.get("version", 0))

    def begin(self, iteration: int) -> tuple[list[Sample], int]:
        """Iteration `iteration` starts: the exact point before it is resumable; its prompts (next_batch)."""
        self.iteration = iteration
        self.mark_resumable()
        return self.draw(iteration)

    def draw(self, iteration: int) -> tuple[list[Sample], int]:
        """Iteration `iteration`'s prompts and how many are replayed; the data state before them is kept
        for the resumable point before that iteration."""
        self.drawn[iteration] = self._data_state()
        return next_batch(self.stream, self.replay, iteration)

    def observe(self, rollouts: IterationRollouts) -> None:
        """The iteration's groups are scored: the replay buffer learns them."""
        if self.replay.share:
            self.replay.update((sg.sample.sample_id, accuracies(sg)) for sg in rollouts.groups)

    def training(self) -> None:
        """The learner is about to move: no exact point until the iteration ends."""
        self.resumable = None

    def trained(self) -> int:
        """The learner finished the iteration's updates: the new policy version."""
        self.version += 1
        return self.version

    def end(self) -> None:
        """The iteration is logged: the point after it is resumable."""
        self.iteration += 1
        self.mark_resumable()

    def mark_resumable(self) -> None:
        """The trainer state of the point before `self.iteration` (its batch drawn already or not)."""
        data = self.drawn.get(self.iteration) or self._data_state()
        self.drawn = {i: d for i, d in self.drawn.items() if i > self.iteration}
        self.resumable = {
            "next_iteration": self.iteration,
            "version": self.version,
            **data,
            "data": data_digest(self.stream.items),
        }

    def take_restart_metrics(self) -> dict[str, float]:
        """`recovery/run_restarts` (so far), and the seconds of a restart on the first iteration after it."""
        metrics = {"recovery/run_restarts": float(self.restarts)}
        if self.restart_s is not None:
            metrics["timing_s/run_restart"], self.restart_s = self.restart_s, None
        return metrics

    def _data_state(self) -> dict[str, Any]:
        return {"stream": asdict(self.stream.state), "replay": self.replay.state()}


def next_batch(
    stream: PromptStream[Sample], replay: ReplayBuffer, iteration: int
) -> tuple[list[Sample], int]:
    """An iteration's prompts: the replay buffer's quota, the rest from the stream; and how many replayed.

    A replayed prompt never doubles one the stream gives in the same batch (possible past an epoch
    boundary); the stream tops up what the buffer could not give.
    """
    size = stream.batch_size
    quota = replay.quota(size)
    fresh = stream.next_batch(size - quota)
    replayed = replay.draw(iteration, quota, exclude=(s.sample_id for s in fresh))
    return fresh + replayed + stream.next_batch(quota - len(replayed)), len(replayed)

"""Replay of the prompts the policy gets partly wrong (`data.replay_share`).

GRPO learns from a prompt only when its group's rollouts disagree; a prompt the policy answers right
every time, or wrong every time, gives the accuracy reward no gradient. The buffer keeps the training
prompts whose latest group was mixed (some rollouts right, some wrong) with that group's accuracy
`s`; each iteration draws up to `share x B` of them again, without replacement, weighted by `1 - s`
(the prompts the policy misses most, as long as it hits them sometimes; prioritised sampling as in
Kimi k1.5, restricted to prompts that still give a gradient), and fills the rest of the batch from
the epoch stream. Every group scored updates its prompt's entry: mixed again → the new accuracy; all
right or all wrong → out of the buffer. The draw is seeded by (cluster.seed, iteration) and the
buffer is saved with each checkpoint, so a resumed run replays exactly what the original would have.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence

from actors.types import derive_seed
from cluster.data.sample import Sample

REPLAY_SEED_OFFSET = 7_919  # the draw's seed is apart from the stream's epoch seeds


class ReplayBuffer:
    """Mixed-outcome training prompts by sample id, each with its latest group accuracy in (0, 1)."""

    def __init__(
        self, samples: Sequence[Sample], share: float, seed: int, state: Mapping[str, float] | None = None
    ):
        if not 0.0 <= share < 1.0:
            raise ValueError(f"replay share must be in [0, 1), got {share}")
        self.by_id = {s.sample_id: s for s in samples}
        self.share = share
        self.seed = seed
        self.accuracy: dict[str, float] = {}
        for sample_id, acc in (state or {}).items():
            if sample_id in self.by_id:  # a checkpoint of a run on other data keeps what still exists
                self.accuracy[sample_id] = float(acc)

    def quota(self, batch_size: int) -> int:
        """How many of an iteration's `batch_size` prompts to replay: share x B, at most what is buffered."""
        return min(round(self.share * batch_size), len(self.accuracy))

    def draw(self, iteration: int, count: int, exclude: Iterable[str] = ()) -> list[Sample]:
        """Up to `count` buffered prompts not in `exclude`; the more often missed, the likelier."""
        skip = set(exclude)
        ids = sorted(i for i in self.accuracy if i not in skip)
        if count <= 0 or not ids:
            return []
        rng = random.Random(derive_seed(self.seed, iteration + REPLAY_SEED_OFFSET))
        # Efraimidis-Spirakis: the `count` largest u^(1/w) are a weighted draw without replacement.
        keys = {i: rng.random() ** (1.0 / (1.0 - self.accuracy[i])) for i in ids}
        chosen = sorted(ids, key=lambda i: keys[i], reverse=True)[:count]
        return [self.by_id[i] for i in chosen]

    def update(self, outcomes: Iterable[tuple[str, Sequence[float]]]) -> None:
        """Record each group's accuracy rewards (scorable rollouts only) under its sample id."""
        for sample_id, accuracies in outcomes:
            if not accuracies:
                continue  # nothing scorable: what the policy does on it is unknown, keep the entry
            acc = sum(accuracies) / len(accuracies)
            if 0.0 < acc < 1.0 and sample_id in self.by_id:
                self.accuracy[sample_id] = acc
            else:
                self.accuracy.pop(sample_id, None)

    def state(self) -> dict[str, float]:
        return dict(sorted(self.accuracy.items()))

"""The training prompt stream: seeded epochs, exact resume at the next batch.

The position is (epoch, index) into the epoch's permutation; the permutation of an epoch depends only
on (seed, epoch), so a resumed run sees exactly the batches the original run would have seen.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from actors.types import derive_seed

T = TypeVar("T")


@dataclass
class StreamState:
    epoch: int = 0
    index: int = 0


class PromptStream(Generic[T]):
    def __init__(
        self,
        items: Sequence[T],
        batch_size: int,
        *,
        seed: int,
        shuffle: bool = True,
        state: StreamState | None = None,
    ):
        if not items:
            raise ValueError("the training set is empty")
        self.items = list(items)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.state = state or StreamState()
        self._order = self._permutation(self.state.epoch)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.items)))
        if self.shuffle:
            random.Random(derive_seed(self.seed, epoch)).shuffle(order)
        return order

    def next_batch(self, count: int | None = None) -> list[T]:
        """The next `count` (default `batch_size`) items; an epoch boundary inside a batch continues
        into the next epoch."""
        count = self.batch_size if count is None else count
        batch = []
        while len(batch) < count:
            if self.state.index == len(self._order):
                self.state = StreamState(self.state.epoch + 1, 0)
                self._order = self._permutation(self.state.epoch)
            batch.append(self.items[self._order[self.state.index]])
            self.state.index += 1
        return batch

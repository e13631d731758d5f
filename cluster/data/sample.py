"""The unit of data: one image reference, its question, label set and gold label. Pure: stdlib only."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sample:
    """One prompt of the task (METHOD.md §1).

    `image` is a reference, never decoded pixels: a path (absolute, or already resolved against the
    manifest's folder) or the encoded bytes of the file. `answer` is lowercase and one of `labels`.
    `label_dist` (optional) is a distribution over `labels`, in the same order. `response` is an
    optional reference response (SET format) for supervised warm-up.
    """

    sample_id: str
    image: str | bytes
    question: str
    labels: tuple[str, ...]
    answer: str
    label_dist: tuple[float, ...] | None = None
    response: str | None = None
    dataset: str = ""

    def __post_init__(self) -> None:
        if self.answer not in self.labels:
            raise ValueError(
                f"sample {self.sample_id!r}: answer {self.answer!r} is not in labels {self.labels}"
            )
        if self.label_dist is not None and len(self.label_dist) != len(self.labels):
            raise ValueError(
                f"sample {self.sample_id!r}: label_dist has {len(self.label_dist)} entries for {len(self.labels)} labels"
            )


@dataclass
class LoadResult:
    """What a loader returns: the usable samples, and what was skipped.

    `skipped` counts skipped items by reason (a closed set of strings per loader); `errors` lists
    `(where, reason)` for each of them, `where` being a location such as `"train.jsonl:12"`, a
    parquet row `"train.parquet[3]"`, a path inside a folder tree, or a sample id. `hints` are
    one-line notes for the user, each naming the setting or column that would fix a kind of skip.
    """

    samples: list[Sample] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    errors: list[tuple[str, str]] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)

    def skip(self, where: str, reason: str) -> None:
        """Record one skipped item."""
        self.skipped[reason] += 1
        self.errors.append((where, reason))

"""One manifest row (EasyR1-style columns) to one `Sample`, or a reason why not. Pure: stdlib only.

Shared by the JSONL and parquet loaders. A row is a dict; the column names come from `Columns`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from rewards.prompts import LABEL_SETS, build_question

from .sample import Sample

RowReason = Literal[
    "bad_json",
    "not_an_object",
    "missing_image",
    "bad_image",
    "missing_answer",
    "missing_labels",
    "bad_labels",
    "answer_not_in_labels",
    "bad_label_dist",
    "duplicate_id",
]
ROW_REASONS: tuple[str, ...] = get_args(RowReason)

_IMAGE_PLACEHOLDER = re.compile(r"\s*<image>\s*")
_BOXED = re.compile(r"^\\boxed\{(.*)\}$", re.DOTALL)


class RowRejected(Exception):
    """A manifest row that cannot become a sample; `reason` is one of `ROW_REASONS`."""

    def __init__(self, reason: RowReason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason: RowReason = reason


@dataclass(frozen=True)
class Columns:
    """Column names of a manifest (defaults: EasyR1's `images`, `problem`, `answer`)."""

    image_key: str = "images"
    problem_key: str = "problem"
    answer_key: str = "answer"
    labels_key: str = "labels"
    label_dist_key: str = "label_dist"
    response_key: str = "response"
    id_key: str = "id"
    dataset_key: str = "dataset"


def label_set_labels(label_set: str | None) -> tuple[str, ...] | None:
    """The labels of a named set (METHOD.md §1), None for None; unknown names raise ValueError."""
    if label_set is None:
        return None
    try:
        return LABEL_SETS[label_set.lower()]
    except KeyError:
        raise ValueError(f"unknown label set {label_set!r}; expected one of {sorted(LABEL_SETS)}") from None


def row_to_sample(
    row: Any, *, columns: Columns, base_dir: str, default_id: str, label_set: str | None
) -> Sample:
    """Build a sample from one row; raises `RowRejected` with the reason if the row is malformed."""
    if not isinstance(row, Mapping):
        raise RowRejected("not_an_object", type(row).__name__)
    labels = _labels(row.get(columns.labels_key), label_set)
    answer = _answer(row.get(columns.answer_key))
    if answer not in labels:
        raise RowRejected("answer_not_in_labels", f"{answer!r} not in {labels}")
    return Sample(
        sample_id=str(row.get(columns.id_key) or default_id),
        image=_image(row.get(columns.image_key), base_dir),
        question=_question(row.get(columns.problem_key), labels),
        labels=labels,
        answer=answer,
        label_dist=_label_dist(row.get(columns.label_dist_key), labels),
        response=_optional_str(row.get(columns.response_key)),
        dataset=str(row.get(columns.dataset_key) or label_set or ""),
    )


def normalise_label(text: str) -> str:
    """`\\boxed{Fear}` / ` Fear ` -> `fear`."""
    text = text.strip()
    boxed = _BOXED.match(text)
    if boxed:
        text = boxed.group(1).strip()
    return text.lower()


def _answer(value: Any) -> str:
    if not isinstance(value, str) or not normalise_label(value):
        raise RowRejected("missing_answer", repr(value)[:80])
    return normalise_label(value)


def _labels(value: Any, label_set: str | None) -> tuple[str, ...]:
    if value is None:
        labels = label_set_labels(label_set)
        if labels is None:
            raise RowRejected("missing_labels", "no labels column and no label set configured")
        return labels
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise RowRejected("bad_labels", repr(value)[:80])
    if not all(isinstance(label, str) and label.strip() for label in value):
        raise RowRejected("bad_labels", repr(value)[:80])
    labels = tuple(normalise_label(label) for label in value)
    if len(set(labels)) != len(labels):
        raise RowRejected("bad_labels", f"duplicate labels in {labels}")
    return labels


def _image(value: Any, base_dir: str) -> str | bytes:
    """The one image of a row: a path (resolved against `base_dir`) or encoded bytes."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise RowRejected("missing_image", "empty image list")
        value = value[0]
    if isinstance(value, Mapping):  # HF datasets: {"bytes": b"..." or None, "path": "..." or None}
        value = value.get("bytes") or value.get("path")
    if value is None or (isinstance(value, (str, bytes)) and not value):
        raise RowRejected("missing_image")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value if os.path.isabs(value) else os.path.normpath(os.path.join(base_dir, value))
    raise RowRejected("bad_image", f"image of type {type(value).__name__}")


def _question(value: Any, labels: tuple[str, ...]) -> str:
    """The problem text without the `<image>` placeholder; the paper's question if absent."""
    text = _IMAGE_PLACEHOLDER.sub(" ", value).strip() if isinstance(value, str) else ""
    return text or build_question(labels)


def _label_dist(value: Any, labels: tuple[str, ...]) -> tuple[float, ...] | None:
    """A distribution over `labels` (normalised to sum 1) from a list in label order or a {label: weight} map."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        if not set(map(normalise_label, value)) <= set(labels):
            raise RowRejected("bad_label_dist", f"keys {sorted(value)} not in labels")
        weights = {normalise_label(k): v for k, v in value.items()}
        value = [weights.get(label, 0.0) for label in labels]
    try:
        dist = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise RowRejected("bad_label_dist", repr(value)[:80]) from None
    if len(dist) != len(labels) or not all(math.isfinite(v) and v >= 0 for v in dist) or sum(dist) <= 0:
        raise RowRejected("bad_label_dist", f"{dist} for {len(labels)} labels")
    total = sum(dist)
    return tuple(v / total for v in dist)


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None

"""One manifest row (EasyR1-style columns) to one `Sample`, or a reason why not. Pure: stdlib only.

Shared by the JSONL and parquet loaders. A row is a dict; the column names come from `Columns`.
A row's label set is, in this order: its `labels` column, the configured label set, the categories
its question lists (the authors' release has no `labels` column), the one known label set that holds
every answer of the manifest (`answers_label_set`, a pass the loader makes once, when a row needs it).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
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
    "image_outside_root",
]
ROW_REASONS: tuple[str, ...] = get_args(RowReason)

_IMAGE_PLACEHOLDER = re.compile(r"\s*<image>\s*")
_BOXED = re.compile(r"^\\boxed\{(.*)\}$", re.DOTALL)
# The release's question: "... Answer the question using one emotional category: a, b, or c." (METHOD.md §1)
_CATEGORY_LIST = re.compile(r"one emotional category[^:\n]*:\s*([^.?!\n]*)", re.IGNORECASE)
_LIST_SEPARATOR = re.compile(r"\s*,\s*(?:(?:or|and)\s+)?|\s+(?:or|and)\s+", re.IGNORECASE)
_LABEL_WORD = re.compile(r"[a-z]+(?:[ '-][a-z]+)*")


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
    row: Any,
    *,
    columns: Columns,
    base_dir: str,
    default_id: str,
    label_set: str | None,
    answers_fit: Callable[[], str | None] | None = None,
    allow_outside_paths: bool = False,
) -> Sample:
    """Build a sample from one row; raises `RowRejected` with the reason if the row is malformed.

    `answers_fit` gives the known label set every answer of the manifest fits (None: none); it is
    called only for a row whose label set nothing else gives. An image path must lie inside
    `base_dir` unless `allow_outside_paths` (see `_inside_path`).
    """
    if not isinstance(row, Mapping):
        raise RowRejected("not_an_object", type(row).__name__)
    labels, dataset = _labels(row, columns, label_set, answers_fit)
    answer = _answer(row.get(columns.answer_key))
    if answer not in labels:
        raise RowRejected("answer_not_in_labels", f"{answer!r} not in {labels}")
    return Sample(
        sample_id=str(row.get(columns.id_key) or default_id),
        image=_image(row.get(columns.image_key), base_dir, allow_outside_paths),
        question=_question(row.get(columns.problem_key), labels),
        labels=labels,
        answer=answer,
        label_dist=_label_dist(row.get(columns.label_dist_key), labels),
        response=_optional_str(row.get(columns.response_key)),
        dataset=str(row.get(columns.dataset_key) or dataset),
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


def _labels(
    row: Mapping[str, Any],
    columns: Columns,
    label_set: str | None,
    answers_fit: Callable[[], str | None] | None,
) -> tuple[tuple[str, ...], str]:
    """The row's label set and the data set name it implies (order in the module docstring)."""
    value = row.get(columns.labels_key)
    if value is not None:
        return _explicit_labels(value), label_set or ""
    if label_set is not None:
        return label_set_labels(label_set) or (), label_set
    listed = problem_labels(row.get(columns.problem_key))
    if listed is not None:
        return listed, label_set_name(listed)
    fitted = answers_fit() if answers_fit else None
    if fitted is None:
        raise RowRejected("missing_labels", "no labels column; no label set configured or inferred")
    return LABEL_SETS[fitted], fitted


def _explicit_labels(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise RowRejected("bad_labels", repr(value)[:80])
    if not all(isinstance(label, str) and label.strip() for label in value):
        raise RowRejected("bad_labels", repr(value)[:80])
    labels = tuple(normalise_label(label) for label in value)
    if len(set(labels)) != len(labels):
        raise RowRejected("bad_labels", f"duplicate labels in {labels}")
    return labels


def problem_labels(problem: Any) -> tuple[str, ...] | None:
    """The categories a question lists after "one emotional category:", lowercase and in order.

    `"<image>... using one emotional category: Amusement, anger, or awe."` -> `("amusement", "anger",
    "awe")`. None when there is no such list or it is not two or more distinct words.
    """
    if not isinstance(problem, str):
        return None
    found = _CATEGORY_LIST.search(problem)
    if found is None:
        return None
    parts = _LIST_SEPARATOR.split(found.group(1).strip())
    labels = tuple(part.strip(" \t'\"*`").lower() for part in parts)
    if len(labels) < 2 or len(set(labels)) != len(labels):
        return None
    return labels if all(_LABEL_WORD.fullmatch(label) for label in labels) else None


def label_set_name(labels: Iterable[str]) -> str:
    """The name of the known label set with exactly these labels (in any order), else ""."""
    wanted = set(labels)
    return next((name for name, known in LABEL_SETS.items() if set(known) == wanted), "")


def answers_label_set(answers: Iterable[Any]) -> str | None:
    """The one known label set that holds every answer (normalised; non-strings and blanks ignored).

    None when no set or several hold them. Streams, and stops at the first answer no set holds.
    """
    candidates = set(LABEL_SETS)
    for value in answers:
        answer = normalise_label(value) if isinstance(value, str) else ""
        if answer:
            candidates = {name for name in candidates if answer in LABEL_SETS[name]}
            if not candidates:
                return None
    return candidates.pop() if len(candidates) == 1 else None


def _image(value: Any, base_dir: str, allow_outside_paths: bool) -> str | bytes:
    """The one image of a row: encoded bytes, or a path resolved against `base_dir`."""
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
    if isinstance(value, str) and allow_outside_paths:
        return value if os.path.isabs(value) else os.path.normpath(os.path.join(base_dir, value))
    if isinstance(value, str):
        return _inside_path(value, base_dir)
    raise RowRejected("bad_image", f"image of type {type(value).__name__}")


def _inside_path(value: str, base_dir: str) -> str:
    """`value` resolved against `base_dir` when it lies inside that folder, else `image_outside_root`.

    A path is judged as written, normalised: relative or absolute, it must name something under the
    folder, as the manifest reaches it or as its real path (when the folder is reached through a
    symlink). Symlinks the folder holds are followed as its owner set them, but a path with `..` is
    judged on where it really leads (a `..` after a symlinked folder climbs from the link's target).
    """
    path = os.path.normpath(os.path.join(base_dir, value))
    inside = _is_under(path, base_dir) or _is_under(path, os.path.realpath(base_dir))
    if inside and os.pardir in re.split(r"[\\/]", value):
        inside = _is_under(os.path.realpath(os.path.join(base_dir, value)), os.path.realpath(base_dir))
    if not inside:
        raise RowRejected("image_outside_root", f"{value[:80]!r} is not inside {base_dir}")
    return path


def _is_under(path: str, folder: str) -> bool:
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


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

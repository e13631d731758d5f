"""Dataset loaders: JSONL and parquet manifests (EasyR1 columns) and class-per-folder trees.

Loading never decodes an image: samples carry a path or the encoded bytes, and malformed rows are
skipped and counted with their location. `validate_samples` is the separate, parallel pass that
decodes every image with `load_image` and drops the ones that cannot be used.

A manifest names its images by path, so it could name any file: unless the caller allows it, a path
must lie inside the manifest's folder (rows that leave it are skipped as `image_outside_root`). A
folder tree's files are listed from the tree itself; a symlink it holds is followed, as the tree's
owner set it.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, get_args

from rewards.prompts import LABEL_SETS, build_question

from .images import ImagePolicy, ImageRejected, load_image
from .rows import Columns, RowRejected, answers_label_set, label_set_labels, row_to_sample
from .sample import LoadResult, Sample

FolderReason = Literal["unknown_label", "unsupported_file", "outside_label_folder"]
FOLDER_REASONS: tuple[str, ...] = get_args(FolderReason)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
_PARQUET_BATCH_ROWS = 1024

__all__ = [
    "Columns",
    "LoadResult",
    "load_dataset",
    "load_folder",
    "load_jsonl",
    "load_parquet",
    "validate_samples",
]


def load_dataset(
    path: str | os.PathLike[str],
    *,
    label_set: str | None = None,
    columns: Columns | None = None,
    allow_outside_paths: bool = False,
) -> LoadResult:
    """Load a `.jsonl` / `.parquet` manifest or a class-per-folder tree, by what `path` is.

    `label_set` (a name from `rewards.prompts.LABEL_SETS`) gives the labels of rows without a
    `labels` column and of folder trees; without it they are inferred where the data determines them
    (`cluster.data.rows`). `allow_outside_paths` lets a manifest name absolute image paths and paths
    outside its folder (only for manifests you trust: they can then make this process read any file).
    """
    path = os.fspath(path)
    columns = columns or Columns()
    label_set_labels(label_set)  # fail fast on an unknown name
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"dataset not found: {path!r} (expected a .jsonl or .parquet manifest or a folder)"
        )
    if os.path.isdir(path):
        return load_folder(path, label_set=label_set)
    suffix = os.path.splitext(path)[1].lower()
    loader = {".jsonl": load_jsonl, ".parquet": load_parquet, ".pq": load_parquet}.get(suffix)
    if loader is not None:
        return loader(path, label_set=label_set, columns=columns, allow_outside_paths=allow_outside_paths)
    raise ValueError(f"cannot load {path!r}: expected a .jsonl or .parquet manifest or a folder")


def load_jsonl(
    path: str,
    *,
    label_set: str | None = None,
    columns: Columns | None = None,
    allow_outside_paths: bool = False,
) -> LoadResult:
    """One JSON object per line; blank lines are ignored; locations are `name:line` (1-based).

    When rows need their label set inferred from the answers, the file is read once more.
    """
    columns = columns or Columns()
    key = columns.answer_key

    def answers() -> Iterator[Any]:
        return (row.get(key) for _, row in _jsonl_rows(path) if isinstance(row, Mapping))

    return _collect(
        _jsonl_rows(path),
        answers,
        base_dir=os.path.dirname(os.path.abspath(path)),
        label_set=label_set,
        columns=columns,
        allow_outside_paths=allow_outside_paths,
    )


def _jsonl_rows(path: str) -> Iterator[tuple[str, Any]]:
    name = os.path.basename(path)
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row: Any = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                row = RowRejected("bad_json")
            yield f"{name}:{number}", row


def load_parquet(
    path: str,
    *,
    label_set: str | None = None,
    columns: Columns | None = None,
    allow_outside_paths: bool = False,
) -> LoadResult:
    """Rows of a parquet file (read in batches); locations are `name[row]` (0-based).

    When rows need their label set inferred from the answers, the answer column alone is read once more.
    """
    import pyarrow.parquet as pq

    columns = columns or Columns()
    name = os.path.basename(path)

    def rows() -> Iterator[tuple[str, Any]]:
        index = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=_PARQUET_BATCH_ROWS):
            for row in batch.to_pylist():
                yield f"{name}[{index}]", row
                index += 1

    def answers() -> Iterator[Any]:
        file = pq.ParquetFile(path)
        if columns.answer_key in file.schema_arrow.names:
            for batch in file.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[columns.answer_key]):
                yield from batch.column(0).to_pylist()

    return _collect(
        rows(),
        answers,
        base_dir=os.path.dirname(os.path.abspath(path)),
        label_set=label_set,
        columns=columns,
        allow_outside_paths=allow_outside_paths,
    )


def _collect(
    rows: Iterable[tuple[str, Any]],
    answers: Callable[[], Iterable[Any]],
    *,
    base_dir: str,
    label_set: str | None,
    columns: Columns,
    allow_outside_paths: bool,
) -> LoadResult:
    """Turn `(where, row)` pairs into samples, skipping and counting bad rows.

    A row without an id gets its location as id (`train.jsonl:12`), so later reports can point at it.
    `answers` reads every answer of the manifest again; it runs at most once, and only when a row has
    no label set but the one its manifest's answers fit.
    """
    answers_fit = functools.cache(lambda: answers_label_set(answers()))
    result = LoadResult()
    seen: set[str] = set()
    for where, row in rows:
        try:
            if isinstance(row, RowRejected):
                raise row
            sample = row_to_sample(
                row,
                columns=columns,
                base_dir=base_dir,
                default_id=where,
                label_set=label_set,
                answers_fit=answers_fit,
                allow_outside_paths=allow_outside_paths,
            )
            if sample.sample_id in seen:
                raise RowRejected("duplicate_id", sample.sample_id)
        except RowRejected as rejected:
            result.skip(where, rejected.reason)
            continue
        seen.add(sample.sample_id)
        result.samples.append(sample)
    result.hints += _hints(result, base_dir, columns)
    return result


def _hints(result: LoadResult, base_dir: str, columns: Columns) -> list[str]:
    """One line per skip reason that a setting fixes, saying which."""
    hints = []
    if n := result.skipped["missing_labels"]:
        hints.append(
            f"{n} rows skipped as missing_labels: no '{columns.labels_key}' column and the label set could "
            f"not be inferred (no category list in '{columns.problem_key}', the answers fit no single known "
            f"set): set data.label_set=<{'|'.join(LABEL_SETS)}> (data check: --label-set) or add a "
            f"'{columns.labels_key}' column"
        )
    if n := result.skipped["image_outside_root"]:
        hints.append(
            f"{n} rows skipped as image_outside_root: the image path is absolute or leaves the manifest's "
            f"folder {base_dir}: move the images under it, or, if you trust the manifest, set "
            "data.allow_outside_paths=true (data check: --allow-outside-paths)"
        )
    return hints


def load_folder(root: str, *, label_set: str | None = None) -> LoadResult:
    """A class-per-folder tree `root/<label>/<image>`; labels come from the folder names.

    With `label_set` given, folders outside it are skipped (`unknown_label`). Without it, the
    labels are a known label set if the folder names are exactly one, or fit in exactly one; else
    the sorted folder names. Hidden files are ignored; other non-image files are counted.
    """
    folders = sorted(
        entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith(".")
    )
    labels, dataset = _folder_labels([f.lower() for f in folders], label_set)
    question = build_question(labels) if labels else ""
    result = LoadResult()
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.is_file() and not entry.name.startswith("."):
            result.skip(entry.name, "outside_label_folder")
    for folder in folders:
        label = folder.lower()
        for name in sorted(os.listdir(os.path.join(root, folder))):
            where = f"{folder}/{name}"
            if name.startswith(".") or os.path.isdir(os.path.join(root, folder, name)):
                continue
            if label not in labels:
                result.skip(where, "unknown_label")
            elif os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                result.skip(where, "unsupported_file")
            else:
                image = os.path.join(os.path.abspath(root), folder, name)
                result.samples.append(Sample(where, image, question, labels, label, dataset=dataset))
    return result


def _folder_labels(folders: list[str], label_set: str | None) -> tuple[tuple[str, ...], str]:
    """The label set of a folder tree and its dataset name (see `load_folder`)."""
    configured = label_set_labels(label_set)
    if configured is not None:
        return configured, str(label_set).lower()
    names = set(folders)
    exact = [name for name, labels in LABEL_SETS.items() if set(labels) == names]
    supersets = [name for name, labels in LABEL_SETS.items() if names and names <= set(labels)]
    for candidates in (exact, supersets):
        if len(candidates) == 1:
            return LABEL_SETS[candidates[0]], candidates[0]
    return tuple(sorted(names)), ""


def validate_samples(
    samples: Iterable[Sample], policy: ImagePolicy | None = None, *, workers: int | None = None
) -> LoadResult:
    """Decode every sample's image (thread pool; PIL decodes without the GIL) and keep the usable ones.

    Order is preserved. Skipped samples are counted by image reason and located by sample id.
    """
    policy = policy or ImagePolicy()
    samples = list(samples)
    workers = workers or min(8, os.cpu_count() or 1)
    result = LoadResult()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="validate-image") as pool:
        for sample, reason in zip(
            samples, pool.map(lambda s: _image_reason(s, policy), samples), strict=True
        ):
            if reason is None:
                result.samples.append(sample)
            else:
                result.skip(sample.sample_id, reason)
    return result


def _image_reason(sample: Sample, policy: ImagePolicy) -> str | None:
    """None if the sample's image loads under `policy`, else the reason it does not."""
    try:
        load_image(sample.image, policy).close()
    except ImageRejected as rejected:
        return rejected.reason
    return None

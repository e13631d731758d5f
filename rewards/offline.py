"""Offline rescoring of rollout dumps (JSON lines) under a choice of reward rules (METHOD.md §3).

Input: one JSON object per line with `response` (str) and `label` (str, the gold label), optionally
`labels` (list of str: the dataset's label set, only read by strict label matching; absent, null or
empty → the `default_labels` argument, EmoSet unless told otherwise), and optionally `coherence_reflection` /
`consistency_reflection` (str; absent or null = not run → 1.0, as in validation).

Output: every scorable input object, in input order, plus `overall` (the score), `accuracy`,
`format`, `coherence` and `consistency` (existing keys of those names are overwritten). Blank lines
are skipped silently; malformed lines are skipped and reported with their 1-based line number.
Output is pure ASCII JSON (non-ASCII characters as `\\uXXXX` escapes, so every reader splits lines
alike). Both files are streamed line by line. The output is written to a temporary file next to it
and moved into place at the end, so an error mid-way leaves an existing output as it was; the output
may not be the input file (a path, symlink or hard link to it). Pure: stdlib only.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from rewards.prompts import LABEL_SETS
from rewards.rules import REWARD_NAMES, RewardBreakdown, RewardRules, score_response

COMPONENTS = ("overall", *REWARD_NAMES)  # a dump calls the score `overall`
_OPTIONAL_TEXT_FIELDS = ("coherence_reflection", "consistency_reflection")
_SHOWN_SKIPS = 20


@dataclass(frozen=True)
class RescoreSummary:
    """What `rescore_jsonl` did. Means are over scored lines; `None` when no line was scored."""

    n_scored: int
    n_skipped: int
    skipped: tuple[tuple[int, str], ...]  # (1-based line number, reason), in file order
    mean_overall: float | None
    mean_accuracy: float | None
    mean_format: float | None
    mean_coherence: float | None
    mean_consistency: float | None


class _Malformed(ValueError):
    """A line that cannot be scored; the message is the reason reported."""


def _parse_record(line: str) -> dict[str, Any]:
    """The JSON object of one line, checked for the fields scoring reads; raises `_Malformed`."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError) as error:
        raise _Malformed(f"invalid JSON ({error})") from None
    if not isinstance(record, dict):
        raise _Malformed(f"not a JSON object (got {type(record).__name__})")
    for field in ("response", "label"):
        if not isinstance(record.get(field), str):
            raise _Malformed(f"'{field}' missing or not a string")
    if not record["label"].strip():
        raise _Malformed("'label' is empty")
    for field in _OPTIONAL_TEXT_FIELDS:
        if record.get(field) is not None and not isinstance(record[field], str):
            raise _Malformed(f"'{field}' is neither a string nor null")
    labels = record.get("labels")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
        raise _Malformed("'labels' is not a list of strings")
    return record


def _score_record(
    record: dict[str, Any], rules: RewardRules, default_labels: Sequence[str]
) -> RewardBreakdown:
    """Score one checked record (see `_parse_record`) under `rules`; no or empty `labels` → defaults."""
    return score_response(
        record["response"],
        record["label"],
        record.get("labels") or default_labels,
        record.get("coherence_reflection"),
        record.get("consistency_reflection"),
        rules,
    )


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _Malformed(f"not UTF-8 ({error})") from None


def _read_records(source: BinaryIO) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """(line number, record, "") per scorable line, (line number, None, reason) per malformed one."""
    for line_number, raw in enumerate(source, start=1):
        try:
            line = _decode(raw)
            record = _parse_record(line) if line.strip() else None
        except _Malformed as error:
            yield line_number, None, str(error)
            continue
        if record is not None:
            yield line_number, record, ""


def rescore_jsonl(
    input_path: str | Path,
    output_path: str | Path,
    rules: RewardRules,
    default_labels: Sequence[str] = LABEL_SETS["emoset"],
) -> RescoreSummary:
    """Rescore every rollout of `input_path` into `output_path` (format in the module docstring).

    Raises ValueError when both name the same file, before anything is written.
    """
    _check_distinct(Path(input_path), Path(output_path))
    sums = dict.fromkeys(COMPONENTS, 0.0)
    skipped: list[tuple[int, str]] = []
    n_scored = 0
    with open(input_path, "rb") as source, _replacing(Path(output_path)) as sink:
        for line_number, record, reason in _read_records(source):
            if record is None:
                skipped.append((line_number, reason))
                continue
            scores = _as_columns(_score_record(record, rules, default_labels))
            sink.write(json.dumps({**record, **scores}) + "\n")
            for name, value in scores.items():
                sums[name] += value
            n_scored += 1
    mean = {name: (total / n_scored if n_scored else None) for name, total in sums.items()}
    return RescoreSummary(
        n_scored=n_scored,
        n_skipped=len(skipped),
        skipped=tuple(skipped),
        mean_overall=mean["overall"],
        mean_accuracy=mean["accuracy"],
        mean_format=mean["format"],
        mean_coherence=mean["coherence"],
        mean_consistency=mean["consistency"],
    )


def _check_distinct(input_path: Path, output_path: Path) -> None:
    """ValueError when `output_path` is `input_path` under another name (resolved path, symlink, hard link)."""
    same = input_path.resolve() == output_path.resolve()
    if not same and input_path.exists() and output_path.exists():
        same = os.path.samefile(input_path, output_path)
    if same:
        raise ValueError(
            f"output {str(output_path)!r} is the input file {str(input_path)!r}: rescoring in place would "
            "destroy the input; choose another output path"
        )


@contextmanager
def _replacing(path: Path) -> Iterator[TextIO]:
    """A new ASCII text file that replaces `path` (through a symlink: its target) when the block ends.

    It is written as a temporary file in the same folder and moved over `path` with `os.replace`; on
    an error the temporary file is removed and `path` is left as it was. ASCII: no non-ASCII line
    breaks (U+0085, U+2028) or lone surrogates reach the file.
    """
    target = Path(os.path.realpath(path))
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    # O_EXCL: never write through a file that is already there; mode 0o666 less the umask, as open() does
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(descriptor, "w", encoding="ascii") as sink:
            yield sink
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _as_columns(result: RewardBreakdown) -> dict[str, float]:
    """The output columns of one rollout; the score is called `overall` in dumps."""
    return {"overall": result.score} | {name: getattr(result, name) for name in REWARD_NAMES}


def format_summary(summary: RescoreSummary) -> str:
    """A few lines for a terminal: counts, means, then the first skipped lines with their reasons."""
    lines = [f"scored {summary.n_scored} rollouts, skipped {summary.n_skipped} malformed lines"]
    means = [(name, getattr(summary, f"mean_{name}")) for name in COMPONENTS]
    lines.append("  ".join(f"{name} {_fmt(value)}" for name, value in means))
    for line_number, reason in summary.skipped[:_SHOWN_SKIPS]:
        lines.append(f"  line {line_number}: {reason}")
    if summary.n_skipped > _SHOWN_SKIPS:
        lines.append(f"  ... and {summary.n_skipped - _SHOWN_SKIPS} more")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"

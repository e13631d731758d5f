"""`emo-r3 data check`: load a dataset, decode every image, and report what is usable and what is not."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

from .images import ImagePolicy
from .manifest import load_dataset, validate_samples
from .rows import Columns
from .sample import Sample


@dataclass
class CheckReport:
    """Counts of one dataset check. `examples` maps a skip reason to up to N locations; `hints` say
    which setting would fix a kind of skip (`LoadResult.hints`)."""

    path: str
    n_good: int = 0
    per_label: Counter[str] = field(default_factory=Counter)
    labels: tuple[str, ...] = ()
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    hints: list[str] = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def ok(self) -> bool:
        """True when at least one usable sample is left (the CLI's exit status)."""
        return self.n_good > 0


def check_dataset(
    path: str | os.PathLike[str],
    *,
    label_set: str | None = None,
    columns: Columns | None = None,
    policy: ImagePolicy | None = None,
    workers: int | None = None,
    max_examples: int = 5,
    allow_outside_paths: bool = False,
) -> CheckReport:
    """Load `path` (manifest or folder), validate every image, and count the results.

    `allow_outside_paths`: a manifest may name images outside its folder (see `load_dataset`).
    """
    loaded = load_dataset(path, label_set=label_set, columns=columns, allow_outside_paths=allow_outside_paths)
    checked = validate_samples(loaded.samples, policy, workers=workers)
    images = {sample.sample_id: sample.image for sample in loaded.samples}
    report = CheckReport(path=os.fspath(path), n_good=len(checked.samples))
    report.per_label.update(sample.answer for sample in checked.samples)
    report.labels = _all_labels(loaded.samples)
    report.skipped = loaded.skipped + checked.skipped
    report.hints = list(loaded.hints)
    for where, reason in loaded.errors:
        _add_example(report, reason, where, max_examples)
    for sample_id, reason in checked.errors:
        image = images[sample_id]
        ref = image if isinstance(image, str) else f"<{len(image)} bytes>"
        _add_example(report, reason, f"{sample_id} ({ref})", max_examples)
    return report


def _all_labels(samples: list[Sample]) -> tuple[str, ...]:
    """Every label of every sample, first-seen order (one label set in the usual case)."""
    labels: dict[str, None] = {}
    for sample in samples:
        labels.update(dict.fromkeys(sample.labels))
    return tuple(labels)


def _add_example(report: CheckReport, reason: str, where: str, max_examples: int) -> None:
    examples = report.examples.setdefault(reason, [])
    if len(examples) < max_examples:
        examples.append(where)


def format_report(report: CheckReport) -> str:
    """A readable summary: totals, per-label counts, skip reasons with example locations, hints."""
    total = report.n_good + report.n_skipped
    lines = [f"dataset  {report.path}", f"usable   {report.n_good} of {total}", "", "label            usable"]
    for label in report.labels or sorted(report.per_label):
        lines.append(f"  {label:<15}{report.per_label[label]:>6}")
    if report.skipped:
        lines += ["", "skipped reason           count  examples"]
        for reason, count in report.skipped.most_common():
            examples = ", ".join(report.examples.get(reason, []))
            lines.append(f"  {reason:<22}{count:>6}  {examples}")
    else:
        lines += ["", "skipped  none"]
    lines += [f"hint     {hint}" for hint in report.hints]
    if not report.ok:
        lines += ["", "NO USABLE SAMPLE"]
    return "\n".join(lines)

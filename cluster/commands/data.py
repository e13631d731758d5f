"""`emo-r3 data check` and `emo-r3 data synth`: validate a data set; write the synthetic one."""

from __future__ import annotations

from pathlib import Path

from cluster.config import SyntheticConfig


def check_command(
    path: str, *, label_set: str | None, workers: int, allow_outside_paths: bool = False
) -> int:
    """`emo-r3 data check`: print the report; exit 1 only when nothing usable is left."""
    from cluster.data.check import check_dataset, format_report

    if not Path(path).exists():
        raise FileNotFoundError(f"{path!r} does not exist")
    report = check_dataset(
        path, label_set=label_set, workers=workers, allow_outside_paths=allow_outside_paths
    )
    print(format_report(report))
    return 0 if report.ok else 1


def synth_command(out: str, style: str, synthetic: SyntheticConfig) -> int:
    """`emo-r3 data synth`: the embedded default's data set (data.synthetic.* settings) into `out`."""
    from cluster.embedded.synthetic import generate

    for path in generate(out, style=style, **synthetic.model_dump()):
        print(path)
    return 0

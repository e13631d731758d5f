"""Manifest image paths stay inside the manifest's folder unless the run opts in."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from cluster.commands.data import check_command
from cluster.config import DataConfig
from cluster.data.check import check_dataset, format_report
from cluster.data.manifest import load_dataset
from cluster.data.rows import ROW_REASONS
from cluster.sources import read_samples


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 160, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def _layout(tmp_path: Path) -> tuple[Path, Path]:
    """`tmp_path/data/` (the manifest's folder, with img/in.png) and `tmp_path/secret.png` outside it."""
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    (root / "img" / "in.png").write_bytes(_png())
    (tmp_path / "secret.png").write_bytes(_png())
    return root, tmp_path / "secret.png"


def _manifest(root: Path, images: list[str], name: str = "m.jsonl") -> Path:
    rows = [{"images": [image], "answer": "awe", "id": f"r{i}"} for i, image in enumerate(images)]
    path = root / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_relative_paths_inside_the_folder_are_read(tmp_path: Path) -> None:
    root, _ = _layout(tmp_path)
    manifest = _manifest(root, ["img/in.png", "./img/../img/in.png", f"{root}/img/in.png"])
    result = load_dataset(manifest, label_set="emoset")
    assert not result.skipped and not result.hints
    assert [s.image for s in result.samples] == [str(root / "img" / "in.png")] * 3


def test_paths_that_leave_the_folder_are_skipped_and_counted(tmp_path: Path) -> None:
    root, secret = _layout(tmp_path)
    manifest = _manifest(
        root, ["img/in.png", "../secret.png", "img/../../secret.png", str(secret), "/etc/passwd"]
    )
    result = load_dataset(manifest, label_set="emoset")
    assert [s.sample_id for s in result.samples] == ["r0"]
    assert dict(result.skipped) == {"image_outside_root": 4}
    assert ("m.jsonl:2", "image_outside_root") in result.errors
    assert "image_outside_root" in ROW_REASONS
    (hint,) = result.hints
    assert "4 rows" in hint and "data.allow_outside_paths=true" in hint and "\n" not in hint


def test_opting_in_reads_absolute_and_outside_paths_as_written(tmp_path: Path) -> None:
    root, secret = _layout(tmp_path)
    manifest = _manifest(root, ["../secret.png", str(secret)])
    result = load_dataset(manifest, label_set="emoset", allow_outside_paths=True)
    assert not result.skipped
    assert [s.image for s in result.samples] == [str(secret), str(secret)]


def test_the_config_field_reaches_the_loader(tmp_path: Path) -> None:
    root, secret = _layout(tmp_path)
    manifest = str(_manifest(root, ["../secret.png"]))
    assert dict(read_samples(manifest, DataConfig(label_set="emoset")).skipped) == {"image_outside_root": 1}
    opted_in = read_samples(manifest, DataConfig(label_set="emoset", allow_outside_paths=True))
    assert [s.image for s in opted_in.samples] == [str(secret)]


def test_parquet_paths_are_held_to_the_folder_and_embedded_bytes_are_not(tmp_path: Path) -> None:
    root, _ = _layout(tmp_path)
    png = _png()
    images = [
        [{"bytes": None, "path": "img/in.png"}],
        [{"bytes": None, "path": "../secret.png"}],
        [{"bytes": png, "path": "/etc/x.png"}],
    ]
    pq.write_table(pa.table({"images": images, "answer": ["awe"] * 3}), root / "m.parquet")
    result = load_dataset(root / "m.parquet", label_set="emoset")
    assert result.errors == [("m.parquet[1]", "image_outside_root")]
    assert [s.image for s in result.samples] == [str(root / "img" / "in.png"), png]


def test_a_dotdot_after_a_symlinked_folder_is_judged_where_it_really_leads(tmp_path: Path) -> None:
    root, _ = _layout(tmp_path)
    elsewhere = tmp_path / "elsewhere" / "deep"
    elsewhere.mkdir(parents=True)
    (elsewhere / "x.png").write_bytes(_png())
    os.symlink(elsewhere, root / "linked")
    # `linked/x.png`: a symlink the folder holds is followed (its owner put it there);
    # `linked/../secret.png` looks like data/secret.png but opens elsewhere/secret.png: refused
    result = load_dataset(_manifest(root, ["linked/x.png", "linked/../secret.png"]), label_set="emoset")
    assert [s.image for s in result.samples] == [str(root / "linked" / "x.png")]
    assert result.errors == [("m.jsonl:2", "image_outside_root")]


def test_a_manifest_folder_reached_through_a_symlink_accepts_its_real_absolute_paths(tmp_path: Path) -> None:
    root, _ = _layout(tmp_path)
    _manifest(root, [str(root / "img" / "in.png"), "img/in.png"])
    os.symlink(root, tmp_path / "alias")
    result = load_dataset(tmp_path / "alias" / "m.jsonl", label_set="emoset")
    assert not result.skipped
    assert [s.image for s in result.samples] == [
        str(root / "img" / "in.png"),
        str(tmp_path / "alias" / "img" / "in.png"),
    ]


def test_data_check_reports_outside_paths_under_their_reason_and_can_allow_them(
    tmp_path: Path, capsys
) -> None:
    root, _ = _layout(tmp_path)
    manifest = _manifest(root, ["img/in.png", "../secret.png"])
    report = check_dataset(manifest, label_set="emoset", workers=1)
    assert report.n_good == 1 and dict(report.skipped) == {"image_outside_root": 1}
    assert report.examples["image_outside_root"] == ["m.jsonl:2"]
    text = format_report(report)
    assert "image_outside_root" in text and "hint" in text and "--allow-outside-paths" in text
    assert check_dataset(manifest, label_set="emoset", workers=1, allow_outside_paths=True).n_good == 2

    assert check_command(str(manifest), label_set="emoset", workers=1, allow_outside_paths=True) == 0
    assert "usable   2 of 2" in capsys.readouterr().out

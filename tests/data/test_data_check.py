"""`check_dataset` counts usable samples per label and skipped items per reason, with locations."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

from cluster.data.check import check_dataset, format_report
from cluster.data.images import ImagePolicy
from cluster.embedded.synthetic import generate


def _png(size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (30, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def test_check_of_a_manifest_with_bad_rows_and_bad_images(tmp_path: Path) -> None:
    (tmp_path / "ok.png").write_bytes(_png())
    (tmp_path / "tiny.png").write_bytes(_png(12))
    (tmp_path / "zero.png").write_bytes(b"")
    rows = [
        {"images": ["ok.png"], "answer": label, "id": f"ok{i}"}
        for i, label in enumerate(["fear", "fear", "awe"])
    ]
    rows += [{"images": ["tiny.png"], "answer": "awe", "id": f"tiny{i}"} for i in range(7)]
    rows += [{"images": ["zero.png"], "answer": "awe", "id": "zero"}, {"images": ["ok.png"], "answer": "joy"}]
    lines = [json.dumps(row) for row in rows] + ["{broken"]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")

    report = check_dataset(tmp_path / "m.jsonl", label_set="emoset", max_examples=3)

    assert report.ok and report.n_good == 3
    assert report.per_label == {"fear": 2, "awe": 1}
    assert dict(report.skipped) == {"too_small": 7, "zero_byte": 1, "answer_not_in_labels": 1, "bad_json": 1}
    assert len(report.examples["too_small"]) == 3
    assert report.examples["bad_json"] == ["m.jsonl:13"]
    assert report.examples["zero_byte"] == [f"zero ({tmp_path / 'zero.png'})"]
    text = format_report(report)
    assert "usable   3 of 13" in text
    assert "too_small" in text and "m.jsonl:12" in text
    for label in ("amusement", "sadness"):  # every label of the set is listed, even at zero
        assert label in text


def test_check_reports_no_usable_sample(tmp_path: Path) -> None:
    for label in ("anger", "joy"):
        (tmp_path / label).mkdir()
        (tmp_path / label / "x.png").write_text("not an image")
    report = check_dataset(tmp_path)
    assert not report.ok
    assert dict(report.skipped) == {"not_an_image": 2}
    assert "NO USABLE SAMPLE" in format_report(report)


def test_check_of_the_synthetic_set_is_clean(tmp_path: Path) -> None:
    train, _ = generate(
        tmp_path, style="emotion6", n_train=24, n_test=0, seed=0, size=56, ambiguity=0.25, two_borrowed=0.5
    )
    report = check_dataset(train, policy=ImagePolicy(), workers=2)
    assert report.ok and report.n_good == 24 and not report.skipped
    assert set(report.per_label.values()) == {4}
    assert "skipped  none" in format_report(report)

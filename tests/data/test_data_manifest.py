"""Manifest loaders: JSONL, parquet and folder trees; malformed rows are skipped, counted and located."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cluster.data.manifest import Columns, load_dataset, validate_samples
from cluster.data.rows import ROW_REASONS
from rewards.prompts import LABEL_SETS, build_question

EMOSET = LABEL_SETS["emoset"]


def _png(colour: tuple[int, int, int] = (200, 40, 40), size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, "PNG")
    return buffer.getvalue()


def _write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_manifest_loads_easyr1_rows_and_resolves_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(_png())
    rows = [
        {
            "images": ["img/a.png"],
            "problem": "<image>Which emotion best describes the image?",
            "answer": "Fear",
        },
        {"images": "img/a.png", "answer": "\\boxed{awe}", "id": "x2", "response": "<step1>..</step1>"},
    ]
    manifest = _write_jsonl(tmp_path / "train.jsonl", [json.dumps(row) for row in rows])
    result = load_dataset(str(manifest), label_set="emoset", columns=Columns())
    assert not result.skipped
    first, second = result.samples
    assert first.image == str(tmp_path / "img" / "a.png")
    assert first.question == "Which emotion best describes the image?"
    assert first.answer == "fear" and first.labels == EMOSET and first.dataset == "emoset"
    assert first.sample_id == "train.jsonl:1"  # no id: the location
    assert second.answer == "awe" and second.sample_id == "x2" and second.response == "<step1>..</step1>"
    assert second.question == build_question(EMOSET)  # the paper's question when `problem` is absent


def test_jsonl_malformed_rows_are_skipped_counted_and_located(tmp_path: Path) -> None:
    good = {"images": ["a.png"], "answer": "joy"}
    lines = [
        json.dumps(good),  # 1 ok
        "{not json",  # 2 bad_json
        json.dumps({"images": ["a.png"]}),  # 3 missing_answer
        json.dumps({"images": ["a.png"], "answer": "boredom"}),  # 4 answer_not_in_labels
        json.dumps({"answer": "joy"}),  # 5 missing_image
        json.dumps({"images": [], "answer": "joy"}),  # 6 missing_image
        "",  # 7 blank: ignored
        json.dumps([1, 2]),  # 8 not_an_object
        json.dumps({"images": ["a.png"], "answer": "joy", "labels": "joy"}),  # 9 bad_labels
        json.dumps({"images": ["a.png"], "answer": "joy", "label_dist": [1, 2]}),  # 10 bad_label_dist
        json.dumps({**good, "id": "dup"}),  # 11 ok
        json.dumps({**good, "id": "dup"}),  # 12 duplicate_id
    ]
    path = _write_jsonl(tmp_path / "m.jsonl", lines)
    path.write_bytes(path.read_bytes() + b'{"answer": "\xff\xfe"}\n')  # 13 bad_json: not UTF-8
    result = load_dataset(path, label_set="emotion6")
    assert len(result.samples) == 2
    assert dict(result.skipped) == {
        "bad_json": 2,
        "missing_answer": 1,
        "answer_not_in_labels": 1,
        "missing_image": 2,
        "not_an_object": 1,
        "bad_labels": 1,
        "bad_label_dist": 1,
        "duplicate_id": 1,
    }
    assert ("m.jsonl:2", "bad_json") in result.errors
    assert ("m.jsonl:4", "answer_not_in_labels") in result.errors
    assert ("m.jsonl:12", "duplicate_id") in result.errors
    assert set(result.skipped) <= set(ROW_REASONS)


def test_rows_without_labels_need_a_label_set(tmp_path: Path) -> None:
    manifest = _write_jsonl(tmp_path / "m.jsonl", [json.dumps({"images": ["a.png"], "answer": "fear"})])
    assert dict(load_dataset(manifest).skipped) == {"missing_labels": 1}


def test_per_row_labels_and_label_dist_are_kept(tmp_path: Path) -> None:
    row = {"images": ["a.png"], "answer": "B", "labels": ["a", "b"], "label_dist": {"a": 1, "b": 3}}
    (sample,) = load_dataset(_write_jsonl(tmp_path / "m.jsonl", [json.dumps(row)])).samples
    assert sample.labels == ("a", "b") and sample.answer == "b"
    assert sample.label_dist == (0.25, 0.75)
    assert sample.question == build_question(("a", "b"))


def test_custom_column_names(tmp_path: Path) -> None:
    row = {"img": "/abs/x.jpg", "q": "Q?", "gold": "anger", "uid": 7}
    columns = Columns(image_key="img", problem_key="q", answer_key="gold", id_key="uid")
    (sample,) = load_dataset(  # an absolute path outside the manifest's folder: opted in
        _write_jsonl(tmp_path / "m.jsonl", [json.dumps(row)]),
        label_set="emoset",
        columns=columns,
        allow_outside_paths=True,
    ).samples
    assert (sample.image, sample.question, sample.answer, sample.sample_id) == (
        "/abs/x.jpg",
        "Q?",
        "anger",
        "7",
    )


def test_parquet_with_hf_image_structs_bytes_and_paths(tmp_path: Path) -> None:
    png = _png()
    table = pa.table(
        {
            "images": [
                [{"bytes": png, "path": "ignored.png"}],  # HF datasets' Image feature
                [{"bytes": None, "path": "rel/b.png"}],
                [],  # missing_image
                [{"bytes": png, "path": None}],
            ],
            "problem": ["<image>Q1", None, "Q3", "Q4"],
            "answer": ["sadness", "awe", "awe", "nope"],
        }
    )
    path = tmp_path / "data.parquet"
    pq.write_table(table, path)
    result = load_dataset(path, label_set="emoset")
    assert [s.answer for s in result.samples] == ["sadness", "awe"]
    assert result.samples[0].image == png and result.samples[0].question == "Q1"
    assert result.samples[1].image == str(tmp_path / "rel" / "b.png")
    assert result.errors == [
        ("data.parquet[2]", "missing_image"),
        ("data.parquet[3]", "answer_not_in_labels"),
    ]


def test_parquet_with_plain_bytes_column(tmp_path: Path) -> None:
    path = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"images": [_png()], "answer": ["joy"]}), path)
    (sample,) = load_dataset(path, label_set="emotion6").samples
    assert isinstance(sample.image, bytes)
    assert validate_samples([sample]).samples == [sample]


def _tree(root: Path, folders: dict[str, list[str]]) -> Path:
    for folder, names in folders.items():
        (root / folder).mkdir(parents=True)
        for name in names:
            (root / folder / name).write_bytes(_png())
    return root


def test_folder_tree_matching_a_known_label_set(tmp_path: Path) -> None:
    root = _tree(
        tmp_path / "e6",
        {"Anger": ["1.jpg"], "joy": ["2.png", "notes.txt", ".DS_Store"], "disgust": ["3.PNG"]},
    )
    (root / "README.md").write_text("hi")
    result = load_dataset(root)
    assert result.samples[0].labels == LABEL_SETS["emotion6"]  # {anger, disgust, joy} fits only emotion6
    assert sorted(s.answer for s in result.samples) == ["anger", "disgust", "joy"]
    assert result.samples[0].question == build_question(LABEL_SETS["emotion6"])
    assert dict(result.skipped) == {"unsupported_file": 1, "outside_label_folder": 1}
    assert ("joy/notes.txt", "unsupported_file") in result.errors


def test_folder_tree_with_unknown_names_uses_sorted_folders(tmp_path: Path) -> None:
    root = _tree(tmp_path / "art", {"zeal": ["1.png"], "calm": ["2.png"]})
    result = load_dataset(root)
    assert result.samples[0].labels == ("calm", "zeal")


def test_folder_tree_fitting_several_label_sets_uses_sorted_folders(tmp_path: Path) -> None:
    root = _tree(
        tmp_path / "t", {"fear": ["1.png"], "anger": ["2.png"], "joy": ["3.png"]}
    )  # emotion6 and webemo
    assert load_dataset(root).samples[0].labels == ("anger", "fear", "joy")


def test_folder_tree_with_configured_set_skips_other_folders(tmp_path: Path) -> None:
    root = _tree(tmp_path / "t", {"awe": ["1.png"], "joy": ["2.png"]})
    result = load_dataset(root, label_set="emoset")
    assert [s.answer for s in result.samples] == ["awe"]
    assert result.errors == [("joy/2.png", "unknown_label")]


def test_missing_path_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        load_dataset(tmp_path / "nowhere.jsonl")


def test_unknown_label_set_and_extension_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="label set"):
        load_dataset(tmp_path, label_set="emoset9")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ValueError, match="jsonl"):
        load_dataset(tmp_path / "x.csv")


def test_validate_samples_drops_bad_images_and_keeps_order(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    good.write_bytes(_png())
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "tiny.png").write_bytes(_png(size=10))
    rows = [
        {"images": [name], "answer": "awe", "id": name}
        for name in ("good.png", "missing.png", "empty.png", "tiny.png")
    ]
    rows += [{"images": ["good.png"], "answer": "fear", "id": f"copy{i}"} for i in range(300)]
    loaded = load_dataset(
        _write_jsonl(tmp_path / "m.jsonl", [json.dumps(row) for row in rows]), label_set="emoset"
    )
    checked = validate_samples(loaded.samples, workers=2)
    assert [s.sample_id for s in checked.samples] == ["good.png"] + [f"copy{i}" for i in range(300)]
    assert dict(checked.skipped) == {"missing": 1, "zero_byte": 1, "too_small": 1}
    assert ("tiny.png", "too_small") in checked.errors

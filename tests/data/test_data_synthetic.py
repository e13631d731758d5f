"""The synthetic affective-scene generator: determinism, balance, grounded responses, learnable cues."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cluster.data.manifest import load_dataset, validate_samples
from cluster.data.render import check_catalog
from cluster.data.scenes import CUES, STYLES, cue_label
from cluster.data.synthetic import generate, reference_corpus
from rewards.prompts import LABEL_SETS

SET_FORMAT = re.compile(
    r"<step1>.*</step1>.*<step2>.*</step2>.*<step3>.*</step3>.*\\boxed\{.*\}.*", re.DOTALL
)
GRPO_FORMAT = re.compile(r"<think>.*</think>.*\\boxed\{.*\}.*", re.DOTALL)
BOXED = re.compile(r"\\boxed\{([^}]*)\}")
STEP1 = re.compile(r"<step1>(.*)</step1>", re.DOTALL)


def _rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines()]


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module", params=["emoset", "emotion6"])
def dataset(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path, Path]:
    out = tmp_path_factory.mktemp(request.param)
    train, test = generate(out, style=request.param, n_train=50, n_test=20, seed=7, size=64)
    return request.param, train, test


def test_every_cue_of_every_style_has_a_painter() -> None:
    check_catalog()


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate(tmp_path / name, style="emoset", n_train=12, n_test=4, seed=seed, size=64)
    a, b, c = (_tree_bytes(tmp_path / name) for name in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert a["train.jsonl"] != c["train.jsonl"]
    assert sum(a[k] != c[k] for k in a if k.endswith(".png")) == len([k for k in a if k.endswith(".png")])


def test_generation_is_skipped_when_meta_matches_and_redone_when_not(tmp_path: Path) -> None:
    train, _ = generate(tmp_path, style="emoset", n_train=8, n_test=2, seed=1, size=64)
    stamp = train.stat().st_mtime_ns
    generate(tmp_path, style="emoset", n_train=8, n_test=2, seed=1, size=64)
    assert train.stat().st_mtime_ns == stamp
    generate(tmp_path, style="emoset", n_train=6, n_test=2, seed=1, size=64)
    assert len(_rows(train)) == 6
    assert len(list((tmp_path / "images").glob("*.png"))) == 8  # stale images of the old run removed
    assert json.loads((tmp_path / "meta.json").read_text())["n_train"] == 6


def test_invalid_parameters_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="size"):
        generate(tmp_path, n_train=1, n_test=1, seed=0, size=32)
    with pytest.raises(ValueError, match="ambiguity"):
        generate(tmp_path, n_train=1, n_test=1, seed=0, ambiguity=1.5)
    with pytest.raises(ValueError, match="style"):
        generate(tmp_path, style="webemo", n_train=1, n_test=1, seed=0)


def test_classes_are_balanced_over_the_style_label_set(dataset: tuple[str, Path, Path]) -> None:
    style, train, test = dataset
    for manifest, n in ((train, 50), (test, 20)):
        rows = _rows(manifest)
        counts = Counter(row["answer"] for row in rows)
        assert len(rows) == n
        assert set(counts) == set(LABEL_SETS[style])
        assert max(counts.values()) - min(counts.values()) <= 1
        assert all(tuple(row["labels"]) == LABEL_SETS[style] for row in rows)


def test_manifest_round_trips_through_the_loader_and_every_image_is_valid(
    dataset: tuple[str, Path, Path],
) -> None:
    style, train, _ = dataset
    loaded = load_dataset(train, label_set=style)
    assert not loaded.skipped and len(loaded.samples) == 50
    checked = validate_samples(loaded.samples, workers=2)
    assert len(checked.samples) == 50
    with Image.open(loaded.samples[0].image) as image:
        assert image.size == (64, 64) and image.mode == "RGB"
    assert all(
        s.response and s.label_dist and max(s.label_dist) == s.label_dist[s.labels.index(s.answer)]
        for s in checked.samples
    )


def test_responses_follow_the_formats_and_box_the_gold_label(dataset: tuple[str, Path, Path]) -> None:
    _, train, _ = dataset
    for row in _rows(train):
        assert SET_FORMAT.fullmatch(row["response"])
        assert GRPO_FORMAT.fullmatch(row["response_grpo"])
        assert BOXED.findall(row["response"]) == [row["answer"]]
        assert BOXED.findall(row["response_grpo"]) == [row["answer"]]
        assert 40 <= len(re.sub(r"<[^>]+>", " ", row["response"]).split()) <= 80


def test_step1_describes_exactly_the_cues_drawn(dataset: tuple[str, Path, Path]) -> None:
    style, train, _ = dataset
    rows = _rows(train)
    mixed = 0
    for row in rows:
        step1 = STEP1.search(row["response"]).group(1)
        assert set(row["cues"]) == set(STYLES[style].slots)
        for cue in row["cues"].values():
            assert CUES[cue].phrase in step1
        if max(row["label_dist"]) < 1:
            mixed += 1
            assert "most cues suggest " + row["answer"] in row["response"]
    assert 0 < mixed < len(rows)  # default ambiguity 0.25 mixes some scenes, not all


def test_every_canonical_cue_belongs_to_its_label_and_a_misplaced_cue_is_refused() -> None:
    for style in STYLES.values():
        for label, cues in style.canonical.items():
            assert [cue_label(style, slot, cue) for slot, cue in zip(style.slots, cues, strict=True)] == [
                label
            ] * 5
    with pytest.raises(ValueError, match="not to one label"):
        cue_label(STYLES["emoset"], "sky", "laughing")


def test_reference_corpus_matches_the_generated_responses(dataset: tuple[str, Path, Path]) -> None:
    style, train, _ = dataset
    corpus = reference_corpus(style, 50, seed=7)
    rows = _rows(train)
    assert corpus[0::2] == [row["response"] for row in rows]
    assert corpus[1::2] == [row["response_grpo"] for row in rows]


def test_emotion6_style_is_framed_and_emoset_style_is_not(tmp_path: Path) -> None:
    def border_spread(style: str) -> float:
        train, _ = generate(tmp_path / style, style=style, n_train=12, n_test=0, seed=2, size=112)
        spreads = []
        for row in _rows(train):
            pixels = np.asarray(Image.open(train.parent / row["images"][0]), dtype=np.float32)
            spreads.append(pixels[:, :6].reshape(-1, 3).std(axis=0).mean())  # left border strip
        return float(np.median(spreads))

    assert border_spread("emotion6") < 8 < border_spread("emoset")


def _features(manifest: Path) -> tuple[np.ndarray, list[str]]:
    rows = _rows(manifest)
    images = [
        Image.open(manifest.parent / row["images"][0]).convert("RGB").resize((8, 8), Image.Resampling.BOX)
        for row in rows
    ]
    return np.stack([np.asarray(image, np.float32).ravel() / 255 for image in images]), [
        row["answer"] for row in rows
    ]


def _centroid_accuracy(out: Path, ambiguity: float) -> float:
    train, test = generate(
        out, style="emoset", n_train=240, n_test=160, seed=11, size=56, ambiguity=ambiguity
    )
    x_train, y_train = _features(train)
    x_test, y_test = _features(test)
    labels = sorted(set(y_train))
    centroids = np.stack([x_train[np.array(y_train) == label].mean(axis=0) for label in labels])
    nearest = ((x_test[:, None, :] - centroids[None]) ** 2).sum(axis=-1).argmin(axis=1)
    return float(np.mean([labels[i] == y for i, y in zip(nearest, y_test, strict=True)]))


def test_cues_are_learnable_by_a_nearest_centroid_on_8x8_colours(tmp_path: Path) -> None:
    clear = _centroid_accuracy(tmp_path / "clear", ambiguity=0.0)
    mixed = _centroid_accuracy(tmp_path / "mixed", ambiguity=0.25)
    print(
        f"nearest-centroid accuracy on 8x8 colours: ambiguity 0 -> {clear:.3f}, 0.25 -> {mixed:.3f} (chance 0.125)"
    )
    assert mixed > 0.5  # far above chance
    assert mixed < 1.0  # mixed scenes are genuinely harder
    assert clear >= mixed

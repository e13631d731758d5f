"""`emo-r3 bench cues`: the phrase rule on hand-built tokens, and the metric on real models: a model
caption-trained on a few scenes reads their cues, a random initialisation reads none."""

import pytest

from benchmarks.cues import cue_recall, manifest_rows, phrase_read
from cluster.embedded.corpus import tiny_corpus
from cluster.embedded.synthetic import generate
from cluster.embedded.tiny_model import CAPTION_PROMPT, PretrainSpec, ensure_tiny_model

TEXT = "a red sky above warm sand"
# character spans of the tokens "a", " red", " sky", " above", " warm", " sand"
OFFSETS = [(0, 1), (1, 5), (5, 9), (9, 15), (15, 20), (20, 25)]


def test_a_phrase_is_read_only_when_every_token_it_overlaps_is_right():
    right = [True] * 6
    assert phrase_read(TEXT, "red sky", OFFSETS, right)
    assert not phrase_read(TEXT, "red sky", OFFSETS, [True, True, False, True, True, True])
    assert phrase_read(TEXT, "warm sand", OFFSETS, [False, False, False, False, True, True])
    assert not phrase_read(TEXT, "blue sky", OFFSETS, right)  # not in the text: not read


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    train, _ = generate(
        tmp_path_factory.mktemp("scenes"),
        style="emoset",
        n_train=8,
        n_test=0,
        seed=0,
        ambiguity=1.0,
        size=112,
        two_borrowed=0.5,
    )
    return manifest_rows(train)


def test_a_model_trained_on_the_scenes_reads_them_and_a_random_one_does_not(rows, tmp_path):
    from transformers import AutoModelForImageTextToText

    from learner.policy import load_processor

    captions = [(image, CAPTION_PROMPT, text) for image, text, *_ in rows]
    spec = PretrainSpec(epochs=40, batch_size=8, lr=3e-3, warmup_steps=5)
    results = {}
    for name, pairs in (("trained", captions), ("random", ())):
        path = ensure_tiny_model(tmp_path, tiny_corpus(), captions=pairs, pretrain=spec)
        model = AutoModelForImageTextToText.from_pretrained(path, dtype="float32").eval()
        results[name] = cue_recall(model, load_processor(path), rows)
        if name == "trained":  # the same scenes with the task's question and SET instruction around them
            results["trained under the SET prompt"] = cue_recall(model, load_processor(path), rows, "set")
    assert set(results["trained"]["slots"]) == {"sky", "ground", "face", "object", "accent"}
    assert results["trained"]["images"] == 8
    assert results["trained"]["mean"] >= 0.8, results["trained"]
    assert results["random"]["mean"] == 0.0 and results["random"]["all_read"] == 0.0
    under_set = results["trained under the SET prompt"]
    assert under_set["images"] == 8 and 0.0 <= under_set["all_read"] <= under_set["mean"] <= 1.0

"""The learner side of the collective weight transport, without a group: the checkpoint names and
tensors it streams (the module's own, no copies; ties once) and the buckets both sides cut alike."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForImageTextToText

from actors.collective import ALIGN_BYTES, bucket_ends, layout
from learner.transfer import WeightSender, checkpoint_tensors


def _model(model_path, **overrides):
    config = AutoConfig.from_pretrained(model_path, **overrides)
    return AutoModelForImageTextToText.from_config(config)


def test_checkpoint_tensors_are_save_pretrained_names_on_the_module_own_tensors(model_path, tmp_path):
    model = _model(model_path)
    named = checkpoint_tensors(model)
    model.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        saved = set(f.keys())
    assert [name for name, _ in named] and {name for name, _ in named} == saved
    own = {id(p) for p in model.parameters()}
    assert all(id(t) in own for _, t in named)  # streamed from the live module: nothing copied


def test_tied_weights_are_streamed_once(model_path):
    model = _model(model_path, tie_word_embeddings=True)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    names = [name for name, _ in checkpoint_tensors(model)]
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names


def test_layout_aligns_every_tensor_and_buckets_cover_all_in_order():
    shapes = [[3], [5, 7], [1], [1000], [2, 2]]
    dtypes = [torch.float32, torch.bfloat16, torch.int8, torch.float32, torch.float16]
    offsets, size = layout(shapes, dtypes)
    assert offsets == [0, 16, 96, 112, 4112] and size == 4120
    assert all(o % ALIGN_BYTES == 0 for o in offsets)
    assert bucket_ends(shapes, dtypes, 10**9) == [5]  # one bucket
    assert bucket_ends(shapes, dtypes, 100) == [3, 4, 5]  # 97 bytes, then a 4,000-byte tensor on its own
    assert bucket_ends([], [], 100) == []


def test_send_refuses_parameters_that_differ_from_the_groups_metadata():
    sender = WeightSender()
    a, b = torch.zeros(4), torch.zeros(2, 2)
    sender.describe([("a", a), ("b", b)], 1024)
    with pytest.raises(RuntimeError, match="differ"):
        sender.send([("a", a), ("b", torch.zeros(3))], sends=False)
    sender.send([("a", a), ("b", b)], sends=False)  # a rank that only joins the gathers
    with pytest.raises(RuntimeError, match="not formed"):
        sender.send([("a", a), ("b", b)])

"""The embedded tiny policy: built offline, loadable by transformers and vLLM, and both agree."""

import math
import os

# vLLM reads these at import: in-process engine (no spawned EngineCore), no CPU pinning.
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from cluster.embedded import tiny_model  # noqa: E402
from cluster.embedded.tiny_model import TAG_TOKENS, TinyModelSpec, ensure_tiny_model, model_digest  # noqa: E402
from rewards.prompts import LABEL_SETS, build_question, build_user_text  # noqa: E402

ALL_LABELS = sorted({label for labels in LABEL_SETS.values() for label in labels})
SCENES = {
    "amusement": (
        "a smiling face under a bright yellow sky",
        "people would feel cheerful",
        "positive and high",
    ),
    "anger": ("a clenched fist near a broken window", "people would feel furious", "negative and high"),
    "awe": ("a vast mountain under the stars", "people would feel small and amazed", "positive and high"),
    "contentment": ("a calm green meadow in soft light", "people would feel relaxed", "positive and low"),
    "disgust": ("rotten food on a dirty plate", "people would feel sick", "negative and low"),
    "excitement": ("fireworks over a cheering crowd", "people would feel thrilled", "positive and high"),
    "fear": ("a dark shadow in a narrow alley", "people would feel scared", "negative and high"),
    "sadness": ("a grey rainy street with an empty bench", "people would feel lonely", "negative and low"),
}
CORPUS = [
    f"<step1>{scene}.</step1><step2>{feeling}.</step2><step3>{valence} arousal.</step3>\\boxed{{{label}}}"
    for label, (scene, feeling, valence) in SCENES.items()
] + [f"<think>the image shows {scene}.</think>\\boxed{{{label}}}" for label, (scene, _, _) in SCENES.items()]
QUESTION = build_user_text(build_question(LABEL_SETS["emoset"]), "set")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return ensure_tiny_model(tmp_path_factory.mktemp("models"), CORPUS)


@pytest.fixture(scope="module")
def processor(model_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def hf_model(model_dir):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()


def image_prompt(processor, text: str = QUESTION) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def solid_image(rgb: tuple[int, int, int], side: int = 112) -> Image.Image:
    return Image.new("RGB", (side, side), rgb)


def test_second_ensure_reuses_the_built_folder(model_dir, monkeypatch):
    stamp = (model_dir / "model.safetensors").stat().st_mtime_ns

    def no_rebuild(*args, **kwargs):
        raise AssertionError("ensure_tiny_model rebuilt a folder that exists")

    monkeypatch.setattr(tiny_model, "build_tiny_model", no_rebuild)
    assert ensure_tiny_model(model_dir.parent, CORPUS) == model_dir
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in model_dir.parent.iterdir()] == [model_dir.name]  # no temp folder left behind


def test_build_is_deterministic(model_dir, tmp_path):
    tiny_model.build_tiny_model(tmp_path, CORPUS)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "processor_config.json"):
        assert (tmp_path / name).read_bytes() == (model_dir / name).read_bytes(), name


def test_folder_name_changes_with_spec_and_corpus():
    base = model_digest(CORPUS, TinyModelSpec())
    assert model_digest(CORPUS, TinyModelSpec()) == base
    assert model_digest(CORPUS, TinyModelSpec(seed=1)) != base
    assert model_digest(CORPUS + ["one more sentence."], TinyModelSpec()) != base


def test_spec_rejects_a_head_size_vllm_cpu_cannot_run():
    with pytest.raises(ValueError, match="hidden_size/num_heads"):
        TinyModelSpec(hidden_size=192, num_heads=8)  # head_dim 24
    with pytest.raises(ValueError, match="mrope_section"):
        TinyModelSpec(mrope_section=(8, 8, 8))


def test_config_has_qwen_token_ids_and_a_padded_vocab(model_dir, processor, hf_model):
    tok, cfg = processor.tokenizer, hf_model.config
    assert cfg.text_config.vocab_size % 64 == 0 and cfg.text_config.vocab_size >= len(tok)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert cfg.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert hf_model.dtype == torch.float32
    assert (model_dir / "chat_template.jinja").is_file() and (model_dir / "generation_config.json").is_file()


def test_chat_template_puts_16_image_tokens_for_a_112_pixel_image(processor, hf_model):
    text = image_prompt(processor)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == 1
    batch = processor(text=[text], images=[solid_image((200, 30, 30))], return_tensors="pt")
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8]]  # 64 patches of 14 px, merged 2x2
    assert (batch["input_ids"] == hf_model.config.image_token_id).sum().item() == 16


def test_hf_generate_with_an_image(processor, hf_model):
    batch = processor(
        text=[image_prompt(processor)], images=[solid_image((30, 30, 200))], return_tensors="pt"
    )
    out = hf_model.generate(**batch, max_new_tokens=8, do_sample=False)
    assert out.shape == (1, batch["input_ids"].shape[1] + 8)


def test_tags_and_labels_round_trip_through_the_tokenizer(processor):
    tok = processor.tokenizer
    for text in [*CORPUS, QUESTION, *TAG_TOKENS, *ALL_LABELS]:
        assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text
    for tag in TAG_TOKENS:
        assert len(tok(tag)["input_ids"]) == 1, tag
    boxed_open = tok("\\boxed{")["input_ids"]
    for label in ALL_LABELS:
        ids = tok(label)["input_ids"]
        assert len(ids) == 1, label  # every label is one token
        assert tok(f"\\boxed{{{label}}}")["input_ids"] == boxed_open + ids + tok("}")["input_ids"]
    wrapped = tok("<|im_start|>assistant\n<step1>x</step1><|im_end|>")["input_ids"]
    assert tok.decode(wrapped, skip_special_tokens=True) == "assistant\n<step1>x</step1>"


def hf_completion_logprobs(model, batch, completion_ids: list[int]) -> torch.Tensor:
    """Logprob of each completion token under the HF model, given the processor batch of its prompt."""
    completion = torch.tensor([completion_ids])
    input_ids = torch.cat([batch["input_ids"], completion], dim=1)
    # mm_token_type_ids drives the 3D (M-RoPE) positions of the image tokens; without it HF falls
    # back to 1D positions and the logprobs drift from vLLM's by ~1e-2.
    mm_token_type_ids = torch.cat([batch["mm_token_type_ids"], torch.zeros_like(completion)], dim=1)
    with torch.no_grad():
        logits = model(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            mm_token_type_ids=mm_token_type_ids,
            pixel_values=batch["pixel_values"],
            image_grid_thw=batch["image_grid_thw"],
        ).logits[0]
    prompt_len = batch["input_ids"].shape[1]
    logprobs = torch.log_softmax(logits[prompt_len - 1 : -1].float(), dim=-1)  # [T, V]
    return logprobs.gather(-1, completion[0][:, None])[:, 0]


@pytest.mark.slow
def test_vllm_generates_with_images_and_its_logprobs_match_hf(model_dir, processor, hf_model):
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=str(model_dir),
        dtype="float32",
        enforce_eager=True,
        distributed_executor_backend="uni",
        kv_cache_memory_bytes=64 * 2**20,
        max_model_len=1024,
        limit_mm_per_prompt={"image": 1, "video": 0},
        seed=0,
    )
    prompt = image_prompt(processor)
    images = [solid_image((200, 30, 30)), solid_image((30, 200, 30)), solid_image((30, 30, 200), side=84)]
    requests = [{"prompt": prompt, "multi_modal_data": {"image": image}} for image in images]
    outputs = llm.generate(
        requests, SamplingParams(temperature=1.0, max_tokens=16, logprobs=0), use_tqdm=False
    )
    for image, output in zip(images, outputs, strict=True):
        sample = output.outputs[0]
        batch = processor(text=[prompt], images=[image], return_tensors="pt")
        assert list(output.prompt_token_ids) == batch["input_ids"][0].tolist()
        assert len(sample.token_ids) > 0 and len(sample.logprobs) == len(sample.token_ids)
        assert sample.text == processor.tokenizer.decode(sample.token_ids, skip_special_tokens=True)
        sampler_logprobs = torch.tensor(
            [lp[t].logprob for lp, t in zip(sample.logprobs, sample.token_ids, strict=True)]
        )
        hf_logprobs = hf_completion_logprobs(hf_model, batch, list(sample.token_ids))
        assert torch.allclose(sampler_logprobs, hf_logprobs, atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
    """Eight solid-colour images, each described by its colour (a task a few updates can learn)."""
    folder = tmp_path_factory.mktemp("captions")
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (240, 230, 40)}
    pairs = []
    for i, (name, rgb) in enumerate(list(colours.items()) * 2):
        path = folder / f"{i}.png"
        solid_image(rgb).save(path)
        pairs.append((str(path), tiny_model.CAPTION_PROMPT, f"the image shows a {name} sky."))
    return pairs


def test_caption_pretraining_lowers_the_loss_and_is_part_of_the_build(captions, tmp_path, model_dir):
    import json

    from cluster.embedded.tiny_model import PRETRAIN_LOG, PretrainSpec

    spec = PretrainSpec(epochs=6, batch_size=8, lr=3e-3, warmup_steps=2)
    built = ensure_tiny_model(tmp_path, CORPUS, captions=captions, pretrain=spec)
    history = [json.loads(line) for line in (built / PRETRAIN_LOG).read_text().splitlines()]
    assert len(history) == 6  # 8 captions, batch 8: one update per epoch
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    # warmup over 2 updates, then cosine decay towards 0 at the end of the last epoch
    cosine = [0.5 * (1 + math.cos(math.pi * step / 6)) for step in range(6)]
    expected = [3e-3 * min(1.0, (step + 1) / 2) * cosine[step] for step in range(6)]
    assert [h["lr"] for h in history] == pytest.approx(expected)
    assert built.name != model_dir.name  # pretrained and random builds are different folders
    assert model_digest(CORPUS, TinyModelSpec(), captions, spec) != model_digest(
        CORPUS, TinyModelSpec(), captions, PretrainSpec(epochs=1)
    )
    assert model_digest(CORPUS, TinyModelSpec(), captions[:4], spec) != model_digest(
        CORPUS, TinyModelSpec(), captions, spec
    )
    # the pretrained weights differ from the random initialisation, and still load
    from transformers import AutoModelForImageTextToText

    trained = AutoModelForImageTextToText.from_pretrained(built, dtype=torch.float32)
    random_init = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    name, weight = next(iter(trained.state_dict().items()))
    assert not torch.equal(weight, random_init.state_dict()[name])


def test_the_folder_name_follows_the_pretraining_images_bytes_not_only_their_names(tmp_path):
    image = tmp_path / "0.png"
    solid_image((200, 30, 30)).save(image)
    captions = [(str(image), tiny_model.CAPTION_PROMPT, "the image shows a red sky.")]
    before = model_digest(CORPUS, TinyModelSpec(), captions)
    assert model_digest(CORPUS, TinyModelSpec(), captions) == before
    solid_image((30, 30, 200)).save(image)  # regenerated: same name, same caption, other pixels
    assert model_digest(CORPUS, TinyModelSpec(), captions) != before


def test_pretraining_steps_by_length_group_give_the_whole_batch_gradient(captions, model_dir):
    """A mini-batch mixing the short caption prompt and the long task prompt is run as one forward
    per length group (no row padded to the task prompt); the gradient is the one-forward gradient."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from cluster.data.images import load_image
    from cluster.embedded.pretrain import _accumulate
    from learner.batch import collate, completion_logits, length_groups
    from learner.grpo import token_logprobs
    from learner.sft import ANSWER, ExampleText, encode, nll_loss

    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    mixed = [(image, QUESTION if i % 2 else prompt, text) for i, (image, prompt, text) in enumerate(captions)]
    rollouts = [
        encode(ExampleText(ANSWER, prompt, image, text), processor, load_image).rollout(i)
        for i, (image, prompt, text) in enumerate(mixed)
    ]
    assert len(length_groups(rollouts, slack=16)) == 2

    batch = collate(rollouts, processor, load_image)
    logits = completion_logits(model(**batch.model_inputs()).logits, batch)
    whole, _ = nll_loss(token_logprobs(logits, batch.completion_ids), batch.mask, batch.num_tokens)
    whole.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    loss = _accumulate(model, processor, rollouts, load_image)
    assert loss == pytest.approx(float(whole.detach()), rel=1e-5)
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == expected.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)

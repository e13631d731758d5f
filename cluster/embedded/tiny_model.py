"""The embedded default policy for CPU machines: a tiny Qwen2.5-VL built offline, in code.

No hub download is possible on these machines, so `ensure_tiny_model` trains a byte-level BPE
tokenizer on the task's own text (the caller's corpus plus every prompt of rewards/prompts.py),
builds a randomly initialised `Qwen2_5_VLForConditionalGeneration` of `TinyModelSpec`'s size and
saves a folder that transformers (AutoProcessor, AutoModelForImageTextToText) and vLLM load like a
hub checkpoint. Constraints behind the numbers: docs/STACK.md §3 (vLLM CPU head sizes, kv heads,
mrope_section). Heavy libraries are imported inside the builders, so importing this module is
instant.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from cluster.embedded.pretrain import Caption, PretrainSpec, caption_pretrain
from rewards.prompts import (
    GRPO_INSTRUCTION,
    LABEL_SETS,
    NO_SPAN_PROMPT,
    SET_INSTRUCTION,
    build_question,
    build_user_text,
    coherence_prompt,
    consistency_prompt,
)

# Bump when the build code changes what lands on disk: cached folders are keyed by it.
BUILD_VERSION = 3  # 3: caption pretraining steps by length group (same gradient, other float rounding)

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
CAPTION_PROMPT = "Describe the image."  # the user text of caption pretraining (cluster.embedded.pretrain)
PRETRAIN_LOG = "pretrain_metrics.jsonl"
# Reasoning tags: whole tokens, but not special, so decode(skip_special_tokens=True) keeps them.
TAG_TOKENS = ("<step1>", "</step1>", "<step2>", "</step2>", "<step3>", "</step3>", "<think>", "</think>")
# Head sizes vLLM's CPU attention supports (docs/STACK.md §3).
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)

# The standard Qwen2-VL chat template (as shipped with Qwen/Qwen2-VL-*-Instruct).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinyModelSpec:
    """Sizes of the tiny policy. Defaults: ~5 M parameters, enough to learn an 8-class synthetic
    image-emotion task and ~60-token structured answers on 2 CPU cores (STACK.md's 668 k is a floor).
    """

    vocab_target: int = 2048  # BPE training cap incl. specials; training stops earlier once words are whole
    vocab_multiple: int = 64  # the model's vocab_size is len(tokenizer) rounded up to this
    hidden_size: int = 256  # text hidden; head_dim = hidden_size / num_heads must be a vLLM CPU size
    num_layers: int = 4
    num_heads: int = 8  # head_dim 32
    num_kv_heads: int = 4  # must divide num_heads
    intermediate_size: int = 768
    mrope_section: tuple[int, int, int] = (4, 6, 6)  # (t, h, w); sums to head_dim / 2
    rope_theta: float = 1e6
    max_position_embeddings: int = 2048  # vLLM's default max_model_len
    vision_depth: int = 4
    vision_hidden_size: int = 128
    vision_heads: int = 4  # vision head_dim 32
    vision_intermediate_size: int = 256
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    window_size: int = 112  # pixels; a 112x112 image is one attention window
    fullatt_block_indexes: tuple[int, ...] = (1, 3)
    min_pixels: int = 4 * 28 * 28  # smaller images are scaled up to >= 4 image tokens
    max_pixels: int = 16 * 28 * 28  # larger images are scaled down to <= 16 tokens (112x112)
    tie_word_embeddings: bool = False  # separate lm_head: more capacity, plain weight sync
    dtype: str = "float32"  # saved dtype; fp32 keeps vLLM and learner logprobs equal to ~1e-6 (STACK §5)
    seed: int = 0

    def __post_init__(self) -> None:
        head_dim, rest = divmod(self.hidden_size, self.num_heads)
        depth = self.vision_depth
        rules = [
            (rest == 0 and head_dim in VLLM_CPU_HEAD_SIZES, "hidden_size/num_heads a vLLM CPU head size"),
            (self.num_heads % self.num_kv_heads == 0, "num_heads divisible by num_kv_heads"),
            (2 * sum(self.mrope_section) == head_dim, f"sum(mrope_section) == head_dim/2 == {head_dim // 2}"),
            (self.vision_hidden_size % self.vision_heads == 0, "vision_hidden_size % vision_heads == 0"),
            (all(0 <= i < depth for i in self.fullatt_block_indexes), "fullatt_block_indexes < vision_depth"),
            (self.dtype in ("float32", "bfloat16"), "dtype 'float32' or 'bfloat16'"),
            (self.min_pixels <= self.max_pixels, "min_pixels <= max_pixels"),
        ]
        broken = [rule for ok, rule in rules if not ok]
        if broken:
            raise ValueError(f"invalid TinyModelSpec {self}: needs " + "; ".join(broken))


def model_digest(
    corpus: Sequence[str],
    spec: TinyModelSpec,
    captions: Sequence[Caption] = (),
    pretrain: PretrainSpec | None = None,
) -> str:
    """Short hash of everything that decides the built folder's content: the pretraining images by
    their bytes, so regenerated images with the same names and captions give a new build."""
    key = {"build": BUILD_VERSION, "spec": asdict(spec), "corpus": list(corpus)}
    if captions:
        key |= {
            "captions": [[_file_digest(image), prompt, text] for image, prompt, text in captions],
            "pretrain": asdict(pretrain or PretrainSpec()),
        }
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:12]


def _file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def ensure_tiny_model(
    cache_dir: Path,
    corpus: Sequence[str],
    spec: TinyModelSpec = TinyModelSpec(),
    captions: Sequence[Caption] = (),
    pretrain: PretrainSpec | None = None,
) -> Path:
    """The folder of the tiny model for (spec, corpus, captions) under cache_dir, built only if missing.

    With `captions` ((image path, user text, description) triples) the build ends with caption pretraining
    (cluster.embedded.pretrain); without, the weights stay at their random initialisation (fast, for tests
    of the plumbing). Builds into a temporary sibling and renames it into place, so a reader never
    sees a partial folder and two racing processes both end up with the same complete one.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / f"tiny-qwen2_5_vl-{model_digest(corpus, spec, captions, pretrain)}"
    if final.is_dir():
        return final
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=cache_dir))
    try:
        build_tiny_model(tmp, corpus, spec, captions, pretrain)
        tmp.chmod(0o755)
        try:
            os.rename(tmp, final)
        except OSError:  # another process renamed its build into place first
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def build_tiny_model(
    out_dir: Path,
    corpus: Sequence[str],
    spec: TinyModelSpec = TinyModelSpec(),
    captions: Sequence[Caption] = (),
    pretrain: PretrainSpec | None = None,
) -> None:
    """Write model (safetensors), tokenizer, processor, chat template and generation config to out_dir;
    with `captions`, the weights are caption-pretrained first (cluster.embedded.pretrain)."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = train_tokenizer(corpus, spec)
    config = _model_config(tokenizer, spec)
    with torch.random.fork_rng(devices=[]):  # deterministic weights, caller's RNG untouched
        torch.manual_seed(spec.seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
        if captions:
            history = caption_pretrain(
                model, _processor(tokenizer, spec), captions, pretrain or PretrainSpec()
            )
            (Path(out_dir) / PRETRAIN_LOG).write_text("".join(json.dumps(h) + "\n" for h in history))
        model = model.to(getattr(torch, spec.dtype))
    ids = tokenizer.convert_tokens_to_ids
    model.generation_config = GenerationConfig(
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=[ids("<|im_end|>"), ids("<|endoftext|>")],
        pad_token_id=ids("<|endoftext|>"),
    )
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    _processor(tokenizer, spec).save_pretrained(out_dir)  # + tokenizer files and chat_template.jinja


def train_tokenizer(corpus: Sequence[str], spec: TinyModelSpec = TinyModelSpec()):
    """Byte-level BPE on corpus + the prompt texts; Qwen-VL specials; the reasoning tags as whole tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_target,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_training_pieces(corpus), trainer)
    bpe.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in TAG_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<|im_end|>", "<|endoftext|>")],
        clean_up_tokenization_spaces=False,
        model_max_length=spec.max_position_embeddings,
        chat_template=CHAT_TEMPLATE,
    )


def prompt_texts() -> list[str]:
    """Every fixed text the policy reads or writes besides the corpus (rewards/prompts.py + chat)."""
    texts = [SET_INSTRUCTION, GRPO_INSTRUCTION, NO_SPAN_PROMPT, DEFAULT_SYSTEM_PROMPT, CAPTION_PROMPT]
    for labels in LABEL_SETS.values():
        question = build_question(labels)
        texts += [build_user_text(question, "set"), build_user_text(question, "grpo")]
        texts += [coherence_prompt("a", labels), consistency_prompt("a")]
        texts += [f"{label} {label}. \\boxed{{{label}}}" for label in labels]
    # chat roles, and the judge's answers to the reflection prompts
    return texts + [
        "system\nuser\nassistant\n",
        "yes no None Yes No",
        "\\boxed{yes} \\boxed{no} \\boxed{None}",
    ]


def _training_pieces(corpus: Sequence[str]) -> list[str]:
    """The BPE training text with specials and tags cut out (the trainer does not split on them).

    The prompt texts are repeated in proportion to the corpus so their words merge early too.
    """
    texts = list(corpus) + prompt_texts() * (1 + len(corpus) // 64)
    added = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS + TAG_TOKENS))
    return [piece for text in texts for piece in added.split(text) if piece]


def _model_config(tokenizer, spec: TinyModelSpec):
    from transformers import Qwen2_5_VLConfig

    ids = tokenizer.convert_tokens_to_ids
    text = dict(
        vocab_size=math.ceil(len(tokenizer) / spec.vocab_multiple) * spec.vocab_multiple,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": spec.rope_theta,
            "mrope_section": list(spec.mrope_section),
        },
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids("<|endoftext|>"),
        tie_word_embeddings=spec.tie_word_embeddings,
    )
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=_vision_config(spec),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=spec.tie_word_embeddings,
        dtype=spec.dtype,
    )


def _vision_config(spec: TinyModelSpec) -> dict:
    return dict(
        depth=spec.vision_depth,
        hidden_size=spec.vision_hidden_size,
        intermediate_size=spec.vision_intermediate_size,
        num_heads=spec.vision_heads,
        patch_size=spec.patch_size,
        spatial_merge_size=spec.spatial_merge_size,
        temporal_patch_size=spec.temporal_patch_size,
        window_size=spec.window_size,
        out_hidden_size=spec.hidden_size,  # the merger projects straight into the text stream
        fullatt_block_indexes=list(spec.fullatt_block_indexes),
    )


def _processor(tokenizer, spec: TinyModelSpec):
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    size = {"shortest_edge": spec.min_pixels, "longest_edge": spec.max_pixels}
    grid = dict(
        size=size,
        patch_size=spec.patch_size,
        merge_size=spec.spatial_merge_size,
        temporal_patch_size=spec.temporal_patch_size,
    )
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**grid),
        video_processor=Qwen2VLVideoProcessor(**grid),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )

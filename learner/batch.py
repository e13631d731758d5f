"""Train batches: rollouts → the tensors one forward/backward of the policy needs. Torch only.

The learner trains on exactly the token sequence the engine saw and sampled:
`prompt_token_ids + completion_token_ids`, with the image placeholders already expanded by the
engine. Nothing is re-tokenized; the model computes its mRoPE position ids itself from `input_ids`,
`mm_token_type_ids`, `image_grid_thw` and the (right-padding) `attention_mask`.

Convention for completion tensors: **completion-aligned [N, T]**, T = the longest completion of
the micro-batch. Column t of row i is completion token t of rollout i; it is predicted by the logits
at sequence position `P_i − 1 + t` (P_i = prompt length). The model returns logits only for the
last `num_logits` positions (`logits_to_keep`), and `logit_index` [N, T] selects, per row, the
kept position that predicts each completion token. Padding columns (t ≥ len(completion)) are False
in `mask` and 0 elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

import torch
from torch import Tensor

from actors.types import IMAGE_PAD, Group, ImageRef

VIDEO_PAD = "<|video_pad|>"
TEXT_TYPE, IMAGE_TYPE, VIDEO_TYPE = 0, 1, 2  # values of mm_token_type_ids (transformers' Qwen-VL)

T = TypeVar("T")


@dataclass(frozen=True)
class TrainRollout:
    """One rollout as the learner trains on it (see actors.types.Group for the engine's side)."""

    group_id: int
    prompt_token_ids: Sequence[int]  # exactly what the engine saw, image placeholders expanded
    completion_token_ids: Sequence[int]
    sampler_logprobs: Sequence[float]  # [T] one per completion token, from the engine
    advantage: float
    image: ImageRef | None
    policy_version: int

    def __post_init__(self) -> None:
        if len(self.completion_token_ids) == 0:
            raise ValueError(f"group {self.group_id}: empty completion")
        if len(self.sampler_logprobs) != len(self.completion_token_ids):
            raise ValueError(
                f"group {self.group_id}: {len(self.sampler_logprobs)} sampler logprobs for "
                f"{len(self.completion_token_ids)} completion tokens"
            )


def rollouts_from_group(
    group: Group, advantages: Sequence[float], image: ImageRef | None
) -> list[TrainRollout]:
    """The G TrainRollouts of one engine Group, with their advantages (one per completion)."""
    if len(advantages) != len(group.completions):
        raise ValueError(
            f"group {group.group_id}: {len(advantages)} advantages for {len(group.completions)} rollouts"
        )
    return [
        TrainRollout(
            group.group_id,
            tuple(group.prompt_token_ids),
            tuple(c.token_ids),
            tuple(c.sampler_logprobs),
            float(a),
            image,
            group.policy_version,
        )
        for c, a in zip(group.completions, advantages, strict=True)
    ]


@dataclass(frozen=True)
class SharedPrompts:
    """The distinct prompts of a micro-batch (a group's G rollouts share one), for the forward that
    runs each prompt once and its rows' completions on top of its key/value cache (learner.shared).

    Prompts are LEFT-padded to one length P, so every prompt's last token is at column P − 1 and
    every row's completion starts at cache position P.
    """

    input_ids: Tensor  # [U, P] long, left-padded with the pad id
    attention_mask: Tensor  # [U, P] long, 1 on real tokens
    mm_token_type_ids: Tensor  # [U, P] int, 0 text / 1 image
    pixel_values: Tensor | None  # [P', C·t·p·p] the images of the U prompts, in prompt order
    image_grid_thw: Tensor | None  # [I, 3] long, one row per image
    index: Tensor  # [N] long: row i's prompt is prompt index[i]


@dataclass(frozen=True)
class MicroBatch:
    """Tensors of one forward/backward; completion tensors are completion-aligned [N, T]."""

    input_ids: Tensor  # [N, L] long, right-padded with the pad id
    attention_mask: Tensor  # [N, L] long, 1 on real tokens
    mm_token_type_ids: Tensor  # [N, L] int, 0 text / 1 image
    num_logits: int  # logits_to_keep: the model returns logits for positions L − num_logits … L − 1
    logit_index: Tensor  # [N, T] long, index into the kept logits predicting completion token t
    completion_ids: Tensor  # [N, T] long, the sampled tokens (0 on padding)
    mask: Tensor  # [N, T] bool, True on completion tokens
    advantages: Tensor  # [N] float32
    sampler_logprobs: Tensor  # [N, T] float32 (0 on padding)
    pixel_values: Tensor | None  # [P, C·t·p·p] the processor's patches, all images in rollout order
    image_grid_thw: Tensor | None  # [I, 3] long, one row per image
    old_logprobs: Tensor | None = None  # [N, T] learner, before the iteration's updates
    ref_logprobs: Tensor | None = None  # [N, T] reference policy
    prompts: SharedPrompts | None = None  # distinct prompts for learner.shared (collate(share_prompts=True))

    @property
    def num_tokens(self) -> int:
        """Completion tokens that count for the loss."""
        return int(self.mask.sum())

    def to(self, device: torch.device | str) -> MicroBatch:
        """A copy with every tensor on `device`."""
        moved = _moved(self, device)
        if self.prompts is not None:
            moved["prompts"] = replace(self.prompts, **_moved(self.prompts, device))
        return replace(self, **moved)

    def model_inputs(self) -> dict[str, Any]:
        """Keyword arguments of the HF model's forward."""
        inputs: dict[str, Any] = {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "mm_token_type_ids": self.mm_token_type_ids,
            "logits_to_keep": self.num_logits,
            "use_cache": False,
        }
        if self.pixel_values is not None:
            inputs["pixel_values"] = self.pixel_values
            inputs["image_grid_thw"] = self.image_grid_thw
        return inputs


def _moved(obj: Any, device: torch.device | str) -> dict[str, Tensor]:
    return {
        f.name: getattr(obj, f.name).to(device)
        for f in fields(obj)
        if isinstance(getattr(obj, f.name), Tensor)
    }


def completion_logits(logits: Tensor, batch: MicroBatch) -> Tensor:
    """[N, T, V] the logits predicting each completion token, from the model's kept logits [N, K, V]."""
    return _completion_aligned(logits, batch)


def completion_hidden(hidden: Tensor, batch: MicroBatch) -> Tensor:
    """[N, T, H] the final hidden states predicting each completion token (lm_head's inputs for
    completion_logits' logits), from the model's hidden states at every position [N, L, H]."""
    return _completion_aligned(hidden[:, hidden.shape[1] - batch.num_logits :], batch)


def _completion_aligned(kept: Tensor, batch: MicroBatch) -> Tensor:
    """[N, T, D] the rows of `kept` [N, K, D] (the last K = num_logits positions) at logit_index."""
    return kept.gather(1, batch.logit_index[..., None].expand(-1, -1, kept.shape[-1]))


def without_tokens(batch: MicroBatch) -> MicroBatch:
    """`batch` with no token that counts (mask all False): the padding micro-batch of a rank whose
    rollouts are fewer than the micro-batches every rank runs (token_budget_split). Its forward and
    backward run, so ZeRO's collectives pair up, and add nothing to the loss, its gradient or a metric."""
    return replace(batch, mask=torch.zeros_like(batch.mask))


def num_completion_tokens(rollouts: Sequence[TrainRollout]) -> int:
    """Tokens of a (mini-)batch that count for the loss: the global_num_tokens of a mini-batch."""
    return sum(len(r.completion_token_ids) for r in rollouts)


def split(items: Sequence[T], n: int) -> list[list[T]]:
    """`items` in n contiguous parts whose sizes differ by at most one (earlier parts larger).

    Used for mini-batches (n = updates per iteration), rank shards (n = ranks) and micro-batches
    (n = micro-batches per step). Every part is non-empty: fewer items than parts is an error.
    """
    if n < 1:
        raise ValueError(f"split into n={n} parts: n must be >= 1")
    if len(items) < n:
        raise ValueError(f"cannot split {len(items)} items into {n} non-empty parts")
    size, extra = divmod(len(items), n)
    bounds = [i * size + min(i, extra) for i in range(n + 1)]
    return [list(items[bounds[i] : bounds[i + 1]]) for i in range(n)]


def length_groups(rollouts: Sequence[TrainRollout], slack: int) -> list[list[TrainRollout]]:
    """`rollouts` by sequence length (prompt + completion), cut into parts whose rows differ by at
    most `slack` tokens: collated apart, a short row no longer pays for the longest one's padding.

    For a batch that mixes prompt templates of very different lengths (caption pretraining: 75, 146
    and 196 tokens); the parts' summed token-mean losses equal the whole batch's when each is
    normalised by the batch's token count (learner.grpo.token_mean_loss).
    """
    if slack < 0:
        raise ValueError(f"slack={slack}: must be >= 0")
    parts: list[list[TrainRollout]] = []
    for rollout in sorted(rollouts, key=_length):
        if not parts or _length(rollout) - _length(parts[-1][0]) > slack:
            parts.append([])
        parts[-1].append(rollout)
    return parts


def _length(rollout: TrainRollout) -> int:
    return len(rollout.prompt_token_ids) + len(rollout.completion_token_ids)


def micro_batches_per_step(mini_batch_size: int, num_ranks: int, micro_batch_size: int) -> int:
    """Micro-batches each rank runs per optimizer step: ceil(largest rank shard / micro_batch_size).

    Every rank must run the same number (DeepSpeed's gradient reduction and ZeRO-3 gathers are
    collectives), so the driver computes it once and every rank splits its shard into this many.
    """
    shard = -(-mini_batch_size // num_ranks)
    return -(-shard // micro_batch_size)


def padded_tokens(rollouts: Sequence[TrainRollout]) -> int:
    """Token positions of the rollouts collated into one micro-batch: rows × longest sequence."""
    return len(rollouts) * max((_length(r) for r in rollouts), default=0)


def token_budget_split(
    rollouts: Sequence[TrainRollout], max_tokens: int, min_parts: int = 1
) -> list[list[TrainRollout]]:
    """`rollouts` in contiguous parts (micro-batches) of at most `max_tokens` padded tokens each
    (`padded_tokens`; a longer rollout is a part alone), as few as the budget allows, then as many as
    `min_parts`: the part with the most padded tokens is halved (`split`) until there are.

    Deterministic, and order-keeping so that a group's rollouts stay together (learner.shared runs each
    distinct prompt once per micro-batch). Every rank must run the same number of micro-batches (ZeRO's
    collectives), so a rank cuts its shard with `min_parts` = the largest count any rank needs. Fewer
    rollouts than `min_parts` is an error: halving cannot make an empty part.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens}: must be >= 1")
    if len(rollouts) < min_parts:
        raise ValueError(f"cannot cut {len(rollouts)} rollouts into {min_parts} non-empty micro-batches")
    parts: list[list[TrainRollout]] = []
    for rollout in rollouts:
        if parts and padded_tokens([*parts[-1], rollout]) <= max_tokens:
            parts[-1].append(rollout)
        else:
            parts.append([rollout])
    while len(parts) < min_parts:
        largest = max((p for p in parts if len(p) > 1), key=padded_tokens)  # the first of equals
        at = next(i for i, p in enumerate(parts) if p is largest)
        parts[at : at + 1] = split(largest, 2)
    return parts


def collate(
    rollouts: Sequence[TrainRollout],
    processor: Any,
    image_loader: Callable[[ImageRef], Any],
    *,
    share_prompts: bool = False,
) -> MicroBatch:
    """One MicroBatch from rollouts, with the processor's image tensors; checks image-token counts.

    `share_prompts`: also collate the distinct prompts (`MicroBatch.prompts`) for learner.shared's
    forward, which runs each prompt once. Raises ValueError naming the group when a prompt's
    `<|image_pad|>` count does not match its image's grid (LESSONS.md: "image features and image
    tokens do not match").
    """
    if not rollouts:
        raise ValueError("collate needs at least one rollout")
    tokenizer = processor.tokenizer
    image_pad = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    video_pad = tokenizer.convert_tokens_to_ids(VIDEO_PAD)
    pad_id = int(tokenizer.pad_token_id)
    processed = _process_images(rollouts, processor.image_processor, image_loader)
    pixel_values, grid = _images(rollouts, processed)
    merge = int(processor.image_processor.merge_size)
    _check_image_tokens(rollouts, grid, image_pad, video_pad, merge)
    text = _text_tensors(rollouts, pad_id, image_pad)
    prompts = _shared_prompts(rollouts, processed, pad_id, image_pad) if share_prompts else None
    return MicroBatch(**text, pixel_values=pixel_values, image_grid_thw=grid, prompts=prompts)


def _shared_prompts(
    rollouts: Sequence[TrainRollout], processed: ProcessedImages, pad_id: int, image_pad: int
) -> SharedPrompts:
    """The distinct (prompt ids, image) pairs in first-seen order, left-padded; row → prompt index."""
    where: dict[tuple[tuple[int, ...], ImageRef | None], int] = {}
    firsts: list[TrainRollout] = []  # one row per distinct prompt
    index = []
    for r in rollouts:
        key = (tuple(r.prompt_token_ids), r.image)
        if key not in where:
            where[key] = len(firsts)
            firsts.append(r)
        index.append(where[key])
    pixel_values, grid = _images(firsts, processed)
    width = max(len(r.prompt_token_ids) for r in firsts)
    input_ids = torch.full((len(firsts), width), pad_id, dtype=torch.long)  # [U, P]
    attention_mask = torch.zeros((len(firsts), width), dtype=torch.long)  # [U, P]
    for u, r in enumerate(firsts):
        input_ids[u, width - len(r.prompt_token_ids) :] = torch.tensor(r.prompt_token_ids, dtype=torch.long)
        attention_mask[u, width - len(r.prompt_token_ids) :] = 1
    return SharedPrompts(
        input_ids=input_ids,
        attention_mask=attention_mask,
        mm_token_type_ids=(input_ids == image_pad).to(torch.int32) * IMAGE_TYPE,
        pixel_values=pixel_values,
        image_grid_thw=grid,
        index=torch.tensor(index, dtype=torch.long),
    )


# Each distinct image of a micro-batch: its processor patches [P_u, D] and grid [3].
ProcessedImages = dict[ImageRef, tuple[Tensor, Tensor]]


def _process_images(
    rollouts: Sequence[TrainRollout], image_processor: Any, image_loader: Callable[[ImageRef], Any]
) -> ProcessedImages:
    """Each distinct image of the rollouts decoded and processed once (a group shares its prompt's image)."""
    unique = list(dict.fromkeys(r.image for r in rollouts if r.image is not None))
    if not unique:
        return {}
    out = image_processor(images=[image_loader(ref) for ref in unique], return_tensors="pt")
    grid = out["image_grid_thw"]  # [U, 3]
    patches = torch.split(out["pixel_values"], grid.prod(-1).tolist())  # U × [P_u, D]
    return {ref: (patches[i], grid[i]) for i, ref in enumerate(unique)}


def _images(
    rollouts: Sequence[TrainRollout], processed: ProcessedImages
) -> tuple[Tensor | None, Tensor | None]:
    """pixel_values [P, D] and image_grid_thw [I, 3] for the rollouts with an image, in order."""
    refs = [r.image for r in rollouts if r.image is not None]
    if not refs:
        return None, None
    return torch.cat([processed[ref][0] for ref in refs]), torch.stack([processed[ref][1] for ref in refs])


def _check_image_tokens(
    rollouts: Sequence[TrainRollout], grid: Tensor | None, image_pad: int, video_pad: int, merge: int
) -> None:
    """Each prompt holds exactly its image's placeholder count; no completion holds any."""
    expected = iter((grid.prod(-1) // merge**2).tolist() if grid is not None else [])
    for r in rollouts:
        want = next(expected) if r.image is not None else 0
        have = sum(1 for t in r.prompt_token_ids if t == image_pad)
        if have != want:
            raise ValueError(
                f"group {r.group_id}: image features and image tokens do not match: the prompt has {have} "
                f"{IMAGE_PAD} tokens, its image needs {want}; build prompt ids only in the engine, never "
                "truncate a prompt"
            )
        if (
            any(t in (image_pad, video_pad) for t in r.completion_token_ids)
            or video_pad in r.prompt_token_ids
        ):
            raise ValueError(
                f"group {r.group_id}: vision placeholder token in the completion or a video token"
            )


def _text_tensors(rollouts: Sequence[TrainRollout], pad_id: int, image_pad: int) -> dict[str, Any]:
    """Right-padded sequence tensors and completion-aligned [N, T] tensors (module docstring)."""
    n = len(rollouts)
    prompt_lens = [len(r.prompt_token_ids) for r in rollouts]
    completion_lens = [len(r.completion_token_ids) for r in rollouts]
    seq_len = max(p + c for p, c in zip(prompt_lens, completion_lens, strict=True))
    width = max(completion_lens)
    input_ids = torch.full((n, seq_len), pad_id, dtype=torch.long)  # [N, L]
    attention_mask = torch.zeros((n, seq_len), dtype=torch.long)  # [N, L]
    completion_ids = torch.zeros((n, width), dtype=torch.long)  # [N, T]
    sampler = torch.zeros((n, width), dtype=torch.float32)  # [N, T]
    for i, r in enumerate(rollouts):
        ids = list(r.prompt_token_ids) + list(r.completion_token_ids)
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, : len(ids)] = 1
        completion_ids[i, : completion_lens[i]] = torch.tensor(r.completion_token_ids, dtype=torch.long)
        sampler[i, : completion_lens[i]] = torch.tensor(r.sampler_logprobs, dtype=torch.float32)
    first_logit = min(prompt_lens) - 1  # earliest position whose logits predict a completion token
    columns = torch.arange(width)  # [T]
    mask = columns[None, :] < torch.tensor(completion_lens)[:, None]  # [N, T]
    position = torch.tensor(prompt_lens)[:, None] - 1 + columns[None, :] - first_logit  # [N, T]
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "mm_token_type_ids": (input_ids == image_pad).to(torch.int32) * IMAGE_TYPE,  # [N, L]
        "num_logits": seq_len - first_logit,
        "logit_index": torch.where(mask, position, 0),
        "completion_ids": completion_ids,
        "mask": mask,
        "advantages": torch.tensor([r.advantage for r in rollouts], dtype=torch.float32),  # [N]
        "sampler_logprobs": sampler,
    }

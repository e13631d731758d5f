"""The `collective` weight transport: what the learner and the engines share (the bucket layout, the
backend's name and its registration). The engine side is actors.collective_engine, a backend of
vLLM's weight-transfer API; the learner side is learner.transfer.

Learner rank 0 and the worker of every engine that follows the policy join one `torch.distributed`
group of their own (gloo on CPU, NCCL on CUDA, the same code), apart from the learner's DeepSpeed group
and vLLM's own: vLLM's `stateless_init_torch_distributed_process_group`, rank 0's store on a socket the
learner bound to the rendezvous address. An update is the parameters' names, dtypes and shapes (through
vLLM's RPC, msgpack-safe) and then the bytes, broadcast bucket after bucket; both sides cut the buckets
and place the tensors in them with the one `layout` below, so the engine holds about one bucket beyond
its model. Each bucket's tensors go to the model's `load_weights` under vLLM's layerwise reload, as the
packed path does (actors.weight_sync).

vLLM builds the backend by name inside the engine process, where it must be registered: vLLM imports
this module there through the worker extension (actors.weight_sync) and through the project's
`vllm.general_plugins` entry point (`register`, idempotent).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import suppress

import torch

BACKEND = "emo_r3_collective"
ALIGN_BYTES = 16  # every tensor starts at a multiple of this in a bucket: `view(dtype)` needs it


def layout(shapes: Sequence[Sequence[int]], dtypes: Sequence[torch.dtype]) -> tuple[list[int], int]:
    """Byte offset of each tensor in a bucket holding them in order, and the bucket's size."""
    offsets, end = [], 0
    for shape, dtype in zip(shapes, dtypes, strict=True):
        end = -(-end // ALIGN_BYTES) * ALIGN_BYTES
        offsets.append(end)
        end += math.prod(shape) * dtype.itemsize
    return offsets, end


def bucket_ends(
    shapes: Sequence[Sequence[int]], dtypes: Sequence[torch.dtype], bucket_bytes: int
) -> list[int]:
    """Exclusive end index of each bucket: tensors in order until one more would pass `bucket_bytes`
    (a tensor larger than that is a bucket of its own)."""
    ends, start = [], 0
    for i in range(1, len(shapes) + 1):
        if i > start + 1 and layout(shapes[start:i], dtypes[start:i])[1] > bucket_bytes:
            ends.append(i - 1)
            start = i - 1
    if shapes:
        ends.append(len(shapes))
    return ends


def bucket_spans(ends: Sequence[int]) -> list[tuple[int, int]]:
    """(start, end) tensor indices of each bucket, from `bucket_ends`."""
    return list(zip([0, *ends[:-1]], ends, strict=True))


def bucket_sizes(metadata: dict) -> list[int]:
    """The bytes of each bucket an update with this metadata (learner.transfer's `describe`) sends."""
    dtypes = [getattr(torch, name) for name in metadata["dtype_names"]]
    return [
        layout(metadata["shapes"][start:end], dtypes[start:end])[1]
        for start, end in bucket_spans(metadata["bucket_ends"])
    ]


def register() -> None:
    """Register the backend with vLLM's weight-transfer factory in this process (again: nothing)."""
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    with suppress(ValueError):  # already registered here
        WeightTransferEngineFactory.register_engine(
            BACKEND, "actors.collective_engine", "CollectiveWeightTransferEngine"
        )

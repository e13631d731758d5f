"""Weights into a running vLLM engine across its process boundary.

vLLM's engine core runs in its own process (the mode every GPU user gets, and the default here on CPU
too), so what reaches the model must be serialisable: an iterator of tensors is not, and tensors
nested in lists arrive as lists (docs/STACK.md §5). The engine packs each tensor as (name, dtype,
shape, raw bytes) and calls `load_packed` on `WeightSyncExtension`, which vLLM mixes into its worker
in the engine process (`LLM(worker_extension_cls=WEIGHT_SYNC_EXTENSION)`); it unpacks them without a
copy and reloads them in place with vLLM's layerwise reload. Pure torch otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

WEIGHT_SYNC_EXTENSION = f"{__name__}.WeightSyncExtension"
Packed = tuple[str, str, list[int], bytes]  # name, dtype name, shape, the tensor's bytes


def pack(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> list[Packed]:
    """Each tensor as (name, dtype, shape, bytes): what vLLM's RPC carries intact."""
    return [
        (
            name,
            str(t.dtype).removeprefix("torch."),
            list(t.shape),
            t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes(),
        )
        for name, t in named_tensors
    ]


def unpack(packed: Iterable[Packed]) -> Iterator[tuple[str, torch.Tensor]]:
    for name, dtype, shape, data in packed:
        yield (
            name,
            torch.frombuffer(bytearray(data), dtype=torch.uint8).view(getattr(torch, dtype)).reshape(shape),
        )


def tensor_checksums(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> dict[str, float]:
    """Per tensor, the float64 sum of its values: equal weights give equal checksums."""
    return {name: float(t.detach().double().sum()) for name, t in named_tensors}


def _register_collective_backend() -> None:
    """vLLM imports this module in its engine process (the worker extension) before it loads the
    model, which is when it builds a weight-transfer backend by name: register ours there."""
    from actors.collective import register

    register()


_register_collective_backend()


class WeightSyncExtension:
    """Mixed into vLLM's worker class in the engine process; methods are called with collective_rpc."""

    def load_packed(self: Any, packed: list[Packed]) -> int:
        """Reload the packed tensors (checkpoint names) in place; returns how many."""
        self.reload_weights(weights_iterator=unpack(packed), is_checkpoint_format=True)
        return len(packed)

    def weight_checksums(self: Any) -> dict[str, float]:
        """The engine's own parameters' checksums (vLLM's names; its layout may fuse checkpoint tensors)."""
        return tensor_checksums(self.model_runner.model.named_parameters())

    def process_memory(self: Any, reset_peak: bool = False) -> dict[str, float]:
        """The engine process's resident and peak MiB (actors.memory)."""
        from actors.memory import process_memory_mib

        return process_memory_mib(reset_peak)

    def receive_raw(self: Any, bucket_bytes: list[int]) -> int:
        """Receive buckets of these sizes from the collective transport's group and drop them: the
        floor a push is measured against (`emo-r3 bench sync`). Returns the bytes received."""
        group = self.weight_transfer_engine.group
        for size in bucket_bytes:
            bucket = torch.empty(size, dtype=torch.uint8, device=self.weight_transfer_engine.bucket_device)
            torch.distributed.broadcast(bucket, group=group, group_src=0)
        return sum(bucket_bytes)

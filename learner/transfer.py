"""The `collective` weight transport, learner side (actors.collective has the protocol).

Rank 0 binds a socket on the rendezvous address (loopback when every member shares a node: nothing
listens beyond it), joins the group with every policy-following engine as rank 0, and then, per push,
broadcasts the parameters in buckets of `bucket_bytes`, one bucket after another, straight from the
live module: no copy of the model is made. Under ZeRO-3 every rank gathers the parameters of one
bucket at a time (a collective: every rank walks the same buckets) and releases them before the next,
so rank 0's extra memory is the gathered bucket and the flat bucket it sends: about two buckets.
Under ZeRO 0-2 every rank holds the full parameters and only rank 0 does anything.

Names are the checkpoint's (what `save_pretrained` writes and vLLM's `load_weights` takes):
transformers' conversion from module names back to checkpoint names, which for the models served
here is a renaming of the same tensors (`checkpoint_tensors` refuses anything else).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext, suppress
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor

from actors.collective import bucket_ends, bucket_spans, layout

# The parameters of one bucket, full on every rank while the context is open (ZeRO-3: gathered).
Gather = Callable[[Sequence[Tensor]], AbstractContextManager]


def checkpoint_tensors(module: Any) -> list[tuple[str, Tensor]]:
    """(checkpoint name, the module's own tensor) for each tensor `save_pretrained` writes, in its
    order; tied copies once. No tensor is copied (under ZeRO-3 the parameters stay partitioned)."""
    from transformers.core_model_loading import revert_weight_conversion
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    # transformers finds tied weights by storage and converts names on a state dict: run both on
    # one small stand-in per distinct tensor (a ZeRO-3 parameter's storage is empty), then map back
    tensors = dict(module.named_parameters(remove_duplicate=False)) | dict(module.named_buffers())
    stand_ins = {id(t): torch.empty(1) for t in tensors.values()}
    own = {id(stand_ins[id(t)]): t for t in tensors.values()}
    state = {name: stand_ins[id(tensors[name])] for name in module.state_dict(keep_vars=True)}
    try:
        named = revert_weight_conversion(module, remove_tied_weights_from_state_dict(state, module))
        return [(name, own[id(stand_in)]) for name, stand_in in named.items()]
    except (KeyError, RuntimeError, ValueError) as e:
        raise ValueError(
            f"{type(module).__name__}'s checkpoint layout is not a renaming of its parameters ({e!r}); "
            "push its weights with cluster.weight_transport=object_store"
        ) from e


def full_shape(tensor: Tensor) -> list[int]:
    """The tensor's shape; a ZeRO-3 partitioned parameter's full shape."""
    return list(getattr(tensor, "ds_shape", tensor.shape))


def zero3_gather(tensors: Sequence[Tensor]) -> AbstractContextManager:
    """ZeRO-3: gather `tensors`' partitions on every rank for the context's duration (a collective)."""
    import deepspeed

    return deepspeed.zero.GatheredParameters([t for t in tensors if hasattr(t, "ds_id")])


def no_gather(tensors: Sequence[Tensor]) -> AbstractContextManager:
    return nullcontext()


class WeightSender:
    """One rank's end of the weight group. Rank 0 owns the socket and the group and broadcasts; the
    other ranks only join the gathers (`send` with `sends=False`)."""

    def __init__(self, gather: Gather = no_gather) -> None:
        self.gather = gather
        self.socket: socket.socket | None = None
        self.address = ""
        self.group = None
        self.device = torch.device("cpu")  # where buckets are built: the group's backend's device
        self.metadata: dict | None = None

    def open(self, address: str) -> int:
        """Bind the group's store socket on `address` (a free port); returns the port."""
        self.close()
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.socket = socket.create_server((address, 0), family=family)
        self.address = address
        return self.socket.getsockname()[1]

    def join(self, world_size: int, dist_backend: str, timeout_s: float) -> None:
        """Form the group as its rank 0 (blocks until every engine joined)."""
        from vllm.distributed.utils import stateless_init_torch_distributed_process_group

        if self.socket is None:
            raise RuntimeError("open the weight group's socket first")
        port = self.socket.getsockname()[1]
        self.device = (
            torch.device("cuda", torch.cuda.current_device())
            if dist_backend == "nccl"
            else torch.device("cpu")
        )
        listen, self.socket = self.socket, None  # the store takes it over
        self.group = stateless_init_torch_distributed_process_group(
            self.address,
            port,
            0,
            world_size,
            backend=dist_backend,
            listen_socket=listen,
            timeout=timedelta(seconds=timeout_s),
        )

    def describe(self, named: Sequence[tuple[str, Tensor]], bucket_bytes: int) -> dict:
        """An update's metadata (names, dtypes, shapes, bucket ends): what the engines are told, and
        how `send` cuts the buckets. Every rank computes the same."""
        shapes = [full_shape(t) for _, t in named]
        dtypes = [t.dtype for _, t in named]
        self.metadata = {
            "names": [name for name, _ in named],
            "dtype_names": [str(d).removeprefix("torch.") for d in dtypes],
            "shapes": shapes,
            "bucket_ends": bucket_ends(shapes, dtypes, bucket_bytes),
        }
        return self.metadata

    def send(self, named: Sequence[tuple[str, Tensor]], sends: bool = True) -> None:
        """Broadcast `named` bucket by bucket as `describe` cut it (rank 0: `sends`); every rank joins
        each bucket's gather. A bucket is packed while the previous one is on the wire: two buckets
        at most on rank 0 (and, under ZeRO-3, the gathered parameters of the one being packed)."""
        meta = self.metadata
        if meta is None or (sends and self.group is None):
            raise RuntimeError("the weight group is not formed")
        if [name for name, _ in named] != meta["names"] or [full_shape(t) for _, t in named] != meta[
            "shapes"
        ]:
            raise RuntimeError("the learner's parameters differ from the weight group's metadata")
        tensors, in_flight = [t for _, t in named], None
        for start, end in bucket_spans(meta["bucket_ends"]):
            part = tensors[start:end]
            with self.gather(part):
                bucket = self._pack(part) if sends else None
            if bucket is not None:
                if in_flight is not None:
                    in_flight.wait()
                in_flight = torch.distributed.broadcast(bucket, group=self.group, group_src=0, async_op=True)
        if in_flight is not None:
            in_flight.wait()
        if sends and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _pack(self, part: Sequence[Tensor]) -> Tensor:
        """One flat bucket of `part` (full tensors), placed as actors.collective.layout says."""
        offsets, size = layout([t.shape for t in part], [t.dtype for t in part])
        bucket = torch.empty(size, dtype=torch.uint8, device=self.device)
        for tensor, offset in zip(part, offsets, strict=True):
            flat = tensor.detach().contiguous().view(-1).view(torch.uint8)
            bucket[offset : offset + flat.numel()].copy_(flat)
        return bucket

    def broadcast_raw(self, bucket_bytes: Sequence[int]) -> None:
        """Buckets of these sizes, uninitialised, to the group: the floor of a push (`emo-r3 bench
        sync`: the same bytes over the same group, no gathering, packing or loading)."""
        if self.group is None:
            raise RuntimeError("the weight group is not formed")
        for size in bucket_bytes:
            torch.distributed.broadcast(
                torch.empty(size, dtype=torch.uint8, device=self.device), group=self.group, group_src=0
            )
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def close(self) -> None:
        group, self.group = self.group, None
        if group is not None:
            with suppress(Exception):  # a dead peer must not block the learner
                group.abort()
        if self.socket is not None:
            self.socket.close()
            self.socket = None

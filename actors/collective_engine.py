"""The `collective` weight transport's backend in vLLM's engine process (actors.collective has the
protocol). vLLM builds it by name at model load, in the process that holds the model."""

from __future__ import annotations

import math
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import timedelta

import torch
from vllm.distributed.utils import stateless_init_torch_distributed_process_group
from vllm.distributed.weight_transfer.base import (
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)

from actors.collective import bucket_spans, layout


@dataclass
class CollectiveInitInfo(WeightTransferInitInfo):
    master_address: str
    master_port: int
    rank_offset: int  # the rank of this engine's first worker in the group; the learner is 0
    world_size: int
    dist_backend: str = "gloo"
    timeout_s: float = 300.0


@dataclass
class CollectiveUpdateInfo(WeightTransferUpdateInfo):
    names: list[str] = field(default_factory=list)
    dtype_names: list[str] = field(default_factory=list)
    shapes: list[list[int]] = field(default_factory=list)
    bucket_ends: list[int] = field(default_factory=list)


class CollectiveWeightTransferEngine(WeightTransferEngine[CollectiveInitInfo, CollectiveUpdateInfo]):
    init_info_cls = CollectiveInitInfo
    update_info_cls = CollectiveUpdateInfo
    supports_draft_weight_update = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.group = None
        self.bucket_device = torch.device("cpu")

    def init_transfer_engine(self, init_info: CollectiveInitInfo) -> None:
        """Join the group (blocks until every member joined); a second call forms a new one."""
        self.shutdown()
        rank = (
            init_info.rank_offset + self.parallel_config.rank
        )  # a tensor-parallel engine: a rank per worker
        # buckets live where the backend moves them: GPU memory for NCCL, host memory for gloo (also
        # for an engine on a GPU it shares with the learner: vLLM's loaders copy them onto the GPU)
        self.bucket_device = self.device if init_info.dist_backend == "nccl" else torch.device("cpu")
        self.group = stateless_init_torch_distributed_process_group(
            init_info.master_address,
            init_info.master_port,
            rank,
            init_info.world_size,
            backend=init_info.dist_backend,
            timeout=timedelta(seconds=init_info.timeout_s),
        )

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)

    def update_weights(self, update_info: dict) -> None:
        # the base class synchronises an accelerator, which CPU torch does not have
        self.receive_weights(self.parse_update_info(update_info))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def receive_weights(self, update_info: CollectiveUpdateInfo) -> None:
        """Each bucket in turn from the learner, its tensors loaded (checkpoint names) while the next
        one arrives: two buckets beyond the model at most."""
        if self.group is None:
            raise RuntimeError("the collective weight transport was not initialised")
        from vllm.model_executor.model_loader.mtp_validation import disable_mtp_completeness_check

        u = update_info
        dtypes = [getattr(torch, name) for name in u.dtype_names]
        received = None  # (bucket, start, end) of the bucket to load next
        with disable_mtp_completeness_check():
            for start, end in bucket_spans(u.bucket_ends):
                size = layout(u.shapes[start:end], dtypes[start:end])[1]
                bucket = torch.empty(size, dtype=torch.uint8, device=self.bucket_device)
                arriving = torch.distributed.broadcast(bucket, group=self.group, group_src=0, async_op=True)
                if received is not None:
                    self._load(u, dtypes, *received)
                arriving.wait()
                received = (bucket, start, end)
            if received is not None:
                self._load(u, dtypes, *received)

    def _load(
        self, u: CollectiveUpdateInfo, dtypes: list, bucket: torch.Tensor, start: int, end: int
    ) -> None:
        """The model loads tensors start..end of the update, views into their bucket."""
        offsets, _ = layout(u.shapes[start:end], dtypes[start:end])
        views = zip(u.names[start:end], u.shapes[start:end], dtypes[start:end], offsets, strict=True)
        self.model.load_weights(
            [
                (name, bucket[o : o + math.prod(shape) * dtype.itemsize].view(dtype).view(shape))
                for name, shape, dtype, o in views
            ]
        )

    def shutdown(self) -> None:
        group, self.group = self.group, None
        if group is not None:
            with suppress(Exception):  # a dead peer must not block the engine
                group.abort()

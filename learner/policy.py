"""The policy of one learner rank: a DeepSpeed engine around the HF vision-language model.

The only module that imports deepspeed (and transformers' model classes). Recipes: STACK.md §7
(gloo on CPU, torch AdamW + `zero_allow_untested_optimizer`, `HfDeepSpeedConfig` for ZeRO-3).

Gradient of one step (`train_step`: GRPO; `sft_step`: NLL): every micro-batch loss is a masked SUM
divided by the GLOBAL token count of the mini-batch (learner.grpo), so the sum over all
micro-batches of all ranks is the mini-batch token mean. DeepSpeed sums micro-batch gradients locally and AVERAGES them over ranks;
each backward therefore scales the loss by world_size and is not divided by the accumulation
steps (`scale_wrt_gas=False`). The applied gradient is exactly ∇(global token-mean loss).

Every parameter trains (EMO-R3 does not freeze the vision tower). The modules stay in eval mode:
RL needs no dropout, and the ratio must be exactly 1 before the first update (gradient checkpointing
puts its layers in train mode, where Qwen2.5-VL computes alike: `enable_gradient_checkpointing`).

Logprobs and entropy come from the final hidden states of the completion tokens through the model's
lm_head made a CompletionHead (learner.head): `learner.logprob_chunk_tokens` tokens at a time, never
the full-vocabulary logits of a micro-batch.

A step runs as many micro-batches as it is given: the policy marks the accumulation boundary itself,
so a token budget (`learner.micro_batch_tokens`) may need more or fewer micro-batches per step than
DeepSpeed's nominal `gradient_accumulation_steps`. Every rank must run the same number
(`common_micro_batch_count`).

ZeRO-3 invariant: forwards are collectives (every rank gathers each module's parameters), so every
rank must run the same number of forwards, and a micro-batch with images on one rank needs images
on every rank (else the vision tower's gathers do not pair up).
"""

from __future__ import annotations

import functools
import operator
import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from learner.batch import MicroBatch
from learner.config import LearnerConfig
from learner.forward import completion_logprobs, enable_gradient_checkpointing
from learner.grpo import MAX_REDUCED_METRICS, GrpoLossConfig, grpo_loss, sampler_correction
from learner.head import install_completion_head
from learner.sft import sft_objective

OPTIMIZER_DIR = "optimizer"  # inside a checkpoint: one safetensors file per rank (Policy.save_optimizer)
COLLECTIVE_TIMEOUT = timedelta(minutes=30)  # a dead rank fails its peers' collectives after this
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# A micro-batch's loss: (batch, logprobs [N, T], entropy [N, T] (detached), global_num_tokens) → (loss,
# metrics); picked once per kind of step (GRPO: train_step, SFT: sft_step), never branched on inside it.
Objective = Callable[[MicroBatch, Tensor, Tensor, int], tuple[Tensor, dict[str, Tensor]]]


def uses_reference(cfg: LearnerConfig) -> bool:
    """The KL term needs a reference policy: on the learner and with a nonzero coefficient."""
    return cfg.reference_placement == "learner" and cfg.kl_coef > 0


def deepspeed_config(cfg: LearnerConfig, world_size: int, micro_batches_per_step: int) -> dict[str, Any]:
    """The DeepSpeed config of the policy; one optimizer step every `micro_batches_per_step` backwards."""
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": micro_batches_per_step,
        "train_batch_size": cfg.micro_batch_size * micro_batches_per_step * world_size,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage, "stage3_gather_16bit_weights_on_model_save": True},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": cfg.dtype == "bfloat16"},
        "steps_per_print": 2**31 - 1,
    }


def warmup_factor(warmup_steps: int, step: int) -> float:
    """The lr multiplier of optimizer step `step` (0-based): linear from 1/warmup_steps up to 1.

    Adam's first updates move every weight by about ±lr whatever its gradient's size (m̂/√v̂ = ±1);
    at the tiny model's lr that undoes much of the cold start in one iteration. No warmup: 1.
    """
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0


class Policy:
    """The DeepSpeed engine of one rank (and the frozen reference when the KL term is on)."""

    def __init__(
        self,
        model_path: str | Path,
        cfg: LearnerConfig,
        *,
        rank: int,
        world_size: int,
        total_micro_batches_per_step: int,
        reference_path: str | Path | None = None,
    ):
        """`reference_path`: the frozen initial policy for the KL term (default: `model_path`; a
        resumed run starts the policy from its checkpoint but keeps the original reference)."""
        import deepspeed

        self.cfg = cfg
        if cfg.deterministic:
            use_deterministic_algorithms()
        self.rank, self.world_size = rank, world_size
        self.micro_batches_per_step = total_micro_batches_per_step
        self.device = _device()
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        if self.device.type == "cpu":
            skip_shm_comm_op()
        join_process_group(backend, rank, world_size, COLLECTIVE_TIMEOUT)
        deepspeed.init_distributed(  # adopts the group joined above
            dist_backend=backend, rank=rank, world_size=world_size, timeout=COLLECTIVE_TIMEOUT
        )
        self.ds_config = deepspeed_config(cfg, world_size, total_micro_batches_per_step)
        # ZeRO-3: while this object lives, from_pretrained loads straight into partitions (zero.Init).
        self._hf_ds_config = _hf_deepspeed_config(self.ds_config) if cfg.zero_stage == 3 else None
        model = _load_model(model_path, DTYPES[cfg.dtype])
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        warmup = torch.optim.lr_scheduler.LambdaLR(
            optimizer, functools.partial(warmup_factor, cfg.warmup_steps)
        )
        self.engine, *_ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=warmup, config=self.ds_config
        )
        self.engine.eval()
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(self.engine.module)
        # fp32 ZeRO-0 clips without keeping the norm: read it from the (rank-averaged) gradients.
        self._norm_before_step = cfg.zero_stage == 0 and cfg.dtype == "float32"
        self.reference = self._build_reference(reference_path or model_path) if uses_reference(cfg) else None
        self.loss_cfg = GrpoLossConfig(
            clip_low=cfg.clip_low,
            clip_high=cfg.clip_high,
            dual_clip=cfg.dual_clip,
            kl_coef=cfg.kl_coef,
            kl_clamp=cfg.kl_clamp,
        )

    def _build_reference(self, model_path: str | Path) -> Any:
        """The frozen initial policy: a plain module (ZeRO 0-2) or a ZeRO-3 inference engine."""
        import deepspeed

        reference = _load_model(model_path, DTYPES[self.cfg.dtype])
        reference.requires_grad_(False)
        if self.cfg.zero_stage == 3:
            config = {key: value for key, value in self.ds_config.items() if key != "gradient_clipping"}
            reference, *_ = deepspeed.initialize(model=reference, config=config)
        else:
            reference = reference.to(self.device)
        reference.eval()  # DeepSpeedEngine.eval() returns None: never chain it
        return reference

    # -------------------------------------------------------------------------------------------
    # Forward passes

    def _forward(self, module: Any, batch: MicroBatch) -> tuple[Tensor, Tensor]:
        """logprobs [N, T] (fp32, with gradient) of the completion tokens and their entropy [N, T] (fp32,
        detached); 0 on padding."""
        return completion_logprobs(module, batch, self.cfg.logprob_chunk_tokens)

    @torch.no_grad()
    def logprobs(self, batch: MicroBatch, *, reference: bool = False) -> Tensor:
        """[N, T] logprobs of the completion tokens under the policy (or the reference); 0 on padding."""
        module = self.reference if reference else self.engine
        if module is None:
            raise ValueError("no reference policy: set reference_placement='learner' and kl_coef > 0")
        batch = batch.to(self.device)
        logprobs, _ = self._forward(module, batch)  # [N, T]
        return torch.where(batch.mask, logprobs, 0.0).cpu()

    # -------------------------------------------------------------------------------------------
    # One optimizer step

    def train_step(
        self,
        micro_batches: list[MicroBatch],
        global_num_tokens: int,
        *,
        sampler_diffs: list[Tensor] | None = None,
    ) -> dict[str, float]:
        """One optimizer update from this rank's micro-batches of a mini-batch (module docstring).

        Every micro-batch carries old_logprobs (and ref_logprobs when the KL term is on).
        global_num_tokens: completion tokens of the whole mini-batch over all ranks. Returns the
        rank's share of the token-mean metrics (sum them over ranks; ratio_max: max) and grad_norm
        (global, before clipping). `sampler_diffs`, when a list, receives each micro-batch's
        (logprobs of the weights before this update − sampler_logprobs) on its completion tokens,
        from the training forward itself: the learner–engine mismatch at no extra cost on an
        iteration's first update.
        """
        for batch in micro_batches:
            self._check_grpo_inputs(batch)
        objective = self._grpo_objective
        if sampler_diffs is not None:

            def objective(batch: MicroBatch, logprobs: Tensor, entropy: Tensor, n: int):
                sampler_diffs.append((logprobs.detach() - batch.sampler_logprobs)[batch.mask].cpu())
                return self._grpo_objective(batch, logprobs, entropy, n)

        return self._step(micro_batches, global_num_tokens, objective)

    def sft_step(self, micro_batches: list[MicroBatch], global_num_tokens: int) -> dict[str, float]:
        """One optimizer update minimising the token-mean NLL of the completion (target) tokens of
        the whole mini-batch over all ranks, with train_step's exact gradient scaling.

        Returns the rank's share of "loss" (sum it over ranks) and grad_norm (global, before clipping).
        """
        return self._step(micro_batches, global_num_tokens, sft_objective)

    def _step(
        self, micro_batches: list[MicroBatch], global_num_tokens: int, objective: Objective
    ) -> dict[str, float]:
        """Forward + backward of every micro-batch with `objective`, one update at the boundary: after
        the last micro-batch (DeepSpeed is told, whatever its nominal accumulation steps)."""
        if not micro_batches:
            raise ValueError("a step needs at least one micro-batch")
        if self.cfg.micro_batch_tokens is None and len(micro_batches) != self.micro_batches_per_step:
            raise ValueError(
                f"{len(micro_batches)} micro-batches, but a step of micro_batch_size rows runs "
                f"{self.micro_batches_per_step} (learner.micro_batch_tokens is unset)"
            )
        totals: dict[str, float] = {}
        norm = None
        lr = float(self.engine.get_lr()[0])  # this update's (the scheduler steps after it)
        for i, batch in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            self.engine.set_gradient_accumulation_boundary(last)
            totals = _combine(totals, self._backward(batch.to(self.device), global_num_tokens, objective))
            if last and self._norm_before_step:
                norm = _grad_norm(self.engine.module)
            self.engine.step()  # applies the update at the boundary only
        totals["grad_norm"] = norm if norm is not None else float(self.engine.get_global_grad_norm() or 0.0)
        totals["lr"] = lr
        return totals

    def _backward(self, batch: MicroBatch, global_num_tokens: int, objective: Objective) -> dict[str, float]:
        """Forward + backward of one micro-batch (gradients accumulate); its metrics."""
        logprobs, entropy = self._forward(self.engine, batch)  # [N, T], [N, T]
        loss, metrics = objective(batch, logprobs, entropy, global_num_tokens)
        # DeepSpeed averages over ranks: × world_size makes it the sum; no division by accumulation steps.
        self.engine.backward(loss * self.world_size, scale_wrt_gas=False)
        return {name: float(value) for name, value in metrics.items()}

    def _check_grpo_inputs(self, batch: MicroBatch) -> None:
        if batch.old_logprobs is None:
            raise ValueError("micro-batch without old_logprobs: compute them before the first update")
        if self.reference is not None and batch.ref_logprobs is None:
            raise ValueError("micro-batch without ref_logprobs, but the KL term is on")

    def _grpo_objective(
        self, batch: MicroBatch, logprobs: Tensor, entropy: Tensor, global_num_tokens: int
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The clipped GRPO loss (+ KL when the reference is on) of one micro-batch; with
        learner.tis_cap, each token's advantage weighted toward the sampler (grpo.sampler_correction)."""
        advantages, correction = batch.advantages, {}
        if self.cfg.tis_cap is not None:
            weights, correction = sampler_correction(
                batch.old_logprobs, batch.sampler_logprobs, batch.mask, global_num_tokens, self.cfg.tis_cap
            )
            advantages = batch.advantages[:, None] * weights  # [N, T]
        loss, metrics = grpo_loss(
            logprobs,
            batch.old_logprobs,
            batch.ref_logprobs if self.reference is not None else None,
            advantages,
            batch.mask,
            global_num_tokens,
            self.loss_cfg,
            entropy=entropy,
        )
        return loss, metrics | correction

    def common_micro_batch_count(self, count: int) -> int:
        """The most micro-batches any rank needs for a step (`count`: this rank's). A collective: every
        rank must run that many (ZeRO's gradient reductions and ZeRO-3's gathers pair up across ranks)."""
        if self.world_size == 1:
            return count
        import torch.distributed as dist

        most = torch.tensor([count], device=self.device)  # NCCL reduces device tensors
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
        return int(most.item())

    # -------------------------------------------------------------------------------------------
    # Weights out

    def full_state_dict(self) -> dict[str, Tensor] | None:
        """Rank 0: every parameter, full, on CPU, under the names save_pretrained writes; others None.

        A collective under ZeRO-3: every rank must call it.
        """
        state = self._gather()
        if state is None:
            return None
        from transformers.core_model_loading import revert_weight_conversion
        from transformers.modeling_utils import remove_tied_weights_from_state_dict

        state = remove_tied_weights_from_state_dict(state, self.engine.module)
        return revert_weight_conversion(self.engine.module, state)

    def save_pretrained(self, out_dir: str | Path, processor: Any) -> None:
        """Rank 0 writes safetensors + config + processor + chat template; others join the gather."""
        state = self._gather()
        if state is None:
            return
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.engine.module.save_pretrained(out_dir, state_dict=state)
        processor.save_pretrained(out_dir)

    # -------------------------------------------------------------------------------------------
    # Optimizer state (exact --resume)

    def save_optimizer(self, out_dir: str | Path) -> None:
        """Every rank writes its part of the AdamW state: per tensor the optimizer updates (under
        ZeRO, the rank's flat fp32 partitions) its master values, moments and step, plus the lr
        schedule's step, to `optimizer_file` (safetensors: tensors and string metadata, no pickle)."""
        from safetensors.torch import save_file

        optimizer = self._optimizer()
        tensors: dict[str, Tensor] = {}
        for key, param in _optimizer_params(self.engine.optimizer, optimizer):
            tensors[f"{key}.master"] = param.detach().cpu().clone()
            for name, value in optimizer.state.get(param, {}).items():
                tensors[f"{key}.{name}"] = torch.as_tensor(value).detach().cpu().clone()
        scheduler = self.engine.lr_scheduler
        metadata = {
            "zero_stage": str(self.cfg.zero_stage),
            "dtype": self.cfg.dtype,
            "world_size": str(self.world_size),
            "scheduler_step": str(scheduler.last_epoch if scheduler is not None else 0),
        }
        path = optimizer_file(out_dir, self.rank, self.world_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=metadata)

    def load_optimizer(self, checkpoint: str | Path) -> str:
        """Restore what `save_optimizer` wrote for this rank and world size; what happened, in words.

        Nothing changes (AdamW starts from zero moments and the schedule from its first step) when
        the checkpoint has no file for this rank and world size, or one written under another ZeRO
        stage, dtype or parameter layout."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = optimizer_file(checkpoint, self.rank, self.world_size)
        fresh = "AdamW moments and the lr schedule start afresh"
        if not path.is_file():
            return f"no optimizer state for {self.world_size} rank(s) in {checkpoint}: {fresh}"
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        saved = load_file(str(path))
        wanted = {"zero_stage": str(self.cfg.zero_stage), "dtype": self.cfg.dtype}
        if any(metadata.get(key) != value for key, value in wanted.items()):
            return f"optimizer state in {path} is for {metadata}, this run is {wanted}: {fresh}"
        optimizer = self._optimizer()
        params = _optimizer_params(self.engine.optimizer, optimizer)
        for key, param in params:
            master = saved.get(f"{key}.master")
            if master is None or master.shape != param.shape:
                return f"optimizer state in {path} does not match this model's parameters ({key}): {fresh}"
        with torch.no_grad():
            for key, param in params:
                param.copy_(saved[f"{key}.master"])
                prefix = f"{key}."
                optimizer.state[param] = {
                    name.removeprefix(prefix): value.to(param.device)
                    for name, value in saved.items()
                    if name.startswith(prefix) and name != f"{key}.master"
                }
        step = int(metadata.get("scheduler_step", 0))
        if (scheduler := self.engine.lr_scheduler) is not None and step > 0:
            scheduler.last_epoch = step - 1
            scheduler.step()  # sets the lr of update `step` on every param group
        return f"optimizer state restored from {path.parent} (lr schedule at update {step})"

    def _optimizer(self) -> torch.optim.Optimizer:
        """The torch AdamW doing the updates (DeepSpeed's ZeRO and bf16 wrappers hold it as `.optimizer`)."""
        optimizer = self.engine.optimizer
        return getattr(optimizer, "optimizer", optimizer)

    def _gather(self) -> dict[str, Tensor] | None:
        """The module-named full state dict on rank 0 (CPU copies), None elsewhere; ZeRO-3: collective."""
        if self.cfg.zero_stage == 3:
            return self.engine._zero3_consolidated_16bit_state_dict()
        if self.rank != 0:
            return None
        return _cpu_copy(self.engine.module.state_dict())


def optimizer_file(checkpoint: str | Path, rank: int, world_size: int) -> Path:
    return Path(checkpoint) / OPTIMIZER_DIR / f"rank{rank:03d}-of-{world_size:03d}.safetensors"


def _optimizer_params(engine_optimizer: Any, optimizer: torch.optim.Optimizer) -> list[tuple[str, Tensor]]:
    """(key, parameter) for every tensor the torch optimizer updates, in order: under ZeRO the rank's
    flat fp32 partitions (ZeRO-3 lends them to the optimizer's param groups only during its step),
    else the param groups' parameters."""
    for name in ("fp32_partitioned_groups_flat", "single_partition_of_fp32_groups"):  # ZeRO-3, ZeRO-1/2
        if partitions := getattr(engine_optimizer, name, None):
            return [(f"flat{i}", partition) for i, partition in enumerate(partitions)]
    return [
        (f"g{g}.p{p}", param)
        for g, group in enumerate(optimizer.param_groups)
        for p, param in enumerate(group["params"])
    ]


def load_processor(model_path: str | Path) -> Any:
    """The model folder's processor (tokenizer + image processor + chat template)."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(model_path))


def _cpu_copy(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A CPU snapshot of a state dict; tensors sharing storage (tied weights) stay shared."""
    copies: dict[tuple[int, int], Tensor] = {}
    out = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key not in copies:
            copies[key] = tensor.detach().to("cpu", copy=True)
        out[name] = copies[key]
    return out


def _grad_norm(module: Any) -> float:
    """2-norm of all gradients of `module` (after the boundary backward: already rank-averaged)."""
    squares = [p.grad.detach().double().square().sum() for p in module.parameters() if p.grad is not None]
    return float(torch.stack(squares).sum().sqrt()) if squares else 0.0


def _combine(totals: dict[str, float], metrics: dict[str, float]) -> dict[str, float]:
    """Micro-batch metrics combined: sums (token means over the global count), max for ratio_max."""
    out = dict(totals)
    for name, value in metrics.items():
        reduce = max if name in MAX_REDUCED_METRICS else operator.add
        out[name] = reduce(out[name], value) if name in out else value
    return out


def join_process_group(backend: str, rank: int, world_size: int, timeout: timedelta) -> None:
    """Join torch.distributed's default group through a store that listens on MASTER_ADDR only.

    torch's own rendezvous (`env://`) makes rank 0's TCPStore listen on every interface, without
    authentication. Here rank 0 binds the store's socket to the rendezvous address itself: loopback
    when every rank shares a node (cluster.placement.rendezvous_address), else rank 0's node address.
    """
    import socket

    import torch.distributed as dist

    if dist.is_initialized():
        return
    address, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    listen_fd = None
    if rank == 0:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        listen_fd = socket.create_server((address, port), family=family).detach()
    store = dist.TCPStore(
        address, port, world_size, is_master=rank == 0, timeout=timeout, master_listen_fd=listen_fd
    )
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)


def skip_shm_comm_op() -> None:
    """Keep DeepSpeed's CPU backend from JIT-compiling its shared-memory all-reduce kernel.

    `deepspeed.init_distributed` on CPU builds the `deepspeed_shm_comm` op with gcc (about 30 s on 2
    cores, once per TORCH_EXTENSIONS_DIR; 5 GB of peak RAM when two ranks compile at once). Only
    DeepSpeed's inference all-reduce (AutoTP) uses it; ZeRO's collectives go through torch.distributed
    (gloo). Marked incompatible, `build_shm_op()` returns None and nothing is compiled.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def _device() -> torch.device:
    """cuda:LOCAL_RANK when CUDA is present (Ray gives each rank its GPU as device 0), else CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(device)
    return device


def _hf_deepspeed_config(ds_config: dict[str, Any]) -> Any:
    from transformers.integrations import HfDeepSpeedConfig

    return HfDeepSpeedConfig(ds_config)


def use_deterministic_algorithms() -> None:
    """torch's deterministic kernels in this process (learner.deterministic), before any CUDA work;
    ops without one warn instead of raising."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for determinism
    torch.use_deterministic_algorithms(True, warn_only=True)
    # its debugging aid, NaN-filling every new tensor, took 70% of a CPU step (fill_ under AccumulateGrad)
    torch.utils.deterministic.fill_uninitialized_memory = False


def _load_model(model_path: str | Path, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(str(model_path), dtype=dtype)
    install_completion_head(model)
    return model

"""The run config: one typed section per package, composed once, loaded from YAML + overrides.

    cfg = load_config("configs/cpu_default.yaml", ["rollout.group_size=4"])

A bad config raises `ConfigError` whose message names each failing field path and what to change;
the CLI turns it into exit code 2 before any actor starts.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from actors.config import RolloutConfig
from learner.config import LearnerConfig, SftConfig
from rewards.config import RewardConfig

SYNTHETIC_PREFIX = "synthetic:"


class ConfigError(ValueError):
    """A config that cannot run; the message is meant for the user, one problem per line."""


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(
        "tiny", description="HF-format model folder, or 'tiny' for the embedded model built offline"
    )

    @field_validator("path")
    @classmethod
    def _model_exists(cls, path: str) -> str:
        check_model_path(path)
        return path


def check_model_path(path: str) -> None:
    """A model is 'tiny', a local folder with an HF `config.json`, or a hub id (`org/name`, checked
    when the run starts: cluster.models.resolve_model)."""
    if path == "tiny" or (Path(path).expanduser() / "config.json").is_file() or is_hub_id(path):
        return
    what = "has no config.json" if Path(path).expanduser().is_dir() else "does not exist"
    raise ValueError(
        f"model folder {path!r} {what}; give an HF-format model folder (config.json, weights, processor), "
        "a hub id such as Qwen/Qwen2.5-VL-3B-Instruct, or 'tiny'"
    )


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_hub_id(path: str) -> bool:
    """`org/name` that is not a local path (a folder of that name wins)."""
    return bool(_HUB_ID.fullmatch(path)) and not Path(path).exists()


class SyntheticConfig(BaseModel):
    """The embedded affective-scene data set, generated into the cache on first use."""

    model_config = ConfigDict(extra="forbid")

    n_train: int = Field(512, ge=8, description="training images per style")
    n_test: int = Field(256, ge=8, description="held-out images per style")
    size: int = Field(112, ge=56, description="image side in pixels")
    ambiguity: float = Field(
        1.0,
        ge=0,
        le=1,
        description="share of images with 1-2 of 5 cues borrowed from a confusable label (1.0: every image mixed, the label is the majority of its cues; lower values leave the cold start little to gain)",
    )
    two_borrowed: float = Field(
        0.5,
        ge=0,
        le=1,
        description="share of the mixed images that borrow two of the five cues (a 3-2 majority); the others borrow one (4-1)",
    )
    seed: int = Field(0, description="generator seed")


class ColumnsConfig(BaseModel):
    """Manifest column names (EasyR1 style by default)."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field("images", description="image path(s) or bytes (a list of one, or a string)")
    problem: str = Field("problem", description="question text; built from the label set when absent")
    answer: str = Field("answer", description="gold label")
    labels: str = Field("labels", description="label list of the sample; else data.label_set")
    response: str = Field("response", description="reference response (cold-start SFT target)")


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    train: str = Field(
        "synthetic:emoset:train",
        description="JSONL/parquet manifest, class-per-folder tree, or synthetic:<emoset|emotion6>:<train|test>",
    )
    eval: list[str] = Field(
        default_factory=lambda: ["synthetic:emoset:test", "synthetic:emotion6:test"],
        description="held-out sets evaluated every cluster.eval_every iterations",
    )
    label_set: Literal["emoset", "emotion6", "webemo"] | None = Field(
        None, description="label set for manifests without a labels column"
    )
    prompt_style: Literal["set", "grpo"] = Field(
        "set", description="SET instruction or the GRPO <think> baseline"
    )
    columns: ColumnsConfig = Field(default_factory=ColumnsConfig)
    allow_outside_paths: bool = Field(
        False,
        description="let a manifest name absolute image paths and paths outside its own folder (../x.jpg); "
        "off, such rows are skipped as image_outside_root. Risk: a manifest can then make the service read "
        "any file this user can read; turn on only for manifests you trust",
    )
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    shuffle: bool = Field(True, description="reshuffle the training set every epoch (seeded)")
    replay_share: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="share of each iteration's prompts drawn again from the training prompts whose latest group "
        "was mixed (some rollouts right, some wrong), weighted by the share wrong; the rest come from the epoch "
        "stream (cluster.replay). 0: off, every prompt from the stream",
    )
    min_side: int = Field(28, ge=1, description="images with a shorter side are skipped")
    max_aspect: float = Field(200.0, gt=1, description="images with a larger aspect ratio are skipped")
    max_source_pixels: int = Field(
        64_000_000, gt=0, description="decompression-bomb guard, read from the header"
    )
    min_pixels: int = Field(56 * 56, gt=0, description="smaller images are upscaled to this area")
    max_pixels: int = Field(448 * 448, gt=0, description="larger images are downscaled to this area")

    @field_validator("train")
    @classmethod
    def _train_exists(cls, source: str) -> str:
        _check_source(source)
        return source

    @field_validator("eval")
    @classmethod
    def _eval_exist(cls, sources: list[str]) -> list[str]:
        for source in sources:
            _check_source(source)
        return sources

    @model_validator(mode="after")
    def _pixel_bounds(self) -> DataConfig:
        if self.min_pixels > self.max_pixels:
            raise ValueError(
                "min_pixels is larger than max_pixels; lower data.min_pixels or raise data.max_pixels"
            )
        return self


def _check_source(source: str) -> None:
    if source.startswith(SYNTHETIC_PREFIX):
        parts = source.split(":")
        if len(parts) != 3 or parts[1] not in ("emoset", "emotion6") or parts[2] not in ("train", "test"):
            raise ValueError(f"{source!r} is not synthetic:<emoset|emotion6>:<train|test>")
    elif not Path(source).expanduser().exists():
        raise ValueError(f"data path {source!r} does not exist; point it at a manifest or folder")


class WandbConfig(BaseModel):
    """Weights & Biases, beside metrics.jsonl and TensorBoard (needs the `wandb` package: the [wandb] extra)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="also log every iteration's metrics to wandb")
    project: str = Field("emo-r3", description="wandb project")
    entity: str | None = Field(None, description="wandb entity (team or user); None: the account's default")
    mode: Literal["online", "offline"] = Field(
        "online",
        description="offline: write the wandb run under <run>/wandb only (wandb sync uploads it later)",
    )

    @model_validator(mode="after")
    def _installed(self) -> WandbConfig:
        import importlib.util

        if self.enabled and importlib.util.find_spec("wandb") is None:
            raise ValueError(
                "wandb is not installed: pip install 'emo-r3[wandb]', or set cluster.wandb.enabled=false"
            )
        return self


class ClusterConfig(BaseModel):
    """The job: where it runs, how long, what it writes, how long it waits."""

    model_config = ConfigDict(extra="forbid")

    ray_address: str | None = Field(
        None, description="existing Ray cluster; None: $RAY_ADDRESS, else a local Ray"
    )
    allow_insecure_remote: bool = Field(
        False, description="allow a non-loopback Ray address without token auth"
    )
    num_cpus: float = Field(2, gt=0, description="CPUs of the local Ray started when no cluster is given")
    placement_strategy: Literal["PACK", "SPREAD"] = Field(
        "PACK",
        description="how Ray lays the workers' bundles over nodes: PACK (as few nodes as possible) or SPREAD (over as "
        "many as it can: a lost node takes fewer workers with it; learner ranks on several nodes meet over the network)",
    )
    iterations: int = Field(
        24, ge=1, description="generate→score→train→sync cycles (the CPU default's fit in its 15 minutes)"
    )
    prompts_per_iteration: int = Field(16, ge=1, description="B: prompts per iteration (METHOD.md §4: 512)")
    seed: int = Field(0, description="seeds data order, sampling and model init")
    output_dir: str = Field("runs", description="run directories are created under it")
    run_name: str | None = Field(None, description="run directory name; default: a timestamp")
    checkpoint_every: int = Field(12, ge=0, description="iterations between checkpoints (0: only at the end)")
    checkpoint_optimizer: bool = Field(
        True,
        description="checkpoints also hold every rank's AdamW state and lr-schedule step, so --resume continues "
        "exactly (about 3x the fp32 parameter bytes per checkpoint; safetensors); false: moments restart on resume",
    )
    eval_every: int = Field(12, ge=0, description="iterations between held-out evaluations (0: off)")
    eval_limit: int = Field(
        256, ge=1, description="held-out samples per data.eval source in in-training evaluation"
    )
    eval_greedy: bool = Field(
        False, description="in-training evaluation greedy instead of temperature 0.6 / top_p 0.95"
    )
    dump_rollouts: int = Field(8, ge=0, description="rollouts per iteration written to rollouts.jsonl")
    max_unscorable_rate: float = Field(
        0.25,
        ge=0,
        le=1,
        description="stop the run (exit 1, resumable) when more than this share of an iteration's rollouts is "
        "unscorable (a dead reward worker, a failing judge): training on the KL term alone is not training",
    )
    weight_transport: Literal["collective", "object_store"] = Field(
        "collective",
        description="how weights reach the engines: collective (a torch.distributed group of learner rank 0 and "
        "the engines' workers, gloo on CPU, NCCL on GPU: buckets broadcast one after another); object_store "
        "(Ray's object store: every engine pulls a full copy)",
    )
    weight_group_backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto",
        description="torch.distributed backend of the collective transport's group: auto = nccl when the learner and "
        "every receiving engine hold whole GPUs of their own, else gloo (CPU, or GPUs shared by fractions: NCCL refuses "
        "two ranks on one GPU)",
    )
    weight_bucket_mib: float = Field(
        256,
        gt=0,
        description="bucket size of a weight push (MiB): the extra memory a push needs on either side",
    )
    max_staleness: int = Field(
        0,
        ge=0,
        description="k: how many policy versions the rollouts may trail the learner. 0: the synchronous loop "
        "(generate, score, train, push, one after another). k >= 1: the next iterations' rollouts are generated and "
        "scored while the learner trains; a rollout more than k versions behind the policy it trains is never used; "
        "the loss corrects for the sampler with truncated importance sampling (learner.tis_cap)",
    )
    cpu_affinity: dict[Literal["rollout", "reward", "learner"], str] = Field(
        default_factory=dict,
        description='CPU runs: the cores each role\'s processes run on, as Linux cpu lists (rollout: "0", learner: '
        '"1-3"), so that roles do not take each other\'s cores, as they own their GPUs on a cluster; threads follow '
        "the core count. Unset roles run anywhere",
    )
    tensorboard: bool = Field(True, description="write TensorBoard logs beside metrics.jsonl")

    @field_validator("cpu_affinity", mode="before")
    @classmethod
    def _cores_as_text(cls, value: Any) -> Any:
        """A single core given as a number (`cluster.cpu_affinity.rollout=0` reads as an int)."""
        return {k: str(v) for k, v in value.items()} if isinstance(value, dict) else value

    wandb: WandbConfig = Field(default_factory=WandbConfig)
    worker_logs: bool = Field(
        False,
        description="forward the workers' stdout/stderr to the driver (local Ray; always kept in Ray's log dir)",
    )
    startup_timeout_s: float = Field(600, gt=0, description="deadline for actors to come up")
    generate_timeout_s: float = Field(600, gt=0, description="deadline for one group's generation")
    train_timeout_s: float = Field(1800, gt=0, description="deadline for one iteration's optimizer updates")
    sync_timeout_s: float = Field(300, gt=0, description="deadline for a weight push")
    max_worker_restarts: int = Field(
        3,
        ge=0,
        description="how often each rollout or reward worker is replaced after it died or missed a deadline (its "
        "unfinished groups go to the others); past it the run stops with a resumable checkpoint. 0: fail-stop",
    )
    max_run_restarts: int = Field(
        2,
        ge=0,
        description="how often the run restarts itself from its latest checkpoint after a learner rank died "
        "(every rank anew; the metrics history stays one). 0: the run stops",
    )


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    sft: SftConfig = Field(default_factory=SftConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        for problem in cross_section_problems(self):
            raise ValueError(problem)
        return self

    @property
    def cpus_requested(self) -> float:
        r, w, lr = self.rollout, self.reward, self.learner
        return (
            r.num_workers * r.num_cpus_per_worker
            + w.num_workers * w.num_cpus_per_worker
            + lr.num_ranks * lr.num_cpus_per_rank
        )

    def behaviour_logprobs(self) -> Literal["learner", "engine"]:
        """learner.old_logprobs with "auto" resolved: the sampler's logprobs serve as the ratio's old
        logprobs only where engine and learner both compute in float32 (their logprobs agree to ~1e-5) and
        the rollouts are the learner's own version (max_staleness 0); asynchronous, the learner's current
        weights are the ratio's old policy and truncated IS corrects toward the sampler."""
        choice = self.learner.old_logprobs
        if choice != "auto":
            return choice
        exact = self.rollout.dtype == self.learner.dtype == "float32"
        return "engine" if exact and self.cluster.max_staleness == 0 else "learner"


def cross_section_problems(cfg: RunConfig) -> list[str]:
    """Rules spanning sections: batch splits, the local resource budget, engines' GPUs, the judge."""
    return [
        *_batch_problems(cfg),
        *_resource_problems(cfg),
        *_engine_gpu_problems(cfg),
        *_nccl_problems(cfg),
        *_reward_problems(cfg),
        *_async_problems(cfg),
        *_cpu_affinity_problems(cfg),
    ]


def _batch_problems(cfg: RunConfig) -> list[str]:
    b, updates, ranks = (
        cfg.cluster.prompts_per_iteration,
        cfg.learner.updates_per_iteration,
        cfg.learner.num_ranks,
    )
    if b % updates:
        return [
            f"cluster.prompts_per_iteration={b} does not split into learner.updates_per_iteration={updates} "
            "equal mini-batches; make it a multiple"
        ]
    if (b // updates * cfg.rollout.group_size) % ranks:
        return [
            f"a mini-batch of {b // updates} prompts x {cfg.rollout.group_size} rollouts does not split over "
            f"learner.num_ranks={ranks}; change one of them"
        ]
    return []


def _resource_problems(cfg: RunConfig) -> list[str]:
    remote = cfg.cluster.ray_address or os.environ.get("RAY_ADDRESS")
    if not remote and cfg.cpus_requested > cfg.cluster.num_cpus + 1e-9:
        return [
            f"the workers request {cfg.cpus_requested:g} CPUs but the local Ray has cluster.num_cpus="
            f"{cfg.cluster.num_cpus:g}; lower *.num_workers / *.num_cpus_per_* or raise cluster.num_cpus"
        ]
    return []


def _engine_gpu_problems(cfg: RunConfig) -> list[str]:
    """An engine of tensor-parallel size T owns T whole GPUs (vLLM runs one worker per GPU in the actor);
    with T = 1 it may share one (a fraction). Rollout and judge engines have the rollout section's T."""
    tp = cfg.rollout.tensor_parallel_size
    engines = [("rollout.num_gpus_per_worker", cfg.rollout.num_gpus_per_worker)]
    if cfg.reward.reflection:
        engines.append(("reward.num_gpus_per_worker", cfg.reward.num_gpus_per_worker))
    problems = []
    for field, gpus in engines:
        if tp > 1 and gpus != tp:
            problems.append(
                f"{field}={gpus:g} but rollout.tensor_parallel_size={tp}: an engine of tensor-parallel size {tp} "
                f"needs {tp} whole GPUs; set {field}={tp}"
            )
        elif tp == 1 and gpus > 1:
            problems.append(
                f"{field}={gpus:g} reserves GPUs an engine of tensor_parallel_size=1 does not use; set it to 1 (or a fraction)"
            )
    return problems


def weight_group_backend(cfg: RunConfig) -> str:
    """The collective transport's backend: cluster.weight_group_backend, auto resolved (its field's text)."""
    if cfg.cluster.weight_group_backend != "auto":
        return cfg.cluster.weight_group_backend
    return "nccl" if all(gpus >= 1 for _, gpus in _weight_group_gpus(cfg)) else "gloo"


def _weight_group_gpus(cfg: RunConfig) -> list[tuple[str, float]]:
    """(field, GPUs) of each kind of member of the collective transport's group."""
    members = [
        ("learner.num_gpus_per_rank", cfg.learner.num_gpus_per_rank),
        ("rollout.num_gpus_per_worker", cfg.rollout.num_gpus_per_worker),
    ]
    if cfg.reward.reflection and cfg.reward.judge_follows_policy:
        members.append(("reward.num_gpus_per_worker", cfg.reward.num_gpus_per_worker))
    return members


def _nccl_problems(cfg: RunConfig) -> list[str]:
    """NCCL refuses two ranks of one group on one GPU ("Duplicate GPU detected"): whole GPUs for NCCL."""
    problems = []
    if cfg.learner.num_ranks > 1 and 0 < cfg.learner.num_gpus_per_rank < 1:
        problems.append(
            f"learner.num_gpus_per_rank={cfg.learner.num_gpus_per_rank:g} with {cfg.learner.num_ranks} ranks: NCCL "
            "cannot put two ranks of the learner on one GPU; give each rank a whole GPU (or use one rank)"
        )
    if cfg.cluster.weight_transport == "collective" and cfg.cluster.weight_group_backend == "nccl":
        shared = [f"{field}={gpus:g}" for field, gpus in _weight_group_gpus(cfg) if gpus < 1]
        if shared:
            problems.append(
                f"cluster.weight_group_backend=nccl but {', '.join(shared)}: NCCL cannot put two ranks of the weight "
                "group on one GPU; give them whole GPUs or set cluster.weight_group_backend=auto (gloo)"
            )
    return problems


def _async_problems(cfg: RunConfig) -> list[str]:
    """The asynchronous mode's loss: the learner's own old logprobs, and the sampler correction on."""
    k = cfg.cluster.max_staleness
    if k == 0:
        return []
    problems = []
    if cfg.learner.old_logprobs == "engine":
        problems.append(
            f"cluster.max_staleness={k} with learner.old_logprobs=engine: rollouts up to {k} versions old would "
            "make the sampler the ratio's old policy; use learner (or auto)"
        )
    if cfg.learner.tis_cap is None:
        problems.append(
            f"cluster.max_staleness={k} with learner.tis_cap=null: the asynchronous mode corrects for the sampler "
            "with truncated importance sampling; set a cap (2 is veRL's default)"
        )
    return problems


def _cpu_affinity_problems(cfg: RunConfig) -> list[str]:
    from actors.cpu import parse_cpu_list

    problems = []
    for role, cores in cfg.cluster.cpu_affinity.items():
        try:
            parse_cpu_list(cores)
        except ValueError as err:
            problems.append(f"cluster.cpu_affinity.{role}: {err}")
    return problems


def _reward_problems(cfg: RunConfig) -> list[str]:
    problems = []
    judge = cfg.reward.judge
    if judge.mode == "frozen" and judge.model:
        try:
            check_model_path(judge.model)
        except ValueError as err:
            problems.append(f"reward.judge.model: {err}")
    if cfg.reward.total == "grpo" and cfg.data.prompt_style != "grpo":
        problems.append("reward.total=grpo scores the <think> format: set data.prompt_style=grpo too")
    return problems


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """YAML file (optional) + dotted `key=value` overrides → a validated RunConfig."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(Path(path))
    for item in overrides or []:
        _apply_override(raw, item)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {str(path)!r} must hold a mapping of sections, not {type(data).__name__}"
        )
    return data


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not key=value (e.g. rollout.group_size=4)")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


_BOUND_WORDS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}


def format_validation_error(err: ValidationError) -> str:
    """One line per problem: the field path, the rule, the value seen and what to set instead."""
    lines = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        where = ".".join(loc)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = f"unknown field{_did_you_mean(loc)}"
        elif bound := next((k for k in _BOUND_WORDS if k in e.get("ctx", {})), None):
            msg = f"must be {_BOUND_WORDS[bound]} {e['ctx'][bound]} (got {e['input']!r}); set {where}=<a value {_BOUND_WORDS[bound]} {e['ctx'][bound]}>"
        elif "input" in e and not isinstance(e["input"], dict):
            msg = f"{msg} (got {e['input']!r})"
        if description := _field(loc).description if _field(loc) else None:
            msg += f"  [{where}: {description}]"
        lines.append(f"{where}: {msg}" if where else msg)
    if len(lines) == 1:
        return f"invalid config: {lines[0]}"
    return "\n  ".join([f"invalid config ({len(lines)} problems):", *lines])


def _section(loc: tuple[str, ...]) -> type[BaseModel] | None:
    """The model class holding the field at `loc` (None past a non-model field)."""
    model: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def _field(loc: tuple[str, ...]):
    model = _section(loc) if loc else None
    return model.model_fields.get(loc[-1]) if model else None


def _did_you_mean(loc: tuple[str, ...]) -> str:
    model = _section(loc)
    if model is None:
        return ""
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known fields: {', '.join(model.model_fields)}"


def to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def reference_markdown() -> str:
    """A markdown table of every field: path, default, description (the README's config reference)."""
    rows = ["| field | default | meaning |", "|---|---|---|"]
    _rows(RunConfig, "", rows)
    return "\n".join(rows)


def _rows(model: type[BaseModel], prefix: str, rows: list[str]) -> None:
    defaults = model()
    for name, field in model.model_fields.items():
        value = getattr(defaults, name)
        if isinstance(value, BaseModel):
            _rows(type(value), f"{prefix}{name}.", rows)
            continue
        shown = value if not isinstance(value, list) else ", ".join(map(str, value)) or "[]"
        meaning = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{prefix}{name}` | `{shown}` | {meaning} |")

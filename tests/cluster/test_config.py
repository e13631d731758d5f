"""The run config: YAML + overrides, and bad configs failing fast with the field path and a fix."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.config import ConfigError, RunConfig, load_config, to_yaml, weight_group_backend

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_equal_the_cpu_default_file():
    assert load_config(ROOT / "configs/cpu_default.yaml") == RunConfig()


def test_overrides_are_typed_and_nested():
    cfg = load_config(None, ["rollout.group_size=4", "reward.judge.temperature=0.3", "data.eval=[]"])
    assert cfg.rollout.group_size == 4
    assert cfg.reward.judge.temperature == 0.3
    assert cfg.data.eval == []


def test_resolved_yaml_round_trips(tmp_path):
    cfg = load_config(None, ["learner.lr=3e-4", "cluster.iterations=7"])
    path = tmp_path / "resolved.yaml"
    path.write_text(to_yaml(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize(
    ("overrides", "source"),
    [
        ([], "engine"),  # float32 engine and learner: their logprobs agree to ~1e-5
        (["learner.dtype=bfloat16"], "learner"),
        (["rollout.dtype=bfloat16"], "learner"),
        (["learner.old_logprobs=learner"], "learner"),
        (["learner.old_logprobs=engine", "learner.dtype=bfloat16"], "engine"),  # asked for explicitly
    ],
)
def test_old_logprobs_come_from_the_engine_only_where_it_computes_as_the_learner(overrides, source):
    assert load_config(None, overrides).behaviour_logprobs() == source


def test_paper_recipe_mirrors_method_hyperparameters(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("")
    cfg = load_config(ROOT / "configs/qwen2_5_vl_3b_8gpu.yaml", [f"data.train={train}", "data.eval=[]"])
    assert (cfg.cluster.prompts_per_iteration, cfg.rollout.group_size) == (512, 8)
    assert (cfg.learner.lr, cfg.learner.weight_decay, cfg.learner.grad_clip) == (2e-6, 0.01, 1.0)
    assert (cfg.learner.clip_low, cfg.learner.clip_high, cfg.learner.dual_clip, cfg.learner.kl_coef) == (
        0.2,
        0.3,
        3.0,
        0.01,
    )
    assert cfg.learner.updates_per_iteration == 2
    gpus = (
        cfg.rollout.num_workers * cfg.rollout.num_gpus_per_worker
        + cfg.reward.num_workers * cfg.reward.num_gpus_per_worker
        + cfg.learner.num_ranks * cfg.learner.num_gpus_per_rank
    )
    assert gpus == 8


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["rollout.grop_size=4"], "rollout.grop_size: unknown field; did you mean 'group_size'?"),
        (["learner.lr=fast"], "learner.lr: Input should be a valid number"),
        (["cluster.prompts_per_iteration=-4"], "cluster.prompts_per_iteration: must be ≥ 1 (got -4)"),
        (["rollout.group_size=1"], "rollout.group_size: must be ≥ 2 (got 1)"),
        (["rollout.num_workers=8"], "the workers request 4.75 CPUs but the local Ray has cluster.num_cpus=2"),
        (
            ["data.train=/no/such/manifest.jsonl"],
            "data.train: data path '/no/such/manifest.jsonl' does not exist",
        ),
        (["cluster.prompts_per_iteration=5"], "does not split into learner.updates_per_iteration=2"),
        (["reward.judge.mode=frozen"], "reward.judge: judge mode 'frozen' needs a model"),
        (["reward.total=grpo"], "set data.prompt_style=grpo too"),
        (["nonsense"], "is not key=value"),
    ],
)
def test_bad_config_names_the_field_and_the_fix(overrides, expected):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert expected in str(err.value)


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["rollout.group_size=0", "learner.lr=-1"])
    assert "2 problems" in str(err.value)


def test_bad_config_exits_2_quickly_without_starting_anything(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rollout:\n  group_size: 1\n")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "sample", "--config", str(bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2
    assert "rollout.group_size: must be ≥ 2" in proc.stderr
    assert elapsed < 5, f"config rejection took {elapsed:.1f} s"  # the 5 s contract, not a benchmark
    assert "ray" not in proc.stderr.lower()


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_yaml_that_is_not_a_mapping_is_rejected(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(path)


def test_the_configuration_doc_lists_every_config_field_as_generated():
    from cluster.config import reference_markdown

    doc = (ROOT / "docs" / "configuration.md").read_text()
    table = doc.split("## Every field", 1)[1]
    missing = [row.split("`")[1] for row in reference_markdown().splitlines()[2:] if row not in table]
    assert not missing, f"docs/configuration.md is stale for {missing}: paste `emo-r3 config reference`"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            [
                "rollout.tensor_parallel_size=2",
                "rollout.num_gpus_per_worker=1",
                "reward.num_gpus_per_worker=2",
            ],
            "rollout.num_gpus_per_worker=1 but rollout.tensor_parallel_size=2",
        ),
        (
            [
                "rollout.tensor_parallel_size=2",
                "rollout.num_gpus_per_worker=2",
                "reward.num_gpus_per_worker=1",
            ],
            "reward.num_gpus_per_worker=1 but rollout.tensor_parallel_size=2",
        ),
        (["rollout.tensor_parallel_size=2"], "needs 2 whole GPUs"),  # a CPU engine runs one process
        (["rollout.num_gpus_per_worker=2"], "does not use"),
    ],
)
def test_an_engines_gpus_must_match_its_tensor_parallel_size(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["cluster.ray_address=127.0.0.1:6379", *overrides])


def test_engines_with_their_tensor_parallel_gpus_or_a_shared_fraction_are_accepted():
    tp = ["rollout.tensor_parallel_size=2", "rollout.num_gpus_per_worker=2", "reward.num_gpus_per_worker=2"]
    load_config(None, ["cluster.ray_address=127.0.0.1:6379", *tp])
    shared = ["rollout.num_gpus_per_worker=0.5", "reward.num_gpus_per_worker=0.25"]
    load_config(None, ["cluster.ray_address=127.0.0.1:6379", *shared])
    # without reflection the reward workers own no engine: their GPUs are not checked
    load_config(None, ["cluster.ray_address=127.0.0.1:6379", *tp[:2], "reward.reflection=false"])


REMOTE = "cluster.ray_address=127.0.0.1:6379"
WHOLE_GPUS = ["learner.num_gpus_per_rank=1", "rollout.num_gpus_per_worker=1", "reward.num_gpus_per_worker=1"]


def test_the_weight_groups_backend_is_nccl_only_when_every_member_holds_whole_gpus():
    assert weight_group_backend(load_config(None, [REMOTE])) == "gloo"  # CPU
    assert weight_group_backend(load_config(None, [REMOTE, *WHOLE_GPUS])) == "nccl"
    # one GPU shared by fractions: NCCL would refuse the duplicate device, gloo moves the bytes
    shared = [*WHOLE_GPUS[:2], "reward.num_gpus_per_worker=0.5"]
    assert weight_group_backend(load_config(None, [REMOTE, *shared])) == "gloo"
    # a frozen judge does not receive weights: its fraction does not matter
    frozen = [*shared, "reward.judge.mode=frozen", "reward.judge.model=tiny"]
    assert weight_group_backend(load_config(None, [REMOTE, *frozen])) == "nccl"
    forced = [*WHOLE_GPUS, "cluster.weight_group_backend=gloo"]
    assert weight_group_backend(load_config(None, [REMOTE, *forced])) == "gloo"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            [
                "cluster.weight_group_backend=nccl",
                "learner.num_gpus_per_rank=1",
                "rollout.num_gpus_per_worker=0.5",
            ],
            "but rollout.num_gpus_per_worker=0.5.*NCCL cannot put two ranks of the weight group on one GPU",
        ),
        (
            ["learner.num_ranks=2", "learner.num_gpus_per_rank=0.5"],
            "NCCL cannot put two ranks of the learner on one GPU",
        ),
    ],
)
def test_nccl_is_refused_where_two_of_its_ranks_would_share_a_gpu(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [REMOTE, *overrides])


def test_the_asynchronous_mode_takes_the_learners_old_logprobs_and_needs_the_sampler_correction():
    assert load_config(None, []).behaviour_logprobs() == "engine"  # float32, synchronous
    assert load_config(None, ["cluster.max_staleness=1"]).behaviour_logprobs() == "learner"
    with pytest.raises(ConfigError, match="old_logprobs=engine"):
        load_config(None, ["cluster.max_staleness=1", "learner.old_logprobs=engine"])
    with pytest.raises(ConfigError, match="tis_cap=null"):
        load_config(None, ["cluster.max_staleness=2", "learner.tis_cap=null"])
    with pytest.raises(ConfigError, match="max_staleness"):
        load_config(None, ["cluster.max_staleness=-1"])


def test_cpu_affinity_takes_linux_cpu_lists_per_role():
    from actors.cpu import parse_cpu_list

    cfg = load_config(None, ["cluster.cpu_affinity.rollout=0", "cluster.cpu_affinity.learner=1-3"])
    assert cfg.cluster.cpu_affinity == {"rollout": "0", "learner": "1-3"}
    assert parse_cpu_list("0,2,4-5") == [0, 2, 4, 5]
    for bad, message in [("a", "not a cpu list"), ("3-1", "backwards")]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, [f"cluster.cpu_affinity.reward={bad}"])
    with pytest.raises(ConfigError, match="cpu_affinity"):
        load_config(None, ["cluster.cpu_affinity.judge=0"])  # not a role

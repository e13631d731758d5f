"""Several nodes, simulated on this machine: a Ray cluster of a head and four worker nodes, each a
raylet of its own on its own loopback address (127.0.0.2-5), as Ray's cluster test utilities start
them. One `emo-r3 train` run joins it with the workers spread over the nodes: its two learner ranks
sit on two nodes and meet at rank 0's node address (the multi-node rendezvous), its rollout workers on
different nodes; in iteration 1 a node holding rollout or reward workers but no learner rank is
removed (its raylet and every process on it killed). Its workers are re-placed on the remaining nodes
and the run finishes every iteration and the final held-out evaluation."""

from __future__ import annotations

import json
import re
import threading

import pytest
import ray
from conftest import start_session_ray, workers_pythonpath

from cluster.config import load_config
from cluster.launch import LOOPBACK, keep_local_ray_on_loopback
from cluster.metrics import MetricsLog
from cluster.placement import Placement
from cluster.session import TrainingCluster
from cluster.train import run_train

pytestmark = pytest.mark.slow

WORKER_NODES = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]  # 2 CPUs each


@pytest.fixture(scope="module")
def nodes():
    """The simulated cluster, the driver connected to its head; the session's local Ray, if it was up,
    is stopped for this module and started again after it."""
    from ray.cluster_utils import Cluster

    was_up = ray.is_initialized()
    ray.shutdown()
    keep_local_ray_on_loopback()  # every node keeps the loopback address it is given
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "node_ip_address": LOOPBACK, "include_dashboard": False},
    )
    workers = {ip: cluster.add_node(num_cpus=2, node_ip_address=ip) for ip in WORKER_NODES}
    ray.init(
        address=cluster.address,
        runtime_env={"env_vars": {"PYTHONPATH": workers_pythonpath()}},
        log_to_driver=False,
    )
    try:
        yield cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()
        if was_up:
            start_session_ray()


OVERRIDES = [
    "cluster.placement_strategy=SPREAD",
    "cluster.iterations=2",
    "cluster.prompts_per_iteration=4",
    "rollout.group_size=4",
    "rollout.num_workers=2",
    "learner.num_ranks=2",
    "learner.num_cpus_per_rank=1.5",  # two ranks cannot share a node
    "rollout.num_cpus_per_worker=0.5",
    "reward.num_cpus_per_worker=0.5",
    "rollout.max_new_tokens=24",
    "cluster.eval_every=2",
    "cluster.eval_limit=2",
    "cluster.checkpoint_every=0",
    "cluster.dump_rollouts=0",
    "cluster.tensorboard=false",
    "learner.micro_batch_size=4",
]


def _layout(tc: TrainingCluster) -> dict[str, list[str]]:
    """The node of each worker of each role, in slot order."""
    timeout = 120
    return {role: tc.placement.node_ips(role, timeout) for role in ("rollout", "reward", "learner")}


def test_a_run_across_nodes_meets_over_the_network_and_survives_losing_a_node(
    nodes, tmp_path, random_init_tiny_model, monkeypatch, capsys
):
    cluster, workers = nodes
    seen: dict = {"meet": [], "weight_group": [], "layout": {}, "victim": None}

    rendezvous = Placement.rendezvous

    def record_meet(placement, role, timeout_s):
        seen["meet"].append(address := rendezvous(placement, role, timeout_s))
        return address

    weight_group_address = TrainingCluster.weight_group_address

    def record_weight_group(tc):
        seen["weight_group"].append(address := weight_group_address(tc))
        return address

    generate_and_score = TrainingCluster.generate_and_score

    def remove_a_node_mid_iteration_1(tc, batch, iteration, version, *args):
        seen["tc"] = tc
        if iteration == 1 and seen["victim"] is None:
            layout = _layout(tc)
            seen["layout"][0] = layout
            candidates = [ip for ip in layout["rollout"] + layout["reward"] if ip not in layout["learner"]]
            assert candidates, layout  # SPREAD leaves a node with workers but no learner rank
            # rather one without the only judge: the run then goes on on the other rollout worker
            # while the replacement starts (the judge's loss is tests/cluster/test_chaos.py's)
            seen["victim"] = victim = min(candidates, key=layout["reward"].count)
            threading.Timer(1.0, cluster.remove_node, (workers[victim],), {"allow_graceful": False}).start()
        return generate_and_score(tc, batch, iteration, version, *args)

    log = MetricsLog.log

    def record_layout_after(metrics_log, iteration, metrics):
        log(metrics_log, iteration, metrics)
        if iteration == 1 and "train/loss" in metrics:
            seen["layout"][1] = _layout(seen["tc"])

    monkeypatch.setattr(Placement, "rendezvous", record_meet)
    monkeypatch.setattr(TrainingCluster, "weight_group_address", record_weight_group)
    monkeypatch.setattr(TrainingCluster, "generate_and_score", remove_a_node_mid_iteration_1)
    monkeypatch.setattr(MetricsLog, "log", record_layout_after)

    cfg = load_config(
        None,
        [
            *OVERRIDES,
            f"model.path={random_init_tiny_model}",
            f"cluster.output_dir={tmp_path}",
            "cluster.run_name=m",
            f"cluster.ray_address={cluster.address}",  # a run that joins a cluster, as a submitted job does
        ],
    )
    assert run_train(cfg) == 0
    out = capsys.readouterr().out

    before, after, victim = seen["layout"][0], seen["layout"][1], seen["victim"]
    # the multi-node paths ran: ranks on two nodes meet at rank 0's node, so does the weight group
    assert len(set(before["learner"])) == 2, before
    assert seen["meet"] == [(before["learner"][0], seen["meet"][0][1])] and seen["meet"][0][0] != LOOPBACK
    assert seen["weight_group"] and all(a == before["learner"][0] for a in seen["weight_group"])
    assert len(set(before["rollout"])) == 2, before  # rollout workers on different nodes
    # the lost node's workers were re-placed on the remaining nodes; nothing else moved
    assert victim not in sum(after.values(), []), (victim, after)
    for role, ips in before.items():
        assert all(a == b for a, b in zip(after[role], ips, strict=True) if b != victim), (before, after)
    lost = {role: sum(ip == victim for ip in ips) for role, ips in before.items()}
    rows = [json.loads(line) for line in (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()]
    iterations = [r for r in rows if "train/loss" in r]
    assert [r["iteration"] for r in iterations] == [0, 1]
    for r in iterations:
        assert r["rollout/unscorable_rate"] == 0.0 and r["rollout/groups"] == 4
    one = iterations[1]
    said = [line for line in out.splitlines() if ": replaced (" in line]
    replaced = {re.match(r"\w+ worker \d+", line).group(0) for line in said}
    on_victim = {
        f"{role} worker {i}" for role, ips in before.items() for i, ip in enumerate(ips) if ip == victim
    }
    assert replaced == on_victim, (said, on_victim)  # the lost node's workers, and only they
    # Ray may place a first replacement on the node before it knows the node is gone: that one is
    # placed again, and the node's loss counts once against each worker's bound
    assert all(line.endswith("replaced (1 of 3)") for line in said), said
    assert (
        one["recovery/rollout_restarts"] >= lost["rollout"]
        and one["recovery/reward_restarts"] >= lost["reward"]
    )
    assert one["recovery/run_restarts"] == 0
    assert out.count("died: replaced") == lost["rollout"] + lost["reward"], out[-3000:]
    final = rows[-1]
    assert final["eval/policy_version"] == 2 and "eval/A^I" in final  # the final held-out evaluation ran

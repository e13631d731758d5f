"""The asynchronous loop's scheduling (cluster.pipeline) on a fake training cluster: no rollout used is
more than k versions behind the policy it trains, productions overlap training, pushes come only
when learner and engines are idle, a failure stops the loop at once, and the resumable points draw
the same prompts again. The real stack runs it in tests/cluster/test_async_e2e.py."""

from __future__ import annotations

import threading
import time

import pytest

from actors.types import Completion, Group
from cluster.config import load_config
from cluster.data.sample import Sample
from cluster.generation import IterationRollouts, ScoredGroup
from cluster.metrics import MetricsLog
from cluster.pipeline import staleness_split
from cluster.run_state import RunState
from cluster.train import RunOutput, train_loop
from rewards.rules import RewardRules
from rewards.scoring import ScoreItem, score_items

LABELS = ("fear", "joy")
TEXT = "<step1>a</step1><step2>b</step2><step3>c</step3>\\boxed{fear}"


def _scored(sample: Sample, gid: int, version: int) -> ScoredGroup:
    group = Group(gid, version, [1, 2], [Completion([5, 6], [-0.1, -0.2], TEXT, "stop")] * 2)
    (scores,) = score_items([ScoreItem(group, "fear", LABELS, None)], None, RewardRules())
    return ScoredGroup(sample, group, scores)


class FakeCluster:
    """Generation takes `produce_s(iteration)`, training `train_s`, a push `push_s`. Records events and
    refuses a push while a production or a training is running (the real cluster would block)."""

    def __init__(self, produce_s, train_s: float, push_s: float = 0.02, fail_at: int | None = None):
        self.produce_s, self.train_s, self.push_s, self.fail_at = produce_s, train_s, push_s, fail_at
        self.events: list[tuple] = []
        self.busy: set[str] = set()
        self.lock = threading.Lock()

    def _log(self, *event) -> None:
        with self.lock:
            self.events.append((time.perf_counter(), *event))

    def generate_and_score(self, batch, iteration, version, stop):
        self.busy.add("engines")
        self._log("produce", iteration, version, [s.sample_id for s in batch])
        try:
            deadline = time.perf_counter() + self.produce_s(iteration)
            while time.perf_counter() < deadline:
                stop.check()
                time.sleep(0.01)
            if iteration == self.fail_at:
                raise RuntimeError(f"rollout worker 1 died in iteration {iteration}")
            return IterationRollouts([_scored(s, i, version) for i, s in enumerate(batch)], generate_s=0.1)
        finally:
            self.busy.discard("engines")
            self._log("produced", iteration, version)

    def train(self, rollouts):
        self.busy.add("learner")
        self._log("train", [sg.group.policy_version for sg in rollouts.groups])
        time.sleep(self.train_s)
        self.busy.discard("learner")
        self._log("trained")
        return {"train/loss": 0.0}

    def push(self, version):
        assert not self.busy, f"push of version {version} while {self.busy} busy"
        self._log("push", version)
        time.sleep(self.push_s)
        return {"sync/receivers": 1.0}

    def save(self, path, optimizer):
        path.mkdir(parents=True, exist_ok=True)

    def recovery_metrics(self):
        return {}


def _run(tmp_path, cluster: FakeCluster, k: int, iterations: int = 6, start: dict | None = None):
    cfg = load_config(
        None,
        [
            f"cluster.max_staleness={k}",
            f"cluster.iterations={iterations}",
            "cluster.prompts_per_iteration=2",
            "cluster.eval_every=0",
            "cluster.dump_rollouts=0",
            "cluster.checkpoint_every=0",
            "cluster.tensorboard=false",
            "data.replay_share=0.5",
        ],
    )
    samples = [Sample(f"s{i}", "img.png", "q", LABELS, "fear") for i in range(10)]
    state = RunState.start(cfg, samples, start)
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = RunOutput(tmp_path, MetricsLog(tmp_path, False, state.iteration))
    from cluster.stops import StopSignal

    try:
        return train_loop(cfg, cluster, state, out, StopSignal()), state  # k = 0: the synchronous loop
    finally:
        out.log.close()


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("slow", ["production", "training"])
def test_no_rollout_trains_more_than_k_versions_behind(tmp_path, k, slow):
    # production 4x slower than training in some iterations (a slow rollout worker), or the reverse
    if slow == "production":
        cluster = FakeCluster(lambda i: 0.4 if i % 2 else 0.05, train_s=0.1)
    else:
        cluster = FakeCluster(lambda i: 0.05, train_s=0.3)
    history, state = _run(tmp_path, cluster, k)
    trains = [e[2] for e in cluster.events if e[1] == "train"]
    assert len(trains) == 6 and state.version == 6
    for iteration, versions in enumerate(trains):
        assert all(0 <= iteration - v <= k for v in versions), (iteration, versions)
    for iteration, metrics in enumerate(history):
        assert metrics["policy_version"] == iteration + 1  # after its update, as in the synchronous loop
        assert metrics["async/dropped_stale"] == 0
        assert sum(metrics[f"async/staleness_{s}"] for s in range(k + 1)) == 2
        assert metrics["async/staleness_mean"] == iteration - metrics["async/rollout_version"]
    # every production started at an engine version within the bound, in order
    produced = [(e[2], e[3]) for e in cluster.events if e[1] == "produce"]
    assert [j for j, _ in produced] == list(range(6))
    assert all(j - v <= k for j, v in produced)
    if slow == "training":  # productions ran ahead of training: some rollouts were k behind
        assert max(m["async/staleness_mean"] for m in history) == k


def test_productions_overlap_training(tmp_path):
    cluster = FakeCluster(lambda i: 0.3, train_s=0.3)
    start = time.perf_counter()
    _run(tmp_path, cluster, 1)
    wall = time.perf_counter() - start
    # synchronous: 6 x (0.3 + 0.3) = 3.6 s; overlapped: about 0.3 + 6 x 0.3 = 2.1 s
    assert wall < 3.0, wall
    training = [e[0] for e in cluster.events if e[1] in ("train", "trained")]
    spans = list(zip(training[::2], training[1::2], strict=True))
    produce_starts = [e[0] for e in cluster.events if e[1] == "produce"]
    assert any(a < t < b for t in produce_starts for a, b in spans)


def test_a_failed_production_stops_the_loop_while_training_goes_on(tmp_path):
    cluster = FakeCluster(lambda i: 0.1, train_s=2.0, fail_at=2)
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="rollout worker 1 died in iteration 2"):
        _run(tmp_path, cluster, 2)
    assert time.perf_counter() - start < 4.0  # raised at once, not after the training of iteration 1


def test_the_data_stream_is_the_synchronous_one_and_a_resume_draws_the_same_prompts(tmp_path):
    cluster = FakeCluster(lambda i: 0.02, train_s=0.1)
    _, state = _run(tmp_path / "a", cluster, 2)
    prompts = [e[4] for e in cluster.events if e[1] == "produce"]
    sync = FakeCluster(lambda i: 0.02, train_s=0.01)
    _run(tmp_path / "b", sync, 0, iterations=6)
    assert prompts == [e[4] for e in sync.events if e[1] == "produce"]
    # stop after iteration 2 (its checkpoint's trainer state) and resume: the same prompts from 3 on
    first = FakeCluster(lambda i: 0.02, train_s=0.1)
    _, stopped = _run(tmp_path / "c", first, 2, iterations=3)
    point = stopped.resumable
    assert point["next_iteration"] == 3 and point["version"] == 3
    resumed = FakeCluster(lambda i: 0.02, train_s=0.1)
    history, _ = _run(tmp_path / "d", resumed, 2, iterations=6, start=point)
    assert [e[4] for e in resumed.events if e[1] == "produce"] == prompts[3:]
    # the resumed run's productions start at the checkpoint's version: staleness 0 first
    assert [e[3] for e in resumed.events if e[1] == "produce"][0] == 3
    assert [m["policy_version"] for m in history] == [4, 5, 6]


def test_staleness_split_drops_and_counts_groups_past_the_bound():
    sample = Sample("s0", "img.png", "q", LABELS, "fear")
    rollouts = IterationRollouts([_scored(sample, i, v) for i, v in enumerate([5, 4, 3, 2])])
    kept, metrics = staleness_split(rollouts, version=5, k=2)
    assert [sg.group.policy_version for sg in kept.groups] == [5, 4, 3]
    assert metrics["async/dropped_stale"] == 1
    assert [metrics[f"async/staleness_{s}"] for s in range(3)] == [1, 1, 1]
    assert metrics["async/staleness_mean"] == 1
    with pytest.raises(RuntimeError, match="newer"):
        staleness_split(rollouts, version=4, k=2)


def test_k0_is_the_synchronous_loop_one_phase_after_another(tmp_path, monkeypatch):
    import cluster.pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("max_staleness=0 must not build the asynchronous loop")

    monkeypatch.setattr(cluster.pipeline, "AsyncLoop", refuse)
    cluster = FakeCluster(lambda i: 0.02, train_s=0.02)
    history, state = _run(tmp_path, cluster, 0, iterations=3)
    phases = [(e[1], e[2]) if e[1] in ("produce", "push") else (e[1],) for e in cluster.events]
    expected = []
    for i in range(3):
        expected += [("produce", i), ("produced",), ("train",), ("trained",), ("push", i + 1)]
    assert [p[:2] if p[0] == "produce" else p for p in phases] == expected
    assert "async/staleness_0" not in history[0] and state.version == 3

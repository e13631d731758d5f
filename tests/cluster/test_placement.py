"""Placement: bundles reserved before any actor, and where learner ranks meet (one node or several)."""

from __future__ import annotations

import socket

import pytest

from cluster.placement import LOOPBACK, DeadlineExceeded, Placement, Role, rendezvous_address


def test_ranks_on_one_node_meet_on_loopback_and_across_nodes_at_rank_0s_node():
    assert rendezvous_address(["10.0.0.5", "10.0.0.5"], 29500) == (LOOPBACK, 29500)
    assert rendezvous_address(["10.0.0.7"], 29501) == (LOOPBACK, 29501)
    assert rendezvous_address(["10.0.0.7", "10.0.0.5", "10.0.0.5"], 29502) == ("10.0.0.7", 29502)


def test_a_local_placement_gives_the_learner_a_free_loopback_port(ray_local):
    placement = Placement([Role("rollout", 1, 0.5, 0), Role("learner", 2, 0.25, 0)], timeout_s=60)
    try:
        address, port = placement.rendezvous("learner", timeout_s=60)
        with pytest.raises(KeyError, match="no role 'judge'"):
            placement.rendezvous("judge", timeout_s=60)
    finally:
        placement.release()
    assert address == LOOPBACK
    with socket.socket() as s:
        s.bind((LOOPBACK, port))  # still free: the ranks can listen on it


def test_a_placement_the_cluster_cannot_hold_is_a_clear_error(ray_local):
    with pytest.raises(DeadlineExceeded, match="could not reserve"):
        Placement([Role("learner", 1, 64, 0)], timeout_s=1)


def test_a_grown_pool_reserves_a_bundle_per_new_worker_within_the_clusters_room(ray_local):
    placement = Placement([Role("rollout", 1, 0.5, 0)], timeout_s=60)
    huge = Placement([Role("rollout", 1, 0.1, 0)], timeout_s=60)
    huge.roles = [Role("rollout", 1, 64, 0)]  # its next workers would need more than the cluster has
    try:
        placement.reserve("rollout", 0, timeout_s=5)  # the role's own bundle: nothing more
        placement.reserve("rollout", 1, timeout_s=30)
        assert set(placement.extra) == {("rollout", 1)}
        assert len(placement.node_ips("rollout", timeout_s=30)) == 2  # the extra bundle is probed too
        with pytest.raises(DeadlineExceeded, match=r"reserve \{'CPU': 64\} for rollout worker 2 within 1 s"):
            huge.reserve("rollout", 2, timeout_s=1)
        assert not huge.extra
        placement.unreserve("rollout", 1)
        assert not placement.extra
    finally:
        placement.release()
        huge.release()

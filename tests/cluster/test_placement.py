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

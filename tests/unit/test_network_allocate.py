"""The subnet allocator: table tests of its rules and Hypothesis properties (no overlap, stability, reuse only
after release, every wanted pair served while the pool has room)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.network.allocate import (
    DEFAULT_POOL,
    Allocation,
    Pair,
    allocate,
    host_in_pool,
    outside_pool,
    parse_pool,
    updated_networks,
    wanted_pairs,
)
from dockyard.spec.stacks import CLUSTER_NETWORK
from dockyard.v1 import types_pb2 as pb

SMALL_POOL = ipaddress.IPv4Network("10.9.0.0/22")  # four /24s: exhaustion is reachable
NETWORKS = [CLUSTER_NETWORK, "shop_default", "shop_back", "blog_default"]
NODES = [f"n{i}" for i in range(6)]


def network(name: str, **subnets: str) -> pb.Network:
    return pb.Network(id=f"id-{name}", name=name, subnets=subnets)


def apply(networks: list[pb.Network], allocation: Allocation) -> list[pb.Network]:
    changed = {n.name: n for n in updated_networks(networks, allocation)}
    return [changed.get(n.name, n) for n in networks]


def pairs_of(networks: list[pb.Network]) -> dict[Pair, str]:
    return {(n.name, node): subnet for n in networks for node, subnet in n.subnets.items()}


def test_pool_parsing_names_the_problem() -> None:
    assert parse_pool(DEFAULT_POOL) == ipaddress.IPv4Network("10.128.0.0/9")
    assert parse_pool(" 192.168.0.0/16 ").prefixlen == 16
    with pytest.raises(ValueError, match="CIDR"):
        parse_pool("10.128.0.1/9")  # host bits set
    with pytest.raises(ValueError, match="IPv4"):
        parse_pool("fd00::/64")
    with pytest.raises(ValueError, match="at most /24"):
        parse_pool("10.0.0.0/25")
    with pytest.raises(ValueError, match="/8"):
        parse_pool("10.0.0.0/7")


def test_lowest_free_subnets_in_pair_order() -> None:
    nets = [network(CLUSTER_NETWORK, n1="10.128.0.0/24"), network("shop_default")]
    wanted = {(CLUSTER_NETWORK, "n1"), (CLUSTER_NETWORK, "n2"), ("shop_default", "n1")}
    result = allocate(nets, {"n1", "n2"}, wanted, parse_pool(DEFAULT_POOL))
    assert result.assigned == {CLUSTER_NETWORK: {"n2": "10.128.1.0/24"}, "shop_default": {"n1": "10.128.2.0/24"}}
    assert result.released == {}
    assert result.unplaced == ()


def test_removed_node_released_and_its_subnet_reused_only_next_pass() -> None:
    pool = ipaddress.IPv4Network("10.9.0.0/23")  # two /24s
    nets = [network(CLUSTER_NETWORK, gone="10.9.0.0/24", n1="10.9.1.0/24")]
    first = allocate(nets, {"n1", "n2"}, {(CLUSTER_NETWORK, "n1"), (CLUSTER_NETWORK, "n2")}, pool)
    assert first.released == {CLUSTER_NETWORK: ("gone",)}
    assert first.assigned == {}
    assert first.unplaced == ((CLUSTER_NETWORK, "n2"),)  # the released /24 is not free until committed
    nets = apply(nets, first)
    second = allocate(nets, {"n1", "n2"}, {(CLUSTER_NETWORK, "n1"), (CLUSTER_NETWORK, "n2")}, pool)
    assert second.assigned == {CLUSTER_NETWORK: {"n2": "10.9.0.0/24"}}


def test_down_node_and_idle_network_keep_their_subnets() -> None:
    nets = [network(CLUSTER_NETWORK, n1="10.128.0.0/24"), network("shop_default", n1="10.128.1.0/24")]
    result = allocate(nets, {"n1"}, set(), parse_pool(DEFAULT_POOL))  # n1 down, no task of shop left
    assert result == Allocation()


def test_unusable_or_duplicate_stored_subnets_are_replaced() -> None:
    nets = [
        network(CLUSTER_NETWORK, n1="10.128.0.0/24", n2="10.128.0.0/24", n3="garbage", n4="10.128.5.0/25"),
    ]
    wanted = {(CLUSTER_NETWORK, n) for n in ("n1", "n2", "n3", "n4")}
    result = allocate(nets, {"n1", "n2", "n3", "n4"}, wanted, parse_pool(DEFAULT_POOL))
    assert result.released == {CLUSTER_NETWORK: ("n2", "n3", "n4")}
    after = pairs_of(apply(nets, result))
    assert after[(CLUSTER_NETWORK, "n1")] == "10.128.0.0/24"
    assert len(set(after.values())) == 4


def test_wanted_pairs_cluster_network_for_ready_nodes_and_task_networks() -> None:
    nodes = [
        pb.Node(id="n1", status=pb.NODE_STATUS_READY),
        pb.Node(id="n2", status=pb.NODE_STATUS_DOWN),
    ]
    running = pb.Task(id="t1", node_id="n2", desired_state=pb.DESIRED_STATE_RUNNING)
    running.status.state = pb.TASK_STATE_ASSIGNED
    finished = pb.Task(id="t2", node_id="n1", desired_state=pb.DESIRED_STATE_RUNNING)
    finished.status.state = pb.TASK_STATE_FAILED
    stopping = pb.Task(id="t3", node_id="n1", desired_state=pb.DESIRED_STATE_SHUTDOWN)
    pending = pb.Task(id="t4", desired_state=pb.DESIRED_STATE_RUNNING)
    networks_of = {"t1": ["shop_default"], "t2": ["blog_default"], "t3": ["blog_back"], "t4": ["x"]}
    wanted = wanted_pairs(nodes, [running, finished, stopping, pending], networks_of)
    assert wanted == {(CLUSTER_NETWORK, "n1"), ("shop_default", "n2")}


@st.composite
def states(draw: st.DrawFn) -> tuple[list[pb.Network], set[str], set[Pair]]:
    """Stored networks whose subnets came from earlier allocations, plus the nodes and wanted pairs of now."""
    names = draw(st.lists(st.sampled_from(NETWORKS), min_size=1, unique=True))
    nets = [network(name) for name in names]
    for _ in range(draw(st.integers(0, 3))):
        ever = set(draw(st.lists(st.sampled_from(NODES))))
        wanted = set(draw(st.lists(st.tuples(st.sampled_from(names), st.sampled_from(NODES)))))
        nets = apply(nets, allocate(nets, ever, wanted, SMALL_POOL))
    node_ids = set(draw(st.lists(st.sampled_from(NODES))))
    wanted = set(draw(st.lists(st.tuples(st.sampled_from(NETWORKS), st.sampled_from(NODES)))))
    return nets, node_ids, wanted


@settings(max_examples=150, deadline=None)
@given(states())
def test_no_two_pairs_share_or_overlap_a_subnet(state: tuple[list[pb.Network], set[str], set[Pair]]) -> None:
    nets, node_ids, wanted = state
    after = apply(nets, allocate(nets, node_ids, wanted, SMALL_POOL))
    subnets = [ipaddress.IPv4Network(s) for s in pairs_of(after).values()]
    for i, a in enumerate(subnets):
        assert a.subnet_of(SMALL_POOL)
        for b in subnets[i + 1 :]:
            assert not a.overlaps(b), (a, b)


@settings(max_examples=150, deadline=None)
@given(states())
def test_stable_across_calls(state: tuple[list[pb.Network], set[str], set[Pair]]) -> None:
    nets, node_ids, wanted = state
    before = pairs_of(nets)
    result = allocate(nets, node_ids, wanted, SMALL_POOL)
    after = pairs_of(apply(nets, result))
    # A pair of a node still in the cluster keeps its subnet, whatever else is wanted or released.
    for pair, subnet in before.items():
        if pair[1] in node_ids:
            assert after[pair] == subnet
    # Same inputs, same answer; asked again once applied, only pairs the pool had no room for may move on
    # (into subnets this pass released).
    assert allocate(nets, node_ids, wanted, SMALL_POOL) == result
    again = allocate(apply(nets, result), node_ids, wanted, SMALL_POOL)
    assert again.released == {}
    assert {(name, node) for name, nodes in again.assigned.items() for node in nodes} <= set(result.unplaced)


@settings(max_examples=150, deadline=None)
@given(states())
def test_released_subnets_reused_only_after_release(state: tuple[list[pb.Network], set[str], set[Pair]]) -> None:
    nets, node_ids, wanted = state
    before = pairs_of(nets)
    result = allocate(nets, node_ids, wanted, SMALL_POOL)
    released = {before[(name, node)] for name, nodes in result.released.items() for node in nodes}
    given_now = {s for subnets in result.assigned.values() for s in subnets.values()}
    assert not released & given_now
    # Released only for nodes gone from the cluster (the stored subnets here are all sound).
    assert all(node not in node_ids for nodes in result.released.values() for node in nodes)


@settings(max_examples=150, deadline=None)
@given(states())
def test_every_wanted_pair_served_while_the_pool_has_room(state: tuple[list[pb.Network], set[str], set[Pair]]) -> None:
    nets, node_ids, wanted = state
    result = allocate(nets, node_ids, wanted, SMALL_POOL)
    after = pairs_of(apply(nets, result))
    names = {n.name for n in nets}
    served = {p for p in wanted if p[0] in names and p[1] in node_ids}
    missing = {p for p in served if p not in after}
    assert missing == set(result.unplaced)
    if missing:
        # Only when every /24 of the pool is taken (or being released this pass).
        taken = {ipaddress.IPv4Network(s) for s in pairs_of(nets).values()} | {
            ipaddress.IPv4Network(s) for s in after.values()
        }
        assert len(taken) == 2 ** (24 - SMALL_POOL.prefixlen)


def test_a_host_inside_the_pool_is_refused_naming_the_flag() -> None:
    pool = ipaddress.IPv4Network("10.128.0.0/9")
    why = host_in_pool("10.128.0.7", pool)
    assert why is not None and "10.128.0.7 is inside the cluster's address pool 10.128.0.0/9" in why
    assert "--network-pool" in why
    for outside in ("10.127.255.255", "192.168.1.5", "fd00::1", "", "unix:/tmp/x"):
        assert host_in_pool(outside, pool) is None, outside


def test_stored_subnets_outside_the_pool_are_listed_with_what_to_do() -> None:
    pool = ipaddress.IPv4Network("10.214.0.0/16")
    networks = [
        pb.Network(name="shop_default", subnets={"n1": "10.128.0.0/24", "n2": "10.214.1.0/24"}),
        pb.Network(name=CLUSTER_NETWORK, subnets={"n1": "10.128.1.0/24", "n3": "not a subnet"}),
    ]
    why = outside_pool(networks, pool)
    assert why == (
        "--network-pool 10.214.0.0/16: stored subnets lie outside it (dockyard@n1 10.128.1.0/24, shop_default@n1 "
        "10.128.0.0/24); start with a --network-pool that holds them (the previous pool, or one containing both), "
        "or remove those networks and nodes first"
    )
    assert outside_pool(networks, ipaddress.IPv4Network("10.0.0.0/8")) is None

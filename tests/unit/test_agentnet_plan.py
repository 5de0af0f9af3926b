"""agent.network.plan: the map -> host plan table (networks, routes, VXLAN peers, firewall rules)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from hypothesis import given
from hypothesis import strategies as st

from agent.network import plan as p
from dockyard.v1 import agent_pb2 as apb

UNDERLAY = [IPv4Network("192.168.10.0/24")]
POOL = "10.128.0.0/9"


def subnet(network: str, node: str, address: str, cidr: str, internal: bool = False) -> apb.NetworkSubnet:
    return apb.NetworkSubnet(network=network, node_id=node, node_address=address, subnet=cidr, internal=internal)


def three_hosts(version: int = 7) -> apb.NetworkMap:
    """h1 and h2 share the underlay /24; h3 is elsewhere (reachable only routed); two networks."""
    return apb.NetworkMap(
        version=version,
        pool=POOL,
        subnets=[
            subnet("dockyard", "h1", "192.168.10.11", "10.128.0.0/24"),
            subnet("dockyard", "h2", "192.168.10.12", "10.128.1.0/24"),
            subnet("dockyard", "h3", "172.20.0.13", "10.128.2.0/24"),
            subnet("shop_default", "h1", "192.168.10.11", "10.128.3.0/24"),
            subnet("shop_default", "h3", "172.20.0.13", "10.128.4.0/24"),
        ],
    )


def test_local_networks_get_a_bridge_gateway_and_labels() -> None:
    got = p.plan(three_hosts(), "h1", UNDERLAY)
    assert [(n.name, str(n.subnet), str(n.gateway)) for n in got.networks] == [
        ("dockyard", "10.128.0.0/24", "10.128.0.1"),
        ("shop_default", "10.128.3.0/24", "10.128.3.1"),
    ]
    bridges = [n.bridge for n in got.networks]
    assert all(b.startswith("dky-") and len(b) == 12 for b in bridges) and len(set(bridges)) == 2
    assert got.networks[1].labels[p.NETWORK_LABEL] == "shop_default"
    assert got.dns_addresses == (IPv4Address("10.128.0.1"), IPv4Address("10.128.3.1"))
    assert got.network("shop_default") is got.networks[1] and got.network("other") is None
    assert got.version == 7 and got.problems == ()


def test_direct_route_to_a_connected_peer_and_vxlan_to_the_rest() -> None:
    got = p.plan(three_hosts(), "h1", UNDERLAY)
    assert [(str(r.destination), str(r.via), r.vxlan) for r in got.routes] == [
        ("10.128.1.0/24", "192.168.10.12", False),
        ("10.128.2.0/24", "10.128.2.0", True),
        ("10.128.4.0/24", "10.128.4.0", True),
    ]
    assert got.vxlan is not None
    assert got.vxlan.mac == p.vxlan_mac("h1")
    assert got.vxlan.peers == (p.VxlanPeer(p.vxlan_mac("h3"), IPv4Address("172.20.0.13")),)
    assert {(str(n.address), n.mac) for n in got.vxlan.neighbors} == {
        ("10.128.2.0", p.vxlan_mac("h3")),
        ("10.128.4.0", p.vxlan_mac("h3")),
    }


def test_a_host_whose_peers_are_all_connected_has_no_vxlan_device() -> None:
    got = p.plan(three_hosts(), "h1", [IPv4Network("192.168.10.0/24"), IPv4Network("172.20.0.0/16")])
    assert got.vxlan is None
    assert all(not r.vxlan for r in got.routes)


def test_a_peer_that_left_the_map_loses_its_routes_and_fdb_entry() -> None:
    before = p.plan(three_hosts(), "h1", UNDERLAY)
    shrunk = apb.NetworkMap(version=8, pool=POOL, subnets=[s for s in three_hosts().subnets if s.node_id != "h3"])
    after = p.plan(shrunk, "h1", UNDERLAY)
    assert {str(r.destination) for r in before.routes} - {str(r.destination) for r in after.routes} == {
        "10.128.2.0/24",
        "10.128.4.0/24",
    }
    assert after.vxlan is None


def test_our_own_bridges_are_not_taken_for_an_underlay_link() -> None:
    # The host is connected to its own bridge subnets; a peer address inside the pool is not a direct hop.
    connected = [*UNDERLAY, IPv4Network("10.128.0.0/24")]
    odd = apb.NetworkMap(
        version=1,
        pool=POOL,
        subnets=[
            subnet("dockyard", "h1", "192.168.10.11", "10.128.0.0/24"),
            subnet("dockyard", "h9", "10.128.0.99", "10.128.9.0/24"),
        ],
    )
    got = p.plan(odd, "h1", connected)
    assert [r.vxlan for r in got.routes] == [True]


def test_our_own_entries_need_no_address() -> None:
    unknown = apb.NetworkMap(
        version=1,
        pool=POOL,
        subnets=[subnet("dockyard", "h1", "", "10.128.0.0/24"), subnet("dockyard", "h2", "", "10.128.1.0/24")],
    )
    got = p.plan(unknown, "h1", UNDERLAY)
    assert [str(n.subnet) for n in got.networks] == ["10.128.0.0/24"]
    assert got.routes == () and got.problems == (
        "network_map.subnets[1].node_address: '' is not an IPv4 address; entry skipped",
    )


def test_bad_entries_are_skipped_with_their_field_named() -> None:
    bad = apb.NetworkMap(
        version=1,
        pool="not-a-cidr",
        subnets=[
            subnet("dockyard", "h1", "192.168.10.11", "10.128.0.0/24"),
            subnet("dockyard", "h2", "nowhere", "10.128.1.0/24"),
            subnet("dockyard", "h3", "192.168.10.13", "10.128.300.0/24"),
            subnet("dockyard", "h4", "192.168.10.14", "10.128.5.7/32"),
        ],
    )
    got = p.plan(bad, "h1", UNDERLAY)
    assert got.routes == ()
    assert [text.split(":")[0] for text in got.problems] == [
        "network_map.subnets[1].node_address",
        "network_map.subnets[2].subnet",
        "network_map.subnets[3].subnet",
        "network_map.pool",
    ]


def test_firewall_same_network_accepted_other_cluster_subnets_dropped_no_nat_inside() -> None:
    got = p.plan(three_hosts(), "h1", UNDERLAY).firewall
    forward = [" ".join(r) for r in got.forward]
    # dockyard on h1 (10.128.0.0/24) reaches the dockyard subnets of h2 and h3, both ways, before the drops.
    for peer in ("10.128.1.0/24", "10.128.2.0/24"):
        assert f"-s 10.128.0.0/24 -d {peer} -j ACCEPT" in forward
        assert f"-s {peer} -d 10.128.0.0/24 -j ACCEPT" in forward
    assert f"-s 10.128.0.0/24 -d {POOL} -j DROP" in forward
    assert f"-s {POOL} -d 10.128.0.0/24 -j DROP" in forward
    # shop_default's subnets never accept dockyard's.
    assert not any("10.128.3.0/24" in r and ("10.128.1.0/24" in r or "10.128.0.0/24" in r) for r in forward)
    first_drop = next(i for i, r in enumerate(forward) if r.endswith("DROP"))
    assert all(r.endswith("ACCEPT") for r in forward[:first_drop])
    assert [" ".join(r) for r in got.postrouting] == [
        f"-s 10.128.0.0/24 -d {POOL} -j ACCEPT",
        f"-s 10.128.3.0/24 -d {POOL} -j ACCEPT",
    ]
    assert "-s 10.128.0.0/24 -d 10.128.0.1/32 -p udp --dport 53 -j ACCEPT" in [" ".join(r) for r in got.input]


def test_internal_network_reaches_only_its_own_subnets() -> None:
    internal = apb.NetworkMap(
        version=1,
        pool=POOL,
        subnets=[
            subnet("shop_db", "h1", "192.168.10.11", "10.128.6.0/24", internal=True),
            subnet("shop_db", "h2", "192.168.10.12", "10.128.7.0/24", internal=True),
        ],
    )
    forward = [" ".join(r) for r in p.plan(internal, "h1", UNDERLAY).firewall.forward]
    assert forward == [
        "-s 10.128.6.0/24 -d 10.128.6.0/24 -j ACCEPT",
        "-s 10.128.6.0/24 -d 10.128.7.0/24 -j ACCEPT",
        "-s 10.128.7.0/24 -d 10.128.6.0/24 -j ACCEPT",
        "-s 10.128.6.0/24 -j DROP",
        "-d 10.128.6.0/24 -j DROP",
    ]


def test_without_a_pool_the_listed_subnets_bound_the_cluster() -> None:
    no_pool = apb.NetworkMap(version=1, subnets=list(three_hosts().subnets))
    forward = [" ".join(r) for r in p.plan(no_pool, "h1", UNDERLAY).firewall.forward]
    assert "-s 10.128.3.0/24 -d 10.128.0.0/24 -j DROP" in forward


def test_restore_input_declares_and_fills_only_our_chains() -> None:
    text = p.restore_input(p.plan(three_hosts(), "h1", UNDERLAY).firewall)
    lines = text.splitlines()
    assert lines[:3] == ["*filter", ":DOCKYARD-FORWARD - [0:0]", ":DOCKYARD-INPUT - [0:0]"]
    assert "*nat" in lines and ":DOCKYARD-POSTROUTING - [0:0]" in lines
    assert all(line.split()[1].startswith("DOCKYARD-") for line in lines if line.startswith("-A"))
    assert lines.count("COMMIT") == 2
    empty = p.restore_input(p.empty_plan().firewall)
    assert [line for line in empty.splitlines() if line.startswith("-A")] == []


def test_vxlan_mac_is_stable_unicast_and_local() -> None:
    mac = p.vxlan_mac("node-1")
    assert mac == p.vxlan_mac("node-1") != p.vxlan_mac("node-2")
    assert int(mac.split(":")[0], 16) & 0b11 == 0b10  # locally administered, not multicast


@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(["h1", "h2", "h3", "h4"]), st.integers(0, 40)),
        max_size=20,
    ),
    st.sampled_from(["h1", "h2", "h3", "h4"]),
)
def test_plan_is_deterministic_and_every_peer_subnet_is_routed_once(
    entries: list[tuple[str, str, int]], me: str
) -> None:
    addresses = {"h1": "192.168.10.11", "h2": "192.168.10.12", "h3": "172.20.0.13", "h4": "172.20.0.14"}
    used: set[int] = set()
    subnets = []
    for network, node, index in entries:
        if index in used:
            continue
        used.add(index)
        subnets.append(subnet(network, node, addresses[node], f"10.128.{index}.0/24"))
    network_map = apb.NetworkMap(version=3, pool=POOL, subnets=subnets)
    first = p.plan(network_map, me, UNDERLAY)
    assert first == p.plan(network_map, me, UNDERLAY)
    local = {n.subnet for n in first.networks}
    routed = [r.destination for r in first.routes]
    assert len(routed) == len(set(routed))
    assert not local & set(routed)
    kept = {(s.network, s.node_id) for s in subnets}
    assert len(first.networks) == len({n for n, node in kept if node == me})
    for route in first.routes:
        assert route.vxlan == (route.via in route.destination)  # VXLAN hops are the subnet's network address

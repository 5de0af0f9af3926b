"""`dockyard network ls|create|rm` against the real API, with --output json."""

from __future__ import annotations

import json

from controller.store.base import Put
from dockyard.v1 import types_pb2 as pb
from tests.component.harness import ApiInThread, ok, run_cli


def test_network_create_ls_rm(cli_api: ApiInThread) -> None:
    # The API alone runs no network role: the cluster network with a subnet is written as the role would.
    cluster = pb.Network(id="c", name="dockyard", subnets={"n1": "10.128.0.0/24"})
    cli_api.run(cli_api.api.store.commit([Put(cluster)]))
    created = json.loads(
        ok(run_cli(cli_api, "network", "create", "backend", "-l", "team=a", "--internal", "-o", "json")).stdout
    )
    assert (created["name"], created["internal"], created["labels"], created["subnets"]) == (
        "backend",
        True,
        {"team": "a"},
        {},
    )
    assert "created network front" in ok(run_cli(cli_api, "network", "create", "front")).stdout
    listed = json.loads(ok(run_cli(cli_api, "network", "ls", "--output", "json")).stdout)
    assert [(r["name"], r["nodes"], r["subnets"]) for r in listed] == [
        ("backend", 0, {}),
        ("dockyard", 1, {"n1": "10.128.0.0/24"}),
        ("front", 0, {}),
    ]
    table = ok(run_cli(cli_api, "network", "ls")).stdout
    assert table.splitlines()[0].split() == ["NAME", "STACK", "INTERNAL", "HOSTS", "ID"]
    again = run_cli(cli_api, "network", "create", "backend")
    assert again.exit_code == 1 and "network 'backend' exists" in again.output
    bad = run_cli(cli_api, "network", "create", "x", "-l", "novalue")
    assert bad.exit_code == 2 and "KEY=VALUE" in bad.output
    refused = run_cli(cli_api, "network", "rm", "dockyard")
    assert refused.exit_code == 1 and "cluster network" in refused.output
    removed = json.loads(ok(run_cli(cli_api, "network", "rm", "front", "-o", "json")).stdout)
    assert removed["name"] == "front"
    assert [r["name"] for r in json.loads(ok(run_cli(cli_api, "network", "ls", "-o", "json")).stdout)] == [
        "backend",
        "dockyard",
    ]

"""Host policy through the whole loop: an agent refuses a privileged port, and `dockyard ps` says why."""

from __future__ import annotations

import json

from agent.policy import HostPolicy, refusal
from dockyard.v1 import types_pb2 as pb
from tests.component.harness import IMAGE, FakeCluster, cluster_cli
from tests.polling import eventually


async def rejected_task(cluster: FakeCluster, spec: pb.ServiceSpec) -> pb.Task:
    """Applies spec once a node is registered and returns the first of its tasks the agent rejects."""
    async with cluster.client() as client:
        await eventually(client.list_nodes, what="node registered")
        await client.apply([spec])

        async def rejected() -> list[pb.Task]:
            return [t for t in await client.list_tasks(spec.name, True) if t.status.state == pb.TASK_STATE_REJECTED]

        task, *_ = await eventually(rejected, what="a rejected task")
    return task


async def test_a_privileged_port_is_refused_by_the_agent_and_ps_shows_why(fake_cluster: FakeCluster) -> None:
    host = await fake_cluster.start_agent("h1")  # the default policy: host ports 1024-65535
    spec = pb.ServiceSpec(name="web", image=IMAGE, replicas=1)
    spec.ports.add(host_port=80, container_port=8080, protocol="tcp")
    expected = refusal(spec, HostPolicy())
    assert expected is not None
    task = await rejected_task(fake_cluster, spec)
    assert task.status.error == expected
    assert host.runtime.count("create") == 0
    assert host.runtime.count("pull") == 0

    listed = await cluster_cli(fake_cluster, "ps", "--all", "-o", "json")
    assert listed.exit_code == 0, listed.output
    row = next(r for r in json.loads(listed.stdout) if r["id"] == task.id)
    assert (row["state"], row["error"], row["cause"]) == ("rejected", expected, "host")
    assert row["detail"] == f"host fault: {expected}"
    table = await cluster_cli(fake_cluster, "ps", "--all")
    assert table.exit_code == 0, table.output
    line = next(line for line in table.stdout.splitlines() if line.startswith(task.id[:12]))
    assert "rejected" in line
    assert line.rstrip().endswith(expected)


async def test_a_bind_mount_is_refused_by_default_naming_the_mount_and_the_setting(fake_cluster: FakeCluster) -> None:
    host = await fake_cluster.start_agent("h1")  # the default policy: no host path may be bound
    spec = pb.ServiceSpec(name="web", image=IMAGE, replicas=1)
    spec.mounts.add(type=pb.Mount.TYPE_BIND, source="/etc", target="/host-etc", read_only=True)
    task = await rejected_task(fake_cluster, spec)
    assert task.status.error == refusal(spec, HostPolicy())
    assert 'services.web.mounts[0].source: bind mount of host path "/etc" is not allowed' in task.status.error
    assert "--allow-bind-paths" in task.status.error
    assert task.status.cause == pb.TaskStatus.CAUSE_HOST
    assert host.runtime.count("create") == 0

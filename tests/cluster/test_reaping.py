"""A container labelled for a node but for no task is reaped after the grace period; others are never touched."""

from __future__ import annotations

import asyncio
import time

import pytest

from agent.runtime.base import ContainerSpec
from agent.runtime.docker import DockerRuntime
from tests.cluster.harness import ClusterHarness
from tests.polling import wait_for

# Shorter than the agent's default (30 s) so the test waits less; the agents get it through --stranger-grace.
STRANGER_GRACE = 5.0


async def _create(url: str, spec: ContainerSpec) -> str:
    runtime = DockerRuntime(url)
    try:
        container_id = await runtime.create(spec)
        await runtime.start(container_id)
        return container_id
    finally:
        await runtime.close()


async def _ids(url: str) -> set[str]:
    runtime = DockerRuntime(url)
    try:
        return {c.id for c in await runtime.list({})}
    finally:
        await runtime.close()


async def _remove(url: str, container_id: str) -> None:
    runtime = DockerRuntime(url)
    try:
        await runtime.remove(container_id)
    finally:
        await runtime.close()


@pytest.mark.parametrize("dev_cluster", [{"hosts": 2, "stranger_grace": STRANGER_GRACE}], indirect=True)
def test_strangers_are_reaped_after_the_grace_and_foreign_containers_left_alone(dev_cluster: ClusterHarness) -> None:
    node_id = {n["hostname"]: n["id"] for n in dev_cluster.json("nodes")}["h2"]
    url = dev_cluster.cluster.docker_url("h2")
    ours = asyncio.run(
        _create(
            url,
            ContainerSpec(
                name="leftover-task",
                image="dockyard-test:latest",
                command=("sleep", "3600"),
                labels={"dockyard.managed": "true", "dockyard.node.id": node_id, "dockyard.task.id": "no-such-task"},
            ),
        )
    )
    foreign = asyncio.run(
        _create(url, ContainerSpec(name="not-ours", image="dockyard-test:latest", command=("sleep", "3600")))
    )
    try:
        created = time.monotonic()
        wait_for(lambda: ours not in asyncio.run(_ids(url)), STRANGER_GRACE + 20, "the stranger reaped", every=0.5)
        assert time.monotonic() - created >= STRANGER_GRACE - 1, "reaped before its grace period"
        assert foreign in asyncio.run(_ids(url)), "a container without our labels is never touched"
    finally:
        asyncio.run(_remove(url, foreign))

"""The Docker adapter's list() inspects a bounded number of containers at once (each inspect holds a connection)."""

from __future__ import annotations

import asyncio
from typing import Any

from agent.runtime import docker
from agent.runtime.base import ContainerInfo, ContainerNotFound, ContainerState


class _Summary:
    def __init__(self, container_id: str) -> None:
        self.id = container_id


class _Containers:
    """Stands in for aiodocker's containers API: lists the given ids, whatever the filters."""

    def __init__(self, ids: list[str]) -> None:
        self._ids = ids

    async def list(self, **_query: Any) -> list[_Summary]:
        return [_Summary(i) for i in self._ids]


class _Client:
    def __init__(self, ids: list[str]) -> None:
        self.containers = _Containers(ids)


class CountingRuntime(docker.DockerRuntime):
    """The real list() over a client that lists `ids`, with inspects that count how many run at once."""

    def __init__(self, ids: list[str], gone: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self._fake = _Client(ids)
        self._gone = gone
        self.in_flight = 0
        self.most_in_flight = 0

    def _client(self) -> Any:
        return self._fake

    async def inspect(self, container_id: str) -> ContainerInfo:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)  # let every other inspect that may start, start
            if container_id in self._gone:
                raise ContainerNotFound(container_id)
            return ContainerInfo(
                id=container_id, name=container_id, image="img", labels={}, state=ContainerState.RUNNING
            )
        finally:
            self.in_flight -= 1


async def test_list_inspects_a_bounded_number_at_once_and_returns_every_container() -> None:
    ids = [f"c{i}" for i in range(40)]
    assert len(ids) > docker._LIST_INSPECTS
    runtime = CountingRuntime(ids, gone=frozenset({"c3"}))
    infos = await runtime.list({"dockyard.node.id": "n1"})
    assert sorted(i.id for i in infos) == sorted(set(ids) - {"c3"})
    assert runtime.most_in_flight == docker._LIST_INSPECTS

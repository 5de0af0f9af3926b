"""The link hands NetworkMap and DnsTable to the NetworkManager, and the worker's containers join the networks."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.link import ControllerLink
from agent.network.manager import NetworkManager
from agent.reporter import Reporter
from agent.runtime.fake import FakeRuntime
from agent.task_book import TaskBook
from agent.worker import Worker
from dockyard.clock import SystemClock
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb
from tests.unit.test_link import CONNECT_TIMEOUT, IMAGE, PERIOD, FakeController, full_set, serving, spec, task, until


async def test_map_and_dns_arrive_and_a_task_runs_on_its_network(tmp_path: Path) -> None:
    network_map = apb.NetworkMap(
        version=3,
        pool="10.128.0.0/9",
        subnets=[
            apb.NetworkSubnet(network="dockyard", node_id="n1", node_address="127.0.0.1", subnet="10.128.0.0/24"),
            apb.NetworkSubnet(network="dockyard", node_id="n2", node_address="192.0.2.7", subnet="10.128.1.0/24"),
        ],
    )
    table = apb.DnsTable(version=1, full=True, records=[apb.DnsRecord(name="web.dockyard", addresses=["10.128.1.2"])])
    controller = FakeController()
    # The dispatcher sends the map before the tasks that need it.
    controller.first_messages = [
        apb.ControllerMessage(network_map=network_map),
        apb.ControllerMessage(dns=table),
        full_set([task("t1")], [spec()]),
    ]
    clock = SystemClock()
    runtime = FakeRuntime(images=[IMAGE])
    manager = NetworkManager(runtime, "n1", state_dir=tmp_path, clock=clock)
    book = TaskBook(tmp_path / "tasks.pb", clock=clock)
    reporter = Reporter()
    worker = Worker(runtime, book, reporter, "n1", clock=clock, networks=manager)

    async def describe() -> pb.NodeDescription:
        return pb.NodeDescription(hostname="h1")

    async with serving(controller) as address:
        link = ControllerLink(
            address,
            "n1",
            describe,
            book,
            worker,
            reporter,
            PERIOD,
            connect_timeout=CONNECT_TIMEOUT,
            clock=clock,
            network=manager,
        )
        running = asyncio.create_task(link.run())
        try:
            await until(
                lambda: "t1" in controller.statuses and controller.statuses["t1"].state == pb.TASK_STATE_RUNNING,
                "t1 running",
            )
            assert manager.plan.version == 3
            assert [str(a) for a in manager.table.lookup("web.dockyard") or ()] == ["10.128.1.2"]
            (container,) = await runtime.list({})
            assert list(container.addresses) == ["dockyard"]
            assert container.addresses["dockyard"].startswith("10.128.0.")
            assert runtime.aliases(container.id) == {"dockyard": (container.id[:12],)}  # no service alias
            await until(lambda: bool(controller.statuses["t1"].addresses), "t1's address reported")
            assert dict(controller.statuses["t1"].addresses) == {"dockyard": container.addresses["dockyard"]}
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await worker.close()

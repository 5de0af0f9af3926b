"""The agent: wires the runtime, the task book, the task loops, the Docker observer and the controller link."""

from __future__ import annotations

import asyncio
import platform

import structlog

from agent.commands import CommandHandlers
from agent.config import AgentConfig
from agent.disconnect import overdue
from agent.files import FILES_DIR, Files
from agent.identity import (
    TASK_BOOK_FILE,
    CertificateKeeper,
    ClusterGuard,
    load_credentials,
    load_membership,
    load_or_create_node_id,
)
from agent.images import ImageLoader, Images
from agent.link import ControllerLink
from agent.network.dns import DnsServer, NameTable
from agent.network.manager import HostSide, NetworkManager
from agent.observer import Observer
from agent.reporter import Reporter
from agent.runtime.base import ContainerRuntime, HostFacts, RuntimeFailure
from agent.task_book import TaskBook
from agent.worker import Worker
from dockyard import __version__
from dockyard.clock import Clock, SystemClock
from dockyard.limits import DEFAULT_CONTROLLER
from dockyard.v1 import types_pb2 as pb

log = structlog.get_logger()


class Agent:
    """One host's agent; run() keeps going until cancelled, whatever the controller or Docker do."""

    def __init__(
        self,
        config: AgentConfig,
        runtime: ContainerRuntime,
        clock: Clock | None = None,
        *,
        host_network: HostSide | None = None,
    ) -> None:
        """`host_network` (agent.network.host.HostNetwork on a real host) lets the agent route, filter and serve
        DNS; without it only Docker networks are made (tests in the machine's own namespace)."""
        self.config = config
        self.runtime = runtime
        self.clock: Clock = clock or SystemClock()
        self.keeper: CertificateKeeper | None = None
        if config.insecure:
            self.node_id = load_or_create_node_id(config.state_dir)
            self.controller = config.controller or DEFAULT_CONTROLLER
            self.guard = ClusterGuard(config.state_dir, None)
        else:
            # NotJoined, saying how to join, when this host has no identity yet.
            membership = load_membership(config.state_dir)
            self.keeper = CertificateKeeper(config.state_dir, load_credentials(config.state_dir), self.clock)
            self.node_id = membership.node_id
            self.controller = config.controller or membership.controller
            self.guard = ClusterGuard(config.state_dir, membership)
        keeper = self.keeper
        self.book = TaskBook(config.state_dir / TASK_BOOK_FILE, clock=self.clock)
        self.reporter = Reporter()
        self.network = NetworkManager(
            runtime,
            self.node_id,
            host=host_network,
            dns=DnsServer(NameTable(), clock=self.clock) if host_network is not None else None,
            state_dir=config.state_dir,
            clock=self.clock,
            book=self.book,
        )
        self.images = Images(runtime, self.clock)
        self.files = Files(config.files_dir or config.state_dir / FILES_DIR, self.book, clock=self.clock)
        # What the controller may ask of this agent through its session; others register theirs here too.
        self.commands = CommandHandlers()
        self.commands.register("image_load", ImageLoader(runtime, self.images, self.clock))
        self.worker = Worker(
            runtime,
            self.book,
            self.reporter,
            self.node_id,
            clock=self.clock,
            parallel_operations=config.parallel_operations,
            policy=config.policy,
            images=self.images,
            networks=self.network,
            files=self.files,
        )
        self.commands.register("volume_remove", self.worker.volumes.remove)
        self.observer = Observer(
            runtime,
            self.book,
            self.worker,
            self.node_id,
            relist_period=config.relist_period,
            stranger_grace=config.stranger_grace,
            clock=self.clock,
        )
        self.link = ControllerLink(
            self.controller,
            self.node_id,
            self.describe,
            self.book,
            self.worker,
            self.reporter,
            config.heartbeat_period,
            connect_timeout=config.connect_timeout,
            clock=self.clock,
            credentials=lambda: keeper.credentials if keeper is not None else None,
            guard=self.guard,
            network=self.network,
            commands=self.commands,
            files=self.files,
        )
        self._facts: HostFacts | None = None

    async def describe(self) -> pb.NodeDescription:
        """Returns this host's facts for the hello; the last known ones when Docker does not answer."""
        try:
            self._facts = await self.runtime.host_facts()
        except RuntimeFailure:
            if self._facts is None:
                raise
        facts = self._facts
        return pb.NodeDescription(
            hostname=self.config.hostname or facts.hostname or platform.node(),
            labels=dict(self.config.labels),
            cpus=facts.cpus,
            memory_bytes=facts.memory_bytes,
            docker_version=facts.docker_version,
            os=facts.os,
            arch=facts.arch,
            agent_version=__version__,
        )

    async def _enforce_on_disconnect(self) -> None:
        """Stops the containers of tasks whose on_disconnect.stop_after ran out while cut off."""
        while True:
            await self.clock.sleep(min(1.0, self.config.heartbeat_period))
            away = self.link.disconnected_for()
            if not away:
                continue
            stopped = []
            for task in overdue(self.book, self.book.spec_of, away):
                if self.book.drop(task.id):
                    stopped.append(task.id)
                    log.warning(
                        "stopping a task cut off from the controller",
                        task_id=task.id,
                        service=task.service_name,
                        away_seconds=round(away, 1),
                    )
            if stopped:
                self.book.save()
                self.worker.wake(stopped)

    async def run(self) -> None:
        """Resumes from the persisted tasks, then converges and talks to the controller until cancelled."""
        self.book.load()
        self.network.load()
        log.info(
            "agent starting",
            node_id=self.node_id,
            tasks=len(self.book),
            controller=self.controller,
            host_policy=self.config.policy.settings(),
        )
        try:
            await self.observer.relist()
        except RuntimeFailure as exc:
            log.warning("docker not answering at start", error=str(exc))
        self.worker.wake([t.id for t in self.book], stale=True)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.observer.run())
                group.create_task(self.link.run())
                group.create_task(self.files.run())
                group.create_task(self._enforce_on_disconnect())
                group.create_task(self.network.run())
                if self.keeper is not None:
                    group.create_task(self.keeper.keep_renewed(self.controller))
        finally:
            await self.worker.close()
            self.book.close()

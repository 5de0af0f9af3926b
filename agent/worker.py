"""Drives each task toward its desired state, one runtime operation per step, and reports transitions."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import replace

import structlog

from agent.container_spec import container_name, container_spec, stop_grace, volume_labels, volume_mounts
from agent.health import ProbeLoop, ProbeTracker, agent_probed, probe_settings, task_health
from agent.images import Images, ImageUnavailable, ImageWaiting
from agent.outages import Outages
from agent.policy import HostPolicy, refusal
from agent.preparers import FilePreparer, NetworkPreparer, NoFiles, NoNetworks
from agent.reporter import Reporter
from agent.runtime.base import (
    ContainerInfo,
    ContainerNotFound,
    ContainerRuntime,
    ContainerState,
    DaemonShuttingDown,
    Health,
    HealthStatus,
    ImageNotFound,
    NameConflict,
    NotDockyards,
    RuntimeFailure,
    RuntimeUnavailable,
)
from agent.step import Op, Step, next_step, start_report_stands
from agent.task_book import TaskBook
from agent.volumes import Volumes
from dockyard import labels
from dockyard.backoff import Backoff
from dockyard.clock import Clock, SystemClock
from dockyard.logs import Throttle
from dockyard.task_state import is_terminal, state_name
from dockyard.timestamps import to_timestamp
from dockyard.v1 import types_pb2 as pb

log = structlog.get_logger()

MAX_STEPS_PER_PASS = 16
# How Docker refuses a bind mount of a host path that does not exist (it never creates one for a Mount).
_MISSING_BIND_SOURCE = "bind source path does not exist"


class _Rejected(Exception):
    """The operation can never succeed for this task; it ends in the given state."""

    def __init__(self, state: int, error: str, exit_code: int = 0, *, cause: int) -> None:
        super().__init__(error)
        self.state = state
        self.error = error
        self.exit_code = exit_code
        self.cause = cause


_HOST = pb.TaskStatus.CAUSE_HOST
_TASK = pb.TaskStatus.CAUSE_TASK


class Worker:
    """One loop per task; loops wake on assignment changes, container events and re-lists."""

    def __init__(
        self,
        runtime: ContainerRuntime,
        book: TaskBook,
        reporter: Reporter,
        node_id: str,
        *,
        clock: Clock | None = None,
        parallel_operations: int = 8,
        policy: HostPolicy | None = None,
        networks: NetworkPreparer | None = None,
        files: FilePreparer | None = None,
        images: Images | None = None,
    ) -> None:
        """Drives the book's tasks on the runtime; `policy` (default: HostPolicy()) says what specs may ask.

        `networks` and `files` prepare a container's networks and secret/config files before it is created
        (defaults: none, the container stays on Docker's default bridge).
        """
        self._runtime = runtime
        self._networks: NetworkPreparer = networks or NoNetworks()
        self._files: FilePreparer = files or NoFiles()
        self._book = book
        self._reporter = reporter
        self._node_id = node_id
        self._clock: Clock = clock or SystemClock()
        self._policy = policy or HostPolicy()
        self.images = images or Images(runtime, self._clock)
        """How a missing image is had: pulled with credentials, or waited for a push (agent/images.py)."""
        self.volumes = Volumes(runtime, self._clock)
        """The volumes this agent made: listed in the hello, removed on the controller's VolumeRemove."""
        # Whoever can apply services can make every task refused; one warning per service now and then is enough.
        self._refusal_logs = Throttle(self._clock, interval=60.0, burst=1)
        # A flapping health check changes its streak at every probe (10 a second at the shortest interval).
        self._health_logs = Throttle(self._clock, interval=60.0, burst=3)
        self._limit = asyncio.Semaphore(parallel_operations)
        self._containers: dict[str, ContainerInfo | None] = {}
        self._stale: set[str] = set()
        self._wakes: dict[str, asyncio.Event] = {}
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._probes: dict[str, tuple[str, ProbeLoop]] = {}  # task id -> (container id, its prober)
        self.outages = Outages()
        """When Docker was away; the observer and the task loops record what they see."""

    @property
    def known_containers(self) -> dict[str, ContainerInfo | None]:
        """The cached container of each task (None: looked up and absent)."""
        return dict(self._containers)

    def wake(self, task_ids: Iterable[str], stale: bool = False) -> None:
        """Makes the tasks' loops run a pass; stale means their cached container must be looked up again."""
        for task_id in task_ids:
            if stale:
                self._stale.add(task_id)
            event = self._wakes.get(task_id)
            if event is None:
                event = self._wakes[task_id] = asyncio.Event()
                self._loops[task_id] = asyncio.create_task(self._loop(task_id, event), name=f"task-{task_id[:12]}")
            event.set()

    async def close(self) -> None:
        """Stops every task loop and prober (containers keep running)."""
        loops = list(self._loops.values())
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        for task_id in list(self._probes):
            await self._stop_probe(task_id)

    async def _loop(self, task_id: str, event: asyncio.Event) -> None:
        backoff = Backoff(base=0.5, cap=10.0)
        try:
            while True:
                await event.wait()
                event.clear()
                try:
                    if await self._converge(task_id):
                        return
                    backoff.reset()
                except ImageWaiting:
                    pass  # reported; Images.loaded wakes the task when the push brought its image
                except RuntimeFailure as exc:
                    # The daemon is away or flaky: keep what runs, and try again later.
                    if isinstance(exc, RuntimeUnavailable):
                        self.outages.went_down(self._clock.now())
                    delay = backoff.next_delay()
                    log.warning(
                        "task step failed; retrying",
                        task_id=task_id,
                        error=str(exc),
                        retry_in=round(delay, 2),
                    )
                    self._stale.add(task_id)
                    await self._clock.sleep(delay)
                    event.set()
        finally:
            if self._loops.get(task_id) is asyncio.current_task():
                del self._loops[task_id]
                del self._wakes[task_id]
                probe = self._probes.pop(task_id, None)
                if probe is not None:
                    # Not awaited: this loop may be being cancelled; the prober's task ends on its own.
                    probe[1].close_soon()

    async def _converge(self, task_id: str) -> bool:
        """Runs steps until idle; returns True when the task is finished and forgotten."""
        for _ in range(MAX_STEPS_PER_PASS):
            task = self._book.get(task_id)
            if task is None:
                return True
            container = await self._container(task_id)
            container = await self._with_health(task, container)
            step = next_step(task, container, host_fault=await self._ended_by_docker(task, container))
            if step.idle:
                if self._finished(task, container):
                    self._book.forget(task_id)
                    self._book.save_soon()
                    self._containers.pop(task_id, None)
                    await self._stop_probe(task_id)
                    return True
                return False
            await self._perform(task, step, container)
        self._wake_later(task_id)
        return False

    async def _ended_by_docker(self, task: pb.Task, container: ContainerInfo | None) -> bool:
        """Tells whether a container that ended (and is to be reported so) ended because Docker went away."""
        if container is None or container.state not in (ContainerState.EXITED, ContainerState.DEAD):
            return False
        if is_terminal(task.status.state) or task.desired_state != pb.DESIRED_STATE_RUNNING:
            return False
        if not self.outages.covers(container.finished_at):
            try:
                # Docker stops its containers only after it stopped taking new connections.
                await self._runtime.ping()
            except RuntimeUnavailable:
                self.outages.went_down(self._clock.now())
        return self.outages.covers(container.finished_at)

    async def _with_health(self, task: pb.Task, container: ContainerInfo | None) -> ContainerInfo | None:
        """The container with the health the agent's own prober found, for a task with an http or tcp check.

        Starts a prober for a running container of such a task and stops it once the container is not running.
        """
        spec = self._book.spec_of(task)
        probed = spec is not None and agent_probed(spec) and task.desired_state == pb.DESIRED_STATE_RUNNING
        if (
            container is None
            or container.state is not ContainerState.RUNNING
            or not probed
            or is_terminal(task.status.state)
        ):
            await self._stop_probe(task.id)
            return container
        assert spec is not None
        current = self._probes.get(task.id)
        if current is not None and current[0] != container.id:
            await self._stop_probe(task.id)
            current = None
        if current is None:
            if not container.ip_address:
                health = Health(HealthStatus.STARTING, 0, "the container has no IP address to probe")
                return replace(container, health=health)
            current = (container.id, self._start_probe(task, spec.healthcheck, container))
            self._probes[task.id] = current
        return replace(container, health=current[1].health)

    def _start_probe(self, task: pb.Task, check: pb.HealthCheck, container: ContainerInfo) -> ProbeLoop:
        """Starts probing a running container; its start period counts from the container's start."""
        settings = probe_settings(check)
        since_start = 0.0
        if container.started_at is not None:
            since_start = max(0.0, (self._clock.now() - container.started_at).total_seconds())
        ends = self._clock.monotonic() + max(0.0, settings.start_period - since_start)
        # A task already RUNNING was healthy when last reported (an agent restart): it stays so until probed.
        initial = Health(HealthStatus.HEALTHY) if task.status.state == pb.TASK_STATE_RUNNING else None
        task_id = task.id
        return ProbeLoop(
            check,
            container.ip_address,
            ProbeTracker(settings, ends, initial),
            self._clock,
            lambda _: self.wake([task_id]),
        )

    async def _stop_probe(self, task_id: str) -> None:
        probe = self._probes.pop(task_id, None)
        if probe is not None:
            await probe[1].close()

    def _finished(self, task: pb.Task, container: ContainerInfo | None) -> bool:
        return container is None and task.desired_state != pb.DESIRED_STATE_RUNNING and is_terminal(task.status.state)

    def _wake_later(self, task_id: str) -> None:
        event = self._wakes.get(task_id)
        if event is not None:
            event.set()

    async def _container(self, task_id: str) -> ContainerInfo | None:
        """Returns the task's container, looking it up when unknown or marked stale."""
        if task_id in self._containers and task_id not in self._stale:
            return self._containers[task_id]
        task = self._book.get(task_id)
        if task_id not in self._stale and task is not None and task.status.state <= pb.TASK_STATE_PREPARING:
            # A task not yet created has no container, but for a crash between create and record; then
            # the create meets a name conflict and adopts the container, so no look-up is needed here.
            self._containers[task_id] = None
            return None
        self._stale.discard(task_id)
        cached = self._containers.get(task_id)
        info: ContainerInfo | None = None
        async with self._limit:
            if cached is not None:
                with contextlib.suppress(ContainerNotFound):
                    info = await self._runtime.inspect(cached.id)
            else:
                found = await self._runtime.list({labels.TASK_ID: task_id, labels.NODE_ID: self._node_id})
                info = found[0] if found else None
        # Docker answered (a cached container proves nothing about Docker, so only here).
        self.outages.came_back(self._clock.now())
        self._containers[task_id] = info
        return info

    async def _perform(self, task: pb.Task, step: Step, container: ContainerInfo | None) -> None:
        try:
            container_id = await self._operate(task, step.op, container)
        except _Rejected as exc:
            cid = container.id if container else ""
            self._report(task, exc.state, "", exc.error, exc.exit_code, cid, cause=exc.cause)
            return
        if step.report is None:
            return
        after = self._containers.get(task.id) if step.op is not Op.NONE else container
        if step.op is Op.START and after is not None:
            after = await self._with_health(task, after)
        if not start_report_stands(step, after):
            return
        health = step.health
        if health is None and after is not None and after.health is not None:
            health = task_health(after.health)
        exit_code = step.exit_code
        if step.op is Op.STOP and after is not None:
            exit_code = after.exit_code  # an unhealthy container's code from the stop
        cid = container_id or (container.id if container else task.status.container_id)
        addresses = self._addresses(after)
        self._report(
            task,
            step.report,
            step.message,
            step.error,
            exit_code,
            cid,
            cause=step.cause,
            health=health,
            addresses=addresses,
        )

    def _addresses(self, container: ContainerInfo | None) -> dict[str, str]:
        """The running container's IPv4 address on each cluster network, by the cluster network's name."""
        if container is None or container.state is not ContainerState.RUNNING:
            return {}
        found: dict[str, str] = {}
        for docker_name, address in container.addresses.items():
            network = self._networks.network_name(docker_name)
            if network is not None:
                found[network] = address
        return found

    async def _operate(self, task: pb.Task, op: Op, container: ContainerInfo | None) -> str:
        """Performs one operation; returns the container id it concerns ("" when none)."""
        if op is Op.NONE:
            return ""
        if op is Op.PREPARE:
            spec = self._book.spec_of(task)
            if spec is None:
                raise self._no_spec(task)
            self._check_policy(task, spec)  # before the pull: a refused image need not be fetched
            async with self._limit:
                await self._prepare(task, spec.image)
            return ""
        if op is Op.CREATE:
            full = self._book.with_spec(task)
            if full is None:
                raise self._no_spec(task)
            # Again here: a task the book resumes after a restart under a stricter policy skips PREPARE.
            self._check_policy(task, full.spec)
            async with self._limit:
                await self._prepare(task, full.spec.image)  # at once when present; a task that waited for a push
                return await self._create(full)
        async with self._limit:
            assert container is not None, f"{op} needs a container"
            try:
                if op is Op.START:
                    try:
                        await self._runtime.start(container.id)
                    except (ContainerNotFound, RuntimeUnavailable):
                        raise
                    except DaemonShuttingDown as exc:
                        raise _Rejected(pb.TASK_STATE_FAILED, f"start failed: {exc}", cause=_HOST) from exc
                    except RuntimeFailure as exc:
                        # Docker records an exit code (127: no such command) on a container that failed to start.
                        code = 0
                        with contextlib.suppress(RuntimeFailure):
                            code = (await self._runtime.inspect(container.id)).exit_code
                        raise _Rejected(pb.TASK_STATE_FAILED, f"start failed: {exc}", code, cause=_TASK) from exc
                elif op is Op.STOP:
                    # Without its spec (never sent) a task still stops, with the default grace.
                    await self._runtime.stop(container.id, stop_grace(self._book.with_spec(task) or task))
                elif op is Op.REMOVE:
                    await self._runtime.remove(container.id)
                    self._containers[task.id] = None
                    return container.id
                self._containers[task.id] = await self._runtime.inspect(container.id)
            except ContainerNotFound:
                self._containers[task.id] = None
            return container.id

    async def _prepare(self, task: pb.Task, image: str) -> None:
        """Gets the image (agent/images.py); a pushable one makes the task wait in PREPARING, saying so."""
        try:
            await self.images.obtain(image)
        except ImageWaiting as waiting:
            if (task.status.state, task.status.message) != (pb.TASK_STATE_PREPARING, waiting.message):
                self._report(task, pb.TASK_STATE_PREPARING, waiting.message, "", 0, "")
            self.images.wake_on_load(image, task.id, lambda: self.wake([task.id]))
            raise
        except ImageUnavailable as exc:
            raise _Rejected(pb.TASK_STATE_REJECTED, str(exc), cause=_HOST) from exc

    def _no_spec(self, task: pb.Task) -> _Rejected:
        error = (
            f"the controller sent no spec for service {task.service_name or task.service_id!r} "
            f"revision {task.revision}; the task is not started"
        )
        log.warning("task without a spec", task_id=task.id, service_id=task.service_id, revision=task.revision)
        # The controller's or the link's fault, not the task's: another node may well get the spec.
        return _Rejected(pb.TASK_STATE_REJECTED, error, cause=_HOST)

    def _check_policy(self, task: pb.Task, spec: pb.ServiceSpec) -> None:
        """Raises _Rejected when this host's policy refuses what the spec asks of the host."""
        error = refusal(spec, self._policy)
        if error is None:
            return
        suppressed = self._refusal_logs.allow(task.service_id)
        if suppressed is not None:
            log.warning(
                "host policy refused a task",
                task_id=task.id,
                service=task.service_name,
                error=error,
                suppressed=suppressed,
            )
        # This host's policy refuses it; another host's may not.
        raise _Rejected(pb.TASK_STATE_REJECTED, error, cause=_HOST)

    async def _create(self, task: pb.Task) -> str:
        """Creates the volumes, networks and files of a task whose spec is filled in, then its container.

        A preparer that is not ready yet raises RuntimeFailure: the loop retries, and the task stays PREPARING.
        """
        for mount in volume_mounts(task.spec):
            try:
                await self._runtime.ensure_volume(mount.source, volume_labels(task.spec, mount))
            except NotDockyards as exc:
                # Another tool's volume of that name: its data is never mounted. This host's fault; another may do.
                raise _Rejected(pb.TASK_STATE_REJECTED, str(exc), cause=_HOST) from exc
        try:
            attachments = await self._networks.prepare(task)
            file_mounts = await self._files.mounts(task)
        except RuntimeUnavailable:
            raise
        except RuntimeFailure as exc:
            # Not ready yet (no subnet for a network here, file data not arrived): say so, and let the loop retry.
            waiting = f"waiting: {exc}"
            if (task.status.state, task.status.message) != (pb.TASK_STATE_PREPARING, waiting):
                self._report(task, pb.TASK_STATE_PREPARING, waiting, "", 0, "")
            raise
        spec = container_spec(
            task,
            self._node_id,
            networks=attachments.networks,
            dns=attachments.dns,
            dns_search=attachments.dns_search,
            file_mounts=file_mounts,
        )
        try:
            container_id = await self._runtime.create(spec)
        except ImageNotFound as exc:
            # Present at PREPARE and gone now: removed on this host.
            raise _Rejected(pb.TASK_STATE_REJECTED, f"image {task.spec.image!r} not found: {exc}", cause=_HOST) from exc
        except DaemonShuttingDown as exc:
            raise _Rejected(pb.TASK_STATE_REJECTED, f"create failed: {exc}", cause=_HOST) from exc
        except NameConflict as exc:
            # Ours from a crash between create and record? Adopt it; otherwise the name belongs to a stranger.
            found = await self._runtime.list({labels.TASK_ID: task.id, labels.NODE_ID: self._node_id})
            if found:
                self._containers[task.id] = found[0]
                return found[0].id
            raise _Rejected(
                pb.TASK_STATE_REJECTED,
                f"container name {container_name(task)!r} is taken by another container",
                cause=_HOST,
            ) from exc
        except RuntimeUnavailable:
            raise
        except RuntimeFailure as exc:
            if _MISSING_BIND_SOURCE not in str(exc):
                raise
            # The host lacks a path the spec binds: this host's fault, and retrying here cannot mend it.
            raise _Rejected(pb.TASK_STATE_REJECTED, f"create failed: {exc}", cause=_HOST) from exc
        # Known without asking Docker: it was just created and nobody started it.
        self._containers[task.id] = ContainerInfo(
            id=container_id, name=spec.name, image=spec.image, labels=spec.labels, state=ContainerState.CREATED
        )
        return container_id

    def _report(
        self,
        task: pb.Task,
        state: int,
        message: str,
        error: str,
        exit_code: int,
        container_id: str,
        *,
        cause: int = pb.TaskStatus.CAUSE_UNSPECIFIED,
        health: pb.TaskHealth | None = None,
        addresses: dict[str, str] | None = None,
    ) -> None:
        status = pb.TaskStatus(
            state=state,  # type: ignore[arg-type]
            message=message,
            error=error,
            exit_code=exit_code,
            container_id=container_id,
            cause=cause,  # type: ignore[arg-type]
            health=health,
            addresses=addresses,
        )
        status.timestamp.CopyFrom(to_timestamp(self._clock.now()))
        same_state = task.status.state == state  # a health report; read before the book takes the new status
        self._book.set_status(task.id, status)
        self._book.save_soon()
        self._reporter.report(task.id, status)
        suppressed = self._health_logs.allow(task.id) if same_state else 0
        if suppressed is None:
            return
        log.info(
            "task state",
            task_id=task.id,
            service=task.service_name,
            slot=task.slot,
            state=state_name(state),
            message=message or error,
            health=pb.TaskHealth.State.Name(health.state) if health is not None else None,
            failing_streak=health.failing_streak if health is not None else None,
            suppressed=suppressed or None,
        )

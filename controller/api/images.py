"""PushImage: an image archive from the caller, through the agents' sessions, to the nodes that lack it.

The first request names the image, its id, the archive's size and the nodes (ids or host names; none: every
ready node). Every request carries the next piece of the `docker save` archive, the last one says so. The
controller sends each piece as an ImageLoad command (controller.commands, served by the dispatcher) to every target in
step: a target answers the first piece "present" when its Docker has the image (and gets nothing more), and
acknowledges every other piece once its Docker took the one before; the next piece waits until every target
still loading has fewer than IMAGE_PIECES_IN_FLIGHT unacknowledged, so the push goes at the pace of the
slowest target and holds at most that many pieces per target. The controller reads the caller's stream only
as fast as that, so nothing is buffered beyond the window.

A target that fails (its agent's error, its session dropping, a deadline) is reported done with its error and
the others go on. Progress goes back per node as PushImageProgress (bytes acknowledged, then done). Targets
that loaded the image, or had it, are recorded in the image registry (controller/images.py).

The caller sends the first request alone and waits for the first progress: once the request is accepted, one
progress message per target (nothing done yet) says so. A refused first request is answered at once, with
nothing else of the caller's in flight. Once accepted, the push reads the caller's stream to its end before
it ends (at most DRAIN_PIECES more pieces), also when every target finished early (all had the image): gRPC
ends a call badly for both sides (INTERNAL, and a GOAWAY for the whole connection) when the server finishes
while requests are still arriving, so a caller stops sending as soon as every target is done.

Every read of the caller's stream waits at most PUSH_CALLER_IDLE_SECONDS: a caller that stalls (sends no next
piece) would otherwise hold one of the PUSHES_AT_ONCE slots for ever. The push then ends DEADLINE_EXCEEDED
saying so, every target still loading fails with the same reason, and the slot is free.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Final

import grpc
import structlog

from controller.api.status import Context, abort, abort_invalid
from controller.commands import CommandCall, CommandFailed, CommandSender
from controller.images import IMAGE_REFERENCE_BYTES, ImageRegistry
from controller.store.base import Store
from dockyard.clock import Clock, SystemClock
from dockyard.limits import IMAGE_PIECE_BYTES, IMAGE_PIECES_IN_FLIGHT
from dockyard.spec.issues import Issue, index_path
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb

__all__ = ["PUSHES_AT_ONCE", "PUSH_CALLER_IDLE_SECONDS", "PUSH_IDLE_SECONDS", "ImagePushes"]

log = structlog.get_logger("controller.api")

# Pushes the controller runs at once; one more is refused (RESOURCE_EXHAUSTED) rather than queued.
PUSHES_AT_ONCE: Final = 4

# A target that answers nothing for this long fails (its Docker may take a while to load the last piece).
PUSH_IDLE_SECONDS: Final = 300.0

# A caller that sends no next piece for this long, while the push waits for one, ends the push (it holds a slot).
# The CLI spools `docker save` to a file first and sends from it, so a healthy caller's gaps are far shorter.
PUSH_CALLER_IDLE_SECONDS: Final = 120.0

# The largest archive a push may announce (Docker images of tens of GB exist; beyond this, use a registry).
MAX_ARCHIVE_BYTES: Final = 64 * 1024**3

# After the push ended early (every target done, or a bad piece), at most this many further pieces are read
# and dropped while waiting for the caller to stop sending.
DRAIN_PIECES: Final = 64

_PRESENT = b"present"


@dataclass
class _Target:
    """One node a push goes to, and how far it got."""

    node_id: str
    hostname: str
    call: CommandCall | None = None
    acked: int = 0  # pieces acknowledged
    bytes_done: int = 0
    done: bool = False
    present: bool = False
    error: str = ""
    reader: asyncio.Task[None] | None = field(default=None, repr=False)

    def progress(self, total: int) -> cpb.PushImageProgress:
        return cpb.PushImageProgress(
            node_id=self.node_id,
            hostname=self.hostname,
            bytes_done=total if self.done and not self.error else self.bytes_done,
            total=total,
            done=self.done,
            already_present=self.present,
            error=self.error,
        )


class _Refused(Exception):
    """A request of the stream is invalid: the push ends with INVALID_ARGUMENT naming the field."""

    def __init__(self, issue: Issue) -> None:
        super().__init__(str(issue))
        self.issue = issue


class _Stalled(Exception):
    """The caller sent nothing for the idle timeout: the push ends, freeing its slot."""


class ImagePushes:
    """Runs PushImage calls over the dispatcher's command channel."""

    def __init__(
        self,
        store: Store,
        channel: CommandSender,
        registry: ImageRegistry,
        *,
        idle_timeout: float = PUSH_IDLE_SECONDS,
        at_once: int = PUSHES_AT_ONCE,
        caller_idle: float = PUSH_CALLER_IDLE_SECONDS,
        clock: Clock | None = None,
    ) -> None:
        self._store = store
        self._channel = channel
        self._registry = registry
        self._idle = idle_timeout
        self._slots = at_once
        self._caller_idle = caller_idle
        self._clock: Clock = clock or SystemClock()
        self._running = 0

    async def push(
        self, requests: AsyncIterator[cpb.PushImageRequest], context: Context
    ) -> AsyncIterator[cpb.PushImageProgress]:
        """Streams the archive to the targets; yields per-node progress, each node's last with done set."""
        try:
            first = await self._next(requests)
        except _Stalled as exc:
            await abort(context, grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
        if first is None:
            await abort_invalid(context, [Issue("image", "the stream is empty; its first message names the image")])
        issues = _first_issues(first)
        if issues:
            await abort_invalid(context, issues)
        targets = await self._targets(first, context)
        if self._running >= self._slots:
            await abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self._slots} image pushes are running; try again when one has finished",
            )
        self._running += 1
        try:
            with self._registry.pushing(first.image):
                for target in targets:
                    yield target.progress(first.total)  # accepted: the caller may send the rest
                async for progress in self._run(first, requests, targets, context):
                    yield progress
        finally:
            self._running -= 1

    async def _targets(self, first: cpb.PushImageRequest, context: Context) -> list[_Target]:
        """The named nodes (by id or host name), or every ready node; INVALID_ARGUMENT for a name that is none."""
        nodes = await self._store.list_nodes()
        if not first.nodes:
            ready = [n for n in nodes if n.status == pb.NODE_STATUS_READY]
            if not ready:
                await abort(context, grpc.StatusCode.FAILED_PRECONDITION, "no node is ready to take the image")
            return [_Target(n.id, n.description.hostname) for n in ready]
        chosen: dict[str, pb.Node] = {}
        issues: list[Issue] = []
        for index, name in enumerate(first.nodes):
            path = index_path("nodes", index)
            matches = [n for n in nodes if n.id == name] or [n for n in nodes if n.description.hostname == name]
            if not matches:
                issues.append(Issue(path, f"{name!r} is no node; see `dockyard nodes`"))
            elif len(matches) > 1:
                issues.append(
                    Issue(path, f"{name!r} names several nodes ({', '.join(n.id for n in matches)}); use an id")
                )
            else:
                chosen.setdefault(matches[0].id, matches[0])
        if issues:
            await abort_invalid(context, issues)
        return [_Target(n.id, n.description.hostname) for n in chosen.values()]

    async def _run(
        self,
        first: cpb.PushImageRequest,
        requests: AsyncIterator[cpb.PushImageRequest],
        targets: list[_Target],
        context: Context,
    ) -> AsyncIterator[cpb.PushImageProgress]:
        total = first.total
        updates: asyncio.Queue[_Target] = asyncio.Queue()
        changed = asyncio.Event()
        log.info("image push started", image=first.image, bytes=total, nodes=[t.node_id for t in targets])
        piece = apb.ImageLoad(
            image=first.image, image_id=first.image_id, data=first.data, offset=0, total=total, last=first.last
        )
        for target in targets:
            try:
                target.call = self._channel.open(target.node_id, apb.Command(image_load=piece), idle_timeout=self._idle)
            except CommandFailed as exc:
                self._finish(target, str(exc), updates, changed, first.image)
                continue
            target.reader = asyncio.create_task(self._read(target, updates, changed, first.image))
        sender = asyncio.create_task(self._send(first, requests, targets, changed))
        try:
            while True:
                # Each update is yielded with the target's state at that moment (a copy: the target moves on).
                while not updates.empty():
                    yield updates.get_nowait().progress(total)
                if all(t.done for t in targets):
                    break
                if sender.done() and sender.exception() is not None:
                    break
                waiter = asyncio.ensure_future(updates.get())
                try:
                    # The sender is watched only while it runs: one that failed ends the push.
                    watched = {waiter} if sender.done() else {waiter, sender}
                    await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                if waiter.done() and not waiter.cancelled():
                    yield waiter.result().progress(total)
            await self._end(sender.exception() if sender.done() else None, requests, targets, context)
        finally:
            sender.cancel()
            for target in targets:
                if target.reader is not None:
                    target.reader.cancel()
                if target.call is not None:
                    target.call.close()
            await asyncio.gather(sender, *(t.reader for t in targets if t.reader), return_exceptions=True)
            log.info(
                "image push ended",
                image=first.image,
                loaded=[t.node_id for t in targets if t.done and not t.error and not t.present],
                present=[t.node_id for t in targets if t.present],
                failed={t.node_id: t.error for t in targets if t.error},
            )

    async def _end(
        self,
        error: BaseException | None,
        requests: AsyncIterator[cpb.PushImageRequest],
        targets: list[_Target],
        context: Context,
    ) -> None:
        """Ends the push as its sender ended: the caller drained unless it stalled; a refusal or stall aborts."""
        if error is None or isinstance(error, _Refused):
            await self._drain(requests)
        if isinstance(error, _Refused | _Stalled):
            reason = "refused" if isinstance(error, _Refused) else "cancelled"
            for target in targets:
                if not target.done:
                    target.error = f"push {reason}: {error}"
                    target.done = True
            if isinstance(error, _Refused):
                await abort_invalid(context, [error.issue])
            await abort(context, grpc.StatusCode.DEADLINE_EXCEEDED, str(error))
        if error is not None:
            raise error

    async def _send(
        self,
        first: cpb.PushImageRequest,
        requests: AsyncIterator[cpb.PushImageRequest],
        targets: list[_Target],
        changed: asyncio.Event,
    ) -> None:
        """Reads the caller's pieces and sends each to every target still loading, within the window."""
        offset, index, last = len(first.data), 1, first.last
        while not last:
            # The first piece is answered before any other goes: a target that has the image gets no more.
            window = 1 if index == 1 else IMAGE_PIECES_IN_FLIGHT
            # Piece `index` goes once at most `window` pieces would then be unacknowledged at any target.
            while not all(t.done or t.acked >= index + 1 - window for t in targets):
                changed.clear()
                await changed.wait()
            if all(t.done for t in targets):
                return  # nobody wants more: the caller's stream is left unread and ended by the call
            request = await self._next(requests)
            if request is None:
                raise _Refused(
                    Issue("last", f"the stream ended after {offset} of {first.total} bytes, with no last piece")
                )
            _check_piece(request, offset, first.total)
            last = request.last
            piece = apb.ImageLoad(image=first.image, data=request.data, offset=offset, total=first.total, last=last)
            offset += len(request.data)
            for target in targets:
                if target.done or target.call is None:
                    continue
                try:
                    await target.call.send(apb.Command(image_load=piece))
                except CommandFailed as exc:
                    target.call.fail(str(exc))  # its reader reports it
            index += 1

    async def _next(self, requests: AsyncIterator[cpb.PushImageRequest]) -> cpb.PushImageRequest | None:
        """The caller's next request (None at its end); _Stalled when none comes within the caller idle timeout."""
        try:
            async with self._clock.timeout(self._caller_idle):
                return await anext(requests, None)
        except TimeoutError:
            raise _Stalled(
                f"the caller sent nothing for {self._caller_idle:g} s while the push waited for its next piece; "
                "the push is cancelled: check the connection and push again"
            ) from None

    async def _drain(self, requests: AsyncIterator[cpb.PushImageRequest]) -> None:
        """Reads what the caller still sends, up to its end, DRAIN_PIECES pieces or a stall (module docstring)."""
        for _ in range(DRAIN_PIECES):
            try:
                if await self._next(requests) is None:
                    return
            except _Stalled:
                return

    async def _read(self, target: _Target, updates: asyncio.Queue[_Target], changed: asyncio.Event, image: str) -> None:
        """Follows one target's results: acks move it on, its done result (or failure) ends it."""
        assert target.call is not None
        try:
            async for result in target.call:
                if result.done:
                    target.present = result.data == _PRESENT and not result.error
                    self._finish(target, result.error, updates, changed, image)
                    return
                target.acked += 1
                with contextlib.suppress(ValueError):
                    target.bytes_done = min(int(result.data or b"0"), 2**63)
                updates.put_nowait(_snapshot(target))
                changed.set()
            self._finish(target, f"node {target.node_id} ended the load without an answer", updates, changed, image)
        except CommandFailed as exc:
            self._finish(target, str(exc), updates, changed, image)

    def _finish(
        self, target: _Target, error: str, updates: asyncio.Queue[_Target], changed: asyncio.Event, image: str
    ) -> None:
        if target.done:
            return
        target.done, target.error = True, error
        if not error:
            self._registry.add(target.node_id, image)
        updates.put_nowait(_snapshot(target))
        changed.set()


def _snapshot(target: _Target) -> _Target:
    return _Target(
        target.node_id,
        target.hostname,
        acked=target.acked,
        bytes_done=target.bytes_done,
        done=target.done,
        present=target.present,
        error=target.error,
    )


def _first_issues(first: cpb.PushImageRequest) -> list[Issue]:
    """The problems of a push's first request, each naming its field."""
    issues: list[Issue] = []
    if not first.image:
        issues.append(Issue("image", "is required: the reference pushed, e.g. app:1.2"))
    elif len(first.image.encode()) > IMAGE_REFERENCE_BYTES or any(c.isspace() for c in first.image):
        issues.append(Issue("image", f"{first.image[:64]!r} is not an image reference"))
    if not first.image_id.startswith("sha256:") or len(first.image_id) > 128:
        issues.append(Issue("image_id", "must be the image's id as Docker gives it (sha256:...)"))
    if not 0 < first.total <= MAX_ARCHIVE_BYTES:
        issues.append(Issue("total", f"must be the archive's size, 1 to {MAX_ARCHIVE_BYTES} bytes"))
    if len(first.data) > IMAGE_PIECE_BYTES:
        issues.append(Issue("data", f"{len(first.data)} bytes; a piece is at most {IMAGE_PIECE_BYTES}"))
    elif len(first.data) > first.total:
        issues.append(Issue("data", f"{len(first.data)} bytes, more than the total of {first.total}"))
    elif first.last and len(first.data) != first.total:
        issues.append(Issue("last", f"set after {len(first.data)} of {first.total} bytes"))
    return issues


def _check_piece(request: cpb.PushImageRequest, offset: int, total: int) -> None:
    """Raises _Refused when a later request is not a valid next piece."""
    if request.image or request.image_id or request.total or request.nodes:
        raise _Refused(Issue("image", "only the first message names the image, its id, total and nodes"))
    if len(request.data) > IMAGE_PIECE_BYTES:
        raise _Refused(Issue("data", f"{len(request.data)} bytes; a piece is at most {IMAGE_PIECE_BYTES}"))
    end = offset + len(request.data)
    if end > total:
        raise _Refused(Issue("data", f"the pieces add up to more than the total of {total} bytes"))
    if request.last and end != total:
        raise _Refused(Issue("last", f"set after {end} of {total} bytes"))

"""Images on the agent: getting a task's image (pull with credentials, or wait for a push) and loading pushes.

`Images` keeps what the controller said about images (Assignments.pushable_images and registry_auths, in
memory only) and decides, for the worker's prepare step, what a missing image means:

* pulled (with the RegistryAuth of the image's registry, if the controller sent one): go on;
* not pullable but pushable (some node has it, or a push is bringing it): the task waits in PREPARING
  saying so (ImageWaiting), and is woken as soon as an ImageLoad brings the image;
* otherwise: ImageUnavailable with the pull's error; the worker fails the task with CAUSE_HOST so the
  controller moves it.

`ImageLoader` is the agent's handler of ImageLoad commands (agent/commands.py): it streams the pieces into
runtime.load_image as they arrive, never holding the archive (at most one piece waits for Docker), and
acknowledges each piece once Docker took the one before, so the controller sends at the pace Docker writes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Final

import structlog

from agent.commands import Incoming
from agent.runtime.base import ContainerRuntime, ImageNotFound, RegistryAuth, RuntimeFailure
from dockyard.clock import Clock
from dockyard.images import normalize_image, registry_of
from dockyard.limits import HELLO_IMAGES
from dockyard.logs import Throttle
from dockyard.v1 import agent_pb2 as apb

__all__ = [
    "IMAGE_LOAD_SECONDS",
    "PIECE_WAIT_SECONDS",
    "PULL_RETRY_SECONDS",
    "PULL_TIMEOUT",
    "ImageLoader",
    "ImageUnavailable",
    "ImageWaiting",
    "Images",
    "waiting_message",
]

log = structlog.get_logger()

# A pull that takes longer than this has failed.
PULL_TIMEOUT: Final = 300.0

# While a task waits for a push, its image is pulled again at most this often (every wake of the task
# would otherwise ask the registry again).
PULL_RETRY_SECONDS: Final = 30.0

# A push whose next piece does not come within this is abandoned (the controller or its client went away).
PIECE_WAIT_SECONDS: Final = 120.0

# How long `docker load` may take once the last piece is in.
IMAGE_LOAD_SECONDS: Final = 600.0

# Images whose failed pull is remembered (for PULL_RETRY_SECONDS); beyond it the oldest are forgotten.
_FAILED_PULLS: Final = 1024


def waiting_message(image: str, error: str) -> str:
    """The status message of a task that waits for its image to be pushed."""
    return f"waiting for image {image} to be pushed (dockyard image push {image}): {error}"


class ImageWaiting(Exception):
    """The image is missing and cannot be pulled, but a push can bring it: the task waits (not a failure)."""

    def __init__(self, image: str, error: str) -> None:
        self.image = image
        self.message = waiting_message(image, error)
        super().__init__(self.message)


class ImageUnavailable(Exception):
    """The image is missing, cannot be pulled and no push can bring it: the host cannot run the task."""


class Images:
    """What the agent knows of images beyond its Docker: pushable ones, registry credentials, who waits."""

    def __init__(self, runtime: ContainerRuntime, clock: Clock, *, pull_timeout: float = PULL_TIMEOUT) -> None:
        self._runtime = runtime
        self._clock = clock
        self._pull_timeout = pull_timeout
        self._pushable: set[str] = set()
        self._auths: dict[str, RegistryAuth] = {}
        self._waiters: dict[str, dict[str, Callable[[], None]]] = {}  # image -> waiter key -> wake
        self._failed: dict[str, tuple[float, str]] = {}  # image -> (monotonic time, pull error)
        self._throttle = Throttle(clock, interval=60.0, burst=2)

    def note(self, assignments: apb.Assignments) -> None:
        """Takes what an Assignments message says of images: a full set replaces, an incremental one adds."""
        if assignments.kind == apb.Assignments.KIND_FULL:
            self._pushable = set()
            self._auths = {}
        self._pushable.update(normalize_image(image) for image in assignments.pushable_images)
        for auth in assignments.registry_auths:
            self._auths[auth.server] = RegistryAuth(auth.server, auth.username, auth.password)

    def pushable(self, image: str) -> bool:
        """Tells whether the controller said a push can bring this image."""
        return normalize_image(image) in self._pushable

    def auth_for(self, image: str) -> RegistryAuth | None:
        """The credentials the controller sent for the image's registry, if any."""
        return self._auths.get(registry_of(image))

    async def obtain(self, image: str) -> None:
        """Makes sure the image is here: present, or pulled now.

        Raises ImageWaiting when it cannot be pulled but is pushable, ImageUnavailable when it cannot be had,
        and RuntimeFailure (not ImageNotFound) when Docker itself is away (the caller retries).
        """
        if await self._runtime.has_image(image):
            return
        reference = normalize_image(image)
        recent = self._failed.get(reference)
        if (
            recent is not None
            and reference in self._pushable
            and self._clock.monotonic() - recent[0] < PULL_RETRY_SECONDS
        ):
            raise ImageWaiting(image, recent[1])
        try:
            async with self._clock.timeout(self._pull_timeout):
                await self._runtime.pull(image, self.auth_for(image))
            self._failed.pop(reference, None)
            return
        except ImageNotFound as exc:
            error = str(exc) or "not found"
        except TimeoutError:
            error = f"the pull took longer than {self._pull_timeout:g}s"
        self._failed[reference] = (self._clock.monotonic(), error)
        while len(self._failed) > _FAILED_PULLS:
            del self._failed[next(iter(self._failed))]
        if reference in self._pushable:
            raise ImageWaiting(image, error)
        raise ImageUnavailable(f"image {image!r} is not on this host and could not be pulled: {error}")

    def wake_on_load(self, image: str, key: str, wake: Callable[[], None]) -> None:
        """Calls `wake` once when an ImageLoad brings the image (one waiter per key: a task id)."""
        self._waiters.setdefault(normalize_image(image), {})[key] = wake

    def loaded(self, references: list[str]) -> None:
        """Records images an ImageLoad brought (or found present) and wakes the tasks waiting for them."""
        for reference in map(normalize_image, references):
            self._failed.pop(reference, None)
            for wake in self._waiters.pop(reference, {}).values():
                wake()

    async def references(self) -> list[str]:
        """This host's image references for the hello (at most HELLO_IMAGES; none when Docker is away)."""
        try:
            found = await self._runtime.list_images()
        except RuntimeFailure as exc:
            if self._throttle.allow("list images") is not None:
                log.warning("images not listed for the hello", error=str(exc))
            return []
        return found[:HELLO_IMAGES]


class ImageLoader:
    """The ImageLoad handler: streams the pushed pieces into `docker load`, acknowledging each one."""

    def __init__(
        self,
        runtime: ContainerRuntime,
        images: Images,
        clock: Clock,
        *,
        piece_wait: float = PIECE_WAIT_SECONDS,
        load_wait: float = IMAGE_LOAD_SECONDS,
    ) -> None:
        self._runtime = runtime
        self._images = images
        self._clock = clock
        self._piece_wait = piece_wait
        self._load_wait = load_wait

    async def __call__(self, incoming: Incoming) -> AsyncIterator[apb.CommandResult]:
        """Runs one push: "present" at once when Docker has the image, else load, acking every piece."""
        first = incoming.first.image_load
        if first.offset != 0:
            raise ValueError(f"image {first.image}: the first piece is at offset {first.offset}, not 0")
        if first.image_id and await self._runtime.image_id(first.image) == first.image_id:
            self._images.loaded([first.image])
            yield apb.CommandResult(done=True, data=b"present")
            return
        # One piece waits for Docker at most: the ack of a piece goes once Docker took the one before.
        pieces: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=1)

        async def chunks() -> AsyncIterator[bytes]:
            while (chunk := await pieces.get()) is not None:
                yield chunk

        load = asyncio.create_task(self._runtime.load_image(chunks()), name=f"load-{first.image}")
        try:
            piece, received = first, 0
            while True:
                if piece.offset != received:
                    raise ValueError(f"image {first.image}: piece at offset {piece.offset}, expected {received}")
                received += len(piece.data)
                if first.total and received > first.total:
                    raise ValueError(f"image {first.image}: more than the {first.total} bytes announced")
                if piece.data:
                    await _put(pieces, piece.data, load)
                if piece.last:
                    if first.total and received != first.total:
                        raise ValueError(f"image {first.image}: {received} bytes of the {first.total} announced")
                    await _put(pieces, None, load)
                    async with self._clock.timeout(self._load_wait):
                        references = await load
                    self._images.loaded([*references, first.image])
                    log.info("image loaded", image=first.image, references=references, bytes=received)
                    yield apb.CommandResult(done=True, data=", ".join(references).encode())
                    return
                yield apb.CommandResult(data=str(received).encode())
                try:
                    async with self._clock.timeout(self._piece_wait):
                        piece = (await incoming.next_part()).image_load
                except TimeoutError:
                    raise TimeoutError(
                        f"image {first.image}: no piece for {self._piece_wait:g}s after {received} bytes"
                    ) from None
        finally:
            if not load.done():
                load.cancel()
            with contextlib.suppress(BaseException):
                await load


async def _put(pieces: asyncio.Queue[bytes | None], chunk: bytes | None, load: asyncio.Task[list[str]]) -> None:
    """Hands a chunk to the load, unless the load ended first (a bad archive): then raises why."""
    put = asyncio.ensure_future(pieces.put(chunk))
    try:
        await asyncio.wait({put, load}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        put.cancel()
    if not put.done() or put.cancelled():
        if load.done() and load.exception() is not None:
            raise load.exception()  # type: ignore[misc]
        raise RuntimeFailure("docker load ended before the archive did")

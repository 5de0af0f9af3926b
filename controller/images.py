"""Which node has which image: the controller's memory of the hosts' Docker images.

Shared like the store: the dispatcher fills it from hellos and lists pushable images from it, the API's
image pushes record what they loaded (controller.server hands both the same one).

Kept in memory only: it is rebuilt from the hellos (every agent lists its images when its session opens) and
updated by push results, so a controller restart loses nothing that the next hellos do not bring back. A
node's list is what its last hello said plus what pushes loaded since; an image removed on the host by hand
stays listed until the agent's next session.

An image is pushable when some node has it or a push is bringing it: the dispatcher lists such images of the
tasks it sends in Assignments.pushable_images, and a task whose image is missing on its node then waits for
`dockyard image push` instead of failing.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable, Iterator

from dockyard.images import normalize_image
from dockyard.limits import HELLO_IMAGES

__all__ = ["IMAGE_REFERENCE_BYTES", "ImageRegistry"]

# A reference longer than this is no Docker reference (Docker allows 255 bytes of name and 128 of tag).
IMAGE_REFERENCE_BYTES = 512


class ImageRegistry:
    """Node -> images, from hellos and pushes; answers whether an image is pushable."""

    def __init__(self) -> None:
        self._by_node: dict[str, set[str]] = {}
        self._holders: Counter[str] = Counter()  # image -> how many nodes have it
        self._pushing: Counter[str] = Counter()  # image -> pushes under way

    def hello(self, node_id: str, images: Iterable[str]) -> None:
        """Replaces what the node has by its hello's list (at most HELLO_IMAGES, references only)."""
        kept: set[str] = set()
        for image in images:
            if len(kept) >= HELLO_IMAGES:
                break
            if 0 < len(image.encode()) <= IMAGE_REFERENCE_BYTES:
                kept.add(normalize_image(image))
        self.forget(node_id)
        self._by_node[node_id] = kept
        self._holders.update(kept)

    def add(self, node_id: str, image: str) -> None:
        """Records that the node has the image now (a push loaded it, or found it present)."""
        reference = normalize_image(image)
        images = self._by_node.setdefault(node_id, set())
        if reference not in images:
            images.add(reference)
            self._holders[reference] += 1

    def forget(self, node_id: str) -> None:
        """Forgets a node's images (the node was removed, or a new hello replaces them)."""
        for reference in self._by_node.pop(node_id, set()):
            self._holders[reference] -= 1
            if self._holders[reference] <= 0:
                del self._holders[reference]

    def has(self, node_id: str, image: str) -> bool:
        """Tells whether the node is known to have the image."""
        return normalize_image(image) in self._by_node.get(node_id, set())

    def holders(self, image: str) -> list[str]:
        """The nodes known to have the image, sorted."""
        reference = normalize_image(image)
        return sorted(node for node, images in self._by_node.items() if reference in images)

    def pushable(self, image: str) -> bool:
        """Tells whether some node has the image or a push is bringing it."""
        reference = normalize_image(image)
        return self._holders[reference] > 0 or self._pushing[reference] > 0

    @contextlib.contextmanager
    def pushing(self, image: str) -> Iterator[None]:
        """Marks the image pushable while a push of it is under way."""
        reference = normalize_image(image)
        self._pushing[reference] += 1
        try:
            yield
        finally:
            self._pushing[reference] -= 1
            if self._pushing[reference] <= 0:
                del self._pushing[reference]

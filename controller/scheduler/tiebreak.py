"""The seeded ring that breaks ties between equally ranked nodes.

Nodes and tasks are hashed onto a 64-bit ring with the seed. Among tied nodes a task takes the first one at or
after its own point, wrapping around: it minimises (hash(seed, node) - hash(seed, task)) mod 2**64, a seeded
hash of (seed, task id, node id). The ring form is chosen over hashing every pair because the winner is then
found with one bisect in a sorted tier instead of one hash per tied node, and it depends only on ids, never
on the order nodes were listed in.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

RING_BITS = 64


@lru_cache(maxsize=16)
def _seeded(seed: int) -> hashlib.blake2b:
    return hashlib.blake2b(f"{seed}\x00".encode(), digest_size=RING_BITS // 8)


def ring_point(seed: int, ident: str) -> int:
    """Returns the id's position on the ring for this seed; stable across processes, unlike hash()."""
    # Copying a hasher that already absorbed the seed is cheaper than hashing seed and id from scratch.
    hasher = _seeded(seed).copy()
    hasher.update(ident.encode())
    return int.from_bytes(hasher.digest(), "big")

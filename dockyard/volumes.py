"""Which mounts of a spec name a volume: the one rule the scheduler, the controller's volume records and the
API and the agent share (agent/container_spec.py maps mount types to the runtime's with it)."""

from __future__ import annotations

from typing import Final

from dockyard.v1 import types_pb2 as pb

__all__ = ["VOLUME_MOUNT_TYPES", "is_volume_mount", "mounted_volumes"]

# The mount types that name a Docker volume: UNSPECIFIED means VOLUME (see pb.Mount).
VOLUME_MOUNT_TYPES: Final = frozenset({pb.Mount.TYPE_UNSPECIFIED, pb.Mount.TYPE_VOLUME})


def is_volume_mount(mount: pb.Mount) -> bool:
    """Tells whether the mount names a volume (type VOLUME or unspecified, with a source: none is anonymous)."""
    return mount.type in VOLUME_MOUNT_TYPES and bool(mount.source)


def mounted_volumes(spec: pb.ServiceSpec) -> tuple[str, ...]:
    """Returns the names of the volumes the spec's mounts name, distinct and sorted."""
    return tuple(sorted({m.source for m in spec.mounts if is_volume_mount(m)}))

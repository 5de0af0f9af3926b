"""How a task becomes a container: its name, labels, settings, mounts and networks."""

from __future__ import annotations

from collections.abc import Iterable

from agent.health import docker_healthcheck
from agent.runtime.base import ContainerSpec, MountKind, MountSpec, NetworkAttachment, PortBinding
from dockyard import labels
from dockyard.spec import schema
from dockyard.v1 import types_pb2 as pb
from dockyard.volumes import VOLUME_MOUNT_TYPES, is_volume_mount

# A spec's mount type -> the runtime's; which types name a volume is dockyard.volumes' rule. A type missing
# here (a newer controller's) is refused by the host policy (agent/policy.py) before any container is made.
MOUNT_KINDS = {
    **{kind: MountKind.VOLUME for kind in VOLUME_MOUNT_TYPES},
    pb.Mount.TYPE_BIND: MountKind.BIND,
    pb.Mount.TYPE_TMPFS: MountKind.TMPFS,
}

DEFAULT_STOP_GRACE = schema.STOP_GRACE_PERIOD.default_seconds


def container_name(task: pb.Task) -> str:
    """Returns the container name: service, slot and short task id, unique per task."""
    return f"{task.service_name}.{task.slot}.{task.id[:12]}"


def task_labels(task: pb.Task, node_id: str) -> dict[str, str]:
    """Returns the labels that let any agent adopt this container from Docker alone."""
    return {
        labels.MANAGED: "true",
        labels.TASK_ID: task.id,
        labels.SERVICE_ID: task.service_id,
        labels.SERVICE_NAME: task.service_name,
        labels.SLOT: str(task.slot),
        labels.REVISION: str(task.revision),
        labels.NODE_ID: node_id,
        labels.GENERATION: str(task.generation),
    }


def container_spec(
    task: pb.Task,
    node_id: str,
    *,
    networks: Iterable[NetworkAttachment] = (),
    dns: Iterable[str] = (),
    dns_search: Iterable[str] = (),
    file_mounts: Iterable[MountSpec] = (),
) -> ContainerSpec:
    """Builds the container spec of a task; user labels come first so ours always win.

    `networks` (the first is the one it is created on), `dns` and `dns_search` come from the node's
    NetworkPreparer, `file_mounts` (its secrets and configs) from its FilePreparer. Aliases are the
    preparer's alone: agent.network gives none, since Docker's embedded DNS would answer a service's short
    name itself with this host's containers only (docs/design/network.md, "DNS").
    """
    spec = task.spec
    return ContainerSpec(
        name=container_name(task),
        image=spec.image,
        command=tuple(spec.command),
        env=dict(spec.env),
        labels={**dict(spec.labels), **task_labels(task, node_id)},
        ports=tuple(PortBinding(p.host_port, p.container_port, port_protocol(p)) for p in spec.ports),
        cpu_limit=spec.resources.cpu_limit,
        memory_limit_bytes=spec.resources.memory_limit_bytes,
        healthcheck=docker_healthcheck(spec),
        # The proto cannot tell an empty entrypoint from none: empty keeps the image's, as Compose's absent key.
        entrypoint=tuple(spec.entrypoint) or None,
        hostname=spec.hostname,
        mounts=tuple(mount_spec(m) for m in spec.mounts) + tuple(file_mounts),
        networks=tuple(networks),
        dns=tuple(dns),
        dns_search=tuple(dns_search),
    )


def mount_spec(mount: pb.Mount) -> MountSpec:
    """Returns the runtime's mount for a spec's: a VOLUME mount names the Docker volume by its cluster-wide name.

    Raises ValueError for a mount type this agent does not know (the host policy refuses such a task first).
    """
    kind = MOUNT_KINDS.get(mount.type)
    if kind is None:
        raise ValueError(f"mount type {mount.type} of {mount.target!r} is not known to this agent")
    return MountSpec(
        kind=kind,
        source="" if kind is MountKind.TMPFS else mount.source,
        target=mount.target,
        read_only=mount.read_only,
        tmpfs_size_bytes=mount.tmpfs_size_bytes if kind is MountKind.TMPFS else 0,
    )


def volume_mounts(spec: pb.ServiceSpec) -> list[pb.Mount]:
    """Returns the spec's mounts of named volumes, which the agent creates before the container (not anonymous ones)."""
    return [m for m in spec.mounts if is_volume_mount(m)]


def volume_labels(spec: pb.ServiceSpec, mount: pb.Mount) -> dict[str, str]:
    """Returns the labels of a volume the agent creates: the spec's volume_labels, then ours, which win."""
    ours = {labels.MANAGED: "true", labels.VOLUME: mount.source}
    if spec.stack:
        ours[labels.STACK] = spec.stack
    return {**dict(mount.volume_labels), **ours}


def port_protocol(port: pb.PortMapping) -> str:
    """Returns the protocol a port is published with; an empty one is the spec's default."""
    return port.protocol or schema.PORT_PROTOCOL.default


def stop_grace(task: pb.Task) -> float:
    """Returns the seconds a container gets between SIGTERM and SIGKILL."""
    if not task.spec.HasField("stop_grace_period"):
        return DEFAULT_STOP_GRACE
    grace = task.spec.stop_grace_period  # an explicit 0s means "kill at once", as the spec table allows
    return grace.seconds + grace.nanos / 1e9

"""How a task becomes a container: its name, labels and settings."""

from __future__ import annotations

from agent.health import docker_healthcheck
from agent.runtime.base import ContainerSpec, PortBinding
from dockyard import labels
from dockyard.spec import schema
from dockyard.v1 import types_pb2 as pb

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


def container_spec(task: pb.Task, node_id: str) -> ContainerSpec:
    """Builds the container spec of a task; user labels come first so ours always win."""
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
    )


def port_protocol(port: pb.PortMapping) -> str:
    """Returns the protocol a port is published with; an empty one is the spec's default."""
    return port.protocol or schema.PORT_PROTOCOL.default


def stop_grace(task: pb.Task) -> float:
    """Returns the seconds a container gets between SIGTERM and SIGKILL."""
    if not task.spec.HasField("stop_grace_period"):
        return DEFAULT_STOP_GRACE
    grace = task.spec.stop_grace_period  # an explicit 0s means "kill at once", as the spec table allows
    return grace.seconds + grace.nanos / 1e9

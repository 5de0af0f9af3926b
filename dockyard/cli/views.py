"""Protocol objects as the flat dictionaries that the tables and --output json show."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from dockyard.cli.rollout import rollout_name
from dockyard.spec import format_port, schema
from dockyard.task_state import SpecKey, desired_name, spec_key, state_name
from dockyard.timestamps import from_timestamp
from dockyard.v1 import types_pb2 as pb


def _iso(ts: Any) -> str | None:
    when = from_timestamp(ts)
    return when.isoformat() if when else None


def _enum(value: int, enum_type: Any, prefix: str) -> str:
    return str(enum_type.Name(value)).removeprefix(prefix).lower()


def port_text(port: pb.PortMapping) -> str:
    """Returns a port as "8080:80/tcp", or "80/tcp" when Docker picks the host port."""
    return format_port(port.host_port, port.container_port, port.protocol or schema.PORT_PROTOCOL.default)


def task_view(task: pb.Task, nodes: Mapping[str, pb.Node], spec: pb.ServiceSpec | None = None) -> dict[str, Any]:
    """Returns a task as a row: node is the host name that `dockyard nodes` shows.

    Image and ports come from `spec`, the spec of the task's revision (tasks carry none unless listed
    with the full view, which is then used); without either they are empty.
    """
    node = nodes.get(task.node_id)
    if spec is None:
        spec = task.spec
    return {
        "id": task.id,
        "service": task.service_name,
        "slot": task.slot,
        "name": f"{task.service_name}.{task.slot}",
        "node": (node.description.hostname or node.id) if node else (task.node_id or None),
        "node_id": task.node_id or None,
        "state": state_name(task.status.state),
        "desired_state": desired_name(task.desired_state),
        "message": task.status.message,
        "error": task.status.error,
        "exit_code": task.status.exit_code,
        "cause": _cause(task),
        "attempt": task.attempt,
        "health": _health(task),
        "health_output": task.status.health.output or None,
        "failing_streak": task.status.health.failing_streak,
        "replaced": task.replaced,
        "container_id": task.status.container_id or None,
        "revision": task.revision,
        "image": spec.image,
        "ports": [port_text(p) for p in spec.ports],
        "created_at": _iso(task.created_at),
        "updated_at": _iso(task.status.timestamp),
    }


def _health(task: pb.Task) -> str | None:
    """The task's health ("starting", "healthy", "unhealthy"), or None without a health check."""
    state = task.status.health.state
    if state == pb.TaskHealth.STATE_UNSPECIFIED:
        return None
    return _enum(state, pb.TaskHealth.State, "STATE_")


def _cause(task: pb.Task) -> str | None:
    """Whose fault a failed or refused task is: "task", "unhealthy" or "host"; None for other states."""
    if task.status.state not in (pb.TASK_STATE_FAILED, pb.TASK_STATE_REJECTED):
        return None
    cause = task.status.cause or pb.TaskStatus.CAUSE_TASK  # unspecified is the task's own (types.proto)
    return _enum(cause, pb.TaskStatus.Cause, "CAUSE_")


# The columns of `dockyard ps` and `dockyard stack ps`, over ps_rows.
TASK_COLUMNS = [
    ("ID", "short_id"),
    ("NAME", "name"),
    ("NODE", "node"),
    ("DESIRED", "desired_state"),
    ("STATE", "state"),
    ("HEALTH", "health"),
    ("TRY", "try"),
    ("CONTAINER", "short_container"),
    ("REV", "revision"),
    ("MESSAGE", "detail"),
]


def ps_rows(
    tasks: Iterable[pb.Task], nodes: Mapping[str, pb.Node], specs: Mapping[SpecKey, pb.ServiceSpec]
) -> list[dict[str, Any]]:
    """The rows of `dockyard ps` and `stack ps`: each task's view with its short ids, try number and MESSAGE."""
    rows = [task_view(t, nodes, specs.get(spec_key(t))) for t in tasks]
    for row in rows:
        row["short_id"] = row["id"][:12]
        row["short_container"] = (row["container_id"] or "")[:12]
        row["try"] = row["attempt"] + 1
        row["detail"] = task_detail(row)
    return rows


def task_detail(row: Mapping[str, Any]) -> str:
    """The MESSAGE column of `dockyard ps` for a task row: why it failed ("exit 1, unhealthy: ..."; host faults
    say "host fault"), else what its last health probe said while it is not healthy, else its status message."""
    if row["cause"] is not None:
        # The task's own fault is the usual case and goes unsaid; a health check's or the host's is named.
        parts = [f"exit {row['exit_code']}"] if row["exit_code"] else []
        parts += [{"unhealthy": "unhealthy", "host": "host fault"}[row["cause"]]] if row["cause"] != "task" else []
        reason = str(row["error"] or row["message"])
        return f"{', '.join(parts)}: {reason}" if parts else reason
    if row["health"] in ("starting", "unhealthy") and row["health_output"]:
        return f"{row['message']}; last probe: {row['health_output']}".lstrip("; ")
    if row["replaced"]:
        return f"{row['message']}; replaced, stops once its successor runs".lstrip("; ")
    return str(row["error"] or row["message"])


def node_view(node: pb.Node, tasks: Iterable[pb.Task] = ()) -> dict[str, Any]:
    """Returns a node as a row; labels merge the agent's and the operator's (the operator's win)."""
    running = sum(1 for t in tasks if t.node_id == node.id and t.status.state == pb.TASK_STATE_RUNNING)
    return {
        "id": node.id,
        "hostname": node.description.hostname,
        "status": _enum(node.status, pb.NodeStatus, "NODE_STATUS_"),
        "availability": _enum(
            node.availability or pb.NODE_AVAILABILITY_ACTIVE, pb.NodeAvailability, "NODE_AVAILABILITY_"
        ),
        "labels": {**dict(node.description.labels), **dict(node.labels)},
        "cpus": node.description.cpus,
        "memory_bytes": node.description.memory_bytes,
        "docker_version": node.description.docker_version,
        "address": node.address,
        "message": node.status_message,
        "tasks_running": running,
    }


def service_view(service: pb.Service, tasks: Iterable[pb.Task]) -> dict[str, Any]:
    """Returns a service as a row with how many of its tasks run."""
    mine = [t for t in tasks if t.service_id == service.id and t.desired_state == pb.DESIRED_STATE_RUNNING]
    running = sum(1 for t in mine if t.status.state == pb.TASK_STATE_RUNNING)
    status = service.update_status
    return {
        "id": service.id,
        "name": service.name,
        "mode": _enum(service.spec.mode or pb.SERVICE_MODE_REPLICATED, pb.ServiceMode, "SERVICE_MODE_"),
        "revision": service.revision,
        "spec_revision": service.spec_revision,
        "image": service.spec.image,
        "replicas": service.spec.replicas,
        "running": running,
        "ports": [port_text(p) for p in service.spec.ports],
        "rollout": rollout_name(status.state) or None,
        "rollout_from": status.from_revision or None,
        "rollout_to": status.to_revision or None,
        "rollout_message": status.message or None,
        "rollout_started_at": _iso(status.started_at),
        "rollout_completed_at": _iso(status.completed_at),
        "change_cause": service.change_cause or None,
        "created_at": _iso(service.created_at),
        "updated_at": _iso(service.updated_at),
    }

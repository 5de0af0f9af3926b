"""Volume records on the controller: which services mount a volume, where it lives, and what pins it. Pure.

A Volume record names a Docker local volume the agents create on first use (labelled dev.dockyard.volume).
Its node_id is empty until a task that mounts it is first placed; the scheduler then pins it to that node in
the same commit as the assignment (pin_ops), and from then on every task that mounts it runs only there
(controller.scheduler.filters.VolumeOnNode), since its data is there. A volume an agent reports in its hello
that has no record gets one on that node (reported_ops); an unpinned record it reports is pinned there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime

from controller.store.base import Check, Kind, Op, Put
from dockyard.limits import HELLO_VOLUMES
from dockyard.spec.stacks import object_name_problem
from dockyard.timestamps import to_timestamp
from dockyard.v1 import types_pb2 as pb
from dockyard.volumes import is_volume_mount, mounted_volumes

__all__ = [
    "pin_ops",
    "pinned_nodes",
    "removing_volumes",
    "reported_ops",
    "users_of",
    "volume_records",
]


def volume_records(objects: Iterable[object]) -> dict[str, pb.Volume]:
    """Returns the volume records among objects read from the store (list_objects(Kind.VOLUME)), by name."""
    return {obj.name: obj for obj in objects if isinstance(obj, pb.Volume)}


def pinned_nodes(records: Mapping[str, pb.Volume]) -> dict[str, str]:
    """Returns volume name -> node id of every record that is pinned to a node: what the scheduler filters on."""
    return {name: record.node_id for name, record in records.items() if record.node_id}


def removing_volumes(records: Mapping[str, pb.Volume]) -> frozenset[str]:
    """Returns the names of the volumes being removed: the scheduler places no task that mounts one."""
    return frozenset(name for name, record in records.items() if record.removing)


def users_of(name: str, services: Iterable[pb.Service]) -> list[str]:
    """Returns the names of the services whose spec mounts volume `name`, sorted."""
    return sorted(s.name for s in services if name in mounted_volumes(s.spec))


def pin_ops(
    placed: Iterable[tuple[pb.ServiceSpec, str]],
    records: Mapping[str, pb.Volume],
    now: datetime,
    new_id: Callable[[], str],
) -> list[Op]:
    """Returns the ops that go with assignments: each (spec, node id) placed pins the spec's volumes there.

    A pinned record on that node is Checked (a removal or another pin meanwhile fails the commit); an unpinned
    one is put with node_id set, conditioned on its version; a volume with no record (a service applied before
    volumes had records) gets a new record on that node, conditioned on its absence (a name taken meanwhile
    fails the commit as well). The scheduler never places one unpinned volume on two nodes in one pass; should
    the input say so, the first placement wins and ValueError reports the rest as a bug.
    """
    ops: list[Op] = []
    seen: dict[str, str] = {}
    stamp = to_timestamp(now)
    for spec, node_id in placed:
        for name in mounted_volumes(spec):
            if name in seen:
                if seen[name] != node_id:
                    raise ValueError(f"volume {name} placed on nodes {seen[name]} and {node_id} in one pass")
                continue
            seen[name] = node_id
            record = records.get(name)
            if record is None:
                made = pb.Volume(id=new_id(), name=name, stack=spec.stack, node_id=node_id)
                for mount in spec.mounts:
                    if mount.source == name and is_volume_mount(mount):
                        made.labels.update(mount.volume_labels)
                made.created_at.CopyFrom(stamp)
                ops.append(Put(made, expect_version=0))
            elif not record.node_id:
                ops.append(_pinned(record, node_id))
            elif record.node_id == node_id:
                ops.append(Check(Kind.VOLUME, record.id, record.version))
            else:
                raise ValueError(f"volume {name} is on node {record.node_id}, not {node_id}")
    return ops


def _pinned(record: pb.Volume, node_id: str) -> Put:
    """The write pinning an unpinned volume record to node_id, conditioned on the version read."""
    pinned = pb.Volume()
    pinned.CopyFrom(record)
    pinned.node_id = node_id
    return Put(pinned, expect_version=record.version)


def reported_ops(
    node_id: str,
    names: Sequence[str],
    records: Mapping[str, pb.Volume],
    now: datetime,
    new_id: Callable[[], str],
) -> list[Op]:
    """Returns the writes a hello's volume names make: a record on the node for each one without a record, and
    the node for each unpinned record (conditioned on its version). Records pinned elsewhere are left alone
    (two hosts with a volume of one name: the record keeps the one it names). Names that are not valid object
    names, and those past HELLO_VOLUMES (what an agent lists at most), are skipped.
    """
    ops: list[Op] = []
    stamp = to_timestamp(now)
    for name in dict.fromkeys(names[:HELLO_VOLUMES]):
        if object_name_problem(name) is not None:
            continue
        record = records.get(name)
        if record is None:
            made = pb.Volume(id=new_id(), name=name, node_id=node_id)
            made.created_at.CopyFrom(stamp)
            ops.append(Put(made, expect_version=0))
        elif not record.node_id:
            ops.append(_pinned(record, node_id))
    return ops

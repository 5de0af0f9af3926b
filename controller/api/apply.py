"""Turns validated specs into service writes: pure, so apply and dry-run share one path."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from controller.api.files import digest_of, file_spec_issues, new_config, new_secret, same_secret_data
from controller.orchestrator.rollout import resumed
from controller.sealing import Sealer
from controller.store.base import Check, Kind, Op, Put, Store
from dockyard.spec.diff import same_task_spec
from dockyard.spec.issues import Issue, index_path, key_path, service_path
from dockyard.spec.stacks import (
    CLUSTER_NETWORK,
    belongs,
    default_network,
    networks_of,
    object_name_problem,
    stack_problem,
)
from dockyard.spec.validation import label_issues
from dockyard.timestamps import to_timestamp
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb
from dockyard.volumes import is_volume_mount, mounted_volumes

# The change_cause of a revision an apply writes (history shows it); scale and rollback write their own.
APPLY_CAUSE: Final = "apply"


def scale_cause(replicas: int) -> str:
    """Returns the change_cause of a revision ScaleService writes."""
    return f"scale to {replicas}"


@dataclass(frozen=True)
class ApplyPlan:
    """The results to report and the puts to commit (empty when nothing changed)."""

    results: list[cpb.ApplyResult]
    puts: list[Put]


def plan_apply(
    specs: Sequence[pb.ServiceSpec],
    existing: dict[str, pb.Service],
    now: datetime,
    new_id: Callable[[], str],
) -> ApplyPlan:
    """Decides per spec whether it creates, updates (revision + 1) or leaves a service unchanged.

    An update moves spec_revision (a rollout) only when what tasks run changes (diff.same_task_spec). An
    unchanged service whose rollout is paused is written resumed (rollout.resumed), at the same revision; so is
    one changed only in controller-only fields, at revision + 1.
    """
    results: list[cpb.ApplyResult] = []
    puts: list[Put] = []
    stamp = to_timestamp(now)
    for spec in specs:
        current = existing.get(spec.name)
        service = pb.Service()
        if current is None:
            service.id = new_id()
            service.name = spec.name
            service.revision = 1
            service.spec_revision = 1
            service.created_at.CopyFrom(stamp)
            action = cpb.ApplyResult.ACTION_CREATED
        else:
            service.CopyFrom(current)
            if current.spec == spec:
                # Applying the spec of a paused rollout again resumes it: a write, not a new revision.
                again = resumed(current, now)
                if again != current:
                    puts.append(Put(again, expect_version=current.version))
                results.append(cpb.ApplyResult(service=again, action=cpb.ApplyResult.ACTION_UNCHANGED))
                continue
            service.revision = current.revision + 1
            if not same_task_spec(current.spec, spec):
                service.spec_revision = service.revision
                # The range a rollback returned to runs an older spec now (see Service.also_current_from).
                service.also_current_from = service.also_current_to = 0
            else:
                # The tasks stay (no rollout): new replicas, update or restart settings apply to them at once,
                # and a paused rollout goes on under them, as applying its spec again would have it.
                service = resumed(service, now)
            action = cpb.ApplyResult.ACTION_UPDATED
        service.spec.CopyFrom(spec)
        service.updated_at.CopyFrom(stamp)
        service.change_cause = APPLY_CAUSE
        puts.append(Put(service, expect_version=current.version if current is not None else 0))
        results.append(cpb.ApplyResult(service=service, action=action))
    return ApplyPlan(results, puts)


def pruned(specs: Sequence[pb.ServiceSpec], existing: Mapping[str, pb.Service]) -> list[pb.Service]:
    """Returns the stored services an apply with prune deletes: those the request does not name, by name."""
    names = {spec.name for spec in specs}
    return [existing[name] for name in sorted(existing) if name not in names]


def pruned_of_stack(
    specs: Sequence[pb.ServiceSpec], existing: Mapping[str, pb.Service], stack: str
) -> list[pb.Service]:
    """Returns what prune deletes: with a stack, only that stack's services the request does not name."""
    candidates = pruned(specs, existing)
    if not stack:
        return candidates
    return [s for s in candidates if s.spec.stack == stack]


def request_stack(stack: str, specs: Sequence[pb.ServiceSpec]) -> str:
    """The stack a request deploys, which is all that its prune may delete: its stack field, else the specs' one
    stack, else "" (the whole cluster). Apply and plan both use it, so a plan shows what the apply prunes.
    """
    if stack:
        return stack
    stacks = {spec.stack for spec in specs}
    return stacks.pop() if len(stacks) == 1 else ""


def with_stack(specs: Sequence[pb.ServiceSpec], stack: str) -> list[pb.ServiceSpec]:
    """Returns the specs with an empty stack set to the request's (every service of the request belongs to it)."""
    if not stack:
        return list(specs)
    out = []
    for spec in specs:
        filled = pb.ServiceSpec()
        filled.CopyFrom(spec)
        filled.stack = filled.stack or stack
        out.append(filled)
    return out


@dataclass(frozen=True)
class ObjectsView:
    """The networks, volumes, secrets and configs in the store, by name: what an apply's references meet."""

    networks: Mapping[str, pb.Network]
    volumes: Mapping[str, pb.Volume]
    secrets: Mapping[str, pb.Secret]
    configs: Mapping[str, pb.Config]


@dataclass(frozen=True)
class ObjectPlan:
    """The problems of an apply's objects and references, and the writes that make its objects."""

    issues: list[Issue]
    ops: list[Op]


def plan_objects(
    request: cpb.ApplyServiceRequest,
    specs: Sequence[pb.ServiceSpec],
    view: ObjectsView,
    now: datetime,
    new_id: Callable[[], str],
    sealer: Sealer | None,
    existing: Mapping[str, pb.Service],
) -> ObjectPlan:
    """Decides the objects an apply makes (declared ones that do not exist yet, a stack's default network,
    volumes mounted but not declared, as Compose makes them) and checks every reference of `specs`.

    A reference to a network, secret or config that neither exists nor is declared is a problem at its
    field's path; so is a declared secret or config that exists with other data (they are immutable).
    An existing network, secret or config that a spec refers to and its stored service (`existing`, by name)
    did not is written unchanged (conditioned on its version), so its removal and this apply cannot both
    commit: a removal judges users from the services it read and Checks them, which a new service escapes.
    A reference the stored service had already needs nothing: the removal saw it and refuses. A volume being
    removed is refused at the mount's path; an existing one newly mounted is Checked (RemoveVolume marks it
    `removing` before it reads the users, so a Check is enough there).
    """
    issues: list[Issue] = []
    stack = request.stack
    if (problem := stack_problem(stack)) is not None:
        issues.append(Issue("stack", problem))
    for spec in specs:
        if stack and spec.stack != stack:
            issues.append(
                Issue(
                    key_path(service_path(spec.name), "stack"),
                    f"is {spec.stack!r}, but the request deploys stack {stack!r}; give one stack per request",
                )
            )
    declared = _Declared(
        _declared(request.networks, "networks", issues),
        _declared(request.volumes, "volumes", issues),
        _declared(request.secrets, "secrets", issues),
        _declared(request.configs, "configs", issues),
    )
    if (declared.secrets or any(spec.secrets for spec in specs)) and sealer is None:
        issues.append(Issue("secrets", "this controller has no data key to seal secrets with"))
    ops = _declared_ops(declared, stack, view, now, new_id, sealer, issues)
    ops.extend(_reference_ops(specs, declared, view, to_timestamp(now), new_id, issues, existing))
    return ObjectPlan(issues, ops)


@dataclass(frozen=True)
class _Declared:
    networks: dict[str, tuple[int, cpb.NetworkSpec]]
    volumes: dict[str, tuple[int, cpb.VolumeSpec]]
    secrets: dict[str, tuple[int, cpb.FileSpec]]
    configs: dict[str, tuple[int, cpb.FileSpec]]


def _declared_ops(
    declared: _Declared,
    stack: str,
    view: ObjectsView,
    now: datetime,
    new_id: Callable[[], str],
    sealer: Sealer | None,
    issues: list[Issue],
) -> list[Op]:
    """The puts of the declared objects that do not exist yet; a secret or config with other data is a problem."""
    ops: list[Op] = []
    stamp = to_timestamp(now)
    for name, (_, net) in declared.networks.items():
        if name not in view.networks:
            obj = pb.Network(id=new_id(), name=name, stack=_stack_of(stack, name), internal=net.internal)
            obj.labels.update(net.labels)
            obj.created_at.CopyFrom(stamp)
            ops.append(Put(obj, expect_version=0))
    for name, (_, vol) in declared.volumes.items():
        if name not in view.volumes:
            ops.append(Put(_new_volume(name, stack, vol.labels, stamp, new_id), expect_version=0))
    for name, (i, file) in declared.secrets.items():
        path = index_path("secrets", i)
        issues.extend(file_spec_issues(file, path, "secret"))
        current_secret = view.secrets.get(name)
        if current_secret is not None:
            if sealer is not None and not same_secret_data(current_secret, file.data, sealer):
                issues.append(Issue(path, _IMMUTABLE.format(what="secret", name=name)))
        elif sealer is not None:
            ops.append(Put(new_secret(file, stack, now, new_id, sealer), expect_version=0))
    for name, (i, file) in declared.configs.items():
        path = index_path("configs", i)
        issues.extend(file_spec_issues(file, path, "config"))
        current_config = view.configs.get(name)
        if current_config is not None:
            if current_config.digest != digest_of(file.data):
                issues.append(Issue(path, _IMMUTABLE.format(what="config", name=name)))
        else:
            ops.append(Put(new_config(file, stack, now, new_id), expect_version=0))
    return ops


def _reference_ops(
    specs: Sequence[pb.ServiceSpec],
    declared: _Declared,
    view: ObjectsView,
    stamp: Timestamp,
    new_id: Callable[[], str],
    issues: list[Issue],
    existing: Mapping[str, pb.Service],
) -> list[Op]:
    """Checks each spec's references; returns the puts of what is made on first use and of what is held."""
    ops: list[Op] = []
    made_networks = set(declared.networks)
    made_volumes = set(declared.volumes)
    held: set[str] = set()

    def hold(obj: pb.Network | pb.Secret | pb.Config) -> None:
        if obj.id not in held:
            held.add(obj.id)
            ops.append(Put(obj, expect_version=obj.version))

    for spec in specs:
        base = service_path(spec.name)
        stored = existing.get(spec.name)
        old = stored.spec if stored is not None else None
        for network in networks_of(spec):
            current_network = view.networks.get(network)
            # The cluster network cannot be removed, and it is written often (a subnet per node).
            fresh = old is None or network not in networks_of(old)
            if current_network is not None and network != CLUSTER_NETWORK and fresh:
                hold(current_network)
        if not spec.networks and spec.stack:
            default = default_network(spec.stack)
            if default not in view.networks and default not in made_networks:
                made_networks.add(default)
                obj = pb.Network(id=new_id(), name=default, stack=spec.stack)
                obj.created_at.CopyFrom(stamp)
                ops.append(Put(obj, expect_version=0))
        for j, network in enumerate(spec.networks):
            if network not in view.networks and network not in made_networks and network != CLUSTER_NETWORK:
                issues.append(
                    Issue(
                        index_path(key_path(base, "networks"), j),
                        f"network {network!r} does not exist; declare it in the file's networks or create it "
                        "with `dockyard network create`",
                    )
                )
        for i, mount in enumerate(spec.mounts):
            record = view.volumes.get(mount.source)
            if not is_volume_mount(mount):
                continue
            fresh = old is None or mount.source not in mounted_volumes(old)
            if record is None and mount.source not in made_volumes:
                # Compose and `docker service create` make a mounted volume on first use; so does an apply.
                made_volumes.add(mount.source)
                volume = _new_volume(mount.source, spec.stack, mount.volume_labels, stamp, new_id)
                ops.append(Put(volume, expect_version=0))
            elif record is not None and record.removing:
                path = key_path(index_path(key_path(base, "mounts"), i), "source")
                issues.append(Issue(path, _REMOVING.format(name=mount.source)))
            elif record is not None and fresh and record.id not in held:
                # RemoveVolume marks the record before it reads the users: a mark after this read fails the commit.
                held.add(record.id)
                ops.append(Check(Kind.VOLUME, record.id, record.version))
        for field, kind, known, names in (
            ("secrets", Kind.SECRET, view.secrets, declared.secrets),
            ("configs", Kind.CONFIG, view.configs, declared.configs),
        ):
            for j, ref in enumerate(getattr(spec, field)):
                current = known.get(ref.name)
                if current is not None:
                    if old is None or all(r.name != ref.name for r in getattr(old, field)):
                        hold(current)
                elif ref.name not in names:
                    issues.append(
                        Issue(
                            key_path(index_path(key_path(base, field), j), "name"),
                            f"{kind} {ref.name!r} does not exist; declare it in the file's {field} or create it "
                            f"with `dockyard {kind} create`",
                        )
                    )
    return ops


_REMOVING: Final = (
    "volume {name!r} is being removed; apply once `dockyard volume rm {name}` has ended (if it was interrupted, "
    "run it again), or mount another volume"
)
_IMMUTABLE: Final = "{what} {name!r} exists with other data; {what}s are immutable: create it under a new name"

_S = TypeVar("_S", cpb.NetworkSpec, cpb.VolumeSpec, cpb.FileSpec)


def _declared(items: Sequence[_S], field: str, issues: list[Issue]) -> dict[str, tuple[int, _S]]:
    """Returns the request's objects of one field by name, noting bad and repeated names."""
    out: dict[str, tuple[int, _S]] = {}
    for i, item in enumerate(items):
        path = index_path(field, i)
        problem = object_name_problem(item.name)
        if problem is not None:
            issues.append(Issue(key_path(path, "name"), problem))
            continue
        if item.name in out:
            issues.append(Issue(key_path(path, "name"), f"{item.name!r} is listed more than once; give it once"))
            continue
        out[item.name] = (i, item)
        if not isinstance(item, cpb.FileSpec):
            for key, value in item.labels.items():
                issues.extend(label_issues(key, value, key_path(key_path(path, "labels"), key)))
    return out


def _stack_of(stack: str, name: str) -> str:
    return stack if belongs(stack, name) else ""


def _new_volume(
    name: str, stack: str, labels: Mapping[str, str], stamp: Timestamp, new_id: Callable[[], str]
) -> pb.Volume:
    volume = pb.Volume(id=new_id(), name=name, stack=_stack_of(stack, name))
    volume.labels.update(labels)
    volume.created_at.CopyFrom(stamp)
    return volume


async def read_objects(store: Store) -> ObjectsView:
    """Reads the store's networks, volumes, secrets and configs by name."""
    nets = {o.name: o for o in await store.list_objects(Kind.NETWORK) if isinstance(o, pb.Network)}
    vols = {o.name: o for o in await store.list_objects(Kind.VOLUME) if isinstance(o, pb.Volume)}
    secs = {o.name: o for o in await store.list_objects(Kind.SECRET) if isinstance(o, pb.Secret)}
    cfgs = {o.name: o for o in await store.list_objects(Kind.CONFIG) if isinstance(o, pb.Config)}
    return ObjectsView(nets, vols, secs, cfgs)

"""The store interface every role uses; SQLite implements it, a distributed backend may later."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Protocol

from controller.errors import StoreDamaged
from dockyard.v1 import types_pb2 as pb


class Kind(enum.StrEnum):
    """The kinds of object the store holds."""

    SERVICE = "service"
    NODE = "node"
    TASK = "task"
    NETWORK = "network"
    VOLUME = "volume"
    SECRET = "secret"
    CONFIG = "config"
    REGISTRY = "registry"  # registry credentials, whose id and name are their server


class Action(enum.StrEnum):
    """What happened to an object."""

    PUT = "put"
    DELETE = "delete"


# The kinds of object that have a name unique within their kind and are read by get_object/list_objects.
NamedObject = pb.Network | pb.Volume | pb.Secret | pb.Config | pb.RegistryCredential
NAMED_KINDS: Final = frozenset({Kind.NETWORK, Kind.VOLUME, Kind.SECRET, Kind.CONFIG, Kind.REGISTRY})
StoredObject = pb.Service | pb.Node | pb.Task | NamedObject
# Where an object stands in its list's order, for paging: nodes by (hostname, id); tasks by
# (service id, slot, creation time in ns since the epoch, id). Services page by name alone.
NodeKey = tuple[str, str]
TaskKey = tuple[str, int, int, str]


def object_id(obj: StoredObject) -> str:
    """Returns a stored object's id, as Delete and Check name it: a registry credential's is its server."""
    return obj.server if isinstance(obj, pb.RegistryCredential) else obj.id


@dataclass(frozen=True)
class Put:
    """Creates or replaces an object; when expect_version is set, the stored version must equal it.

    expect_version 0 means "must not exist yet". The store sets obj.version to the new store revision.
    Names are unique per kind for services and NAMED_KINDS: a put that would give a name to a second object
    of its kind is a ConflictError. A RegistryCredential's id is its server. A put of a Service also records
    its spec under (service id, service revision) in the history, which may keep only each service's newest
    revisions (always its current one).
    """

    obj: StoredObject
    expect_version: int | None = None


@dataclass(frozen=True)
class Delete:
    """Deletes an object by id; when expect_version is set, the stored version must equal it."""

    kind: Kind
    id: str
    expect_version: int | None = None


@dataclass(frozen=True)
class Check:
    """Writes nothing; the batch fails with ConflictError unless the object's stored version is version.

    It lets a writer commit a decision only if an object it read (such as a node) did not change since.
    """

    kind: Kind
    id: str
    version: int


Op = Put | Delete | Check


@dataclass(frozen=True)
class Event:
    """One change, in store-revision order. obj is the new value, or the last value for a delete."""

    revision: int
    kind: Kind
    action: Action
    id: str
    obj: StoredObject


@dataclass(frozen=True)
class ServiceRevision:
    """One kept revision of a service: its spec, and when, why and by which store revision it was written.

    created_at is the service's updated_at in the write that made the revision; store_revision is that
    write's store revision. A store migrated from before these were kept knows them only for the revision a
    service was at then: the others have created_at None, store_revision 0 and no change_cause.
    """

    revision: int
    spec_revision: int
    spec: pb.ServiceSpec
    created_at: datetime | None
    change_cause: str
    store_revision: int


class ConflictError(Exception):
    """An expect_version did not match: someone else wrote first. Nothing of the batch was written."""


class WatchExpired(Exception):
    """The requested revision is older than the oldest event the store still keeps."""


class Store(Protocol):
    """Transactional storage with a change feed; objects are the protocol's own messages.

    Reads. Every get and list returns objects as of one committed revision (never part of a commit), as
    fresh messages the caller may mutate. They need not wait for a commit in progress: SqliteStore answers
    them from memory without awaiting, so they cost a dictionary lookup or a bisection plus parsing what
    they return, however busy the writer is; a backend that reads remotely may instead answer from a
    revision a little behind its latest commit, never from one that goes back in time.

    Damage. open() raises controller.errors.StartupError when the store cannot serve as configured, and its
    subclass StoreDamaged when the stored data is unreadable; either message is one line naming the store
    and what to do. While open, any read, commit or watch may raise StoreDamaged when the backend finds its
    data damaged (SQLite: a damaged page met by a commit or a watcher's replay, its reads coming from memory;
    etcd: a CORRUPT alarm). The first such error marks the store damaged until it is reopened: commits are
    then refused. A backend tells the server about it (so health reports NOT_SERVING) through the `damage`
    property (the error, or None) and `on_damage(callback)`, called once with the error.
    """

    async def open(self) -> None:
        """Opens (and if needed creates) the store; StartupError (StoreDamaged) when it cannot serve."""
        ...

    async def close(self) -> None:
        """Closes the store; watchers end."""
        ...

    @property
    def revision(self) -> int:
        """The revision of the last committed batch (0 for an empty store)."""
        ...

    @property
    def epoch(self) -> int:
        """A random number made when the store was created and kept with it (never 0 once open).

        Agents compare it across sessions: a store made afresh (a wrong or emptied state dir) has another
        epoch, and its empty full assignments are not acted on.
        """
        ...

    @property
    def damage(self) -> StoreDamaged | None:
        """The error that first found the open store damaged, or None while it reads and writes cleanly."""
        ...

    def on_damage(self, callback: Callable[[StoreDamaged], None]) -> None:
        """Calls callback(error) once, in the event loop, when the store is first found damaged (at once if so)."""
        ...

    async def commit(self, ops: Sequence[Op]) -> int:
        """Applies every op in one transaction, or none (ConflictError); returns the new revision.

        Raises StoreDamaged, writing nothing, when the store is (or is found to be) damaged.
        """
        ...

    async def get_service(self, name_or_id: str) -> pb.Service | None:
        """Returns the service with that id or name."""
        ...

    async def list_services(self) -> list[pb.Service]:
        """Returns every service, ordered by name."""
        ...

    async def list_services_page(self, after: str | None, limit: int) -> list[pb.Service]:
        """Returns at most limit services whose name sorts after `after` (None: from the first), by name.

        Like every *_page method it reads only what it returns (keyset paging), so a caller that lists a
        table in pages pays for each page, not for the table; a change between pages moves nothing it passed.
        """
        ...

    async def get_service_spec(self, service_id: str, revision: int) -> pb.ServiceSpec | None:
        """Returns the spec a service had at one of its revisions (kept for rollback); None if not kept.

        None once the service is deleted, and for a revision older than the backend keeps (SqliteStore:
        history_limit per service); the current revision is always kept.
        """
        ...

    async def list_service_history(self, service_id: str, limit: int | None = None) -> list[ServiceRevision]:
        """Returns the kept revisions of a service (by id), newest first, at most limit; empty once it is deleted.

        The revision a service is at is always among them; older ones as the backend keeps them (see
        get_service_spec). A revision is recorded by the first write of a service at it; later writes at the
        same revision (rollout status, a rebalance request) change nothing in its history.
        """
        ...

    async def deleted_services(self, after: int) -> list[tuple[int, str]]:
        """Returns (store revision, name) of each service deleted after store revision `after`, oldest first.

        Read from the change feed: WatchExpired when its events after `after` were already trimmed.
        """
        ...

    async def get_node(self, node_id: str) -> pb.Node | None:
        """Returns the node with that id."""
        ...

    async def get_object(self, kind: Kind, name_or_id: str) -> NamedObject | None:
        """Returns the object of a named kind (NAMED_KINDS) with that id or, failing that, that name.

        A RegistryCredential's id and name are both its server. ValueError for a kind that is not named.
        """
        ...

    async def list_objects(self, kind: Kind) -> list[NamedObject]:
        """Returns every object of a named kind (NAMED_KINDS), ordered by name; ValueError for another kind."""
        ...

    async def list_nodes(self) -> list[pb.Node]:
        """Returns every node, ordered by hostname then id."""
        ...

    async def list_nodes_page(self, after: NodeKey | None, limit: int) -> list[pb.Node]:
        """Returns at most limit nodes after the (hostname, id) key `after` (None: from the first), in that order."""
        ...

    async def get_task(self, task_id: str) -> pb.Task | None:
        """Returns the task with that id."""
        ...

    async def list_tasks(self, service_id: str | None = None, node_id: str | None = None) -> list[pb.Task]:
        """Returns the tasks, filtered by service id and/or node id, ordered by service, slot, creation."""
        ...

    async def list_tasks_page(
        self, service_id: str | None, node_id: str | None, after: TaskKey | None, limit: int
    ) -> list[pb.Task]:
        """Returns at most limit tasks after the TaskKey `after` (None: from the first), filtered as list_tasks."""
        ...

    def watch(self, since: int) -> AsyncIterator[Event]:
        """Yields every event with a revision above since, then live ones, until the store closes.

        Raises WatchExpired when events after since were already trimmed.
        A revision's events are yielded back to back: the iterator never awaits between two events of one
        revision, so a consumer that sees it wait knows every revision yielded so far is complete (the API's
        Watch relies on this to batch; an etcd backend must keep it).
        """
        ...

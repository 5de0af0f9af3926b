"""The file data and registry credentials an agent's assignments carry: only what its tasks use.

When the dispatcher is about to send tasks to a session, FileSource reads (and unseals) the secrets and
configs their specs refer to and the credentials of their images' registries, and offers them to the
session's SessionFiles. The session sends them with each spec it sends (session._attach_specs), and for a
changed task whose spec the agent has, with the first message of the batch: the data of a file (by digest)
and a registry's credentials once per session (a full set starts over, as for specs), so the agent gets
exactly what the tasks sent need and it does not hold yet, nothing any other node uses. Credentials go in
the Assignments message with the spec; file data (up to FILE_BYTES each, any number of them) goes in
incremental Assignments messages of its own just before it, chunked as the tasks are, so no message
outgrows the agent's limit however many files a node's tasks use.
What was offered and not attached is dropped once the session's messages are taken, except what tasks held
at the network gate need: they are released later (NetworkPublisher.publish) without a new offer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import structlog

from controller.sealing import Sealer, SealError, registry_context, secret_context
from controller.store.base import Kind, Store
from dockyard.images import registry_of
from dockyard.logs import Throttle
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb

__all__ = ["FileKey", "FileSource", "Offer", "SessionFiles", "file_keys"]

log = structlog.get_logger()

FileKey = tuple["apb.FileData.Kind.ValueType", str]  # (FileData.Kind, name)


def file_keys(spec: pb.ServiceSpec) -> list[FileKey]:
    """The secrets and configs a spec refers to, as (kind, name)."""
    keys = [(apb.FileData.KIND_SECRET, ref.name) for ref in spec.secrets]
    keys.extend((apb.FileData.KIND_CONFIG, ref.name) for ref in spec.configs)
    return keys


@dataclass(frozen=True)
class Offer:
    """What FileSource found for some specs: file data by key, credentials by registry server."""

    files: dict[FileKey, apb.FileData] = field(default_factory=dict)
    auths: dict[str, apb.RegistryAuth] = field(default_factory=dict)


class FileSource:
    """Reads the data of secrets and configs and the registry credentials that specs need, unsealed."""

    def __init__(self, store: Store, sealer: Sealer, throttle: Throttle | None = None) -> None:
        """Reads from `store`, unseals with `sealer`; a value that does not unseal is logged (throttled), not sent."""
        self._store = store
        self._sealer = sealer
        self._throttle = throttle

    async def offer(self, specs: Iterable[pb.ServiceSpec]) -> Offer:
        """Returns the file data and credentials the specs need (missing ones are left out: the task waits)."""
        offer = Offer()
        for spec in specs:
            for key in file_keys(spec):
                if key not in offer.files:
                    item = await self._file(key)
                    if item is not None:
                        offer.files[key] = item
            server = registry_of(spec.image)
            if server not in offer.auths:
                auth = await self._auth(server)
                if auth is not None:
                    offer.auths[server] = auth
        return offer

    async def _file(self, key: FileKey) -> apb.FileData | None:
        kind, name = key
        if kind == apb.FileData.KIND_SECRET:
            secret = await self._store.get_object(Kind.SECRET, name)
            if not isinstance(secret, pb.Secret):
                return None
            try:
                data = self._sealer.unseal(secret.sealed, secret_context(secret.name))
            except SealError as exc:
                self._note_unsealable(str(exc))
                return None
            return apb.FileData(kind=kind, name=name, data=data, digest=secret.digest)
        config = await self._store.get_object(Kind.CONFIG, name)
        if not isinstance(config, pb.Config):
            return None
        return apb.FileData(kind=kind, name=name, data=config.data, digest=config.digest)

    async def _auth(self, server: str) -> apb.RegistryAuth | None:
        credential = await self._store.get_object(Kind.REGISTRY, server)
        if not isinstance(credential, pb.RegistryCredential):
            return None
        try:
            password = self._sealer.unseal(credential.sealed_password, registry_context(server))
        except SealError as exc:
            self._note_unsealable(str(exc))
            return None
        return apb.RegistryAuth(server=server, username=credential.username, password=password.decode())

    def _note_unsealable(self, problem: str) -> None:
        suppressed = self._throttle.allow("unsealable") if self._throttle is not None else 0
        if suppressed is not None:
            # `problem` names the object only, never its data.
            log.error("stored data does not unseal with this controller's data key", problem=problem)


@dataclass
class SessionFiles:
    """One session's side: what was offered for the specs about to be sent, and what the agent already got."""

    offered: Offer = field(default_factory=Offer)
    # With the digest: a file removed and made again under its name (with other data) is news.
    sent_files: set[tuple[FileKey, str]] = field(default_factory=set)
    sent_auths: set[str] = field(default_factory=set)
    # Specs of tasks changed since the last take whose spec the agent already has: their files or credentials
    # may still be news (a registry login after the spec was sent, a secret made again under its name).
    wanted: list[pb.ServiceSpec] = field(default_factory=list)
    # The files count() has added to the session's pending bytes since the last take: each counts once.
    counted: set[tuple[FileKey, str]] = field(default_factory=set)

    def take_offer(self, offer: Offer) -> None:
        """Adds what FileSource found to what may be attached until the session's messages are next taken."""
        self.offered.files.update(offer.files)
        self.offered.auths.update(offer.auths)

    def reset(self) -> None:
        """A full set is being sent: the agent replaces what it held, so everything is sent again."""
        self.sent_files = set()
        self.sent_auths = set()
        self.counted = set()

    def attach(self, assignments: apb.Assignments, spec: pb.ServiceSpec) -> list[apb.FileData]:
        """Adds the spec's registry credentials unless this session sent them; returns the data of its files this
        session has not sent, now counted as sent: the caller sends it in messages of its own ahead of this one."""
        files: list[apb.FileData] = []
        for key in file_keys(spec):
            item = self.offered.files.get(key)
            if item is not None and (key, item.digest) not in self.sent_files:
                self.sent_files.add((key, item.digest))
                files.append(item)
        server = registry_of(spec.image)
        auth = self.offered.auths.get(server)
        if auth is not None and server not in self.sent_auths:
            self.sent_auths.add(server)
            assignments.registry_auths.append(auth)
        return files

    def count(self, spec: pb.ServiceSpec) -> int:
        """Returns the bytes of the spec's offered files not sent and not counted since the last take (outbox bound)."""
        size = 0
        for key in file_keys(spec):
            item = self.offered.files.get(key)
            sent = (key, item.digest) if item is not None else None
            if item is not None and sent not in self.sent_files and sent not in self.counted:
                self.counted.add((key, item.digest))
                size += item.ByteSize()
        return size

    def want(self, spec: pb.ServiceSpec) -> None:
        """Notes the spec of a changed task, for attach_wanted."""
        self.wanted.append(spec)

    def attach_wanted(self, assignments: apb.Assignments) -> list[apb.FileData]:
        """Adds to the message the credentials the wanted specs need; returns their file data (see attach)."""
        files: list[apb.FileData] = []
        for spec in self.wanted:
            files.extend(self.attach(assignments, spec))
        self.wanted = []
        return files

    def taken(self, held: Iterable[pb.ServiceSpec] = ()) -> None:
        """The pending messages were taken: the offer is spent, but for what the `held` specs need (their tasks wait
        for a network map and are then sent with no new offer; without it their agent would wait for the data)."""
        kept = Offer()
        for spec in held:
            for key in file_keys(spec):
                if key in self.offered.files:
                    kept.files[key] = self.offered.files[key]
            server = registry_of(spec.image)
            if server in self.offered.auths:
                kept.auths[server] = self.offered.auths[server]
        self.offered = kept
        self.wanted = []
        self.counted = set()

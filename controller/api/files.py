"""Secrets, configs and registry credentials: the API's create, list, get and remove.

A secret's data and a registry password are sealed (controller.sealing) before they are stored and are never
served: every response goes through public_secret / public_credential, which clear the sealed fields. Only
the dispatcher unseals them, for the agents whose tasks use them (controller.dispatcher.files). A config's
data is not secret and is served by GetConfig.

Digests: a secret's is Sealer.digest (an HMAC under a key derived from the data key: its data is sealed, so
its digest must not let anyone check a guess); a config's is a plain sha256 of its data (digest_of), which
the API serves anyway. The rule: a digest is keyed exactly when the data is sealed. FileData.digest copies
the object's, and agents and the dispatcher use it only as an opaque "same data" key.

Secrets and configs are immutable (rotate by a new name, as Swarm); removing one is refused while a service's
spec refers to it, naming the services.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Final, NoReturn

import grpc

from controller.api.bounds import Gate
from controller.api.status import Context, abort, abort_invalid
from controller.api.writes import commit_or_abort, still_as_read
from controller.sealing import DIGEST_PREFIX, Sealer, SealError, registry_context, secret_context
from controller.store.base import ConflictError, Delete, Kind, Op, Put, Store
from dockyard.clock import Clock
from dockyard.images import normalize_registry
from dockyard.spec.issues import Issue, key_path
from dockyard.spec.schema import FILE_BYTES
from dockyard.spec.stacks import belongs, object_name_problem
from dockyard.spec.validation import label_issues
from dockyard.timestamps import to_timestamp
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb

__all__ = [
    "FilesApi",
    "digest_of",
    "file_spec_issues",
    "new_config",
    "new_secret",
    "public_credential",
    "public_secret",
    "redigest_secrets",
    "same_secret_data",
    "users_of",
]

# A registry as an image reference names it: host (or IPv4) and an optional port.
_SERVER: Final = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?\Z")
_USERNAME_BYTES: Final = 255
_PASSWORD_BYTES: Final = 8192


def digest_of(data: bytes) -> str:
    """Returns the digest a Config carries: "sha256:<hex>" of its data (a secret's is Sealer.digest)."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def same_secret_data(secret: pb.Secret, data: bytes, sealer: Sealer) -> bool:
    """True when `data` is the stored secret's data, by digest (a store made before keyed digests: by sha256)."""
    if secret.digest.startswith(DIGEST_PREFIX):
        return secret.digest == sealer.digest(data, secret_context(secret.name))
    return secret.digest == digest_of(data)


async def redigest_secrets(store: Store, sealer: Sealer) -> int:
    """Replaces the plain sha256 digests of secrets stored before keyed digests; returns how many it replaced.

    Each is recomputed from its sealed data; one that does not open keeps its digest (the dispatcher reports
    it when a task needs it). A secret changed meanwhile is left for the next start.
    """
    ops: list[Op] = []
    for secret in await store.list_objects(Kind.SECRET):
        if not isinstance(secret, pb.Secret) or secret.digest.startswith(DIGEST_PREFIX):
            continue
        try:
            data = sealer.unseal(secret.sealed, secret_context(secret.name))
        except SealError:
            continue
        updated = pb.Secret()
        updated.CopyFrom(secret)
        updated.digest = sealer.digest(data, secret_context(secret.name))
        ops.append(Put(updated, expect_version=secret.version))
    if ops:
        try:
            await store.commit(ops)
        except ConflictError:
            return 0
    return len(ops)


def public_secret(secret: pb.Secret) -> pb.Secret:
    """Returns a copy of the secret without its sealed data: what any response may carry."""
    out = pb.Secret()
    out.CopyFrom(secret)
    out.ClearField("sealed")
    return out


def public_credential(credential: pb.RegistryCredential) -> pb.RegistryCredential:
    """Returns a copy of the credential without its sealed password: what any response may carry."""
    out = pb.RegistryCredential()
    out.CopyFrom(credential)
    out.ClearField("sealed_password")
    return out


def file_spec_issues(spec: cpb.FileSpec, path: str, what: str) -> list[Issue]:
    """Returns the problems of a secret's or config's FileSpec at `path` ("secret", "secrets[0]")."""
    issues: list[Issue] = []
    problem = object_name_problem(spec.name)
    if problem is not None:
        issues.append(Issue(key_path(path, "name"), f"{problem}; give the {what} a name"))
    for key, value in spec.labels.items():
        issues.extend(label_issues(key, value, key_path(key_path(path, "labels"), key)))
    if not spec.data:
        issues.append(Issue(key_path(path, "data"), f"is empty; a {what} needs at least one byte"))
    elif len(spec.data) > FILE_BYTES.maximum:
        issues.append(
            Issue(
                key_path(path, "data"),
                f"{len(spec.data)} bytes, more than the {FILE_BYTES.maximum} a {what} may hold; mount large files "
                "from a volume instead",
            )
        )
    return issues


def _stack_of(name: str, stack: str) -> str:
    """The stack an object of this cluster-wide name belongs to when a request of `stack` makes it."""
    return stack if belongs(stack, name) else ""


def new_secret(spec: cpb.FileSpec, stack: str, now: datetime, new_id: Callable[[], str], sealer: Sealer) -> pb.Secret:
    """Returns the Secret to store for a FileSpec: its data sealed, with digest and size."""
    return pb.Secret(
        id=new_id(),
        name=spec.name,
        labels=dict(spec.labels),
        created_at=to_timestamp(now),
        digest=sealer.digest(spec.data, secret_context(spec.name)),
        size=len(spec.data),
        stack=_stack_of(spec.name, stack),
        sealed=sealer.seal(spec.data, secret_context(spec.name)),
    )


def new_config(spec: cpb.FileSpec, stack: str, now: datetime, new_id: Callable[[], str]) -> pb.Config:
    """Returns the Config to store for a FileSpec."""
    return pb.Config(
        id=new_id(),
        name=spec.name,
        labels=dict(spec.labels),
        created_at=to_timestamp(now),
        digest=digest_of(spec.data),
        size=len(spec.data),
        stack=_stack_of(spec.name, stack),
        data=spec.data,
    )


def users_of(kind: Kind, name: str, services: Iterable[pb.Service]) -> list[str]:
    """Returns the names of the services whose spec refers to the secret or config `name` (kind SECRET/CONFIG)."""
    users = []
    for service in services:
        refs = service.spec.secrets if kind is Kind.SECRET else service.spec.configs
        if any(ref.name == name for ref in refs):
            users.append(service.name)
    return sorted(users)


def registry_issues(request: cpb.SetRegistryCredentialRequest) -> list[Issue]:
    """Returns the problems of a SetRegistryCredentialRequest (the server as normalize_registry reads it)."""
    issues: list[Issue] = []
    if not _SERVER.match(normalize_registry(request.server)):
        issues.append(
            Issue(
                "server",
                "must be a registry host with an optional port, as in the image reference "
                "(registry.example.com:5000, or docker.io)",
            )
        )
    if not request.username or len(request.username.encode()) > _USERNAME_BYTES:
        issues.append(Issue("username", f"is required, at most {_USERNAME_BYTES} bytes"))
    if not request.password or len(request.password.encode()) > _PASSWORD_BYTES:
        issues.append(Issue("password", f"is required, at most {_PASSWORD_BYTES} bytes (a token works too)"))
    return issues


class FilesApi:
    """The ControllerService methods of secrets, configs and registry credentials (mixed into ControllerApi)."""

    _store: Store
    _clock: Clock
    _new_id: Callable[[], str]
    _sealer: Sealer | None
    _lists: Gate

    async def _need_sealer(self, context: Context) -> Sealer:
        if self._sealer is None:
            await abort(
                context, grpc.StatusCode.FAILED_PRECONDITION, "this controller has no data key to seal secrets with"
            )
        return self._sealer

    # --- secrets --------------------------------------------------------------------------------------

    async def CreateSecret(self, request: cpb.CreateSecretRequest, context: Context) -> pb.Secret:
        """Stores a new secret, sealed; ALREADY_EXISTS when the name is taken (secrets are immutable)."""
        sealer = await self._need_sealer(context)
        issues = file_spec_issues(request.secret, "secret", "secret")
        if issues:
            await abort_invalid(context, issues)
        if await self._store.get_object(Kind.SECRET, request.secret.name) is not None:
            await _abort_exists(context, "secret", request.secret.name)
        secret = new_secret(request.secret, "", self._clock.now(), self._new_id, sealer)
        await commit_or_abort(self._store, context, [Put(secret, expect_version=0)], "secret.name", False)
        return public_secret(secret)

    async def ListSecrets(self, request: cpb.ListSecretsRequest, context: Context) -> cpb.ListSecretsResponse:
        """Returns every secret, by name, without data."""
        async with self._lists.hold(context, "ListSecrets"):
            secrets = await self._store.list_objects(Kind.SECRET)
        return cpb.ListSecretsResponse(secrets=[public_secret(s) for s in secrets if isinstance(s, pb.Secret)])

    async def RemoveSecret(self, request: cpb.RemoveSecretRequest, context: Context) -> cpb.RemoveSecretResponse:
        """Deletes a secret; FAILED_PRECONDITION naming the services that use it."""
        secret = await self._named(Kind.SECRET, request.name, context)
        assert isinstance(secret, pb.Secret)
        await self._remove(Kind.SECRET, secret, context)
        return cpb.RemoveSecretResponse(secret=public_secret(secret))

    # --- configs --------------------------------------------------------------------------------------

    async def CreateConfig(self, request: cpb.CreateConfigRequest, context: Context) -> pb.Config:
        """Stores a new config; ALREADY_EXISTS when the name is taken (configs are immutable)."""
        issues = file_spec_issues(request.config, "config", "config")
        if issues:
            await abort_invalid(context, issues)
        if await self._store.get_object(Kind.CONFIG, request.config.name) is not None:
            await _abort_exists(context, "config", request.config.name)
        config = new_config(request.config, "", self._clock.now(), self._new_id)
        await commit_or_abort(self._store, context, [Put(config, expect_version=0)], "config.name", False)
        return config

    async def ListConfigs(self, request: cpb.ListConfigsRequest, context: Context) -> cpb.ListConfigsResponse:
        """Returns every config, by name, without data (GetConfig serves it)."""
        async with self._lists.hold(context, "ListConfigs"):
            configs = await self._store.list_objects(Kind.CONFIG)
        out = []
        for config in configs:
            if isinstance(config, pb.Config):
                config.ClearField("data")
                out.append(config)
        return cpb.ListConfigsResponse(configs=out)

    async def GetConfig(self, request: cpb.GetConfigRequest, context: Context) -> pb.Config:
        """Returns one config with its data."""
        config = await self._named(Kind.CONFIG, request.name, context)
        assert isinstance(config, pb.Config)
        return config

    async def RemoveConfig(self, request: cpb.RemoveConfigRequest, context: Context) -> cpb.RemoveConfigResponse:
        """Deletes a config; FAILED_PRECONDITION naming the services that use it."""
        config = await self._named(Kind.CONFIG, request.name, context)
        assert isinstance(config, pb.Config)
        await self._remove(Kind.CONFIG, config, context)
        return cpb.RemoveConfigResponse(config=config)

    async def _named(self, kind: Kind, name: str, context: Context) -> pb.Secret | pb.Config:
        if not name:
            await abort_invalid(context, [Issue("name", f"is required; give a {kind} name or id")])
        found = await self._store.get_object(kind, name)
        if not isinstance(found, pb.Secret | pb.Config):
            missing = f"name: {kind} {name!r} not found; see `dockyard {kind} ls`"
            await abort(context, grpc.StatusCode.NOT_FOUND, missing)
        return found

    async def _remove(self, kind: Kind, obj: pb.Secret | pb.Config, context: Context) -> None:
        services = await self._store.list_services()
        users = users_of(kind, obj.name, services)
        if users:
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"name: {kind} {obj.name!r} is used by service(s) {', '.join(users)}; remove it from their specs "
                "(apply them without it) first",
            )
        # An apply that gives a service the reference meanwhile changes that service or (a new reference) writes
        # the object: either way this commit fails, never leaving a service naming a file that is gone.
        ops = [Delete(kind, obj.id, expect_version=obj.version), *still_as_read(services)]
        await commit_or_abort(self._store, context, ops, f"{kind}s.{obj.name}", False)

    # --- registry credentials -------------------------------------------------------------------------

    async def SetRegistryCredential(
        self, request: cpb.SetRegistryCredentialRequest, context: Context
    ) -> pb.RegistryCredential:
        """Stores (or replaces) the credentials of one registry, the password sealed."""
        sealer = await self._need_sealer(context)
        issues = registry_issues(request)
        if issues:
            await abort_invalid(context, issues)
        server = normalize_registry(request.server)
        current = await self._store.get_object(Kind.REGISTRY, server)
        credential = pb.RegistryCredential(
            server=server,
            username=request.username,
            sealed_password=sealer.seal(request.password.encode(), registry_context(server)),
        )
        if isinstance(current, pb.RegistryCredential):
            credential.created_at.CopyFrom(current.created_at)
        else:
            credential.created_at.CopyFrom(to_timestamp(self._clock.now()))
        expect = current.version if current is not None else 0
        await commit_or_abort(self._store, context, [Put(credential, expect_version=expect)], "server", False)
        return public_credential(credential)

    async def ListRegistryCredentials(
        self, request: cpb.ListRegistryCredentialsRequest, context: Context
    ) -> cpb.ListRegistryCredentialsResponse:
        """Returns every registry's server and username (never a password)."""
        async with self._lists.hold(context, "ListRegistryCredentials"):
            found = await self._store.list_objects(Kind.REGISTRY)
        return cpb.ListRegistryCredentialsResponse(
            credentials=[public_credential(c) for c in found if isinstance(c, pb.RegistryCredential)]
        )

    async def RemoveRegistryCredential(
        self, request: cpb.RemoveRegistryCredentialRequest, context: Context
    ) -> cpb.RemoveRegistryCredentialResponse:
        """Forgets a registry's credentials; agents keep what they were sent until their next full set."""
        if not request.server:
            await abort_invalid(context, [Issue("server", "is required; give a registry server")])
        server = normalize_registry(request.server)
        current = await self._store.get_object(Kind.REGISTRY, server)
        if not isinstance(current, pb.RegistryCredential):
            await abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"server: no credentials for {server!r}; see `dockyard registry ls`",
            )
        await commit_or_abort(
            self._store, context, [Delete(Kind.REGISTRY, server, expect_version=current.version)], "server", False
        )
        return cpb.RemoveRegistryCredentialResponse(credential=public_credential(current))


async def _abort_exists(context: Context, what: str, name: str) -> NoReturn:
    await abort(
        context,
        grpc.StatusCode.ALREADY_EXISTS,
        f"{what}.name: {what} {name!r} exists; {what}s are immutable: create it under a new name "
        f"(and point the services at it), or remove it first",
    )

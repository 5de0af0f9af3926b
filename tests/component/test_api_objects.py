"""Secrets, configs, registry credentials, stacks and the apply's objects, through the real API over gRPC."""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import pytest
import structlog

from controller.api.files import redigest_secrets
from controller.errors import StartupError
from controller.sealing import DATA_KEY_FILE, Sealer, secret_context
from controller.store.base import Kind, Put
from dockyard.client import ApiError
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import controller_pb2_grpc as cpb_grpc
from dockyard.v1 import types_pb2 as pb
from tests.component.harness import ApiUnderTest, FakeCluster, after_first_read, start_api

SECRET = b"s3cr3t-\x00-\xfe-only-here"
PASSWORD = "registry-pa55word-only-here"


def spec(name: str = "web", stack: str = "", **fields: object) -> pb.ServiceSpec:
    return pb.ServiceSpec(name=name, image="app:1", replicas=1, stack=stack, **fields)  # type: ignore[arg-type]


async def refused(call: object, code: grpc.StatusCode) -> ApiError:
    with pytest.raises(ApiError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code == code, str(caught.value)
    return caught.value


async def apply(api: ApiUnderTest, request: cpb.ApplyServiceRequest) -> cpb.ApplyServiceResponse:
    async with api.channel() as channel:
        return await cpb_grpc.ControllerServiceStub(channel).ApplyService(request, timeout=10)


async def apply_refused(api: ApiUnderTest, request: cpb.ApplyServiceRequest) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await apply(api, request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    return caught.value.details() or ""


def shop(secret: bytes = SECRET, **extra: object) -> cpb.ApplyServiceRequest:
    """A stack's request: web with a secret, a config and a network; db with a volume."""
    web = spec(
        "shop_web",
        "shop",
        networks=["shop_front"],
        secrets=[pb.FileRef(name="shop_db_password")],
        configs=[pb.FileRef(name="shop_nginx")],
    )
    db = spec("shop_db", "shop", mounts=[pb.Mount(type=pb.Mount.TYPE_VOLUME, source="shop_data", target="/data")])
    return cpb.ApplyServiceRequest(
        services=[web, db],
        stack="shop",
        networks=[cpb.NetworkSpec(name="shop_front")],
        volumes=[cpb.VolumeSpec(name="shop_data")],
        secrets=[cpb.FileSpec(name="shop_db_password", data=secret)],
        configs=[cpb.FileSpec(name="shop_nginx", data=b"server {}")],
        **extra,  # type: ignore[arg-type]
    )


async def test_a_secret_is_stored_sealed_and_never_served(api: ApiUnderTest) -> None:
    async with api.client() as client:
        created = await client.create_secret("db_password", SECRET, {"team": "a"})
        listed = await client.list_secrets()
        removed = await client.remove_secret("db_password")
    for answer in (created, *listed, removed):
        assert answer.sealed == b""
        assert SECRET not in answer.SerializeToString()
    assert created.name == "db_password" and created.size == len(SECRET)
    # Keyed by the data key: a digest served to every caller cannot be checked against guesses offline.
    assert created.digest.startswith("hmac-sha256:") and hashlib.sha256(SECRET).hexdigest() not in created.digest
    key = Sealer.open(api.credentials_dir.parent / "pki")
    assert created.digest == key.digest(SECRET, secret_context("db_password"))
    assert [s.name for s in listed] == ["db_password"]
    assert removed.id == created.id
    assert await api.store.get_object(Kind.SECRET, "db_password") is None


async def test_the_stored_secret_opens_only_with_the_data_key(api: ApiUnderTest) -> None:
    async with api.client() as client:
        await client.create_secret("db_password", SECRET)
    stored = await api.store.get_object(Kind.SECRET, "db_password")
    assert isinstance(stored, pb.Secret)
    assert SECRET not in stored.sealed
    assert SECRET not in (api.credentials_dir.parent / "api.db").read_bytes()
    key_dir = api.credentials_dir.parent / "pki"
    assert Sealer.open(key_dir).unseal(stored.sealed, secret_context("db_password")) == SECRET


async def test_secret_refusals(api: ApiUnderTest) -> None:
    async with api.client() as client:
        await client.create_secret("one", b"x")
        error = await refused(client.create_secret("one", b"y"), grpc.StatusCode.ALREADY_EXISTS)
        assert "secret 'one' exists; secrets are immutable: create it under a new name" in str(error)
        error = await refused(client.create_secret("-bad", b"x"), grpc.StatusCode.INVALID_ARGUMENT)
        assert str(error).startswith("secret.name: name must be")
        error = await refused(client.create_secret("empty", b""), grpc.StatusCode.INVALID_ARGUMENT)
        assert str(error) == "secret.data: is empty; a secret needs at least one byte"
        error = await refused(client.create_secret("big", b"x" * 600_000), grpc.StatusCode.INVALID_ARGUMENT)
        assert "more than the 512000 a secret may hold" in str(error)
        error = await refused(client.remove_secret("nope"), grpc.StatusCode.NOT_FOUND)
        assert str(error) == "name: secret 'nope' not found; see `dockyard secret ls`"


async def test_removing_a_secret_or_config_in_use_is_refused_naming_the_services(api: ApiUnderTest) -> None:
    async with api.client() as client:
        await client.create_secret("pw", b"x")
        await client.create_config("conf", b"y")
        await client.apply(
            [spec("b", secrets=[pb.FileRef(name="pw")]), spec("a", secrets=[pb.FileRef(name="pw")], configs=[])]
        )
        await client.apply([spec("c", configs=[pb.FileRef(name="conf")])])
        error = await refused(client.remove_secret("pw"), grpc.StatusCode.FAILED_PRECONDITION)
        assert str(error).startswith("name: secret 'pw' is used by service(s) a, b;")
        error = await refused(client.remove_config("conf"), grpc.StatusCode.FAILED_PRECONDITION)
        assert str(error).startswith("name: config 'conf' is used by service(s) c;")
        await client.delete_service("c")
        assert (await client.remove_config("conf")).name == "conf"


async def test_configs_are_served_with_data_by_get_only(api: ApiUnderTest) -> None:
    async with api.client() as client:
        created = await client.create_config("nginx", b"server {}")
        listed = await client.list_configs()
        got = await client.get_config("nginx")
        await refused(client.create_config("nginx", b"other"), grpc.StatusCode.ALREADY_EXISTS)
        await refused(client.get_config("nope"), grpc.StatusCode.NOT_FOUND)
        await refused(client.remove_config("nope"), grpc.StatusCode.NOT_FOUND)
        error = await refused(client.create_config("cfg", b"", {"": "v"}), grpc.StatusCode.INVALID_ARGUMENT)
        assert [line.split(":")[0] for line in str(error).splitlines()] == ['config.labels[""]', "config.data"]
    assert created.data == b"server {}" and got.data == b"server {}"
    assert [c.name for c in listed] == ["nginx"] and listed[0].data == b""


async def test_registry_credentials_never_serve_the_password(api: ApiUnderTest) -> None:
    async with api.client() as client:
        first = await client.set_registry_credential("https://Registry.Example.com:5000/v2/", "me", PASSWORD)
        hub = await client.set_registry_credential("index.docker.io", "me", PASSWORD)
        again = await client.set_registry_credential("registry.example.com:5000", "you", PASSWORD + "2")
        listed = await client.list_registry_credentials()
        removed = await client.remove_registry_credential("registry.example.com:5000")
        await refused(client.remove_registry_credential("registry.example.com:5000"), grpc.StatusCode.NOT_FOUND)
        error = await refused(client.set_registry_credential("a b", "", ""), grpc.StatusCode.INVALID_ARGUMENT)
    assert [line.split(":")[0] for line in str(error).splitlines()] == ["server", "username", "password"]
    assert first.server == "registry.example.com:5000" and hub.server == "docker.io"
    assert [(c.server, c.username) for c in listed] == [("docker.io", "me"), ("registry.example.com:5000", "you")]
    assert again.created_at == first.created_at
    for answer in (first, hub, again, *listed, removed):
        assert answer.sealed_password == b""
        assert PASSWORD.encode() not in answer.SerializeToString()
    stored = await api.store.get_object(Kind.REGISTRY, "docker.io")
    assert isinstance(stored, pb.RegistryCredential) and stored.sealed_password
    assert PASSWORD.encode() not in stored.sealed_password


async def test_apply_makes_the_stack_objects_in_its_transaction(api: ApiUnderTest) -> None:
    response = await apply(api, shop())
    assert {r.service.name for r in response.results} == {"shop_web", "shop_db"}
    assert all(r.service.spec.stack == "shop" for r in response.results)
    for kind, name in (
        (Kind.NETWORK, "shop_front"),
        (Kind.VOLUME, "shop_data"),
        (Kind.SECRET, "shop_db_password"),
        (Kind.CONFIG, "shop_nginx"),
        (Kind.NETWORK, "shop_default"),  # db names no network: it joins the stack's default, made for it
    ):
        obj = await api.store.get_object(kind, name)
        assert obj is not None, name
        assert not isinstance(obj, pb.RegistryCredential) and obj.stack == "shop"
    revision = api.store.revision
    again = await apply(api, shop())
    assert {r.action for r in again.results} == {cpb.ApplyResult.ACTION_UNCHANGED}
    assert api.store.revision == revision  # nothing written
    async with api.client() as client:
        stacks = await client.list_stacks()
    assert [
        (s.name, list(s.services), list(s.networks), list(s.volumes), list(s.secrets), list(s.configs)) for s in stacks
    ] == [
        (
            "shop",
            ["shop_db", "shop_web"],
            ["shop_default", "shop_front"],
            ["shop_data"],
            ["shop_db_password"],
            ["shop_nginx"],
        )
    ]


async def test_a_changed_secret_or_config_is_refused_as_immutable(api: ApiUnderTest) -> None:
    await apply(api, shop())
    request = shop(secret=b"rotated")
    request.configs[0].data = b"changed"
    details = await apply_refused(api, request)
    assert details.splitlines() == [
        "secrets[0]: secret 'shop_db_password' exists with other data; secrets are immutable: create it under a "
        "new name",
        "configs[0]: config 'shop_nginx' exists with other data; configs are immutable: create it under a new name",
    ]


async def legacy_secret(api: ApiUnderTest, name: str, data: bytes) -> pb.Secret:
    """Stores a secret as a store made before keyed digests holds it: digest the plain sha256 of its data."""
    sealer = Sealer.open(api.credentials_dir.parent / "pki")
    sealed = sealer.seal(data, secret_context(name))
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    await api.store.commit([Put(pb.Secret(id="legacy", name=name, stack="shop", digest=digest, sealed=sealed))])
    stored = await api.store.get_object(Kind.SECRET, name)
    assert isinstance(stored, pb.Secret)
    return stored


async def test_a_secret_stored_with_a_plain_digest_is_still_compared_by_its_data(api: ApiUnderTest) -> None:
    await legacy_secret(api, "shop_db_password", SECRET)
    await apply(api, shop())  # the same data: no immutability refusal
    details = await apply_refused(api, shop(secret=b"rotated"))
    assert "secret 'shop_db_password' exists with other data" in details


async def test_plain_digests_are_replaced_from_the_sealed_data(api: ApiUnderTest) -> None:
    before = await legacy_secret(api, "shop_db_password", SECRET)
    sealer = Sealer.open(api.credentials_dir.parent / "pki")
    assert await redigest_secrets(api.store, sealer) == 1
    after = await api.store.get_object(Kind.SECRET, "shop_db_password")
    assert isinstance(after, pb.Secret)
    assert after.digest == sealer.digest(SECRET, secret_context("shop_db_password"))
    assert after.sealed == before.sealed and after.id == before.id
    assert await redigest_secrets(api.store, sealer) == 0  # done once
    await apply(api, shop())
    assert "exists with other data" in await apply_refused(api, shop(secret=b"rotated"))


async def test_a_controller_replaces_plain_secret_digests_at_start(tmp_path: Path) -> None:
    cluster = FakeCluster(root=tmp_path)
    await cluster.start_controller()
    try:
        assert cluster.controller is not None
        async with cluster.client() as client:
            created = await client.create_secret("pw", SECRET)
        legacy = await cluster.controller.store.get_object(Kind.SECRET, "pw")
        assert isinstance(legacy, pb.Secret)
        legacy.digest = "sha256:" + hashlib.sha256(SECRET).hexdigest()
        await cluster.controller.store.commit([Put(legacy)])
        await cluster.stop_controller()
        await cluster.start_controller()
        async with cluster.client() as client:
            [listed] = await client.list_secrets()
        assert listed.digest == created.digest and listed.digest.startswith("hmac-sha256:")
    finally:
        await cluster.stop_controller()
        await cluster.close()


async def test_references_to_missing_objects_are_refused_naming_the_field(api: ApiUnderTest) -> None:
    request = cpb.ApplyServiceRequest(
        services=[
            spec(
                "web",
                networks=["front"],
                secrets=[pb.FileRef(name="pw")],
                configs=[pb.FileRef(name="conf")],
            )
        ]
    )
    details = await apply_refused(api, request)
    assert details.splitlines() == [
        "services.web.networks[0]: network 'front' does not exist; declare it in the file's networks or create it "
        "with `dockyard network create`",
        "services.web.secrets[0].name: secret 'pw' does not exist; declare it in the file's secrets or create it "
        "with `dockyard secret create`",
        "services.web.configs[0].name: config 'conf' does not exist; declare it in the file's configs or create it "
        "with `dockyard config create`",
    ]
    assert await api.store.list_services() == []


async def test_a_mounted_volume_is_made_on_first_use_and_dry_run_makes_nothing(api: ApiUnderTest) -> None:
    mount = pb.Mount(type=pb.Mount.TYPE_VOLUME, source="cache", target="/c", volume_labels={"k": "v"})
    dry = cpb.ApplyServiceRequest(services=[spec("web", mounts=[mount])], dry_run=True)
    await apply(api, dry)
    assert await api.store.list_objects(Kind.VOLUME) == []
    await apply(api, cpb.ApplyServiceRequest(services=[spec("web", mounts=[mount])]))
    [volume] = await api.store.list_objects(Kind.VOLUME)
    assert isinstance(volume, pb.Volume)
    assert (volume.name, volume.stack, dict(volume.labels), volume.node_id) == ("cache", "", {"k": "v"}, "")


async def test_a_service_of_another_stack_in_a_stack_request_is_refused(api: ApiUnderTest) -> None:
    request = cpb.ApplyServiceRequest(services=[spec("other_web", "other")], stack="shop")
    details = await apply_refused(api, request)
    assert (
        details
        == "services.other_web.stack: is 'other', but the request deploys stack 'shop'; give one stack per request"
    )


async def test_prune_with_a_stack_prunes_only_that_stack(api: ApiUnderTest) -> None:
    async with api.client() as client:
        await client.apply([spec("loose")])
    await apply(api, shop())
    await apply(api, cpb.ApplyServiceRequest(services=[spec("blog_web", "blog")], stack="blog"))
    request = shop(prune=True)
    del request.services[1]  # shop_db goes
    response = await apply(api, request)
    removed = [r.service.name for r in response.results if r.action == cpb.ApplyResult.ACTION_REMOVED]
    assert removed == ["shop_db"]
    assert [s.name for s in await api.store.list_services()] == ["blog_web", "loose", "shop_web"]


async def test_remove_stack_removes_services_and_unused_objects_and_keeps_volumes(api: ApiUnderTest) -> None:
    await apply(api, shop())
    async with api.client() as client:
        # Someone outside the stack uses its config: that one stays.
        await client.apply([spec("outsider", configs=[pb.FileRef(name="shop_nginx")])])
        removed = await client.remove_stack("shop")
        # What is left (a volume, a config another service uses) still names the stack: removing it again is a no-op.
        assert list((await client.remove_stack("shop")).services) == []
        await refused(client.remove_stack("nope"), grpc.StatusCode.NOT_FOUND)
        await refused(client.remove_stack("Bad Name"), grpc.StatusCode.INVALID_ARGUMENT)
        stacks = await client.list_stacks()
    assert list(removed.services) == ["shop_db", "shop_web"]
    assert list(removed.networks) == ["shop_default", "shop_front"]
    assert list(removed.secrets) == ["shop_db_password"]
    assert list(removed.configs) == []
    assert list(removed.volumes) == ["shop_data"]  # left in place
    assert [s.name for s in await api.store.list_services()] == ["outsider"]
    assert await api.store.get_object(Kind.SECRET, "shop_db_password") is None
    assert await api.store.get_object(Kind.NETWORK, "shop_front") is None
    assert await api.store.get_object(Kind.VOLUME, "shop_data") is not None
    assert await api.store.get_object(Kind.CONFIG, "shop_nginx") is not None
    assert [(s.name, list(s.services), list(s.volumes), list(s.configs)) for s in stacks] == [
        ("shop", [], ["shop_data"], ["shop_nginx"])
    ]


async def test_no_response_or_log_carries_the_secret(api: ApiUnderTest) -> None:
    answers: list[bytes] = []
    with structlog.testing.capture_logs() as logs:
        answers.append((await apply(api, shop())).SerializeToString())
        async with api.client() as client:
            answers.append((await client.create_secret("plain", SECRET)).SerializeToString())
            answers.extend(s.SerializeToString() for s in await client.list_secrets())
            answers.extend(s.SerializeToString() for s in await client.list_services())
            answers.extend(s.SerializeToString() for s in await client.list_stacks())
            answers.append((await client.set_registry_credential("docker.io", "me", PASSWORD)).SerializeToString())
            answers.extend(c.SerializeToString() for c in await client.list_registry_credentials())
            await refused(client.create_secret("plain", SECRET), grpc.StatusCode.ALREADY_EXISTS)
            answers.append((await client.remove_stack("shop")).SerializeToString())
        await apply_refused(api, _with_missing_secret())
    for answer in answers:
        assert SECRET not in answer
        assert PASSWORD.encode() not in answer
    text = repr(logs)
    assert SECRET.decode(errors="replace") not in text and repr(SECRET) not in text
    assert PASSWORD not in text


def _with_missing_secret() -> cpb.ApplyServiceRequest:
    """A refused apply: its error names the missing secret, never a declared one's data."""
    request = shop()
    request.services[0].secrets.append(pb.FileRef(name="missing"))
    return request


async def test_without_a_data_key_secrets_and_credentials_are_refused(tmp_path: Path) -> None:
    server = await start_api(tmp_path, sealer=None)
    try:
        async with server.client() as client:
            error = await refused(client.create_secret("pw", b"x"), grpc.StatusCode.FAILED_PRECONDITION)
            assert str(error) == "this controller has no data key to seal secrets with"
            await refused(client.set_registry_credential("docker.io", "me", "pw"), grpc.StatusCode.FAILED_PRECONDITION)
        details = await apply_refused(server, shop())
        assert "secrets: this controller has no data key to seal secrets with" in details.splitlines()
    finally:
        await server.close()


async def test_plan_with_prune_of_a_stack_plans_only_that_stacks_removals(api: ApiUnderTest) -> None:
    async with api.client() as client:
        await client.apply([spec("loose")])
        await apply(api, shop())
        plan = await client.plan([spec("shop_web", "shop")], prune=True)
    removed = [p.name for p in plan.services if p.action == cpb.ServicePlan.ACTION_REMOVE]
    assert removed == ["shop_db"]


async def test_prune_of_stacked_specs_without_a_stack_field_prunes_only_their_stack_as_the_plan_says(
    api: ApiUnderTest,
) -> None:
    async with api.client() as client:
        await client.apply([spec("loose")])
        await apply(api, shop())
        await apply(api, cpb.ApplyServiceRequest(services=[spec("blog_web", "blog")], stack="blog"))
        # The specs say their stack; the request's stack field is empty.
        plan = await client.plan([spec("shop_web", "shop")], prune=True)
        planned = sorted(p.name for p in plan.services if p.action == cpb.ServicePlan.ACTION_REMOVE)
        response = await client.apply([spec("shop_web", "shop")], prune=True)
    removed = sorted(r.service.name for r in response.results if r.action == cpb.ApplyResult.ACTION_REMOVED)
    assert removed == planned == ["shop_db"]
    assert [s.name for s in await api.store.list_services()] == ["blog_web", "loose", "shop_web"]


async def test_a_controller_whose_store_has_secrets_refuses_to_start_without_its_data_key(tmp_path: Path) -> None:
    cluster = FakeCluster(root=tmp_path)
    await cluster.start_controller()
    try:
        async with cluster.client() as client:
            await client.create_secret("pw", SECRET)
    finally:
        await cluster.stop_controller()
    (tmp_path / "controller" / DATA_KEY_FILE).unlink()
    with pytest.raises(StartupError, match=r"data.key: missing, and the store holds 1 secret"):
        await cluster.start_controller()
    await cluster.close()


async def test_a_plan_checks_the_references_of_a_file_as_the_apply_does(api: ApiUnderTest) -> None:
    request = shop()
    extras = cpb.ApplyServiceRequest(
        stack=request.stack,
        networks=request.networks,
        volumes=request.volumes,
        secrets=request.secrets,
        configs=request.configs,
    )
    async with api.client() as client:
        planned = await client.plan(list(request.services), extras=extras)
        assert sorted(s.name for s in planned.services) == ["shop_db", "shop_web"]
        # Without the file's declarations the same services refer to objects that do not exist.
        error = await refused(client.plan(list(request.services)), grpc.StatusCode.INVALID_ARGUMENT)
        assert "shop_db_password" in str(error) and "shop_front" in str(error)
    # A plan writes nothing: no object was made.
    assert await api.store.get_object(Kind.SECRET, "shop_db_password") is None
    assert await api.store.get_object(Kind.NETWORK, "shop_front") is None


@pytest.mark.parametrize("kind", ["secret", "config", "network"])
async def test_a_removal_and_an_apply_creating_a_user_never_both_commit(api: ApiUnderTest, kind: str) -> None:
    users: dict[str, dict[str, object]] = {
        "secret": {"secrets": [pb.FileRef(name="obj")]},
        "config": {"configs": [pb.FileRef(name="obj")]},
        "network": {"networks": ["obj"]},
    }
    fields = users[kind]
    async with api.client() as client:
        await {"secret": client.create_secret, "config": client.create_config}.get(
            kind, lambda name, _: client.create_network(name)
        )("obj", b"x")
        remove = {"secret": client.remove_secret, "config": client.remove_config, "network": client.remove_network}
        # The apply lands between the removal's read of the services (no user yet) and its commit.
        after_first_read(api, lambda: client.apply([spec("user", "", **fields)]))
        error = await refused(remove[kind]("obj"), grpc.StatusCode.ABORTED)
    assert "changed while this request ran; try again" in str(error)
    assert await api.store.get_object(getattr(Kind, kind.upper()), "obj") is not None
    assert [s.name for s in await api.store.list_services()] == ["user"]


async def test_a_removal_fails_when_a_service_it_read_changes_before_its_commit(api: ApiUnderTest) -> None:
    async with api.client() as client:
        await client.create_secret("pw", b"x")
        await client.apply([spec("web")])
    [web] = await api.store.list_services()

    async def rollback_like_write() -> None:
        # Not an apply (which writes the secret too): a write of the service alone gives it the reference.
        changed = pb.Service()
        changed.CopyFrom(web)
        changed.spec.secrets.append(pb.FileRef(name="pw"))
        await api.store.commit([Put(changed, expect_version=web.version)])

    after_first_read(api, rollback_like_write)
    async with api.client() as client:
        await refused(client.remove_secret("pw"), grpc.StatusCode.ABORTED)
    assert await api.store.get_object(Kind.SECRET, "pw") is not None


async def test_remove_stack_fails_when_a_service_left_joins_its_network_meanwhile(api: ApiUnderTest) -> None:
    await apply(api, shop())
    async with api.client() as client:
        await client.apply([spec("outsider")])
    outsider = next(s for s in await api.store.list_services() if s.name == "outsider")

    async def join() -> None:
        changed = pb.Service()
        changed.CopyFrom(outsider)
        changed.spec.networks.append("shop_front")
        await api.store.commit([Put(changed, expect_version=outsider.version)])

    after_first_read(api, join)
    async with api.client() as client:
        await refused(client.remove_stack("shop"), grpc.StatusCode.ABORTED)
    assert await api.store.get_object(Kind.NETWORK, "shop_front") is not None


async def test_an_apply_keeping_its_references_writes_no_object(api: ApiUnderTest) -> None:
    await apply(api, shop())
    network = await api.store.get_object(Kind.NETWORK, "shop_front")
    request = shop()
    request.services[0].replicas = 3  # a change, but not of its references
    await apply(api, request)
    # Held only for a new reference: a network's subnets are written often, and a needless write could conflict.
    assert await api.store.get_object(Kind.NETWORK, "shop_front") == network

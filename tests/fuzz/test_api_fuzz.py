"""The public API under hostile requests, over real gRPC: only documented refusals, and a refusal writes nothing.

Every ControllerService method gets random bytes, invalid UTF-8 in any string field, nesting past protobuf's
limit, an oversized body, forged page tokens and any request message filled with hostile values. Each
answer must be OK or a code in the method's ALLOWED set (never UNKNOWN or INTERNAL), and after any refusal,
and after any read, the store's revision and contents are what they were before.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from controller.api.bounds import MAX_REQUEST_ITEMS
from controller.api.handlers import SERVICE
from controller.api.paging import encode_token
from controller.api.servicer import ControllerApi
from controller.api.validation import node_label_errors
from controller.store.base import Put
from dockyard.spec.validation import service_issues
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb
from tests.component.harness import ApiInThread
from tests.fuzz.hostile import bad_utf8, deep_groups, has_strings, hostile_text, message_of

Code = grpc.StatusCode

# What the TLS layer answers before any method runs (issue 8, point 3): no certificate, or the wrong role.
AUTH: Final = frozenset({Code.UNAUTHENTICATED, Code.PERMISSION_DENIED})
# A body above the server's receive limit is refused by grpcio itself; list pages and watches are capped in
# number at once (controller.api.bounds), which a sequential suite never fills but a method may answer.
SIZE: Final = frozenset({Code.RESOURCE_EXHAUSTED})

# Per method, the refusals its docstring and controller.api.servicer document, besides INVALID_ARGUMENT for a
# request that does not parse or validate (every method). ABORTED (a write that raced another) is left out on
# purpose: nothing else writes while this suite runs, so it would be a bug here.
_DOCUMENTED: Final = {
    "ApplyService": {Code.FAILED_PRECONDITION},  # if_revision no longer holds
    "GetService": {Code.NOT_FOUND},  # no such service, or no such revision of it
    "ListServices": set(),
    "DeleteService": {Code.NOT_FOUND, Code.FAILED_PRECONDITION},  # unknown name; if_revision
    "ScaleService": {Code.NOT_FOUND, Code.FAILED_PRECONDITION},  # unknown; if_revision or a global service
    "ListNodes": set(),
    "ListTasks": {Code.NOT_FOUND},  # the service filter names no service
    "UpdateNode": {Code.NOT_FOUND, Code.FAILED_PRECONDITION},  # unknown node; if_version
    "RemoveNode": {Code.NOT_FOUND, Code.FAILED_PRECONDITION},  # unknown; if_version, or ready without force
    "Watch": {Code.NOT_FOUND, Code.OUT_OF_RANGE},  # unknown service filter; since_revision out of the kept range
    "GetJoinToken": {Code.FAILED_PRECONDITION},  # the controller issues no join tokens (as start_api serves it)
    "PlanApply": set(),
    "ListServiceHistory": {Code.NOT_FOUND},  # no such service
    "RollbackService": {Code.NOT_FOUND, Code.FAILED_PRECONDITION},  # unknown; nothing to roll back to, if_revision
    "RebalanceService": {Code.NOT_FOUND, Code.FAILED_PRECONDITION},  # unknown; a global service or a job
    "CreateSecret": {Code.ALREADY_EXISTS, Code.FAILED_PRECONDITION},  # name taken (immutable); no data key
    "ListSecrets": set(),
    "RemoveSecret": {Code.NOT_FOUND, Code.FAILED_PRECONDITION},  # unknown; a service uses it
    "CreateConfig": {Code.ALREADY_EXISTS},  # name taken (immutable)
    "ListConfigs": set(),
    "GetConfig": {Code.NOT_FOUND},
    "RemoveConfig": {Code.NOT_FOUND, Code.FAILED_PRECONDITION},  # unknown; a service uses it
    "SetRegistryCredential": {Code.FAILED_PRECONDITION},  # no data key
    "ListRegistryCredentials": set(),
    "RemoveRegistryCredential": {Code.NOT_FOUND},
    "ListStacks": set(),
    "RemoveStack": {Code.NOT_FOUND},
    "CreateNetwork": {Code.ALREADY_EXISTS},  # name taken (or the cluster network's)
    "ListNetworks": set(),
    "RemoveNetwork": {Code.NOT_FOUND, Code.FAILED_PRECONDITION},  # unknown; the cluster network, or a service joins it
    "ListVolumes": set(),
    # unknown; a service mounts it, its node is down or not connected, or the node refused
    "RemoveVolume": {Code.NOT_FOUND, Code.FAILED_PRECONDITION},
}
ALLOWED: Final = {name: frozenset({Code.INVALID_ARGUMENT, *codes}) | AUTH | SIZE for name, codes in _DOCUMENTED.items()}
# The methods this controller serves (the contract may name more: those answer UNIMPLEMENTED); a served
# method must document its refusals above. A client-streaming method takes a stream, not one body.
METHODS: Final = {
    method.name: method
    for method in SERVICE.methods
    if hasattr(ControllerApi, method.name) and not method.client_streaming
}
assert set(ALLOWED) == set(METHODS), "every served method needs its documented refusals"

# A Watch that is still open this long after its request answered OK (it waits for changes that never come).
_WATCH_WAIT: Final = 0.3
# No example database (nothing written into the tree) and no explain phase (its tracer is slow on 3.11).
# DOCKYARD_FUZZ_EXAMPLES=2000 runs a deeper search by hand; CI keeps to the default.
_FUZZ: Final = settings(
    max_examples=int(os.environ.get("DOCKYARD_FUZZ_EXAMPLES", "25")),
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


def _identity(data: bytes) -> bytes:
    return data


@dataclass
class Served:
    """The API in its own thread, a raw channel to it, and the seed objects hostile requests aim at."""

    api: ApiInThread
    channel: grpc.aio.Channel

    def call(self, method: str, body: bytes, wait: float = _WATCH_WAIT) -> tuple[Code, str]:
        """Sends `body` as the request of `method`; returns the status code and message.

        A stream that sends nothing for `wait` seconds is taken as accepted (OK) and cancelled.
        """
        return self.api.run(self._call(method, body, wait))

    async def _call(self, method: str, body: bytes, wait: float) -> tuple[Code, str]:
        path = f"/{SERVICE.full_name}/{method}"
        try:
            if METHODS[method].server_streaming:
                stream = self.channel.unary_stream(path, request_serializer=_identity, response_deserializer=_identity)
                call = stream(body, timeout=10)
                try:
                    await asyncio.wait_for(anext(aiter(call)), wait)
                except TimeoutError:
                    pass  # open and waiting for changes: accepted
                finally:
                    call.cancel()
            else:
                unary = self.channel.unary_unary(path, request_serializer=_identity, response_deserializer=_identity)
                await unary(body, timeout=10)
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details() or ""
        return Code.OK, ""

    def snapshot(self) -> tuple[int, list[bytes]]:
        """The store's revision and every object in it, serialized."""

        async def read() -> tuple[int, list[bytes]]:
            store = self.api.api.store
            objects = [*await store.list_services(), *await store.list_nodes(), *await store.list_tasks()]
            return store.revision, [o.SerializeToString(deterministic=True) for o in objects]

        return self.api.run(read())

    def problems(self) -> list[str]:
        """What is wrong with the stored services and nodes, as the API's own checks see it."""

        async def read() -> list[str]:
            store = self.api.api.store
            found = [str(issue) for s in await store.list_services() for issue in service_issues(s.spec)]
            for node in await store.list_nodes():
                found.extend(str(issue) for issue in node_label_errors(dict(node.labels), []))
                if node.availability not in pb.NodeAvailability.values():
                    found.append(f"node {node.id}: availability {node.availability}")
            return found

        return self.api.run(read())

    def seed(self) -> None:
        """Makes sure the service `web` (with a task) and the node `n1` on host `host-a` exist."""

        async def write() -> None:
            store = self.api.api.store
            if await store.get_service("web") is None:
                async with self.api.api.client() as client:
                    spec = pb.ServiceSpec(name="web", image="nginx:1", replicas=2, env={"A": "1"})
                    [result] = (await client.apply([spec])).results
                task = pb.Task(id="t1", service_id=result.service.id, service_name="web", slot=1, revision=1)
                task.node_id = "n1"
                await store.commit([Put(task)])
            if await store.get_node("n1") is None:
                node = pb.Node(id="n1", status=pb.NODE_STATUS_DOWN)
                node.description.hostname = "host-a"
                await store.commit([Put(node)])

        self.api.run(write())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One API server for the whole module, seeded."""
    api = ApiInThread(Path(tmp_path_factory.mktemp("fuzz-api")))

    async def open_channel() -> grpc.aio.Channel:
        return api.api.channel()

    channel = api.run(open_channel())
    served = Served(api, channel)
    served.seed()
    try:
        yield served
    finally:
        api.run(channel.close())
        api.close()


def _input(method: str) -> type:
    return message_factory.GetMessageClass(METHODS[method].input_type)


def check(
    served: Served, method: str, body: bytes, expect: frozenset[Code] | None = None, wait: float = _WATCH_WAIT
) -> Code:
    """Sends one request; asserts an allowed answer, and an untouched store after a refusal or a read."""
    served.seed()
    before = served.snapshot()
    code, message = served.call(method, body, wait)
    allowed = ALLOWED[method] if expect is None else expect
    assert code == Code.OK or code in allowed, f"{method} answered {code.name}: {message!r}"
    if code != Code.OK or not _writes(METHODS[method]):
        assert served.snapshot() == before, f"{method} refused with {code.name} but the store changed"
    else:
        assert served.problems() == [], f"{method} wrote what the API would refuse"
    return code


def _writes(method: MethodDescriptor) -> bool:
    return method.name in {
        "ApplyService",
        "DeleteService",
        "ScaleService",
        "UpdateNode",
        "RemoveNode",
        "RollbackService",
        "RebalanceService",
        "CreateSecret",
        "RemoveSecret",
        "CreateConfig",
        "RemoveConfig",
        "SetRegistryCredential",
        "RemoveRegistryCredential",
        "RemoveStack",
        "CreateNetwork",
        "RemoveNetwork",
        "RemoveVolume",
    }


@pytest.mark.parametrize("method", sorted(METHODS))
@_FUZZ
@given(body=st.binary(max_size=300))
def test_random_bytes_are_refused_or_parsed(served: Served, method: str, body: bytes) -> None:
    check(served, method, body)


@pytest.mark.parametrize("method", sorted(m for m in METHODS if has_strings(METHODS[m].input_type)))
@_FUZZ
@given(data=st.data())
def test_invalid_utf8_in_any_string_field_is_invalid_argument(served: Served, method: str, data: st.DataObject) -> None:
    descriptor = METHODS[method].input_type
    valid = data.draw(message_of(descriptor)).SerializeToString()
    body = data.draw(bad_utf8(descriptor, valid))
    # SIZE: the valid part alone may already be above the receive limit.
    check(served, method, body, expect=frozenset({Code.INVALID_ARGUMENT}) | SIZE | AUTH)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_nesting_past_the_limit_is_invalid_argument_and_within_it_is_skipped(served: Served, method: str) -> None:
    check(served, method, deep_groups(150), expect=frozenset({Code.INVALID_ARGUMENT}) | AUTH)
    # Unknown fields within the limit are skipped: the request is the empty one, answered as such.
    check(served, method, deep_groups(40))


@pytest.mark.parametrize("method", ["ApplyService", "GetService", "Watch"])
def test_a_body_above_the_receive_limit_is_resource_exhausted(served: Served, method: str) -> None:
    body = cpb.GetServiceRequest(name="x" * (5 * 1024 * 1024)).SerializeToString()
    # A stream's refusal may take longer than the usual wait to arrive: 5 MiB have to be sent first.
    assert check(served, method, body, expect=SIZE | AUTH, wait=10) == Code.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("method", sorted(METHODS))
@_FUZZ
@given(data=st.data())
def test_hostile_requests_get_documented_answers(served: Served, method: str, data: st.DataObject) -> None:
    request = data.draw(message_of(METHODS[method].input_type))
    if method == "ApplyService" and data.draw(st.booleans()):
        # Mostly valid specs with a few hostile fields reach past the first checks.
        for spec in request.services:
            base = pb.ServiceSpec(name="web", image="nginx:1", replicas=1)
            base.MergeFrom(spec)
            spec.CopyFrom(base)
    check(served, method, request.SerializeToString())


_TOKEN_KEYS = st.lists(
    st.one_of(hostile_text, st.integers(), st.integers(-(2**70), 2**70), st.booleans(), st.none(), st.floats()),
    max_size=5,
)
_LISTS: Final = {"ListServices": "services", "ListNodes": "nodes", "ListTasks": "tasks"}


@pytest.mark.parametrize("method", sorted(_LISTS))
@_FUZZ
@given(
    token=st.one_of(
        hostile_text,
        st.binary(max_size=64).map(lambda raw: raw.hex()),
        _TOKEN_KEYS.map(lambda key: ("forged", key)),
    ),
    size=st.integers(0, 2**32 - 1),
)
def test_garbage_and_forged_page_tokens_are_invalid_argument(
    served: Served, method: str, token: str | tuple[str, list[object]], size: int
) -> None:
    if isinstance(token, tuple):
        # A token with this server's own framing and fingerprint, around a key of any shape and values.
        query = "\0\x000" if method == "ListTasks" else ""
        token = encode_token(_LISTS[method], query, tuple(token[1]))  # type: ignore[arg-type]
    request = _input(method)(page_token=token, page_size=size)
    check(served, method, request.SerializeToString())


@_FUZZ
@given(
    since=st.one_of(st.integers(0, 2**64 - 1), st.sampled_from((2**63 - 1, 2**63, 2**64 - 1))),
    kinds=st.lists(st.integers(-(2**31), 2**31 - 1), max_size=3),
)
def test_watch_with_absurd_revisions_and_kinds(served: Served, since: int, kinds: list[int]) -> None:
    request = cpb.WatchRequest(since_revision=since, kinds=kinds)
    code = check(served, "Watch", request.SerializeToString())
    if since > served.snapshot()[0]:
        assert code == Code.OUT_OF_RANGE or kinds, code


def test_the_api_still_answers_after_the_fuzzing(served: Served) -> None:
    served.seed()
    request = cpb.GetServiceRequest(name="web")
    assert served.call("GetService", request.SerializeToString())[0] == Code.OK


@pytest.mark.parametrize(
    ("method", "request_"),
    [
        ("UpdateNode", cpb.UpdateNodeRequest(node="n1", availability=43)),
        ("ListTasks", cpb.ListTasksRequest(view=77)),
    ],
)
def test_enum_numbers_the_proto_does_not_define_are_invalid_argument(
    served: Served, method: str, request_: cpb.UpdateNodeRequest | cpb.ListTasksRequest
) -> None:
    # proto3 enums accept any number: an availability of 43 was once stored as is.
    assert check(served, method, request_.SerializeToString()) == Code.INVALID_ARGUMENT
    assert "is not a" in served.call(method, request_.SerializeToString())[1]


@pytest.mark.parametrize(
    "request_",
    [
        cpb.ApplyServiceRequest(services=[pb.ServiceSpec(name=f"s{i}") for i in range(MAX_REQUEST_ITEMS + 1)]),
        cpb.ApplyServiceRequest(if_revision={f"s{i}": 1 for i in range(MAX_REQUEST_ITEMS + 1)}),
        cpb.WatchRequest(services=["web"] * (MAX_REQUEST_ITEMS + 1)),
        cpb.WatchRequest(kinds=[cpb.OBJECT_KIND_TASK] * (MAX_REQUEST_ITEMS + 1)),
        cpb.UpdateNodeRequest(node="n1", remove_labels=["a"] * (MAX_REQUEST_ITEMS + 1)),
        cpb.UpdateNodeRequest(node="n1", set_labels={f"k{i}": "v" for i in range(MAX_REQUEST_ITEMS + 1)}),
    ],
    ids=lambda request: type(request).__name__,
)
def test_a_list_longer_than_a_request_may_hold_is_refused_before_its_items_are_read(
    served: Served, request_: cpb.ApplyServiceRequest | cpb.WatchRequest | cpb.UpdateNodeRequest
) -> None:
    # 30,000 tiny services once held every other call for 2.4 s while they were validated one by one.
    method = {"ApplyServiceRequest": "ApplyService", "WatchRequest": "Watch", "UpdateNodeRequest": "UpdateNode"}
    name = method[type(request_).__name__]
    assert check(served, name, request_.SerializeToString()) == Code.INVALID_ARGUMENT
    assert (
        f"more than the {MAX_REQUEST_ITEMS} one request may hold" in served.call(name, request_.SerializeToString())[1]
    )

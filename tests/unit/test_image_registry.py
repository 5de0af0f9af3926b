"""The controller's memory of which node has which image, and the pushable images sent with assignments."""

from __future__ import annotations

from controller.dispatcher.session import AgentSession
from controller.images import ImageRegistry
from dockyard.limits import HELLO_IMAGES
from dockyard.v1 import types_pb2 as pb


def test_hellos_replace_a_nodes_images_and_pushes_add_to_them() -> None:
    registry = ImageRegistry()
    registry.hello("n1", ["nginx", "app:1", "x" * 600])
    assert registry.has("n1", "nginx:latest") and registry.has("n1", "docker.io/library/nginx")
    assert not registry.has("n1", "x" * 600), "what is no reference is not kept"
    registry.hello("n1", ["app:1"])
    assert not registry.pushable("nginx"), "the node's new hello no longer lists it"
    registry.add("n2", "app:1")
    assert registry.holders("app:1") == ["n1", "n2"]
    registry.forget("n1")
    assert registry.holders("app:1") == ["n2"] and registry.pushable("app:1")
    registry.hello("n3", (f"img{i}:1" for i in range(HELLO_IMAGES + 10)))
    assert registry.has("n3", "img0:1") and not registry.has("n3", f"img{HELLO_IMAGES + 5}:1")


def test_an_image_being_pushed_is_pushable_until_the_push_ends() -> None:
    registry = ImageRegistry()
    assert not registry.pushable("app:dev")
    with registry.pushing("app:dev"):
        assert registry.pushable("app:dev:latest".removesuffix(":latest"))
    assert not registry.pushable("app:dev")


def _task(task_id: str, service_id: str) -> pb.Task:
    return pb.Task(id=task_id, service_id=service_id, revision=1, node_id="n1", desired_state=pb.DESIRED_STATE_RUNNING)


def test_assignments_list_the_pushable_images_of_the_specs_they_carry() -> None:
    registry = ImageRegistry()
    registry.hello("n2", ["app:dev"])
    session = AgentSession(node_id="n1", session_id="s", pushable=registry.pushable)
    specs = {("web", 1): pb.ServiceSpec(name="web", image="app:dev"), ("db", 1): pb.ServiceSpec(name="db", image="pg")}
    session.send_full([_task("t1", "web"), _task("t2", "db")], specs)
    [full] = [m.assignments for m in session.take() if m.HasField("assignments")]
    assert list(full.pushable_images) == ["app:dev"]
    with registry.pushing("pg"):  # decided when the message is written
        session.on_task(_task("t3", "db2"), False, {("db2", 1): pb.ServiceSpec(name="db2", image="pg")})
        [incremental] = [m.assignments for m in session.take() if m.HasField("assignments")]
    assert list(incremental.pushable_images) == ["pg"]

"""A file's Deployment: its services and the request extras, as the CLI sends them in ApplyServiceRequest."""

from __future__ import annotations

from dockyard.spec import Deployment, load_deployment
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb


def test_extras_carry_the_stack_and_declared_objects_only() -> None:
    deployment = Deployment(
        [pb.ServiceSpec(name="shop_web", stack="shop")],
        stack="shop",
        networks=[cpb.NetworkSpec(name="shop_default")],
        volumes=[cpb.VolumeSpec(name="shop_db-data")],
        secrets=[cpb.FileSpec(name="shop_db_password", data=b"s3cret")],
        configs=[cpb.FileSpec(name="shop_nginx", data=b"conf")],
    )
    request = cpb.ApplyServiceRequest(services=deployment.specs, prune=True)
    request.MergeFrom(deployment.extras())
    assert deployment.names == ["shop_web"]
    assert request.stack == "shop"
    assert [n.name for n in request.networks] == ["shop_default"]
    assert [v.name for v in request.volumes] == ["shop_db-data"]
    assert [(s.name, s.data) for s in request.secrets] == [("shop_db_password", b"s3cret")]
    assert [(c.name, c.data) for c in request.configs] == [("shop_nginx", b"conf")]
    assert request.prune and [s.name for s in request.services] == ["shop_web"]
    assert not deployment.extras().services


def test_a_file_without_extras_gives_an_empty_deployment_around_its_specs() -> None:
    deployment = load_deployment("services:\n  web:\n    image: nginx:1.27\n")
    assert deployment.names == ["web"]
    assert deployment.stack == ""
    assert deployment.extras() == cpb.ApplyServiceRequest()

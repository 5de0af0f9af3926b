"""The controller's server over the wire: reflection v1 and v1alpha, and refusing an address in use."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2 as alpha_pb2

from controller.api.reflection import v1_message
from controller.errors import EXIT_CONFIG, StartupError
from controller.server import Controller, ControllerConfig
from tests.component.harness import FakeCluster
from tests.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]
V1_METHOD = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
ALPHA_METHOD = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


async def ask_v1(cluster: FakeCluster, *requests: dict[str, str | bool]) -> list[object]:
    """Sends v1 reflection requests over one stream, as a v1-only client such as grpcurl does (as an admin)."""
    request_class, response_class = v1_message("ServerReflectionRequest"), v1_message("ServerReflectionResponse")
    async with cluster.channel() as channel:
        call = channel.stream_stream(
            V1_METHOD,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_class.FromString,
        )
        stream = call(iter([request_class(**r) for r in requests]), timeout=10)
        return [response async for response in stream]


def files(response: object) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    found = {}
    for raw in response.file_descriptor_response.file_descriptor_proto:  # type: ignore[attr-defined]
        proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
        found[proto.name] = proto
    return found


async def test_reflection_v1_lists_services_and_resolves_files(fake_cluster: FakeCluster) -> None:
    listed, by_symbol, by_name, itself, missing = await ask_v1(
        fake_cluster,
        {"list_services": ""},
        {"file_containing_symbol": "dockyard.v1.ControllerService"},
        {"file_by_filename": "dockyard/v1/types.proto"},
        {"file_containing_symbol": "grpc.reflection.v1.ServerReflection"},
        {"file_containing_symbol": "no.such.Thing"},
    )
    names = {s.name for s in listed.list_services_response.service}  # type: ignore[attr-defined]
    assert {
        "dockyard.v1.ControllerService",
        "dockyard.v1.AgentService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names

    controller_files = files(by_symbol)
    assert {"dockyard/v1/controller.proto", "dockyard/v1/types.proto"} <= set(controller_files)
    [service] = controller_files["dockyard/v1/controller.proto"].service
    assert "ListTasks" in [m.name for m in service.method]
    assert controller_files["dockyard/v1/controller.proto"].options.go_package
    assert "dockyard/v1/types.proto" in files(by_name)

    reflection_file = files(itself)["grpc/reflection/v1/reflection.proto"]
    assert reflection_file.package == "grpc.reflection.v1"
    assert all(".v1alpha." not in f.type_name for m in reflection_file.message_type for f in m.field)
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]  # type: ignore[attr-defined]


async def test_reflection_v1alpha_still_answers(fake_cluster: FakeCluster) -> None:
    async with fake_cluster.channel() as channel:
        call = channel.stream_stream(
            ALPHA_METHOD,
            request_serializer=alpha_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=alpha_pb2.ServerReflectionResponse.FromString,
        )
        [response] = [r async for r in call(iter([alpha_pb2.ServerReflectionRequest(list_services="")]), timeout=10)]
    assert "dockyard.v1.ControllerService" in {s.name for s in response.list_services_response.service}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def first_controller(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A real dockyard-controller process on a free loopback port."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "controller.main",
            "--init",
            "--join-listen",
            "127.0.0.1:0",
            "--listen",
            f"127.0.0.1:{port}",
            "--state-dir",
            str(tmp_path / "one"),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def listening() -> bool:
            assert process.poll() is None, "the first controller exited"
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) == 0

        wait_for(listening, within=30, what="the first controller to listen", every=0.05)
        yield process, port
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_a_second_controller_on_the_same_address_is_refused_naming_the_first(
    first_controller: tuple[subprocess.Popen[bytes], int], tmp_path: Path
) -> None:
    process, port = first_controller
    second = Controller(
        ControllerConfig(listen=f"127.0.0.1:{port}", join_listen="127.0.0.1:0", state_dir=tmp_path / "two", init=True)
    )
    with pytest.raises(StartupError) as caught:
        await second.start()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"--listen 127.0.0.1:{port}: address already in use by pid {process.pid} (")
    assert "controller.main" in message
    assert not (tmp_path / "two" / "controller.db").exists()  # refused before the store was touched


def test_the_second_controller_command_exits_with_one_line(
    first_controller: tuple[subprocess.Popen[bytes], int], tmp_path: Path
) -> None:
    _, port = first_controller
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "controller.main",
            "--init",
            "--join-listen",
            "127.0.0.1:0",
            "--listen",
            f"127.0.0.1:{port}",
            "--state-dir",
            str(tmp_path / "two"),
        ],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == EXIT_CONFIG
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert f"127.0.0.1:{port}: address already in use by pid" in lines[0]
    print(lines[0])

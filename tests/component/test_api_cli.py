"""The CLI against the real API: conditional apply and scale, following pages, images of each task's revision."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.api.paging import PageLimits
from controller.store.base import Put
from dockyard.v1 import types_pb2 as pb
from tests.component.harness import ApiInThread, run_cli


@pytest.fixture
def cli_api(tmp_path: Path) -> Iterator[ApiInThread]:
    # Tiny pages, so that every list the CLI makes spans several of them.
    with ApiInThread(tmp_path, PageLimits(default_size=2, max_size=3)) as server:
        yield server


def spec_file(tmp_path: Path, *services: tuple[str, str]) -> str:
    path = tmp_path / "spec.yaml"
    body = "".join(f"  {name}:\n    image: {image}\n    replicas: 1\n" for name, image in services)
    path.write_text(f"services:\n{body}")
    return str(path)


def test_apply_if_revision_refuses_a_stale_file_and_accepts_a_fresh_one(cli_api: ApiInThread, tmp_path: Path) -> None:
    path = spec_file(tmp_path, ("web", "app:1"))
    created = run_cli(cli_api, "apply", "-f", path, "-d", "--if-revision", "0", "-o", "json")
    assert created.exit_code == 0, created.output
    assert json.loads(created.stdout)[0]["action"] == "created"

    path = spec_file(tmp_path, ("web", "app:2"))
    stale = run_cli(cli_api, "apply", "-f", path, "-d", "--if-revision", "0")
    assert stale.exit_code == 1
    assert "services.web: exists at revision 1, expected it not to exist; read it again and retry" in stale.output

    fresh = run_cli(cli_api, "apply", "-f", path, "-d", "--if-revision", "1", "-o", "json")
    assert fresh.exit_code == 0, fresh.output
    assert json.loads(fresh.stdout)[0] == {"service": "web", "action": "updated", "revision": 2}


def test_apply_if_revision_per_service(cli_api: ApiInThread, tmp_path: Path) -> None:
    path = spec_file(tmp_path, ("web", "app:1"), ("db", "db:1"))
    unknown = run_cli(cli_api, "apply", "-f", path, "-d", "--if-revision", "cache=0")
    assert unknown.exit_code == 2
    assert "the file has no service 'cache'" in unknown.output
    both = run_cli(cli_api, "apply", "-f", path, "-d", "--if-revision", "web=0", "--if-revision", "db=0", "-o", "json")
    assert both.exit_code == 0, both.output
    assert [r["action"] for r in json.loads(both.stdout)] == ["created", "created"]
    # A bare 0 (a plan of an empty store) is NAME=0 for every service of the file: none may exist yet.
    bare = run_cli(cli_api, "apply", "-f", path, "-d", "--if-revision", "0")
    assert bare.exit_code == 1
    assert "services.db: exists at revision 1, expected it not to exist" in bare.output


def test_scale_if_revision(cli_api: ApiInThread, tmp_path: Path) -> None:
    assert run_cli(cli_api, "apply", "-f", spec_file(tmp_path, ("web", "app:1")), "-d").exit_code == 0
    stale = run_cli(cli_api, "scale", "web", "3", "-d", "--if-revision", "4")
    assert stale.exit_code == 1
    assert "services.web: revision is 1, not 4 as expected" in stale.output
    fresh = run_cli(cli_api, "scale", "web", "3", "-d", "--if-revision", "1", "-o", "json")
    assert fresh.exit_code == 0, fresh.output
    assert json.loads(fresh.stdout) == {"service": "web", "replicas": 3, "revision": 2}


def test_services_lists_every_page(cli_api: ApiInThread, tmp_path: Path) -> None:
    names = [f"svc-{i:02}" for i in range(11)]
    assert run_cli(cli_api, "apply", "-f", spec_file(tmp_path, *[(n, "app:1") for n in names]), "-d").exit_code == 0
    listed = run_cli(cli_api, "services", "-o", "json")
    assert listed.exit_code == 0, listed.output
    assert [row["name"] for row in json.loads(listed.stdout)] == names


def test_ps_shows_the_image_and_ports_of_each_tasks_revision(cli_api: ApiInThread) -> None:
    service = pb.Service(id="svc-web", name="web", revision=1, spec_revision=1)
    service.spec.CopyFrom(pb.ServiceSpec(name="web", image="app:1", replicas=2))
    cli_api.run(cli_api.api.store.commit([Put(service)]))
    service.revision = service.spec_revision = 2
    service.spec.image = "app:2"
    service.spec.ports.add(host_port=8080, container_port=80, protocol="tcp")
    cli_api.run(cli_api.api.store.commit([Put(service)]))
    tasks = [
        pb.Task(id=f"t{slot}", service_id="svc-web", service_name="web", slot=slot, revision=revision)
        for slot, revision in [(1, 1), (2, 2), (3, 2), (4, 1), (5, 2)]
    ]
    for task in tasks:
        task.desired_state = pb.DESIRED_STATE_RUNNING
        task.status.state = pb.TASK_STATE_RUNNING
    cli_api.run(cli_api.api.store.commit([Put(t) for t in tasks]))

    listed = run_cli(cli_api, "ps", "-o", "json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [(r["name"], r["revision"], r["image"], r["ports"]) for r in rows] == [
        ("web.1", 1, "app:1", []),
        ("web.2", 2, "app:2", ["8080:80/tcp"]),
        ("web.3", 2, "app:2", ["8080:80/tcp"]),
        ("web.4", 1, "app:1", []),
        ("web.5", 2, "app:2", ["8080:80/tcp"]),
    ]
    inspected = run_cli(cli_api, "service", "inspect", "web", "-o", "json")
    assert [t["image"] for t in json.loads(inspected.stdout)["tasks"]] == ["app:1", "app:2", "app:2", "app:1", "app:2"]

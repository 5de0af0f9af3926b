"""`dockyard apply` and `plan` send what a stack file declares: the CLI reads a Deployment and the API stores
the stack's services and objects (the real API over gRPC, tests.component.harness.ApiInThread)."""

from __future__ import annotations

from pathlib import Path

from controller.store.base import Kind
from dockyard.v1.types_pb2 import RegistryCredential
from tests.component.harness import ApiInThread, run_cli

STACK = """\
stack: shop
networks:
  back: {internal: true}
volumes:
  db-data: {}
secrets:
  db_password: {file: ./pw.txt}
configs:
  motd: {content: hello}
services:
  web:
    image: app:1
    configs: [motd]
    depends_on: [db]
  db:
    image: postgres:16
    networks: [back]
    mounts: ["db-data:/var/lib/postgresql/data"]
    secrets: [db_password]
"""


def test_apply_of_a_stack_file_stores_its_services_and_objects(cli_api: ApiInThread, tmp_path: Path) -> None:
    folder = tmp_path / "shop"
    folder.mkdir()
    (folder / "pw.txt").write_text("hunter2")
    (folder / "app.yaml").write_text(STACK)
    result = run_cli(cli_api, "apply", "-f", str(folder / "app.yaml"), "-d", "--output", "json")
    assert result.exit_code == 0, result.output
    services = {s.spec.name: s.spec for s in cli_api.run(cli_api.api.store.list_services())}
    assert set(services) == {"shop_web", "shop_db"}
    assert {spec.stack for spec in services.values()} == {"shop"}
    assert list(services["shop_web"].depends_on) == ["shop_db"]
    assert [m.source for m in services["shop_db"].mounts] == ["shop_db-data"]
    names = {
        kind: [
            obj.name
            for obj in cli_api.run(cli_api.api.store.list_objects(kind))
            if not isinstance(obj, RegistryCredential)
        ]
        for kind in (Kind.NETWORK, Kind.VOLUME, Kind.SECRET, Kind.CONFIG)
    }
    assert "shop_back" in names[Kind.NETWORK] and "shop_default" in names[Kind.NETWORK]
    assert names[Kind.VOLUME] == ["shop_db-data"]
    assert names[Kind.SECRET] == ["shop_db_password"]
    assert names[Kind.CONFIG] == ["shop_motd"]


def test_apply_refuses_a_file_whose_secret_cannot_be_read(cli_api: ApiInThread, tmp_path: Path) -> None:
    (tmp_path / "app.yaml").write_text(STACK)
    result = run_cli(cli_api, "apply", "-f", str(tmp_path / "app.yaml"), "-d")
    assert result.exit_code == 1
    assert 'secrets.db_password.file: cannot read "./pw.txt"' in result.output
    assert cli_api.run(cli_api.api.store.list_services()) == []


def test_plan_of_a_stack_file_shows_its_scoped_services(cli_api: ApiInThread, tmp_path: Path) -> None:
    (tmp_path / "pw.txt").write_text("hunter2")
    (tmp_path / "app.yaml").write_text(STACK)
    result = run_cli(cli_api, "plan", "-f", str(tmp_path / "app.yaml"))
    assert result.exit_code == 2, result.output
    assert "shop_web" in result.output and "shop_db" in result.output

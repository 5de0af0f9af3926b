"""`dockyard apply -f compose.yaml` and `plan -f` against the real API over gRPC (tests.component.harness)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from controller.store.base import Kind
from dockyard.cli.exitcodes import ExitCode
from dockyard.v1 import types_pb2 as pb
from tests.component.harness import ApiInThread, run_cli

CORPUS = Path(__file__).resolve().parents[2] / "examples" / "compose"


def copy_example(tmp_path: Path, name: str) -> Path:
    """A corpus folder copied under tmp_path (its name is the stack's), so a test changes nothing in the repository."""
    target = tmp_path / name
    shutil.copytree(CORPUS / name, target)
    return target / "compose.yaml"


def test_apply_a_compose_file_creates_the_stack_and_its_objects(cli_api: ApiInThread, tmp_path: Path) -> None:
    path = copy_example(tmp_path, "webapp-postgres")
    result = run_cli(cli_api, "apply", "-f", str(path), "-d", "--output", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert sorted((row["service"], row["action"]) for row in rows) == [
        ("webapp-postgres_db", "created"),
        ("webapp-postgres_web", "created"),
    ]
    assert "read as a Compose file of stack webapp-postgres (its name is compose.yaml)" in result.stderr
    services = {s.name: s for s in cli_api.run(cli_api.api.store.list_services())}
    assert services["webapp-postgres_web"].spec.stack == "webapp-postgres"
    assert list(services["webapp-postgres_web"].spec.depends_on) == ["webapp-postgres_db"]
    volumes = [v.name for v in cli_api.run(cli_api.api.store.list_objects(Kind.VOLUME)) if isinstance(v, pb.Volume)]
    secrets = [s.name for s in cli_api.run(cli_api.api.store.list_objects(Kind.SECRET)) if isinstance(s, pb.Secret)]
    assert "webapp-postgres_db-data" in volumes
    assert secrets == ["webapp-postgres_db_password"]


def test_stack_option_and_plan(cli_api: ApiInThread, tmp_path: Path) -> None:
    path = copy_example(tmp_path, "redis-cache")
    result = run_cli(cli_api, "plan", "-f", str(path), "--stack", "shop")
    assert result.exit_code == ExitCode.CHANGES, result.output
    assert "+ shop_app: create" in result.stdout
    assert "+ shop_cache: create" in result.stdout


def test_unsupported_keys_refuse_the_file_or_warn(cli_api: ApiInThread, tmp_path: Path) -> None:
    path = copy_example(tmp_path, "unsupported")
    refused = run_cli(cli_api, "apply", "-f", str(path), "--dry-run")
    assert refused.exit_code == 1
    assert "services.vpn.cap_add: not supported by Dockyard" in refused.output
    assert "services.app.deploy.endpoint_mode: not supported by Dockyard" in refused.output
    assert cli_api.run(cli_api.api.store.list_services()) == []
    ignored = run_cli(cli_api, "apply", "-f", str(path), "--dry-run", "--ignore-unsupported")
    assert ignored.exit_code == 0, ignored.output
    assert "warning: services.vpn.cap_add: not supported by Dockyard" in ignored.stderr


def test_format_option_overrides_detection(cli_api: ApiInThread, tmp_path: Path) -> None:
    ours = tmp_path / "compose.yaml"
    ours.write_text("services:\n  web:\n    image: nginx\n    replicas: 2\n")
    as_compose = run_cli(cli_api, "plan", "-f", str(ours))
    assert as_compose.exit_code == 1
    assert "services.web.replicas: is not a Compose key here" in as_compose.output
    assert "--format dockyard reads it as Dockyard's own format" in as_compose.output
    as_ours = run_cli(cli_api, "plan", "-f", str(ours), "--format", "dockyard")
    assert as_ours.exit_code == ExitCode.CHANGES, as_ours.output
    assert "+ web: create" in as_ours.stdout
    stack_on_ours = run_cli(cli_api, "plan", "-f", str(ours), "--format", "dockyard", "--stack", "x")
    assert stack_on_ours.exit_code == 1
    assert "--stack: applies to Compose files" in stack_on_ours.output


@pytest.mark.parametrize(
    "name", sorted(p.parent.name for p in CORPUS.glob("*/compose.yaml") if p.parent.name != "unsupported")
)
def test_every_corpus_file_is_a_request_the_controller_accepts(cli_api: ApiInThread, tmp_path: Path, name: str) -> None:
    path = copy_example(tmp_path, name)
    # The monitoring stack uses an external secret, which must exist before the stack refers to it.
    secret = tmp_path / "grafana-admin.txt"
    secret.write_text("admin")
    assert run_cli(cli_api, "secret", "create", "grafana_admin", "-f", str(secret)).exit_code == 0
    result = run_cli(cli_api, "apply", "-f", str(path), "--dry-run", "--output", "json")
    assert result.exit_code == 0, result.output
    assert {row["action"] for row in json.loads(result.stdout)} == {"created"}

"""`dockyard secret|config|registry|stack ...` against the real API, each with --output json."""

from __future__ import annotations

import json
from pathlib import Path

from controller.store.base import Put
from dockyard.v1 import types_pb2 as pb
from tests.component.harness import ApiInThread, ok, run_cli

SECRET = b"cli-secret-\x01\x02-bytes"


def test_secret_create_ls_rm_never_shows_the_data(cli_api: ApiInThread, tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_bytes(SECRET)
    created = json.loads(ok(run_cli(cli_api, "secret", "create", "db_password", "-f", str(path), "-o", "json")).stdout)
    assert created["name"] == "db_password" and created["size"] == len(SECRET)
    from_stdin = ok(run_cli(cli_api, "secret", "create", "api_key", "-f", "-", "-l", "team=a", stdin=SECRET))
    assert from_stdin.stdout.strip()  # the new secret's id
    listed = ok(run_cli(cli_api, "secret", "ls", "-o", "json"))
    assert [(r["name"], r["labels"]) for r in json.loads(listed.stdout)] == [
        ("api_key", {"team": "a"}),
        ("db_password", {}),
    ]
    table = ok(run_cli(cli_api, "secret", "ls"))
    assert "db_password" in table.stdout
    for result in (listed, table, from_stdin):
        assert SECRET.decode(errors="replace") not in result.output
    again = run_cli(cli_api, "secret", "create", "api_key", "-f", str(path))
    assert again.exit_code == 1 and "secrets are immutable: create it under a new name" in again.output
    removed = ok(run_cli(cli_api, "secret", "rm", "api_key", "db_password", "-o", "json"))
    assert [r["name"] for r in json.loads(removed.stdout)] == ["api_key", "db_password"]
    missing = run_cli(cli_api, "secret", "rm", "api_key")
    assert missing.exit_code == 1 and "secret 'api_key' not found" in missing.output


def test_secret_from_a_missing_file_is_a_usage_error(cli_api: ApiInThread, tmp_path: Path) -> None:
    result = run_cli(cli_api, "secret", "create", "x", "-f", str(tmp_path / "nope"))
    assert result.exit_code == 2 and "No such file or directory" in result.output


def test_config_create_inspect_ls_rm(cli_api: ApiInThread) -> None:
    ok(run_cli(cli_api, "config", "create", "nginx", "-f", "-", stdin=b"server {}\n"))
    ok(run_cli(cli_api, "config", "create", "blob", "-f", "-", stdin=b"\xff\x00"))
    shown = json.loads(ok(run_cli(cli_api, "config", "inspect", "nginx", "-o", "json")).stdout)
    assert shown["data"] == "server {}\n" and shown["digest"].startswith("sha256:")
    assert json.loads(ok(run_cli(cli_api, "config", "inspect", "blob", "-o", "json")).stdout)["data_base64"] == "/wA="
    assert "server {}" in ok(run_cli(cli_api, "config", "inspect", "nginx")).stdout
    listed = json.loads(ok(run_cli(cli_api, "config", "ls", "-o", "json")).stdout)
    assert [r["name"] for r in listed] == ["blob", "nginx"] and "data" not in listed[0]
    assert "nginx" in ok(run_cli(cli_api, "config", "ls")).stdout
    assert ok(run_cli(cli_api, "config", "rm", "nginx")).stdout.strip() == "nginx: removed"


def test_registry_login_ls_logout(cli_api: ApiInThread) -> None:
    login = ok(
        run_cli(
            cli_api,
            "registry",
            "login",
            "registry.example.com:5000",
            "-u",
            "me",
            "--password-stdin",
            "-o",
            "json",
            stdin=b"pa55word\n",
        )
    )
    assert json.loads(login.stdout)["server"] == "registry.example.com:5000"
    assert "pa55word" not in login.output
    listed = json.loads(ok(run_cli(cli_api, "registry", "ls", "-o", "json")).stdout)
    assert [(r["server"], r["username"]) for r in listed] == [("registry.example.com:5000", "me")]
    assert "pa55word" not in json.dumps(listed)
    out = ok(run_cli(cli_api, "registry", "logout", "registry.example.com:5000"))
    assert out.stdout.strip() == "registry.example.com:5000: credentials removed"
    assert json.loads(ok(run_cli(cli_api, "registry", "ls", "-o", "json")).stdout) == []
    empty = run_cli(cli_api, "registry", "login", "docker.io", "-u", "me", "--password-stdin", stdin=b"\n")
    assert empty.exit_code == 2 and "the password is empty" in empty.output


def _stack(cli_api: ApiInThread) -> None:
    """A stack written to the store as an apply of a Compose file leaves it."""
    ops: list[Put] = []
    for name in ("shop_web", "shop_db"):
        service = pb.Service(id=f"id-{name}", name=name, revision=1, spec_revision=1)
        service.spec.CopyFrom(pb.ServiceSpec(name=name, image="app:1", replicas=1, stack="shop"))
        ops.append(Put(service))
    ops.append(Put(pb.Network(id="n1", name="shop_default", stack="shop")))
    ops.append(Put(pb.Volume(id="v1", name="shop_data", stack="shop")))
    ops.append(Put(pb.Config(id="c1", name="shop_conf", stack="shop", data=b"x", size=1)))
    task = pb.Task(id="t1", service_id="id-shop_web", service_name="shop_web", slot=1, revision=1)
    task.desired_state = pb.DESIRED_STATE_RUNNING
    ops.append(Put(task))
    cli_api.run(cli_api.api.store.commit(ops))


def test_stack_ls_ps_rm(cli_api: ApiInThread) -> None:
    _stack(cli_api)
    listed = json.loads(ok(run_cli(cli_api, "stack", "ls", "-o", "json")).stdout)
    assert listed == [
        {
            "name": "shop",
            "services": ["shop_db", "shop_web"],
            "networks": ["shop_default"],
            "volumes": ["shop_data"],
            "secrets": [],
            "configs": ["shop_conf"],
        }
    ]
    assert "shop" in ok(run_cli(cli_api, "stack", "ls")).stdout
    tasks = json.loads(ok(run_cli(cli_api, "stack", "ps", "shop", "-o", "json")).stdout)
    assert [t["id"] for t in tasks] == ["t1"]
    missing = run_cli(cli_api, "stack", "ps", "nope")
    assert missing.exit_code == 1 and "stack 'nope' not found" in missing.output
    removed = json.loads(ok(run_cli(cli_api, "stack", "rm", "shop", "-o", "json")).stdout)
    assert removed["services"] == ["shop_db", "shop_web"] and removed["volumes_kept"] == ["shop_data"]
    assert removed["networks"] == ["shop_default"] and removed["configs"] == ["shop_conf"]
    after = json.loads(ok(run_cli(cli_api, "stack", "ls", "-o", "json")).stdout)
    assert after == [
        {"name": "shop", "services": [], "networks": [], "volumes": ["shop_data"], "secrets": [], "configs": []}
    ]

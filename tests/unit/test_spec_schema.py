"""The table of the spec's fields: the docs agree with it, and every consumer reads its defaults from it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import agent.container_spec
import controller.api.validation
import controller.orchestrator.restart
from dockyard import labels
from dockyard.spec import docgen, issues, load_spec, schema, spec_to_document
from dockyard.v1 import types_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "spec.md"


def test_the_field_reference_in_the_docs_is_fresh() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert docgen.render(text) == text, "run: .venv/bin/python -m dockyard.spec.docgen docs/spec.md"


def test_the_docs_show_every_field_and_limit() -> None:
    shown = docgen.sections(DOCS.read_text(encoding="utf-8"))
    sections = {"service", "name", "limits"} | {row.path.split(".")[0] for row in schema.FIELDS if "." in row.path}
    assert set(shown) == sections
    rendered = "".join(docgen.table(section) for section in shown)
    for row in schema.FIELDS:
        assert f"| `{row.path.split('.', 1)[-1] if '.' in row.path else row.path}` |" in rendered


def test_docgen_rewrites_a_stale_table(tmp_path: Path) -> None:
    path = tmp_path / "spec.md"
    path.write_text("before\n<!-- BEGIN fields: restart -->\nstale\n<!-- END fields -->\nafter\n")
    assert docgen.main([str(path)]) == 0
    text = path.read_text()
    assert text == f"before\n<!-- BEGIN fields: restart -->\n{docgen.table('restart')}<!-- END fields -->\nafter\n"
    assert "| `delay` | duration | `5s` | 0s to 1h |" in text


def test_an_unknown_section_is_an_error() -> None:
    with pytest.raises(KeyError):
        docgen.table("volumes")


def test_the_table_lists_the_spec_fields_in_file_order() -> None:
    assert schema.children("") == (
        "image",
        "entrypoint",
        "command",
        "env",
        "hostname",
        "ports",
        "mode",
        "replicas",
        "placement",
        "resources",
        "labels",
        "mounts",
        "networks",
        "secrets",
        "configs",
        "restart",
        "healthcheck",
        "update",
        "rollback",
        "depends_on",
        "stop_grace_period",
        "on_disconnect",
        "stack",
    )
    assert schema.children("mounts[]") == ("type", "source", "target", "read_only", "labels", "tmpfs")
    assert schema.children("secrets[]") == ("source", "target", "uid", "gid", "mode")
    assert schema.children("configs[]") == schema.children("secrets[]")
    assert schema.children("ports[]") == ("published", "target", "protocol")
    assert schema.children("resources") == ("limits", "reservations")
    assert schema.children("restart") == ("condition", "delay", "max_attempts", "window", "max_delay")
    assert schema.children("healthcheck") == (
        "test",
        "http",
        "tcp",
        "interval",
        "timeout",
        "retries",
        "start_period",
        "start_interval",
    )
    assert schema.children("healthcheck.http") == ("port", "path", "status")
    update = ("parallelism", "delay", "order", "monitor", "max_failure_ratio", "failure_action")
    assert schema.children("update") == schema.children("rollback") == update
    assert schema.children("depends_on.*") == ("condition",)


def test_a_minimal_spec_loads_with_the_table_defaults() -> None:
    [spec] = load_spec("services: {web: {image: nginx}}")
    assert spec == pb.ServiceSpec(
        name="web",
        image="nginx",
        replicas=schema.REPLICAS.default,
        mode=schema.MODE.default,
        resources=pb.Resources(),
        restart=pb.RestartPolicy(
            condition=schema.RESTART_CONDITION.default,
            delay={"seconds": int(schema.RESTART_DELAY.default_seconds)},
            max_attempts=schema.RESTART_MAX_ATTEMPTS.default,
            window={},
        ),
        stop_grace_period={"seconds": int(schema.STOP_GRACE_PERIOD.default_seconds)},
    )
    assert spec_to_document(spec) == {"image": "nginx"}


def test_consumers_read_their_defaults_from_the_table() -> None:
    assert controller.orchestrator.restart.DEFAULT_DELAY == schema.RESTART_DELAY.default_seconds == 5.0
    assert agent.container_spec.DEFAULT_STOP_GRACE == schema.STOP_GRACE_PERIOD.default_seconds == 10.0
    assert controller.api.validation.MAX_REPLICAS == schema.REPLICAS.maximum == 10_000
    assert labels.PREFIX == schema.LABELS.reserved_prefix == "dockyard."
    ours = [value for name, value in vars(labels).items() if name.isupper() and isinstance(value, str)]
    assert all(value.startswith(labels.PREFIX) for value in ours)


@pytest.mark.parametrize(
    ("path", "numbers"),
    [
        # The defaults these files once stated, in the types they stated them in.
        ("controller/orchestrator/restart.py", {5.0}),
        ("agent/container_spec.py", {10.0}),
        ("controller/api/validation.py", {10_000, 50_000, 100_000}),
    ],
)
def test_consumers_do_not_restate_the_numbers(path: str, numbers: set[float]) -> None:
    tree = ast.parse((ROOT / path).read_text())
    stated = {(type(node.value), node.value) for node in ast.walk(tree) if isinstance(node, ast.Constant)}
    assert not (stated & {(type(number), number) for number in numbers})


def test_the_reserved_prefix_is_stated_once() -> None:
    offenders = []
    for path in [*(ROOT / "dockyard").rglob("*.py"), *(ROOT / "controller" / "api").rglob("*.py")]:
        if path.name in {"schema.py"} or "v1" in path.parts:
            continue
        tree = ast.parse(path.read_text())
        if any(isinstance(node, ast.Constant) and node.value == "dockyard." for node in ast.walk(tree)):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_paths_show_every_valid_key_whole() -> None:
    longest = max(limit for limit in (schema.ENV.max_key_bytes, schema.LABELS.max_key_bytes) if limit)
    key = "k" * longest
    assert issues.key_path("labels", key) == f"labels.{key}"


@pytest.mark.parametrize("row", schema.FIELDS, ids=lambda row: row.path)
def test_every_row_has_help_and_a_default(row: schema.Field[object]) -> None:
    assert row.help.endswith(".")
    assert row.default_text
    if isinstance(row, schema.Ranged):
        assert row.minimum <= row.maximum

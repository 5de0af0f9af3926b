"""Limits that make specs safe to store: text without NUL or control characters, bounded lengths and sizes."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
import yaml

from dockyard.spec import SpecError, load_spec, schema, validate_service
from dockyard.v1 import types_pb2 as pb

CONTROL_FIX = 'use letters, digits, ".", "-" or "_"'


def errors_of(text: str) -> list[str]:
    """Returns the error lines load_spec reports for dedented YAML; fails if it loads."""
    with pytest.raises(SpecError) as caught:
        load_spec(textwrap.dedent(text))
    return caught.value.errors


def case(name: str, text: str, *expected: str) -> Any:
    """One table row: the YAML, then the exact lines it must produce."""
    return pytest.param(text, list(expected), id=name)


# YAML's "\0" escape puts a NUL into any string; every string field must refuse it, naming the field.
NUL_IN_EVERY_STRING = [
    case(
        "name",
        'services: {"a\\0": {image: x}}',
        'services["a\\u0000"]: service name must be 1 to 63 lowercase letters, digits or "-", starting and ending '
        'with a letter or digit, got "a\\u0000"',
    ),
    case(
        "image",
        'services: {web: {image: "nginx\\0"}}',
        'services.web.image: must not contain control characters, got U+0000 in "nginx\\u0000"; remove it',
    ),
    case(
        "command",
        'services: {web: {image: x, command: ["a\\0"]}}',
        "services.web.command[0]: must not contain NUL characters",
    ),
    case(
        "env-name",
        'services: {web: {image: x, env: {"A\\0": b}}}',
        'services.web.env["A\\u0000"]: variable name must not contain NUL characters',
    ),
    case(
        "env-value",
        'services: {web: {image: x, env: {A: "b\\0"}}}',
        "services.web.env.A: value must not contain NUL characters",
    ),
    case(
        "port-protocol",
        'services: {web: {image: x, ports: [{target: 80, protocol: "tcp\\0"}]}}',
        'services.web.ports[0].protocol: must be "tcp" or "udp", got "tcp\\u0000"',
    ),
    case(
        "constraint",
        'services: {web: {image: x, placement: {constraints: ["node.id == a\\0"]}}}',
        "services.web.placement.constraints[0]: must not contain control characters, got U+0000 in "
        '"node.id == a\\u0000"; remove it',
    ),
    case(
        "label-key",
        'services: {web: {image: x, labels: {"a\\0": b}}}',
        'services.web.labels["a\\u0000"]: label key must not contain whitespace, control characters or "=", '
        f'got "a\\u0000"; {CONTROL_FIX}',
    ),
    case(
        "label-key-in-list",
        'services: {web: {image: x, labels: ["a\\0=b"]}}',
        'services.web.labels["a\\u0000"]: label key must not contain whitespace, control characters or "=", '
        f'got "a\\u0000"; {CONTROL_FIX}',
    ),
    case(
        "label-value",
        'services: {web: {image: x, labels: {a: "b\\0"}}}',
        "services.web.labels.a: value must not contain NUL characters; remove them",
    ),
    case(
        "mode",
        'services: {web: {image: x, mode: "global\\0"}}',
        'services.web.mode: must be replicated, global or job, got "global\\u0000"; did you mean "global"?',
    ),
    case(
        "strategy",
        'services: {web: {image: x, placement: {strategy: "spread\\0"}}}',
        'services.web.placement.strategy: must be spread or binpack, got "spread\\u0000"; did you mean "spread"?',
    ),
    case(
        "condition",
        'services: {web: {image: x, restart: {condition: "any\\0"}}}',
        'services.web.restart.condition: must be none, on-failure or any, got "any\\u0000"; did you mean "any"?',
    ),
    case(
        "on-disconnect",
        'services: {web: {image: x, on_disconnect: "keep\\0"}}',
        'services.web.on_disconnect: must be keep or a mapping like {stop_after: 30s}, got "keep\\u0000"; '
        'did you mean "keep"?',
    ),
    case(
        "health-test",
        'services: {web: {image: x, healthcheck: {test: ["CMD", "a\\0"]}}}',
        "services.web.healthcheck.test[1]: must not contain NUL characters",
    ),
    case(
        "health-test-line",
        'services: {web: {image: x, healthcheck: {test: "true\\0"}}}',
        "services.web.healthcheck.test: must not contain NUL characters",
    ),
    case(
        "http-path",
        'services: {web: {image: x, healthcheck: {http: {port: 80, path: "/\\0"}}}}',
        'services.web.healthcheck.http.path: must not contain whitespace or control characters, got "/\\u0000"',
    ),
    case(
        "depends-on",
        'services: {web: {image: x, depends_on: {"db\\0": {condition: "service_started\\0"}}}}',
        'services.web.depends_on["db\\u0000"]: must name a service: 1 to 63 lowercase letters, digits or "-", '
        'starting and ending with a letter or digit (a stack\'s: `<stack>_<service>`), got "db\\u0000"',
        'services.web.depends_on["db\\u0000"].condition: must be service_started, service_healthy or '
        'service_completed_successfully, got "service_started\\u0000"; did you mean "service_started"?',
    ),
    case(
        "update-order",
        'services: {web: {image: x, update: {order: "start-first\\0"}}}',
        'services.web.update.order: must be stop-first or start-first, got "start-first\\u0000"; '
        'did you mean "start-first"?',
    ),
    case(
        "duration",
        'services: {web: {image: x, stop_grace_period: "10s\\0"}}',
        "services.web.stop_grace_period: must be a duration like 10s, 1m30s or 500ms, or a number of seconds, "
        'got "10s\\u0000"',
    ),
    case(
        "memory",
        'services: {web: {image: x, resources: {limits: {memory: "1GiB\\0"}}}}',
        'services.web.resources.limits.memory: must be a size like 512MiB or 2GiB, got "1GiB\\u0000"',
    ),
]


@pytest.mark.parametrize(("text", "expected"), NUL_IN_EVERY_STRING)
def test_nul_is_refused_in_every_string(text: str, expected: list[str]) -> None:
    assert errors_of(text) == expected


CONTROL_CHARACTERS = [
    case(
        "image",
        'services: {web: {image: "nginx\\x01"}}',
        'services.web.image: must not contain control characters, got U+0001 in "nginx\\u0001"; remove it',
    ),
    case(
        "env-name",
        'services: {web: {image: x, env: {"A\\e": b}}}',
        'services.web.env["A\\u001b"]: variable name must not contain control characters, got U+001B in '
        '"A\\u001b"; remove it',
    ),
    case(
        "label-key-delete",
        'services: {web: {image: x, labels: {"a\\x7f": b}}}',
        'services.web.labels["a\\x7f"]: label key must not contain whitespace, control characters or "=", '
        f'got "a\\x7f"; {CONTROL_FIX}',
    ),
    case(
        "label-key-space",
        "services: {web: {image: x, labels: {'team name': b}}}",
        'services.web.labels["team name"]: label key must not contain whitespace, control characters or "=", '
        f'got "team name"; {CONTROL_FIX}',
    ),
    case(
        "label-key-equals",
        "services: {web: {image: x, labels: {'a=b': c}}}",
        'services.web.labels["a=b"]: label key must not contain whitespace, control characters or "=", '
        f'got "a=b"; {CONTROL_FIX}',
    ),
    case(
        "constraint-escape",
        'services: {web: {image: x, placement: {constraints: ["node.labels.z\\e == a"]}}}',
        "services.web.placement.constraints[0]: must not contain control characters, got U+001B in "
        '"node.labels.z\\u001b == a"; remove it',
    ),
    case(
        "lone-surrogate",
        'services: {web: {image: x, env: {SMILE: "\\ud83d\\ude00"}}}',
        "services.web.env.SMILE: is not valid Unicode text: it holds the lone surrogate U+D83D; write the "
        "character itself, or escape it with \\U and eight hex digits",
    ),
    case(
        "lone-surrogate-in-name",
        'services: {"\\ud800": {image: x}}',
        'services["\\ud800"]: service name must be 1 to 63 lowercase letters, digits or "-", starting and ending '
        'with a letter or digit, got "\\ud800"',
    ),
]


@pytest.mark.parametrize(("text", "expected"), CONTROL_CHARACTERS)
def test_control_characters_are_refused_where_they_make_no_sense(text: str, expected: list[str]) -> None:
    assert errors_of(text) == expected


def test_tabs_and_newlines_stay_allowed_in_values_and_arguments() -> None:
    [spec] = load_spec('services: {web: {image: x, command: ["sh", "-c", "a\\n\\tb"], env: {A: "1\\n2"}}}')
    assert spec.command[2] == "a\n\tb"
    assert spec.env["A"] == "1\n2"


def test_text_checks_apply_to_protos_too() -> None:
    spec = pb.ServiceSpec(name="web", image="nginx:1.27", replicas=1)
    spec.labels["a\0"] = "b"
    spec.labels["ok"] = "b\0"
    spec.placement.constraints.append("node.id == \x01")
    assert validate_service(spec) == [
        "services.web.placement.constraints[0]: must not contain control characters, got U+0001 in "
        '"node.id == \\u0001"; remove it',
        'services.web.labels["a\\u0000"]: label key must not contain whitespace, control characters or "=", '
        f'got "a\\u0000"; {CONTROL_FIX}',
        "services.web.labels.ok: value must not contain NUL characters; remove them",
    ]


ENTRY = schema.ENV.max_bytes
assert ENTRY is not None

LENGTHS = [
    pytest.param(
        {"image": "a" * 1025},
        "services.web.image: must be at most 1024 bytes long, got 1025 bytes; no image reference is that long",
        id="image",
    ),
    pytest.param(
        {"command": ["a" * (ENTRY + 1)]},
        f"services.web.command[0]: must be at most {ENTRY} bytes long, got {ENTRY + 1} bytes, the most Linux "
        "passes to a program; put long scripts in a file in the image",
        id="argument",
    ),
    pytest.param(
        {"env": {"A": "a" * (ENTRY - 1)}},
        f"services.web.env.A: NAME=value must be at most {ENTRY} bytes long, got {ENTRY + 1} bytes, more than "
        "Linux passes to a program; put large values in a file in the image instead",
        id="env-entry",
    ),
    pytest.param(
        {"env": {"A" * 257: "b"}},
        f"services.web.env.{'A' * 257}: variable name must be at most 256 bytes long, got 257 bytes; "
        "use a shorter name",
        id="env-name",
    ),
    pytest.param(
        {"labels": {"k" * 257: "v"}},
        f"services.web.labels.{'k' * 257}: label key must be at most 256 bytes long, got 257 bytes; use a shorter key",
        id="label-key",
    ),
    pytest.param(
        {"labels": {"k": "é" * 2049}},
        "services.web.labels.k: value must be at most 4096 bytes long, got 4098 bytes; keep large data out of labels",
        id="label-value-counts-bytes",
    ),
    pytest.param(
        {"placement": {"constraints": ["node.id == " + "a" * 1014]}},
        "services.web.placement.constraints[0]: must be at most 1024 bytes long, got 1025 bytes; "
        "compare shorter labels or values",
        id="constraint",
    ),
]


@pytest.mark.parametrize(("fields", "expected"), LENGTHS)
def test_lengths_are_bounded(fields: dict[str, Any], expected: str) -> None:
    body = {"image": "nginx:1.27", **fields}
    assert errors_of(yaml.safe_dump({"services": {"web": body}})) == [expected]


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"image": "registry.example.com/" + "a" * 200 + ":" + "t" * 128}, id="long-image"),
        pytest.param({"command": ["a" * ENTRY]}, id="longest-argument"),
        pytest.param({"env": {"A": "a" * (ENTRY - 2)}}, id="longest-env-entry"),
        pytest.param({"labels": {"k" * 256: "v" * 4096}}, id="longest-label"),
        pytest.param({"placement": {"constraints": ["node.id == " + "a" * 1013]}}, id="longest-constraint"),
    ],
)
def test_values_at_their_limit_pass(fields: dict[str, Any]) -> None:
    body = {"image": "nginx:1.27", **fields}
    [spec] = load_spec(yaml.safe_dump({"services": {"web": body}}))
    assert validate_service(spec) == []


def test_a_120kib_env_is_a_valid_spec() -> None:
    env = {f"VAR_{i:03}": "x" * 1024 for i in range(120)}
    [spec] = load_spec(yaml.safe_dump({"services": {"web": {"image": "nginx:1.27", "env": env}}}))
    assert spec.ByteSize() > 120 * 1024
    assert validate_service(spec) == []


def test_a_spec_over_the_size_limit_is_refused_on_the_service_path() -> None:
    env = {f"VAR_{i}": "x" * 100_000 for i in range(3)}
    [error] = errors_of(yaml.safe_dump({"services": {"web": {"image": "nginx:1.27", "env": env}}}))
    assert error.startswith("services.web: the spec is 300")
    assert error.endswith(
        "bytes when stored, more than the limit of 256KiB for one service; move large env values, commands or "
        "labels into the image or a file it reads"
    )


def test_the_size_limit_applies_to_protos_and_comes_last() -> None:
    spec = pb.ServiceSpec(name="web", image="", replicas=1)
    spec.labels["big"] = "x" * schema.SPEC_BYTES.maximum
    errors = validate_service(spec)
    assert [line.split(":")[0] for line in errors] == ["services.web.image", "services.web.labels.big", "services.web"]


def test_very_long_keys_are_cut_short_in_paths() -> None:
    [error] = errors_of(yaml.safe_dump({"services": {"web": {"image": "x", "labels": {"k" * 1000: "v"}}}}))
    assert error.startswith(f'services.web.labels["{"k" * 57}..."]: label key must be at most 256 bytes long')

"""Hypothesis: random Compose-like documents never make the Compose reader raise anything but SpecError."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dockyard.spec.compose import FORMAT_COMPOSE, FORMAT_DOCKYARD, detect_format, load_compose, read_compose
from dockyard.spec.issues import SpecError

# Keys from every level of a Compose file, so that random documents reach deep into the reader.
KEYS = [
    "services", "version", "name", "networks", "volumes", "secrets", "configs", "x-a",
    "image", "command", "entrypoint", "environment", "env_file", "ports", "labels", "healthcheck", "restart",
    "stop_grace_period", "depends_on", "tmpfs", "hostname", "deploy", "expose", "privileged", "build",
    "replicas", "mode", "placement", "resources", "update_config", "rollback_config", "restart_policy",
    "endpoint_mode", "constraints", "preferences", "max_replicas_per_node", "limits", "reservations", "cpus",
    "memory", "pids", "parallelism", "delay", "failure_action", "monitor", "max_failure_ratio", "order",
    "condition", "max_attempts", "window", "test", "interval", "timeout", "retries", "start_period", "disable",
    "target", "published", "protocol", "host_ip", "source", "type", "read_only", "tmpfs", "size", "bind",
    "external", "file", "content", "internal", "driver", "aliases", "required", "path", "uid", "gid", "web", "db",
]  # fmt: skip
WORDS = [
    "nginx", "postgres:16", "8080:80", "127.0.0.1:80:80", "1-3:1-3", "80/udp", "10s", "1m30s", "0.5", "512M",
    "1gb", "global", "replicated-job", "global-job", "on-failure:3", "always", "no", "start-first", "rollback",
    "service_healthy", "node.labels.a == b", "node.role == manager", "data:/data:ro", "./x:/x", "/abs", "CMD",
    "CMD-SHELL", "NONE", "${A}", "${B:-d}", "${C:?e}", "$$", "$1", "A=b", "bare", "host", "ingress", "volume",
    "tmpfs", "default", "web", "db", "0440", "",
]  # fmt: skip

scalars = st.one_of(
    st.sampled_from(WORDS),
    st.text(max_size=12),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=8))
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(keys, children, max_size=5),
    ),
    max_leaves=40,
)
# Documents shaped like Compose files more often than not, so that the service reader is exercised.
services = st.dictionaries(
    st.sampled_from(["web", "db", "x-y", "Bad_Name"]), st.dictionaries(keys, documents, max_size=6), max_size=3
)
compose_like = st.fixed_dictionaries(
    {"services": services},
    optional={
        "volumes": st.dictionaries(st.sampled_from(["data", "db"]), documents, max_size=2),
        "networks": st.dictionaries(st.sampled_from(["front", "default"]), documents, max_size=2),
        "secrets": st.dictionaries(st.sampled_from(["pw"]), documents, max_size=1),
        "configs": st.dictionaries(st.sampled_from(["conf"]), documents, max_size=1),
        "name": documents,
    },
)

VARIABLES = {"A": "1", "B": ""}


# Inputs that once escaped as something other than SpecError, run first on every run.
HUGE_TMPFS = {
    "services": {"web": {"image": "nginx", "volumes": [{"type": "tmpfs", "target": "/t", "tmpfs": {"size": 10**23}}]}}
}
HUGE_SHORT_TMPFS = {"services": {"web": {"image": "nginx", "tmpfs": ["/t:size=99999999999999999999999"]}}}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(documents, compose_like), st.booleans())
@example(HUGE_TMPFS, False)
@example(HUGE_TMPFS, True)
@example(HUGE_SHORT_TMPFS, False)
def test_any_document_reads_or_raises_spec_error(document: object, ignore: bool) -> None:
    errors: list[str] = []
    try:
        loaded = read_compose(
            document, "fuzz.yaml", directory="/nonexistent/fuzz", variables=VARIABLES, ignore_unsupported=ignore
        )
    except SpecError as exc:
        errors = exc.errors
    else:
        assert loaded.deployment.specs
        return
    # A refusal says what is wrong, one non-empty line per problem.
    assert errors
    assert all(isinstance(line, str) and line and "\n" not in line for line in errors)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(compose_like)
def test_any_yaml_text_reads_or_raises_spec_error(tmp_path: Path, document: object) -> None:
    try:
        text = yaml.safe_dump(document)
    except (yaml.YAMLError, ValueError):
        return
    errors: list[str] = ["(read)"]
    try:
        load_compose(text, "fuzz.yaml", directory=tmp_path, environ=VARIABLES)
    except SpecError as exc:
        errors = exc.errors
    assert errors


@settings(max_examples=200, deadline=None)
@given(st.one_of(documents, compose_like), st.sampled_from(["spec.yaml", "compose.yaml", "a/docker-compose.yml"]))
def test_detection_always_decides(document: object, name: str) -> None:
    file_format, reason = detect_format(document, name)
    assert file_format in (FORMAT_COMPOSE, FORMAT_DOCKYARD)
    assert reason
    if name != "spec.yaml":
        assert file_format == FORMAT_COMPOSE

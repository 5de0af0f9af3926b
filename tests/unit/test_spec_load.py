"""Loading service specs from YAML: the protos valid files produce and the exact errors invalid ones get."""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf.duration_pb2 import Duration

from dockyard.spec import (
    SpecError,
    format_bytes,
    format_duration,
    load_spec,
    load_spec_file,
    parse_bytes,
    parse_duration,
    spec_to_document,
    validate_service,
)
from dockyard.v1 import types_pb2 as pb

MIB = 1024**2
GIB = 1024**3
SECOND = 10**9
GLOBAL_REPLICAS = "a global service runs one task per eligible node; remove replicas or use mode: replicated"
FORMS = (
    "must have the form node.labels.KEY == VALUE (operator labels), engine.labels.KEY == VALUE (agent labels), "
    "node.hostname == NAME or node.id == ID (or != instead of ==)"
)


def make_spec(name: str = "web", image: str = "nginx:1.27", **fields: Any) -> pb.ServiceSpec:
    """Builds a spec the way load_spec returns it: every default filled in explicitly."""
    restart = fields.pop("restart", {})
    mode = fields.pop("mode", pb.SERVICE_MODE_REPLICATED)
    replicas = fields.pop("replicas", 0 if mode == pb.SERVICE_MODE_GLOBAL else 1)
    spec = pb.ServiceSpec(name=name, image=image, mode=mode, replicas=replicas, **fields)
    # Placement and on_disconnect are only set when they say something; then the strategy is explicit.
    if spec.HasField("placement") and not spec.placement.strategy:
        spec.placement.strategy = pb.Placement.STRATEGY_SPREAD
    spec.resources.SetInParent()
    spec.restart.condition = restart.get("condition", pb.RestartPolicy.CONDITION_ON_FAILURE)
    spec.restart.delay.FromNanoseconds(restart.get("delay", 5 * SECOND))
    spec.restart.max_attempts = restart.get("max_attempts", 0)
    spec.restart.window.FromNanoseconds(restart.get("window", 0))
    if "stop_grace_period" not in fields:
        spec.stop_grace_period.FromNanoseconds(10 * SECOND)
    return spec


def duration(nanos: int) -> Duration:
    """Returns a google.protobuf.Duration of `nanos`."""
    result = Duration()
    result.FromNanoseconds(nanos)
    return result


def load(text: str) -> list[pb.ServiceSpec]:
    """Loads dedented YAML."""
    return load_spec(textwrap.dedent(text))


def errors_of(text: str, source: str = "<spec>") -> list[str]:
    """Returns the error lines load_spec reports for dedented YAML; fails if it loads."""
    with pytest.raises(SpecError) as caught:
        load_spec(textwrap.dedent(text), source)
    return caught.value.errors


def case(name: str, text: str, *expected: str) -> Any:
    """One row of an error table: the YAML, then the exact lines it must produce."""
    return pytest.param(text, list(expected), id=name)


def service_errors(body: str) -> list[str]:
    """Returns the errors of a single service `web` whose fields are `body`."""
    return errors_of("services:\n  web:\n" + textwrap.indent(textwrap.dedent(body), "    "))


VALID_FILES = [
    pytest.param("services: {web: {image: nginx:1.27}}", [make_spec()], id="minimal"),
    pytest.param(
        """
        services:
          web:
            image: dockyard-test:latest
            command: ["httpd", "-f", "-p", "80"]
            env: {GREETING: hello}
            ports: ["8080:80/tcp", "80", "53:53/udp"]
            replicas: 3
            resources:
              limits: {cpus: 0.5, memory: 256MiB}
              reservations: {cpus: 0.25, memory: 128MiB}
            labels: {team: web}
            restart: {condition: on-failure, delay: 5s, max_attempts: 3, window: 2m}
            stop_grace_period: 10s
        """,
        [
            make_spec(
                image="dockyard-test:latest",
                command=["httpd", "-f", "-p", "80"],
                env={"GREETING": "hello"},
                ports=[
                    pb.PortMapping(host_port=8080, container_port=80, protocol="tcp"),
                    pb.PortMapping(host_port=0, container_port=80, protocol="tcp"),
                    pb.PortMapping(host_port=53, container_port=53, protocol="udp"),
                ],
                replicas=3,
                resources=pb.Resources(
                    cpu_limit=0.5,
                    memory_limit_bytes=256 * MIB,
                    cpu_reservation=0.25,
                    memory_reservation_bytes=128 * MIB,
                ),
                labels={"team": "web"},
                restart={"max_attempts": 3, "window": 120 * SECOND},
                stop_grace_period=duration(10 * SECOND),
            )
        ],
        id="every-field",
    ),
    pytest.param(
        """
        services:
          web: {image: nginx}
          api: {image: api:2, replicas: 0}
          db: {image: postgres:16}
        """,
        [make_spec(image="nginx"), make_spec("api", "api:2", replicas=0), make_spec("db", "postgres:16")],
        id="several-services-in-file-order",
    ),
    pytest.param(
        """
        services:
          web:
            image: busybox
            command: sh -c 'echo "hello world"; sleep 1'
        """,
        [make_spec(image="busybox", command=["sh", "-c", 'echo "hello world"; sleep 1'])],
        id="command-string-split-like-a-shell",
    ),
    pytest.param(
        """
        services:
          web:
            image: nginx:1.27
            env: ["A=1", "B=x=y", "EMPTY="]
            labels: ["com.example.team=web", "tier="]
        """,
        [
            make_spec(
                env={"A": "1", "B": "x=y", "EMPTY": ""},
                labels={"com.example.team": "web", "tier": ""},
            )
        ],
        id="env-and-labels-as-lists",
    ),
    pytest.param(
        """
        services:
          web:
            image: nginx:1.27
            env: {FLAG: yes, MODE: off}
            ports: [22:22, 8080, {target: 9000}, {published: 53, target: 53, protocol: udp}]
        """,
        [
            make_spec(
                env={"FLAG": "yes", "MODE": "off"},
                ports=[
                    pb.PortMapping(host_port=22, container_port=22, protocol="tcp"),
                    pb.PortMapping(container_port=8080, protocol="tcp"),
                    pb.PortMapping(container_port=9000, protocol="tcp"),
                    pb.PortMapping(host_port=53, container_port=53, protocol="udp"),
                ],
            )
        ],
        id="no-yaml-1.1-surprises",
    ),
    pytest.param(
        """
        services:
          web:
            image: nginx:1.27
            resources:
              limits: {cpus: 2, memory: 1.5GiB}
              reservations: {cpus: 1, memory: 500MB}
        """,
        [
            make_spec(
                resources=pb.Resources(
                    cpu_limit=2, memory_limit_bytes=1536 * MIB, cpu_reservation=1, memory_reservation_bytes=5 * 10**8
                )
            )
        ],
        id="cpus-as-integers-and-decimal-sizes",
    ),
    pytest.param(
        """
        services:
          web:
            image: nginx:1.27
            resources:
              limits: {memory: 268435456}
              reservations: {memory: 64m}
        """,
        [make_spec(resources=pb.Resources(memory_limit_bytes=256 * MIB, memory_reservation_bytes=64 * MIB))],
        id="memory-in-bytes-and-docker-letters",
    ),
    pytest.param(
        """
        services:
          web:
            image: nginx:1.27
            restart: {condition: none, delay: 500ms, window: 1h30m}
            stop_grace_period: 2.5
        """,
        [
            make_spec(
                restart={
                    "condition": pb.RestartPolicy.CONDITION_NONE,
                    "delay": SECOND // 2,
                    "window": 5400 * SECOND,
                },
                stop_grace_period=duration(2500 * 10**6),
            )
        ],
        id="durations",
    ),
    pytest.param(
        """
        services:
          web:
            image: nginx:1.27
            restart: {condition: any}
            stop_grace_period: 0s
        """,
        [make_spec(restart={"condition": pb.RestartPolicy.CONDITION_ANY}, stop_grace_period=duration(0))],
        id="restart-any-and-zero-grace",
    ),
    pytest.param(
        """
        services:
          web: &base
            image: nginx:1.27
            env: {A: "1"}
          api:
            <<: *base
            replicas: 2
        """,
        [make_spec(env={"A": "1"}), make_spec("api", env={"A": "1"}, replicas=2)],
        id="anchors-and-merge-keys",
    ),
    pytest.param(
        """
        x-defaults: &defaults
          image: nginx:1.27
          labels: {team: web}
        services:
          web:
            <<: *defaults
            replicas: 2
        """,
        [make_spec(labels={"team": "web"}, replicas=2)],
        id="top-level-extension-keys-for-anchors",
    ),
    pytest.param(
        """
        services:
          web:
            image: localhost:5000/team/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
        """,
        [
            make_spec(
                image="localhost:5000/team/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
            )
        ],
        id="image-with-registry-and-digest",
    ),
    pytest.param(
        """
        services:
          agentd:
            image: dockyard-test:latest
            mode: global
            placement:
              constraints: ["node.labels.zone == a", "node.hostname != h3"]
              max_replicas_per_node: 1
              strategy: binpack
            on_disconnect: {stop_after: 30s}
        """,
        [
            make_spec(
                "agentd",
                "dockyard-test:latest",
                mode=pb.SERVICE_MODE_GLOBAL,
                placement=pb.Placement(
                    constraints=["node.labels.zone == a", "node.hostname != h3"],
                    max_replicas_per_node=1,
                    strategy=pb.Placement.STRATEGY_BINPACK,
                ),
                on_disconnect=pb.OnDisconnect(stop_after=duration(30 * SECOND)),
            )
        ],
        id="global-with-placement-and-stop-after",
    ),
    pytest.param(
        """
        services:
          web:
            image: nginx:1.27
            mode: replicated
            replicas: 1
            placement: {constraints: [], max_replicas_per_node: 0, strategy: spread}
            on_disconnect: keep
        """,
        [make_spec()],
        id="scheduling-defaults-written-out",
    ),
    pytest.param(
        """
        services:
          web:
            image: nginx:1.27
            placement:
              constraints:
                - node.labels.com.example.zone==a
                - node.id != n1
                - node.labels.zone != a
                - node.labels.zone != b
                - engine.labels.zone == b
            on_disconnect: {stop_after: 24h}
        """,
        [
            make_spec(
                placement=pb.Placement(
                    constraints=[
                        "node.labels.com.example.zone==a",
                        "node.id != n1",
                        "node.labels.zone != a",
                        "node.labels.zone != b",
                        "engine.labels.zone == b",  # the agent's label is another fact than the operator's
                    ]
                ),
                on_disconnect=pb.OnDisconnect(stop_after=duration(24 * 3600 * SECOND)),
            )
        ],
        id="constraints-kept-as-written-and-longest-stop-after",
    ),
]


@pytest.mark.parametrize(("text", "expected"), VALID_FILES)
def test_valid_file_gives_expected_specs(text: str, expected: list[pb.ServiceSpec]) -> None:
    assert load(text) == expected


# One table row per message: the fields of service `web`, and the exact lines reported.
SERVICE_ERRORS = [
    case(
        "image-required",
        "replicas: -1",
        'services.web.image: is required; name the container image to run, like "nginx:1.27"',
        "services.web.replicas: must be an integer from 0 to 10000, got -1",
    ),
    case(
        "image-type",
        "image: 5",
        'services.web.image: must be a string like "nginx:1.27", got 5',
    ),
    case(
        "image-empty",
        "image: ''",
        'services.web.image: must not be empty; name the container image to run, like "nginx:1.27"',
    ),
    case(
        "image-space",
        "image: nginx latest",
        'services.web.image: must not contain whitespace, got "nginx latest"',
    ),
    case(
        "image-reference",
        "image: Nginx:1.27",
        'services.web.image: must be an image reference like "nginx:1.27" or '
        '"registry.example.com/team/app:v2" (lowercase name, optional :tag and @digest), got '
        '"Nginx:1.27"',
    ),
    case(
        "typo",
        "image: x\nreplicass: 3",
        'services.web.replicass: unknown field; did you mean "replicas"?',
    ),
    case(
        "compose-environment",
        "image: x\nenvironment: {A: b}",
        'services.web.environment: unknown field; did you mean "env"?',
    ),
    case(
        "compose-deploy",
        "image: x\ndeploy: {replicas: 2}",
        "services.web.deploy: unknown field; write mode, replicas, placement, resources, restart, update and "
        "rollback directly under the service",
    ),
    case(
        "unknown-field",
        "image: x\nulimits: [a]",
        "services.web.ulimits: unknown field; expected one of image, entrypoint, command, env, hostname, ports, "
        "mode, replicas, placement, resources, labels, mounts, networks, secrets, configs, restart, healthcheck, "
        "update, rollback, depends_on, stop_grace_period, on_disconnect, stack",
    ),
    case(
        "replicas-negative",
        "image: x\nreplicas: -1",
        "services.web.replicas: must be an integer from 0 to 10000, got -1",
    ),
    case(
        "replicas-large",
        "image: x\nreplicas: 10001",
        "services.web.replicas: must be an integer from 0 to 10000, got 10001",
    ),
    case(
        "replicas-beyond-uint32",
        "image: x\nreplicas: 99999999999",
        "services.web.replicas: must be an integer from 0 to 10000, got 99999999999",
    ),
    case(
        "replicas-quoted",
        "image: x\nreplicas: '3'",
        'services.web.replicas: must be an integer from 0 to 10000, got "3"; write the number without quotes',
    ),
    case(
        "replicas-float",
        "image: x\nreplicas: 2.0",
        "services.web.replicas: must be an integer from 0 to 10000, got 2.0",
    ),
    case(
        "replicas-bool",
        "image: x\nreplicas: true",
        "services.web.replicas: must be an integer from 0 to 10000, got true",
    ),
    case(
        "replicas-null",
        "image: x\nreplicas:",
        "services.web.replicas: must be an integer from 0 to 10000, got null; leave the field out to use the default",
    ),
    case(
        "command-type",
        "image: x\ncommand: 5",
        "services.web.command: must be a list of strings or a string, got 5",
    ),
    case(
        "command-quoting",
        "image: x\ncommand: echo 'hi",
        "services.web.command: cannot be split into words (no closing quotation); fix the quoting or write a list",
    ),
    case(
        "command-number",
        "image: x\ncommand: [sleep, 10]",
        "services.web.command[1]: must be a string, got 10; put the value in quotes",
    ),
    case(
        "command-nul",
        'image: x\ncommand: ["a\\0b"]',
        "services.web.command[0]: must not contain NUL characters",
    ),
    case(
        "env-type",
        "image: x\nenv: 5",
        'services.web.env: must be a mapping of NAME: value or a list of "NAME=value" strings, got 5',
    ),
    case(
        "env-number",
        "image: x\nenv: {PORT: 8080}",
        "services.web.env.PORT: must be a string, got 8080; put the value in quotes",
    ),
    case(
        "env-bool",
        "image: x\nenv: {DEBUG: true}",
        "services.web.env.DEBUG: must be a string, got true; put the value in quotes",
    ),
    case(
        "env-null",
        "image: x\nenv: {EMPTY: }",
        'services.web.env.EMPTY: must be a string, got null; write "" for an empty value',
    ),
    case(
        "env-key-type",
        "image: x\nenv: {1: a}",
        "services.web.env: NAME 1 must be a string; put it in quotes",
    ),
    case(
        "env-key-empty",
        "image: x\nenv: {'': a}",
        'services.web.env[""]: variable name must not be empty',
    ),
    case(
        "env-key-equals",
        "image: x\nenv: {'A=B': a}",
        'services.web.env["A=B"]: variable name must not contain "="',
    ),
    case(
        "env-key-nul",
        'image: x\nenv: {"A\\0": a}',
        'services.web.env["A\\u0000"]: variable name must not contain NUL characters',
    ),
    case(
        "env-value-nul",
        'image: x\nenv: {A: "a\\0"}',
        "services.web.env.A: value must not contain NUL characters",
    ),
    case(
        "env-list-no-equals",
        "image: x\nenv: [FOO]",
        'services.web.env[0]: must have the form NAME=value, got "FOO"; write "FOO=" for an empty value',
    ),
    case(
        "env-list-duplicate",
        "image: x\nenv: [A=1, B=2, A=3]",
        'services.web.env[2]: "A" is already set by env[0]; remove one of them',
    ),
    case(
        "env-list-item-type",
        "image: x\nenv: [[A]]",
        'services.web.env[0]: must be a "NAME=value" string, got a list',
    ),
    case(
        "label-reserved",
        "image: x\nlabels: {dockyard.service: x}",
        'services.web.labels["dockyard.service"]: keys starting with "dockyard." are reserved for '
        "the labels Dockyard sets itself; choose another key",
    ),
    case(
        "label-empty",
        "image: x\nlabels: {'': x}",
        'services.web.labels[""]: label key must not be empty',
    ),
    case(
        "label-value-type",
        "image: x\nlabels: {team: 5}",
        "services.web.labels.team: must be a string, got 5; put the value in quotes",
    ),
    case(
        "label-list-no-equals",
        "image: x\nlabels: [team]",
        'services.web.labels[0]: must have the form key=value, got "team"; write "team=" for an empty value',
    ),
    case(
        "ports-type",
        "image: x\nports: 80",
        'services.web.ports: must be a list of ports like "8080:80/tcp", got 80',
    ),
    case(
        "ports-duplicate",
        "image: x\nports: ['8080:80', '8080:81']",
        "services.web.ports[1]: host port 8080/tcp is already published by ports[0]; use another host port",
    ),
    case(
        "ports-duplicate-long-form",
        "image: x\nports: ['8080:80', {published: 8080, target: 81}]",
        "services.web.ports[1]: host port 8080/tcp is already published by ports[0]; use another host port",
    ),
    case(
        "ports-syntax",
        "image: x\nports: ['abc']",
        'services.web.ports[0]: must be "[HOST:]CONTAINER[/PROTOCOL]" like "8080:80/tcp", or a '
        'mapping with published, target and protocol, got "abc"',
    ),
    case(
        "ports-null",
        "image: x\nports: [null]",
        'services.web.ports[0]: must be "[HOST:]CONTAINER[/PROTOCOL]" like "8080:80/tcp", or a '
        "mapping with published, target and protocol, got null",
    ),
    case(
        "ports-host-ip",
        "image: x\nports: ['127.0.0.1:8080:80']",
        'services.web.ports[0]: binding to a host address is not supported, got "127.0.0.1:8080:80"; '
        "write HOST:CONTAINER without the address",
    ),
    case(
        "ports-range",
        "image: x\nports: ['8000-8010:80']",
        'services.web.ports[0]: port ranges are not supported, got "8000-8010:80"; list each port separately',
    ),
    case(
        "ports-target-zero",
        "image: x\nports: ['0']",
        "services.web.ports[0].target: must be a container port from 1 to 65535, got 0",
    ),
    case(
        "ports-target-large",
        "image: x\nports: [70000]",
        "services.web.ports[0].target: must be a container port from 1 to 65535, got 70000",
    ),
    case(
        "ports-target-negative",
        "image: x\nports: [-5]",
        "services.web.ports[0].target: must be a container port from 1 to 65535, got -5",
    ),
    case(
        "ports-published-large",
        "image: x\nports: ['70000:80']",
        "services.web.ports[0].published: must be a host port from 0 to 65535 (0 lets Docker pick a "
        "free one), got 70000",
    ),
    case(
        "ports-protocol",
        "image: x\nports: ['80/sctp']",
        'services.web.ports[0].protocol: must be "tcp" or "udp", got "sctp"',
    ),
    case(
        "ports-protocol-case",
        "image: x\nports: ['80/TCP']",
        'services.web.ports[0].protocol: must be "tcp" or "udp", got "TCP"',
    ),
    case(
        "ports-target-required",
        "image: x\nports: [{published: 80}]",
        "services.web.ports[0].target: is required; give the port the container listens on",
    ),
    case(
        "ports-target-quoted",
        "image: x\nports: [{target: '80'}]",
        'services.web.ports[0].target: must be a container port from 1 to 65535, got "80"; write the '
        "number without quotes",
    ),
    case(
        "ports-protocol-type",
        "image: x\nports: [{target: 80, protocol: 6}]",
        'services.web.ports[0].protocol: must be "tcp" or "udp", got 6',
    ),
    case(
        "ports-typo",
        "image: x\nports: [{target: 80, publish: 8080}]",
        'services.web.ports[0].publish: unknown field; did you mean "published"?',
    ),
    case(
        "resources-type",
        "image: x\nresources: 1",
        "services.web.resources: must be a mapping with limits and/or reservations, got 1",
    ),
    case(
        "resources-typo",
        "image: x\nresources: {limit: {cpus: 1}}",
        'services.web.resources.limit: unknown field; did you mean "limits"?',
    ),
    case(
        "resources-section-type",
        "image: x\nresources: {limits: 1}",
        "services.web.resources.limits: must be a mapping with cpus and/or memory, got 1",
    ),
    case(
        "resources-cpu-typo",
        "image: x\nresources: {limits: {cpu: 1}}",
        'services.web.resources.limits.cpu: unknown field; did you mean "cpus"?',
    ),
    case(
        "cpus-zero",
        "image: x\nresources: {limits: {cpus: 0}}",
        "services.web.resources.limits.cpus: must be a number of CPUs greater than 0 and at most 1024, got 0",
    ),
    case(
        "cpus-negative",
        "image: x\nresources: {limits: {cpus: -1.5}}",
        "services.web.resources.limits.cpus: must be a number of CPUs greater than 0 and at most 1024, got -1.5",
    ),
    case(
        "cpus-large",
        "image: x\nresources: {reservations: {cpus: 2000}}",
        "services.web.resources.reservations.cpus: must be a number of CPUs greater than 0 and at most 1024, got 2000",
    ),
    case(
        "cpus-nan",
        "image: x\nresources: {limits: {cpus: .nan}}",
        "services.web.resources.limits.cpus: must be a number of CPUs greater than 0 and at most 1024, got nan",
    ),
    case(
        "cpus-quoted",
        "image: x\nresources: {limits: {cpus: '0.5'}}",
        "services.web.resources.limits.cpus: must be a number of CPUs greater than 0 and at most "
        '1024, got "0.5"; write the number without quotes',
    ),
    case(
        "memory-unit",
        "image: x\nresources: {limits: {memory: 256MiBs}}",
        'services.web.resources.limits.memory: unknown unit "MiBs"; use bytes or a unit like 512MiB or 2GiB',
    ),
    case(
        "memory-unit-case",
        "image: x\nresources: {limits: {memory: 256mb}}",
        'services.web.resources.limits.memory: unknown unit "mb"; use bytes or a unit like 512MiB or 2GiB',
    ),
    case(
        "memory-syntax",
        "image: x\nresources: {limits: {memory: lots}}",
        'services.web.resources.limits.memory: must be a size like 512MiB or 2GiB, got "lots"',
    ),
    case(
        "memory-negative-string",
        "image: x\nresources: {limits: {memory: -1GiB}}",
        'services.web.resources.limits.memory: must be a size like 512MiB or 2GiB, got "-1GiB"',
    ),
    case(
        "memory-type",
        "image: x\nresources: {limits: {memory: true}}",
        "services.web.resources.limits.memory: must be a size like 512MiB or 2GiB, got true",
    ),
    case(
        "memory-limit-small",
        "image: x\nresources: {limits: {memory: 4MiB}}",
        "services.web.resources.limits.memory: must be at least 6MiB (the smallest limit Docker accepts), got 4MiB",
    ),
    case(
        "memory-limit-zero",
        "image: x\nresources: {limits: {memory: 0}}",
        "services.web.resources.limits.memory: must be at least 6MiB (the smallest limit Docker accepts), got 0B",
    ),
    case(
        "memory-reservation-zero",
        "image: x\nresources: {reservations: {memory: 0}}",
        "services.web.resources.reservations.memory: must be greater than 0, got 0B; leave it out to reserve nothing",
    ),
    case(
        "memory-too-large",
        "image: x\nresources: {limits: {memory: 99999999TiB}}",
        'services.web.resources.limits.memory: is too large, got "99999999TiB"; the maximum is '
        "9223372036854775807 bytes",
    ),
    case(
        "cpus-reservation-over-limit",
        "image: x\nresources: {limits: {cpus: 0.5}, reservations: {cpus: 1}}",
        "services.web.resources.reservations.cpus: must not exceed resources.limits.cpus (0.5), got 1",
    ),
    case(
        "memory-reservation-over-limit",
        "image: x\nresources: {limits: {memory: 256MiB}, reservations: {memory: 1GiB}}",
        "services.web.resources.reservations.memory: must not exceed resources.limits.memory (256MiB), got 1GiB",
    ),
    case(
        "restart-type",
        "image: x\nrestart: always",
        'services.web.restart: must be a mapping like {condition: on-failure, delay: 5s}, got "always"',
    ),
    case(
        "condition-unknown",
        "image: x\nrestart: {condition: always}",
        'services.web.restart.condition: must be none, on-failure or any, got "always"',
    ),
    case(
        "condition-typo",
        "image: x\nrestart: {condition: on_failure}",
        'services.web.restart.condition: must be none, on-failure or any, got "on_failure"; did you mean "on-failure"?',
    ),
    case(
        "condition-compose-no",
        "image: x\nrestart: {condition: no}",
        'services.web.restart.condition: must be none, on-failure or any, got "no"; did you mean "none"?',
    ),
    case(
        "delay-large",
        "image: x\nrestart: {delay: 2h}",
        "services.web.restart.delay: must be a duration from 0s to 1h, got 2h",
    ),
    case(
        "delay-negative",
        "image: x\nrestart: {delay: -1}",
        "services.web.restart.delay: must be a duration from 0s to 1h, got -1s",
    ),
    case(
        "window-negative",
        "image: x\nrestart: {window: -30s}",
        "services.web.restart.window: must be a duration of 0s or more, got -30s",
    ),
    case(
        "max-attempts",
        "image: x\nrestart: {max_attempts: -1}",
        "services.web.restart.max_attempts: must be an integer from 0 to 4294967295 (0 means no limit), got -1",
    ),
    case(
        "restart-typo",
        "image: x\nrestart: {max_retries: 3}",
        'services.web.restart.max_retries: unknown field; did you mean "max_attempts"?',
    ),
    case(
        "restart-unknown",
        "image: x\nrestart: {backoff: 2}",
        "services.web.restart.backoff: unknown field; expected one of condition, delay, max_attempts, window, "
        "max_delay",
    ),
    case(
        "grace-large",
        "image: x\nstop_grace_period: 2h",
        "services.web.stop_grace_period: must be a duration from 0s to 1h, got 2h",
    ),
    case(
        "grace-syntax",
        "image: x\nstop_grace_period: 10 sec",
        "services.web.stop_grace_period: must be a duration like 10s, 1m30s or 500ms, or a number of "
        'seconds, got "10 sec"',
    ),
    case(
        "grace-unit",
        "image: x\nstop_grace_period: 10sec",
        'services.web.stop_grace_period: unknown unit "sec" in "10sec"; use h, m, s, ms, us or ns, like 1m30s',
    ),
    case(
        "grace-missing-unit",
        "image: x\nstop_grace_period: 1m30",
        "services.web.stop_grace_period: must be a duration like 10s, 1m30s or 500ms, or a number of "
        'seconds, got "1m30"; every number needs a unit',
    ),
    case(
        "grace-type",
        "image: x\nstop_grace_period: [1]",
        "services.web.stop_grace_period: must be a duration like 10s, 1m30s or 500ms, or a number of "
        "seconds, got a list",
    ),
    case(
        "grace-infinite",
        "image: x\nstop_grace_period: .inf",
        "services.web.stop_grace_period: must be a duration like 10s, 1m30s or 500ms, or a number of seconds, got inf",
    ),
    case(
        "grace-exponent-is-no-yaml-number",
        "image: x\nstop_grace_period: 1e3",
        'services.web.stop_grace_period: unknown unit "e" in "1e3"; use h, m, s, ms, us or ns, like 1m30s',
    ),
    case(
        "grace-overflow",
        "image: x\nstop_grace_period: 1.0e+300",
        "services.web.stop_grace_period: is too large, got 1e+300; durations are limited to 10000 years",
    ),
    case(
        "mode-unknown",
        "image: x\nmode: daemon",
        'services.web.mode: must be replicated, global or job, got "daemon"',
    ),
    case(
        "mode-typo",
        "image: x\nmode: Global",
        'services.web.mode: must be replicated, global or job, got "Global"; did you mean "global"?',
    ),
    case(
        "mode-type",
        "image: x\nmode: 2",
        "services.web.mode: must be replicated, global or job, got 2",
    ),
    case(
        "mode-unusable-still-reads-replicas",
        "image: x\nmode: globl\nreplicas: -1",
        'services.web.mode: must be replicated, global or job, got "globl"; did you mean "global"?',
        "services.web.replicas: must be an integer from 0 to 10000, got -1",
    ),
    case(
        "global-with-replicas",
        "image: x\nmode: global\nreplicas: 3",
        f"services.web.replicas: {GLOBAL_REPLICAS}",
    ),
    case(
        "global-with-zero-replicas",
        "image: x\nmode: global\nreplicas: 0",
        f"services.web.replicas: {GLOBAL_REPLICAS}",
    ),
    case(
        "global-with-unusable-replicas-is-reported-once",
        "image: x\nreplicas: many\nmode: global",
        f"services.web.replicas: {GLOBAL_REPLICAS}",
    ),
    case(
        "placement-type",
        "image: x\nplacement: [node.labels.zone == a]",
        "services.web.placement: must be a mapping with constraints, max_replicas_per_node, strategy and/or "
        "rebalance, got a list",
    ),
    case(
        "placement-null",
        "image: x\nplacement:",
        "services.web.placement: must be a mapping with constraints, max_replicas_per_node, strategy and/or "
        "rebalance, got null; leave the field out to use the default",
    ),
    case(
        "placement-typo",
        "image: x\nplacement: {constraint: [node.id == a]}",
        'services.web.placement.constraint: unknown field; did you mean "constraints"?',
    ),
    case(
        "placement-unknown",
        "image: x\nplacement: {preferences: [{spread: node.labels.zone}]}",
        "services.web.placement.preferences: unknown field; expected one of constraints, max_replicas_per_node, "
        "strategy, rebalance",
    ),
    case(
        "constraints-string",
        "image: x\nplacement: {constraints: node.labels.zone == a}",
        'services.web.placement.constraints: must be a list of constraints like ["node.labels.zone == a"], '
        'got "node.labels.zone == a"',
    ),
    case(
        "constraint-number",
        "image: x\nplacement: {constraints: [5]}",
        'services.web.placement.constraints[0]: must be a string like "node.labels.zone == a", got 5; '
        "put the value in quotes",
    ),
    case(
        "constraint-written-as-mapping",
        "image: x\nplacement:\n  constraints:\n    - node.labels.zone: a",
        'services.web.placement.constraints[0]: must be a string like "node.labels.zone == a", got a mapping; '
        'compare with == or != rather than ":"',
    ),
    case(
        "constraint-syntax",
        "image: x\nplacement: {constraints: [node.role == manager]}",
        f'services.web.placement.constraints[0]: {FORMS}, got "node.role == manager"',
    ),
    case(
        "constraint-single-equals",
        "image: x\nplacement: {constraints: [node.labels.zone=a]}",
        f'services.web.placement.constraints[0]: {FORMS}, got "node.labels.zone=a"; compare with == or !=',
    ),
    case(
        "constraint-value-with-spaces",
        "image: x\nplacement: {constraints: [node.labels.region == eu west]}",
        f'services.web.placement.constraints[0]: {FORMS}, got "node.labels.region == eu west"; '
        "the value cannot contain whitespace",
    ),
    case(
        "constraint-empty",
        "image: x\nplacement: {constraints: ['']}",
        f'services.web.placement.constraints[0]: {FORMS}, got ""',
    ),
    case(
        "constraint-duplicate",
        "image: x\nplacement: {constraints: [node.id != a, node.labels.zone == a, node.labels.zone==a]}",
        "services.web.placement.constraints[2]: is the same as constraints[1]; remove one of them",
    ),
    case(
        "constraint-contradicting-labels",
        "image: x\nplacement: {constraints: [node.labels.zone == a, node.labels.zone == b]}",
        "services.web.placement.constraints[1]: contradicts constraints[0]: all constraints must hold, but a "
        'node\'s label "zone" cannot be both "a" and "b"; keep one of them',
    ),
    case(
        "constraint-contradicting-engine-labels",
        "image: x\nplacement: {constraints: [node.labels.zone == a, engine.labels.zone == a, engine.labels.zone==b]}",
        "services.web.placement.constraints[2]: contradicts constraints[1]: all constraints must hold, but a "
        'node\'s engine label "zone" cannot be both "a" and "b"; keep one of them',
    ),
    case(
        "constraint-contradicting-negation",
        "image: x\nplacement: {constraints: [node.hostname != h1, node.hostname == h1]}",
        "services.web.placement.constraints[1]: contradicts constraints[0]: all constraints must hold, but a "
        'node\'s hostname cannot both be and not be "h1"; remove one of them',
    ),
    case(
        "constraint-contradictions-are-against-the-first",
        "image: x\nplacement: {constraints: [node.id == a, node.id == b, node.id == b]}",
        "services.web.placement.constraints[1]: contradicts constraints[0]: all constraints must hold, but a "
        'node\'s id cannot be both "a" and "b"; keep one of them',
        "services.web.placement.constraints[2]: contradicts constraints[0]: all constraints must hold, but a "
        'node\'s id cannot be both "a" and "b"; keep one of them',
    ),
    case(
        "max-replicas-per-node-large",
        "image: x\nplacement: {max_replicas_per_node: 10001}",
        "services.web.placement.max_replicas_per_node: must be an integer from 0 to 10000 (0 means no limit), "
        "got 10001",
    ),
    case(
        "max-replicas-per-node-negative",
        "image: x\nplacement: {max_replicas_per_node: -1}",
        "services.web.placement.max_replicas_per_node: must be an integer from 0 to 10000 (0 means no limit), got -1",
    ),
    case(
        "max-replicas-per-node-quoted",
        "image: x\nplacement: {max_replicas_per_node: '2'}",
        "services.web.placement.max_replicas_per_node: must be an integer from 0 to 10000 (0 means no limit), "
        'got "2"; write the number without quotes',
    ),
    case(
        "strategy-unknown",
        "image: x\nplacement: {strategy: random}",
        'services.web.placement.strategy: must be spread or binpack, got "random"',
    ),
    case(
        "strategy-typo",
        "image: x\nplacement: {strategy: bin-pack}",
        'services.web.placement.strategy: must be spread or binpack, got "bin-pack"; did you mean "binpack"?',
    ),
    case(
        "on-disconnect-unknown-word",
        "image: x\non_disconnect: stop",
        'services.web.on_disconnect: must be keep or a mapping like {stop_after: 30s}, got "stop"',
    ),
    case(
        "on-disconnect-typo",
        "image: x\non_disconnect: Keep",
        'services.web.on_disconnect: must be keep or a mapping like {stop_after: 30s}, got "Keep"; '
        'did you mean "keep"?',
    ),
    case(
        "on-disconnect-bare-duration",
        "image: x\non_disconnect: 30",
        "services.web.on_disconnect: must be keep or a mapping like {stop_after: 30s}, got 30",
    ),
    case(
        "on-disconnect-null",
        "image: x\non_disconnect:",
        "services.web.on_disconnect: must be keep or a mapping like {stop_after: 30s}, got null; "
        "leave the field out to use the default",
    ),
    case(
        "stop-after-required",
        "image: x\non_disconnect: {}",
        "services.web.on_disconnect.stop_after: is required; give a duration like 30s, or write on_disconnect: keep",
    ),
    case(
        "stop-after-misspelt-is-reported-once",
        "image: x\non_disconnect: {stop_afer: 30s}",
        'services.web.on_disconnect.stop_afer: unknown field; did you mean "stop_after"?',
    ),
    case(
        "on-disconnect-unknown-key",
        "image: x\non_disconnect: {stop_after: 30s, restart: true}",
        'services.web.on_disconnect.restart: unknown field; the only field allowed here is "stop_after"',
    ),
    case(
        "stop-after-zero",
        "image: x\non_disconnect: {stop_after: 0s}",
        "services.web.on_disconnect.stop_after: must be a duration greater than 0s and at most 24h, got 0s",
    ),
    case(
        "stop-after-negative",
        "image: x\non_disconnect: {stop_after: -30s}",
        "services.web.on_disconnect.stop_after: must be a duration greater than 0s and at most 24h, got -30s",
    ),
    case(
        "stop-after-too-long",
        "image: x\non_disconnect: {stop_after: 24h0.001s}",
        "services.web.on_disconnect.stop_after: must be a duration greater than 0s and at most 24h, got 24h0.001s",
    ),
    case(
        "stop-after-syntax",
        "image: x\non_disconnect: {stop_after: soon}",
        "services.web.on_disconnect.stop_after: must be a duration like 10s, 1m30s or 500ms, or a number of "
        'seconds, got "soon"',
    ),
]


@pytest.mark.parametrize(("body", "expected"), SERVICE_ERRORS)
def test_service_error_message(body: str, expected: list[str]) -> None:
    assert service_errors(body) == expected


DOCUMENT_ERRORS = [
    case(
        "empty",
        "",
        'web.yaml: the file is empty; it needs a "services:" mapping with at least one service',
    ),
    case(
        "only-comments",
        "# nothing yet\n",
        'web.yaml: the file is empty; it needs a "services:" mapping with at least one service',
    ),
    case(
        "top-level-list",
        "- web\n",
        'web.yaml: must be a mapping with a top-level "services" key, got a list',
    ),
    case(
        "top-level-string",
        "hello\n",
        'web.yaml: must be a mapping with a top-level "services" key, got "hello"',
    ),
    case(
        "services-missing",
        "web: {image: x}\n",
        "web: unknown field; expected one of stack, services, networks, volumes, secrets, configs",
        'services: is required; put each service under a top-level "services:" mapping',
    ),
    case(
        "services-typo",
        "service: {web: {image: x}}\n",
        'service: unknown field; did you mean "services"?',
        'services: is required; put each service under a top-level "services:" mapping',
    ),
    case(
        "services-null",
        "services:\n",
        "services: must define at least one service",
    ),
    case(
        "services-empty",
        "services: {}\n",
        "services: must define at least one service",
    ),
    case(
        "services-list",
        "services: [web]\n",
        "services: must be a mapping from service names to services, got a list",
    ),
    case(
        "name-type",
        "services: {123: {image: x}}\n",
        "services: service name 123 must be a string; put it in quotes",
    ),
    case(
        "service-null",
        "services: {web: }\n",
        'services.web: must be a mapping of service fields with at least "image", got null',
    ),
    case(
        "service-string",
        "services: {web: nginx}\n",
        'services.web: must be a mapping of service fields with at least "image", got "nginx"',
    ),
    case(
        "name-invalid",
        "services: {Web_1: {image: x}}\n",
        'services.Web_1: service name must be 1 to 63 lowercase letters, digits or "-", starting and '
        'ending with a letter or digit, got "Web_1"',
    ),
    case(
        "name-leading-dash",
        "services: {-web: {image: x}}\n",
        'services["-web"]: service name must be 1 to 63 lowercase letters, digits or "-", starting '
        'and ending with a letter or digit, got "-web"',
    ),
    case(
        "name-space",
        "services: {my app: {image: x}}\n",
        'services["my app"]: service name must be 1 to 63 lowercase letters, digits or "-", starting '
        'and ending with a letter or digit, got "my app"',
    ),
    case(
        "name-too-long-is-shown-shortened",
        f"services: {{{'a' * 64}: {{image: x}}}}\n",
        f"services.{'a' * 64}: service name must be 1 to 63 lowercase letters, digits or "
        f'"-", starting and ending with a letter or digit, got "{"a" * 57}..."',
    ),
    case(
        "name-empty",
        "services: {'': {image: x}}\n",
        'services[""]: service name must not be empty',
    ),
]


@pytest.mark.parametrize(("text", "expected"), DOCUMENT_ERRORS)
def test_document_error_message(text: str, expected: list[str]) -> None:
    assert errors_of(text, "web.yaml") == expected


def test_longest_valid_name_is_accepted() -> None:
    name = "a" + "-" * 61 + "9"
    assert [spec.name for spec in load(f"services: {{{name}: {{image: x}}}}")] == [name]


def test_all_errors_of_a_file_are_reported_in_reading_order() -> None:
    text = """
        services:
          web:
            image: nginx latest
            replicass: 3
            replicas: -1
            ports: ["8080:80", "8080:81"]
            resources:
              limits: {memory: 256MiBs}
          Api:
            image: api
            restart: {condition: always}
    """
    assert errors_of(text) == [
        'services.web.replicass: unknown field; did you mean "replicas"?',
        'services.web.image: must not contain whitespace, got "nginx latest"',
        "services.web.ports[1]: host port 8080/tcp is already published by ports[0]; use another host port",
        "services.web.replicas: must be an integer from 0 to 10000, got -1",
        'services.web.resources.limits.memory: unknown unit "MiBs"; use bytes or a unit like 512MiB or 2GiB',
        'services.Api: service name must be 1 to 63 lowercase letters, digits or "-", starting and ending with '
        'a letter or digit, got "Api"',
        'services.Api.restart.condition: must be none, on-failure or any, got "always"',
    ]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            f"replicas: {'9' * 40}",
            "replicas: must be an integer from 0 to 10000, got a number with more than 30 digits",
        ),
        (
            f"ports: ['{'9' * 5000}:80']",
            "ports[0].published: must be a host port from 0 to 65535 (0 lets Docker pick a free one), "
            "got a number with more than 30 digits",
        ),
        (
            f"stop_grace_period: {'9' * 400}",
            "stop_grace_period: is too large, got a number with more than 30 digits; "
            "durations are limited to 10000 years",
        ),
        (
            f"stop_grace_period: '{'9' * 5000}s'",
            f'stop_grace_period: has too many digits, got "{"9" * 57}..."',
        ),
        (
            f"resources: {{limits: {{memory: '{'9' * 5000}KiB'}}}}",
            f'resources.limits.memory: has too many digits, got "{"9" * 57}..."',
        ),
    ],
    ids=["replicas", "port", "duration-number", "duration-string", "memory"],
)
def test_huge_numbers_are_reported_briefly(body: str, expected: str) -> None:
    assert service_errors(f"image: x\n{body}") == [f"services.web.{expected}"]


def test_integers_beyond_the_interpreters_limit_are_a_yaml_error() -> None:
    assert service_errors(f"image: x\nreplicas: {'9' * 5000}") == [
        "<spec>:4:15: invalid YAML: this integer has too many digits"
    ]


def test_a_rejected_field_is_reported_once() -> None:
    # The reader rejects the limit; validate_service must not add "reservation exceeds limit" on top.
    body = "image: x\nresources: {limits: {memory: 1MiB}, reservations: {memory: 8MiB}}"
    assert service_errors(body) == [
        "services.web.resources.limits.memory: must be at least 6MiB (the smallest limit Docker accepts), got 1MiB"
    ]


def test_rejected_port_keeps_later_indexes_aligned() -> None:
    body = "image: x\nports: [nonsense, '8080:80', '8080:81']"
    assert service_errors(body) == [
        'services.web.ports[0]: must be "[HOST:]CONTAINER[/PROTOCOL]" like "8080:80/tcp", or a mapping with '
        'published, target and protocol, got "nonsense"',
        "services.web.ports[2]: host port 8080/tcp is already published by ports[1]; use another host port",
    ]


def test_rejected_constraint_keeps_later_indexes_aligned_and_placement_reads_in_field_order() -> None:
    body = """
        image: x
        placement:
          strategy: fill
          max_replicas_per_node: 10001
          constraints: [node.id == a, 7, zone == a, node.id == a]
          spread: zone
    """
    assert service_errors(body) == [
        "services.web.placement.spread: unknown field; expected one of constraints, max_replicas_per_node, strategy, "
        "rebalance",
        'services.web.placement.constraints[1]: must be a string like "node.labels.zone == a", got 7; '
        "put the value in quotes",
        f'services.web.placement.constraints[2]: {FORMS}, got "zone == a"',
        "services.web.placement.constraints[3]: is the same as constraints[0]; remove one of them",
        "services.web.placement.max_replicas_per_node: must be an integer from 0 to 10000 (0 means no limit), "
        "got 10001",
        'services.web.placement.strategy: must be spread or binpack, got "fill"',
    ]


def test_issues_inside_a_section_follow_its_field_order() -> None:
    # The reader finds max_attempts and validate_service finds delay; the report still reads top down.
    body = "image: x\nrestart: {max_attempts: -1, delay: 2h}"
    assert service_errors(body) == [
        "services.web.restart.delay: must be a duration from 0s to 1h, got 2h",
        "services.web.restart.max_attempts: must be an integer from 0 to 4294967295 (0 means no limit), got -1",
    ]


def test_default_placement_and_on_disconnect_stay_unset() -> None:
    # The scheduler skips an unset placement on its hot path; an all-default one must not cost it that.
    text = """
        services:
          web: {image: x}
          api: {image: x, placement: {constraints: [], max_replicas_per_node: 0, strategy: spread}, on_disconnect: keep}
    """
    for spec in load(text):
        assert not spec.HasField("placement")
        assert not spec.HasField("on_disconnect")


def test_global_service_is_stored_with_zero_replicas() -> None:
    [spec] = load("services: {agentd: {image: x, mode: global}}")
    assert spec.mode == pb.SERVICE_MODE_GLOBAL
    assert spec.replicas == 0
    assert validate_service(spec) == []


def test_same_host_port_is_allowed_for_tcp_and_udp_and_port_zero_repeats() -> None:
    [spec] = load("services: {web: {image: x, ports: ['53:53/tcp', '53:53/udp', '80', '81']}}")
    assert [(p.host_port, p.protocol) for p in spec.ports] == [(53, "tcp"), (53, "udp"), (0, "tcp"), (0, "tcp")]


def test_duplicate_service_is_rejected() -> None:
    text = """
        services:
          web:
            image: nginx
          api:
            image: api
          web:
            image: other
    """
    assert errors_of(text) == [
        "services.web: is defined twice (lines 3 and 7); "
        "YAML would silently keep only the last one, so remove or rename one of them"
    ]


def test_every_duplicate_key_is_reported_with_its_path() -> None:
    text = """
        services:
          web:
            image: nginx
            image: nginx:1.27
            env:
              A: "1"
              A: "2"
            ports:
              - {target: 80, target: 81}
    """
    message = "YAML would silently keep only the last one, so remove or rename one of them"
    assert errors_of(text) == [
        f"services.web.image: is defined twice (lines 4 and 5); {message}",
        f"services.web.env.A: is defined twice (lines 7 and 8); {message}",
        f"services.web.ports[0].target: is defined twice (lines 10 and 10); {message}",
    ]


def test_keys_equal_after_parsing_are_duplicates() -> None:
    assert errors_of("services:\n  web: {image: x, labels: {true: a, True: b}}") == [
        "services.web.labels.True: is defined twice (lines 2 and 2); "
        "YAML would silently keep only the last one, so remove or rename one of them"
    ]


def test_merge_keys_may_be_overridden_without_being_duplicates() -> None:
    text = """
        services:
          web: &base {image: nginx, replicas: 2}
          api:
            <<: *base
            replicas: 3
    """
    assert [spec.replicas for spec in load(text)] == [2, 3]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "services:\n  web: [1,\n",
            "web.yaml:3:1: invalid YAML: while parsing a flow node, "
            "expected the node content, but found '<stream end>'",
        ),
        ("services:\n  web: image: x\n", "web.yaml:2:13: invalid YAML: mapping values are not allowed here"),
        (
            "services:\n\tweb: {}\n",
            "web.yaml:2:1: invalid YAML: while scanning for the next token, "
            "found character '\\t' that cannot start any token",
        ),
        (
            "services: {}\n---\nservices: {}\n",
            "web.yaml:2:1: invalid YAML: expected a single document in the stream, but found another document",
        ),
        (
            'services: {web: {image: "x\x07"}}\n',
            "web.yaml:1:27: invalid YAML: character U+0007 is not allowed; "
            "remove it, or write it as an escape inside a double-quoted string",
        ),
        (
            "services: !!python/object:os.system {}\n",
            "web.yaml:1:11: invalid YAML: could not determine a "
            "constructor for the tag 'tag:yaml.org,2002:python/object:os.system'",
        ),
        ("[" * 500, "web.yaml: invalid YAML: the document is nested too deeply"),
    ],
    ids=["unclosed-list", "nested-mapping", "tab", "two-documents", "control-character", "python-tag", "deep"],
)
def test_yaml_syntax_error(text: str, expected: str) -> None:
    assert errors_of(text, "web.yaml") == [expected]


def test_load_spec_file_reads_utf8_with_bom(tmp_path: Path) -> None:
    path = tmp_path / "web.yaml"
    path.write_bytes("\ufeffservices:\n  web:\n    image: nginx:1.27\n    env: {GREETING: grüezi}\n".encode())
    assert load_spec_file(path) == [make_spec(env={"GREETING": "grüezi"})]


def test_load_spec_file_names_the_file_in_syntax_errors(tmp_path: Path) -> None:
    path = tmp_path / "web.yaml"
    path.write_text("services: [\n")
    with pytest.raises(SpecError) as caught:
        load_spec_file(str(path))
    assert caught.value.errors == [
        f"{path}:2:1: invalid YAML: while parsing a flow node, expected the node content, but found '<stream end>'"
    ]


def test_load_spec_file_missing(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(SpecError) as caught:
        load_spec_file(path)
    assert caught.value.errors == [f"{path}: cannot read the file: No such file or directory"]


def test_load_spec_file_directory(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec_file(tmp_path)
    assert caught.value.errors == [f"{tmp_path}: cannot read the file: Is a directory"]


def test_load_spec_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"services: {web: {image: caf\xe9}}\n")
    with pytest.raises(SpecError) as caught:
        load_spec_file(path)
    assert caught.value.errors == [f"{path}: is not UTF-8 text (bad byte at offset 27); save it as UTF-8"]


def test_spec_error_is_a_value_error_with_one_line_per_problem() -> None:
    error = SpecError(["a: first", "b: second"])
    assert isinstance(error, ValueError)
    assert error.errors == ["a: first", "b: second"]
    assert str(error) == "a: first\nb: second"
    copy = pickle.loads(pickle.dumps(error))
    assert copy.errors == error.errors
    assert str(copy) == str(error)


def valid_proto(**fields: Any) -> pb.ServiceSpec:
    """A valid spec as a gRPC client might send it: defaults left unset."""
    spec = pb.ServiceSpec(name="web", image="nginx:1.27", replicas=1)
    for name, value in fields.items():
        setattr(spec, name, value)
    return spec


def test_validate_service_accepts_valid_and_unset_fields() -> None:
    assert validate_service(valid_proto()) == []
    assert validate_service(make_spec()) == []


def test_validate_service_reports_the_same_message_as_the_loader() -> None:
    spec = valid_proto(replicas=20000)
    spec.resources.memory_limit_bytes = 1 * MIB
    spec.ports.add(host_port=8080, container_port=80, protocol="tcp")
    spec.ports.add(host_port=8080, container_port=81, protocol="tcp")
    body = "image: nginx:1.27\nreplicas: 20000\nresources: {limits: {memory: 1MiB}}\nports: ['8080:80', '8080:81']"
    assert validate_service(spec) == service_errors(body)


def test_validate_service_words_scheduling_fields_like_the_loader() -> None:
    spec = valid_proto(mode=pb.SERVICE_MODE_GLOBAL, replicas=3)
    spec.placement.constraints.extend(["node.labels.zone == a", "node.labels.zone = b", "node.labels.zone == b"])
    spec.placement.max_replicas_per_node = 10001
    spec.on_disconnect.stop_after.FromNanoseconds(25 * 3600 * SECOND)
    body = """
        image: nginx:1.27
        mode: global
        replicas: 3
        placement:
          constraints: ["node.labels.zone == a", "node.labels.zone = b", "node.labels.zone == b"]
          max_replicas_per_node: 10001
        on_disconnect: {stop_after: 25h}
    """
    assert validate_service(spec) == service_errors(body)
    assert len(service_errors(body)) == 5


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(
            lambda s: s.ports.add(container_port=80),
            ['services.web.ports[0].protocol: must be "tcp" or "udp", got ""'],
            id="protocol-must-be-explicit",
        ),
        pytest.param(
            lambda s: s.ports.add(host_port=70000, container_port=80, protocol="tcp"),
            [
                "services.web.ports[0].published: must be a host port from 0 to 65535 "
                "(0 lets Docker pick a free one), got 70000"
            ],
            id="host-port-range",
        ),
        pytest.param(
            lambda s: setattr(s.restart, "condition", 7),
            ["services.web.restart.condition: must be none, on-failure or any, got 7"],
            id="unknown-condition-number",
        ),
        pytest.param(
            lambda s: setattr(s.resources, "cpu_limit", -0.5),
            ["services.web.resources.limits.cpus: must be a number of CPUs greater than 0 and at most 1024, got -0.5"],
            id="negative-cpus",
        ),
        pytest.param(
            lambda s: setattr(s.resources, "memory_reservation_bytes", -MIB),
            [
                "services.web.resources.reservations.memory: must be greater than 0, got -1MiB; "
                "leave it out to reserve nothing"
            ],
            id="negative-memory-reservation",
        ),
        pytest.param(
            lambda s: s.stop_grace_period.CopyFrom(Duration(seconds=1, nanos=-5)),
            [
                "services.web.stop_grace_period: is not a valid duration (seconds=1, nanos=-5); seconds must be within "
                "+-315576000000 and nanos within +-999999999 with the same sign"
            ],
            id="malformed-duration",
        ),
        pytest.param(
            lambda s: setattr(s.restart.window, "seconds", -60),
            ["services.web.restart.window: must be a duration of 0s or more, got -1m"],
            id="negative-window",
        ),
        pytest.param(
            lambda s: setattr(s, "name", "web.api"),
            [
                'services["web.api"]: service name must be 1 to 63 lowercase letters, digits or "-", starting and '
                'ending with a letter or digit, got "web.api"'
            ],
            id="name-with-dot-is-quoted",
        ),
        pytest.param(
            lambda s: setattr(s, "name", "web\n"),
            [
                'services["web\\n"]: service name must be 1 to 63 lowercase letters, digits or "-", starting and '
                'ending with a letter or digit, got "web\\n"'
            ],
            id="name-trailing-newline",
        ),
        pytest.param(
            lambda s: setattr(s, "name", ""),
            ['services[""]: service name must not be empty'],
            id="empty-name",
        ),
        pytest.param(
            lambda s: s.command.append("a\u2028b\x00"),
            ["services.web.command[0]: must not contain NUL characters"],
            id="command-nul",
        ),
        pytest.param(
            lambda s: setattr(s, "mode", 7),
            ["services.web.mode: must be replicated, global or job, got 7"],
            id="unknown-mode-number",
        ),
        pytest.param(
            lambda s: setattr(s, "mode", pb.SERVICE_MODE_GLOBAL),
            [f"services.web.replicas: {GLOBAL_REPLICAS}"],
            id="global-with-replicas",
        ),
        pytest.param(
            lambda s: (setattr(s, "mode", pb.SERVICE_MODE_GLOBAL), setattr(s, "replicas", 20000)),
            [f"services.web.replicas: {GLOBAL_REPLICAS}"],
            id="global-with-too-many-replicas-is-reported-once",
        ),
        pytest.param(
            lambda s: (setattr(s, "mode", pb.SERVICE_MODE_GLOBAL), setattr(s, "replicas", 0)),
            [],
            id="global-with-zero-replicas",
        ),
        pytest.param(
            lambda s: setattr(s, "mode", pb.SERVICE_MODE_UNSPECIFIED),
            [],
            id="unspecified-mode-is-replicated",
        ),
        pytest.param(
            lambda s: s.placement.constraints.extend(["node.id == a\nnode.id == b", "node.id==c", "node.id == c"]),
            [
                f'services.web.placement.constraints[0]: {FORMS}, got "node.id == a\\nnode.id == b"; '
                "the value cannot contain whitespace",
                "services.web.placement.constraints[2]: is the same as constraints[1]; remove one of them",
            ],
            id="constraints",
        ),
        pytest.param(
            lambda s: setattr(s.placement, "strategy", 9),
            ["services.web.placement.strategy: must be spread or binpack, got 9"],
            id="unknown-strategy-number",
        ),
        pytest.param(
            lambda s: setattr(s.placement, "max_replicas_per_node", 2**32 - 1),
            [
                "services.web.placement.max_replicas_per_node: must be an integer from 0 to 10000 "
                "(0 means no limit), got 4294967295"
            ],
            id="max-replicas-per-node",
        ),
        pytest.param(
            lambda s: s.on_disconnect.stop_after.FromNanoseconds(0),
            [],
            id="zero-stop-after-means-keep",
        ),
        pytest.param(
            lambda s: s.on_disconnect.stop_after.FromNanoseconds(-SECOND),
            ["services.web.on_disconnect.stop_after: must be a duration greater than 0s and at most 24h, got -1s"],
            id="negative-stop-after",
        ),
        pytest.param(
            lambda s: s.on_disconnect.stop_after.CopyFrom(Duration(seconds=-1, nanos=5)),
            [
                "services.web.on_disconnect.stop_after: is not a valid duration (seconds=-1, nanos=5); seconds must "
                "be within +-315576000000 and nanos within +-999999999 with the same sign"
            ],
            id="malformed-stop-after",
        ),
    ],
)
def test_validate_service_on_protos(change: Any, expected: list[str]) -> None:
    spec = valid_proto()
    change(spec)
    assert validate_service(spec) == expected


def test_spec_to_document_omits_defaults() -> None:
    assert spec_to_document(make_spec()) == {"image": "nginx:1.27"}
    assert spec_to_document(pb.ServiceSpec(name="web", image="nginx", replicas=1)) == {"image": "nginx"}


def test_spec_to_document_omits_scheduling_defaults() -> None:
    spec = valid_proto(mode=pb.SERVICE_MODE_REPLICATED)
    spec.placement.strategy = pb.Placement.STRATEGY_SPREAD
    spec.on_disconnect.stop_after.FromNanoseconds(0)
    assert spec_to_document(spec) == {"image": "nginx:1.27"}


def test_spec_to_document_writes_scheduling_fields() -> None:
    spec = make_spec(
        mode=pb.SERVICE_MODE_GLOBAL,
        placement=pb.Placement(
            constraints=["node.labels.zone==a"], max_replicas_per_node=2, strategy=pb.Placement.STRATEGY_BINPACK
        ),
        on_disconnect=pb.OnDisconnect(stop_after=duration(90 * SECOND)),
    )
    document = spec_to_document(spec)
    assert document == {
        "image": "nginx:1.27",
        "mode": "global",
        "placement": {"constraints": ["node.labels.zone==a"], "max_replicas_per_node": 2, "strategy": "binpack"},
        "on_disconnect": {"stop_after": "1m30s"},
    }
    assert load_spec(yaml.safe_dump({"services": {"web": document}})) == [spec]


def test_spec_to_document_writes_what_load_spec_must_reject() -> None:
    spec = valid_proto(mode=pb.SERVICE_MODE_GLOBAL, replicas=1)
    spec.placement.strategy = 5
    document = spec_to_document(spec)
    assert document == {"image": "nginx:1.27", "mode": "global", "replicas": 1, "placement": {"strategy": 5}}
    assert errors_of(yaml.safe_dump({"services": {"web": document}})) == [
        f"services.web.replicas: {GLOBAL_REPLICAS}",
        "services.web.placement.strategy: must be spread or binpack, got 5",
    ]


def test_spec_to_document_writes_the_short_forms() -> None:
    [spec] = load(
        """
        services:
          web:
            image: dockyard-test:latest
            command: httpd -f -p 80
            env: [B=2, A=1]
            ports: ["8080:80/tcp", 80, {published: 53, target: 53, protocol: udp}]
            replicas: 0
            resources: {limits: {cpus: 0.5, memory: 2147483648}, reservations: {memory: 1536MiB}}
            restart: {condition: any, delay: 90, max_attempts: 3, window: 1h0m0.5s}
            stop_grace_period: 0.25
        """
    )
    document = spec_to_document(spec)
    assert document == {
        "image": "dockyard-test:latest",
        "command": ["httpd", "-f", "-p", "80"],
        "env": {"A": "1", "B": "2"},
        "ports": ["8080:80", "80", "53:53/udp"],
        "replicas": 0,
        "resources": {"limits": {"cpus": 0.5, "memory": "2GiB"}, "reservations": {"memory": "1536MiB"}},
        "restart": {"condition": "any", "delay": "1m30s", "max_attempts": 3, "window": "1h0.5s"},
        "stop_grace_period": "250ms",
    }
    assert load_spec(yaml.safe_dump({"services": {"web": document}})) == [spec]


def test_spec_to_document_uses_long_form_for_unknown_protocols() -> None:
    spec = valid_proto()
    spec.ports.add(host_port=1, container_port=2, protocol="sctp")
    assert spec_to_document(spec)["ports"] == [{"published": 1, "target": 2, "protocol": "sctp"}]


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0B"),
        (1000, "1000B"),
        (1024, "1KiB"),
        (512 * MIB, "512MiB"),
        (1536 * MIB, "1536MiB"),
        (2 * GIB, "2GiB"),
        (3 * 1024 * GIB, "3TiB"),
        (-MIB, "-1MiB"),
    ],
)
def test_format_bytes(size: int, text: str) -> None:
    assert format_bytes(size) == text


def test_format_bytes_approximate() -> None:
    assert format_bytes(8160437862, approximate=True) == "7.6GiB"
    assert format_bytes(1536 * MIB, approximate=True) == "1.5GiB"
    assert format_bytes(1023, approximate=True) == "1023B"


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512MiB", 512 * MIB),
        ("512M", 512 * MIB),
        ("512m", 512 * MIB),
        ("1.5GiB", 1536 * MIB),
        ("500MB", 5 * 10**8),
        ("2kB", 2000),
        ("1 GiB", GIB),
        ("100", 100),
        ("7B", 7),
        (".5k", 512),
        ("1.0001KiB", 1024),
    ],
)
def test_parse_bytes(text: str, size: int) -> None:
    assert parse_bytes(text) == size


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.5, "500ms"),
        (10, "10s"),
        (90, "1m30s"),
        (7200, "2h"),
        (1.5, "1.5s"),
        (3661, "1h1m1s"),
        (0.0000015, "1.5us"),
        (1e-9, "1ns"),
        (-90, "-1m30s"),
        (0.1, "100ms"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("10s", 10),
        ("1m30s", 90),
        ("2h", 7200),
        ("1.5h", 5400),
        ("10", 10),
        ("1h1s", 3601),
        (" 250us ", 0.00025),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", 'must be a duration like 10s, 1m30s or 500ms, or a number of seconds, got ""'),
        ("5 minutes", 'must be a duration like 10s, 1m30s or 500ms, or a number of seconds, got "5 minutes"'),
        ("5min", 'unknown unit "min" in "5min"; use h, m, s, ms, us or ns, like 1m30s'),
    ],
)
def test_parse_duration_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"^") as caught:
        parse_duration(text)
    assert str(caught.value) == message

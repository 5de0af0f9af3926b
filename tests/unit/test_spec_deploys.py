"""The spec's deploy fields: healthcheck, restart.max_delay, update and rollback, depends_on, job mode, rebalance.

A file and a gRPC client get the same checks and words; the writer gives back what the loader read; a
Compose healthcheck reads as Compose means it; the docs' and the examples' files load.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration

from dockyard.spec import (
    SpecError,
    load_deployment,
    load_spec,
    load_spec_file,
    schema,
    spec_to_document,
    validate_service,
)
from dockyard.spec.reader import default_spec
from dockyard.spec.validation import depends_on_issues
from dockyard.v1 import types_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
SECOND = 10**9
NAME_RULE = '1 to 63 lowercase letters, digits or "-", starting and ending with a letter or digit'
STACK_RULE = "(a stack's: `<stack>_<service>`)"


def seconds(value: float) -> Duration:
    result = Duration()
    result.FromNanoseconds(int(value * SECOND))
    return result


def load_one(body: str) -> pb.ServiceSpec:
    """Loads one service `web` whose body is dedented YAML."""
    [spec] = load_spec("services:\n  web:\n" + textwrap.indent(textwrap.dedent(body), "    "))
    return spec


def errors(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec(textwrap.dedent(text))
    return caught.value.errors


def service_errors(body: str) -> list[str]:
    return errors("services:\n  web:\n" + textwrap.indent(textwrap.dedent(body), "    "))


def web(**fields: Any) -> pb.ServiceSpec:
    """A spec as load_spec returns it for `image: nginx` plus `fields`."""
    spec = default_spec("web")
    spec.image = "nginx"
    for name, value in fields.items():
        if isinstance(value, int) and not isinstance(value, bool):
            setattr(spec, name, value)
        else:
            getattr(spec, name).CopyFrom(value)
    return spec


# --- Reading valid files ------------------------------------------------------------------------------


def test_a_compose_healthcheck_reads_as_compose_means_it() -> None:
    spec = load_one(
        """
        image: nginx
        healthcheck:
          test: ["CMD", "curl", "-f", "http://localhost"]
          interval: 1m30s
          timeout: 10s
          retries: 3
          start_period: 40s
          start_interval: 5s
        """
    )
    assert spec.healthcheck == pb.HealthCheck(
        test=["CMD", "curl", "-f", "http://localhost"],
        interval=seconds(90),
        timeout=seconds(10),
        retries=3,
        start_period=seconds(40),
        start_interval=seconds(5),
    )


@pytest.mark.parametrize(
    ("body", "check"),
    [
        # A string is a command line for the shell, as in Compose.
        ("test: curl -f localhost || exit 1", pb.HealthCheck(test=["CMD-SHELL", "curl -f localhost || exit 1"])),
        ("test: [CMD-SHELL, pg_isready]", pb.HealthCheck(test=["CMD-SHELL", "pg_isready"])),
        ("test: [NONE]", pb.HealthCheck(test=["NONE"])),
        ("disable: true", pb.HealthCheck(test=["NONE"])),
        ("{disable: false, interval: 5s}", pb.HealthCheck(interval=seconds(5))),
        # Timings alone adjust the image's own check.
        ("{retries: 10}", pb.HealthCheck(retries=10)),
        ("http: {port: 8080}", pb.HealthCheck(http=pb.HttpProbe(port=8080))),
        (
            "http: {port: 8080, path: /up, status: 204}",
            pb.HealthCheck(http=pb.HttpProbe(port=8080, path="/up", status=204)),
        ),
        ("tcp: {port: 5432}", pb.HealthCheck(tcp=pb.TcpProbe(port=5432))),
    ],
)
def test_healthcheck_forms(body: str, check: pb.HealthCheck) -> None:
    spec = load_one(
        f"image: nginx\nhealthcheck:\n  {body}\n" if not body.startswith("{") else f"image: x\nhealthcheck: {body}"
    )
    assert spec.HasField("healthcheck")
    assert spec.healthcheck == check


def test_an_empty_healthcheck_is_kept_and_none_is_unset() -> None:
    assert load_one("image: nginx\nhealthcheck: {}").HasField("healthcheck")
    assert not load_one("image: nginx").HasField("healthcheck")


def test_update_and_rollback_are_stored_with_every_key() -> None:
    spec = load_one(
        """
        image: nginx
        update: {parallelism: 2, order: start-first, max_failure_ratio: 0.25}
        rollback: {parallelism: 0}
        """
    )
    assert spec.update == pb.UpdateConfig(
        parallelism=2,
        delay=seconds(0),
        order=pb.UpdateConfig.ORDER_START_FIRST,
        monitor=seconds(5),
        max_failure_ratio=0.25,
        failure_action=pb.UpdateConfig.FAILURE_ACTION_ROLLBACK,
    )
    assert spec.rollback == pb.UpdateConfig(
        parallelism=0,
        delay=seconds(0),
        order=pb.UpdateConfig.ORDER_STOP_FIRST,
        monitor=seconds(5),
        failure_action=pb.UpdateConfig.FAILURE_ACTION_PAUSE,
    )


def test_an_update_of_defaults_is_none_but_a_rollback_block_is_kept() -> None:
    spec = load_one("image: nginx\nupdate: {parallelism: 1, failure_action: rollback}\nrollback: {}")
    assert not spec.HasField("update")
    assert spec.rollback == schema.config_defaults("rollback")


def test_depends_on_short_and_long_forms() -> None:
    started, healthy = pb.Dependency.CONDITION_SERVICE_STARTED, pb.Dependency.CONDITION_SERVICE_HEALTHY
    short = load_one("image: nginx\ndepends_on: [db, cache]")
    assert dict(short.depends_on) == {"db": pb.Dependency(condition=started), "cache": pb.Dependency(condition=started)}
    long = load_one(
        """
        image: nginx
        depends_on:
          db: {condition: service_healthy, required: true}
          cache: {}
          migrate: {condition: service_completed_successfully}
        """
    )
    assert dict(long.depends_on) == {
        "db": pb.Dependency(condition=healthy),
        "cache": pb.Dependency(condition=started),
        "migrate": pb.Dependency(condition=pb.Dependency.CONDITION_SERVICE_COMPLETED_SUCCESSFULLY),
    }


def test_job_rebalance_and_max_delay() -> None:
    job = load_one("image: nginx\nmode: job\nreplicas: 2\nrestart: {condition: none}")
    assert (job.mode, job.replicas, job.restart.condition) == (
        pb.SERVICE_MODE_JOB,
        2,
        pb.RestartPolicy.CONDITION_NONE,
    )
    spec = load_one("image: nginx\nplacement: {rebalance: true}\nrestart: {delay: 2s, max_delay: 2s}")
    assert spec.placement == pb.Placement(strategy=pb.Placement.STRATEGY_SPREAD, rebalance=True)
    assert spec.restart.max_delay == seconds(2)
    assert not load_one("image: nginx\nrestart: {delay: 2s}").restart.HasField("max_delay")


# --- Errors in files ------------------------------------------------------------------------------------


def case(name: str, body: str, *expected: str) -> Any:
    return pytest.param(body, list(expected), id=name)


SERVICE_ERRORS = [
    case(
        "job-restarts-any",
        "image: x\nmode: job\nrestart: {condition: any}",
        "services.web.restart.condition: a job runs to completion; use on-failure or none",
    ),
    case(
        "rebalance-global",
        "image: x\nmode: global\nplacement: {rebalance: true}",
        "services.web.placement.rebalance: a global service runs one task on every eligible node, so none can move; "
        "remove rebalance",
    ),
    case(
        "rebalance-job",
        "image: x\nmode: job\nplacement: {rebalance: true}",
        "services.web.placement.rebalance: a job's tasks run to completion and are not moved; remove rebalance",
    ),
    case(
        "rebalance-type",
        "image: x\nplacement: {rebalance: yes}",
        'services.web.placement.rebalance: must be true or false, got "yes"',
    ),
    case(
        "max-delay-below-delay",
        "image: x\nrestart: {delay: 10s, max_delay: 5s}",
        "services.web.restart.max_delay: must not be below restart.delay (10s), got 5s; raise it, or set it equal "
        "to delay for a fixed delay",
    ),
    case(
        "max-delay-below-the-default-delay",
        "image: x\nrestart: {max_delay: 1s}",
        "services.web.restart.max_delay: must not be below restart.delay (5s), got 1s; raise it, or set it equal "
        "to delay for a fixed delay",
    ),
    case(
        "max-delay-range",
        "image: x\nrestart: {max_delay: 2h}",
        "services.web.restart.max_delay: must be a duration from 0s to 1h, got 2h",
    ),
    case(
        "healthcheck-type",
        "image: x\nhealthcheck: curl",
        'services.web.healthcheck: must be a mapping like {test: ["CMD", "pg_isready"], interval: 10s}, got "curl"',
    ),
    case(
        "healthcheck-unknown",
        "image: x\nhealthcheck: {intervall: 5s}",
        'services.web.healthcheck.intervall: unknown field; did you mean "interval"?',
    ),
    case(
        "test-cmd-alone",
        "image: x\nhealthcheck: {test: [CMD]}",
        'services.web.healthcheck.test: needs the program to run after "CMD", like ["CMD", "pg_isready"]',
    ),
    case(
        "test-shell-two",
        "image: x\nhealthcheck: {test: [CMD-SHELL, a, b]}",
        'services.web.healthcheck.test: takes exactly one command line after "CMD-SHELL", got 2; write '
        '["CMD-SHELL", "curl -f localhost || exit 1"], or use "CMD" for separate arguments',
    ),
    case(
        "test-none-with-more",
        "image: x\nhealthcheck: {test: [NONE, x]}",
        'services.web.healthcheck.test: ["NONE"] turns the check off and takes nothing after it; remove the rest',
    ),
    case(
        "test-unknown-kind",
        "image: x\nhealthcheck: {test: [curl, -f, localhost]}",
        'services.web.healthcheck.test: must start with "CMD", "CMD-SHELL" or "NONE", got "curl"; or write the '
        "command line as one string to run it with the shell",
    ),
    case(
        "test-empty",
        "image: x\nhealthcheck: {test: []}",
        "services.web.healthcheck.test: must not be empty; leave test out to use the image's own check, or write "
        '["NONE"] to turn it off',
    ),
    case(
        "test-word-type",
        "image: x\nhealthcheck: {test: [CMD, 3]}",
        "services.web.healthcheck.test[1]: must be a string, got 3; put the value in quotes",
    ),
    case(
        "disable-with-test",
        "image: x\nhealthcheck: {test: [CMD, x], disable: true}",
        'services.web.healthcheck.disable: cannot be combined with test; disable: true means test: ["NONE"], so '
        "keep one",
    ),
    case(
        "two-probes",
        "image: x\nhealthcheck: {test: [CMD, x], http: {port: 80}, tcp: {port: 80}}",
        "services.web.healthcheck.http: cannot be combined with test; a health check runs one of test, http and "
        "tcp, so keep one",
        "services.web.healthcheck.tcp: cannot be combined with test; a health check runs one of test, http and "
        "tcp, so keep one",
    ),
    case(
        "http-fields",
        "image: x\nhealthcheck: {http: {path: up, status: 600}}",
        "services.web.healthcheck.http.port: is required; give the port the container listens on",
        'services.web.healthcheck.http.path: must start with "/", like "/healthz", got "up"',
        "services.web.healthcheck.http.status: must be an integer from 0 to 599, got 600",
    ),
    case(
        "tcp-port",
        "image: x\nhealthcheck: {tcp: {port: 70000}}",
        "services.web.healthcheck.tcp.port: must be an integer from 1 to 65535, got 70000",
    ),
    case(
        "timings",
        "image: x\nhealthcheck: {interval: 10ms, retries: 0, timeout: 2h, start_period: -1s}",
        "services.web.healthcheck.interval: must be a duration from 100ms to 24h, got 10ms",
        "services.web.healthcheck.timeout: must be a duration from 100ms to 1h, got 2h",
        "services.web.healthcheck.retries: must be an integer from 1 to 1000, got 0",
        "services.web.healthcheck.start_period: must be a duration from 0s to 24h, got -1s",
    ),
    case(
        "update-fields",
        "image: x\nupdate: {parallelism: -1, delay: x, order: first, monitor: 2h, max_failure_ratio: 1.5, "
        "failure_action: stop}",
        "services.web.update.parallelism: must be an integer from 0 to 10000, got -1",
        'services.web.update.delay: must be a duration like 10s, 1m30s or 500ms, or a number of seconds, got "x"',
        'services.web.update.order: must be stop-first or start-first, got "first"; did you mean "stop-first"?',
        "services.web.update.monitor: must be a duration from 0s to 1h, got 2h",
        "services.web.update.max_failure_ratio: must be a number from 0 to 1 (a share of the tasks), got 1.5",
        'services.web.update.failure_action: must be pause, rollback or continue, got "stop"',
    ),
    case(
        "ratio-type",
        "image: x\nupdate: {max_failure_ratio: '0.5'}",
        'services.web.update.max_failure_ratio: must be a number from 0 to 1 (a share of the tasks), got "0.5"; '
        "write the number without quotes",
    ),
    case(
        "rollback-rolls-back",
        "image: x\nrollback: {failure_action: rollback}",
        "services.web.rollback.failure_action: a rollback cannot itself roll back; use pause or continue",
    ),
    case(
        "compose-update-config",
        "image: x\nupdate_config: {parallelism: 2}",
        'services.web.update_config: unknown field; did you mean "update"?',
    ),
    case(
        "depends-on-type",
        "image: x\ndepends_on: db",
        "services.web.depends_on: must be a list of service names or a mapping like [db] or {db: {condition: "
        'service_healthy}}, got "db"',
    ),
    case(
        "depends-on-list",
        "image: x\ndepends_on: [db, web, db, Db, 3]",
        "services.web.depends_on[1]: a service cannot depend on itself; remove it",
        'services.web.depends_on[2]: "db" is already listed as depends_on[0]; remove one',
        f'services.web.depends_on[3]: must name a service: {NAME_RULE} {STACK_RULE}, got "Db"',
        "services.web.depends_on[4]: must be a service name, got 3; put the value in quotes",
    ),
    case(
        "depends-on-mapping",
        """\
        image: x
        depends_on:
          db: {condition: healthy}
          cache: {restart: true, required: false}
          queue:
          auth: {required: "yes"}
          mail: {conditions: service_started}
        """,
        "services.web.depends_on.db.condition: must be service_started, service_healthy or "
        'service_completed_successfully, got "healthy"; did you mean "service_healthy"?',
        "services.web.depends_on.cache.restart: is not supported: Dockyard does not restart a service when one it "
        "depends on restarts; remove it",
        "services.web.depends_on.cache.required: Dockyard always waits for every dependency, so required: false is "
        "not supported; remove the dependency, or remove required",
        "services.web.depends_on.queue: must be a mapping like {condition: service_healthy}, got null; write {} to "
        "wait for it to start",
        'services.web.depends_on.auth.required: must be true (the default), got "yes"',
        'services.web.depends_on.mail.conditions: unknown field; did you mean "condition"?',
    ),
]


@pytest.mark.parametrize(("body", "expected"), SERVICE_ERRORS)
def test_service_error_message(body: str, expected: list[str]) -> None:
    assert service_errors(body) == expected


def test_a_cycle_in_a_file_is_named_from_its_first_service() -> None:
    text = """
    services:
      db: {image: x}
      web: {image: x, depends_on: [api, db]}
      api: {image: x, depends_on: {cache: {condition: service_healthy}}}
      cache: {image: x, depends_on: [web]}
    """
    assert errors(text) == [
        "services.web.depends_on: cycle web -> api -> cache -> web; a service cannot wait for itself, so remove "
        "one of these dependencies"
    ]


def test_a_dependency_outside_the_file_is_left_to_the_controller() -> None:
    [spec] = load_spec("services: {web: {image: x, depends_on: [db]}}")
    assert list(spec.depends_on) == ["db"]


# --- Protos from gRPC clients -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"mode": pb.SERVICE_MODE_JOB, "restart": pb.RestartPolicy(condition=pb.RestartPolicy.CONDITION_ANY)},
            ["services.web.restart.condition: a job runs to completion; use on-failure or none"],
        ),
        (
            {"mode": pb.SERVICE_MODE_GLOBAL, "replicas": 0, "placement": pb.Placement(rebalance=True)},
            [
                "services.web.placement.rebalance: a global service runs one task on every eligible node, so none "
                "can move; remove rebalance"
            ],
        ),
        (
            {"restart": pb.RestartPolicy(max_delay=seconds(1))},
            [
                "services.web.restart.max_delay: must not be below restart.delay (5s), got 1s; raise it, or set it "
                "equal to delay for a fixed delay"
            ],
        ),
        (
            {
                "healthcheck": pb.HealthCheck(
                    test=["CMD-SHELL"], http=pb.HttpProbe(port=0, path="x"), retries=0, interval=seconds(0)
                )
            },
            [
                'services.web.healthcheck.test: takes exactly one command line after "CMD-SHELL", got 0; write '
                '["CMD-SHELL", "curl -f localhost || exit 1"], or use "CMD" for separate arguments',
                "services.web.healthcheck.http.port: must be an integer from 1 to 65535, got 0",
                'services.web.healthcheck.http.path: must start with "/", like "/healthz", got "x"',
                "services.web.healthcheck.http: cannot be combined with test; a health check runs one of test, http "
                "and tcp, so keep one",
                "services.web.healthcheck.interval: must be a duration from 100ms to 24h, got 0s",
                "services.web.healthcheck.retries: must be an integer from 1 to 1000, got 0",
            ],
        ),
        (
            {"update": pb.UpdateConfig(parallelism=10_001, order=7, max_failure_ratio=float("nan"), failure_action=9)},
            [
                "services.web.update.parallelism: must be an integer from 0 to 10000, got 10001",
                "services.web.update.order: must be stop-first or start-first, got 7",
                "services.web.update.max_failure_ratio: must be a number from 0 to 1 (a share of the tasks), got nan",
                "services.web.update.failure_action: must be pause, rollback or continue, got 9",
            ],
        ),
        (
            {"rollback": pb.UpdateConfig(failure_action=pb.UpdateConfig.FAILURE_ACTION_ROLLBACK)},
            ["services.web.rollback.failure_action: a rollback cannot itself roll back; use pause or continue"],
        ),
        (
            {"depends_on": {"web": pb.Dependency(), "Db": pb.Dependency(), "db": pb.Dependency(condition=8)}},
            [
                f'services.web.depends_on.Db: must name a service: {NAME_RULE} {STACK_RULE}, got "Db"',
                "services.web.depends_on.db.condition: must be service_started, service_healthy or "
                "service_completed_successfully, got 8",
                "services.web.depends_on.web: a service cannot depend on itself; remove it",
            ],
        ),
    ],
)
def test_validate_service_on_protos(change: dict[str, Any], expected: list[str]) -> None:
    spec = pb.ServiceSpec(name="web", image="nginx", replicas=1)
    for name, value in change.items():
        if name == "depends_on":
            for key, dependency in value.items():
                spec.depends_on[key].CopyFrom(dependency)
        elif isinstance(value, int):
            setattr(spec, name, value)
        else:
            getattr(spec, name).CopyFrom(value)
    assert validate_service(spec) == expected


def test_unset_and_unspecified_values_of_a_proto_are_the_defaults() -> None:
    spec = pb.ServiceSpec(
        name="web",
        image="nginx",
        replicas=1,
        healthcheck=pb.HealthCheck(),
        update=pb.UpdateConfig(),
        rollback=pb.UpdateConfig(),
        depends_on={"db": pb.Dependency()},
    )
    assert validate_service(spec) == []


def test_depends_on_across_the_cluster() -> None:
    def service(name: str, *deps: str) -> pb.Service:
        spec = pb.ServiceSpec(name=name, image="x", depends_on={dep: pb.Dependency() for dep in deps})
        return pb.Service(name=name, spec=spec)

    existing = {"db": service("db"), "api": service("api", "web"), "web": service("web")}
    request = [service("web", "api", "db", "cache").spec]
    assert [str(issue) for issue in depends_on_issues(request, existing)] == [
        "services.web.depends_on.cache: names no service of this request or of the cluster; add the service, or "
        "remove the dependency",
        "services.web.depends_on: cycle web -> api -> web; a service cannot wait for itself, so remove one of "
        "these dependencies",
    ]
    # The request's spec replaces the cluster's: api no longer waiting for web ends the cycle.
    request.append(service("api").spec)
    assert [str(issue) for issue in depends_on_issues(request, existing)][1:] == []


# --- Writing back --------------------------------------------------------------------------------------------


def test_spec_to_document_writes_the_deploy_fields() -> None:
    spec = load_one(
        """
        image: nginx
        placement: {rebalance: true}
        restart: {max_delay: 5m}
        healthcheck: {test: "curl -f localhost", interval: 10s, retries: 3}
        update: {parallelism: 0, order: start-first}
        rollback: {}
        depends_on: {db: {condition: service_healthy}, cache: {}}
        """
    )
    assert spec_to_document(spec) == {
        "image": "nginx",
        "placement": {"rebalance": True},
        # Set is written, even the default: unset means "the default cap, raised to delay".
        "restart": {"max_delay": "5m"},
        "healthcheck": {"test": ["CMD-SHELL", "curl -f localhost"], "interval": "10s", "retries": 3},
        "update": {"parallelism": 0, "order": "start-first"},
        "rollback": {},
        "depends_on": {"cache": {"condition": "service_started"}, "db": {"condition": "service_healthy"}},
    }
    assert spec_to_document(load_one("image: nginx\ndepends_on: {db: {}, cache: {}}"))["depends_on"] == ["cache", "db"]
    assert spec_to_document(load_one("image: nginx\nhealthcheck: {}"))["healthcheck"] == {}


# --- The settings in effect ---------------------------------------------------------------------------------


def test_the_settings_in_effect() -> None:
    bare = pb.ServiceSpec(name="web", image="x")
    assert schema.update_config(bare) == schema.config_defaults("update")
    assert schema.update_config(bare).parallelism == schema.UPDATE_PARALLELISM.default == 1
    rollback = schema.rollback_config(bare)
    assert rollback.failure_action == pb.UpdateConfig.FAILURE_ACTION_PAUSE
    # Without a rollback block, a rollback rolls out as update says.
    custom = pb.ServiceSpec(update=pb.UpdateConfig(parallelism=4, order=pb.UpdateConfig.ORDER_START_FIRST))
    assert schema.update_config(custom).monitor == seconds(5)
    assert (schema.rollback_config(custom).parallelism, schema.rollback_config(custom).order) == (
        4,
        pb.UpdateConfig.ORDER_START_FIRST,
    )
    # A set block's numbers stand: parallelism 0 is all at once; its unset choices are its own defaults.
    rolled = schema.rollback_config(pb.ServiceSpec(rollback=pb.UpdateConfig()))
    assert (rolled.parallelism, rolled.failure_action) == (0, pb.UpdateConfig.FAILURE_ACTION_PAUSE)
    assert schema.restart_max_delay_nanos(pb.RestartPolicy()) == schema.RESTART_MAX_DELAY.default
    assert schema.restart_max_delay_nanos(pb.RestartPolicy(delay=seconds(600))) == 600 * SECOND
    assert schema.restart_max_delay_nanos(pb.RestartPolicy(max_delay=seconds(7))) == 7 * SECOND


# --- Files people read ---------------------------------------------------------------------------------------


def test_the_examples_load() -> None:
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        assert load_spec_file(path), path


def test_the_files_in_the_spec_docs_load() -> None:
    text = (ROOT / "docs" / "spec.md").read_text(encoding="utf-8")
    files = [block for block in re.findall(r"```yaml\n(.*?)```", text, re.S) if block.startswith("services:")]
    assert files
    for block in files:
        assert load_spec(block)


def test_the_stack_files_in_the_spec_docs_load(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "spec.md").read_text(encoding="utf-8")
    files = [block for block in re.findall(r"```yaml\n(.*?)```", text, re.S) if block.startswith("stack:")]
    assert files
    # The files their secrets and configs name, beside the spec.
    for name in re.findall(r"file: \./([\w.-]+)", "".join(files)):
        (tmp_path / name).write_text("example")
    for block in files:
        assert load_deployment(block, "spec.md", tmp_path).specs

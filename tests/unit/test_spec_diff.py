"""spec_changes: what changed between two specs, with paths and values as a spec file writes them."""

from __future__ import annotations

from google.protobuf.duration_pb2 import Duration

from agent.policy import CONTAINED_FIELDS
from dockyard.spec import schema
from dockyard.spec.diff import CONTROLLER_ONLY, same_task_spec, spec_changes, spec_fields, task_spec
from dockyard.spec.reader import default_spec
from dockyard.v1 import types_pb2 as pb

SECOND = 10**9


def secs(seconds: int) -> Duration:
    return Duration(seconds=seconds)


def changes(old: pb.ServiceSpec, new: pb.ServiceSpec) -> list[tuple[str, str, str]]:
    return [(change.path, change.old_value, change.new_value) for change in spec_changes(old, new)]


def spec(**fields: object) -> pb.ServiceSpec:
    made = default_spec("web")
    made.image = "nginx:1.27"
    made.MergeFrom(pb.ServiceSpec(**fields))  # type: ignore[arg-type]
    return made


def test_a_spec_against_itself_has_no_changes() -> None:
    assert changes(spec(), spec()) == []


def test_spelled_out_defaults_are_no_change() -> None:
    # As stored before the field existed, and as a file that writes every default would give it.
    bare = pb.ServiceSpec(name="web", image="nginx:1.27", replicas=1)
    full = spec()
    full.restart.max_delay.FromNanoseconds(schema.RESTART_MAX_DELAY.default)
    full.update.CopyFrom(schema.update_config(bare))
    full.placement.strategy = pb.Placement.STRATEGY_SPREAD
    assert changes(bare, full) == []


def test_changes_come_in_the_tables_order_with_file_paths_and_values() -> None:
    old = spec(
        env={"MODE": "a", "GONE": "x"}, ports=[pb.PortMapping(host_port=8080, container_port=80, protocol="tcp")]
    )
    new = spec(
        image="nginx:1.28",
        env={"MODE": "b", "NEW": "y"},
        ports=[pb.PortMapping(host_port=8081, container_port=80, protocol="tcp")],
        mode=pb.SERVICE_MODE_JOB,
        replicas=3,
        resources=pb.Resources(memory_limit_bytes=256 * 1024**2, cpu_limit=0.5),
        labels={"team": "web"},
        restart=pb.RestartPolicy(condition=pb.RestartPolicy.CONDITION_NONE, delay=secs(10), max_delay=secs(60)),
        healthcheck=pb.HealthCheck(http=pb.HttpProbe(port=8080), interval=secs(30), retries=5),
        update=pb.UpdateConfig(parallelism=2, order=pb.UpdateConfig.ORDER_START_FIRST, max_failure_ratio=0.25),
        depends_on={"db": pb.Dependency(condition=pb.Dependency.CONDITION_SERVICE_HEALTHY)},
        stop_grace_period=secs(30),
        on_disconnect=pb.OnDisconnect(stop_after=secs(90)),
    )
    assert changes(old, new) == [
        ("image", "nginx:1.27", "nginx:1.28"),
        ("env.GONE", "x", ""),
        ("env.MODE", "a", "b"),
        ("env.NEW", "", "y"),
        ("ports[0].published", "8080", "8081"),
        ("mode", "replicated", "job"),
        ("replicas", "1", "3"),
        ("resources.limits.cpus", "", "0.5"),
        ("resources.limits.memory", "", "256MiB"),
        ("labels.team", "", "web"),
        ("restart.condition", "on-failure", "none"),
        ("restart.delay", "5s", "10s"),
        ("restart.max_delay", "5m", "1m"),
        ("healthcheck.http.port", "", "8080"),
        ("healthcheck.http.path", "", "/"),
        ("healthcheck.http.status", "", "0"),
        ("healthcheck.interval", "", "30s"),
        ("healthcheck.retries", "", "5"),
        # A set update block takes its numbers as given: delay and monitor unset are the defaults.
        ("update.parallelism", "1", "2"),
        ("update.order", "stop-first", "start-first"),
        ("update.max_failure_ratio", "0.0", "0.25"),
        ("depends_on.db.condition", "", "service_healthy"),
        ("stop_grace_period", "10s", "30s"),
        ("on_disconnect.stop_after", "", "1m30s"),
    ]


def test_lists_of_strings_are_one_value_and_odd_keys_are_quoted() -> None:
    old = spec(command=["sh", "-c", "echo hi"], labels={"com.example.team": "a"})
    new = spec(
        command=["sh", "-c", "echo bye"],
        labels={"com.example.team": "b"},
        healthcheck=pb.HealthCheck(test=["CMD-SHELL", "true"]),
        placement=pb.Placement(constraints=["node.labels.zone == a"], rebalance=True),
    )
    assert changes(old, new) == [
        ("command", '["sh", "-c", "echo hi"]', '["sh", "-c", "echo bye"]'),
        ("placement.constraints", "", '["node.labels.zone == a"]'),
        ("placement.rebalance", "false", "true"),
        ('labels["com.example.team"]', "a", "b"),
        ("healthcheck.test", "", '["CMD-SHELL", "true"]'),
    ]


def test_rollback_shows_its_keys_only_when_it_has_a_block() -> None:
    old = spec(update=pb.UpdateConfig(parallelism=4))
    new = spec(update=pb.UpdateConfig(parallelism=4), rollback=pb.UpdateConfig(parallelism=0))
    assert changes(old, new) == [
        ("rollback.parallelism", "", "0"),
        ("rollback.delay", "", "0s"),
        ("rollback.order", "", "stop-first"),
        ("rollback.monitor", "", "5s"),
        ("rollback.max_failure_ratio", "", "0.0"),
        ("rollback.failure_action", "", "pause"),
    ]


def test_several_ports_change_port_by_port() -> None:
    first = pb.PortMapping(host_port=80, container_port=80, protocol="tcp")
    second = pb.PortMapping(host_port=53, container_port=53, protocol="udp")
    assert changes(spec(ports=[first]), spec(ports=[first, second])) == [
        ("ports[1].published", "", "53"),
        ("ports[1].target", "", "53"),
        ("ports[1].protocol", "", "udp"),
    ]


def test_spec_fields_lists_what_is_in_effect() -> None:
    fields = spec_fields(spec())
    assert list(fields)[:3] == ["image", "mode", "replicas"]
    assert fields["restart.max_delay"] == "5m"
    assert fields["update.failure_action"] == "rollback"
    assert not any(path.startswith(("healthcheck", "rollback", "depends_on")) for path in fields)


def test_controller_only_fields_leave_the_task_spec_alone() -> None:
    base = spec(placement=pb.Placement(constraints=["node.labels.zone==a"]))
    settings = spec(
        replicas=5,
        placement=pb.Placement(constraints=["node.labels.zone==a"], rebalance=True),
        restart=pb.RestartPolicy(condition=pb.RestartPolicy.CONDITION_NONE, max_attempts=3),
        update=pb.UpdateConfig(parallelism=4, max_failure_ratio=0.5),
        rollback=pb.UpdateConfig(parallelism=0),
        depends_on={"db": pb.Dependency(condition=pb.Dependency.CONDITION_SERVICE_HEALTHY)},
    )
    assert same_task_spec(base, settings)
    assert task_spec(settings) == task_spec(base)
    assert settings.update.parallelism == 4, "task_spec copies; the spec given is left as it was"
    # The rebalance flag alone, on a spec without a placement block, is no task change either.
    assert same_task_spec(spec(), spec(placement=pb.Placement(rebalance=True)))


def test_fields_a_task_runs_with_are_task_changes() -> None:
    base = spec()
    changed = [
        spec(image="nginx:1.28"),
        spec(env={"MODE": "prod"}),
        spec(placement=pb.Placement(constraints=["node.labels.zone==a"])),
        spec(resources=pb.Resources(memory_limit_bytes=256 * 1024**2)),
        spec(healthcheck=pb.HealthCheck(tcp=pb.TcpProbe(port=80))),
        spec(stop_grace_period=secs(30)),  # the agent's: how long it waits on a stop
        spec(on_disconnect=pb.OnDisconnect(stop_after=secs(60))),  # the agent's: when it stops a cut-off task
        spec(mode=pb.SERVICE_MODE_JOB),
    ]
    for other in changed:
        assert not same_task_spec(base, other), spec_changes(base, other)


def test_controller_only_fields_are_what_the_agent_policy_calls_the_controllers() -> None:
    # agent/policy.py says for each spec field whether it reaches the host; none of these may.
    for path in CONTROLLER_ONLY:
        assert CONTAINED_FIELDS[path.partition(".")[0]].startswith("is the controller's"), path

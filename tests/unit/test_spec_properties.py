"""Properties of the spec package: round trips through YAML, robustness on any input, lossless units."""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

import yaml
from google.protobuf.duration_pb2 import Duration
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dockyard.constraints import Constraint, ConstraintError, parse_constraint
from dockyard.spec import (
    SpecError,
    format_bytes,
    format_duration,
    load_spec,
    parse_bytes,
    schema,
    spec_to_document,
    stacks,
    validate_service,
)
from dockyard.spec.diff import spec_changes, spec_fields
from dockyard.spec.reader import read_deployment
from dockyard.spec.units import (
    MAX_BYTES,
    MAX_DURATION_SECONDS,
    format_duration_nanos,
    parse_duration_nanos,
    seconds_to_nanos,
)
from dockyard.spec.validation import Constraints
from dockyard.spec.writer import document_name
from dockyard.v1 import types_pb2 as pb

# libyaml's emitter, when present, keeps the many dumps below cheap; the loader under test stays the same.
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
SECOND = 10**9
HOUR = 3600 * SECOND
MIB = 1024**2
MAX_NANOS = MAX_DURATION_SECONDS * SECOND
UINT32 = st.integers(0, 2**32 - 1)
CONDITIONS = [
    pb.RestartPolicy.CONDITION_NONE,
    pb.RestartPolicy.CONDITION_ON_FAILURE,
    pb.RestartPolicy.CONDITION_ANY,
]

# Any text a protobuf string can hold except NUL, which the spec forbids in every string.
free_text = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=12)
# Names and keys are also free of the other control characters.
CONTROLS = "".join(map(chr, range(0x20))) + "\x7f"

ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
names = st.text(ALNUM + "-", min_size=1, max_size=63).filter(lambda name: "-" not in (name[0], name[-1]))
path_components = st.builds(
    lambda words, separator: separator.join(words),
    st.lists(st.text(ALNUM, min_size=1, max_size=6), min_size=1, max_size=3),
    st.sampled_from([".", "_", "__", "-", "---"]),
)
images = st.builds(
    lambda registry, path, tag: registry + "/".join(path) + tag,
    st.sampled_from(["", "localhost:5000/", "registry.example.com/", "ghcr.io/"]),
    st.lists(path_components, min_size=1, max_size=3),
    st.sampled_from(["", ":latest", ":1.27", ":v2.0-rc_1"]),
)
env_names = st.text(st.characters(codec="utf-8", exclude_characters=CONTROLS + "="), min_size=1, max_size=12)
# A label key is one word: no whitespace, control characters or "=", and not in Dockyard's own prefix.
label_keys = st.text(
    st.characters(codec="utf-8", exclude_characters=CONTROLS + "=").filter(lambda c: not c.isspace()),
    min_size=1,
    max_size=12,
).filter(lambda key: not key.startswith("dockyard."))
protocols = st.sampled_from(["tcp", "udp"])
# Constraint keys and values end at whitespace; keys also at the operator's "=" and "!". No control characters.
constraint_values = st.text(
    st.characters(codec="utf-8", exclude_characters=CONTROLS).filter(lambda c: not c.isspace()), min_size=1, max_size=8
)
constraint_keys = st.text(
    st.characters(codec="utf-8", exclude_characters=CONTROLS + "=!").filter(lambda c: not c.isspace()),
    min_size=1,
    max_size=8,
)
constraint_subjects = st.tuples(st.sampled_from(["labels", "engine.labels"]), constraint_keys) | st.tuples(
    st.sampled_from(["hostname", "id"]), st.just("")
)
spacing = st.sampled_from(["", " ", "  "])


# Cluster-wide names of networks, volumes, secrets and configs; "default" is a stack file's default network.
object_names = st.from_regex(r"[a-z0-9][a-z0-9_.-]{1,10}", fullmatch=True).filter(lambda name: name != "default")
container_paths = (
    st.lists(st.text(ALNUM + "_.-", min_size=1, max_size=6), min_size=1, max_size=3)
    .map(lambda parts: "/p/" + "/".join(parts))
    .filter(lambda path: not any(part in (".", "..") for part in path.split("/")))
)
hostnames = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\.[a-z0-9]{1,5}){0,2}", fullmatch=True)


@st.composite
def mount_lists(draw: st.DrawFn, targets: list[str], named_volumes: bool = True) -> list[pb.Mount]:
    """Valid mounts in the form load_spec returns them (the type always explicit), on the given targets.

    Without named_volumes (a global service may mount none), volumes are left out.
    """
    mounts = []
    kinds = [pb.Mount.TYPE_VOLUME] if named_volumes else []
    for target in targets:
        kind = draw(st.sampled_from([*kinds, pb.Mount.TYPE_BIND, pb.Mount.TYPE_TMPFS]))
        mount = pb.Mount(type=kind, target=target, read_only=draw(st.booleans()))
        if kind == pb.Mount.TYPE_VOLUME:
            mount.source = draw(object_names)
            mount.volume_labels.update(draw(st.dictionaries(label_keys, free_text, max_size=2)))
        elif kind == pb.Mount.TYPE_BIND:
            mount.source = draw(container_paths).replace("/p/", "/srv/", 1)
        else:
            mount.tmpfs_size_bytes = draw(st.sampled_from([0, 1, 64 * MIB]) | st.integers(0, MAX_BYTES))
        mounts.append(mount)
    return mounts


@st.composite
def file_ref_lists(draw: st.DrawFn, targets: list[str]) -> list[pb.FileRef]:
    """Valid secrets or configs: on the given targets, or at their default paths under unique names."""
    refs = []
    names = draw(st.lists(object_names, min_size=len(targets), max_size=len(targets), unique=True))
    for name, target in zip(names, targets, strict=True):
        ref = pb.FileRef(name=name, uid=draw(UINT32), gid=draw(UINT32))
        if draw(st.booleans()):
            ref.target = target
        if draw(st.booleans()):
            ref.mode = draw(st.integers(0, 0o777))
        refs.append(ref)
    return refs


@st.composite
def port_lists(draw: st.DrawFn) -> list[pb.PortMapping]:
    """Ports where no host port is published twice for the same protocol."""
    ports = draw(st.lists(st.tuples(st.integers(0, 65535), st.integers(1, 65535), protocols), max_size=4))
    seen: set[tuple[int, str]] = set()
    result = []
    for host, container, protocol in ports:
        if host and (host, protocol) in seen:
            continue
        seen.add((host, protocol))
        result.append(pb.PortMapping(host_port=host, container_port=container, protocol=protocol))
    return result


@st.composite
def resources(draw: st.DrawFn) -> pb.Resources:
    """Limits and reservations, each possibly unset, with reservations within limits."""
    cpus = st.floats(min_value=0, max_value=1024, exclude_min=True)
    cpu_limit = draw(st.just(0.0) | cpus)
    within_limit = st.floats(min_value=0, max_value=cpu_limit, exclude_min=True) if cpu_limit else cpus
    cpu_reservation = draw(st.just(0.0) | within_limit)
    memory_limit = draw(st.just(0) | st.integers(6 * MIB, MAX_BYTES))
    memory_reservation = draw(st.just(0) | st.integers(1, memory_limit or MAX_BYTES))
    return pb.Resources(
        cpu_limit=cpu_limit,
        cpu_reservation=cpu_reservation,
        memory_limit_bytes=memory_limit,
        memory_reservation_bytes=memory_reservation,
    )


@st.composite
def constraint_lists(draw: st.DrawFn) -> list[str]:
    """Constraints as users write them, spacing included; one per subject, so none repeat or contradict."""
    subjects = draw(st.lists(constraint_subjects, max_size=4, unique=True))
    constraints = []
    for field, key in subjects:
        subject = f"{'engine' if field == 'engine.labels' else 'node'}.labels.{key}" if key else f"node.{field}"
        operator = draw(st.sampled_from(["==", "!="]))
        before, after, outside = draw(spacing), draw(spacing), draw(st.sampled_from(["", " "]))
        constraints.append(f"{outside}{subject}{before}{operator}{after}{draw(constraint_values)}{outside}")
    return constraints


@st.composite
def placements(draw: st.DrawFn, mode: int = pb.SERVICE_MODE_REPLICATED) -> pb.Placement | None:
    """Valid placements as load_spec returns them: unset when all default, else with an explicit strategy."""
    placement = pb.Placement(
        constraints=draw(constraint_lists()),
        max_replicas_per_node=draw(st.integers(0, 10000)),
        strategy=draw(st.sampled_from([pb.Placement.STRATEGY_SPREAD, pb.Placement.STRATEGY_BINPACK])),
        # Only a replicated service's tasks can move.
        rebalance=mode == pb.SERVICE_MODE_REPLICATED and draw(st.booleans()),
    )
    return None if placement == pb.Placement(strategy=pb.Placement.STRATEGY_SPREAD) else placement


health_texts = st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=1, max_size=12)
health_tests = st.one_of(
    st.just(["NONE"]),
    st.builds(lambda args: ["CMD", *args], st.lists(free_text, min_size=1, max_size=3)),
    st.builds(lambda line: ["CMD-SHELL", line], free_text),
)
http_paths = st.text(st.characters(codec="utf-8", exclude_characters=CONTROLS).filter(lambda c: not c.isspace()))


@st.composite
def healthchecks(draw: st.DrawFn) -> pb.HealthCheck | None:
    """Valid health checks as load_spec returns them: what is given is set, nothing more."""
    if draw(st.booleans()):
        return None
    check = pb.HealthCheck()
    check.SetInParent()
    probe = draw(st.sampled_from(["none", "test", "http", "tcp"]))
    if probe == "test":
        check.test.extend(draw(health_tests))
    elif probe == "http":
        check.http.port = draw(st.integers(1, 65535))
        check.http.path = draw(st.just("") | st.builds(lambda rest: "/" + rest, http_paths))
        check.http.status = draw(st.integers(0, 599))
    elif probe == "tcp":
        check.tcp.port = draw(st.integers(1, 65535))
    timings = {"interval": 24 * HOUR, "timeout": HOUR, "start_interval": 24 * HOUR}
    for name, most in timings.items():
        if draw(st.booleans()):
            getattr(check, name).CopyFrom(duration(draw(st.integers(SECOND // 10, most))))
    if draw(st.booleans()):
        check.start_period.CopyFrom(duration(draw(st.integers(0, 24 * HOUR))))
    if draw(st.booleans()):
        check.retries = draw(st.integers(1, 1000))
    return check


@st.composite
def update_configs(draw: st.DrawFn, block: str) -> pb.UpdateConfig | None:
    """Valid update or rollback blocks as load_spec returns them: every key explicit, or unset."""
    if draw(st.booleans()):
        return None
    actions = [pb.UpdateConfig.FAILURE_ACTION_PAUSE, pb.UpdateConfig.FAILURE_ACTION_CONTINUE]
    if block == "update":
        actions.append(pb.UpdateConfig.FAILURE_ACTION_ROLLBACK)
    config = pb.UpdateConfig(
        parallelism=draw(st.integers(0, 10000)),
        delay=duration(draw(st.integers(0, HOUR))),
        order=draw(st.sampled_from([pb.UpdateConfig.ORDER_STOP_FIRST, pb.UpdateConfig.ORDER_START_FIRST])),
        monitor=duration(draw(st.integers(0, HOUR))),
        max_failure_ratio=draw(st.floats(0, 1)),
        failure_action=draw(st.sampled_from(actions)),
    )
    # An update of defaults only is stored as none; a rollback block is kept, since it says something.
    return None if block == "update" and config == schema.config_defaults("update") else config


DEPENDENCY_CONDITIONS = [
    pb.Dependency.CONDITION_SERVICE_STARTED,
    pb.Dependency.CONDITION_SERVICE_HEALTHY,
    pb.Dependency.CONDITION_SERVICE_COMPLETED_SUCCESSFULLY,
]


def duration(nanos: int) -> Duration:
    """Returns a Duration of `nanos`."""
    result = Duration()
    result.FromNanoseconds(nanos)
    return result


@st.composite
def valid_specs(draw: st.DrawFn) -> pb.ServiceSpec:
    """Valid specs in the form load_spec returns them, with every default set explicitly."""
    mode = draw(st.sampled_from([pb.SERVICE_MODE_REPLICATED, pb.SERVICE_MODE_GLOBAL, pb.SERVICE_MODE_JOB]))
    stop_after = draw(st.just(None) | st.integers(1, 24 * HOUR))
    # A job's completed tasks are not restarted, so "any" is refused for it.
    conditions = CONDITIONS[:2] if mode == pb.SERVICE_MODE_JOB else CONDITIONS
    delay = draw(st.integers(0, HOUR))
    max_delay = draw(st.none() | st.integers(delay, HOUR))
    name = draw(names)
    stack = draw(st.sampled_from(["", "shop", "my_stack-2"]))
    depends_on = draw(
        st.dictionaries(names.filter(lambda other: other != name), st.sampled_from(DEPENDENCY_CONDITIONS))
    )
    targets = draw(st.lists(container_paths, max_size=6, unique=True))
    split = sorted(draw(st.lists(st.integers(0, len(targets)), min_size=2, max_size=2)))
    spec = pb.ServiceSpec(
        name=stacks.scoped(stack, name),
        stack=stack,
        image=draw(images),
        entrypoint=draw(st.lists(free_text, max_size=2)),
        command=draw(st.lists(free_text, max_size=4)),
        hostname=draw(st.just("") | hostnames),
        mounts=draw(mount_lists(targets[: split[0]], named_volumes=mode != pb.SERVICE_MODE_GLOBAL)),
        networks=draw(st.lists(object_names, max_size=3, unique=True)),
        secrets=draw(file_ref_lists(targets[split[0] : split[1]])),
        configs=draw(file_ref_lists(targets[split[1] :])),
        env=draw(st.dictionaries(env_names, free_text, max_size=4)),
        ports=draw(port_lists()),
        mode=mode,
        # A global service's task count follows the nodes; load_spec stores 0 for it.
        replicas=0 if mode == pb.SERVICE_MODE_GLOBAL else draw(st.integers(0, 10000)),
        placement=draw(placements(mode)),
        resources=draw(resources()),
        labels=draw(st.dictionaries(label_keys, free_text, max_size=4)),
        restart=pb.RestartPolicy(
            condition=draw(st.sampled_from(conditions)),
            delay=duration(delay),
            max_attempts=draw(UINT32),
            window=duration(draw(st.integers(0, MAX_NANOS))),
            max_delay=None if max_delay is None else duration(max_delay),
        ),
        healthcheck=draw(healthchecks()),
        update=draw(update_configs("update")),
        rollback=draw(update_configs("rollback")),
        depends_on={
            stacks.scoped(stack, other): pb.Dependency(condition=condition) for other, condition in depends_on.items()
        },
        stop_grace_period=duration(draw(st.integers(0, HOUR))),
        on_disconnect=None if stop_after is None else pb.OnDisconnect(stop_after=duration(stop_after)),
    )
    return spec


def dump(specs: list[pb.ServiceSpec]) -> str:
    """Writes specs as a YAML file, the way a user would keep them."""
    document = {"services": {document_name(spec): spec_to_document(spec) for spec in specs}}
    return yaml.dump(document, Dumper=DUMPER, sort_keys=False)


@settings(max_examples=40, deadline=None)
@given(st.lists(valid_specs(), min_size=1, max_size=2, unique_by=lambda spec: spec.name))
def test_valid_specs_round_trip_through_yaml(specs: list[pb.ServiceSpec]) -> None:
    # The services of one file belong to one stack.
    for spec in specs[1:]:
        old, spec.stack = spec.stack, specs[0].stack
        spec.name = stacks.scoped(spec.stack, stacks.short(old, spec.name))
        conditions = {stacks.short(old, other): dependency.condition for other, dependency in spec.depends_on.items()}
        spec.ClearField("depends_on")
        for other, condition in conditions.items():
            spec.depends_on[stacks.scoped(spec.stack, other)].condition = condition
    assume(len({spec.name for spec in specs}) == len(specs))
    # Two services of one file that wait for each other would be a cycle, which a file refuses.
    if len(specs) == 2 and specs[0].name in specs[1].depends_on:
        specs[0].depends_on.pop(specs[1].name, None)
    for spec in specs:
        assert validate_service(spec) == []
    assert load_spec(dump(specs)) == specs


@st.composite
def sparse_specs(draw: st.DrawFn) -> pb.ServiceSpec:
    """Valid specs as a gRPC client may send them: defaults partly left unset."""
    spec = draw(valid_specs())
    if draw(st.booleans()):
        spec.ClearField("resources")
    if draw(st.booleans()):
        spec.ClearField("stop_grace_period")
    if draw(st.booleans()):
        spec.restart.ClearField("delay")
        # The default delay then applies, and a cap below it would be refused.
        if spec.restart.max_delay.ToNanoseconds() < schema.RESTART_DELAY.default:
            spec.restart.ClearField("max_delay")
    if draw(st.booleans()):
        spec.restart.ClearField("window")
    if draw(st.booleans()):
        spec.ClearField("restart")
    if draw(st.booleans()):
        spec.restart.condition = pb.RestartPolicy.CONDITION_UNSPECIFIED
    if spec.mode == pb.SERVICE_MODE_REPLICATED and draw(st.booleans()):
        spec.mode = pb.SERVICE_MODE_UNSPECIFIED
    if draw(st.booleans()):
        spec.placement.strategy = pb.Placement.STRATEGY_UNSPECIFIED
    if draw(st.booleans()):
        spec.ClearField("placement")
    if draw(st.booleans()):
        # Zero is the proto's other way to say "keep".
        spec.on_disconnect.stop_after.FromNanoseconds(0)
    if draw(st.booleans()):
        spec.ClearField("on_disconnect")
    return spec


@settings(max_examples=25, deadline=None)
@given(sparse_specs())
def test_unset_fields_are_written_as_defaults(spec: pb.ServiceSpec) -> None:
    assert validate_service(spec) == []
    [loaded] = load_spec(dump([spec]))
    assert validate_service(loaded) == []
    assert spec_to_document(loaded) == spec_to_document(spec)


@settings(max_examples=40, deadline=None)
@given(sparse_specs(), valid_specs())
def test_what_changed_agrees_with_the_writer(spec: pb.ServiceSpec, other: pb.ServiceSpec) -> None:
    # What a spec leaves unset and what its file spells out are the same settings, so no change.
    [loaded] = load_spec(dump([spec]))
    assert spec_changes(spec, loaded) == []
    # Every change is on a path of the table, with a list index or a map key where the table has one.
    rows = {row.path for row in schema.FIELDS}
    other.name = spec.name
    changes = spec_changes(spec, other)
    for change in changes:
        assert change.old_value != change.new_value
        generic = re.sub(r"\[\d+\]", "[]", change.path)
        generic = re.sub(r"^(env|labels)(\.[^.]+|\[.*\])$", r"\1", generic)
        generic = re.sub(r"^depends_on(\.[^.]+|\[.*\])\.condition$", "depends_on.*.condition", generic)
        generic = re.sub(r"^mounts\[\]\.labels(\.[^.]+|\[.*\])$", "mounts[].labels", generic)
        assert generic in rows, change.path
    assert (changes == []) == (spec_fields(spec) == spec_fields(other))


any_text = st.text(max_size=12)
some_paths = st.sampled_from(["/data", "/data/", "data", "/", "/a/../b", "", "/run/secrets/pw", "/x:y"]) | any_text
writable_mounts = st.builds(
    pb.Mount,
    type=st.sampled_from([0, 1, 2, 3, 7]),
    source=st.sampled_from(["db-data", "/srv", "./rel", "a", ""]) | any_text,
    target=some_paths,
    read_only=st.booleans(),
    tmpfs_size_bytes=st.integers(0, MAX_BYTES),
    volume_labels=st.dictionaries(any_text, any_text, max_size=2),
)
writable_file_refs = st.builds(
    pb.FileRef,
    name=st.sampled_from(["pw", "p", ""]) | any_text,
    target=st.sampled_from(["", "pw", "../pw", "/etc/pw", "/data"]) | any_text,
    uid=UINT32,
    gid=UINT32,
    mode=st.none() | st.integers(0, 0o7777),
)
int64 = st.integers(-(2**63), 2**63 - 1)
int32 = st.integers(-(2**31), 2**31 - 1)
any_durations = st.none() | st.builds(Duration, seconds=int64, nanos=int32)
# Near-identical constraints make repeats and contradictions likely, besides text that does not parse.
any_constraints = st.sampled_from(["node.id == a", "node.id==b", "node.id != a", "node.labels.k == v"]) | any_text
any_update_configs = st.builds(
    pb.UpdateConfig,
    parallelism=UINT32,
    delay=any_durations,
    order=int32,
    monitor=any_durations,
    max_failure_ratio=st.floats(width=64),
    failure_action=int32,
)
any_specs = st.builds(
    pb.ServiceSpec,
    name=any_text,
    image=any_text,
    entrypoint=st.lists(any_text, max_size=2),
    command=st.lists(any_text, max_size=3),
    env=st.dictionaries(any_text, any_text, max_size=3),
    hostname=st.sampled_from(["", "db-1", "Db.x", "-x", "a..b"]) | any_text,
    ports=st.lists(st.builds(pb.PortMapping, host_port=UINT32, container_port=UINT32, protocol=any_text), max_size=4),
    mode=int32,
    replicas=UINT32,
    placement=st.none()
    | st.builds(
        pb.Placement,
        constraints=st.lists(any_constraints, max_size=4),
        max_replicas_per_node=UINT32,
        strategy=int32,
    ),
    resources=st.none()
    | st.builds(
        pb.Resources,
        cpu_limit=st.floats(width=64),
        memory_limit_bytes=int64,
        cpu_reservation=st.floats(width=64),
        memory_reservation_bytes=int64,
    ),
    labels=st.dictionaries(any_text, any_text, max_size=3),
    mounts=st.lists(writable_mounts, max_size=3),
    networks=st.lists(st.sampled_from(["front", "a", "_x", "front"]) | any_text, max_size=3),
    secrets=st.lists(writable_file_refs, max_size=2),
    configs=st.lists(writable_file_refs, max_size=2),
    restart=st.none()
    | st.builds(
        pb.RestartPolicy,
        condition=int32,
        delay=any_durations,
        max_attempts=UINT32,
        window=any_durations,
    ),
    healthcheck=st.none()
    | st.builds(
        pb.HealthCheck,
        test=st.lists(st.sampled_from(["CMD", "CMD-SHELL", "NONE"]) | any_text, max_size=3),
        http=st.none() | st.builds(pb.HttpProbe, port=UINT32, path=any_text, status=UINT32),
        tcp=st.none() | st.builds(pb.TcpProbe, port=UINT32),
        interval=any_durations,
        timeout=any_durations,
        retries=st.none() | UINT32,
        start_period=any_durations,
        start_interval=any_durations,
    ),
    update=st.none() | any_update_configs,
    rollback=st.none() | any_update_configs,
    depends_on=st.dictionaries(any_text, st.builds(pb.Dependency, condition=int32), max_size=3),
    stop_grace_period=any_durations,
    on_disconnect=st.none() | st.builds(pb.OnDisconnect, stop_after=any_durations),
)


@settings(max_examples=100, deadline=None)
@given(any_specs)
def test_validate_service_never_raises_and_reports_one_line_per_problem(spec: pb.ServiceSpec) -> None:
    errors = validate_service(spec)
    for line in errors:
        assert line.startswith("services")
        assert len(line.splitlines()) == 1
    yaml.dump(spec_to_document(spec), Dumper=DUMPER)


yaml_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
yaml_values = st.recursive(
    yaml_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
service_keys = st.sampled_from(
    [
        "image",
        "command",
        "env",
        "ports",
        "mode",
        "replicas",
        "placement",
        "resources",
        "labels",
        "restart",
        "healthcheck",
        "update",
        "rollback",
        "depends_on",
        "stop_grace_period",
        "on_disconnect",
    ]
)


def load_errors(text: str) -> list[str]:
    """Returns the error lines of loading `text`, or [] when it loads."""
    try:
        load_spec(text)
    except SpecError as error:
        return error.errors
    return []


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.sampled_from(["web", "api", "Bad_Name"]), st.dictionaries(service_keys, yaml_values)))
def test_loader_reports_any_document_as_spec_errors(services: dict[str, Any]) -> None:
    for line in load_errors(yaml.dump({"services": services}, Dumper=DUMPER)):
        assert len(line.splitlines()) == 1
        assert ": " in line


scheduling_fields = st.fixed_dictionaries(
    {},
    optional={
        "mode": st.sampled_from(["replicated", "global"]) | yaml_values,
        "replicas": st.integers(-1, 3),
        "placement": st.dictionaries(
            st.sampled_from(["constraints", "max_replicas_per_node", "strategy", "preferences"]),
            st.lists(any_constraints | yaml_scalars, max_size=4) | yaml_values,
        )
        | yaml_values,
        "on_disconnect": st.just("keep")
        | st.dictionaries(
            st.sampled_from(["stop_after", "stop_afer"]), st.sampled_from(["30s", "0s", "25h"]) | yaml_values
        )
        | yaml_values,
    },
)


@settings(max_examples=60, deadline=None)
@given(scheduling_fields)
def test_loader_reports_any_scheduling_fields_as_spec_errors(fields: dict[str, Any]) -> None:
    text = yaml.dump({"services": {"web": {"image": "nginx", **fields}}}, Dumper=DUMPER)
    errors = load_errors(text)
    for line in errors:
        assert len(line.splitlines()) == 1
        assert line.startswith("services.web.")
    if not errors:
        [spec] = load_spec(text)
        assert validate_service(spec) == []
        assert load_spec(dump([spec])) == [spec]


durations_or_any = st.sampled_from(["10s", "0s", "50ms", "25h", 3]) | yaml_scalars
deploy_fields = st.fixed_dictionaries(
    {},
    optional={
        "mode": st.sampled_from(["replicated", "global", "job"]),
        "placement": st.fixed_dictionaries({}, optional={"rebalance": st.booleans() | yaml_scalars}),
        "restart": st.fixed_dictionaries(
            {},
            optional={
                "condition": st.sampled_from(["none", "on-failure", "any"]),
                "delay": durations_or_any,
                "max_delay": durations_or_any,
            },
        ),
        "healthcheck": st.fixed_dictionaries(
            {},
            optional={
                "test": st.sampled_from([["CMD", "true"], ["CMD-SHELL", "x"], ["NONE"], "true", [], ["CMD"], ["x"]])
                | yaml_values,
                "disable": st.booleans() | yaml_scalars,
                "http": st.fixed_dictionaries(
                    {}, optional={"port": st.integers(-1, 70000), "path": st.sampled_from(["/", "/up", "up"])}
                )
                | yaml_values,
                "tcp": st.fixed_dictionaries({}, optional={"port": st.integers(0, 3) | yaml_scalars}),
                "interval": durations_or_any,
                "retries": st.integers(-1, 1001) | yaml_scalars,
                "start_period": durations_or_any,
                "healthy": yaml_scalars,
            },
        )
        | yaml_values,
        "update": st.dictionaries(
            st.sampled_from(["parallelism", "delay", "order", "monitor", "max_failure_ratio", "failure_action"]),
            st.sampled_from([0, 1, 0.5, 2, "start-first", "pause", "rollback", "5s"]) | yaml_scalars,
        )
        | yaml_values,
        "rollback": st.dictionaries(
            st.sampled_from(["parallelism", "failure_action", "order"]),
            st.sampled_from([0, 3, "rollback", "continue", "start-first"]) | yaml_scalars,
        ),
        "depends_on": st.lists(st.sampled_from(["web", "db", "Db", "api"]) | yaml_scalars, max_size=3)
        | st.dictionaries(
            st.sampled_from(["web", "db", "api", "x_y"]),
            st.fixed_dictionaries(
                {},
                optional={
                    "condition": st.sampled_from(["service_started", "service_healthy", "healthy"]),
                    "required": st.booleans() | yaml_scalars,
                    "restart": st.booleans(),
                },
            )
            | yaml_scalars,
        )
        | yaml_values,
    },
)


@settings(max_examples=80, deadline=None)
@given(deploy_fields)
def test_loader_reports_any_deploy_fields_as_spec_errors(fields: dict[str, Any]) -> None:
    text = yaml.dump({"services": {"web": {"image": "nginx", **fields}}}, Dumper=DUMPER)
    errors = load_errors(text)
    for line in errors:
        assert len(line.splitlines()) == 1
        assert line.startswith("services.web")
    if not errors:
        [spec] = load_spec(text)
        assert validate_service(spec) == []
        assert load_spec(dump([spec])) == [spec]


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60))
def test_loader_reports_any_text_as_spec_errors(text: str) -> None:
    for line in load_errors(text):
        assert len(line.splitlines()) == 1


@given(st.integers(0, MAX_BYTES))
def test_bytes_format_and_parse_round_trip(size: int) -> None:
    assert parse_bytes(format_bytes(size)) == size


@given(
    st.integers(0, 10**6),
    st.sampled_from([("", 1), ("B", 1), ("K", 1024), ("KiB", 1024), ("m", MIB), ("GiB", 1024**3), ("MB", 10**6)]),
)
def test_bytes_parse_multiplies_by_the_unit(number: int, unit: tuple[str, int]) -> None:
    assert parse_bytes(f"{number}{unit[0]}") == number * unit[1]


@given(st.integers(1024, MAX_BYTES))
def test_approximate_bytes_stay_within_rounding(size: int) -> None:
    match = re.fullmatch(r"(\d+(?:\.\d\d?)?)([KMGT]iB)", format_bytes(size, approximate=True))
    assert match is not None
    unit = {"KiB": 1024, "MiB": MIB, "GiB": 1024**3, "TiB": 1024**4}[match[2]]
    assert abs(Fraction(match[1]) * unit - size) <= Fraction(unit, 200)


@given(st.integers(-MAX_NANOS, MAX_NANOS))
def test_duration_format_and_parse_round_trip(nanos: int) -> None:
    assert parse_duration_nanos(format_duration_nanos(nanos)) == nanos


@given(st.floats(min_value=-MAX_DURATION_SECONDS, max_value=MAX_DURATION_SECONDS))
def test_duration_of_float_seconds_round_trips_to_the_nanosecond(seconds: float) -> None:
    assert parse_duration_nanos(format_duration(seconds)) == seconds_to_nanos(seconds)


@given(st.lists(st.tuples(st.integers(0, 1000), st.sampled_from(["h", "m", "s", "ms", "us", "ns"])), min_size=1))
def test_duration_components_add_up(components: list[tuple[int, str]]) -> None:
    factor = {"h": HOUR, "m": 60 * SECOND, "s": SECOND, "ms": 10**6, "us": 10**3, "ns": 1}
    text = "".join(f"{number}{unit}" for number, unit in components)
    assert parse_duration_nanos(text) == sum(number * factor[unit] for number, unit in components)


# Protos whose every value the writer can put in a file: durations well-formed, memory not negative.
valid_durations = st.none() | st.builds(duration, st.integers(-MAX_NANOS, MAX_NANOS))
writable_update_configs = st.builds(
    pb.UpdateConfig,
    parallelism=UINT32,
    delay=valid_durations,
    order=int32,
    monitor=valid_durations,
    max_failure_ratio=st.floats(width=64),
    failure_action=int32,
)
writable_specs = st.builds(
    pb.ServiceSpec,
    name=any_text,
    image=any_text,
    entrypoint=st.lists(any_text, max_size=2),
    command=st.lists(any_text, max_size=3),
    env=st.dictionaries(any_text, any_text, max_size=3),
    hostname=st.sampled_from(["", "db-1", "Db.x", "-x", "a..b"]) | any_text,
    ports=st.lists(st.builds(pb.PortMapping, host_port=UINT32, container_port=UINT32, protocol=any_text), max_size=4),
    mode=int32,
    replicas=UINT32,
    placement=st.none()
    | st.builds(
        pb.Placement,
        constraints=st.lists(any_constraints, max_size=4),
        max_replicas_per_node=UINT32,
        strategy=int32,
    ),
    resources=st.none()
    | st.builds(
        pb.Resources,
        cpu_limit=st.floats(width=64),
        memory_limit_bytes=st.integers(0, MAX_BYTES),
        cpu_reservation=st.floats(width=64),
        memory_reservation_bytes=st.integers(0, MAX_BYTES),
    ),
    labels=st.dictionaries(any_text, any_text, max_size=3),
    mounts=st.lists(writable_mounts, max_size=3),
    networks=st.lists(st.sampled_from(["front", "a", "_x", "front"]) | any_text, max_size=3),
    secrets=st.lists(writable_file_refs, max_size=2),
    configs=st.lists(writable_file_refs, max_size=2),
    restart=st.none()
    | st.builds(
        pb.RestartPolicy,
        condition=int32,
        delay=valid_durations,
        max_attempts=UINT32,
        window=valid_durations,
        max_delay=valid_durations,
    ),
    healthcheck=st.none()
    | st.builds(
        pb.HealthCheck,
        test=st.lists(st.sampled_from(["CMD", "CMD-SHELL", "NONE"]) | any_text, max_size=3),
        http=st.none()
        | st.builds(pb.HttpProbe, port=UINT32, path=st.sampled_from(["", "/", "/up"]) | any_text, status=UINT32),
        tcp=st.none() | st.builds(pb.TcpProbe, port=UINT32),
        interval=valid_durations,
        timeout=valid_durations,
        retries=st.none() | UINT32,
        start_period=valid_durations,
        start_interval=valid_durations,
    ),
    update=st.none() | writable_update_configs,
    rollback=st.none() | writable_update_configs,
    depends_on=st.dictionaries(
        st.sampled_from(["db", "api", "Db"]) | any_text, st.builds(pb.Dependency, condition=int32), max_size=3
    ),
    stop_grace_period=valid_durations,
    on_disconnect=st.none() | st.builds(pb.OnDisconnect, stop_after=valid_durations),
)


@settings(max_examples=150, deadline=None)
@given(writable_specs)
def test_a_file_and_a_proto_get_the_same_problems_in_the_same_order(spec: pb.ServiceSpec) -> None:
    # One pass in each: the reader runs validation's checks as it reads, in the table's order.
    assert load_errors(dump([spec])) == validate_service(spec)


def reference_conflicts(texts: list[str]) -> list[str]:
    """The obvious quadratic check of a constraint list, which Constraints must agree with."""
    problems = []
    accepted: list[tuple[int, Constraint]] = []
    for i, text in enumerate(texts):
        try:
            constraint = parse_constraint(text)
        except ConstraintError:
            problems.append(f"{i}: does not parse")
            continue
        clash = next((j for j, other in accepted if other == constraint), None)
        if clash is not None:
            problems.append(f"{i}: same as {clash}")
            continue
        clash = next(
            (
                j
                for j, other in accepted
                if (other.field, other.key) == (constraint.field, constraint.key)
                and ((other.equal and constraint.equal) or other.value == constraint.value)
            ),
            None,
        )
        if clash is None:
            accepted.append((i, constraint))
        else:
            problems.append(f"{i}: contradicts {clash}")
    return problems


constraint_atoms = st.builds(
    lambda subject, operator, value: f"{subject} {operator} {value}",
    st.sampled_from(["node.id", "node.hostname", "node.labels.a", "node.labels.b", "engine.labels.a"]),
    st.sampled_from(["==", "!="]),
    st.sampled_from(["x", "y", "z"]),
) | st.just("nonsense")


@given(st.lists(constraint_atoms, max_size=12))
def test_constraint_checks_agree_with_the_quadratic_reference(texts: list[str]) -> None:
    checks = Constraints()
    found = []
    for i, text in enumerate(texts):
        for issue in checks.check(text, i, f"c[{i}]"):
            if issue.message.startswith("is the same as constraints["):
                found.append(f"{i}: same as {issue.message.split('[')[1].split(']')[0]}")
            elif issue.message.startswith("contradicts constraints["):
                found.append(f"{i}: contradicts {issue.message.split('[')[1].split(']')[0]}")
            else:
                found.append(f"{i}: does not parse")
    assert found == reference_conflicts(texts)


mount_items = (
    st.sampled_from(["data:/x", "/srv:/y:ro", "./rel:/z", "/anon", "a:b:c:d", "db-data:/x:z", "dat:/x"])
    | st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["volume", "bind", "tmpfs", "npipe"]) | yaml_scalars,
            "source": st.sampled_from(["data", "/srv", ""]) | yaml_scalars,
            "target": st.sampled_from(["/x", "x", "/", "/a/../b"]) | yaml_scalars,
            "read_only": st.booleans() | yaml_scalars,
            "labels": yaml_values,
            "tmpfs": st.fixed_dictionaries({}, optional={"size": st.sampled_from(["64m", "lots", -1, 0])})
            | yaml_values,
        },
    )
    | yaml_values
)
file_items = (
    st.sampled_from(["pw", "pwd", "cfg", ""])
    | st.fixed_dictionaries(
        {},
        optional={
            "source": st.sampled_from(["pw", "cfg"]) | yaml_scalars,
            "target": st.sampled_from(["pw", "/etc/pw", "../x", "/x"]) | yaml_scalars,
            "uid": st.sampled_from(["999", "x", -1, 0]) | yaml_scalars,
            "mode": st.sampled_from([0o400, 0o1000, "0440", "0x"]) | yaml_scalars,
        },
    )
    | yaml_values
)
app_fields = st.fixed_dictionaries(
    {"image": st.just("x")},
    optional={
        "entrypoint": st.lists(yaml_scalars, max_size=3) | yaml_values,
        "hostname": st.sampled_from(["db-1", "-x", "a..b"]) | yaml_values,
        "mounts": st.lists(mount_items, max_size=3) | yaml_values,
        "volumes": st.lists(mount_items, max_size=2),
        "networks": st.lists(st.sampled_from(["front", "frnt", "default", "a"]) | yaml_scalars, max_size=3)
        | yaml_values,
        "secrets": st.lists(file_items, max_size=3) | yaml_values,
        "configs": st.lists(file_items, max_size=2) | yaml_values,
        "stack": st.sampled_from(["shop", "Shop", ""]) | yaml_scalars,
    },
)
declarations = st.dictionaries(
    st.sampled_from(["front", "data", "pw", "cfg", "default", "a"]),
    st.none()
    | st.fixed_dictionaries(
        {},
        optional={
            "external": st.booleans() | yaml_scalars,
            "name": st.sampled_from(["x1", "a", "front"]) | yaml_scalars,
            "labels": yaml_values,
            "internal": st.booleans() | yaml_scalars,
            "file": st.sampled_from(["pw.txt", "missing.txt"]) | yaml_scalars,
            "content": yaml_scalars,
        },
    )
    | yaml_values,
    max_size=3,
)
app_documents = st.fixed_dictionaries(
    {"services": st.dictionaries(st.sampled_from(["web", "db"]), app_fields, min_size=1)},
    optional={
        "stack": st.sampled_from(["shop", "My Shop"]) | yaml_scalars,
        "networks": declarations | yaml_values,
        "volumes": declarations,
        "secrets": declarations,
        "configs": declarations,
    },
)


@settings(max_examples=150, deadline=None)
@given(app_documents)
def test_the_new_keys_and_sections_only_ever_give_spec_errors(document: dict[str, Any]) -> None:
    def read(name: str) -> bytes:
        if name == "pw.txt":
            return b"hunter2"
        raise FileNotFoundError(2, "No such file or directory")

    deployment, issues = read_deployment(document, "app.yaml", read)
    for issue in issues:
        assert issue.path and issue.message and "\n" not in str(issue)
    if not issues:
        # A valid file gives valid specs, all of the file's one stack, and extras named for it.
        for spec in deployment.specs:
            assert validate_service(spec) == []
            assert spec.stack == deployment.stack
        names = [made.name for made in deployment.networks]
        names += [made.name for made in deployment.volumes]
        names += [made.name for made in (*deployment.secrets, *deployment.configs)]
        assert all(names)

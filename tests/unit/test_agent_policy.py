"""Host policy: reading the settings, judging specs, and the worker refusing a task before any container exists."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.policy import (
    BIND_PATHS,
    CONTAINED_FIELDS,
    HOST_FIELDS,
    HOST_PORTS,
    HOST_PROTOCOLS,
    HostPolicy,
    PolicyError,
    PortRange,
    check,
    parse_bind_paths,
    parse_host_ports,
    parse_host_protocols,
    refusal,
)
from agent.runtime.base import ContainerSpec, HealthConfig
from agent.runtime.docker import _create_config
from agent.runtime.fake import FakeRuntime
from agent.task_book import TaskBook
from agent.worker import Worker
from dockyard.clock import FakeClock
from dockyard.limits import STATUS_TEXT_BYTES
from dockyard.v1 import types_pb2 as pb
from tests.unit.test_worker import IMAGE, NODE, NOW, RecordingReporter, Rig, bare, make_task

# --- reading the settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ranges"),
    [
        ("1024-65535", [(1024, 65535)]),
        ("none", []),
        (" none ", []),
        ("all", [(1, 65535)]),
        ("80", [(80, 80)]),
        ("443, 80", [(80, 80), (443, 443)]),
        ("8000-8099,80,8100-8199,8050-8060", [(80, 80), (8000, 8199)]),
        ("79,80", [(79, 80)]),
        ("1-1023,1024-65535", [(1, 65535)]),
    ],
)
def test_host_ports_are_read_sorted_and_merged(text: str, ranges: list[tuple[int, int]]) -> None:
    assert parse_host_ports(text) == tuple(PortRange(a, b) for a, b in ranges)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", '"" is not a port or a range of ports; write ports and ranges like 80,443,8000-8999, or all, or none'),
        ("80,", '"" is not a port or a range of ports'),
        ("http", '"http" is not a port or a range of ports'),
        ("80-", '"80-" is not a port or a range of ports'),
        ("-80", '"-80" is not a port or a range of ports'),
        ("1-2-3", '"1-2-3" is not a port or a range of ports'),
        ("0-1023", '"0-1023": ports are 1 to 65535'),
        ("65536", '"65536": ports are 1 to 65535'),
        ("9000-8000", '"9000-8000" runs backwards; write the lower port first, e.g. 8000-9000'),
        ("80,none", "none stands alone, not in a list"),
        ("all,80", "all stands alone, not in a list"),
        ("٨٠", '"٨٠" is not a port or a range of ports'),
    ],
)
def test_bad_host_ports_name_the_option_and_the_fix(text: str, problem: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_host_ports(text)
    assert caught.value.setting is HOST_PORTS
    assert problem in caught.value.problem
    assert str(caught.value).startswith("--allow-host-ports: ")


@pytest.mark.parametrize(
    ("text", "protocols"),
    [("tcp,udp", {"tcp", "udp"}), ("udp", {"udp"}), (" tcp ", {"tcp"}), ("none", set())],
)
def test_host_protocols_are_read(text: str, protocols: set[str]) -> None:
    assert parse_host_protocols(text) == protocols


@pytest.mark.parametrize("text", ["", "TCP", "sctp", "tcp,,udp", "tcp,none"])
def test_bad_host_protocols_name_the_option_and_the_fix(text: str) -> None:
    with pytest.raises(
        PolicyError, match=r"^--allow-host-protocols: .* is not a protocol; write a comma-separated"
    ) as e:
        parse_host_protocols(text)
    assert e.value.setting is HOST_PROTOCOLS


def test_the_defaults_are_the_settings_defaults_read() -> None:
    policy = HostPolicy()
    assert policy == HostPolicy.from_settings()
    assert policy.settings() == {
        "allow-host-ports": "1024-65535",
        "allow-host-protocols": "tcp,udp",
        "allow-bind-paths": "none",
    }
    assert HostPolicy.from_settings(host_ports="none", host_protocols="udp", bind_paths="/srv").settings() == {
        "allow-host-ports": "none",
        "allow-host-protocols": "udp",
        "allow-bind-paths": "/srv",
    }


# --- bind mounts ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "paths"),
    [
        ("none", ()),
        ("/srv/data", ("/srv/data",)),
        (" /var/log/ , /srv/data,/srv/data", ("/srv/data", "/var/log")),
        ("/srv/./data/../cache", ("/srv/cache",)),
    ],
)
def test_bind_paths_are_read_normalised_and_sorted(text: str, paths: tuple[str, ...]) -> None:
    assert parse_bind_paths(text) == paths


@pytest.mark.parametrize("text", ["srv/data", "all", "/srv,none", "", "~/data"])
def test_a_bind_path_that_is_not_absolute_is_refused_naming_the_setting(text: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_bind_paths(text)
    assert caught.value.setting is BIND_PATHS
    assert str(caught.value).startswith("--allow-bind-paths: ")
    assert "absolute" in str(caught.value)


def test_a_bind_is_allowed_only_under_an_allowed_directory() -> None:
    policy = HostPolicy.from_settings(bind_paths="/srv/data,/var/log")
    assert policy.allows_bind("/srv/data")
    assert policy.allows_bind("/srv/data/db/")
    assert policy.allows_bind("/var/log/app.log")
    assert not policy.allows_bind("/srv/database"), "a sibling sharing a prefix is not beneath"
    assert not policy.allows_bind("/srv/data/../../etc"), "no climbing out with .."
    assert not policy.allows_bind("/srv")
    assert not policy.allows_bind("srv/data"), "relative"
    assert not HostPolicy().allows_bind("/srv/data"), "none by default"


def mounting(*mounts: pb.Mount) -> pb.ServiceSpec:
    spec = pb.ServiceSpec(name="web", image=IMAGE)
    spec.mounts.extend(mounts)
    return spec


def test_volumes_and_tmpfs_need_no_setting_and_a_bind_is_refused_by_default() -> None:
    spec = mounting(
        pb.Mount(type=pb.Mount.TYPE_VOLUME, source="shop_db-data", target="/var/lib/db"),
        pb.Mount(type=pb.Mount.TYPE_UNSPECIFIED, source="cache", target="/cache"),
        pb.Mount(type=pb.Mount.TYPE_TMPFS, target="/tmp", tmpfs_size_bytes=1 << 20),
        pb.Mount(type=pb.Mount.TYPE_BIND, source="/etc", target="/host-etc", read_only=True),
    )
    issues = [str(issue) for issue in check(spec, HostPolicy())]
    assert issues == [
        'services.web.mounts[3].source: bind mount of host path "/etc" is not allowed on this host '
        "(allow-bind-paths is none); use a named volume, keep the service off this host with a placement "
        "constraint, or have the host's operator add the directory to --allow-bind-paths"
    ]
    assert check(spec, HostPolicy.from_settings(bind_paths="/etc")) == []
    refused = refusal(spec, HostPolicy.from_settings(bind_paths="/srv"))
    assert refused is not None
    assert refused.startswith("refused by this host's policy: services.web.mounts[3].source: ")
    assert "(allow-bind-paths is /srv)" in refused


def test_a_policy_built_by_hand_is_merged_like_a_read_one() -> None:
    policy = HostPolicy(host_ports=(PortRange(2000, 65535), PortRange(1024, 1999)))
    assert policy.host_ports == (PortRange(1024, 65535),)
    assert policy.allows_port(0)
    with pytest.raises(ValueError, match="not a range of ports"):
        PortRange(0, 10)


# --- judging specs --------------------------------------------------------------------------------------


def spec_with(*ports: tuple[int, str]) -> pb.ServiceSpec:
    """A spec publishing (host port, protocol) pairs; an empty protocol is the default, tcp."""
    spec = pb.ServiceSpec(name="web", image=IMAGE)
    for number, (host, protocol) in enumerate(ports):
        spec.ports.add(host_port=host, container_port=8000 + number, protocol=protocol)
    return spec


DEFAULT = HostPolicy()
WEB_ONLY = HostPolicy.from_settings(host_ports="80,443,8000-8099", host_protocols="tcp")
NO_PORTS = HostPolicy.from_settings(host_ports="none")
NO_PROTOCOLS = HostPolicy.from_settings(host_protocols="none")


@pytest.mark.parametrize(
    ("policy", "ports", "refused"),
    [
        (DEFAULT, [], []),
        (DEFAULT, [(8080, "tcp"), (5353, "udp"), (65535, "")], []),
        (DEFAULT, [(0, "tcp")], []),
        (DEFAULT, [(80, "tcp")], ["services.web.ports[0].published"]),
        (DEFAULT, [(8080, "tcp"), (1023, "udp"), (22, "")], ["ports[1].published", "ports[2].published"]),
        (HostPolicy.from_settings(host_ports="all"), [(80, "tcp"), (0, "")], []),
        (WEB_ONLY, [(80, ""), (443, "tcp"), (8099, "tcp")], []),
        (WEB_ONLY, [(8100, "tcp")], ["ports[0].published"]),
        (WEB_ONLY, [(0, "tcp")], ["ports[0].published"]),
        (WEB_ONLY, [(80, "udp")], ["ports[0].protocol"]),
        (WEB_ONLY, [(9999, "udp")], ["ports[0].protocol"]),  # one reason per port: the protocol comes first
        (NO_PORTS, [(8080, "tcp"), (0, "udp")], ["ports[0]:", "ports[1]:"]),
        (NO_PROTOCOLS, [(8080, "tcp")], ["ports[0]:"]),
        (NO_PORTS, [], []),
    ],
)
def test_check_refuses_exactly_what_the_policy_does_not_allow(
    policy: HostPolicy, ports: list[tuple[int, str]], refused: list[str]
) -> None:
    issues = [str(issue) for issue in check(spec_with(*ports), policy)]
    assert len(issues) == len(refused), issues
    for issue, where in zip(issues, refused, strict=True):
        assert where in issue


def test_a_refused_port_names_the_field_the_setting_and_the_fix() -> None:
    assert refusal(spec_with((80, "tcp")), DEFAULT) == (
        "refused by this host's policy: services.web.ports[0].published: host port 80/tcp is not allowed on this "
        "host (allow-host-ports is 1024-65535); publish a port in 1024-65535, or have the host's operator allow "
        "it with --allow-host-ports"
    )
    assert refusal(spec_with((0, "tcp")), WEB_ONLY) == (
        "refused by this host's policy: services.web.ports[0].published: 0 lets Docker pick any free port, which "
        "is not allowed on this host (allow-host-ports is 80,443,8000-8099); publish a port in 80,443,8000-8099, "
        "or have the host's operator allow it with --allow-host-ports"
    )
    assert refusal(spec_with((80, "udp")), WEB_ONLY) == (
        "refused by this host's policy: services.web.ports[0].protocol: udp is not allowed on this host "
        "(allow-host-protocols is tcp); publish over tcp, or have the host's operator add udp to "
        "--allow-host-protocols"
    )
    assert refusal(spec_with((8080, "")), NO_PORTS) == (
        "refused by this host's policy: services.web.ports[0]: this host publishes no ports (allow-host-ports is "
        "none); remove the port, keep the service off this host with a placement constraint, or have the host's "
        "operator set --allow-host-ports"
    )
    assert refusal(spec_with((8080, "")), DEFAULT) is None


def test_what_no_valid_spec_holds_is_refused_too() -> None:
    # A controller validates these; an agent does not count on it.
    weird = spec_with((70_000, "tcp"), (8080, "sctp\n"))
    everything = HostPolicy.from_settings(host_ports="all")
    assert [str(issue) for issue in check(weird, everything)] == [
        "services.web.ports[0].published: host port 70000/tcp is not allowed on this host (allow-host-ports is "
        "1-65535); publish a port in 1-65535, or have the host's operator allow it with --allow-host-ports",
        'services.web.ports[1].protocol: "sctp\\n" is not allowed on this host (allow-host-protocols is tcp,udp); '
        'publish over tcp,udp, or have the host\'s operator add "sctp\\n" to --allow-host-protocols',
    ]


def test_a_refusal_names_a_few_ports_and_counts_the_rest_within_the_status_limit() -> None:
    error = refusal(spec_with(*[(port, "tcp") for port in range(1, 1001)]), DEFAULT)
    assert error is not None
    assert "ports[0].published" in error
    assert "ports[2].published" in error
    assert "ports[3]" not in error
    assert error.endswith("; and 997 more")
    assert len(error.encode()) <= STATUS_TEXT_BYTES


def test_a_quoted_service_name_stays_a_readable_path() -> None:
    spec = spec_with((80, "tcp"))
    spec.name = "web.v2"
    assert str(check(spec, DEFAULT)[0]).startswith('services["web.v2"].ports[0].published: ')


# --- nothing reaches the host unchecked -----------------------------------------------------------------


def test_every_spec_field_is_either_checked_or_known_to_stay_in_the_container() -> None:
    fields = set(pb.ServiceSpec.DESCRIPTOR.fields_by_name)
    assert not HOST_FIELDS & set(CONTAINED_FIELDS)
    unclassified = fields - HOST_FIELDS - set(CONTAINED_FIELDS)
    assert not unclassified, (
        f"ServiceSpec fields {sorted(unclassified)} are not classified: add a checker to agent/policy.py if they "
        "reach the host (mounts, devices, privileges, host namespaces), else list them in CONTAINED_FIELDS"
    )
    assert fields >= HOST_FIELDS | set(CONTAINED_FIELDS), "a classified field left the spec"


def test_containers_are_created_with_no_host_setting_but_the_checked_ones() -> None:
    # What the runtime may hand Docker: a new container setting that reaches the host needs a policy first.
    assert {f.name for f in dataclasses.fields(ContainerSpec)} == {
        "name",
        "image",
        "command",
        "env",
        "labels",
        "ports",
        "cpu_limit",
        "memory_limit_bytes",
        "healthcheck",  # runs inside the container, as its command does
        "entrypoint",  # runs inside the container
        "hostname",  # the container's own UTS namespace
        "dns",  # the container's own resolv.conf
        "dns_search",
        "networks",  # Docker bridge networks the agent itself makes for the cluster
        "mounts",  # checked: bind mounts only under the host paths the policy allows
    }
    config = _create_config(ContainerSpec(name="x", image=IMAGE, healthcheck=HealthConfig(("CMD", "true"))))
    assert set(config["HostConfig"]) == {"PortBindings", "NanoCpus", "Memory", "RestartPolicy"}
    assert set(config) <= {"Image", "Env", "Labels", "ExposedPorts", "HostConfig", "Cmd", "Healthcheck"}


# --- the worker refuses before any container exists -----------------------------------------------------


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    """The worker rig of test_worker, with the default host policy spelled out."""
    clock = FakeClock(NOW)
    fake = FakeRuntime(images=[IMAGE], clock=clock.now)
    book = TaskBook(tmp_path / "tasks.pb", clock=clock)
    reporter = RecordingReporter()
    worker = Worker(fake, book, reporter, NODE, clock=clock, policy=HostPolicy())
    made = Rig(fake, book, reporter, worker, tmp_path / "tasks.pb", clock)
    try:
        yield made
    finally:
        await worker.close()


def publishing(task: pb.Task, *ports: int) -> pb.Task:
    for port in ports:
        task.spec.ports.add(host_port=port, container_port=80, protocol="tcp")
    return task


async def test_a_task_publishing_port_80_is_rejected_with_the_reason_and_nothing_is_created(rig: Rig) -> None:
    task, spec = bare(publishing(make_task(), 80))
    rig.assign(task, [spec])
    await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_REJECTED, "t1 rejected")
    await rig.quiet()

    status = rig.status("t1")
    assert status.error == refusal(spec.spec, HostPolicy())
    assert "services.web.ports[0].published: host port 80/tcp" in status.error
    assert rig.reporter.states("t1") == [pb.TASK_STATE_REJECTED]
    assert rig.fake.calls == [], "nothing pulled, created or started"


async def test_a_task_the_policy_allows_runs(rig: Rig) -> None:
    rig.assign(publishing(make_task(), 8080))
    await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_RUNNING, "t1 running")
    assert rig.fake.count("create") == 1


async def test_a_resumed_task_past_prepare_is_checked_again_before_create(tmp_path: Path) -> None:
    # An agent restarted under a stricter policy resumes a PREPARING task straight at create.
    clock = FakeClock(NOW)
    fake = FakeRuntime(images=[IMAGE], clock=clock.now)
    book = TaskBook(tmp_path / "tasks.pb", clock=clock)
    reporter = RecordingReporter()
    strict = Worker(fake, book, reporter, NODE, clock=clock, policy=HostPolicy.from_settings(host_ports="80"))
    rig = Rig(fake, book, reporter, strict, tmp_path / "tasks.pb", clock)
    task = publishing(make_task(), 8080)
    task.status.state = pb.TASK_STATE_PREPARING
    try:
        rig.assign(task)
        await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_REJECTED, "t1 rejected")
        assert "(allow-host-ports is 80)" in rig.status("t1").error
        assert reporter.states("t1") == [pb.TASK_STATE_REJECTED]
        assert fake.count("create") == 0
    finally:
        await strict.close()


def test_a_mount_type_the_agent_does_not_know_is_refused_not_taken_for_a_volume() -> None:
    spec = mounting(
        pb.Mount(type=pb.Mount.TYPE_VOLUME, source="data", target="/d"),
        pb.Mount(type=pb.Mount.Type.ValueType(99), source="x", target="/x"),
    )
    assert [str(issue) for issue in check(spec, HostPolicy())] == [
        "services.web.mounts[1].type: mount type 99 is not known to this agent; upgrade the agent on this host, "
        "or keep the service off it with a placement constraint"
    ]

"""The dev cluster's pure pieces: names, addresses, path limits, the state file, mountinfo parsing, and how the
`dockyard` CLI finds `dockyard dev` (no root needed)."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner

from deploy.devcluster import DevClusterError, layout, mounts, state
from deploy.devcluster.cli import dev
from deploy.devcluster.dockerd import dockerd_argv
from deploy.devcluster.procs import ProcRef, is_alive, ref_of
from dockyard.cli.main import ENTRY_POINT_GROUP, cli
from tests.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]


def test_names_carry_the_cluster_prefix_and_fit_in_ifnamsiz() -> None:
    cluster_id = "ab12"
    host = layout.host_name(layout.MAX_HOSTS)
    names = (layout.veth_name(cluster_id, host), layout.bridge_name(cluster_id), layout.netns_name(cluster_id, host))
    for name in names:
        assert name.startswith("dy-ab12-")
        assert len(name) <= 15
    assert layout.host_address(3, "h2") == "10.213.3.12"
    assert layout.bridge_address(3) == "10.213.3.1"
    assert layout.docker_bip("h7") == "172.30.7.1/24"


def test_the_container_pool_is_clear_of_the_hosts_link_and_their_docker_bridges() -> None:
    pool = ipaddress.ip_network(layout.NETWORK_POOL)
    links = ipaddress.ip_network(f"{layout.SUBNET_BASE}.0.0/16")
    bips = [ipaddress.ip_interface(layout.docker_bip(layout.host_name(i))).network for i in (1, layout.MAX_HOSTS)]
    assert not any(pool.overlaps(other) for other in (links, *bips))


@pytest.mark.parametrize("name", ["h0", "x1", "h01", "h", "H1"])
def test_bad_host_names_are_refused(name: str) -> None:
    with pytest.raises(DevClusterError):
        layout.host_index(name)


def test_long_state_dirs_are_refused_before_anything_starts() -> None:
    layout.check_path_lengths(Path("/tmp/dy-ab12"), layout.MAX_HOSTS)
    with pytest.raises(DevClusterError, match="too long"):
        layout.check_path_lengths(Path("/tmp/" + "x" * 80), 3)


def test_dockerd_never_touches_iptables_and_keeps_its_containers_apart() -> None:
    paths = layout.host_paths(Path("/tmp/dy-ab12"), "h1")
    argv = dockerd_argv(paths, "172.30.1.1/24", "dy-ab12-h1")
    assert "--iptables=false" in argv
    assert "--ip-forward=false" in argv
    assert argv[argv.index("--cgroup-parent") + 1] == "/dy-ab12-h1"
    assert argv[argv.index("--host") + 1] == "unix:///tmp/dy-ab12/h1/docker.sock"


def test_state_file_round_trips(tmp_path: Path) -> None:
    record = state.ClusterRecord(
        cluster_id="ab12",
        state_dir=str(tmp_path),
        bridge="dy-ab12-br",
        controller_port=7465,
        subnet_index=4,
        hosts={
            "h1": state.HostRecord(
                name="h1",
                netns="dy-ab12-h1",
                veth="dy-ab12-h1",
                cgroup="dy-ab12-h1",
                address="10.213.4.11",
                bip="172.30.1.1/24",
                dockerd=ProcRef(pid=12, start=34),
            )
        },
    )
    state.save(record)
    assert state.load(tmp_path) == record
    assert state.load(tmp_path).bridge_address == "10.213.4.1"
    (tmp_path / state.STATE_FILE).write_text("{}")
    with pytest.raises(DevClusterError, match="not a dev cluster state file"):
        state.load(tmp_path)


def test_a_recorded_process_is_recognised_only_with_its_start_time() -> None:
    me = ref_of(os.getpid())
    assert me is not None and is_alive(me)
    assert not is_alive(ProcRef(pid=me.pid, start=me.start + 1))


def test_a_process_whose_leader_exited_lives_while_another_thread_runs() -> None:
    # The leader thread ends (pthread_exit) and shows as a zombie; the process, its files and sockets live on
    # in the other thread, as in a SIGKILLed agent whose last thread is still exiting.
    code = (
        "import ctypes, sys, threading\n"
        "threading.Thread(target=threading.Event().wait).start()\n"
        "sys.stdin.readline()\n"
        "ctypes.CDLL(None).pthread_exit(None)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    try:
        ref = ref_of(child.pid)
        assert ref is not None
        assert child.stdin is not None
        child.stdin.write(b"\n")
        child.stdin.flush()
        wait_for(lambda: Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z", 10, "Z")
        assert is_alive(ref), "a zombie leader with a running thread is a live process"
        child.kill()
        child.wait(10)
        assert not is_alive(ref)
    finally:
        if child.stdin is not None and not child.stdin.closed:
            child.stdin.close()
        if child.poll() is None:
            child.kill()
            child.wait()


def test_mountinfo_escapes_are_undone() -> None:
    assert mounts._unescape("/tmp/a\\040b\\134c") == "/tmp/a b\\c"


def test_dockyard_dev_comes_from_the_entry_point() -> None:
    entries = [e for e in metadata.entry_points(group=ENTRY_POINT_GROUP) if e.name == "dev"]
    assert entries, "no `dev` entry point: run .venv/bin/pip install -e '.[test]' after changing pyproject.toml"
    assert entries[0].load() is dev
    runner = CliRunner()
    assert "dev " in runner.invoke(cli, ["--help"]).output
    result = runner.invoke(cli, ["dev", "cluster", "--help"])
    assert result.exit_code == 0, result.output
    commands = ["up", "down", "status", "add-host", "kill", "revive", "partition", "heal"]
    for command in [*commands, "restart-agent", "stop-agent"]:
        assert f"  {command} " in result.output


def test_built_in_commands_never_load_dev_tooling() -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from dockyard.cli.main import cli\n"
        "assert CliRunner().invoke(cli, ['ps', '--help']).exit_code == 0\n"
        "print(','.join(sorted(n for n in sys.modules if n.split('.')[0] == 'deploy')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == ""

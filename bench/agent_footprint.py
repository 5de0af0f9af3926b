"""Benchmark: the agent's memory, old code against new, idle and with tasks, plus what each import group costs.

For each code tree (OLD: the commit given by --old-commit, unpacked with `git archive`; NEW: this checkout) it
starts that tree's controller and a real agent (`python -m agent.main`) against the real dockerd, waits until the
agent has said hello and heartbeated for --settle seconds, and reads the agent's RSS from /proc (idle). Then it
applies one service of --tasks replicas with that tree's CLI, waits until they run, settles, reads RSS again
(loaded), removes the service and waits until the agent has removed its containers. Each sample also gives the
agent's CPU share over its settle window. Trees alternate over --rounds so machine noise hits both alike; the
figures are medians and the ratio is NEW/OLD.

The import table runs each tree in a fresh interpreter that imports, in a fixed order, the module groups that
`import agent.main` loads in that tree and prints the RSS each group added (Python's allocator takes memory in
1 MiB arenas, so single figures move in such steps).

A tree that has the security core of issue 8 runs as a real host does: its controller starts a new TLS cluster
(--init), the agent joins with the token and then speaks mutual TLS, and the CLI uses admin credentials; with
--insecure such a tree runs in plaintext instead. An older tree runs as it always did (plaintext).

Run: PYTHONPATH=. python bench/agent_footprint.py [--old-commit 8260700] [--tasks 20] [--rounds 3] [--settle 5]
     [--insecure]
(the import table imports module groups the agent may no longer load; the old tree needs them installed).
Needs a running dockerd and the dockyard-test image (scripts/build-test-image.sh).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from dockyard import labels

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "dockyard-test:latest"
# Imported in this order, each group after the ones before it, so a group's figure is what it adds on top.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("asyncio (with ssl)", ("asyncio",)),
    ("structlog", ("structlog",)),
    ("click", ("click",)),
    ("protobuf + our pb2", ("google.protobuf", "dockyard.v1.types_pb2", "dockyard.v1.agent_pb2")),
    ("grpc", ("grpc", "grpc.aio", "dockyard.v1.agent_pb2_grpc")),
    ("aiohttp + aiodocker", ("aiohttp", "aiodocker")),
    ("yaml", ("yaml",)),
    ("dockyard.spec", ("dockyard.spec.schema",)),
    ("agent.main (the rest)", ("agent.main",)),
)
# Lists what `import agent.main` loads, in a fresh interpreter.
_LOADED_PROBE = (
    "import json, sys, agent.main; assert agent.main.__file__.startswith(sys.argv[1]), agent.main.__file__; "
    "print(json.dumps(sorted(sys.modules)))"
)
# Imports the groups the agent loads, one after another, and prints what each added to the RSS.
_GROUP_PROBE = """
import importlib, json, sys
def rss():
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith('VmRSS')) / 1024
loaded = set(json.loads(sys.argv[2]))
out = [('python (site)', rss(), '')]
for name, modules in json.loads(sys.argv[1]):
    if not any(m in loaded for m in modules):
        out.append((name, 0.0, 'not loaded'))
        continue
    before = rss()
    for m in modules:
        if m in loaded:
            importlib.import_module(m)
    out.append((name, rss() - before, ''))
out.append(('total', rss(), ''))
print(json.dumps(out))
"""


@dataclass
class Sample:
    """One measurement of one agent process; cpu_share is its CPU time over the settle window, in cores."""

    rss_mb: float
    anon_mb: float
    threads: int
    cpu_share: float = 0.0


@dataclass
class Tree:
    """A code tree to run the agent from."""

    name: str
    path: Path

    def env(self, state: Path) -> dict[str, str]:
        """The environment for this tree's processes: its code first on the path, its own CLI config.

        The processes also run in the tree (cwd): `python -m` and `-c` put the working directory first on the path.
        """
        return {**os.environ, "PYTHONPATH": str(self.path), "XDG_CONFIG_HOME": str(state / "config")}

    @property
    def secure(self) -> bool:
        """Whether the tree has issue 8's security core: its controller needs --init and serves TLS."""
        return "--join-listen" in (self.path / "controller" / "main.py").read_text()

    def tool(self, env: dict[str, str], *argv: str) -> str:
        """Runs `python -m <argv>` in the tree (dockyard-controller admin-cert, agent join); returns its output."""
        result = subprocess.run(
            [sys.executable, "-m", *argv], env=env, cwd=self.path, check=False, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(argv[:2])} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
        return result.stdout.strip()


def free_port() -> int:
    """Returns a TCP port on loopback that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sample(pid: int) -> Sample:
    """Reads the process's resident set from /proc."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.split()
    return Sample(int(fields["VmRSS"][0]) / 1024, int(fields["RssAnon"][0]) / 1024, int(fields["Threads"][0]))


def cpu_seconds(pid: int) -> float:
    """The process's user plus system CPU time so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are the 14th and 15th fields of stat; fields here start at the 3rd.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle_and_sample(pid: int, settle: float) -> Sample:
    """Lets the process run for `settle` seconds, then samples it with its CPU share over that time."""
    cpu, started = cpu_seconds(pid), time.monotonic()
    time.sleep(settle)
    result = sample(pid)
    result.cpu_share = (cpu_seconds(pid) - cpu) / (time.monotonic() - started)
    return result


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> None:
    """Polls `check` until it holds; fails the benchmark naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stops a process this benchmark started: SIGTERM, then SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def service_containers(service: str) -> list[str]:
    """The ids of the containers Docker holds for the benchmark's service (by Dockyard's service-name label)."""
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={labels.SERVICE_NAME}={service}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.split()


@contextlib.contextmanager
def cluster(tree: Tree, state: Path, insecure: bool) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, str]]]:
    """Runs the tree's controller and one agent; yields the agent process and the CLI's environment for it."""
    address = f"127.0.0.1:{free_port()}"
    join = f"127.0.0.1:{free_port()}"
    env = tree.env(state)
    python = sys.executable
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    secure = tree.secure and not insecure
    mode = ["--init", *(["--join-listen", join] if secure else ["--insecure"])] if tree.secure else []
    controller_dir = str(state / "controller")
    with open(logs / "controller.log", "wb") as clog, open(logs / "agent.log", "wb") as alog:
        controller = subprocess.Popen(
            [python, "-m", "controller.main", *mode, "--listen", address, "--state-dir", controller_dir],
            env=env,
            cwd=tree.path,
            stdout=clog,
            stderr=subprocess.STDOUT,
        )
        agent: subprocess.Popen[bytes] | None = None
        try:
            host, port = address.rsplit(":", 1)

            def listening() -> bool:
                with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=0.2):
                    return True
                return False

            wait_for("the controller to listen", listening, 30)
            cli_env = {**env, "DOCKYARD_CONTROLLER": address}
            hostname = f"footprint-{tree.name}"
            agent_dir = str(state / "agent")
            if secure:
                # As on a real host: admin credentials for the CLI, and the host joined with the token.
                admin = str(state / "admin")
                tree.tool(env, "controller.main", "admin-cert", "--out", admin, "--state-dir", controller_dir)
                cli_env["DOCKYARD_CREDENTIALS"] = admin
                token = tree.tool(env, "controller.main", "join-token", "--state-dir", controller_dir)
                tree.tool(
                    {**env, "DOCKYARD_JOIN_TOKEN": token},
                    *("agent.main", "join", "--hostname", hostname, "--state-dir", agent_dir, join),
                )
                how = ["--state-dir", agent_dir]
            else:
                how = [*(["--insecure"] if tree.secure else []), "--controller", address, "--state-dir", agent_dir]
                how += ["--hostname", hostname]
            agent = subprocess.Popen(
                [python, "-m", "agent.main", *how],
                env=env,
                cwd=tree.path,
                stdout=alog,
                stderr=subprocess.STDOUT,
            )
            wait_for(
                "the agent's session",
                lambda: b"controller session open" in (logs / "agent.log").read_bytes(),
                30,
            )
            yield agent, cli_env
        finally:
            if agent is not None:
                stop(agent)
            stop(controller)


def run_cli(argv: list[str], env: dict[str, str], cwd: Path) -> None:
    """Runs a CLI command; failing, ends the benchmark with what the command said."""
    result = subprocess.run(argv, env=env, cwd=cwd, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv[3:])} failed ({result.returncode}):\n{result.stdout}{result.stderr}")


def measure(tree: Tree, tasks: int, settle: float, insecure: bool) -> tuple[Sample, Sample | None]:
    """Idle and loaded samples of one fresh agent of the tree; loaded is None when --tasks is 0."""
    with tempfile.TemporaryDirectory(prefix="dockyard-footprint-") as tmp:
        state = Path(tmp)
        with cluster(tree, state, insecure) as (agent, env):
            idle = settle_and_sample(agent.pid, settle)
            if tasks == 0:
                return idle, None
            service = f"footprint{uuid.uuid4().hex[:8]}"
            spec = state / "service.yaml"
            spec.write_text(
                f"services:\n  {service}:\n    image: {IMAGE}\n    command: [sleep, '3600']\n"
                f"    replicas: {tasks}\n    stop_grace_period: 0s\n"
            )
            cli = [sys.executable, "-m", "dockyard.cli.main"]
            try:
                run_cli([*cli, "apply", "-f", str(spec)], env, tree.path)
                loaded = settle_and_sample(agent.pid, settle)
                run_cli([*cli, "rm", service], env, tree.path)
                wait_for("the agent to remove the service's containers", lambda: not service_containers(service), 60)
            finally:
                # Only ever this run's containers, and only if the agent did not get to them.
                leftovers = service_containers(service)
                if leftovers:
                    subprocess.run(["docker", "rm", "-f", *leftovers], check=False, capture_output=True)
            return idle, loaded


def import_table(tree: Tree) -> list[tuple[str, float, str]]:
    """What each module group the agent loads adds to a fresh interpreter of the tree, in MB."""
    env = {**os.environ, "PYTHONPATH": str(tree.path)}
    loaded = subprocess.run(
        [sys.executable, "-c", _LOADED_PROBE, str(tree.path)],
        env=env,
        cwd=tree.path,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    out = subprocess.run(
        [sys.executable, "-c", _GROUP_PROBE, json.dumps(GROUPS), loaded],
        env=env,
        cwd=tree.path,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [(str(name), float(mb), str(note)) for name, mb, note in json.loads(out)]


def unpack(commit: str, into: Path) -> Path:
    """Writes the product packages of `commit` into `into` (git archive; the repository is not touched)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit, "agent", "controller", "dockyard"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old-commit", default="8260700", help="The commit to compare against.")
    parser.add_argument("--tasks", type=int, default=20, help="Replicas for the loaded sample (0: idle only).")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=5.0, help="Seconds to heartbeat before each sample.")
    parser.add_argument("--insecure", action="store_true", help="Run a tree with issue 8's TLS in plaintext instead.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dockyard-footprint-old-") as old_dir:
        trees = [Tree("old", unpack(args.old_commit, Path(old_dir))), Tree("new", ROOT)]
        idle: dict[str, list[Sample]] = {t.name: [] for t in trees}
        loaded: dict[str, list[Sample]] = {t.name: [] for t in trees}
        for round_ in range(args.rounds):
            for tree in trees if round_ % 2 == 0 else reversed(trees):
                i, loaded_sample = measure(tree, args.tasks, args.settle, args.insecure)
                idle[tree.name].append(i)
                line = f"round {round_ + 1} {tree.name}: idle {i.rss_mb:.1f} MB"
                if loaded_sample is not None:
                    loaded[tree.name].append(loaded_sample)
                    line += f", {args.tasks} tasks {loaded_sample.rss_mb:.1f} MB"
                print(line, file=sys.stderr)
        tables = {t.name: import_table(t) for t in trees}

    def med(samples: list[Sample], attr: str) -> float:
        return statistics.median(float(getattr(s, attr)) for s in samples)

    print(f"agent RSS, median of {args.rounds} rounds (old = {args.old_commit}, new = this checkout)")
    print(f"{'':28}{'old MB':>10}{'new MB':>10}{'new/old':>10}")
    rows = [("idle, registered: RSS", idle, "rss_mb"), ("idle, registered: anon", idle, "anon_mb")]
    if args.tasks:
        rows += [
            (f"{args.tasks} tasks running: RSS", loaded, "rss_mb"),
            (f"{args.tasks} tasks: anon", loaded, "anon_mb"),
        ]
    for label, data, attr in rows:
        old, new = med(data["old"], attr), med(data["new"], attr)
        print(f"{label:28}{old:10.1f}{new:10.1f}{new / old:10.2f}")
    print(f"{'threads (idle)':28}{med(idle['old'], 'threads'):10.0f}{med(idle['new'], 'threads'):10.0f}")
    cpu_rows = [("idle", idle)] + ([(f"{args.tasks} tasks", loaded)] if args.tasks else [])
    for label, data in cpu_rows:
        old, new = med(data["old"], "cpu_share"), med(data["new"], "cpu_share")
        print(f"{'CPU, % of a core, ' + label:28}{old * 100:10.2f}{new * 100:10.2f}")
    print("\nimport cost by group (MB of RSS each adds, in this order; one interpreter per tree)")
    print(f"{'':28}{'old MB':>10}{'new MB':>10}")
    for (name, old_mb, old_note), (_, new_mb, new_note) in zip(tables["old"], tables["new"], strict=True):
        notes = ", ".join(f"{tree}: {note}" for tree, note in (("old", old_note), ("new", new_note)) if note)
        print(f"{name:28}{old_mb:10.1f}{new_mb:10.1f}" + (f"  ({notes})" if notes else ""))


if __name__ == "__main__":
    main()

"""The keeper: one small process per dev cluster that starts the cluster's daemons and reaps them.

Every dockerd, agent and controller of a cluster is started by its keeper, and the keeper is a child
subreaper (prctl PR_SET_CHILD_SUBREAPER), so whatever those daemons orphan (containerd shims, a containerd
whose dockerd was killed, container processes) becomes the keeper's child. The keeper reaps them all:
killed processes never linger as zombies, even where init does not reap orphans, and whoever runs
`up` and `down` may be a short-lived CLI process.

Protocol: one JSON object per line over a unix socket, one request per connection:
  {"op": "spawn", "argv": [...], "log": "/path", "env": {...}}  ->  {"pid": N}
  {"op": "ping"}                                                 ->  {"ok": true}
  {"op": "exit"}                                                 ->  {"ok": true}, then the keeper exits
Errors come back as {"error": "..."}.

Run as: python -m deploy.devcluster.keeper --socket PATH --cluster ID
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deploy.devcluster.errors import DevClusterError
from deploy.devcluster.procs import become_subreaper

# Python ignores these; a spawned program must start with the default dispositions, as subprocess does.
_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


def spawn(argv: Sequence[str], log: Path, env: Mapping[str, str]) -> int:
    """Starts a program in a new session (its own process group), stdin from /dev/null, output appended to log.

    No Popen object is kept: the process belongs to whoever reaps it (the keeper), and nothing warns about
    a child that is still running when this object would be collected.
    """
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        return os.posix_spawnp(
            argv[0],
            list(argv),
            dict(env),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, fd, 1),
                (os.POSIX_SPAWN_DUP2, fd, 2),
            ],
            setsid=True,
            setsigdef=_DEFAULT_SIGNALS,
        )
    finally:
        os.close(fd)


async def request(socket_path: Path, message: Mapping[str, Any], limit: float = 10.0) -> dict[str, Any]:
    """Sends one request to a keeper and returns its answer; raises DevClusterError when it does not answer."""
    try:
        async with asyncio.timeout(limit):
            reader, writer = await asyncio.open_unix_connection(str(socket_path))
            try:
                writer.write(json.dumps(message).encode() + b"\n")
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        raise DevClusterError(f"the cluster's keeper at {socket_path} does not answer: {exc}") from exc
    try:
        answer = json.loads(line)
    except ValueError as exc:
        raise DevClusterError(f"the keeper at {socket_path} sent garbage: {line[:80]!r}") from exc
    if not isinstance(answer, dict):
        raise DevClusterError(f"the keeper at {socket_path} sent garbage: {line[:80]!r}")
    if "error" in answer:
        raise DevClusterError(f"the keeper could not do {message.get('op')}: {answer['error']}")
    return answer


class _Keeper:
    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.done = asyncio.Event()

    def reap(self) -> None:
        """Collects every exited child or adopted orphan."""
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            answer = self.answer(json.loads(await reader.readline()))
        except (ValueError, TypeError, KeyError, OSError) as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        writer.write(json.dumps(answer).encode() + b"\n")
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()

    def answer(self, message: dict[str, Any]) -> dict[str, Any]:
        op = message["op"]
        if op == "spawn":
            argv = [str(a) for a in message["argv"]]
            env = {str(k): str(v) for k, v in message["env"].items()}
            return {"pid": spawn(argv, Path(message["log"]), env)}
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}
        if op == "exit":
            self.done.set()
            return {"ok": True}
        return {"error": f"unknown op {op!r}"}

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGCHLD, self.reap)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self.done.set)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        server = await asyncio.start_unix_server(self.handle, str(self.socket_path))
        async with server:
            await self.done.wait()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self.reap()


def main(argv: Sequence[str] | None = None) -> None:
    """Runs a keeper until it is told to exit."""
    parser = argparse.ArgumentParser(prog="python -m deploy.devcluster.keeper")
    parser.add_argument("--socket", required=True, type=Path)
    parser.add_argument("--cluster", required=True, help="the cluster id (so that ps shows whose keeper this is)")
    args = parser.parse_args(argv)
    become_subreaper()
    os.chdir("/")
    asyncio.run(_Keeper(args.socket).serve())
    sys.exit(0)


if __name__ == "__main__":
    main()

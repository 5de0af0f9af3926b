"""Running helper programs (ip, docker, nsenter) as asyncio subprocesses."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from deploy.devcluster.errors import CommandFailed, DevClusterError


@dataclass(frozen=True)
class Result:
    """What a finished command printed and returned."""

    code: int
    stdout: str
    stderr: str


async def run(
    *argv: str,
    check: bool = True,
    stdin: bytes | None = None,
    limit: float = 120.0,
    env: Mapping[str, str] | None = None,
) -> Result:
    """Runs a program to completion (with env as its whole environment when given, else ours); with check, a
    non-zero exit raises CommandFailed.
    """
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env) if env is not None else None,
        )
    except FileNotFoundError as exc:
        raise DevClusterError(f"{argv[0]} is not installed") from exc
    try:
        async with asyncio.timeout(limit):
            out, err = await process.communicate(stdin)
    except TimeoutError:
        await _kill(process)
        raise DevClusterError(f"`{' '.join(argv)}` did not finish within {limit:g}s") from None
    except BaseException:
        await _kill(process)
        raise
    result = Result(process.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))
    if check and result.code != 0:
        raise CommandFailed(list(argv), result.code, result.stderr or result.stdout)
    return result


async def _kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.kill()
        await asyncio.shield(process.wait())

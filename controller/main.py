"""The dockyard-controller command: with no subcommand it runs the controller; `backup` and `restore` keep its store."""

from __future__ import annotations

import asyncio
import datetime
import re
import signal
import sys
from pathlib import Path
from typing import IO, NoReturn

import click
import structlog

from controller.errors import EXIT_CONFIG, StartupError
from controller.network.allocate import DEFAULT_POOL, parse_pool
from controller.security.authority import ClusterAuthority
from controller.server import Controller, ControllerConfig
from controller.store.sqlite import STORE_FILE, BackupError, backup_file, restore_file
from dockyard import logs, pki
from dockyard.addresses import JOIN_PORT
from dockyard.clock import SystemClock
from dockyard.config_file import config_option
from dockyard.limits import DEFAULT_CONTROLLER
from dockyard.spec.schema import SERVICE_HISTORY
from dockyard.spec.units import format_duration, parse_duration

log = structlog.get_logger()

PROG = "dockyard-controller"
DEFAULT_STATE_DIR = Path("/var/lib/dockyard/controller")


class _Failure(click.ClickException):
    """A one-line failure printed as `dockyard-controller: <message>`; exits 1."""

    def show(self, file: IO[str] | None = None) -> None:
        """Prints the one line to stderr."""
        click.echo(f"{PROG}: {self.message}", file=file or sys.stderr)


class _StartupFailure(_Failure):
    """A StartupError: restarting with the same state and flags would fail the same way."""

    exit_code = EXIT_CONFIG


_STATE_DIR_TYPE = click.Path(file_okay=False, path_type=Path)


def _lifetime(text: str) -> datetime.timedelta:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(f"{text!r}: {exc}", param_hint="--cert-lifetime") from None
    lifetime = datetime.timedelta(seconds=seconds)
    if lifetime < pki.MIN_CERT_LIFETIME:
        raise click.BadParameter(
            f"{text!r}: at least {format_duration(pki.MIN_CERT_LIFETIME.total_seconds())}", param_hint="--cert-lifetime"
        )
    return lifetime


def _pool(text: str) -> str:
    try:
        return str(parse_pool(text))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--network-pool") from None


@click.group(
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Run with no command to start the controller in the foreground.",
)
@click.option(
    "--listen", default=DEFAULT_CONTROLLER, show_default=True, help="Address for agents and the API (mutual TLS)."
)
@click.option(
    "--join-listen",
    default=None,
    help="Address where hosts join with the token (TLS, no client certificate) "
    f"[default: --listen's host, port {JOIN_PORT}].",
)
@click.option(
    "--init",
    is_flag=True,
    help="Create a new cluster (CA and store) if the state dir has none; without it an empty state dir is refused.",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Plaintext without certificates, for experiments; refused on any address but loopback.",
)
@click.option(
    "--cert-lifetime",
    default=format_duration(pki.DEFAULT_CERT_LIFETIME.total_seconds()),
    show_default=True,
    help="Lifetime of node and serving certificates, e.g. 168h, 12h, 1m; each is renewed after half of it.",
)
@click.option(
    "--state-dir",
    type=_STATE_DIR_TYPE,
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help="Where the SQLite store lives.",
)
@click.option(
    "--heartbeat-period",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="Seconds between an agent's heartbeats, as the controller tells every agent in its welcome.",
)
@click.option(
    "--heartbeat-grace",
    type=click.FloatRange(min=1.5),
    default=3.0,
    show_default=True,
    help="Heartbeat periods of silence before a node is marked down.",
)
@click.option(
    "--service-history",
    type=click.IntRange(min=1),
    default=SERVICE_HISTORY.maximum,
    show_default=True,
    help="Revisions kept per service for `dockyard history` and `dockyard rollback` (the current one always).",
)
@click.option(
    "--network-pool",
    default=DEFAULT_POOL,
    show_default=True,
    help="IPv4 range (CIDR, /8 to /24) every network's per-host /24 subnets are taken from; "
    "changing it affects new subnets only.",
    callback=lambda ctx, param, value: _pool(value),
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
@click.option("--log-format", type=click.Choice(["console", "json"]), default="console")
@click.pass_context
def main(
    ctx: click.Context,
    listen: str,
    join_listen: str | None,
    init: bool,
    insecure: bool,
    cert_lifetime: str,
    state_dir: Path,
    heartbeat_period: float,
    heartbeat_grace: float,
    service_history: int,
    network_pool: str,
    log_level: str,
    log_format: str,
) -> None:
    """Runs the Dockyard controller in the foreground, or backs up or restores its store.

    A startup error (damaged store, address in use, store held by another controller) prints one line and
    exits with 78 (EX_CONFIG), which `dockyard up` takes as "do not restart".
    """
    ctx.obj = state_dir
    if ctx.invoked_subcommand is not None:
        return
    logs.configure(log_level, log_format, component="controller")
    config = ControllerConfig(
        listen=listen,
        state_dir=state_dir,
        heartbeat_period=heartbeat_period,
        heartbeat_grace_periods=heartbeat_grace,
        join_listen=join_listen,
        insecure=insecure,
        init=init,
        cert_lifetime=_lifetime(cert_lifetime),
        service_history=service_history,
        network_pool=network_pool,
    )
    try:
        asyncio.run(_serve(config))
    except StartupError as exc:
        raise _StartupFailure(str(exc)) from None


async def _serve(config: ControllerConfig) -> None:
    try:
        controller = Controller(config)
    except OSError as exc:
        # Creating the state directory is the only I/O here: a path or permission problem of the flag.
        raise StartupError(f"--state-dir {config.state_dir}: {exc.strerror or exc}") from exc
    try:
        await controller.start()
    except BaseException:
        # Whatever start() got to (the store, a bound port) is let go before the one-line error.
        await controller.stop()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.create_task(controller.wait())
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
        log.info("controller stopping")
        waiter.cancel()
        stopper.cancel()
    finally:
        await controller.stop()
    if waiter.done() and not waiter.cancelled() and waiter.exception() is not None:
        raise waiter.exception()  # type: ignore[misc]


main.params.insert(0, config_option())


# An admin's name goes into its certificate's CN: plain, so it can never read as a host name or the controller's.
ADMIN_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def _authority(ctx: click.Context, state_dir: Path | None) -> ClusterAuthority:
    directory = state_dir if state_dir is not None else ctx.find_root().obj
    assert isinstance(directory, Path)
    try:
        return ClusterAuthority.open(
            directory, SystemClock(), pki.DEFAULT_CERT_LIFETIME, init=False, addresses=(), read_only=True
        )
    except StartupError as exc:
        raise _Failure(str(exc)) from None


@main.command("admin-cert")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write ca.crt, admin.crt and admin.key (0600) into.",
)
@click.option("--name", default="admin", show_default=True, help="Who the certificate is for (its CN), for logs.")
@click.option(
    "--state-dir", type=_STATE_DIR_TYPE, default=None, help=f"The controller's state dir [{DEFAULT_STATE_DIR}]."
)
@click.pass_context
def admin_cert(ctx: click.Context, out: Path, name: str, state_dir: Path | None) -> None:
    """Write admin credentials for the CLI (signed by the cluster CA, which must be readable here)."""
    if not ADMIN_NAME.fullmatch(name):
        raise click.BadParameter(f"{name!r}: 1 to 63 lower-case letters, digits or '-'", param_hint="--name")
    credentials = _authority(ctx, state_dir).issue_admin(name)
    credentials.save(out, pki.ADMIN_STEM)
    click.echo(f"wrote admin credentials for {name!r} to {out}; point the CLI at them with --credentials {out}")


@main.command("join-token")
@click.option(
    "--state-dir", type=_STATE_DIR_TYPE, default=None, help=f"The controller's state dir [{DEFAULT_STATE_DIR}]."
)
@click.pass_context
def join_token(ctx: click.Context, state_dir: Path | None) -> None:
    """Print the current join token from the state dir (rotate it with `dockyard join-token --rotate`)."""
    try:
        click.echo(str(_authority(ctx, state_dir).token()))
    except StartupError as exc:
        raise _Failure(str(exc)) from None


def _store_path(ctx: click.Context, state_dir: Path | None) -> Path:
    """Returns the store file of the subcommand's --state-dir, else of the one given before the subcommand."""
    directory = state_dir if state_dir is not None else ctx.find_root().obj
    assert isinstance(directory, Path)
    return directory / STORE_FILE


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--state-dir", type=_STATE_DIR_TYPE, default=None, help=f"The controller's state dir [{DEFAULT_STATE_DIR}]."
)
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
@click.pass_context
def backup(ctx: click.Context, file: Path, state_dir: Path | None, force: bool) -> None:
    """Write a consistent copy of the store to FILE; safe while the controller runs."""
    db = _store_path(ctx, state_dir)
    try:
        summary = backup_file(db, file, force=force)
    except BackupError as exc:
        _fail(exc)
    click.echo(f"backed up {db} at {summary} to {file}")


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--state-dir", type=_STATE_DIR_TYPE, default=None, help=f"The controller's state dir [{DEFAULT_STATE_DIR}]."
)
@click.pass_context
def restore(ctx: click.Context, file: Path, state_dir: Path | None) -> None:
    """Check the backup FILE and put it in place of the store; the controller must be stopped.

    The store it replaces is kept beside it as controller.db.<UTC time>.bak.
    """
    db = _store_path(ctx, state_dir)
    try:
        summary, aside = restore_file(file, db)
    except BackupError as exc:
        _fail(exc)
    kept = f"; the previous store is kept as {aside}" if aside is not None else ""
    click.echo(f"restored {file} ({summary}) into {db}{kept}")


def _fail(exc: Exception) -> NoReturn:
    raise _Failure(str(exc)) from None


if __name__ == "__main__":
    main(prog_name=PROG)

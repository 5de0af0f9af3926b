"""The controller's CA in its state dir: made only with init, the join token, and its own serving certificate
renewed at a handshake once half its lifetime has passed."""

from __future__ import annotations

import asyncio
import datetime
import stat
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health, health_pb2_grpc

from agent.identity import _fetch_chain
from controller.errors import StartupError
from controller.security.authority import JOIN_SECRET_FILE, ClusterAuthority
from dockyard import pki
from dockyard.clock import FakeClock

LIFETIME = datetime.timedelta(minutes=10)


def open_authority(state_dir: Path, clock: FakeClock, init: bool = True) -> ClusterAuthority:
    return ClusterAuthority.open(state_dir, clock, LIFETIME, init=init, addresses=("127.0.0.1",))


def test_no_ca_is_made_without_init_and_one_is_kept_with_it(tmp_path: Path) -> None:
    clock = FakeClock()
    with pytest.raises(StartupError, match="no cluster CA here"):
        open_authority(tmp_path, clock, init=False)
    assert list(tmp_path.iterdir()) == []
    made = open_authority(tmp_path, clock)
    again = open_authority(tmp_path, clock, init=False)
    assert again.cluster_id == made.cluster_id and str(again.token()) == str(made.token())
    for private in (pki.CA_KEY_FILE, JOIN_SECRET_FILE):
        assert stat.S_IMODE((tmp_path / private).stat().st_mode) == 0o600


def test_rotation_refuses_the_old_secret_and_survives_a_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    authority = open_authority(tmp_path, clock)
    old = authority.token()
    new = authority.rotate()
    assert new.ca_digest == old.ca_digest and new.secret != old.secret
    assert authority.secret_matches(new.secret) and not authority.secret_matches(old.secret)
    assert str(open_authority(tmp_path, clock, init=False).token()) == str(new)


def test_a_damaged_ca_is_a_one_line_startup_error(tmp_path: Path) -> None:
    open_authority(tmp_path, FakeClock())
    (tmp_path / pki.CA_CERT_FILE).write_text("not a certificate")
    with pytest.raises(StartupError, match="the cluster CA is unusable"):
        open_authority(tmp_path, FakeClock(), init=False)


async def test_the_serving_certificate_is_renewed_at_a_handshake_after_half_its_lifetime(tmp_path: Path) -> None:
    clock = FakeClock(datetime.datetime.now(datetime.UTC))
    authority = open_authority(tmp_path, clock)
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", authority.server_credentials(client_certificates=False))
    await server.start()
    try:

        async def leaf_serial() -> int:
            chain = await asyncio.to_thread(_fetch_chain, "127.0.0.1", port, 5.0)
            assert pki.chain_ca_matching(chain, pki.ca_digest(authority.ca.ca_pem)) == authority.ca.ca_pem
            return x509.load_der_x509_certificate(chain[0]).serial_number

        first = await leaf_serial()
        assert await leaf_serial() == first, "not renewed before half the lifetime"
        await clock.advance(LIFETIME.total_seconds() / 2 + 1)
        renewed = await leaf_serial()
        assert renewed != first
        assert await leaf_serial() == renewed
        on_disk = pki.KeyPair(b"", (tmp_path / "controller.crt").read_bytes()).certificate
        assert on_disk.serial_number == renewed
    finally:
        await server.stop(None)


@pytest.mark.parametrize("content", ["", "short", "x" * 40])
def test_a_join_secret_that_is_not_one_is_refused_at_start(tmp_path: Path, content: str) -> None:
    open_authority(tmp_path, FakeClock())
    (tmp_path / JOIN_SECRET_FILE).write_text(content)
    with pytest.raises(StartupError, match="not a join secret"):
        open_authority(tmp_path, FakeClock(), init=False)


def test_the_tools_create_nothing_in_the_state_dir(tmp_path: Path) -> None:
    open_authority(tmp_path, FakeClock())
    (tmp_path / JOIN_SECRET_FILE).unlink()
    before = sorted(p.name for p in tmp_path.iterdir())
    tool = ClusterAuthority.open(tmp_path, FakeClock(), LIFETIME, init=False, addresses=(), read_only=True)
    tool.issue_admin("ops")
    with pytest.raises(StartupError, match="no join secret yet"):
        tool.token()
    assert not tool.secret_matches("")
    assert sorted(p.name for p in tmp_path.iterdir()) == before

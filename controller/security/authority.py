"""The controller's side of the cluster PKI: its CA in the state dir, the join secret, and its own certificate.

Files in the state dir: ca.key (0600) and ca.crt, the cluster CA; join-secret (0600), the secret part of the
join token; controller.crt, the serving certificate (its key is kept in memory only), renewed while the controller
runs. A new cluster (CA, secret) is only made when asked (`--init`): a controller pointed at an empty or
wrong state dir must not come up as an empty cluster under a new CA.
"""

from __future__ import annotations

import datetime
import hmac
import threading
from pathlib import Path

import grpc
import structlog

from controller.errors import StartupError
from controller.ids import new_id
from dockyard import pki
from dockyard.clock import Clock

log = structlog.get_logger()

JOIN_SECRET_FILE = "join-secret"
SERVING_STEM = "controller"


class ClusterAuthority:
    """The CA, the join secret and the serving certificate of one controller."""

    def __init__(self, state_dir: Path, ca: pki.Authority, secret: str, clock: Clock, lifetime: datetime.timedelta):
        self._dir = state_dir
        self.ca = ca
        self._secret = secret
        self._clock = clock
        self.lifetime = lifetime
        self._addresses: tuple[str, ...] = ()
        # The serving pair is read by gRPC's handshake threads (the fetcher below) and renewed there.
        self._lock = threading.Lock()
        self._serving: pki.KeyPair | None = None  # issued when first served

    @property
    def cluster_id(self) -> str:
        """The cluster's id, from the CA's subject."""
        return self.ca.cluster_id

    @classmethod
    def open(
        cls,
        state_dir: Path,
        clock: Clock,
        lifetime: datetime.timedelta,
        *,
        init: bool,
        addresses: tuple[str, ...],
        read_only: bool = False,
    ) -> ClusterAuthority:
        """Loads the CA from state_dir, or makes a new cluster's when init is set and there is none.

        StartupError when there is no CA and init is not set, or half of one, or the join secret is unusable.
        read_only (the admin-cert and join-token tools) creates nothing: a missing secret reads as "", which
        matches no join, and token() then raises StartupError.
        """
        key, cert = state_dir / pki.CA_KEY_FILE, state_dir / pki.CA_CERT_FILE
        if not key.exists() and not cert.exists():
            if not init:
                raise StartupError(
                    f"--state-dir {state_dir}: no cluster CA here (no {pki.CA_CERT_FILE}). If this is a new "
                    "cluster, start once with --init; if the cluster's state was here, restore ca.key, ca.crt "
                    "and the store from backup instead: agents refuse a new CA"
                )
            pair = pki.create_ca(new_id(), clock.now())
            pki.write_file(key, pair.key_pem, private=True)
            pki.write_file(cert, pair.cert_pem)
            log.info("cluster CA created", state_dir=str(state_dir))
        try:
            ca = pki.Authority(pki.KeyPair(pki.read_file(key), pki.read_file(cert)))
        except (pki.PkiError, ValueError) as exc:
            raise StartupError(f"--state-dir {state_dir}: the cluster CA is unusable: {exc}") from None
        secret_file = state_dir / JOIN_SECRET_FILE
        if not secret_file.exists():
            if read_only:
                return cls(state_dir, ca, "", clock, lifetime)
            pki.write_file(secret_file, pki.new_secret().encode(), private=True)
        try:
            secret = pki.read_file(secret_file).decode(errors="replace").strip()
        except pki.PkiError as exc:
            raise StartupError(f"--state-dir {state_dir}: the join secret is unreadable: {exc}") from None
        if not pki.SECRET.fullmatch(secret):
            # An empty secret would let a join with no secret in: refuse to serve rather than guess.
            raise StartupError(
                f"{secret_file}: not a join secret (32 lower-case letters and digits); delete it to have a new "
                "one made (the old token stops working)"
            )
        authority = cls(state_dir, ca, secret, clock, lifetime)
        authority.serve_addresses(addresses)
        return authority

    # Join tokens.

    def token(self) -> pki.JoinToken:
        """The current join token; StartupError when there is no join secret yet (read_only, never started)."""
        if not self._secret:
            raise StartupError(f"{self._dir / JOIN_SECRET_FILE}: no join secret yet; start the controller once")
        return pki.JoinToken(pki.ca_digest(self.ca.ca_pem), self._secret)

    def rotate(self) -> pki.JoinToken:
        """Replaces the join secret (the old token is refused from now on) and returns the new token."""
        self._secret = pki.new_secret()
        pki.write_file(self._dir / JOIN_SECRET_FILE, self._secret.encode(), private=True)
        log.info("join token rotated")
        return self.token()

    def secret_matches(self, secret: str) -> bool:
        """Whether secret is the current join secret (compared in constant time)."""
        return bool(secret) and hmac.compare_digest(secret.encode(errors="replace"), self._secret.encode())

    # Certificates.

    def sign_node(self, csr_pem: bytes, node_id: str) -> bytes:
        """Returns a node certificate for the CSR's key; PkiError when the CSR is unusable."""
        return self.ca.sign(pki.csr_public_key(csr_pem), pki.ROLE_AGENT, node_id, self._clock.now(), self.lifetime)

    def issue_admin(self, name: str, lifetime: datetime.timedelta = pki.ADMIN_CERT_LIFETIME) -> pki.Credentials:
        """Returns new admin credentials (key, certificate, CA certificate)."""
        pair = self.ca.issue(pki.ROLE_ADMIN, name, self._clock.now(), lifetime)
        return pki.Credentials(self.ca.ca_pem, pair)

    def serve_addresses(self, addresses: tuple[str, ...]) -> None:
        """Names these addresses (besides pki.CONTROLLER_NAME) in the serving certificate from now on."""
        with self._lock:
            if addresses != self._addresses:
                self._addresses = addresses
                self._serving = None

    def _issue_serving(self) -> pki.KeyPair:
        pair = self.ca.issue(
            pki.ROLE_CONTROLLER, "controller", self._clock.now(), self.lifetime, addresses=self._addresses
        )
        # The certificate only, for operators to inspect (openssl x509 -in ...); its key stays in memory.
        pki.write_file(self._dir / f"{SERVING_STEM}.crt", pair.cert_pem)
        return pair

    def _current_serving(self) -> tuple[pki.KeyPair, bool]:
        """Returns the serving pair, renewing it first once half its lifetime has passed; True when renewed."""
        with self._lock:
            current = self._serving
            if current is not None and self._clock.now() < pki.renew_due(current.certificate, self._clock.now()):
                return current, False
            self._serving = self._issue_serving()
            if current is not None:
                log.info("serving certificate renewed")
            return self._serving, current is not None

    def server_credentials(self, *, client_certificates: bool) -> grpc.ServerCredentials:
        """TLS for one port: with client_certificates, mutual TLS against the cluster CA (the API port);
        without, server authentication only (the join port).

        The certificate chain carries the CA certificate, so a joining host can find it and check it against
        the token's digest. The serving certificate is renewed at a handshake after half its lifetime.
        """
        pair, _ = self._current_serving()

        def configuration(current: pki.KeyPair) -> grpc.ServerCertificateConfiguration:
            return grpc.ssl_server_certificate_configuration(
                [(current.key_pem, current.cert_pem + self.ca.ca_pem)],
                root_certificates=self.ca.ca_pem if client_certificates else None,
            )

        served = [pair]

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            current, _ = self._current_serving()
            if current is served[0]:
                return None
            served[0] = current
            return configuration(current)

        # The stubs say the fetcher always returns a configuration; gRPC documents None as "unchanged".
        return grpc.dynamic_ssl_server_credentials(
            configuration(pair),
            fetch,  # type: ignore[arg-type]
            require_client_authentication=client_certificates,
        )

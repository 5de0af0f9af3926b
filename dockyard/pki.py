"""The cluster's certificates: one home for keys, the CA, signing, identities in certificates and join tokens.

Every certificate of a cluster carries who it is for in its subject: O is the cluster id, OU the role
(`agent`, `admin` or `controller`) and CN the node id, the admin's name or "controller". Nothing else about a
peer is ever believed: the controller reads node ids and roles from the verified client certificate only.

A join token is `DKY1-<sha256 of the CA certificate, hex>-<secret>`: the digest lets a joining host check the
controller before it sends anything (no trust on first use), the secret lets the controller check the host.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROLE_AGENT = "agent"
ROLE_ADMIN = "admin"
ROLE_CONTROLLER = "controller"
ROLES = (ROLE_AGENT, ROLE_ADMIN, ROLE_CONTROLLER)

# The name every client checks in the controller's certificate, whatever address it dialled (an agent behind
# NAT, an address the controller does not know it has). Only the controller's certificate carries it: the CA
# signs it into no other certificate.
CONTROLLER_NAME = "controller.dockyard.internal"

CA_LIFETIME = datetime.timedelta(days=3650)
DEFAULT_CERT_LIFETIME = datetime.timedelta(days=7)
MIN_CERT_LIFETIME = datetime.timedelta(minutes=1)
ADMIN_CERT_LIFETIME = datetime.timedelta(days=365)
# Certificates start this much in the past, so a host whose clock is a little behind accepts them at once.
BACKDATE = datetime.timedelta(minutes=5)
# A certificate is renewed once this share of its lifetime has passed (Swarm renews between 50 and 80 %).
RENEW_AT = 0.5

TOKEN_PREFIX = "DKY1"
_TOKEN = re.compile(r"DKY1-(?P<digest>[0-9a-f]{64})-(?P<secret>[0-9a-z]{32})")
_SECRET_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
SECRET = re.compile(r"[0-9a-z]{32}")  # a join secret, whole (fullmatch)

# File names, in a controller's state dir, an agent's state dir and a CLI credentials dir alike.
CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
ADMIN_STEM = "admin"  # admin.crt and admin.key in a CLI credentials dir
NODE_STEM = "node"  # node.crt and node.key in an agent's state dir
CLUSTER_FILE = "cluster.json"  # an agent's membership, written by `dockyard-agent join`


class PkiError(Exception):
    """A certificate, key, CSR or token is unusable; the message names it and the fix."""


@dataclass(frozen=True)
class Identity:
    """Who a certificate is for: the cluster, the role and the name (node id for agents)."""

    cluster_id: str
    role: str
    name: str


@dataclass(frozen=True)
class KeyPair:
    """A PEM private key and its PEM certificate."""

    key_pem: bytes
    cert_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        """The certificate, parsed."""
        return x509.load_pem_x509_certificate(self.cert_pem)

    def belong_together(self) -> bool:
        """Whether the certificate is for this key (a pair half-replaced by a crash is not)."""
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        return bool(key.public_key().public_bytes(*der) == self.certificate.public_key().public_bytes(*der))


@dataclass(frozen=True)
class Credentials:
    """What a client presents and trusts: its key pair and the cluster CA's certificate."""

    ca_pem: bytes
    pair: KeyPair

    def save(self, directory: Path, stem: str) -> None:
        """Writes ca.crt, <stem>.crt and <stem>.key (0600) into directory, each file atomically."""
        write_file(directory / CA_CERT_FILE, self.ca_pem)
        write_file(directory / f"{stem}.key", self.pair.key_pem, private=True)
        write_file(directory / f"{stem}.crt", self.pair.cert_pem)

    @classmethod
    def load(cls, directory: Path, stem: str) -> Credentials:
        """Reads what save() wrote; PkiError naming the missing or damaged file."""
        ca = read_file(directory / CA_CERT_FILE)
        pair = KeyPair(read_file(directory / f"{stem}.key"), read_file(directory / f"{stem}.crt"))
        try:
            x509.load_pem_x509_certificate(ca)
            together = pair.belong_together()  # parsed here to fail naming the files, not later in a handshake
        except (ValueError, TypeError) as exc:
            raise PkiError(
                f"{directory}: a key or certificate there is damaged ({exc}); join or fetch it again"
            ) from None
        if not together:
            raise PkiError(f"{directory}: {stem}.crt is not the certificate of {stem}.key")
        return cls(ca, pair)


def write_file(path: Path, data: bytes, *, private: bool = False) -> None:
    """Writes data to path atomically; a private file (a key, a secret) is created 0600 and stays so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A temporary name of its own: two writers of one file (a tool and the controller) never share one.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600 if private else 0o644)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_file(path: Path) -> bytes:
    """Reads a credentials file; PkiError naming it when it is missing or unreadable."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PkiError(f"{path}: {exc.strerror or exc}") from None


def new_key() -> ec.EllipticCurvePrivateKey:
    """Returns a new P-256 key: small, fast to sign with, and what every TLS stack speaks."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Returns the key as unencrypted PKCS#8 PEM (kept 0600 on disk)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    """Returns the certificate as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def ca_digest(ca_pem: bytes) -> str:
    """Returns the hex SHA-256 of the CA certificate's DER form, as join tokens carry it."""
    cert = x509.load_pem_x509_certificate(ca_pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _subject(identity: Identity) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, identity.cluster_id),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.role),
            x509.NameAttribute(NameOID.COMMON_NAME, identity.name),
        ]
    )


def create_ca(cluster_id: str, now: datetime.datetime) -> KeyPair:
    """Returns a new self-signed cluster CA whose subject names the cluster."""
    key = new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id),
            x509.NameAttribute(NameOID.COMMON_NAME, "Dockyard cluster CA"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(key_pem(key), cert_pem(cert))


def create_csr(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Returns a PEM CSR for key; its subject is ignored (the controller decides who the certificate is for)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dockyard")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def csr_public_key(csr_pem: bytes) -> ec.EllipticCurvePublicKey:
    """Returns the public key of a CSR whose self-signature holds; PkiError otherwise."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise PkiError(f"csr: not a PEM certificate signing request ({exc})") from None
    if not csr.is_signature_valid:
        raise PkiError("csr: its signature does not match its key")
    public = csr.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
        raise PkiError("csr: the key must be EC P-256")
    return public


class Authority:
    """The cluster CA: signs certificates for the controller, agents and admins."""

    def __init__(self, pair: KeyPair) -> None:
        self.pair = pair
        self.certificate = pair.certificate
        key = serialization.load_pem_private_key(pair.key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError("ca.key: not an EC key")
        self._key = key
        organization = self.certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        if not organization:
            raise PkiError("ca.crt: its subject names no cluster (O=)")
        self.cluster_id = str(organization[0].value)

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate, PEM."""
        return self.pair.cert_pem

    def sign(
        self,
        public_key: ec.EllipticCurvePublicKey,
        role: str,
        name: str,
        now: datetime.datetime,
        lifetime: datetime.timedelta,
        *,
        addresses: tuple[str, ...] = (),
    ) -> bytes:
        """Returns a PEM certificate for public_key as (this cluster, role, name), valid for lifetime from now.

        The controller's certificate (role controller) also names CONTROLLER_NAME and the given addresses.
        """
        if role not in ROLES:
            raise PkiError(f"role: must be one of {', '.join(ROLES)}, got {role!r}")
        usage = ExtendedKeyUsageOID.SERVER_AUTH if role == ROLE_CONTROLLER else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_subject(Identity(self.cluster_id, role, name)))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(min(now + lifetime, self.certificate.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if role == ROLE_CONTROLLER:
            builder = builder.add_extension(x509.SubjectAlternativeName(_names(addresses)), critical=False)
        return cert_pem(builder.sign(self._key, hashes.SHA256()))

    def issue(
        self, role: str, name: str, now: datetime.datetime, lifetime: datetime.timedelta, **kwargs: tuple[str, ...]
    ) -> KeyPair:
        """Returns a new key and a certificate for it (for the controller itself, and admins)."""
        key = new_key()
        return KeyPair(key_pem(key), self.sign(key.public_key(), role, name, now, lifetime, **kwargs))


def _names(addresses: tuple[str, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(CONTROLLER_NAME), x509.DNSName("localhost")]
    for address in addresses:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            if address and x509.DNSName(address) not in names:
                names.append(x509.DNSName(address))
    return names


def identity_of(cert: x509.Certificate) -> Identity:
    """Returns the (cluster, role, name) a certificate's subject carries; PkiError when one is missing."""
    parts = []
    for oid in (NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME, NameOID.COMMON_NAME):
        found = cert.subject.get_attributes_for_oid(oid)
        if len(found) != 1:
            raise PkiError("certificate: its subject must carry exactly one O, OU and CN")
        parts.append(str(found[0].value))
    return Identity(*parts)


def identity_of_pem(pem: bytes) -> Identity:
    """identity_of for a PEM certificate, as gRPC's auth context hands it over."""
    try:
        return identity_of(x509.load_pem_x509_certificate(pem))
    except ValueError as exc:
        raise PkiError(f"certificate: not PEM ({exc})") from None


def renew_due(cert: x509.Certificate, now: datetime.datetime) -> datetime.datetime:
    """Returns when a certificate should be renewed: once RENEW_AT of its lifetime has passed."""
    start, end = cert.not_valid_before_utc + BACKDATE, cert.not_valid_after_utc
    if end <= start:
        return now
    return start + (end - start) * RENEW_AT


@dataclass(frozen=True)
class JoinToken:
    """A parsed join token."""

    ca_digest: str
    secret: str

    def __str__(self) -> str:
        return f"{TOKEN_PREFIX}-{self.ca_digest}-{self.secret}"


def new_secret() -> str:
    """Returns a new 32-character join secret (about 165 bits)."""
    return "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(32))


def parse_token(text: str) -> JoinToken:
    """Parses `DKY1-<64 hex>-<32 [0-9a-z]>`; PkiError naming what is wrong and how to get a good one."""
    match = _TOKEN.fullmatch(text.strip())
    if match is None:
        raise PkiError(
            "--token: not a Dockyard join token (expected DKY1-<64 hex digits>-<32 letters and digits>); "
            "print one on the controller with `dockyard join-token`"
        )
    return JoinToken(match["digest"], match["secret"])


def chain_ca_matching(chain_der: list[bytes], digest: str) -> bytes | None:
    """Returns the PEM of the certificate in a presented chain whose digest is the token's, if the leaf is its.

    The leaf (first) must be directly signed by that certificate, so a chain that merely carries the real CA
    certificate beside a stranger's leaf is refused.
    """
    if not chain_der:
        return None
    certs = []
    for der in chain_der:
        try:
            certs.append(x509.load_der_x509_certificate(der))
        except ValueError:
            return None
    for cert in certs:
        if hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest() != digest:
            continue
        try:
            certs[0].verify_directly_issued_by(cert)
        except (ValueError, TypeError, InvalidSignature):
            return None
        return cert_pem(cert)
    return None

"""The controller's data key: seals secrets and registry passwords before they are stored.

The key is 32 random bytes (AES-256-GCM) in the controller's state dir, beside the CA key and kept as it is
(0600, written atomically by dockyard.pki.write_file), made at the controller's first start. Sealed data is
the nonce (12 bytes) followed by the ciphertext and its tag. The associated data names what was sealed
(kind and name), so a sealed value copied onto another object does not open there.

The store alone never holds the data in clear, so a copy of controller.db is not a copy of the secrets;
a backup needs data.key too, and a store restored without it cannot be unsealed (the controller refuses
to start then rather than make a new key beside data it can never open: Sealer.open's sealed_objects).

A sealed object's digest (Secret.digest) is an HMAC-SHA256 under a second key derived from the data key
(HKDF), not a plain hash: a plain hash of a password served by every API call could be checked against
guesses offline. Two digests made by one controller compare as the data does.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import Final

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from controller.errors import StartupError
from dockyard import pki

__all__ = [
    "DATA_KEY_FILE",
    "DIGEST_PREFIX",
    "KEY_BYTES",
    "NONCE_BYTES",
    "SealError",
    "Sealer",
    "registry_context",
    "secret_context",
]

log = structlog.get_logger()

DATA_KEY_FILE: Final = "data.key"
KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
DIGEST_PREFIX: Final = "hmac-sha256:"
# HKDF's info for the digest key: a key for one purpose, never the sealing key itself.
_DIGEST_INFO: Final = b"dockyard data digest v1"


class SealError(Exception):
    """Sealed data does not open with this key (another key, another object, or damaged)."""


class Sealer:
    """Seals and unseals with one AES-GCM key; never logs or returns the data it handles."""

    def __init__(self, key: bytes) -> None:
        """Uses `key` (KEY_BYTES long)."""
        if len(key) != KEY_BYTES:
            raise ValueError(f"a data key is {KEY_BYTES} bytes, not {len(key)}")
        self._aead = AESGCM(key)
        self._digest_key = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=_DIGEST_INFO).derive(key)

    @classmethod
    def open(cls, state_dir: Path, *, sealed_objects: int = 0) -> Sealer:
        """Loads state_dir/data.key, making it (0600) first when it is missing and nothing sealed is stored.

        StartupError naming the file when it is missing while the store holds `sealed_objects` (> 0) sealed
        with it, and when it is unreadable or not a key.
        """
        path = state_dir / DATA_KEY_FILE
        if not path.exists():
            if sealed_objects:
                raise StartupError(
                    f"{path}: missing, and the store holds {sealed_objects} secret(s) or registry credential(s) "
                    "sealed with it; restore data.key from the backup made with the store (a new key would "
                    "never open them)"
                )
            pki.write_file(path, os.urandom(KEY_BYTES), private=True)
            log.info("data key created", path=str(path))
        try:
            key = pki.read_file(path)
        except pki.PkiError as exc:
            raise StartupError(f"the data key is unreadable: {exc}") from None
        if len(key) != KEY_BYTES:
            raise StartupError(
                f"{path}: not a data key ({len(key)} bytes, not {KEY_BYTES}); restore it from the backup made "
                "with the store (without it no stored secret can be read)"
            )
        return cls(key)

    def seal(self, data: bytes, what: str) -> bytes:
        """Returns data encrypted under a fresh nonce, bound to `what` (such as "secret:db_password")."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, data, what.encode())

    def digest(self, data: bytes, what: str) -> str:
        """Returns "hmac-sha256:<hex>" of data bound to `what`, under the key derived from the data key."""
        context = what.encode()
        message = len(context).to_bytes(4, "big") + context + data
        return DIGEST_PREFIX + hmac.new(self._digest_key, message, hashlib.sha256).hexdigest()

    def unseal(self, sealed: bytes, what: str) -> bytes:
        """Returns the data sealed for `what`; SealError when it was sealed with another key or for another object."""
        if len(sealed) < NONCE_BYTES + 16:
            raise SealError(f"{what}: sealed data too short to be ours")
        try:
            return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], what.encode())
        except InvalidTag:
            raise SealError(f"{what}: does not open with this controller's data key") from None


def secret_context(name: str) -> str:
    """The associated data of a secret's sealed data."""
    return f"secret:{name}"


def registry_context(server: str) -> str:
    """The associated data of a registry credential's sealed password."""
    return f"registry:{server}"

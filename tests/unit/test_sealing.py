"""The data key: sealing round trip, refusal of another key or object, the key file's mode and its checks."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from controller.errors import StartupError
from controller.sealing import DATA_KEY_FILE, KEY_BYTES, NONCE_BYTES, Sealer, SealError, secret_context

DATA = b"hunter2\x00\xffbinary too"


def test_round_trip_with_the_key_made_at_first_start(tmp_path: Path) -> None:
    sealer = Sealer.open(tmp_path)
    sealed = sealer.seal(DATA, secret_context("db_password"))
    assert DATA not in sealed
    assert len(sealed) == NONCE_BYTES + len(DATA) + 16
    # The key on disk is what a restarted controller opens it with.
    assert Sealer.open(tmp_path).unseal(sealed, secret_context("db_password")) == DATA


def test_every_seal_has_its_own_nonce(tmp_path: Path) -> None:
    sealer = Sealer.open(tmp_path)
    assert sealer.seal(DATA, "x") != sealer.seal(DATA, "x")


def test_the_key_file_is_private_and_kept(tmp_path: Path) -> None:
    Sealer.open(tmp_path)
    path = tmp_path / DATA_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_bytes()
    assert len(key) == KEY_BYTES
    Sealer.open(tmp_path)
    assert path.read_bytes() == key  # not replaced at the next start


def test_another_key_is_refused(tmp_path: Path) -> None:
    sealed = Sealer.open(tmp_path / "a").seal(DATA, "secret:x")
    with pytest.raises(SealError, match="does not open with this controller's data key"):
        Sealer.open(tmp_path / "b").unseal(sealed, "secret:x")


def test_sealed_data_of_one_object_does_not_open_as_another(tmp_path: Path) -> None:
    sealer = Sealer.open(tmp_path)
    sealed = sealer.seal(DATA, secret_context("a"))
    with pytest.raises(SealError):
        sealer.unseal(sealed, secret_context("b"))


def test_tampered_or_short_data_is_refused(tmp_path: Path) -> None:
    sealer = Sealer.open(tmp_path)
    sealed = bytearray(sealer.seal(DATA, "x"))
    sealed[-1] ^= 1
    with pytest.raises(SealError):
        sealer.unseal(bytes(sealed), "x")
    with pytest.raises(SealError, match="too short"):
        sealer.unseal(b"abc", "x")


def test_a_missing_key_with_sealed_objects_in_the_store_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match=r"data.key: missing, and the store holds 2 secret"):
        Sealer.open(tmp_path, sealed_objects=2)
    assert not (tmp_path / DATA_KEY_FILE).exists()


def test_a_damaged_key_file_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / DATA_KEY_FILE).write_bytes(b"short")
    with pytest.raises(StartupError, match="not a data key"):
        Sealer.open(tmp_path)


def test_a_digest_is_keyed_by_the_data_key_and_bound_to_the_object(tmp_path: Path) -> None:
    sealer = Sealer.open(tmp_path / "a")
    digest = sealer.digest(DATA, secret_context("pw"))
    assert digest.startswith("hmac-sha256:") and len(digest) == len("hmac-sha256:") + 64
    assert digest == Sealer.open(tmp_path / "a").digest(DATA, secret_context("pw"))  # stable across starts
    assert hashlib.sha256(DATA).hexdigest() not in digest  # not a plain hash a guess can be checked against
    assert digest != sealer.digest(DATA + b"!", secret_context("pw"))
    assert digest != sealer.digest(DATA, secret_context("other"))
    assert digest != Sealer.open(tmp_path / "b").digest(DATA, secret_context("pw"))  # another controller's key

"""The PKI's checks that stand between a stranger and the cluster: chains against a token's digest, whose call
needs which role, key and certificate pairs, tokens."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from agent.identity import PREVIOUS_STEM, NotJoined, load_credentials
from controller.security.guard import required_role
from dockyard import pki

NOW = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)


def der(pem: bytes) -> bytes:
    return pki.KeyPair(b"", pem).certificate.public_bytes(serialization.Encoding.DER)


def test_a_chain_passes_only_with_a_leaf_signed_by_the_tokens_ca() -> None:
    ca = pki.Authority(pki.create_ca("c1", NOW))
    stranger = pki.Authority(pki.create_ca("c1", NOW))
    digest = pki.ca_digest(ca.ca_pem)
    real_leaf = ca.issue(pki.ROLE_CONTROLLER, "controller", NOW, pki.DEFAULT_CERT_LIFETIME).cert_pem
    fake_leaf = stranger.issue(pki.ROLE_CONTROLLER, "controller", NOW, pki.DEFAULT_CERT_LIFETIME).cert_pem
    assert pki.chain_ca_matching([der(real_leaf), der(ca.ca_pem)], digest) == ca.ca_pem
    # A man in the middle can show the real CA certificate, but not a leaf it signed for his own key.
    assert pki.chain_ca_matching([der(fake_leaf), der(ca.ca_pem)], digest) is None
    assert pki.chain_ca_matching([der(fake_leaf), der(stranger.ca_pem)], digest) is None
    assert pki.chain_ca_matching([], digest) is None
    assert pki.chain_ca_matching([b"garbage"], digest) is None


@pytest.mark.parametrize(
    ("method", "role"),
    [
        ("/dockyard.v1.JoinService/Join", None),
        ("/grpc.health.v1.Health/Check", None),
        ("/grpc.health.v1.Health/Watch", pki.ROLE_ADMIN),
        ("/dockyard.v1.AgentService/Session", pki.ROLE_AGENT),
        ("/dockyard.v1.AgentService/Renew", pki.ROLE_AGENT),
        ("/dockyard.v1.ControllerService/ApplyService", pki.ROLE_ADMIN),
        ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", pki.ROLE_ADMIN),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", pki.ROLE_ADMIN),
        ("/dockyard.v1.SomethingNew/Call", pki.ROLE_ADMIN),
        ("/dockyard.v1.JoinService/SomethingNew", pki.ROLE_ADMIN),
    ],
)
def test_every_method_but_join_and_health_check_needs_a_role(method: str, role: str | None) -> None:
    assert required_role(method) == role


def test_tokens_parse_whole_and_only_whole() -> None:
    token = pki.JoinToken("a" * 64, "b" * 32)
    assert pki.parse_token(f" {token}\n") == token
    for bad in (f"{token}x", f"{token}\nDKY1", "DKY1-" + "a" * 64, f"DKY2-{'a' * 64}-{'b' * 32}"):
        with pytest.raises(pki.PkiError, match="--token"):
            pki.parse_token(bad)


def test_a_half_renewed_pair_falls_back_to_the_previous_one(tmp_path: Path) -> None:
    ca = pki.Authority(pki.create_ca("c1", NOW))
    old = pki.Credentials(ca.ca_pem, ca.issue(pki.ROLE_AGENT, "n1", NOW, pki.DEFAULT_CERT_LIFETIME))
    new = pki.Credentials(ca.ca_pem, ca.issue(pki.ROLE_AGENT, "n1", NOW, pki.DEFAULT_CERT_LIFETIME))
    old.save(tmp_path, PREVIOUS_STEM)
    new.save(tmp_path, "node")
    assert load_credentials(tmp_path) == new
    # A crash between the renewed key and its certificate: the new key beside the old certificate.
    pki.write_file(tmp_path / "node.crt", old.pair.cert_pem)
    with pytest.raises(pki.PkiError, match=r"node\.crt is not the certificate of node\.key"):
        pki.Credentials.load(tmp_path, "node")
    assert load_credentials(tmp_path) == old
    (tmp_path / f"{PREVIOUS_STEM}.key").unlink()
    with pytest.raises(NotJoined, match="join this host again"):
        load_credentials(tmp_path)


def test_a_join_answer_is_taken_only_for_this_key_node_and_ca() -> None:
    from agent.identity import join_request, joined_credentials
    from dockyard.v1 import agent_pb2 as apb

    ca = pki.Authority(pki.create_ca("c1", NOW))
    token = pki.JoinToken(pki.ca_digest(ca.ca_pem), "s" * 32)
    key, request = join_request(token, "h1")
    assert request.hostname == "h1" and request.secret == token.secret
    signed = ca.sign(pki.csr_public_key(request.csr), pki.ROLE_AGENT, "n1", NOW, pki.DEFAULT_CERT_LIFETIME)

    def answer(**changes: object) -> apb.JoinResponse:
        fields = {"node_id": "n1", "certificate": signed, "ca_certificate": ca.ca_pem, "cluster_id": "c1"}
        return apb.JoinResponse(**{**fields, **changes})  # type: ignore[arg-type]

    assert joined_credentials(token, key, answer()).pair.cert_pem == signed
    other_key = ca.issue(pki.ROLE_AGENT, "n1", NOW, pki.DEFAULT_CERT_LIFETIME).cert_pem
    stranger = pki.Authority(pki.create_ca("c1", NOW)).ca_pem
    for bad, reason in (
        (answer(certificate=other_key), "another key or node"),
        (answer(node_id="n2"), "another key or node"),
        (answer(ca_certificate=stranger), "another CA"),
        (answer(certificate=b"junk"), "unusable certificate"),
    ):
        with pytest.raises(NotJoined, match=reason):
            joined_credentials(token, key, bad)

"""The one place a client channel to the controller is made: mutual TLS with credentials, plaintext without."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from dockyard import pki

Options = Sequence[tuple[str, str | int]]


def channel_credentials(credentials: pki.Credentials) -> grpc.ChannelCredentials:
    """TLS that trusts only the cluster CA and presents the credentials' certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=credentials.ca_pem,
        private_key=credentials.pair.key_pem,
        certificate_chain=credentials.pair.cert_pem,
    )


def tls_options() -> list[tuple[str, str | int]]:
    """The options every TLS channel to a controller sets.

    The controller's certificate is checked for pki.CONTROLLER_NAME, whatever address was dialled: the
    cluster CA signs that name into the controller's certificate only, and an agent may reach the controller
    through an address (NAT, a second interface) the certificate could not list.
    """
    return [("grpc.ssl_target_name_override", pki.CONTROLLER_NAME)]


def open_channel(address: str, credentials: pki.Credentials | None, options: Options = ()) -> grpc.aio.Channel:
    """Returns a channel to address: mutual TLS when credentials are given, plaintext (--insecure) otherwise."""
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    return grpc.aio.secure_channel(address, channel_credentials(credentials), options=[*options, *tls_options()])


def open_server_tls_channel(address: str, ca_pem: bytes, options: Options = ()) -> grpc.aio.Channel:
    """Returns a channel that checks the controller against ca_pem and presents no certificate (joins)."""
    return grpc.aio.secure_channel(
        address, grpc.ssl_channel_credentials(root_certificates=ca_pem), options=[*options, *tls_options()]
    )

"""Channels to a Segmenta server: plaintext (loopback) or TLS, with the API
key sent on every call as ``authorization: Bearer KEY``."""
from __future__ import annotations

import collections
import os
import pathlib
from dataclasses import dataclass
from typing import Optional, Union

import grpc

PathLike = Union[str, os.PathLike]

# Large enough for any response the server sends under its own message limit
# (which it reports in GetInfo); the server, not the client, sets the bound.
_MAX_RECEIVE = 1 << 30


@dataclass(frozen=True)
class Tls:
    """TLS settings. ``ca_cert``: the CA to trust (default: the system's);
    ``client_cert`` and ``client_key``: for mutual TLS; ``server_name``: the
    name the server's certificate must carry, when not the host in the
    address."""

    ca_cert: Optional[PathLike] = None
    client_cert: Optional[PathLike] = None
    client_key: Optional[PathLike] = None
    server_name: Optional[str] = None

    def __post_init__(self):
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together")


class _CallDetails(
        collections.namedtuple(
            "_CallDetails",
            ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
        grpc.ClientCallDetails):
    pass


class BearerInterceptor(grpc.UnaryUnaryClientInterceptor,
                        grpc.UnaryStreamClientInterceptor,
                        grpc.StreamUnaryClientInterceptor,
                        grpc.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer TOKEN`` to every call, of every kind.

    For plaintext channels, where grpcio refuses call credentials (TLS
    channels use :func:`grpc.access_token_call_credentials` instead)."""

    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details):
        metadata = [m for m in (details.metadata or ()) if m[0] != "authorization"]
        metadata.append(self._header)
        return _CallDetails(
            details.method, details.timeout, metadata, details.credentials,
            getattr(details, "wait_for_ready", None), getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._with_token(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._with_token(client_call_details), request_iterator)


def speaks_tls(address: str, wait: float = 2.0) -> bool:
    """Whether ``address`` answers the HTTP/2 preface with a TLS record (an
    alert or a handshake): then a plaintext client's failure there means
    the server wants TLS, for sure, not as a guess."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=wait) as s:
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            first = s.recv(1)
    except (OSError, ValueError):
        return False
    return first[:1] in (b"\x15", b"\x16")


def connect(address: str, token: Optional[str] = None,
            tls: Union[None, bool, Tls] = None, options=()) -> grpc.Channel:
    """A channel to ``address`` (``host:port``). ``tls``: ``None``/``False``
    for plaintext, ``True`` for TLS trusting the system's CAs, or a
    :class:`Tls`. Every call carries ``token`` when given."""
    options = [("grpc.max_receive_message_length", _MAX_RECEIVE), *options]
    if tls is None or tls is False:
        channel = grpc.insecure_channel(address, options=options)
        if token:
            channel = grpc.intercept_channel(channel, BearerInterceptor(token))
        return channel
    if tls is True:
        tls = Tls()

    def read(path):
        return pathlib.Path(path).read_bytes() if path is not None else None

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(tls.ca_cert),
        private_key=read(tls.client_key),
        certificate_chain=read(tls.client_cert))
    if token:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(token))
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.secure_channel(address, credentials, options=options)

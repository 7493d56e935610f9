"""TLS for the model server's gRPC port from TF Serving's `--ssl_config_file`: a text-format
`tensorflow.serving.SSLConfig` (`config/ssl_config.proto`) with `server_key`, `server_cert`
(PEM contents), `custom_ca` (PEM, the CAs client certificates must chain to) and
`client_verify` (require and verify a client certificate). As in TF Serving, the REST port has
no TLS: put it behind a TLS-terminating proxy, or keep it on a private address.

The `tensorflow-serving-api` package ships no `ssl_config_pb2`, so the message is declared here
with the same fields and numbers, and parsed with protobuf's own text format.

Example:
    >>> config = parse_ssl_config('server_key: "K" server_cert: "C" client_verify: false')
    >>> config.server_key, config.custom_ca, config.client_verify
    ('K', '', False)
"""

from __future__ import annotations

import dataclasses
import functools


@dataclasses.dataclass(frozen=True)
class SslConfig:
    server_key: str
    server_cert: str
    custom_ca: str = ""
    client_verify: bool = False


@functools.cache
def _message_class():
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="tfdialogpt/ssl_config.proto", package="tensorflow.serving")
    file.syntax = "proto3"
    message = file.message_type.add(name="SSLConfig")
    for number, (name, kind) in enumerate(
        [("server_key", field.TYPE_STRING), ("server_cert", field.TYPE_STRING), ("custom_ca", field.TYPE_STRING)]
        + [("client_verify", field.TYPE_BOOL)],
        start=1,
    ):
        message.field.add(name=name, number=number, type=kind, label=field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.SSLConfig"))


def parse_ssl_config(text: str, source: str = "the SSL config") -> SslConfig:
    """An `SSLConfig` from its text format; raises `ValueError` naming what is wrong."""
    from google.protobuf import text_format

    proto = _message_class()()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as err:
        raise ValueError(f"{source}: not an SSLConfig text proto: {err}") from None
    config = SslConfig(proto.server_key, proto.server_cert, proto.custom_ca, proto.client_verify)
    if not config.server_key or not config.server_cert:
        raise ValueError(f"{source}: server_key and server_cert (PEM contents) are both required")
    if config.client_verify and not config.custom_ca:
        raise ValueError(f"{source}: client_verify needs custom_ca, the CA client certificates must chain to")
    return config


def read_ssl_config(path: str) -> SslConfig:
    """`parse_ssl_config` of a file (TF Serving's `--ssl_config_file`)."""
    with open(path, encoding="utf-8") as f:
        return parse_ssl_config(f.read(), path)


def server_credentials(config: SslConfig):
    """The `grpc.ServerCredentials` of a config, as TF Serving builds them."""
    import grpc

    return grpc.ssl_server_credentials(
        [(config.server_key.encode(), config.server_cert.encode())],
        root_certificates=config.custom_ca.encode() or None,
        require_client_auth=config.client_verify,
    )

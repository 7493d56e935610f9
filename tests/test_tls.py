"""TLS on the gRPC port from TF Serving's SSLConfig text file (`--ssl-config-file`), with
certificates made by openssl at test time: a client must trust the server's CA, and with
`client_verify` present a certificate of the configured CA."""

from __future__ import annotations

import shutil
import subprocess
import time

import grpc
import pytest
from serving_utils import MODEL_NAME, ServerProcess

from tfdialogpt.serving.client import Client, ServingError
from tfdialogpt.serving.tls import parse_ssl_config

TIMEOUT = 60


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test certificates")
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=test-ca", cwd=d)  # fmt: skip
    for name, extra in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)  # fmt: skip
        (d / f"{name}.ext").write_text(extra + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)  # fmt: skip
    return {p.name: p.read_bytes() for p in d.iterdir()}


def test_ssl_config_files_are_checked():
    config = parse_ssl_config('server_key: "k"\nserver_cert: "c"\n# a comment\ncustom_ca: "a" client_verify: true')
    assert (config.server_key, config.server_cert, config.custom_ca, config.client_verify) == ("k", "c", "a", True)
    for text, message in (
        ('server_key: "k"', "server_key and server_cert"),
        ('server_key: "k" server_cert: "c" client_verify: true', "client_verify needs custom_ca"),
        ('server_kee: "k"', "not an SSLConfig text proto"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_ssl_config(text)


def test_tls_with_client_verification(pki, shared_export, tmp_path):
    config = tmp_path / "ssl.config"
    fields = {"server_key": pki["server.key"], "server_cert": pki["server.pem"], "custom_ca": pki["ca.pem"]}
    config.write_text("".join(f'{k}: "{v.decode().replace(chr(10), chr(92) + "n")}"\n' for k, v in fields.items()))
    config.write_text(config.read_text() + "client_verify: true\n")
    base = tmp_path / MODEL_NAME
    shutil.copytree(shared_export.path, base / "1")
    server = ServerProcess(base, tmp_path / "server.log", "--ssl-config-file", str(config))
    trusted = grpc.ssl_channel_credentials(
        root_certificates=pki["ca.pem"], private_key=pki["client.key"], certificate_chain=pki["client.pem"]
    )
    try:
        with Client(server.target, MODEL_NAME, timeout=5, credentials=trusted) as client:
            deadline = time.monotonic() + 300
            while True:
                assert server.process.poll() is None, server.log()
                try:
                    if client.status().get(1, ("",))[0] == "AVAILABLE":
                        break
                except ServingError:
                    assert time.monotonic() < deadline, server.log()
                    time.sleep(0.3)
            assert isinstance(client.reply(["Hello"], max_new_tokens=4), str)
        # Plain text, a client that does not trust the CA, and one with no certificate: refused.
        untrusted = grpc.ssl_channel_credentials(root_certificates=pki["server.pem"])
        no_cert = grpc.ssl_channel_credentials(root_certificates=pki["ca.pem"])
        for credentials in (None, untrusted, no_cert):
            with Client(server.target, MODEL_NAME, timeout=TIMEOUT, credentials=credentials) as client:
                with pytest.raises(ServingError):
                    client.status()
    finally:
        assert server.terminate() == 0, server.log()

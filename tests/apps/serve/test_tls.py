"""``--certfile/--keyfile``: the node answers over TLS (a self-signed certificate made with openssl)."""

from __future__ import annotations

import shutil
import ssl
import subprocess

import pytest

from .test_durability import _free_port, _start, _stop, _wait_ready


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_the_node_serves_https_with_the_given_certificate(tmp_path, tokens_file):
    import httpx

    key, cert = tmp_path / "node.key", tmp_path / "node.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    port = _free_port()
    proc = _start(tmp_path / "data", port, tokens_file, "--certfile", str(cert), "--keyfile", str(key),
                  "--header-timeout", "0.5")
    try:
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=ssl.create_default_context(cafile=str(cert)), timeout=10) as https:
            _wait_ready(https, proc)
            assert https.get("/healthz").json() == {"status": "ok"}
            assert https.get("/v1/agents", headers={"Authorization": "Bearer t-read"}).status_code == 200
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as plain:
            with pytest.raises(httpx.TransportError):
                plain.get("/healthz")
        # --header-timeout over TLS: its clock runs from the end of the handshake; a head that stops
        # half-way is 408 (inside TLS), then the connection closes
        import socket

        context = ssl.create_default_context(cafile=str(cert))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            received = b""
            while chunk := tls.recv(65536):         # bounded: the socket's 10 s timeout raises
                received += chunk
            assert received.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and b"connection: close" in received
    finally:
        _stop(proc)

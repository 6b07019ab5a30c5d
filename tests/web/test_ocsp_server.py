"""The dedicated OCSP responder (`govpki ocsp serve`) for real: a subprocess with two
worker processes on one port, `openssl ocsp` and raw sockets as clients."""

from __future__ import annotations

import base64
import http.client
import os
import random
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.x509 import ocsp

from govpki.principal import SYSTEM
from tests.web.servers import served
from tests.web.test_ocsp_http import _request, openssl_ocsp, pki, serial_of  # noqa: F401  (pki: a fixture)
from web.container import Services

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def responder(services: Services, tmp_path: Path) -> Iterator[int]:
    """`govpki ocsp serve --listen 127.0.0.1:0` on the test's instance; yields its port."""
    env = {"GOVPKI_OCSP_WORKERS": "2"}
    with served(
        services.config, tmp_path, ["ocsp", "serve"], env, "/ocsp", lambda port: post(port, b"x")[0] == 200
    ) as port:
        yield port


def post(port: int, body: bytes, path: str = "/ocsp") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/ocsp-request"})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def raw(port: int, data: bytes) -> bytes:
    """Send ``data``, half-close, and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_openssl_good_then_revoked_with_reason(services: Services, pki: dict[str, Path], responder: int):  # noqa: F811
    a = str(pki["a"])
    for url in (f"http://127.0.0.1:{responder}/ocsp", f"http://127.0.0.1:{responder}"):  # POST /ocsp and POST /
        out = openssl_ocsp(pki, url, "-no_nonce", "-cert", a)
        assert f"{a}: good" in out and "Response verify OK" in out
    out = openssl_ocsp(pki, f"http://127.0.0.1:{responder}/ocsp", "-cert", a, "-resp_text")  # nonce: signed now
    assert f"{a}: good" in out and "Response verify OK" in out and "OCSP Nonce" in out
    with services.sessions() as session:
        services.revocation.revoke(session, SYSTEM, serial_of(pki["a"]), reason="keyCompromise")
        session.commit()
    out = openssl_ocsp(pki, f"http://127.0.0.1:{responder}/ocsp", "-no_nonce", "-cert", a)
    assert f"{a}: revoked" in out and "Reason: keyCompromise" in out and "Response verify OK" in out


def test_get_base64_and_keep_alive(services: Services, pki: dict[str, Path], responder: int):  # noqa: F811
    der = _request(pki)
    conn = http.client.HTTPConnection("127.0.0.1", responder, timeout=10)
    try:
        conn.request("GET", "/ocsp/" + base64.urlsafe_b64encode(der).decode().rstrip("="))
        first = conn.getresponse()
        body = first.read()
        assert first.status == 200 and first.getheader("Content-Type") == "application/ocsp-response"
        assert first.getheader("Connection") is None and first.getheader("Date")
        assert ocsp.load_der_ocsp_response(body).certificate_status == ocsp.OCSPCertStatus.GOOD
        assert "max-age=" in (first.getheader("Cache-Control") or "") and first.getheader("ETag")
        sock = conn.sock
        # a second request on the same connection: POST, with its own no-store answer
        conn.request("POST", "/ocsp", der, {"Content-Type": "application/ocsp-request"})
        second = conn.getresponse()
        assert conn.sock is sock and second.status == 200 and second.getheader("Cache-Control") == "no-store"
        assert second.read() == body
        conn.request("HEAD", "/ocsp/" + base64.b64encode(der).decode())
        third = conn.getresponse()
        assert third.status == 200 and third.getheader("Content-Length") == str(len(body)) and third.read() == b""
    finally:
        conn.close()
    # two pipelined requests in one write, then HTTP/1.0: answered in order, then closed
    one = b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(der), der)
    last = b"GET /ocsp/%s HTTP/1.0\r\n\r\n" % base64.b64encode(der)
    answer = raw(responder, one + last)
    assert answer.count(b"HTTP/1.1 200 OK") == 2 and answer.count(body) == 2
    assert answer.removesuffix(body).endswith(b"\r\n\r\n") and b"Connection: close" in answer


def test_bad_requests_get_clear_answers(pki: dict[str, Path], responder: int):  # noqa: F811
    status, headers, body = post(responder, b"not an OCSP request")
    assert status == 200 and headers["Content-Type"] == "application/ocsp-response"
    assert ocsp.load_der_ocsp_response(body).response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    get_bad = raw(responder, b"GET /ocsp/!!!notbase64 HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert get_bad.startswith(b"HTTP/1.1 200 OK") and get_bad.endswith(b"\x30\x03\x0a\x01\x01")
    assert raw(responder, b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    big = raw(responder, b"POST /ocsp HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n")
    assert big.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in big
    wrong = raw(responder, b"PUT /ocsp HTTP/1.1\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx")
    assert wrong.startswith(b"HTTP/1.1 405 ") and b"Allow: GET, HEAD, POST" in wrong
    chunked = raw(responder, b"POST /ocsp HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.1 411 ")
    assert raw(responder, b"GET /admin HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 404 ")
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(100))
    assert raw(responder, b"GET /ocsp/AA HTTP/1.1\r\n" + many + b"\r\n").startswith(b"HTTP/1.1 431 ")
    huge = b"X-Big: " + b"v" * 20_000 + b"\r\n"
    assert raw(responder, b"GET /ocsp/AA HTTP/1.1\r\n" + huge + b"\r\n").startswith(b"HTTP/1.1 431 ")
    long_url = b"GET /ocsp/" + b"A" * 9000 + b" HTTP/1.1\r\n\r\n"
    assert raw(responder, long_url).startswith(b"HTTP/1.1 414 ")


def test_garbage_never_kills_it(pki: dict[str, Path], responder: int):  # noqa: F811
    rng = random.Random(6960)
    der = _request(pki)
    prefixes = [b"", b"POST /ocsp HTTP/1.1\r\n", b"GET /ocsp/", b"POST /ocsp HTTP/1.1\r\nContent-Length: 9\r\n\r\n"]
    for i in range(40):
        data = prefixes[i % len(prefixes)] + rng.randbytes(rng.randint(1, 3000))
        with socket.create_connection(("127.0.0.1", responder), timeout=10) as sock:
            sock.sendall(data)
            if i % 2:  # some hang up at once, some wait for whatever comes back
                sock.shutdown(socket.SHUT_WR)
                sock.settimeout(10)
                while sock.recv(65536):
                    pass
    status, _headers, body = post(responder, der)
    assert status == 200 and ocsp.load_der_ocsp_response(body).certificate_status == ocsp.OCSPCertStatus.GOOD


def test_a_second_responder_on_the_same_port_refuses_to_start(services: Services, responder: int):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOVPKI_")}
    env.update({"GOVPKI_INSTANCE_DIR": str(services.config.instance_dir), "GOVPKI_DATABASE_URL": "sqlite://"})
    second = subprocess.run(
        [sys.executable, "-m", "web.cli", "ocsp", "serve", "--listen", f"127.0.0.1:{responder}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert second.returncode == 2 and "cannot listen" in second.stderr
    assert post(responder, b"x")[0] == 200


def test_the_hot_path_answers_like_the_general_path(pki: dict[str, Path], responder: int):  # noqa: F811
    der = _request(pki)

    def head_and_body(target: bytes, connection: bytes) -> tuple[list[bytes], bytes]:
        request = b"POST %s HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n" % (target, connection, len(der))
        head, _, body = raw(responder, request + der).partition(b"\r\n\r\n")
        return [line for line in head.split(b"\r\n") if not line.startswith(b"Date: ")], body

    for connection in (b"Connection: close\r\n", b""):  # closed after the answer, or kept open
        hot = head_and_body(b"/ocsp", connection)  # answered from on_message_complete
        general = head_and_body(b"/ocsp?via=route", connection)  # the same request through route() and reply()
        assert hot == general
        assert hot[0][0] == b"HTTP/1.1 200 OK" and b"Cache-Control: no-store" in hot[0]
        assert (b"Connection: close" in hot[0]) == bool(connection)
        assert ocsp.load_der_ocsp_response(hot[1]).certificate_status == ocsp.OCSPCertStatus.GOOD


class _Transport:
    def __init__(self) -> None:
        self.closed = False
        self.written = b""

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def test_idle_connections_are_swept_and_busy_ones_are_not(services: Services):
    import asyncio
    import concurrent.futures

    from web import ocsp_server

    loop = asyncio.new_event_loop()
    try:
        worker = ocsp_server._Worker(services.ocsp, concurrent.futures.ThreadPoolExecutor(1))
        connections = [ocsp_server._Connection(worker, loop) for _ in range(3)]
        transports = [_Transport() for _ in connections]
        for connection, transport in zip(connections, transports, strict=True):
            connection.connection_made(transport)  # type: ignore[arg-type]
        idle, slow, signing = connections
        slow.data_received(b"POST /ocsp HTTP/1.1\r\nContent-Length: 5\r\n\r\nab")  # never completed
        signing.data_received(b"GET /ocsp/AA HTTP/1.1\r\n\r\n")  # answered (malformedRequest): kept alive
        assert transports[2].written.startswith(b"HTTP/1.1 200 OK") and not transports[2].closed
        signing.idle_since, signing._busy = None, True  # as while an answer is signed in the pool
        for _ in range(int(ocsp_server.IDLE_SECONDS) - 1):
            worker.sweep()
        assert not any(t.closed for t in transports)
        worker.sweep()  # no complete request for IDLE_SECONDS: closed, also one still arriving
        assert [t.closed for t in transports] == [True, True, False]
        idle.connection_lost(None)
        slow.connection_lost(None)
        assert worker.connections == {signing}
    finally:
        loop.close()

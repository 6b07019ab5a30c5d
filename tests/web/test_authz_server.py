"""The dedicated access decision server (`govpki authz serve`) for real: a subprocess with
two worker processes on one port, compared answer by answer with the Flask endpoints."""

from __future__ import annotations

import base64
import copy
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from cryptography import x509
from flask.testing import FlaskClient

from authz.applications import AUDIT_WRITE
from authz.certlogin import parse_trusted_proxies
from authz.decisions import AUTHZ_DECIDE, AUTHZ_DECIDE_ANY
from ca.models import RevocationReason
from govpki.errors import UnauthenticatedError
from govpki.principal import SYSTEM
from tests.authz.certlogin_helpers import header, issue_direct, pem
from tests.helpers import make_config
from tests.web.servers import served
from tests.web.test_decide_api import ITEM, POLICY
from web.app import create_app
from web.authz_server import CertificateCache, CredentialCache
from web.container import Services, build_services
from web.decide_core import BATCH_PATH, DECIDE_PATH, MAX_DECIDE_BODY

REPO = Path(__file__).resolve().parents[2]
REFRESH_MS = 300


@pytest.fixture
def svc(tmp_path: Path, database_url: str) -> Iterator[Services]:
    services = build_services(
        make_config(tmp_path / "instance", database_url, GOVPKI_AUTHZ_POLICY_REFRESH_MS=str(REFRESH_MS))
    )
    with services.sessions() as s:
        services.policy.load(s, SYSTEM, POLICY)
        s.commit()
    try:
        yield services
    finally:
        services.dispose()


@pytest.fixture
def flask_client(svc: Services) -> FlaskClient:
    return create_app(svc.config, services=svc).test_client()


@pytest.fixture
def server(svc: Services, tmp_path: Path) -> Iterator[int]:
    """`govpki authz serve --listen 127.0.0.1:0` on the test's instance; yields its port."""
    env = {"GOVPKI_AUTHZ_WORKERS": "2", "GOVPKI_AUTHZ_POLICY_REFRESH_MS": str(REFRESH_MS)}

    def answers(port: int) -> bool:
        return post(port, DECIDE_PATH, b"{}")[0] == 401

    with served(svc.config, tmp_path, ["authz", "serve"], env, DECIDE_PATH, answers) as port:
        yield port


def register(services: Services, name: str = "e-docs", scopes: tuple[str, ...] = (AUTHZ_DECIDE,)) -> dict[str, str]:
    with services.sessions() as s:
        app, secret = services.applications.register(s, SYSTEM, name=name, scopes=scopes)
        client_id = app.client_id
        s.commit()
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def client_id_of(creds: dict[str, str]) -> str:
    return base64.b64decode(creds["Authorization"].split()[1]).decode().split(":")[0]


def post(port: int, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json", **(headers or {})})
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


def test_answers_are_the_flask_endpoints_answers_byte_for_byte(svc: Services, flask_client: FlaskClient, server: int):
    creds = register(svc)
    writer = register(svc, "e-mail", (AUDIT_WRITE,))
    other_app = register(svc, "e-other", (AUTHZ_DECIDE,))
    gateway = register(svc, "gateway", (AUTHZ_DECIDE_ANY,))
    wrong = {"Authorization": "Basic " + base64.b64encode(f"{client_id_of(creds)}:nope".encode()).decode()}
    deny = copy.deepcopy(ITEM)
    deny["resource"]["attributes"]["prefecture"] = "6502"
    json_type = {"Content-Type": "application/json"}
    big = {**ITEM, "resource": {**ITEM["resource"], "id": "x" * MAX_DECIDE_BODY}}
    cases: list[tuple[str, Any, dict[str, str]]] = [
        (DECIDE_PATH, ITEM, creds),  # permit
        (DECIDE_PATH, deny, creds),  # deny by a failed condition
        (DECIDE_PATH, {**ITEM, "action": "delete"}, creds),  # deny: no rule
        (DECIDE_PATH, {**ITEM, "subject": "nobody", "resource": {**ITEM["resource"], "id": "中文"}}, creds),
        (BATCH_PATH, {"items": [ITEM, deny, ITEM]}, creds),
        (DECIDE_PATH, ITEM, gateway),
        (DECIDE_PATH, ITEM, {}),  # 401: no credentials
        (DECIDE_PATH, ITEM, wrong),  # 401: wrong secret
        (BATCH_PATH, {"items": [ITEM]}, {"Authorization": "Basic !!!"}),
        (DECIDE_PATH, ITEM, {"Authorization": "Bearer gpk_x"}),
        (DECIDE_PATH, ITEM, writer),  # 403: lacks the scope
        (DECIDE_PATH, ITEM, other_app),  # 403: another application
        (BATCH_PATH, {"items": [{**ITEM, "application": "e-other"}, ITEM]}, other_app),  # 403 items[1]
        (DECIDE_PATH, {**ITEM, "extra": 1}, creds),  # 422
        (DECIDE_PATH, {**ITEM, "subject": ""}, creds),
        (DECIDE_PATH, [ITEM], creds),
        (BATCH_PATH, {"items": []}, creds),
        (BATCH_PATH, {"items": [ITEM] * 1001}, creds),
        (DECIDE_PATH, big, creds),  # 413 (between the decide and the batch limit)
        (DECIDE_PATH, b'{"subject": ', creds),  # malformed JSON
        (DECIDE_PATH, b"subject=x", {**creds, "Content-Type": "text/plain"}),  # media type
    ]
    statuses = []
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=10)  # one kept-alive connection for all
    try:
        for path, body, headers in cases:
            data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
            sent = {**json_type, **headers}
            expected = flask_client.post(path, data=data, headers=sent)
            conn.request("POST", path, data, sent)
            got = conn.getresponse()
            got_body = got.read()
            assert got.status == expected.status_code, (path, body, got_body)
            assert got_body == expected.data, (path, got_body, expected.data)
            assert got.getheader("Content-Type") == expected.headers["Content-Type"]
            assert got.getheader("WWW-Authenticate") == expected.headers.get("WWW-Authenticate")
            assert got.getheader("Connection") is None  # kept alive through every answer
            statuses.append(got.status)
    finally:
        conn.close()
    assert statuses == [200] * 6 + [401] * 4 + [403] * 3 + [422] * 5 + [413, 422, 422]
    first = json.loads(flask_client.post(DECIDE_PATH, json=ITEM, headers=creds).data)
    assert first["decision"] == "permit" and first["rule"]["name"] == "e-docs/reader/read-own-prefecture"


def test_keep_alive_pipelining_and_connection_close(svc: Services, server: int):
    creds = register(svc)
    body = json.dumps(ITEM).encode()
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=10)
    try:
        sockets = set()
        for _ in range(5):
            conn.request("POST", DECIDE_PATH, body, {**creds, "Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 200 and json.loads(resp.read())["decision"] == "permit"
            assert resp.getheader("Connection") is None and resp.getheader("Date")
            sockets.add(id(conn.sock))
        assert len(sockets) == 1
    finally:
        conn.close()
    head = "POST {} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/json\r\n"
    one = (head.format(DECIDE_PATH, creds["Authorization"]) + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    batch = json.dumps({"items": [ITEM, ITEM]}).encode()
    last = (
        head.format(BATCH_PATH, creds["Authorization"]) + f"Connection: close\r\nContent-Length: {len(batch)}\r\n\r\n"
    ).encode() + batch
    answer = raw(server, one + one + last)  # three pipelined requests in one write, the last closes
    assert answer.count(b"HTTP/1.1 200 OK") == 3 and answer.count(b'"decision": "permit"') == 4
    assert answer.count(b"Connection: close") == 1 and answer.rstrip().endswith(b"]}")
    # HTTP/1.0: one answer, then closed
    old = (head.format(DECIDE_PATH, creds["Authorization"]) + f"Content-Length: {len(body)}\r\n\r\n").encode()
    answer = raw(server, old.replace(b"HTTP/1.1", b"HTTP/1.0") + body)
    assert answer.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in answer


def test_http_errors_get_clear_answers(svc: Services, server: int):
    creds = register(svc)
    status, headers, body = post(server, "/api/v1/other", b"{}", creds)
    assert status == 404 and headers["Content-Type"] == "application/problem+json"
    assert json.loads(body)["code"] == "http.404"
    get = raw(server, f"GET {DECIDE_PATH} HTTP/1.1\r\nConnection: close\r\n\r\n".encode())
    assert get.startswith(b"HTTP/1.1 405 ") and b"Allow: POST" in get and b'"code": "http.405"' in get
    huge = raw(server, f"POST {BATCH_PATH} HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n".encode())
    assert huge.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in huge
    assert b"larger than 1048576 bytes" in huge
    huge = raw(server, f"POST {DECIDE_PATH} HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n".encode())
    assert huge.startswith(b"HTTP/1.1 413 ") and f"larger than {MAX_DECIDE_BODY} bytes".encode() in huge
    chunked = raw(
        server, f"POST {DECIDE_PATH} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n".encode()
    )
    assert chunked.startswith(b"HTTP/1.1 411 ")
    assert raw(server, b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(100))
    assert raw(server, f"POST {DECIDE_PATH} HTTP/1.1\r\n".encode() + many + b"\r\n").startswith(b"HTTP/1.1 431 ")
    # a client that waits for 100 Continue gets it, then its answer
    body = json.dumps(ITEM).encode()
    with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
        sock.sendall(
            (
                f"POST {DECIDE_PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: {creds['Authorization']}\r\n"
                f"Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
        )
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")


def test_a_disabled_application_is_refused_after_the_refresh_interval(svc: Services, server: int):
    creds = register(svc)
    body = json.dumps(ITEM).encode()
    for _ in range(4):  # both workers have it cached (connections are spread over them)
        assert post(server, DECIDE_PATH, body, creds)[0] == 200
    with svc.sessions() as s:
        svc.applications.disable(s, SYSTEM, client_id_of(creds))
        s.commit()
    disabled_at = time.monotonic()
    deadline = disabled_at + 10
    # each worker refreshes on its own clock, one interval after its last refresh: after
    # three intervals both have read the change (a run of refusals alone may all come
    # from the worker that refreshed first)
    time.sleep(3 * REFRESH_MS / 1000)
    refusals = 0
    while refusals < 8:
        refusals = refusals + 1 if post(server, DECIDE_PATH, body, creds)[0] == 401 else 0
        assert time.monotonic() < deadline, "still permitted"
    waited = time.monotonic() - disabled_at
    # refused on every connection (both workers) from now on
    for _ in range(6):
        status, headers, problem_body = post(server, DECIDE_PATH, body, creds)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
        assert json.loads(problem_body)["code"] == "govpki.unauthenticated"
    print(f"refused {waited:.2f} s after the commit (refresh interval {REFRESH_MS} ms)")


def test_a_policy_change_is_in_force_after_the_refresh_interval(svc: Services, server: int):
    creds = register(svc)
    body = json.dumps(ITEM).encode()
    assert json.loads(post(server, DECIDE_PATH, body, creds)[2])["decision"] == "permit"
    changed = copy.deepcopy(POLICY)
    changed["assignments"] = [a for a in changed["assignments"] if a["subject"] != "zhang.san"]
    with svc.sessions() as s:
        svc.policy.load(s, SYSTEM, changed)
        s.commit()
    deadline = time.monotonic() + 10
    time.sleep(3 * REFRESH_MS / 1000)  # both workers have refreshed (see the test above)
    denials = 0
    while denials < 8:
        decision = json.loads(post(server, DECIDE_PATH, body, creds)[2])["decision"]
        denials = denials + 1 if decision == "deny" else 0
        assert time.monotonic() < deadline, "the old policy is still in force"
    for _ in range(4):
        assert json.loads(post(server, DECIDE_PATH, body, creds)[2])["decision"] == "deny"


def test_a_wrong_secret_is_never_taken_for_the_cached_one(svc: Services, server: int):
    creds = register(svc)
    body = json.dumps(ITEM).encode()
    assert post(server, DECIDE_PATH, body, creds)[0] == 200
    client_id = client_id_of(creds)
    good_secret = base64.b64decode(creds["Authorization"].split()[1]).decode().split(":", 1)[1]
    for secret in ("nope", good_secret[:-1], good_secret + "x", ""):
        bad = {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}
        for _ in range(3):
            assert post(server, DECIDE_PATH, body, bad)[0] == 401
    assert post(server, DECIDE_PATH, body, creds)[0] == 200


def test_garbage_never_kills_it(svc: Services, server: int):
    creds = register(svc)
    rng = random.Random(6)
    prefixes = [
        b"",
        f"POST {DECIDE_PATH} HTTP/1.1\r\n".encode(),
        f"POST {DECIDE_PATH} HTTP/1.1\r\nContent-Type: application/json\r\nAuthorization: {creds['Authorization']}\r\n"
        "Content-Length: 300\r\n\r\n".encode(),
        f"POST {BATCH_PATH} HTTP/1.1\r\nAuthorization: Basic ".encode(),
    ]
    for i in range(40):
        data = prefixes[i % len(prefixes)] + rng.randbytes(rng.randint(1, 3000))
        with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
            sock.sendall(data)
            if i % 2:  # some hang up at once, some wait for whatever comes back
                sock.shutdown(socket.SHUT_WR)
                sock.settimeout(10)
                while sock.recv(65536):
                    pass
    status, _headers, body = post(server, DECIDE_PATH, json.dumps(ITEM).encode(), creds)
    assert status == 200 and json.loads(body)["decision"] == "permit"


def test_credential_cache_refresh(svc: Services):
    creds = register(svc, scopes=(AUTHZ_DECIDE,))
    client_id = client_id_of(creds)
    secret = base64.b64decode(creds["Authorization"].split()[1]).decode().split(":", 1)[1]
    cache = CredentialCache(svc.applications)
    with svc.sessions() as s:
        assert cache.lookup(client_id, secret) is None
        principal = cache.authenticate(s, client_id, secret)
        assert principal.scopes == frozenset({AUTHZ_DECIDE}) and len(cache) == 1
        assert cache.lookup(client_id, secret) == principal
        assert cache.lookup(client_id, secret + "x") is None and cache.lookup("app_other", secret) is None
        with pytest.raises(Exception, match="not valid"):
            cache.authenticate(s, client_id, "wrong")
        assert len(cache) == 1  # a failure is not cached
        cache.refresh(s)
        assert cache.lookup(client_id, secret) == principal  # unchanged: kept
        svc.applications.disable(s, SYSTEM, client_id)
        s.flush()
        cache.refresh(s)
        assert cache.lookup(client_id, secret) is None and len(cache) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_govpki_serve_starts_it_when_authz_listen_is_set(svc: Services, tmp_path: Path):
    creds = register(svc)
    port, pdp_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOVPKI_")}
    env.update(
        {
            "GOVPKI_INSTANCE_DIR": str(svc.config.instance_dir),
            "GOVPKI_DATABASE_URL": svc.config.database_url,
            "GOVPKI_TESTING": "1",
            "GOVPKI_LISTEN": f"127.0.0.1:{port}",
            "GOVPKI_OCSP_LISTEN": "off",
            "GOVPKI_JOBS_INTERVAL_SECONDS": "0",
            "GOVPKI_AUTHZ_LISTEN": f"127.0.0.1:{pdp_port}",
        }
    )
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "web.cli", "serve", "--no-init"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, _headers, body = post(pdp_port, DECIDE_PATH, json.dumps(ITEM).encode(), creds)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
        assert status == 200 and json.loads(body)["decision"] == "permit"
        assert f"the access decision server (GOVPKI_AUTHZ_LISTEN, http://127.0.0.1:{pdp_port})" in log_path.read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # the server went with it
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", pdp_port), timeout=5).close()


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("off", None), ("OFF", None), ("", None), ("127.0.0.1:8002", ("127.0.0.1", 8002))],
)
def test_authz_listen_setting(tmp_path: Path, value: str | None, expected: tuple[str, int] | None):
    env = {} if value is None else {"GOVPKI_AUTHZ_LISTEN": value}
    config = make_config(tmp_path / "instance", "sqlite://", **env)
    assert config.authz_listen == expected and config.authz_workers == 2


def test_authz_listen_must_be_host_and_port(tmp_path: Path):
    from govpki.errors import ConfigError

    with pytest.raises(ConfigError, match="GOVPKI_AUTHZ_LISTEN"):
        make_config(tmp_path / "instance", "sqlite://", GOVPKI_AUTHZ_LISTEN="8002")
    with pytest.raises(ConfigError, match="GOVPKI_AUTHZ_WORKERS"):
        make_config(tmp_path / "instance", "sqlite://", GOVPKI_AUTHZ_WORKERS="0")


class _Transport:
    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def test_refresh_zero_reads_the_database_for_every_request(tmp_path: Path, database_url: str):
    """GOVPKI_AUTHZ_POLICY_REFRESH_MS=0: nothing is answered from a cache; a disabled
    application is refused on its next request (driven in-process, fake transport)."""
    import asyncio
    import concurrent.futures

    from web import authz_server

    services = build_services(make_config(tmp_path / "instance", database_url, GOVPKI_AUTHZ_POLICY_REFRESH_MS="0"))
    loop = asyncio.new_event_loop()
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        with services.sessions() as s:
            services.policy.load(s, SYSTEM, POLICY)
            s.commit()
        creds = register(services)
        worker = authz_server._Worker(services, pool)
        worker.start()
        assert worker.current() is None  # no refresher: every request goes to the database path
        body = json.dumps(ITEM).encode()
        request = (
            f"POST {DECIDE_PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: {creds['Authorization']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body

        def ask() -> bytes:
            connection = authz_server._Connection(worker, loop)
            transport = _Transport()
            connection.connection_made(transport)  # type: ignore[arg-type]
            connection.data_received(request)
            deadline = time.monotonic() + 10
            while not transport.written.endswith(b"}"):
                assert time.monotonic() < deadline
                loop.run_until_complete(asyncio.sleep(0.01))
            connection.connection_lost(None)
            return transport.written

        assert ask().startswith(b"HTTP/1.1 200 OK") and len(worker.credentials) == 0
        with services.sessions() as s:
            services.applications.disable(s, SYSTEM, client_id_of(creds))
            s.commit()
        answer = ask()
        assert answer.startswith(b"HTTP/1.1 401 ") and b'"code": "govpki.unauthenticated"' in answer
        worker.close()
    finally:
        pool.shutdown()
        loop.close()
        services.dispose()


# ----- mutual TLS: a bound client certificate passed on by the trusted front ----------------


def bound_certificate(services: Services, name: str, scopes: tuple[str, ...] = (AUTHZ_DECIDE,)) -> str:
    """A client certificate of our CA bound to a new application ``name``: its X-Client-Cert header."""
    _key, der = issue_direct(services, "service-tls-client", f"{name}.example.gov.cn", dns=True)
    with services.sessions() as s:
        app, _secret = services.applications.register(s, SYSTEM, name=name, scopes=scopes)
        services.applications.bind_certificate(s, SYSTEM, app.client_id, pem(der))
        s.commit()
    return header(der)


@pytest.fixture
def mtls(services: Services, tmp_path: Path) -> Iterator[tuple[Services, FlaskClient, int]]:
    """An initialised instance (a CA issues the certificates), 127.0.0.1 the trusted front for
    both the app and the decision server."""
    services.certlogin.trusted_proxies = parse_trusted_proxies("127.0.0.1")
    with services.sessions() as s:
        services.policy.load(s, SYSTEM, POLICY)
        s.commit()
    env = {
        "GOVPKI_AUTHZ_WORKERS": "2",
        "GOVPKI_AUTHZ_POLICY_REFRESH_MS": str(REFRESH_MS),
        "GOVPKI_TRUSTED_PROXIES": "127.0.0.1",
    }
    with served(
        services.config, tmp_path, ["authz", "serve"], env, DECIDE_PATH, lambda p: post(p, DECIDE_PATH, b"{}")[0] == 401
    ) as port:
        yield services, create_app(services.config, services=services).test_client(), port


def test_client_certificates_get_the_flask_answers_byte_for_byte(mtls: tuple[Services, FlaskClient, int]):
    services, flask_client, port = mtls
    bound = bound_certificate(services, "e-docs")
    writer = bound_certificate(services, "e-mail", (AUDIT_WRITE,))
    creds = register(services, "e-other")
    _key, unbound_der = issue_direct(services, "service-tls-client", "stray.example.gov.cn", dns=True)
    ok = {"X-Client-Cert": bound, "X-Client-Verify": "SUCCESS"}
    cases: list[tuple[str, dict[str, str]]] = [
        ("127.0.0.1", ok),  # permit (the first from the database, then from the cache)
        ("127.0.0.1", ok),
        ("127.0.0.1", ok),
        (
            "127.0.0.1",
            {"X-Client-Cert": bound.replace("%0A", "%0a"), "X-Client-Verify": "SUCCESS"},
        ),  # escaped otherwise
        ("127.0.0.1", {**ok, "X-Real-IP": "203.0.113.7"}),  # the front names the client: still the front's headers
        ("127.0.0.1", {**ok, **creds}),  # client credentials win: e-other may not ask about e-docs
        ("127.0.0.1", {"X-Client-Cert": writer, "X-Client-Verify": "SUCCESS"}),  # 403: lacks the scope
        ("127.0.0.1", {"X-Client-Cert": bound, "X-Client-Verify": "FAILED:certificate has expired"}),  # 401
        ("127.0.0.1", {"X-Client-Cert": bound}),  # 401: no verdict of the front
        ("127.0.0.1", {"X-Client-Cert": header(unbound_der), "X-Client-Verify": "SUCCESS"}),  # 401: not bound
        ("127.0.0.1", {"X-Client-Cert": "garbage", "X-Client-Verify": "SUCCESS"}),  # 401: malformed
        ("127.0.0.1", {"X-Client-Cert": "", "X-Client-Verify": "SUCCESS"}),  # 401: none
        ("127.0.0.2", ok),  # 401: not from the trusted front, ignored
    ]
    data = json.dumps(ITEM).encode()
    statuses = []
    for source, headers in cases:
        sent = {"Content-Type": "application/json", **headers}
        expected = flask_client.post(DECIDE_PATH, data=data, headers=sent, environ_base={"REMOTE_ADDR": source})
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
        try:
            conn.request("POST", DECIDE_PATH, data, sent)
            got = conn.getresponse()
            got_body = got.read()
        finally:
            conn.close()
        assert got.status == expected.status_code, (source, headers, got_body)
        assert got_body == expected.data, (got_body, expected.data)
        assert got.getheader("WWW-Authenticate") == expected.headers.get("WWW-Authenticate")
        statuses.append(got.status)
    assert statuses == [200] * 5 + [403] * 2 + [401] * 6
    assert (
        json.loads(flask_client.post(DECIDE_PATH, data=data, headers={"Content-Type": "application/json", **ok}).data)[
            "decision"
        ]
        == "permit"
    )


def test_a_revoked_bound_certificate_is_refused_after_the_refresh_interval(mtls: tuple[Services, FlaskClient, int]):
    services, _flask_client, port = mtls
    bound = bound_certificate(services, "e-docs")
    ok = {"X-Client-Cert": bound, "X-Client-Verify": "SUCCESS"}
    body = json.dumps(ITEM).encode()
    for _ in range(4):  # both workers have it cached
        assert post(port, DECIDE_PATH, body, ok)[0] == 200
    serial = format(x509.load_pem_x509_certificate(unquote(bound).encode()).serial_number, "x")
    with services.sessions() as s:
        services.revocation.revoke(s, SYSTEM, serial, reason=RevocationReason.KEY_COMPROMISE)
        s.commit()
    deadline = time.monotonic() + 10
    time.sleep(3 * REFRESH_MS / 1000)  # both workers refresh (see the disabled application's test)
    refusals = 0
    while refusals < 8:
        refusals = refusals + 1 if post(port, DECIDE_PATH, body, ok)[0] == 401 else 0
        assert time.monotonic() < deadline, "still permitted"
    status, _headers, problem = post(port, DECIDE_PATH, body, ok)
    assert status == 401 and "revoked" in json.loads(problem)["detail"]


def test_certificate_cache_refresh(services: Services):
    bound = bound_certificate(services, "e-docs")
    cache = CertificateCache(services.certlogin)
    with services.sessions() as s:
        assert cache.lookup(bound, "SUCCESS") is None
        principal = cache.authenticate(s, bound, "SUCCESS")
        assert principal.name == "e-docs" and len(cache) == 1
        assert cache.lookup(bound, "SUCCESS") == principal
        assert cache.lookup(bound, "FAILED:x") is None
        with pytest.raises(UnauthenticatedError, match="did not accept"):
            cache.authenticate(s, bound, "FAILED:x")
        assert len(cache) == 1  # a failure is not cached
        cache.refresh(s)
        assert cache.lookup(bound, "SUCCESS") == principal  # unchanged: kept
        client_id = principal.id
        services.applications.disable(s, SYSTEM, client_id)
        s.flush()
        cache.refresh(s)
        assert cache.lookup(bound, "SUCCESS") is None and len(cache) == 0

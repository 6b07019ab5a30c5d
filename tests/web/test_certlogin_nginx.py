"""The real path: nginx on loopback with the shipped config (deploy/nginx/govpki.conf) in front
of the app; curl presents client certificates. An official gets a session and their page; a
revoked certificate and one from an unknown CA get the refusal page; a forged header sent
straight to the app from an untrusted address is ignored; an application authenticates to
POST /api/v1/audit/events with its bound certificate; a certificate nginx cannot verify is
answered by the app (the refusal page only at /login/certificate, problem JSON on the API);
the audit records the client's address as nginx saw it."""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select
from werkzeug.serving import make_server

from authz.certlogin import parse_trusted_proxies
from ca.models import CertificateAuthority, RevocationReason
from govpki.audit import AuditEntry
from govpki.principal import SYSTEM
from tests.authz.certlogin_helpers import foreign_certificate, header, issue_direct, issue_official, pem, prepare_ra
from tests.helpers import csr_pem
from web.app import create_app
from web.container import Services

NGINX = "/usr/sbin/nginx"
HOST = "pki.example.gov.cn"  # the server certificate names it and 127.0.0.1, where curl connects
SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "govpki.conf"

pytestmark = pytest.mark.skipif(not Path(NGINX).exists(), reason=f"{NGINX} is not installed (Debian package nginx)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None = None) -> None:
    for _ in range(200):
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"nginx exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


@dataclass
class Front:
    port: int
    app_port: int
    folder: Path
    root_pem: Path

    def curl(
        self, path: str, *args: str, cert: Path | None = None, key: Path | None = None, interface: str = "127.0.0.1"
    ) -> tuple[int, str, str]:
        """(status, body, headers) of one request through nginx, in English, from ``interface``."""
        command = [
            "curl",
            "-sS",
            "--interface",
            interface,
            "--max-time",
            "30",
            "--cacert",
            str(self.root_pem),
            "-H",
            "Accept-Language: en",
            "-D",
            "-",
            "-o",
            str(self.folder / "body"),
            "-w",
            "%{http_code}",
            *args,
        ]
        if cert is not None and key is not None:
            command += ["--cert", str(cert), "--key", str(key)]
        done = subprocess.run(
            [*command, f"https://127.0.0.1:{self.port}{path}"], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        status = int(done.stdout[-3:])
        return status, (self.folder / "body").read_text(encoding="utf-8"), done.stdout[:-3]


@pytest.fixture
def front(services: Services, tmp_path: Path) -> Iterator[Front]:
    folder = tmp_path / "nginx"
    for sub in ("logs", "tmp"):
        (folder / sub).mkdir(parents=True)
    # the server certificate: our CA, for HOST and 127.0.0.1
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName(HOST), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    with services.sessions() as session:
        record = services.ca.issue(
            session, SYSTEM, profile="service-tls-server", csr=csr_pem(key, cn=HOST, names=names)
        )
        session.commit()
        assert record.cert_der is not None
        server_der = record.cert_der
        cas = list(session.scalars(select(CertificateAuthority).order_by(CertificateAuthority.id)))
    roots = b"".join(pem(ca.cert_der) for ca in cas if ca.kind == "root")
    issuing = b"".join(pem(ca.cert_der) for ca in cas if ca.kind == "issuing")
    (folder / "server.pem").write_bytes(pem(server_der) + issuing)
    (folder / "server.key").write_bytes(key_pem(key))
    (folder / "server.key").chmod(0o600)
    (folder / "client-ca.pem").write_bytes(roots + issuing)
    (folder / "root.pem").write_bytes(roots)

    # the app, as gunicorn would run it, on loopback; nginx (127.0.0.1) is the trusted proxy
    services.certlogin.trusted_proxies = parse_trusted_proxies("127.0.0.1")
    app = create_app(services.config, services=services)
    app_port = free_port()
    server = make_server("127.0.0.1", app_port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    port = free_port()
    shipped = SHIPPED.read_text(encoding="utf-8")
    values = {
        "@SERVER_NAME@": HOST,
        "@LISTEN@": f"127.0.0.1:{port}",
        "@SERVER_CERT@": str(folder / "server.pem"),
        "@SERVER_KEY@": str(folder / "server.key"),
        "@CLIENT_CA@": str(folder / "client-ca.pem"),
        "@UPSTREAM@": f"127.0.0.1:{app_port}",
    }
    for marker, value in values.items():
        assert marker in shipped, marker
        shipped = shipped.replace(marker, value)
    assert not re.search(r"@[A-Z_]+@", "".join(line.split("#")[0] for line in shipped.splitlines()))
    (folder / "govpki.conf").write_text(shipped, encoding="utf-8")
    tmp = folder / "tmp"
    (folder / "nginx.conf").write_text(
        f"""
worker_processes 1;
events {{ worker_connections 64; }}
http {{
    access_log {folder / "logs" / "access.log"};
    client_body_temp_path {tmp / "body"};
    proxy_temp_path {tmp / "proxy"};
    fastcgi_temp_path {tmp / "fastcgi"};
    uwsgi_temp_path {tmp / "uwsgi"};
    scgi_temp_path {tmp / "scgi"};
    include {folder / "govpki.conf"};
}}
""",
        encoding="utf-8",
    )
    proc = subprocess.Popen(
        [
            NGINX,
            "-p",
            str(folder),
            "-c",
            str(folder / "nginx.conf"),
            "-g",
            f"daemon off; pid {folder / 'nginx.pid'}; error_log {folder / 'logs' / 'error.log'} info;",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port, proc)
        yield Front(port, app_port, folder, folder / "root.pem")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        server.shutdown()
        thread.join(timeout=10)


def write_pair(folder: Path, name: str, cert_der: bytes, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(pem(cert_der))
    key_path.write_bytes(key_pem(key))
    key_path.chmod(0o600)
    return cert_path, key_path


def audit_actions(services: Services) -> list[tuple[str, str, str]]:
    with services.sessions() as session:
        entries = session.scalars(select(AuditEntry).order_by(AuditEntry.seq)).all()
        return [(e.action, e.actor, json.loads(e.details or "{}").get("code", "")) for e in entries]


def audit_sources(services: Services, action: str) -> list[str]:
    with services.sessions() as session:
        entries = session.scalars(select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.seq))
        return [json.loads(e.details or "{}").get("source", "") for e in entries]


def test_official_signs_in_through_nginx(services: Services, front: Front):
    prepare_ra(services)
    official = issue_official(services)
    cert, key = write_pair(front.folder, "official", official.cert_der, official.key)
    jar = str(front.folder / "cookies")

    # from 127.0.0.2 (nginx connects to the app from 127.0.0.1, the trusted front), with a
    # forged X-Real-IP that nginx replaces by the address it saw
    forged = ("-H", "X-Real-IP: 198.51.100.1")
    status, _body, headers = front.curl(
        "/login/certificate", "-c", jar, *forged, cert=cert, key=key, interface="127.0.0.2"
    )
    assert status == 302, headers
    assert "location: /me" in headers.lower()
    assert "govpki_session=" in headers
    status, body, _ = front.curl("/me", "-b", jar, "-c", jar, cert=cert, key=key)
    assert status == 200
    assert "张三" in body and "财政局" in body and "科长" in body
    assert f'id="signed-in-serial">{official.serial}<' in body
    # the session is the official's: staff pages refuse it
    status, body, _ = front.curl("/dashboard", "-b", jar, cert=cert, key=key)
    assert status == 403 and "This page is for staff accounts" in body
    assert ("authz:session:sign_in", f"official:{official.official_id}", "") in audit_actions(services)
    assert audit_sources(services, "authz:session:sign_in") == ["127.0.0.2"]

    # without a certificate (and a forged header, which nginx replaces): no session
    status, body, _ = front.curl("/login/certificate", "-H", f"X-Client-Cert: {header(official.cert_der)}")
    assert status == 401 and 'data-code="authz.certlogin.no_certificate"' in body
    assert "No client certificate was presented" in body


def test_revoked_and_unknown_ca_certificates_are_refused(services: Services, front: Front):
    prepare_ra(services)
    official = issue_official(services)
    with services.sessions() as session:
        services.revocation.revoke(session, SYSTEM, official.serial, reason=RevocationReason.KEY_COMPROMISE)
        session.commit()
    cert, key = write_pair(front.folder, "revoked", official.cert_der, official.key)
    status, body, headers = front.curl("/login/certificate", cert=cert, key=key)
    assert status == 401 and 'data-code="authz.certlogin.revoked"' in body
    assert "Your certificate has been revoked or suspended" in body
    assert "govpki_signed_in" not in headers

    foreign_key = ec.generate_private_key(ec.SECP256R1())
    foreign = foreign_certificate(foreign_key)
    cert, key = write_pair(front.folder, "foreign", foreign, foreign_key)
    status, body, _ = front.curl("/login/certificate", cert=cert, key=key)
    assert status == 401 and 'data-code="authz.certlogin.unknown_ca"' in body
    assert "not issued by a certificate authority trusted here" in body
    codes = [code for action, _actor, code in audit_actions(services) if action == "authz:session:sign_in_fail"]
    assert codes == ["authz.certlogin.revoked", "authz.certlogin.unknown_ca"]
    # the same page in Chinese (the portal's default language)
    status, body, _ = front.curl("/login/certificate", "-H", "Accept-Language: zh-CN", cert=cert, key=key)
    assert status == 401 and "证书登录被拒绝" in body


def test_forged_header_from_an_untrusted_address_is_ignored(services: Services, front: Front):
    prepare_ra(services)
    official = issue_official(services)
    forged = header(official.cert_der)
    # straight to the app from 127.0.0.3 (not the front): refused, no session
    done = subprocess.run(
        [
            "curl",
            "-sS",
            "--interface",
            "127.0.0.3",
            "-D",
            "-",
            "-H",
            "Accept-Language: en",
            "-H",
            f"X-Client-Cert: {forged}",
            "-H",
            "X-Client-Verify: SUCCESS",
            f"http://127.0.0.1:{front.app_port}/login/certificate",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("HTTP/1.1 401") and 'data-code="authz.certlogin.untrusted_proxy"' in done.stdout
    assert "Set-Cookie: govpki_signed_in" not in done.stdout
    # nor does a forged header make an application
    done = subprocess.run(
        [
            "curl",
            "-sS",
            "--interface",
            "127.0.0.3",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            f"X-Client-Cert: {forged}",
            "-H",
            "X-Client-Verify: SUCCESS",
            "-H",
            "Content-Type: application/json",
            "--data",
            "{}",
            f"http://127.0.0.1:{front.app_port}/api/v1/audit/events",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.stdout == "401"
    # a front that is not in GOVPKI_TRUSTED_PROXIES is not believed either
    services.certlogin.trusted_proxies = parse_trusted_proxies("10.0.0.0/8")
    cert, key = write_pair(front.folder, "official", official.cert_der, official.key)
    status, body, _ = front.curl("/login/certificate", cert=cert, key=key)
    assert status == 401 and 'data-code="authz.certlogin.untrusted_proxy"' in body


def test_application_authenticates_with_its_certificate(services: Services, front: Front):
    app_key, app_der = issue_direct(services, "service-tls-client", "oa.example.gov.cn", dns=True)
    with services.sessions() as session:
        application, _secret = services.applications.register(
            session, SYSTEM, name="oa-system", scopes=("audit:write", "authz:decide")
        )
        client_id = application.client_id
        services.applications.bind_certificate(session, SYSTEM, client_id, pem(app_der))
        session.commit()
    cert, key = write_pair(front.folder, "app", app_der, app_key)
    event = {
        "actor": "user-7",
        "action": "document:approve",
        "object_type": "document",
        "object_id": "D-1",
        "time": "2026-01-31T12:00:00Z",
    }
    args = ("-H", "Content-Type: application/json", "--data", json.dumps(event))
    # from 127.0.0.2: nginx (the trusted front, 127.0.0.1) names the client in X-Real-IP
    status, body, _ = front.curl("/api/v1/audit/events", *args, cert=cert, key=key, interface="127.0.0.2")
    assert status == 201, body
    assert json.loads(body)["count"] == 1
    with services.sessions() as session:
        entry = session.scalar(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1))
        assert entry is not None and entry.actor == "application:oa-system/user-7"
    # the decision API takes the same certificate (no policy for it yet: deny by default)
    ask = {
        "subject": "user-7",
        "application": "oa-system",
        "action": "read",
        "resource": {"type": "document", "id": "D-1"},
    }
    decide = ("-H", "Content-Type: application/json", "--data", json.dumps(ask))
    status, body, _ = front.curl("/api/v1/authz/decide", *decide, cert=cert, key=key, interface="127.0.0.2")
    assert status == 200 and json.loads(body)["decision"] == "deny", body
    # without a certificate: client credentials are required
    status, body, headers = front.curl("/api/v1/audit/events", *args)
    assert status == 401 and "WWW-Authenticate: Basic" in headers
    status, body, headers = front.curl("/api/v1/authz/decide", *decide)
    assert status == 401 and "WWW-Authenticate: Basic" in headers


def test_a_certificate_nginx_refuses_is_answered_by_the_application(services: Services, front: Front):
    """Only the certificate sign-in shows the refusal page: staff sign-in with a foreign
    certificate in the browser gets the sign-in page, the API a problem document."""
    foreign_key = ec.generate_private_key(ec.SECP256R1())
    cert, key = write_pair(front.folder, "foreign", foreign_certificate(foreign_key), foreign_key)
    status, body, _ = front.curl("/login", cert=cert, key=key)
    assert status == 200 and 'name="password"' in body and "certlogin" not in body
    status, body, headers = front.curl(
        "/api/v1/audit/events", "-H", "Content-Type: application/json", "--data", "{}", cert=cert, key=key
    )
    assert status == 401 and "content-type: application/problem+json" in headers.lower(), headers
    problem = json.loads(body)
    assert problem["status"] == 401
    assert problem["detail"] == "authorization: the client certificate is not bound to an enabled application"
    assert "WWW-Authenticate: Basic" in headers
    # an application with client credentials whose TLS library offers a stray certificate: still served
    with services.sessions() as session:
        application, secret = services.applications.register(
            session, SYSTEM, name="oa-system", scopes=("authz:decide",)
        )
        client_id = application.client_id
        session.commit()
    ask = {"subject": "u", "application": "oa-system", "action": "read", "resource": {"type": "doc", "id": "1"}}
    status, body, _ = front.curl(
        "/api/v1/authz/decide",
        "-u",
        f"{client_id}:{secret}",
        "-H",
        "Content-Type: application/json",
        "--data",
        json.dumps(ask),
        cert=cert,
        key=key,
    )
    assert status == 200 and json.loads(body)["decision"] == "deny", body
    # and the certificate sign-in says why
    status, body, _ = front.curl("/login/certificate", cert=cert, key=key)
    assert status == 401 and 'data-code="authz.certlogin.unknown_ca"' in body

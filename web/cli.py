"""The ``govpki`` command: thin adapters over the same services as the web API.

Each command is a unit of work: it commits once when the service call succeeds.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import click
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.revocation import REVOKE_REASONS
from govpki.config import Config
from govpki.errors import ConfigError, GovpkiError
from web.cli_common import ROW_ID, cli_principal, fail, load_services, report_error
from web.container import Services, keystore_summary


@click.group()
def main() -> None:
    """govpki: root and issuing CAs, RAs, key management and authorization for the e-government network."""


@main.command()
def init() -> None:
    """Create the instance, the root CA, the issuing CA and the prefecture RAs if missing."""
    from web.bootstrap import initialize

    services = load_services()
    try:
        report = initialize(services, cli_principal(), kmc=True)
    except GovpkiError as exc:
        report_error(exc)
    _print_init(services, report)


def _print_init(services: Services, report: Any) -> None:
    config = services.config
    for line in report.created:
        click.echo(f"created {line}")
    if not report.created:
        click.echo("already initialised; nothing to do")
    click.echo(f"instance:        {config.instance_dir}")
    click.echo(f"database:        {_safe_url(config.database_url)}")
    click.echo(f"root key store:  {keystore_summary(config.root_keystore)}")
    click.echo(f"online key store:{' '}{keystore_summary(config.online_keystore)}")
    if report.root is not None:
        click.echo(f"root CA:         {report.root.subject} sha256:{report.root.fingerprint_sha256}")
    if report.issuing is not None:
        click.echo(f"issuing CA:      {report.issuing.subject} sha256:{report.issuing.fingerprint_sha256}")
    if report.passwords:
        from web.bootstrap import FIRST_ACCOUNTS

        click.echo("")
        click.echo(
            "三员分立: the first administrators (one-time passwords shown once; each is changed at first sign-in):"
        )
        for username, _name, role in FIRST_ACCOUNTS:
            if username in report.passwords:
                click.echo(f"  {role.value:<17} user name: {username:<9} password: {report.passwords[username]}")


def _safe_url(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


@main.command()
@click.option("--no-init", is_flag=True, help="Do not run the first-start ceremony.")
def serve(no_init: bool) -> None:
    """Serve the web portal and API (gunicorn), initialising an empty instance first."""
    from web.bootstrap import initialize
    from web.server import run

    services = load_services()
    if not no_init:
        try:
            report = initialize(services, cli_principal(), kmc=True)
        except GovpkiError as exc:
            report_error(exc)
        _print_init(services, report)
    services.dispose()
    config = services.config
    if config.jobs_interval_seconds > 0:
        _start_jobs_loop(config.jobs_interval_seconds)
    if config.ocsp_listen is not None:
        _start_ocsp_server()
    from web.cli_authz import start_beside as start_authz_server

    start_authz_server(config)  # the dedicated access decision server, when GOVPKI_AUTHZ_LISTEN is set
    click.echo("")
    click.echo(f"govpki is serving on {config.listen_url}/  (sign in at {config.base_url}/login)")
    click.echo(f"API: {config.base_url}/api/v1/openapi.json   CA certificates: {config.base_url}/ca/chain.pem")
    sys.stdout.flush()
    run(config)


def _start_jobs_loop(interval: int) -> None:
    """The scheduled jobs run in a child process beside gunicorn; it exits when we do."""
    import atexit
    import os
    import subprocess

    child = subprocess.Popen(  # noqa: S603  (our own interpreter and module, fixed arguments)
        [sys.executable, "-m", "web.cli", "jobs", "run", "--loop", "--interval", str(interval)],
        env={**os.environ, "GOVPKI_JOBS_PARENT_PID": str(os.getpid())},
    )
    atexit.register(child.terminate)
    click.echo(
        "scheduled jobs (CRLs, OCSP, key rotation, tree heads, CA retirement, expiry notices, audit archival "
        f"and checkpoints) run every {interval} s in process {child.pid}"
    )


def _start_ocsp_server() -> None:
    """The dedicated OCSP responder runs in a child process beside gunicorn; it exits when we do."""
    import atexit
    import os
    import subprocess

    child = subprocess.Popen(
        [sys.executable, "-m", "web.cli", "ocsp", "serve"],
        env={**os.environ, "GOVPKI_OCSP_PARENT_PID": str(os.getpid())},
    )
    atexit.register(child.terminate)
    click.echo(f"the dedicated OCSP responder (GOVPKI_OCSP_LISTEN) runs in process {child.pid}")


@main.group()
def jobs() -> None:
    """Scheduled work: CRLs, OCSP responder rotation and re-signing, tree heads, audit checkpoints."""


@jobs.command(name="run")
@click.option("--loop", is_flag=True, help="Keep running the due jobs until stopped.")
@click.option("--interval", type=click.IntRange(min=1), default=60, show_default=True, help="Seconds between rounds.")
def jobs_run(loop: bool, interval: int) -> None:
    """Run the jobs that are due (once, or every --interval seconds with --loop)."""
    import logging
    import os

    from web.jobs import run_due, run_forever

    services = load_services()
    if loop:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s [jobs] %(levelname)s %(message)s")
        parent = os.environ.get("GOVPKI_JOBS_PARENT_PID")
        with contextlib.suppress(KeyboardInterrupt):
            run_forever(services, interval, parent_pid=int(parent) if parent else None)
        return
    failed = False
    for result in run_due(services):
        for line in result.lines or ("nothing due",):
            click.echo(f"{result.name}: {line}")
        failed |= not result.ok
    if failed:
        fail("some jobs failed; see above", code=1)


@main.command()
@click.option("--profile", "-p", required=True, help="Certificate profile, e.g. service-tls-server.")
@click.option(
    "--csr", "csr_file", required=True, type=click.File("rb"), help="PEM or DER PKCS#10 file ('-' for stdin)."
)
@click.option(
    "--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), help="Write the certificate (PEM) here."
)
@click.option("--prefecture", help="Area code of the prefecture whose RA gets the expiry notices, e.g. 650100.")
@click.option("--contact-email", help="The subscriber's address for expiry notices.")
def issue(
    profile: str, csr_file: Any, out_file: Path | None, prefecture: str | None, contact_email: str | None
) -> None:
    """Issue a certificate: check, reserve, lint, sign, record and audit."""
    services = load_services()
    data = csr_file.read()
    with services.sessions() as session:
        try:
            record = services.ca.issue(
                session, cli_principal(), profile=profile, csr=data, prefecture=prefecture, contact_email=contact_email
            )
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
    assert record.cert_der is not None
    pem = x509.load_der_x509_certificate(record.cert_der).public_bytes(serialization.Encoding.PEM).decode()
    click.echo(
        f"issued serial {record.serial} ({record.profile} v{record.profile_version}) for {record.subject}", err=True
    )
    if out_file is not None:
        out_file.write_text(pem, encoding="ascii")
    else:
        click.echo(pem, nl=False)


@main.command()
@click.argument("serial")
@click.option("--pem", is_flag=True, help="Print only the certificate (PEM).")
def show(serial: str, pem: bool) -> None:
    """Show one certificate record."""
    services = load_services()
    with services.sessions() as session:
        try:
            record = services.ca.get_certificate(session, cli_principal(), serial)
        except GovpkiError as exc:
            report_error(exc)
        if pem:
            if record.cert_der is None:
                fail(f"serial {record.serial} is in state {record.state}: no certificate was stored")
            click.echo(
                x509.load_der_x509_certificate(record.cert_der).public_bytes(serialization.Encoding.PEM).decode(),
                nl=False,
            )
            return
        rows = [
            ("serial", record.serial),
            ("state", record.state),
            ("profile", f"{record.profile} v{record.profile_version}"),
            ("issuer", record.ca.subject),
            ("subject", record.subject),
            ("subjectAltName", record.sans or "-"),
            ("key", record.key_type),
            ("requester", record.requester),
            ("not before", _dt(record.not_before)),
            ("not after", _dt(record.not_after)),
            ("sha256", record.fingerprint_sha256 or "-"),
            ("created", _dt(record.created_at)),
            ("issued", _dt(record.issued_at)),
            ("status", record.revocation_reason or ("good" if record.state in ("issued", "approved") else "-")),
        ]
        if record.revoked_at:
            rows.append(("revoked at", _dt(record.revoked_at)))
        if record.invalidity_date:
            rows.append(("invalid since", _dt(record.invalidity_date)))
        if record.failure:
            rows.append(("failure", record.failure))
        if record.state == "approved":
            rows.append(
                ("note", "signing was approved but its outcome was not recorded (crash?); the exact TBS is stored")
            )
        for key, value in rows:
            click.echo(f"{key:15} {value}")


def _dt(value: Any) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%SZ")


@main.command(name="list")
@click.option("--state", type=click.Choice(["reserved", "approved", "issued", "failed"]))
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_(state: str | None, limit: int, as_json: bool) -> None:
    """List certificate records, newest first."""
    services = load_services()
    with services.sessions() as session:
        try:
            records = services.ca.list_certificates(session, cli_principal(), state=state, limit=limit)
        except GovpkiError as exc:
            report_error(exc)
        for r in records:
            if as_json:
                click.echo(
                    json.dumps(
                        {
                            "serial": r.serial,
                            "state": r.state,
                            "profile": r.profile,
                            "subject": r.subject,
                            "not_after": r.not_after.isoformat() if r.not_after else None,
                        },
                        ensure_ascii=False,
                    )
                )
            else:
                click.echo(f"{r.serial:>34}  {r.state:9} {r.profile:20} {_dt(r.not_after):21} {r.subject}")


_REASONS = click.Choice(REVOKE_REASONS, case_sensitive=False)


def _status_line(record: Any) -> str:
    when = f" at {_dt(record.revoked_at)}" if record.revoked_at else ""
    return f"{record.serial}: {record.revocation_reason or 'good'}{when}"


@main.command()
@click.argument("serial")
@click.option("--reason", type=_REASONS, default="unspecified", show_default=True, help="RFC 5280 CRLReason.")
@click.option(
    "--invalidity-date",
    type=click.DateTime(formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d"]),
    help="When the key was (suspected) compromised; UTC if no zone is given.",
)
@click.option("--ca", "ca_id", type=ROW_ID, help="Refuse unless this CA issued the certificate.")
def revoke(serial: str, reason: str, invalidity_date: Any, ca_id: int | None) -> None:
    """Revoke a certificate for good."""
    from govpki.clock import UTC

    if invalidity_date is not None and invalidity_date.tzinfo is None:
        invalidity_date = invalidity_date.replace(tzinfo=UTC)
    services = load_services()
    with services.sessions() as session:
        try:
            record = services.revocation.revoke(
                session, cli_principal(), serial, reason=reason, invalidity_date=invalidity_date, ca_id=ca_id
            )
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
        click.echo(f"revoked {_status_line(record)}")


@main.command()
@click.argument("serial")
@click.option("--ca", "ca_id", type=ROW_ID, help="Refuse unless this CA issued the certificate.")
def hold(serial: str, ca_id: int | None) -> None:
    """Suspend a certificate (certificateHold)."""
    services = load_services()
    with services.sessions() as session:
        try:
            record = services.revocation.hold(session, cli_principal(), serial, ca_id=ca_id)
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
        click.echo(f"on hold {_status_line(record)}")


@main.command()
@click.argument("serial")
@click.option("--ca", "ca_id", type=ROW_ID, help="Refuse unless this CA issued the certificate.")
def release(serial: str, ca_id: int | None) -> None:
    """Resume a suspended certificate."""
    services = load_services()
    with services.sessions() as session:
        try:
            record = services.revocation.release(session, cli_principal(), serial, ca_id=ca_id)
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
        click.echo(f"released {_status_line(record)}")


@main.group()
def crl() -> None:
    """Certificate revocation lists (full, delta, and the root's ARL)."""


PROGRESS_FROM = 10_000  # entries: show a progress bar from this size


class _CrlProgress:
    """A click progress bar, opened only once the list turns out to be large."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._done = 0

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            if total < PROGRESS_FROM:
                return
            self._bar = click.progressbar(length=total, label="signing CRL entries", file=sys.stderr)
            self._bar.__enter__()
        self._bar.update(done - self._done)
        self._done = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


def _crl_ca(services: Services, session: Any, ca_id: int | None, root: bool) -> Any:
    from ca.models import CaKind

    if ca_id is not None and root:
        fail("give --ca or --root, not both")
    if ca_id is not None:
        return services.crl.find_ca(session, ca_id)
    return services.ca.active_ca(session, CaKind.ROOT if root else CaKind.ISSUING)


def _crl_summary(record: Any, ca: Any) -> list[tuple[str, str]]:
    what = "ARL" if ca.kind == "root" else f"{record.kind} CRL"
    rows = [
        ("CA", f"{ca.id} {ca.subject}"),
        ("kind", what),
        ("number", str(record.number)),
    ]
    if record.base_number is not None:
        rows.append(("base number", str(record.base_number)))
    rows += [
        ("entries", str(record.entries)),
        ("this update", _dt(record.this_update)),
        ("next update", _dt(record.next_update)),
        ("status seq", str(record.status_seq)),
        ("sha256", record.sha256),
    ]
    return rows


@crl.command(name="generate")
@click.option("--ca", "ca_id", type=ROW_ID, help="CA id (default: the active issuing CA).")
@click.option("--root", is_flag=True, help="The root's ARL: needs the root key store (a ceremony).")
@click.option("--delta", is_flag=True, help="A delta CRL on the newest full CRL.")
@click.option(
    "--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), help="Also write it here (DER; PEM if *.pem)."
)
def crl_generate(ca_id: int | None, root: bool, delta: bool, out_file: Path | None) -> None:
    """Sign a new CRL now (audited) and print its summary."""
    from ca.models import CrlKind

    services = load_services()
    progress = _CrlProgress()
    with services.sessions() as session:
        try:
            ca = _crl_ca(services, session, ca_id, root)
            record = services.crl.generate(
                session, cli_principal(), ca.id, CrlKind.DELTA if delta else CrlKind.FULL, progress
            )
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            progress.close()
            report_error(exc)
        progress.close()
        if out_file is not None:
            data = record.der
            if out_file.suffix.lower() == ".pem":
                data = x509.load_der_x509_crl(data).public_bytes(serialization.Encoding.PEM)
            out_file.write_bytes(data)
        for key, value in _crl_summary(record, ca):
            click.echo(f"{key:12} {value}")
        if out_file is not None:
            click.echo(f"{'written to':12} {out_file}")


@crl.command(name="show")
@click.option("--ca", "ca_id", type=ROW_ID, help="CA id (default: the active issuing CA).")
@click.option("--root", is_flag=True, help="The root's ARL.")
@click.option("--delta", is_flag=True, help="The newest delta CRL instead of the full one.")
def crl_show(ca_id: int | None, root: bool, delta: bool) -> None:
    """Summarise the newest CRL of a CA."""
    from ca.models import CrlKind

    services = load_services()
    with services.sessions() as session:
        try:
            ca = _crl_ca(services, session, ca_id, root)
        except GovpkiError as exc:
            report_error(exc)
        kind = CrlKind.DELTA if delta else CrlKind.FULL
        record = services.crl.latest(session, ca.id, kind, with_der=False)
        if record is None:
            fail(f"CA {ca.id} has no {kind.value} CRL yet; 'govpki crl generate' makes one", code=1)
        for key, value in _crl_summary(record, ca):
            click.echo(f"{key:12} {value}")
        url = services.config.base_url + f"/crl/{ca.id}{'-delta' if delta else ''}.crl"
        click.echo(f"{'url':12} {url}")


@main.group()
def token() -> None:
    """Operator API tokens."""


@token.command(name="create")
@click.option("--name", required=True)
@click.option("--days", type=int, default=None, help="Lifetime in days (default GOVPKI_API_TOKEN_DAYS).")
def token_create(name: str, days: int | None) -> None:
    """Create an operator token; the secret is printed once."""
    services = load_services()
    with services.sessions() as session:
        try:
            created, secret = services.tokens.create(
                session, cli_principal(), name=name, days=days or services.config.api_token_days
            )
            session.commit()
        except GovpkiError as exc:
            report_error(exc)
    click.echo(f"token {created.name!r} valid until {_dt(created.expires_at)} (shown once):", err=True)
    click.echo(secret)


@main.group()
def ocsp() -> None:
    """The OCSP responder: delegated responder certificates and pre-signed responses."""


@ocsp.command(name="refresh")
@click.option("--limit", type=int, default=None, help="Handle at most this many responses in this run.")
@click.option("--batch", "batch_size", type=int, default=500, show_default=True, help="Responses per commit.")
def ocsp_refresh(limit: int | None, batch_size: int) -> None:
    """Rotate responders that are due, re-sign old responses and pre-sign missing ones.

    Commits after every batch: stopping it keeps what was done; run it again to go on."""
    services = load_services()
    with services.sessions() as session:
        try:
            pending = services.ocsp.pending(session)
            session.rollback()
            if limit is not None:
                pending = min(pending, limit)
            with click.progressbar(length=pending, label="OCSP responses", file=sys.stderr) as bar:
                report = services.ocsp.refresh_due(
                    session,
                    cli_principal(),
                    limit=limit,
                    progress=bar.update,
                    checkpoint=session.commit,
                    batch_size=batch_size,
                )
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
    for ca_id in report.rotated:
        click.echo(f"new OCSP responder for CA {ca_id}")
    click.echo(f"re-signed {report.resigned}, pre-signed {report.presigned}, dropped (expired) {report.dropped}")


@ocsp.command(name="serve")
@click.option("--listen", metavar="HOST:PORT", help="Default GOVPKI_OCSP_LISTEN (127.0.0.1:8001); port 0 picks one.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Processes (default GOVPKI_OCSP_WORKERS, 2).")
def ocsp_serve(listen: str | None, workers: int | None) -> None:
    """Serve OCSP only (POST /ocsp, GET /ocsp/<base64>): the dedicated responder, without gunicorn.

    Does not initialise or migrate: run `govpki init` (or `serve`) first."""
    import logging
    import os

    from web.ocsp_server import serve as serve_ocsp

    env = dict(os.environ)
    if listen is not None:
        env["GOVPKI_OCSP_LISTEN"] = listen
    try:
        config = Config.from_env(env)
    except ConfigError as exc:
        fail(f"configuration error: {exc}")
    if config.ocsp_listen is None:
        fail("GOVPKI_OCSP_LISTEN is 'off'; give --listen HOST:PORT")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [ocsp %(process)d] %(levelname)s %(message)s")
    parent = os.environ.get("GOVPKI_OCSP_PARENT_PID")
    host, port = config.ocsp_listen
    try:
        code = serve_ocsp(
            config, host, port, workers or config.ocsp_workers, parent_pid=int(parent) if parent else None
        )
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    sys.exit(code)


@ocsp.command(name="responders")
def ocsp_responders() -> None:
    """List the delegated OCSP responder certificates."""
    services = load_services()
    with services.sessions() as session:
        try:
            responders = services.ocsp.list_responders(session, cli_principal())
        except GovpkiError as exc:
            report_error(exc)
        for r in responders:
            cert = x509.load_der_x509_certificate(r.cert_der)
            state = "active" if r.active else "retired"
            click.echo(
                f"{r.id:>4}  CA {r.ca_id}  {state:7}  {_dt(r.not_before)} .. {_dt(r.not_after)}  "
                f"serial {cert.serial_number:x}  key {r.key_store}:{r.key_handle}"
            )


@main.group()
def audit() -> None:
    """The audit log."""


@audit.command(name="verify")
@click.option(
    "--checkpoints",
    "checkpoints_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Also check an exported checkpoint file (GOVPKI_AUDIT_CHECKPOINT_FILE or a copy of it).",
)
def audit_verify(checkpoints_file: Path | None) -> None:
    """Check the whole hash chain and every signed checkpoint; name the first bad entry.

    The run is recorded (the auditors' console shows the newest). Exit status 1 when broken."""
    services = load_services()
    with services.sessions() as session:
        try:
            report = services.auditing.verify(session, cli_principal(), checkpoints_file)
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
    if report.ok:
        click.echo(report.summary)
    else:
        fail(report.summary, code=1)


@audit.command(name="checkpoint")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), help="Export here instead.")
def audit_checkpoint(out_file: Path | None) -> None:
    """Sign the audit chain head now (audit-signing key), store and export it."""
    services = load_services()
    with services.sessions() as session:
        try:
            made = services.auditing.checkpoint(session, cli_principal())
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
        if made is None:
            latest = services.auditing.latest(session)
            click.echo(f"nothing new since the checkpoint at entry {latest.seq if latest else 0}; none signed")
            return
        where = services.auditing.export(made, out_file)
        click.echo(f"{'seq':10} {made.seq}")
        click.echo(f"{'head hash':10} {made.head_hash}")
        click.echo(f"{'signed at':10} {_dt(made.created_at)}")
        click.echo(f"{'key':10} {made.key_store}:{made.key_handle}")
        click.echo(f"{'exported':10} {', '.join(where)}")


@audit.command(name="archive")
def audit_archive() -> None:
    """Archive the entries older than GOVPKI_AUDIT_RETENTION_DAYS (up to a signed checkpoint)
    to a signed file in GOVPKI_AUDIT_ARCHIVE_DIR, then remove them from the log.

    The log is verified first; a log that does not verify is not archived (exit status 1)."""
    services = load_services()
    with services.sessions() as session:
        try:
            made = services.archive.archive(session, cli_principal())
            session.commit()
        except GovpkiError as exc:
            session.rollback()
            report_error(exc)
    if made is None:
        days = services.archive.settings.retention.days
        click.echo(f"nothing to archive: no checkpointed entries older than {days} days")
        return
    row = made.row
    click.echo(f"{'entries':10} {row.first_seq}..{row.last_seq} ({row.entries}), removed from the log")
    click.echo(f"{'archive':10} {made.path}")
    click.echo(f"{'signature':10} {made.signature_path}")
    click.echo(f"{'key':10} {made.public_key_path}")
    click.echo(f"{'sha256':10} {row.file_sha256}")
    click.echo(
        f"check with: openssl dgst -sha256 -verify {made.public_key_path} -signature {made.signature_path} {made.path}"
    )


@audit.command(name="verify-archive")
@click.argument("archive_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--signature", "signature_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--public-key", "public_key_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
def audit_verify_archive(archive_file: Path, signature_file: Path | None, public_key_file: Path | None) -> None:
    """Check an audit archive file offline (signature, every entry's hash and link, the
    checkpoints in it) and, when this instance recorded it, that it is the recorded file.

    The signature and key default to the .sig and .pub.pem files beside it. Exit status 1 when broken."""
    from authz.archive import verify_archive_file
    from authz.auditing import key_id

    try:
        report = verify_archive_file(archive_file, signature_path=signature_file, public_key_path=public_key_file)
    except GovpkiError as exc:
        report_error(exc)
    recorded = ""
    if report.ok:
        services = load_services()
        with services.sessions() as session:
            row = services.archive.find_row(session, report.first_seq, report.last_seq)
            if row is not None:
                if row.file_sha256 != report.file_sha256 or key_id(row.public_key_der) != report.key_id:
                    fail(f"{report.summary}, but it is not the file this instance recorded for that range", code=1)
                recorded = ", the file this instance recorded"
    if not report.ok:
        fail(report.summary, code=1)
    click.echo(f"{report.summary}{recorded}")
    click.echo(f"signing key SHA-256 {report.key_id}")


@main.group()
def transparency() -> None:
    """The issuance transparency log (RFC 9162 Merkle tree of issuances and revocations)."""


@transparency.command(name="sth")
def transparency_sth() -> None:
    """Sign a tree head for the current log size now (unless the newest has it) and print it."""
    services = load_services()
    with services.sessions() as session:
        try:
            head = services.tlog.sign_tree_head(session, cli_principal())
            session.commit()
        except GovpkiError as exc:
            report_error(exc)
        head = head or services.tlog.latest_head(session)
        if head is None:
            click.echo("the transparency log is empty: no tree head")
            return
        click.echo(
            json.dumps(
                {
                    "tree_size": head.tree_size,
                    "timestamp": head.timestamp.isoformat(),
                    "root_hash": head.root_hash,
                    "key_handle": head.key_handle,
                    "signature": base64.b64encode(head.signature).decode("ascii"),
                },
                indent=2,
            )
        )


@transparency.command(name="audit")
def transparency_audit() -> None:
    """Rebuild the tree from the database; check every tree head, that every certificate is
    in the log and every log entry is in the database. Exit 1 naming each discrepancy."""
    services = load_services()
    with services.sessions() as session:
        report = services.tlog.audit(session)
    summary = (
        f"{report.entries} log entries, {report.tree_heads} tree heads, {report.certificates} certificates, "
        f"root {report.root_hash}"
    )
    if report.ok:
        click.echo(f"transparency log OK: {summary}")
        return
    for problem in report.problems:
        click.echo(f"DISCREPANCY: {problem}", err=True)
    fail(f"transparency log audit FAILED ({len(report.problems)} discrepancies): {summary}", code=1)


@main.command()
def openapi() -> None:
    """Print the OpenAPI document."""
    from web import api  # noqa: F401  (registers the operations)
    from web.openapi import document

    click.echo(json.dumps(document(Config.from_env().base_url), ensure_ascii=False, indent=2))


from web.cli_keys import keys as _keys  # noqa: E402  (at the end: it uses this module's helpers)

main.add_command(_keys)

from web.cli_backup import backup as backup_group  # noqa: E402  (CA key backup; see web/cli_backup.py)

main.add_command(backup_group)

from web import cli_notices  # noqa: E402  (after main; it takes helpers from here when run)

cli_notices.register(main)

from web.cli_ceremony import ca_group, ceremony  # noqa: E402  (registered here, at the end)

main.add_command(ca_group)
main.add_command(ceremony)

from web.cli_kmc import kmc  # noqa: E402  (govpki kmc …; it takes helpers from here when run)

main.add_command(kmc)

from web.cli_audit import register as register_audit_evidence  # noqa: E402  (govpki audit export | verify-export)

register_audit_evidence(audit)

from web.cli_apps import app_group  # noqa: E402  (govpki app register | list | disable)

main.add_command(app_group)

from web.cli_staff import staff  # noqa: E402  (govpki staff create | list | unlock | reset-totp)

main.add_command(staff)
from web.cli_policy import policy  # noqa: E402  (govpki policy load | subject | role | rule | assign | explain | decide …)

main.add_command(policy)
from web.cli_oidc import oidc_group  # noqa: E402  (govpki oidc rotate | keys)

main.add_command(oidc_group)

from web.cli_authz import authz_group  # noqa: E402  (govpki authz serve: the dedicated decision server)

main.add_command(authz_group)

from web.cli_ra_recovery import ra_group  # noqa: E402  (govpki ra sweep-requests: crash recovery)

main.add_command(ra_group)

if __name__ == "__main__":
    main()

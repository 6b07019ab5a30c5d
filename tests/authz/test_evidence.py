"""Evidence export and the auditors' console service: a signed bundle of matching audit
entries, the contiguous chain up to a signed checkpoint and transparency-log proofs,
checked offline (govpki audit verify-export) and with plain openssl; tampering found;
only auditors; limits and archived ranges refused; keyset search and derived filters."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from authz.console import AuditFilter, application_of, changes_of, prefecture_of
from authz.evidence import EvidenceBundle, EvidenceService, verify_bundle
from ca.evidence import verify_transparency
from ca.models import CertificateRecord
from govpki import audit
from govpki.audit import AuditEntry
from govpki.config import Config
from govpki.errors import ForbiddenError, InvalidError, NotFoundError
from govpki.principal import SYSTEM, Principal, PrincipalKind, Role
from tests.helpers import csr_pem
from web.container import Services, build_services

AUDITOR = Principal(PrincipalKind.ACCOUNT, "7", "auditor", frozenset({Role.SECURITY_AUDITOR}))
SECADMIN = Principal(PrincipalKind.ACCOUNT, "8", "secadmin", frozenset({Role.SECURITY_ADMIN}))
OPERATOR = Principal(PrincipalKind.ACCOUNT, "9", "operator", frozenset({Role.CA_OPERATOR}))
CHECKS = [verify_transparency]


def _issue(services: Services, cn: str) -> CertificateRecord:
    with services.sessions() as session:
        record = services.ca.issue(session, SYSTEM, profile="service-tls-server", csr=csr_pem(cn=cn))
        session.commit()
        session.expunge(record)
        return record


def _export(services: Services, flt: AuditFilter, principal: Principal = AUDITOR) -> EvidenceBundle:
    with services.sessions() as session:
        bundle = services.evidence.export(session, principal, flt)
        session.commit()
        return bundle


def _write(tmp: Path, bundle: EvidenceBundle, name: str = "evidence.tar") -> Path:
    path = tmp / name
    path.write_bytes(bundle.data)
    return path


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _repack(path: Path, members: dict[str, bytes]) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(out.getvalue())


def _openssl(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "dgst", "-sha256", "-verify", "signer.pub.pem", "-signature", "bundle.sig", "bundle.json"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def revoked(services: Services) -> CertificateRecord:
    """A certificate issued and revoked, a tree head covering both leaves, noise around it."""
    record = _issue(services, "evidence.example.gov.cn")
    _issue(services, "other.example.gov.cn")
    with services.sessions() as session:
        services.revocation.revoke(session, SYSTEM, record.serial, reason="keyCompromise")
        session.commit()
    with services.sessions() as session:
        assert services.tlog.sign_tree_head(session, SYSTEM) is not None
        session.commit()
    return record


def test_bundle_of_a_certificate_verifies_offline_and_with_openssl(
    services: Services, revoked: CertificateRecord, tmp_path: Path
) -> None:
    bundle = _export(services, AuditFilter(object_id=revoked.serial))
    assert bundle.checkpoint is not None  # none closed the range yet: one was signed for it
    path = _write(tmp_path, bundle)

    report = verify_bundle(path, checks=CHECKS)
    assert report.ok, report.problems
    assert (report.first_seq, report.last_seq) == (bundle.first_seq, bundle.last_seq)
    assert report.key_id == bundle.key_id and report.checkpoints >= 1
    assert report.proofs == 2  # the issue leaf and the revoke leaf, each to the signed tree head

    members = _members(path)
    assert set(members) == {"bundle.json", "bundle.sig", "signer.pub.pem", "README.txt"}
    assert "openssl dgst -sha256 -verify signer.pub.pem -signature bundle.sig bundle.json" in members[
        "README.txt"
    ].decode("utf-8")
    document = json.loads(members["bundle.json"])
    assert members["bundle.json"] == audit.canonical_json(document).encode("utf-8")  # canonical JSON
    matched = [e for e in document["entries"] if e["matched"]]
    assert {e["action"] for e in matched} >= {"ca:certificate:issue", "ca:certificate:revoke"}
    assert all(e["object_id"] == revoked.serial for e in matched)
    assert any(not e["matched"] for e in document["entries"])  # the chain between them is included too
    assert document["entries"][0]["seq"] == matched[0]["seq"]
    assert document["checkpoints"][-1]["seq"] == document["range"]["last_seq"]
    assert {leaf["kind"] for leaf in document["transparency"]["leaves"]} == {"issue", "revoke"}

    # plain openssl
    folder = tmp_path / "x"
    folder.mkdir()
    for name, data in members.items():
        (folder / name).write_bytes(data)
    result = _openssl(folder)
    assert result.returncode == 0 and "Verified OK" in result.stdout
    (folder / "bundle.json").write_bytes(members["bundle.json"].replace(b'"matched":true', b'"matched":false', 1))
    result = _openssl(folder)
    assert result.returncode != 0 and "Verification failure" in result.stdout

    # the export is audited with its filter and the bundle's SHA-256
    with services.sessions() as session:
        entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "authz:audit:export")).one()
    details = json.loads(entry.details)
    assert entry.actor == "account:auditor" and entry.seq > bundle.last_seq
    assert details["bundle_sha256"] == bundle.bundle_sha256 and details["filter"] == {"object_id": revoked.serial}


def _resign(members: dict[str, bytes], document: dict[str, object]) -> tuple[dict[str, bytes], bytes]:
    """A forger's bundle: changed content, signed by a key of their own."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    document["key_id"] = hashlib.sha256(der).hexdigest()
    body = audit.canonical_json(document).encode("utf-8")
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return {
        **members,
        "bundle.json": body,
        "bundle.sig": key.sign(body, ec.ECDSA(hashes.SHA256())),
        "signer.pub.pem": pem,
    }, members["signer.pub.pem"]


@pytest.mark.parametrize("how", ["entry", "link", "checkpoint", "proof", "leaf", "cut"])
def test_tampering_is_found_even_when_re_signed(
    services: Services, revoked: CertificateRecord, tmp_path: Path, how: str
) -> None:
    path = _write(tmp_path, _export(services, AuditFilter(object_id=revoked.serial)))
    members = _members(path)
    document = json.loads(members["bundle.json"])
    entries = document["entries"]
    if how == "entry":
        entries[1]["details"] = entries[1]["details"].replace("}", ',"x":1}', 1)
        expected = f"entry {entries[1]['seq']}: its content does not match its hash"
    elif how == "link":
        del entries[2]
        expected = f"entry {entries[1]['seq'] + 1} is missing"
    elif how == "checkpoint":
        document["checkpoints"][-1]["head_hash"] = "0" * 64
        expected = f"checkpoint {document['checkpoints'][-1]['seq']}: the signature is not valid"
    elif how == "proof":
        leaf = document["transparency"]["leaves"][0]
        leaf["audit_path"][0] = "00" * 32
        expected = "the inclusion proof does not lead to the signed root"
    elif how == "leaf":
        leaf = document["transparency"]["leaves"][0]
        leaf["leaf"] = leaf["leaf"].replace('"kind"', '"kind" ', 1)
        expected = "the leaf does not match its hash"
    else:  # the tail cut off, so no checkpoint closes the range
        last = document["checkpoints"].pop()
        document["entries"] = [e for e in entries if e["seq"] < last["seq"]]
        document["range"]["last_seq"] = last["seq"] - 1
        expected = f"no signed checkpoint closes the range at entry {last['seq'] - 1}"
    forged, original_pem = _resign(members, document)
    _repack(path, forged)
    report = verify_bundle(path, checks=CHECKS)
    assert not report.ok
    assert expected in report.summary, report.problems
    # pinned to the real key, the forger's signature itself fails
    pinned = tmp_path / "trusted.pem"
    pinned.write_bytes(original_pem)
    report = verify_bundle(path, public_key_path=pinned, checks=CHECKS)
    assert not report.ok and "signature over bundle.json is not valid" in report.summary


def test_only_a_security_auditor_or_the_system_may_export(services: Services) -> None:
    for principal in (SECADMIN, OPERATOR):
        with services.sessions() as session, pytest.raises(ForbiddenError) as caught:
            services.evidence.export(session, principal, AuditFilter(action="ra:authority"))
        assert caught.value.field == "role"
    assert _export(services, AuditFilter(action="ra:authority"), SYSTEM).matched == 14


def test_bad_filters_and_ranges_over_the_limit_are_refused(services: Services) -> None:
    with services.sessions() as session, pytest.raises(InvalidError) as caught:
        services.evidence.export(session, AUDITOR, AuditFilter(actor="nobody-at-all"))
    assert caught.value.field == "filter"
    small = EvidenceService(services.keystores, services.clock, services.auditing, max_entries=5)
    with services.sessions() as session, pytest.raises(InvalidError) as caught:
        small.export(session, AUDITOR, AuditFilter(action="ra:authority"))
    assert caught.value.field == "since" and "at most 5" in caught.value.reason
    for params, name in (
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-02-01T00:00", "until": "2026-01-01T00:00"}, "until"),
        ({"outcome": "SUCCESS!"}, "outcome"),
        ({"action": "ca certificate"}, "action"),
        ({"actor": "x" * 201}, "actor"),
    ):
        with pytest.raises(InvalidError) as caught:
            AuditFilter.from_params(params)
        assert caught.value.field == name


class MovableClock:
    def __init__(self, now: dt.datetime) -> None:
        self.at = now

    def now(self) -> dt.datetime:
        return self.at


@pytest.fixture
def moving(config: Config) -> Iterator[tuple[Services, MovableClock]]:
    clock = MovableClock(dt.datetime(2026, 1, 1, 8, 0, tzinfo=dt.UTC))
    services = build_services(config, clock=clock)
    try:
        yield services, clock
    finally:
        services.dispose()


def test_a_range_that_needs_archived_entries_is_refused_naming_the_archive(
    moving: tuple[Services, MovableClock],
) -> None:
    services, clock = moving
    with services.sessions() as s:
        for i in range(5):
            audit.record(s, SYSTEM, "test:thing:touch", object_type="thing", object_id=str(i), clock=clock)
        assert services.auditing.checkpoint(s, SYSTEM) is not None
        s.commit()
    clock.at += dt.timedelta(days=services.archive.settings.retention.days + 10)
    with services.sessions() as s:
        audit.record(s, SYSTEM, "test:thing:touch", object_type="thing", object_id="late", clock=clock)
        made = services.archive.archive(s, AUDITOR)
        assert made is not None
        s.commit()
    with services.sessions() as s, pytest.raises(InvalidError) as caught:
        services.evidence.export(s, AUDITOR, AuditFilter(action="test:thing"))
    assert caught.value.field == "since" and made.row.file_name in caught.value.reason
    with services.sessions() as s, pytest.raises(NotFoundError) as missing:
        services.audit_console.entry(s, AUDITOR, 2)
    assert made.row.file_name in missing.value.reason
    bundle = _export(services, AuditFilter(action="test:thing", since=clock.at - dt.timedelta(minutes=1)))
    assert bundle.matched == 1 and bundle.first_seq > made.row.last_seq


def test_console_search_pages_by_seq_and_filters_on_derived_prefecture(services: Services) -> None:
    console = services.audit_console
    with services.sessions() as s:
        page = console.search(s, AUDITOR, AuditFilter(action="ra:authority:create"), limit=5)
        assert len(page.entries) == 5 and page.newer is None and page.older is not None
        seqs = [e.seq for e in page.entries]
        assert seqs == sorted(seqs, reverse=True)
        seen = list(seqs)
        while page.older is not None:
            page = console.search(s, AUDITOR, AuditFilter(action="ra:authority:create"), before=page.older, limit=5)
            seen += [e.seq for e in page.entries]
        assert len(seen) == 14 == len(set(seen)) and page.newer is not None
        back = console.search(s, AUDITOR, AuditFilter(action="ra:authority:create"), after=page.newer, limit=5)
        assert [e.seq for e in back.entries] == seen[5:10]

        by_code = console.search(s, AUDITOR, AuditFilter(prefecture="650100")).entries
        by_name = console.search(s, AUDITOR, AuditFilter(prefecture="乌鲁木齐市")).entries
        assert [e.seq for e in by_code] == [e.seq for e in by_name] and len(by_code) == 1
        assert prefecture_of(by_code[0]) == "乌鲁木齐市" and application_of(by_code[0]) is None
        assert console.search(s, AUDITOR, AuditFilter(outcome="failure")).entries == []
        assert console.entry(s, AUDITOR, by_code[0].seq).object_id == "650100"
        with pytest.raises(NotFoundError):
            console.entry(s, AUDITOR, 10**9)
        for principal in (SECADMIN, OPERATOR):
            with pytest.raises(ForbiddenError):
                console.search(s, principal, AuditFilter())
            with pytest.raises(ForbiddenError):
                console.entry(s, principal, 1)
            with pytest.raises(ForbiddenError):
                console.verify_now(s, principal)


def test_application_filter_and_before_after_values(services: Services) -> None:
    with services.sessions() as s:
        audit.record(
            s,
            SYSTEM,
            "test:binding:update",
            object_type="binding",
            object_id="b1",
            details={"application": "tax-portal", "before": {"port": 443}, "after": {"port": 8443}},
        )
        s.commit()
        found = services.audit_console.search(s, AUDITOR, AuditFilter(application="tax-portal")).entries
    assert len(found) == 1 and application_of(found[0]) == "tax-portal"
    assert changes_of(json.loads(found[0].details)) == [("port", 443, 8443)]


def test_verify_now_is_recorded_and_charts_count(services: Services) -> None:
    with services.sessions() as s:
        assert services.audit_console.latest_verification(s, AUDITOR) is None
        with pytest.raises(Exception):
            services.accounts.sign_in(s, username="nobody", password="wrong-password-1", source="10.0.0.9")
        s.commit()
    with services.sessions() as s:
        report = services.audit_console.verify_now(s, AUDITOR)
        s.commit()
        assert report.ok
        latest = services.audit_console.latest_verification(s, AUDITOR)
        assert latest is not None and latest.ok and latest.actor == "account:auditor"
        bars = services.audit_console.failed_sign_ins_per_hour(s, AUDITOR)
        assert len(bars) == 24 and bars[-1].value == 1 and sum(b.value for b in bars) == 1
        days = services.certificate_stats.per_day(s, AUDITOR)
        assert sum(d.issued for d in days) >= 2  # the issuing CA and the OCSP responder at init
        pending = services.certificate_stats.pending_by_age(s, AUDITOR)
        assert [label for label, _n in pending] == ["< 1 h", "1–24 h", "1–7 d", "> 7 d"]
        with pytest.raises(ForbiddenError):
            services.audit_console.failed_sign_ins_per_hour(s, SECADMIN)


def test_cli_export_and_verify_export(
    services: Services, revoked: CertificateRecord, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from web import cli, cli_common

    monkeypatch.setattr(cli_common, "load_services", lambda: services)
    monkeypatch.setattr(services, "dispose", lambda: None)
    runner = CliRunner()
    out = tmp_path / "out.tar"
    result = runner.invoke(cli.main, ["audit", "export", "--object-id", revoked.serial, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_mode & 0o777 == 0o600
    assert services.config.checkpoint_file.exists()  # the checkpoint signed for it was exported
    result = runner.invoke(cli.main, ["audit", "verify-export", str(out)])
    assert result.exit_code == 0, result.output
    assert "evidence OK" in result.output and "2 inclusion proofs" in result.output
    assert "signing key SHA-256 " in result.output
    result = runner.invoke(cli.main, ["audit", "export", "--since", "soon", "--out", str(tmp_path / "bad.tar")])
    assert result.exit_code == 2 and "since: is not a time" in result.output
    assert not (tmp_path / "bad.tar").exists()

    members = _members(out)
    document = json.loads(members["bundle.json"])
    document["entries"][0]["actor"] = "account:someone-else"
    _repack(out, {**members, "bundle.json": audit.canonical_json(document).encode("utf-8")})
    result = runner.invoke(cli.main, ["audit", "verify-export", str(out)])
    assert result.exit_code == 1 and "signature over bundle.json is not valid" in result.output


@pytest.mark.parametrize("size", [1, 2, 3, 255, 256, 257, 700, 1024, 1500])
def test_shared_subtree_proofs_equal_the_reference_paths(size: int) -> None:
    from ca import merkle
    from ca.evidence import _Proofs

    hashes = [merkle.leaf_hash(str(i).encode()) for i in range(size)]
    proofs = _Proofs(hashes)
    root = merkle.root_from_leaf_hashes(hashes)
    for index in sorted({0, 1 % size, size // 2, size - 1, 255 % size, 300 % size}):
        path = proofs.path(index)
        assert path == merkle.inclusion_proof(index, hashes)
        assert merkle.verify_inclusion(index, size, hashes[index], path, root)


def test_certificates_of_a_prefecture_are_charted_filtered_and_exported(services: Services, tmp_path: Path) -> None:
    with services.sessions() as session:
        record = services.ca.issue(
            session, SYSTEM, profile="service-tls-server", csr=csr_pem(cn="kly.example.gov.cn"), prefecture="650200"
        )
        session.commit()
        serial = record.serial
    with services.sessions() as session:
        services.revocation.revoke(session, SYSTEM, serial, reason="superseded")
        assert services.tlog.sign_tree_head(session, SYSTEM) is not None
        session.commit()
    with services.sessions() as session:
        days = {d.group: d for d in services.certificate_stats.per_day(session, AUDITOR)}
        assert (days["650200"].issued, days["650200"].revoked) == (1, 1)
        found = services.audit_console.search(session, AUDITOR, AuditFilter(prefecture="650200", action="ca:")).entries
        assert "ca:certificate:issue" in {e.action for e in found} and all(e.object_id == serial for e in found)
        issued = next(e for e in found if e.action == "ca:certificate:issue")
        certificates = services.audit_console.certificate_prefectures(session, AUDITOR, found)
        assert certificates == {serial: "650200"} and prefecture_of(issued, certificates) == "650200"
    bundle = _export(services, AuditFilter(prefecture="650200", action="ca:certificate:issue"))
    report = verify_bundle(_write(tmp_path, bundle), checks=CHECKS)
    assert report.ok and report.matched == 1 and report.proofs == 1

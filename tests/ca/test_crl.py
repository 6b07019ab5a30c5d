"""CRLs: full, delta and the root's ARL, checked with openssl and cryptography."""

from __future__ import annotations

import datetime as dt
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import func, select

from ca.crl import encode_entry, splice_entries, utc_digits
from ca.models import CaKind, CrlKind, CrlRecord
from govpki.audit import AuditEntry
from govpki.clock import UTC
from govpki.config import Config
from govpki.errors import ForbiddenError, InvalidError, NotFoundError
from govpki.principal import SYSTEM, Principal, PrincipalKind, Role
from tests.helpers import csr_pem, write_pem
from web.bootstrap import initialize
from web.container import Services, build_services

AUDITOR = Principal(PrincipalKind.ACCOUNT, "9", "auditor", frozenset({Role.SECURITY_AUDITOR}))
START = (dt.datetime.now(UTC) - dt.timedelta(minutes=10)).replace(microsecond=0)  # openssl checks CRL times


class FakeClock:
    def __init__(self, now: dt.datetime) -> None:
        self.at = now

    def now(self) -> dt.datetime:
        return self.at

    def advance(self, **delta: float) -> None:
        self.at += dt.timedelta(**delta)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def pki(config: Config, clock: FakeClock) -> Iterator[Services]:
    services = build_services(config, clock=clock)
    try:
        initialize(services, SYSTEM, first_admin=False)
        yield services
    finally:
        services.dispose()


def _ids(services: Services) -> tuple[int, int]:
    with services.sessions() as session:
        return services.ca.active_ca(session, CaKind.ROOT).id, services.ca.active_ca(session, CaKind.ISSUING).id


def _issue(services: Services, cn: str) -> tuple[str, bytes]:
    with services.sessions() as session:
        record = services.ca.issue(session, SYSTEM, profile="service-tls-server", csr=csr_pem(cn=cn))
        session.commit()
        assert record.cert_der is not None
        return record.serial, record.cert_der


def _change(services: Services, action: str, serial: str, **kwargs: object) -> None:
    with services.sessions() as session:
        getattr(services.revocation, action)(session, SYSTEM, serial, **kwargs)
        session.commit()


def _generate(services: Services, ca_id: int, kind: CrlKind = CrlKind.FULL) -> CrlRecord:
    with services.sessions() as session:
        record = services.crl.generate(session, SYSTEM, ca_id, kind)
        session.commit()
        session.expunge(record)
        return record


def _entries(der: bytes) -> dict[str, x509.RevokedCertificate]:
    return {format(r.serial_number, "x"): r for r in x509.load_der_x509_crl(der)}


def _reason(entry: x509.RevokedCertificate) -> x509.ReasonFlags | None:
    try:
        return entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        return None


class Openssl:
    """Files for openssl: the root and issuing CA certificates, CRLs, leaves."""

    def __init__(self, services: Services, folder: Path) -> None:
        folder.mkdir(exist_ok=True)
        self.folder = folder
        with services.sessions() as session:
            self.root = write_pem(folder / "root.pem", services.ca.active_ca(session, CaKind.ROOT).cert_der)
            self.issuing = write_pem(folder / "issuing.pem", services.ca.active_ca(session, CaKind.ISSUING).cert_der)

    def crl(self, name: str, der: bytes) -> Path:
        path = self.folder / name
        path.write_bytes(x509.load_der_x509_crl(der).public_bytes(Encoding.PEM))
        return path

    def run(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, check=False)

    def crl_verifies(self, crl: Path, ca: Path) -> bool:
        result = self.run("crl", "-in", crl, "-noout", "-verify", "-CAfile", ca)
        return result.returncode == 0 and "verify OK" in result.stdout + result.stderr

    def verify(self, leaf_der: bytes, *crls: Path, flags: tuple[str, ...] = ("-crl_check",)) -> str:
        leaf = write_pem(self.folder / f"leaf-{secrets.token_hex(4)}.pem", leaf_der)
        args: list[str | Path] = ["verify", *flags, "-CAfile", self.root, "-untrusted", self.issuing]
        for crl in crls:
            args += ["-CRLfile", crl]
        result = self.run(*args, leaf)
        return "OK" if result.returncode == 0 else result.stdout + result.stderr


def test_full_crl_and_arl_are_accepted_by_openssl(pki: Services, tmp_path: Path) -> None:
    root_id, issuing_id = _ids(pki)
    _good, good_der = _issue(pki, "good.example.gov.cn")
    bad, bad_der = _issue(pki, "bad.example.gov.cn")
    plain, _ = _issue(pki, "plain.example.gov.cn")
    held, held_der = _issue(pki, "held.example.gov.cn")
    compromised = START - dt.timedelta(days=2)
    _change(pki, "revoke", bad, reason="keyCompromise", invalidity_date=compromised)
    _change(pki, "revoke", plain, reason="unspecified")
    _change(pki, "hold", held)

    full = _generate(pki, issuing_id)
    assert full.kind == "full" and full.entries == 3 and full.base_number is None
    entries = _entries(full.der)
    assert set(entries) == {bad, plain, held}
    assert _reason(entries[bad]) is x509.ReasonFlags.key_compromise
    assert entries[bad].extensions.get_extension_for_class(x509.InvalidityDate).value.invalidity_date_utc == compromised
    assert _reason(entries[plain]) is None  # unspecified: no reason code (RFC 5280 5.3.1)
    assert _reason(entries[held]) is x509.ReasonFlags.certificate_hold
    crl = x509.load_der_x509_crl(full.der)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == full.number
    idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    assert idp.critical and idp.value.only_contains_user_certs
    cert = x509.load_der_x509_certificate(good_der)
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value[0].full_name
    assert idp.value.full_name == cdp  # the URL in the certificates
    freshest = crl.extensions.get_extension_for_class(x509.FreshestCRL).value[0].full_name
    assert freshest == [x509.UniformResourceIdentifier(f"{pki.config.base_url}/crl/{issuing_id}-delta.crl")]

    ossl = Openssl(pki, tmp_path / "ossl")
    crl_file = ossl.crl("full.pem", full.der)
    assert ossl.crl_verifies(crl_file, ossl.issuing)
    assert ossl.verify(good_der, crl_file) == "OK"
    assert "certificate revoked" in ossl.verify(bad_der, crl_file)
    assert "certificate revoked" in ossl.verify(held_der, crl_file)

    with pki.sessions() as session:
        arl = pki.crl.latest(session, root_id, CrlKind.FULL)  # made by the ceremony
        assert arl is not None and arl.entries == 0
        arl_der = arl.der
    arl_idp = x509.load_der_x509_crl(arl_der).extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    assert arl_idp.value.only_contains_ca_certs and not arl_idp.value.only_contains_user_certs
    assert arl_idp.value.full_name is None  # the root certificate has no CDP: see ca.crl
    arl_file = ossl.crl("arl.pem", arl_der)
    assert ossl.crl_verifies(arl_file, ossl.root)
    assert ossl.verify(good_der, arl_file, crl_file, flags=("-crl_check_all",)) == "OK"
    assert "certificate revoked" in ossl.verify(bad_der, arl_file, crl_file, flags=("-crl_check_all",))
    # without the ARL, -crl_check_all cannot check the issuing CA
    assert "unable to get certificate CRL" in ossl.verify(good_der, crl_file, flags=("-crl_check_all",))

    # the root revokes the issuing CA: its next ARL lists it, and every leaf fails -crl_check_all
    with pki.sessions() as session:
        issuing_serial = pki.ca.active_ca(session, CaKind.ISSUING).serial
    _change(pki, "revoke", issuing_serial, reason="cACompromise")
    arl2 = _generate(pki, root_id)
    assert _reason(_entries(arl2.der)[issuing_serial]) is x509.ReasonFlags.ca_compromise
    arl2_file = ossl.crl("arl2.pem", arl2.der)
    assert ossl.crl_verifies(arl2_file, ossl.root)
    assert "certificate revoked" in ossl.verify(good_der, arl2_file, crl_file, flags=("-crl_check_all",))

    with pki.sessions() as session:
        logged = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "ca:crl:generate").order_by(AuditEntry.seq)
        ).all()
    assert [e.object_id for e in logged][-2:] == [f"{issuing_id}/{full.number}", f"{root_id}/{arl2.number}"]
    assert len(logged) == 4  # the ARL and first CRL at init, this one, the second ARL


def test_delta_crls_with_openssl_use_deltas_and_shared_numbers(pki: Services, tmp_path: Path) -> None:
    _root_id, issuing_id = _ids(pki)
    early, early_der = _issue(pki, "early.example.gov.cn")
    late, late_der = _issue(pki, "late.example.gov.cn")
    _good, good_der = _issue(pki, "good.example.gov.cn")
    _change(pki, "revoke", early, reason="superseded")
    full = _generate(pki, issuing_id)
    _change(pki, "revoke", late, reason="keyCompromise")
    delta = _generate(pki, issuing_id, CrlKind.DELTA)
    assert delta.kind == "delta" and delta.base_number == full.number and delta.number == full.number + 1
    assert set(_entries(delta.der)) == {late}  # only what changed since the base
    indicator = x509.load_der_x509_crl(delta.der).extensions.get_extension_for_class(x509.DeltaCRLIndicator)
    assert indicator.critical and indicator.value.crl_number == full.number

    ossl = Openssl(pki, tmp_path / "ossl")
    full_file, delta_file = ossl.crl("full.pem", full.der), ossl.crl("delta.pem", delta.der)
    assert ossl.crl_verifies(delta_file, ossl.issuing)
    assert ossl.verify(late_der, full_file) == "OK"  # the full CRL alone does not know yet
    deltas = ("-crl_check", "-use_deltas")
    assert "certificate revoked" in ossl.verify(late_der, full_file, delta_file, flags=deltas)
    assert "certificate revoked" in ossl.verify(early_der, full_file, delta_file, flags=deltas)
    assert ossl.verify(good_der, full_file, delta_file, flags=deltas) == "OK"

    again = _generate(pki, issuing_id)
    assert set(_entries(again.der)) == {early, late}
    with pki.sessions() as session:
        numbers = session.scalars(
            select(CrlRecord.number).where(CrlRecord.ca_id == issuing_id).order_by(CrlRecord.id)
        ).all()
    assert numbers == sorted(set(numbers)) and numbers[-1] == again.number == delta.number + 1


def test_hold_release_lists_remove_from_crl_when_the_hold_was_on_the_base(
    pki: Services, clock: FakeClock, tmp_path: Path
) -> None:
    _root_id, issuing_id = _ids(pki)
    released, released_der = _issue(pki, "released.example.gov.cn")
    cycled, _ = _issue(pki, "cycled.example.gov.cn")
    after, _ = _issue(pki, "after.example.gov.cn")
    still, _ = _issue(pki, "still.example.gov.cn")
    _change(pki, "hold", released)
    _change(pki, "hold", cycled)
    clock.advance(seconds=5)
    full = _generate(pki, issuing_id)
    assert set(_entries(full.der)) == {released, cycled}
    clock.advance(seconds=5)
    _change(pki, "release", released)
    # released, held again and released after the base: the first hold was on the base
    _change(pki, "release", cycled)
    clock.advance(seconds=5)
    _change(pki, "hold", cycled)
    _change(pki, "release", cycled)
    # held and released after the base: never on it
    _change(pki, "hold", after)
    _change(pki, "release", after)
    _change(pki, "hold", still)
    clock.advance(seconds=5)

    delta = _generate(pki, issuing_id, CrlKind.DELTA)
    entries = _entries(delta.der)
    assert set(entries) == {released, cycled, still}
    assert _reason(entries[released]) is x509.ReasonFlags.remove_from_crl
    assert _reason(entries[cycled]) is x509.ReasonFlags.remove_from_crl
    assert _reason(entries[still]) is x509.ReasonFlags.certificate_hold

    ossl = Openssl(pki, tmp_path / "ossl")
    full_file, delta_file = ossl.crl("full.pem", full.der), ossl.crl("delta.pem", delta.der)
    assert ossl.crl_verifies(delta_file, ossl.issuing)
    assert "certificate revoked" in ossl.verify(released_der, full_file)
    assert ossl.verify(released_der, full_file, delta_file, flags=("-crl_check", "-use_deltas")) == "OK"
    assert released not in _entries(_generate(pki, issuing_id).der)


def test_expired_certificates_leave_the_crl_and_keep_their_record(pki: Services, clock: FakeClock) -> None:
    _root_id, issuing_id = _ids(pki)
    serial, der = _issue(pki, "expiring.example.gov.cn")
    _change(pki, "revoke", serial, reason="superseded")
    assert serial in _entries(_generate(pki, issuing_id).der)
    not_after = x509.load_der_x509_certificate(der).not_valid_after_utc
    clock.at = not_after  # still listed on its last day
    assert serial in _entries(_generate(pki, issuing_id).der)
    clock.at = not_after + dt.timedelta(seconds=1)
    after = _generate(pki, issuing_id)
    assert after.entries == 0 and serial not in _entries(after.der)
    with pki.sessions() as session:
        assert pki.revocation.status(session, serial).reason == "superseded"


def test_refresh_due_follows_the_schedule_and_leaves_the_root_alone(pki: Services, clock: FakeClock) -> None:
    root_id, issuing_id = _ids(pki)

    def refresh(**kwargs: bool) -> list[tuple[int, str]]:
        with pki.sessions() as session:
            made = pki.crl.refresh_due(session, SYSTEM, **kwargs)
            session.commit()
            return [(r.ca_id, r.kind) for r in made]

    assert refresh() == [(issuing_id, "delta")]  # init made the full CRL; no delta yet
    assert refresh() == []
    clock.advance(minutes=pki.config.delta_crl_refresh_minutes)
    assert refresh() == [(issuing_id, "delta")]
    clock.advance(hours=pki.config.crl_refresh_hours)
    assert refresh() == [(issuing_id, "full"), (issuing_id, "delta")]  # a delta on the new base
    clock.advance(days=pki.config.arl_validity_days)
    assert (root_id, "full") not in refresh()
    assert refresh(include_root=True) == [(root_id, "full")]


def test_refusals(pki: Services) -> None:
    root_id, issuing_id = _ids(pki)
    with pki.sessions() as session:
        with pytest.raises(InvalidError) as caught:
            pki.crl.generate(session, SYSTEM, root_id, CrlKind.DELTA)
        assert caught.value.field == "kind"
        with pytest.raises(InvalidError):
            pki.crl.generate(session, SYSTEM, issuing_id, "weekly")
        with pytest.raises(NotFoundError) as missing:
            pki.crl.generate(session, SYSTEM, 999, CrlKind.FULL)
        assert missing.value.field == "ca"
        with pytest.raises(ForbiddenError):
            pki.crl.generate(session, AUDITOR, issuing_id, CrlKind.FULL)
        assert session.scalar(select(func.count()).select_from(CrlRecord)) == 2


def test_a_delta_without_a_full_crl_makes_the_full_first(pki: Services) -> None:
    _root_id, issuing_id = _ids(pki)
    with pki.sessions() as session:
        for record in session.scalars(select(CrlRecord).where(CrlRecord.ca_id == issuing_id)):
            session.delete(record)
        session.commit()
    delta = _generate(pki, issuing_id, CrlKind.DELTA)
    with pki.sessions() as session:
        full = pki.crl.latest(session, issuing_id, CrlKind.FULL)
        assert full is not None and delta.base_number == full.number < delta.number


@pytest.mark.parametrize("count", [0, 1, 300])
def test_entry_encoding_matches_the_cryptography_builder_byte_for_byte(count: int) -> None:
    """The hand-encoded revokedCertificates equal what CertificateRevocationListBuilder makes."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "t")])
    now = dt.datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)
    reasons = [None, "unspecified", "keyCompromise", "certificateHold", "removeFromCRL", "aACompromise"]
    builder = x509.CertificateRevocationListBuilder().issuer_name(name).last_update(now).next_update(now)
    builder = builder.add_extension(x509.CRLNumber(7), critical=False)
    ours = bytearray()
    for i in range(count):
        serial = secrets.randbits(127 if i % 3 else 159) | (1 << (i % 120))
        when = now - dt.timedelta(days=i) if i % 5 else dt.datetime(2051, 1, 2, 3, 4, 5, tzinfo=UTC)
        reason = reasons[i % len(reasons)]
        invalid = now - dt.timedelta(days=30 + i) if i % 4 == 0 else None  # also with no reason code
        ours += encode_entry(format(serial, "x"), utc_digits(when), reason, utc_digits(invalid) if invalid else None)
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when)
        if reason not in (None, "unspecified"):
            flag = x509.ReasonFlags.remove_from_crl if reason == "removeFromCRL" else x509.ReasonFlags(reason)
            entry = entry.add_extension(x509.CRLReason(flag), critical=False)
        if invalid is not None:
            entry = entry.add_extension(x509.InvalidityDate(invalid), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    template = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(name)
        .last_update(now)
        .next_update(now)
        .add_extension(x509.CRLNumber(7), critical=False)
        .sign(key, hashes.SHA256())
    )
    expected = builder.sign(key, hashes.SHA256()).tbs_certlist_bytes
    assert splice_entries(template.tbs_certlist_bytes, ours) == expected

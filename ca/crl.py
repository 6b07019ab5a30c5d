"""Certificate revocation lists: a full CRL and delta CRLs per issuing CA, and the
root's ARL (its CRL of subordinate CAs).

Numbering and consistency. Generating a CRL first bumps ``ca_status.crl_number``
with ``UPDATE … RETURNING`` on the CA's counters row and reads ``status_seq`` from
the same row. Status changes (ca.revocation) update that row too, so a CRL and the
status changes of its CA are serialised: the CRL reflects exactly the changes up to
its ``status_seq`` and none after. Full and delta CRLs share one number sequence
(RFC 5280 §5.2.4).

What is listed. A full CRL lists the CA's possibly-issued certificates (see
``POSSIBLY_ISSUED``) that are revoked or on hold and not expired at thisUpdate (an
expired certificate leaves the CRL; its record stays). A delta CRL on base B (the
newest full CRL, reflecting status sequence S) lists the certificates whose status
changed after S and that are now revoked or on hold, and ``removeFromCRL`` for those
whose hold was on B and has been released since (see ``_released_since``).

Delta CRLs and openssl (``verify -crl_check -use_deltas -CRLfile full -CRLfile delta``,
OpenSSL 3.0, checked in the tests): openssl fetches nothing, so both files must be
given; it looks for a delta only when the certificate or the full CRL carries a
Freshest CRL extension (our certificates' CDP names only the full CRL, so the full
CRL carries it); and it takes a delta only if its AKI and IDP extensions equal the
full CRL's byte for byte, its base number is at most the full CRL's number and its
own number is greater. A delta made before the newest full CRL is therefore ignored
(``refresh_due`` makes a delta on each new full CRL).

Encoding. The CRL is shaped by ``cryptography``'s ``CertificateRevocationListBuilder``
(header, extensions, algorithm identifier; signed with a throw-away key of the same
shape), but the revokedCertificates list is DER-encoded here and spliced into the
to-be-signed bytes, which the CA's signer handle then signs. Why: the builder needs
one ``RevokedCertificate`` object per entry, built one by one (about 10 µs and
~400 bytes of heap each: ~15 s and ~470 MB for a million entries, measured), and
``add_revoked_certificate`` copies the list each time (quadratic: 22 s for 100,000).
An entry is a fixed structure (serial, time, up to two extensions) that costs about
a microsecond to encode from the row, its times formatted by the database. The
signature is checked against the CA certificate before the CRL is stored; the tests
check the entries byte for byte against the builder's and the CRLs with ``openssl
crl -verify`` / ``openssl verify -crl_check`` and ``cryptography``'s parser.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import ColumnElement, Row, String, func, or_, select, update
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, defer
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from ca.events import CaEvent
from ca.models import (
    POSSIBLY_ISSUED,
    CaKind,
    CaStatus,
    CertificateAuthority,
    CertificateRecord,
    CrlKind,
    CrlRecord,
    RevocationReason,
)
from ca.services import _LINT_KEYS, can_issue
from govpki import audit
from govpki.clock import Clock
from govpki.errors import ConflictError, ForbiddenError, InvalidError, NotFoundError, UnavailableError
from govpki.principal import Principal
from keymgmt.interfaces import KeyStore, PublicKey, SignerHandle, signature_hash
from keymgmt.services import KeyService

Progress = Callable[[int, int], None]
"""``progress(done, total)``: called every ``CHUNK`` entries while a CRL is built."""

CHUNK = 10_000
_Row = tuple[str, str | None, str | None, str | None]  # serial, utc_digits(revoked), reason, utc_digits(invalidity)
ROOT_STORE = "root"


@dataclass(frozen=True)
class CrlSettings:
    base_url: str
    crl_validity: _dt.timedelta = _dt.timedelta(hours=24)
    crl_refresh: _dt.timedelta = _dt.timedelta(hours=6)
    delta_validity: _dt.timedelta = _dt.timedelta(minutes=60)
    delta_refresh: _dt.timedelta = _dt.timedelta(minutes=15)
    arl_validity: _dt.timedelta = _dt.timedelta(days=30)


def crl_url(base_url: str, ca_id: int) -> str:
    """The full CRL's distribution point (what ``CaService.urls_for`` writes into certificates)."""
    return f"{base_url}/crl/{ca_id}.crl"


def delta_crl_url(base_url: str, ca_id: int) -> str:
    return f"{base_url}/crl/{ca_id}-delta.crl"


# ----- DER for the revokedCertificates list -------------------------------------

# RFC 5280 CRLReason codes (7 is unused; removeFromCRL is 8).
REASON_CODES: dict[str, int] = {
    RevocationReason.UNSPECIFIED.value: 0,
    RevocationReason.KEY_COMPROMISE.value: 1,
    RevocationReason.CA_COMPROMISE.value: 2,
    RevocationReason.AFFILIATION_CHANGED.value: 3,
    RevocationReason.SUPERSEDED.value: 4,
    RevocationReason.CESSATION_OF_OPERATION.value: 5,
    RevocationReason.CERTIFICATE_HOLD.value: 6,
    "removeFromCRL": 8,
    RevocationReason.PRIVILEGE_WITHDRAWN.value: 9,
    RevocationReason.AA_COMPROMISE.value: 10,
}
REMOVE_FROM_CRL = "removeFromCRL"


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def _tlv(tag: int, content: bytes | bytearray) -> bytes:
    return bytes((tag,)) + _der_length(len(content)) + bytes(content)


def _children(der: bytes) -> tuple[int, list[bytes]]:
    """The tag and the child TLVs (raw) of one constructed DER element."""
    tag = der[0]
    pos, end = _header(der, 0)
    if end != len(der):
        raise ValueError("trailing bytes after a DER element")
    children = []
    while pos < end:
        start = pos
        _content, child_end = _header(der, pos)
        children.append(der[start:child_end])
        pos = child_end
    return tag, children


def _header(der: bytes, pos: int) -> tuple[int, int]:
    """(start of content, end of element) of the TLV at ``pos``."""
    first = der[pos + 1]
    if first < 0x80:
        start, length = pos + 2, first
    else:
        count = first & 0x7F
        start = pos + 2 + count
        length = int.from_bytes(der[pos + 2 : start], "big")
    return start, start + length


# Entry extensions: Extension ::= SEQUENCE { extnID, extnValue OCTET STRING }.
# id-ce-cRLReasons (2.5.29.21) holding an ENUMERATED; id-ce-invalidityDate (2.5.29.24)
# holding a GeneralizedTime.
_REASON_EXT = {
    name: _tlv(0x30, b"\x06\x03\x55\x1d\x15" + _tlv(0x04, _tlv(0x0A, bytes((code,)))))
    for name, code in REASON_CODES.items()
}
_INVALIDITY_PREFIX = b"\x30\x18\x06\x03\x55\x1d\x18\x04\x11\x18\x0f"


def utc_digits(value: _dt.datetime) -> str:
    """``YYYYMMDDHHMMSS`` in UTC, the form ``encode_entry`` takes (and SQL ``utc_digits`` gives)."""
    return value.astimezone(_dt.UTC).strftime("%Y%m%d%H%M%S")


_LEN = [bytes((n,)) for n in range(128)]  # short-form DER lengths; an entry's parts are all < 128 bytes


def encode_entry(serial_hex: str, revoked_at: str, reason: str | None, invalidity_date: str | None) -> bytes:
    """One revokedCertificates entry; times as ``utc_digits``. The reason code is left
    out for unspecified (RFC 5280 §5.3.1); the invalidity date is added when known.
    revocationDate is UTCTime through 2049 and GeneralizedTime from 2050 (RFC 5280
    §5.1.2.6); invalidityDate is always GeneralizedTime (§5.3.2)."""
    serial = bytes.fromhex(serial_hex if len(serial_hex) % 2 == 0 else "0" + serial_hex)
    if serial[0] & 0x80:
        serial = b"\x00" + serial
    if "1950" <= revoked_at < "2050":
        when = b"\x17\x0d" + revoked_at[2:].encode("ascii") + b"Z"
    else:
        when = b"\x18\x0f" + revoked_at.encode("ascii") + b"Z"
    body = b"\x02" + _LEN[len(serial)] + serial + when
    if reason is not None and reason != "unspecified":
        exts = _REASON_EXT[reason]
        if invalidity_date is not None:
            exts += _INVALIDITY_PREFIX + invalidity_date.encode("ascii") + b"Z"
        body += b"\x30" + _LEN[len(exts)] + exts
    elif invalidity_date is not None:
        exts = _INVALIDITY_PREFIX + invalidity_date.encode("ascii") + b"Z"
        body += b"\x30" + _LEN[len(exts)] + exts
    return b"\x30" + _LEN[len(body)] + body


class SqlUtcDigits(FunctionElement[str]):
    """SQL: a UTC timestamp column as ``YYYYMMDDHHMMSS`` text, so that a million
    revocation times need no datetime objects on the way to their DER."""

    type = String()
    name = "utc_digits"
    inherit_cache = True


@compiles(SqlUtcDigits, "sqlite")
def _utc_digits_sqlite(element: SqlUtcDigits, compiler: SQLCompiler, **kw: Any) -> str:
    return f"strftime('%Y%m%d%H%M%S', {compiler.process(element.clauses, **kw)})"


@compiles(SqlUtcDigits, "postgresql")
def _utc_digits_postgresql(element: SqlUtcDigits, compiler: SQLCompiler, **kw: Any) -> str:
    return f"to_char(({compiler.process(element.clauses, **kw)}) AT TIME ZONE 'UTC', 'YYYYMMDDHH24MISS')"


def splice_entries(template_tbs: bytes, entries: bytes | bytearray) -> bytes:
    """Insert ``revokedCertificates`` (the concatenated entries) into a TBSCertList
    made without any: it goes after thisUpdate/nextUpdate, before ``[0] crlExtensions``.
    No entries: the list is left out, as RFC 5280 §5.1.2.6 asks."""
    if not entries:
        return template_tbs
    tag, children = _children(template_tbs)
    if tag != 0x30:
        raise ValueError("a TBSCertList is a SEQUENCE")
    revoked = b"\x30" + _der_length(len(entries)) + bytes(entries)
    at = next((i for i, child in enumerate(children) if child[0] == 0xA0), len(children))
    content = b"".join(children[:at]) + revoked + b"".join(children[at:])
    return _tlv(0x30, content)


def assemble(tbs: bytes, algorithm_identifier: bytes, signature: bytes) -> bytes:
    """CertificateList ::= SEQUENCE { tbsCertList, signatureAlgorithm, signatureValue BIT STRING }."""
    return _tlv(0x30, tbs + algorithm_identifier + _tlv(0x03, b"\x00" + signature))


def sign_tbs(signer: SignerHandle, public_key: PublicKey, tbs: bytes) -> bytes:
    algorithm = signature_hash(public_key)
    if isinstance(signer, ec.EllipticCurvePrivateKey):
        return signer.sign(tbs, ec.ECDSA(algorithm))
    assert isinstance(signer, rsa.RSAPrivateKey)
    return signer.sign(tbs, padding.PKCS1v15(), algorithm)


# ----- the service ---------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    serial: str
    revoked_at: _dt.datetime
    reason: str | None
    invalidity_date: _dt.datetime | None


_ENTRY_COLUMNS = (
    CertificateRecord.serial,
    SqlUtcDigits(CertificateRecord.revoked_at),
    CertificateRecord.revocation_reason,
    SqlUtcDigits(CertificateRecord.invalidity_date),
)


class CrlService:
    def __init__(
        self, settings: CrlSettings, keystores: Mapping[str, KeyStore], clock: Clock, keys: KeyService | None = None
    ) -> None:
        self.settings = settings
        self._keystores = keystores
        self._clock = clock
        self._keys = keys

    # ----- reading ---------------------------------------------------------

    def latest(
        self, session: Session, ca_id: int, kind: CrlKind = CrlKind.FULL, *, with_der: bool = True
    ) -> CrlRecord | None:
        """The newest CRL of this kind (public: CRLs are published). ``with_der=False``
        leaves the (possibly tens of MB) DER unloaded until it is read."""
        query = (
            select(CrlRecord)
            .where(CrlRecord.ca_id == ca_id, CrlRecord.kind == CrlKind(kind).value)
            .order_by(CrlRecord.number.desc())
            .limit(1)
        )
        if not with_der:
            query = query.options(defer(CrlRecord.der))
        return session.scalars(query).first()

    def find_ca(self, session: Session, ca_id: int) -> CertificateAuthority:
        ca = session.get(CertificateAuthority, ca_id)
        if ca is None:
            raise NotFoundError(f"no CA with id {ca_id}", field="ca")
        return ca

    # ----- generating --------------------------------------------------------

    def generate(
        self,
        session: Session,
        principal: Principal,
        ca_id: int,
        kind: CrlKind | str = CrlKind.FULL,
        progress: Progress | None = None,
    ) -> CrlRecord:
        """Sign and store a new CRL of ``ca_id`` (audited, in the caller's transaction).
        A delta needs a full CRL to be based on: one is generated first if there is none."""
        if not can_issue(principal):
            raise ForbiddenError("your role may not generate CRLs", field="ca")
        try:
            kind = CrlKind(kind)
        except ValueError:
            raise InvalidError(f"{kind!r} is not 'full' or 'delta'", field="kind") from None
        ca = self.find_ca(session, ca_id)
        if ca.retired_at is not None:
            raise ConflictError(
                f"CA {ca.id} ({ca.name}) is retired: every certificate it issued has expired and it signs no more CRLs",
                field="ca",
                code="ca.retired",
            )
        is_root = ca.kind == CaKind.ROOT.value
        if is_root and kind is CrlKind.DELTA:
            raise InvalidError("the root publishes only a full CRL (its ARL), no delta CRLs", field="kind")
        if kind is CrlKind.DELTA and self.latest(session, ca.id, CrlKind.FULL, with_der=False) is None:
            self.generate(session, principal, ca.id, CrlKind.FULL, progress)

        ca_cert = x509.load_der_x509_certificate(ca.cert_der)
        public_key = ca_cert.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise UnavailableError("the CA certificate has an unsupported key type", field="ca")
        # The key first: a missing (offline) key fails before anything is locked or numbered.
        signer = self._keystores[ca.key_store].signer(ca.key_handle)

        now = self._clock.now()
        this_update = now.replace(microsecond=0)
        if is_root:
            validity = self.settings.arl_validity
        elif kind is CrlKind.FULL:
            validity = self.settings.crl_validity
        else:
            validity = self.settings.delta_validity
        next_update = this_update + validity

        # Number it and lock the CA's counters row (serialises with status changes).
        row = session.execute(
            update(CaStatus)
            .where(CaStatus.ca_id == ca.id)
            .values(crl_number=CaStatus.crl_number + 1, updated_at=now)
            .returning(CaStatus.crl_number, CaStatus.status_seq)
        ).one_or_none()
        if row is None:  # pragma: no cover - every CA gets its row when it is created
            raise NotFoundError(f"CA {ca.id} has no status row", field="ca")
        number, status_seq = int(row[0]), int(row[1])

        base: CrlRecord | None = None
        if kind is CrlKind.DELTA:
            base = self.latest(session, ca.id, CrlKind.FULL, with_der=False)
            assert base is not None

        extensions = self._extensions(ca, ca_cert, kind, number, base)
        template = x509.CertificateRevocationListBuilder(
            issuer_name=ca_cert.subject, last_update=this_update, next_update=next_update, extensions=extensions
        ).sign(_LINT_KEYS.like(public_key), signature_hash(public_key))
        _tag, outer = _children(template.public_bytes(Encoding.DER))
        algorithm_identifier = outer[1]

        if base is None:
            rows = self._full_rows(session, ca.id, this_update, count=progress is not None)
        else:
            rows = self._delta_rows(session, ca.id, base, this_update)
        count, body = _encode(rows, progress)
        tbs = splice_entries(template.tbs_certlist_bytes, body)
        del body
        signature = sign_tbs(signer, public_key, tbs)
        self._check(tbs, signature, public_key, ca)
        der = assemble(tbs, algorithm_identifier, signature)
        del tbs

        digest = hashlib.sha256(der).hexdigest()
        record = CrlRecord(
            ca_id=ca.id,
            number=number,
            kind=kind.value,
            base_number=base.number if base is not None else None,
            status_seq=status_seq,
            this_update=this_update,
            next_update=next_update,
            entries=count,
            der=der,
            sha256=digest,
            created_at=now,
        )
        session.add(record)
        session.flush()
        if self._keys is not None:
            self._keys.count_use(session, ca.key_store, ca.key_handle)
        audit.record(
            session,
            principal,
            CaEvent.CRL_GENERATE.value,
            object_type="crl",
            object_id=f"{ca.id}/{number}",
            details={
                "ca_id": ca.id,
                "number": number,
                "kind": kind.value,
                "arl": is_root,
                "base_number": record.base_number,
                "status_seq": status_seq,
                "entries": count,
                "this_update": this_update.isoformat(),
                "next_update": next_update.isoformat(),
                "sha256": digest,
                "bytes": len(der),
            },
            clock=self._clock,
        )
        return record

    def refresh_due(self, session: Session, principal: Principal, *, include_root: bool = False) -> list[CrlRecord]:
        """The scheduler's hook: generate what is due and return the new CRLs.

        For each issuing CA that is not retired (online key store; a CA superseded by a
        rollover keeps publishing for the certificates it issued): a full CRL when there is none,
        the newest is ``crl_refresh`` old or it is past its nextUpdate; a delta when
        there is none, the newest is ``delta_refresh`` old, past its nextUpdate, or
        based on an older full CRL than the newest. The root (ARL) only with
        ``include_root=True`` — the caller vouches that the root key store is at hand
        (a ceremony) — when it has none or the newest is past half its validity.
        The caller commits (one transaction for everything generated)."""
        now = self._clock.now()
        made: list[CrlRecord] = []
        query = (
            select(CertificateAuthority)
            .where(CertificateAuthority.retired_at.is_(None))
            .order_by(CertificateAuthority.id)
        )
        for ca in session.scalars(query).all():
            if ca.kind == CaKind.ROOT.value:
                if not include_root:
                    continue
                arl = self.latest(session, ca.id, CrlKind.FULL, with_der=False)
                if arl is None or now >= arl.this_update + self.settings.arl_validity / 2:
                    made.append(self.generate(session, principal, ca.id, CrlKind.FULL))
                continue
            if ca.key_store == ROOT_STORE:
                continue
            full = self.latest(session, ca.id, CrlKind.FULL, with_der=False)
            if full is None or now >= full.this_update + self.settings.crl_refresh or now >= full.next_update:
                full = self.generate(session, principal, ca.id, CrlKind.FULL)
                made.append(full)
            delta = self.latest(session, ca.id, CrlKind.DELTA, with_der=False)
            if (
                delta is None
                or delta.base_number != full.number
                or now >= delta.this_update + self.settings.delta_refresh
                or now >= delta.next_update
            ):
                made.append(self.generate(session, principal, ca.id, CrlKind.DELTA))
        return made

    # ----- helpers -----------------------------------------------------------

    def _extensions(
        self,
        ca: CertificateAuthority,
        ca_cert: x509.Certificate,
        kind: CrlKind,
        number: int,
        base: CrlRecord | None,
    ) -> list[x509.Extension[x509.ExtensionType]]:
        is_root = ca.kind == CaKind.ROOT.value
        base_url = self.settings.base_url
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        # The issuing CA's CRLs name the distribution point of its certificates. The
        # root's ARL names none: the root certificate has no CRL distribution point, and
        # a CRL whose IDP names one is out of scope for such a certificate (RFC 5280
        # 6.3.3 (b)(2); ``openssl verify -crl_check_all`` checks the root too and
        # refuses it with "different CRL scope"). onlyContainsCACerts is its scope.
        idp = x509.IssuingDistributionPoint(
            full_name=None if is_root else [x509.UniformResourceIdentifier(crl_url(base_url, ca.id))],
            relative_name=None,
            only_contains_user_certs=not is_root,
            only_contains_ca_certs=is_root,
            only_some_reasons=None,
            indirect_crl=False,
            only_contains_attribute_certs=False,
        )
        extensions: list[x509.Extension[x509.ExtensionType]] = [
            x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(number)),
            x509.Extension(
                x509.AuthorityKeyIdentifier.oid,
                False,
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
            ),
            x509.Extension(x509.IssuingDistributionPoint.oid, True, idp),
        ]
        if base is not None:
            extensions.append(x509.Extension(x509.DeltaCRLIndicator.oid, True, x509.DeltaCRLIndicator(base.number)))
        elif not is_root:
            freshest = x509.FreshestCRL(
                [
                    x509.DistributionPoint(
                        [x509.UniformResourceIdentifier(delta_crl_url(base_url, ca.id))], None, None, None
                    )
                ]
            )
            extensions.append(x509.Extension(x509.FreshestCRL.oid, False, freshest))
        return extensions

    @staticmethod
    def _listed(ca_id: int, when: _dt.datetime) -> list[ColumnElement[bool]]:
        """On a CRL made at ``when``: revoked or on hold, possibly issued, not expired."""
        return [
            CertificateRecord.ca_id == ca_id,
            CertificateRecord.revocation_reason.is_not(None),
            CertificateRecord.state.in_(POSSIBLY_ISSUED),
            or_(CertificateRecord.not_after.is_(None), CertificateRecord.not_after >= when),
        ]

    def _full_rows(
        self, session: Session, ca_id: int, when: _dt.datetime, *, count: bool
    ) -> tuple[int, Iterable[_Row]]:
        where = self._listed(ca_id, when)
        total = session.execute(select(func.count()).where(*where)).scalar_one() if count else 0
        query = select(*_ENTRY_COLUMNS).where(*where)
        # Core rows straight off the session's connection (same transaction), fetched in chunks.
        result = session.connection().execute(query.execution_options(stream_results=True, yield_per=CHUNK))
        return total, _rows(result.partitions(CHUNK))

    def _delta_rows(
        self, session: Session, ca_id: int, base: CrlRecord, when: _dt.datetime
    ) -> tuple[int, Iterable[_Row]]:
        changed = session.execute(
            select(*_ENTRY_COLUMNS).where(*self._listed(ca_id, when), CertificateRecord.status_seq > base.status_seq)
        ).all()
        released = self._released_since(session, ca_id, base, when)
        rows: list[_Row] = [tuple(r) for r in changed]  # type: ignore[misc]
        rows.extend((serial, utc_digits(released_at), REMOVE_FROM_CRL, None) for serial, released_at in released)
        return len(rows), rows

    def _released_since(
        self, session: Session, ca_id: int, base: CrlRecord, when: _dt.datetime
    ) -> list[tuple[str, _dt.datetime]]:
        """Certificates on hold on the base CRL and released since: (serial, released_at).

        Candidates are now good, changed after the base (their last change is a release)
        and were released from a hold at least once. ``released_hold_at`` is when the
        *last* hold began: at or before the base's thisUpdate, that hold was on the base
        (a hold committed after the base may share its second: listing such a serial
        with removeFromCRL is a no-op for relying parties, never a wrong answer). Later
        than that, an earlier hold may still have spanned the base (hold, base, release,
        hold, release): for those few the base CRL itself says whether it listed them."""
        candidates = session.execute(
            select(CertificateRecord.serial, CertificateRecord.released_at, CertificateRecord.released_hold_at).where(
                CertificateRecord.ca_id == ca_id,
                CertificateRecord.revocation_reason.is_(None),
                CertificateRecord.state.in_(POSSIBLY_ISSUED),
                CertificateRecord.status_seq > base.status_seq,
                CertificateRecord.released_hold_at.is_not(None),
                CertificateRecord.released_at.is_not(None),
                or_(CertificateRecord.not_after.is_(None), CertificateRecord.not_after >= when),
            )
        ).all()
        out: list[tuple[str, _dt.datetime]] = []
        base_crl: x509.CertificateRevocationList | None = None
        for serial, released_at, held_at in candidates:
            on_base = held_at is not None and held_at <= base.this_update
            if not on_base:
                if base_crl is None:
                    base_crl = x509.load_der_x509_crl(base.der)
                on_base = base_crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
            if on_base and released_at is not None:
                out.append((serial, released_at))
        return out

    @staticmethod
    def _check(tbs: bytes, signature: bytes, public_key: PublicKey, ca: CertificateAuthority) -> None:
        """Check the signature against the CA certificate before anything is stored (a
        signer that is not the CA's key, or a faulty device, must not publish a CRL)."""
        algorithm = signature_hash(public_key)
        try:
            if isinstance(public_key, ec.EllipticCurvePublicKey):
                public_key.verify(signature, tbs, ec.ECDSA(algorithm))
            else:
                public_key.verify(signature, tbs, padding.PKCS1v15(), algorithm)
        except InvalidSignature:  # pragma: no cover - a signer that does not match the CA certificate
            raise UnavailableError(
                f"the CRL signed with CA {ca.id}'s key does not verify against its certificate; nothing was stored",
                field="ca",
            ) from None


def _encode(rows: tuple[int, Iterable[_Row]], progress: Progress | None) -> tuple[int, bytearray]:
    total, source = rows
    body = bytearray()
    count = 0
    encode = encode_entry
    for serial, revoked_at, reason, invalidity_date in source:
        if revoked_at is None:  # pragma: no cover - the schema ties revoked_at to the reason
            raise UnavailableError(f"certificate {serial} is listed without a revocation time", field="serial")
        body += encode(serial, revoked_at, reason, invalidity_date)
        count += 1
        if progress is not None and count % CHUNK == 0:
            progress(count, max(total, count))
    if progress is not None:
        progress(count, max(total, count))
    return count, body


def _rows(partitions: Iterable[Sequence[Row[*_Row]]]) -> Iterator[_Row]:
    for partition in partitions:
        for row in partition:
            yield tuple(row)  # type: ignore[misc]

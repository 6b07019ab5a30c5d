"""Where the validation service gets revocation status from.

* :class:`OwnCaStatus` — certificates issued by our own CAs: our records.
* :class:`CrlStatus` — anybody else's: the CRL named in the certificate's CRL
  distribution point, fetched over HTTP (short timeout, size limit), its
  signature checked against the issuer, cached until its nextUpdate.
* :class:`GivenCrls` — CRLs handed over by the caller (tests, offline checks).

A CRL that cannot be fetched or used gives ``unknown`` with the reason; it never
makes a path invalid on its own (soft fail), and the answer says so.
"""

from __future__ import annotations

import datetime as _dt
import threading
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from sqlalchemy import select
from sqlalchemy.orm import Session

from ca.models import POSSIBLY_ISSUED, CertificateAuthority, CertificateRecord
from ca.revocation import RevocationService
from ca.validation import RevocationStatus, StatusLookup
from govpki.clock import Clock

CRL_TIMEOUT_SECONDS = 5.0
MAX_CRL_BYTES = 4 * 1024 * 1024
MAX_CACHED_CRLS = 256


def _reason_name(entry: x509.RevokedCertificate) -> str | None:
    try:
        return entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.name
    except (x509.ExtensionNotFound, ValueError):
        return None


def status_from_crl(
    crl: x509.CertificateRevocationList,
    issuer: x509.Certificate,
    cert: x509.Certificate,
    *,
    at: _dt.datetime,
    now: _dt.datetime,
    source: str,
) -> RevocationStatus:
    """Look ``cert`` up in ``crl`` after checking the CRL is the issuer's, signed by it and current."""

    def unknown(reason: str) -> RevocationStatus:
        return RevocationStatus("unknown", source=source, reason=reason)

    if crl.issuer != issuer.subject:
        return unknown("the CRL was issued by another CA than the certificate's issuer")
    try:
        key_usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        key_usage = None
    if key_usage is not None and not key_usage.crl_sign:
        return unknown("the issuer's key usage does not allow it to sign CRLs (no cRLSign)")
    try:
        signed = crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        signed = False
    if not signed:
        return unknown("the CRL's signature does not verify with the issuer's key")
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber)
    except x509.ExtensionNotFound:
        return unknown("the CRL has no CRL number (RFC 5280 requires one)")
    except ValueError:
        return unknown("the CRL's extensions cannot be decoded")
    if number.critical:
        return unknown("the CRL marks its CRL number critical (RFC 5280 forbids it)")
    next_update = crl.next_update_utc
    if crl.last_update_utc > now + _dt.timedelta(minutes=5):
        return unknown(f"the CRL is dated in the future ({crl.last_update_utc.isoformat()})")
    if next_update is not None and next_update < now:
        return unknown(f"the CRL is out of date: its next update was due {next_update.isoformat()}")
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    if entry is None:
        return RevocationStatus("good", source=source)
    revoked_at = entry.revocation_date_utc
    if revoked_at > at:
        return RevocationStatus(
            "good",
            source=source,
            reason=f"revoked later, on {revoked_at.isoformat()}, after the validation time",
            revoked_at=revoked_at,
            revocation_reason=_reason_name(entry),
        )
    return RevocationStatus("revoked", source=source, revoked_at=revoked_at, revocation_reason=_reason_name(entry))


def load_crl(data: bytes) -> x509.CertificateRevocationList:
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


def http_fetch(url: str) -> bytes:
    """GET ``url`` (http or https only) with a short timeout, refusing bodies over MAX_CRL_BYTES."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"only http and https CRL locations are fetched, not {url.split(':', 1)[0]}")
    request = urllib.request.Request(url, headers={"Accept": "application/pkix-crl"})  # noqa: S310  (scheme checked)
    with urllib.request.urlopen(request, timeout=CRL_TIMEOUT_SECONDS) as response:  # noqa: S310
        data: bytes = response.read(MAX_CRL_BYTES + 1)
    if len(data) > MAX_CRL_BYTES:
        raise ValueError(f"the CRL is larger than {MAX_CRL_BYTES} bytes")
    return data


def distribution_points(cert: x509.Certificate) -> list[str]:
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    urls: list[str] = []
    for point in points:
        for name in point.full_name or []:
            if isinstance(name, x509.UniformResourceIdentifier) and name.value.startswith(("http://", "https://")):
                urls.append(name.value)
    return urls


class CrlStatus:
    """Revocation status from the CRL at the certificate's distribution point.

    CRLs are cached per URL until their nextUpdate (at most MAX_CACHED_CRLS of them);
    a failed fetch is not cached."""

    def __init__(self, clock: Clock, fetch: Callable[[str], bytes] = http_fetch) -> None:
        self._clock = clock
        self._fetch = fetch
        self._cache: dict[str, x509.CertificateRevocationList] = {}
        self._lock = threading.Lock()

    def _crl(self, url: str) -> x509.CertificateRevocationList:
        now = self._clock.now()
        with self._lock:
            cached = self._cache.get(url)
        if cached is not None and (cached.next_update_utc is None or cached.next_update_utc > now):
            return cached
        crl = load_crl(self._fetch(url))
        with self._lock:
            if len(self._cache) >= MAX_CACHED_CRLS:
                self._cache.clear()
            self._cache[url] = crl
        return crl

    def status(self, issuer: x509.Certificate, cert: x509.Certificate, at: _dt.datetime) -> RevocationStatus:
        urls = distribution_points(cert)
        if not urls:
            return RevocationStatus("unknown", reason="the certificate names no http CRL distribution point")
        problems: list[str] = []
        for url in urls:
            try:
                crl = self._crl(url)
            except (OSError, ValueError) as exc:
                problems.append(f"{url}: {exc}")
                continue
            status = status_from_crl(crl, issuer, cert, at=at, now=self._clock.now(), source=f"crl {url}")
            if status.status != "unknown":
                return status
            problems.append(f"{url}: {status.reason}")
        return RevocationStatus("unknown", source="crl", reason="no usable CRL: " + "; ".join(problems))


class GivenCrls:
    """Revocation status from CRLs the caller already holds."""

    def __init__(self, crls: Sequence[x509.CertificateRevocationList], clock: Clock) -> None:
        self._crls = list(crls)
        self._clock = clock

    def status(self, issuer: x509.Certificate, cert: x509.Certificate, at: _dt.datetime) -> RevocationStatus:
        candidates = [crl for crl in self._crls if crl.issuer == issuer.subject]
        if not candidates:
            return RevocationStatus("unknown", reason="no CRL from this issuer was given")
        status = RevocationStatus("unknown")
        for crl in candidates:
            status = status_from_crl(crl, issuer, cert, at=at, now=self._clock.now(), source="given crl")
            if status.status != "unknown":
                return status
        return status


# ----- our own CAs ----------------------------------------------------------------


@dataclass(frozen=True)
class RevokedEntry:
    revoked_at: _dt.datetime
    reason: str | None


class RevocationRecords(Protocol):
    """The narrow view of the revocation data model that validation needs."""

    def revoked(self, session: Session, ca_id: int, serial: str) -> RevokedEntry | None: ...


class DatabaseRecords:
    """:class:`RevocationRecords` from the revocation data model (``ca.revocation``).

    A certificate on hold counts as revoked (reason ``certificateHold``), as OCSP says."""

    def __init__(self, revocation: RevocationService) -> None:
        self._revocation = revocation

    def revoked(self, session: Session, ca_id: int, serial: str) -> RevokedEntry | None:
        status = self._revocation.status(session, serial, ca_id=ca_id)
        if not status.is_revoked or status.revoked_at is None:
            return None
        return RevokedEntry(status.revoked_at, status.reason)


def _same_certificate(record: CertificateRecord, cert: x509.Certificate) -> bool:
    if record.cert_der is not None:
        return record.cert_der == cert.public_bytes(serialization.Encoding.DER)
    # left "approved" by a crash: possibly signed; the stored lint copy has the exact TBS
    if record.tbs_der is None:
        return False
    return x509.load_der_x509_certificate(record.tbs_der).tbs_certificate_bytes == cert.tbs_certificate_bytes


class OwnCaStatus:
    """Status of certificates our CAs issued, from our records; anything else goes to ``others``.

    ``records`` is the revocation data model; without it the status of our
    certificates is ``unknown``."""

    def __init__(
        self,
        session: Session,
        cas: Sequence[CertificateAuthority],
        records: RevocationRecords | None,
        others: StatusLookup,
    ) -> None:
        self._session = session
        self._cas = {ca.fingerprint_sha256: ca for ca in cas}
        self._records = records
        self._others = others

    def status(self, issuer: x509.Certificate, cert: x509.Certificate, at: _dt.datetime) -> RevocationStatus:
        ca = self._cas.get(issuer.fingerprint(hashes.SHA256()).hex())
        if ca is None:
            return self._others.status(issuer, cert, at)
        serial = format(cert.serial_number, "x")
        record = self._session.scalars(
            select(CertificateRecord).where(CertificateRecord.serial == serial, CertificateRecord.ca_id == ca.id)
        ).first()
        if record is None or record.state not in POSSIBLY_ISSUED or not _same_certificate(record, cert):
            return RevocationStatus(
                "unknown",
                source="database",
                reason=f"CA {ca.name} has no record of issuing this certificate (serial {serial})",
            )
        if self._records is None:
            return RevocationStatus(
                "unknown", source="database", reason="revocation records are not wired to this service"
            )
        entry = self._records.revoked(self._session, ca.id, serial)
        if entry is None:
            return RevocationStatus("good", source="database")
        if entry.revoked_at > at:
            return RevocationStatus(
                "good",
                source="database",
                reason=f"revoked later, on {entry.revoked_at.isoformat()}, after the validation time",
                revoked_at=entry.revoked_at,
                revocation_reason=entry.reason,
            )
        return RevocationStatus(
            "revoked", source="database", revoked_at=entry.revoked_at, revocation_reason=entry.reason
        )

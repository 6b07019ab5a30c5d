"""The validation service: :func:`ca.validation.validate` wired to this CA.

Trust anchors are our root CAs that are not retired (after a root rollover, the
old and the new root) plus the extra anchors configured by
``GOVPKI_EXTRA_TRUST_ANCHORS_FILE``; our issuing CA certificates that are not
retired are offered as intermediates, so callers may omit them. Revocation status of what
our CAs issued comes from our records, of anything else from its CRL. The
service only reads: it writes nothing, not even an audit entry.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from sqlalchemy import select
from sqlalchemy.orm import Session

from ca.models import CaKind, CertificateAuthority
from ca.revocation_status import OwnCaStatus, RevocationRecords
from ca.validation import ClientRequirements, Purpose, StatusLookup, ValidationResult, validate
from govpki.clock import Clock
from govpki.errors import ConfigError, ForbiddenError
from govpki.principal import Principal, PrincipalKind


def can_validate(principal: Principal) -> bool:
    """Validation answers questions about public certificates: any authenticated principal may ask."""
    return principal.kind is PrincipalKind.SYSTEM or bool(principal.roles)


def load_trust_anchors(path: Path) -> list[x509.Certificate]:
    """The certificates of a PEM file; ConfigError naming the variable when it is unusable."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"GOVPKI_EXTRA_TRUST_ANCHORS_FILE: cannot read {path}: {exc.strerror}") from exc
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(f"GOVPKI_EXTRA_TRUST_ANCHORS_FILE: {path} is not a file of PEM certificates") from None
    for cert in certs:
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except (x509.ExtensionNotFound, ValueError):
            constraints = None
        if constraints is None or not constraints.ca:
            raise ConfigError(
                f"GOVPKI_EXTRA_TRUST_ANCHORS_FILE: {cert.subject.rfc4514_string()} in {path} is not a CA certificate"
            )
    return certs


class ValidationService:
    def __init__(
        self,
        *,
        clock: Clock,
        crl_status: StatusLookup,
        extra_anchors: Sequence[x509.Certificate] = (),
        records: RevocationRecords | None = None,
    ) -> None:
        self._clock = clock
        self._crl_status = crl_status
        self._extra_anchors = list(extra_anchors)
        self._records = records

    def validate(
        self,
        session: Session,
        principal: Principal,
        *,
        certificate: bytes,
        intermediates: Sequence[bytes] = (),
        purpose: Purpose,
        host: str | None = None,
        at: _dt.datetime | None = None,
        client: ClientRequirements | None = None,
    ) -> ValidationResult:
        if not can_validate(principal):
            raise ForbiddenError("your role may not validate certificates")
        cas = list(session.scalars(select(CertificateAuthority).order_by(CertificateAuthority.id)))
        active = [ca for ca in cas if ca.retired_at is None]  # superseded CAs serve until retired
        anchors = [x509.load_der_x509_certificate(ca.cert_der) for ca in active if ca.kind == CaKind.ROOT.value]
        ours = [x509.load_der_x509_certificate(ca.cert_der) for ca in active if ca.kind == CaKind.ISSUING.value]
        return validate(
            certificate,
            intermediates,
            purpose=purpose,
            host=host,
            at=at or self._clock.now(),
            trust_anchors=[*anchors, *self._extra_anchors],
            extra_intermediates=ours,
            revocation=OwnCaStatus(session, cas, self._records, self._crl_status),
            client=client,
        )

    def validate_client(
        self,
        session: Session,
        principal: Principal,
        *,
        certificate: bytes,
        key_usages: frozenset[str],
        policy_oids: frozenset[str],
    ) -> ValidationResult:
        """A TLS client certificate for sign-in (a person or an application), now: the path,
        revocation, EKU clientAuth, ``key_usages`` and one of ``policy_oids`` (none: any),
        each whether or not marked critical."""
        return self.validate(
            session,
            principal,
            certificate=certificate,
            purpose=Purpose.TLS_CLIENT,
            client=ClientRequirements(key_usages=key_usages, policy_oids=policy_oids),
        )

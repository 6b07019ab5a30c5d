"""Officials' encryption certificates (the encryption half of the dual certificates),
with the key made and escrowed by the key-management centre.

Order, because the CA's issuance ledger commits each of its steps itself (see
``ca.ledger``): the KMC makes and seals the key and a CSR (writes nothing) → the CA
issues the encryption profile's certificate for that CSR through the normal recorded
and linted pipeline (committed) → the KMC records the sealed key linked to the serial
and audits it (the caller's transaction) → the official gets the key, certificate and
chain as PKCS#12 under a one-time password that is returned once and stored nowhere.

If the last step cannot be committed after the certificate was issued, the certificate
has no recoverable key: the error says so and names the serial, which should then be
revoked (``superseded``) and the issuance repeated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography import x509
from sqlalchemy import select
from sqlalchemy.orm import Session

from ca.builder import build_name
from ca.csr import check_subject_value
from ca.models import CaKind, CertificateAuthority, CertificateRecord
from ca.profiles import SubjectField
from ca.services import CaService, can_request
from govpki.config import KMC_KEY_ALGORITHMS
from govpki.errors import ForbiddenError, GovpkiError, InvalidError, NotFoundError, UnavailableError
from govpki.principal import Principal
from keymgmt.kmc import KmcService, Pkcs12Bundle, check_encryption_usage
from keymgmt.kmc_models import EscrowedKey, RecoveryRequest

ENCRYPTION_PROFILE = "official-encryption"
# what the CA's CSR check accepts in an rfc822Name (ASCII; no internationalised addresses)
_EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9.-]{1,253}")


@dataclass(frozen=True)
class IssuedEncryption:
    record: CertificateRecord
    escrow: EscrowedKey
    pkcs12: Pkcs12Bundle


class EncryptionCertificateService:
    def __init__(self, *, ca: CaService, kmc: KmcService) -> None:
        self._ca = ca
        self._kmc = kmc

    def issue(
        self,
        session: Session,
        principal: Principal,
        *,
        common_name: str,
        organizational_unit: str | None = None,
        locality: str | None = None,
        email: str | None = None,
        algorithm: str | None = None,
        profile: str = ENCRYPTION_PROFILE,
        validity_days: int | None = None,
    ) -> IssuedEncryption:
        """Make, certify and escrow an official's encryption key; return its PKCS#12 once.
        Needs a session without uncommitted writes (the CA commits its own steps)."""
        if not can_request(principal):
            raise ForbiddenError("your role may not request certificates", field="profile", code="ra.may_not_request")
        chosen = self._ca.profiles.get(profile)
        # refuse before any key is made: the KMC escrows encryption keys only
        check_encryption_usage(chosen.name, chosen.key_usage)
        fields: list[tuple[SubjectField, str]] = []
        parts: tuple[tuple[SubjectField, str | None, str], ...] = (
            ("L", locality, "locality"),
            ("OU", organizational_unit, "organizational_unit"),
            ("CN", common_name, "common_name"),
        )
        for name, value, label in parts:
            if value is not None and value.strip():
                fields.append((name, check_subject_value(name, value.strip(), label)))
        if not any(name == "CN" for name, _ in fields):
            raise InvalidError("the official's name is required", field="common_name", code="ra.required")
        sans: list[x509.GeneralName] = []
        if email:
            if "email" not in chosen.san_types:
                raise InvalidError(
                    f"profile {chosen.name} takes no e-mail address", field="email", code="ra.email_not_allowed"
                )
            address = email.strip()
            if not _EMAIL.fullmatch(address):
                raise InvalidError(
                    f"{address!r} is not an e-mail address (ASCII local@domain)", field="email", code="ra.bad_email"
                )
            sans.append(x509.RFC822Name(address))
        key_algorithm = None
        if algorithm is not None:
            key_algorithm = next((a for a in KMC_KEY_ALGORITHMS if a == algorithm), None)
            if key_algorithm is None:
                raise InvalidError(
                    f"must be one of {', '.join(KMC_KEY_ALGORITHMS)}", field="algorithm", code="ra.unknown_algorithm"
                )
        generated = self._kmc.generate(
            session,
            principal,
            profile=chosen.name,
            key_usage=chosen.key_usage,
            subject=build_name(fields),
            sans=sans,
            algorithm=key_algorithm,
        )
        record = self._ca.issue(
            session, principal, profile=chosen.name, csr=generated.csr_der, validity_days=validity_days
        )
        assert record.cert_der is not None
        certificate = x509.load_der_x509_certificate(record.cert_der)
        try:
            escrow = self._kmc.record_escrow(
                session, principal, generated, ca_id=record.ca_id, cert_serial=record.serial, subject=record.subject
            )
            bundle = self._kmc.pkcs12(
                escrow, certificate=certificate, chain=self._chain(session, record.ca_id), name=common_name.strip()
            )
        except GovpkiError as exc:
            raise UnavailableError(
                f"certificate {record.serial} was issued but its key could not be escrowed ({exc.reason}); "
                "revoke it (superseded) and issue again",
                field="serial",
                code="kmc.escrow_failed",
                params={"serial": record.serial},
            ) from exc
        return IssuedEncryption(record=record, escrow=escrow, pkcs12=bundle)

    def release(self, session: Session, principal: Principal, request_id: int) -> tuple[RecoveryRequest, Pkcs12Bundle]:
        """Release an approved recovery: the escrowed key with its certificate and chain as a
        new PKCS#12 under a new one-time password (the KMC checks who and how many approved)."""
        request = self._kmc.check_releasable(session, principal, request_id)
        escrow = request.escrow
        record = session.scalars(
            select(CertificateRecord).where(
                CertificateRecord.serial == escrow.cert_serial, CertificateRecord.ca_id == escrow.ca_id
            )
        ).first()
        if record is None or record.cert_der is None:
            raise NotFoundError(
                f"the certificate {escrow.cert_serial} of escrowed key {escrow.id} is not on record",
                field="request_id",
                code="ra.escrow_certificate_missing",
                params={"serial": escrow.cert_serial},
            )
        certificate = x509.load_der_x509_certificate(record.cert_der)
        name = next((a.value for a in certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)), "")
        return self._kmc.release(
            session,
            principal,
            request_id,
            certificate=certificate,
            chain=self._chain(session, escrow.ca_id),
            name=str(name),
        )

    def _chain(self, session: Session, ca_id: int) -> list[x509.Certificate]:
        """The issuing CA's certificate and those above it (the root last)."""
        chain: list[x509.Certificate] = []
        ca = session.get(CertificateAuthority, ca_id)
        while ca is not None:
            chain.append(x509.load_der_x509_certificate(ca.cert_der))
            if ca.kind == CaKind.ROOT.value or ca.parent_id is None:
                break
            ca = session.get(CertificateAuthority, ca.parent_id)
        return chain

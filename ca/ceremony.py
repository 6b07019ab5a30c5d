"""Key ceremonies: who was present, what was done, which keys and certificates came out.

A ceremony (root key generation, signing an issuing CA, root rollover) is run by a
security administrator in front of witnesses. :meth:`CeremonyService.begin` checks the
operator's role and the witnesses before anything is done (a refusal changes nothing);
the caller then runs the steps through the CA services and :meth:`CeremonyService.record`
writes the record — what was done, when, each new key's SPKI SHA-256 and algorithm and
key store, each certificate's SHA-256, who was present — to the audit log
(``ca:ceremony:<kind>``) and returns it for printing and filing.

Witness rule: at least :data:`MIN_WITNESSES` different people (names compared without
case and surrounding or repeated spaces) besides the operator; the operator may not
also sign as a witness.
"""

from __future__ import annotations

import datetime as _dt
import enum
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from sqlalchemy.orm import Session

from ca.events import CaEvent
from ca.models import CertificateAuthority, CrlRecord, CrossCertificate
from ca.services import can_set_up, spki_fingerprint
from govpki import audit
from govpki.clock import Clock
from govpki.errors import ForbiddenError, InvalidError
from govpki.principal import Principal

MIN_WITNESSES = 2
MAX_WITNESS_NAME = 100


class CeremonyKind(enum.StrEnum):
    ROOT_KEY = "root-key"
    SIGN_ISSUING = "sign-issuing"
    ROOT_ROLLOVER = "root-rollover"


_EVENTS = {
    CeremonyKind.ROOT_KEY: CaEvent.CEREMONY_ROOT_KEY,
    CeremonyKind.SIGN_ISSUING: CaEvent.CEREMONY_SIGN_ISSUING,
    CeremonyKind.ROOT_ROLLOVER: CaEvent.CEREMONY_ROOT_ROLLOVER,
}


def _normal(name: str) -> str:
    return " ".join(name.split()).casefold()


def check_witnesses(principal: Principal, witnesses: Sequence[str]) -> tuple[str, ...]:
    """The witnesses, cleaned (surrounding and repeated spaces), in the order given;
    InvalidError (field ``witness``) naming what is wrong."""
    cleaned: list[str] = []
    seen: set[str] = set()
    operator = {_normal(principal.name), _normal(principal.name.split(":", 1)[-1])}
    for raw in witnesses:
        name = " ".join(raw.split())
        if not name:
            raise InvalidError("a witness name must not be empty", field="witness")
        if len(name) > MAX_WITNESS_NAME:
            raise InvalidError(f"a witness name must be at most {MAX_WITNESS_NAME} characters", field="witness")
        if any(unicodedata.category(c).startswith("C") for c in name):
            raise InvalidError(f"witness {name!r} contains control characters", field="witness")
        key = _normal(name)
        if key in seen:
            raise InvalidError(f"witness {name!r} is named twice", field="witness")
        if key in operator:
            raise InvalidError(
                f"witness {name!r} is the operator running the ceremony; witnesses are other people", field="witness"
            )
        seen.add(key)
        cleaned.append(name)
    if len(cleaned) < MIN_WITNESSES:
        raise InvalidError(
            f"a key ceremony needs at least {MIN_WITNESSES} different witnesses besides the operator "
            f"(got {len(cleaned)}); name each with --witness",
            field="witness",
        )
    return tuple(cleaned)


@dataclass
class Outcome:
    """What the steps of a ceremony (or a rollover) did, in order."""

    actions: list[str] = field(default_factory=list)
    cas: list[CertificateAuthority] = field(default_factory=list)
    crosses: list[CrossCertificate] = field(default_factory=list)
    crls: list[CrlRecord] = field(default_factory=list)


@dataclass
class Ceremony:
    """A ceremony under way: checked, nothing written yet. Its steps fill ``outcome``."""

    kind: CeremonyKind
    operator: str
    witnesses: tuple[str, ...]
    started_at: _dt.datetime
    outcome: Outcome = field(default_factory=Outcome)


def _time(value: _dt.datetime) -> str:
    return value.astimezone(_dt.UTC).isoformat().replace("+00:00", "Z")


class CeremonyService:
    def __init__(self, clock: Clock, key_stores: Mapping[str, str]) -> None:
        """``key_stores``: a description of each key store by name ("root", "online")."""
        self._clock = clock
        self._key_stores = dict(key_stores)

    def begin(self, principal: Principal, kind: CeremonyKind | str, witnesses: Sequence[str]) -> Ceremony:
        """Check the operator and the witnesses; nothing is done or written."""
        if not can_set_up(principal):
            raise ForbiddenError("only a security administrator may conduct a key ceremony", field="ceremony")
        try:
            kind = CeremonyKind(kind)
        except ValueError:
            choices = ", ".join(k.value for k in CeremonyKind)
            raise InvalidError(f"unknown ceremony {kind!r}; one of {choices}", field="ceremony") from None
        return Ceremony(
            kind=kind,
            operator=principal.audit_name,
            witnesses=check_witnesses(principal, witnesses),
            started_at=self._clock.now(),
        )

    def record(
        self, session: Session, principal: Principal, ceremony: Ceremony, *, failure: str | None = None
    ) -> dict[str, Any]:
        """Write the ceremony record to the audit log (the caller commits) and return it.
        With ``failure`` the record says how far the ceremony got and why it stopped."""
        document: dict[str, Any] = {
            "ceremony": ceremony.kind.value,
            "outcome": "failure" if failure else "success",
            "started_at": _time(ceremony.started_at),
            "finished_at": _time(self._clock.now()),
            "operator": ceremony.operator,
            "witnesses": list(ceremony.witnesses),
            "actions": list(ceremony.outcome.actions),
            "keys": [self._ca_entry(ca) for ca in ceremony.outcome.cas],
            "cross_certificates": [self._cross_entry(c) for c in ceremony.outcome.crosses],
            "crls": [self._crl_entry(c) for c in ceremony.outcome.crls],
        }
        if failure:
            document["failure"] = failure
        ref = audit.record(
            session,
            principal,
            _EVENTS[ceremony.kind].value,
            object_type="ceremony",
            object_id=ceremony.kind.value,
            details=document,
            outcome="failure" if failure else "success",
            clock=self._clock,
        )
        document["audit_seq"] = ref.seq
        return document

    def _ca_entry(self, ca: CertificateAuthority) -> dict[str, Any]:
        cert = x509.load_der_x509_certificate(ca.cert_der)
        return {
            "ca_id": ca.id,
            "name": ca.name,
            "kind": ca.kind,
            "subject": ca.subject,
            "issuer": cert.issuer.rfc4514_string(),
            "serial": ca.serial,
            "key_algorithm": ca.key_algorithm,
            "key_store": ca.key_store,
            "key_store_description": self._key_stores.get(ca.key_store, ca.key_store),
            "key_handle": ca.key_handle,
            "spki_sha256": spki_fingerprint(cert),
            "certificate_sha256": ca.fingerprint_sha256,
            "not_before": _time(ca.not_before),
            "not_after": _time(ca.not_after),
        }

    @staticmethod
    def _cross_entry(cross: CrossCertificate) -> dict[str, Any]:
        cert = x509.load_der_x509_certificate(cross.cert_der)
        return {
            "cross_id": cross.id,
            "direction": cross.direction,
            "subject": cross.subject,
            "issuer": cross.issuer,
            "serial": cross.serial,
            "spki_sha256": spki_fingerprint(cert),
            "certificate_sha256": cross.fingerprint_sha256,
            "not_before": _time(cross.not_before),
            "not_after": _time(cross.not_after),
        }

    @staticmethod
    def _crl_entry(crl: CrlRecord) -> dict[str, Any]:
        return {"ca_id": crl.ca_id, "kind": crl.kind, "number": crl.number, "sha256": crl.sha256}


def render(document: Mapping[str, Any]) -> Iterable[str]:
    """The record as lines for a terminal (the JSON file holds the same)."""
    yield f"KEY CEREMONY RECORD: {document['ceremony']} ({document['outcome']})"
    yield f"  started:   {document['started_at']}"
    yield f"  finished:  {document['finished_at']}"
    yield f"  operator:  {document['operator']}"
    yield f"  witnesses: {', '.join(document['witnesses'])}"
    if document.get("failure"):
        yield f"  FAILED:    {document['failure']}"
    yield "  actions:"
    for action in document["actions"]:
        yield f"    - {action}"
    for key in document["keys"]:
        yield f"  {key['kind']} CA {key['ca_id']} {key['name']}"
        yield f"    subject:            {key['subject']}"
        yield f"    issuer:             {key['issuer']}"
        yield f"    serial:             {key['serial']}"
        yield f"    key:                {key['key_algorithm']} in the {key['key_store']} key store"
        yield f"                        ({key['key_store_description']}), handle {key['key_handle']}"
        yield f"    key SPKI SHA-256:   {key['spki_sha256']}"
        yield f"    certificate SHA-256:{' '}{key['certificate_sha256']}"
        yield f"    valid:              {key['not_before']} .. {key['not_after']}"
    for cross in document["cross_certificates"]:
        yield f"  cross-certificate {cross['cross_id']} ({cross['direction']})"
        yield f"    subject:            {cross['subject']}"
        yield f"    issuer:             {cross['issuer']}"
        yield f"    key SPKI SHA-256:   {cross['spki_sha256']}"
        yield f"    certificate SHA-256:{' '}{cross['certificate_sha256']}"
        yield f"    valid:              {cross['not_before']} .. {cross['not_after']}"
    for crl in document["crls"]:
        yield f"  signed {crl['kind']} CRL #{crl['number']} of CA {crl['ca_id']} (SHA-256 {crl['sha256']})"
    if "audit_seq" in document:
        yield f"  audit log entry: {document['audit_seq']}"

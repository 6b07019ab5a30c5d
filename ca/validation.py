"""Certificate validation for applications: path building, RFC 5280 checks and
revocation status, with answers a developer can act on.

The core, :func:`validate`, is pure: it takes the certificates, the purpose, the
trust anchors and a :class:`StatusLookup`, and never touches the database.
Path building and every RFC 5280 / CA/B-Forum check come from
``cryptography.x509.verification``; this module only chooses the policy for the
purpose and translates the library's failure messages into stable dotted codes
and plain reasons. ``ca.validation_service.ValidationService`` wires the core to this CA: our
active root CA(s) (plus configured extra anchors) are the anchors, our issuing
CA certificates are offered as intermediates, revocation of what our CAs issued
comes from our records and of anything else from the issuer's CRL
(``ca.validation_service``).
"""

from __future__ import annotations

import datetime as _dt
import enum
import hashlib
import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from govpki.errors import InvalidError

MAX_INTERMEDIATES = 10
"""Intermediates a caller may send. Real paths here are one or two deep; more is a mistake or abuse."""
MAX_CERTIFICATE_BYTES = 32 * 1024
"""Largest certificate accepted (PEM text or DER). Ours are under 2 KiB."""
DEFAULT_MAX_CHAIN_DEPTH = 8
"""Intermediates allowed between the end-entity certificate and the trust anchor."""


class Purpose(enum.StrEnum):
    TLS_CLIENT = "tls_client"
    TLS_SERVER = "tls_server"
    DOCUMENT_SIGNING = "document_signing"


RevocationState = Literal["good", "revoked", "unknown", "not_checked"]


@dataclass(frozen=True)
class RevocationStatus:
    status: RevocationState
    source: str | None = None
    """Where the answer came from: ``database``, ``crl <url>``, ``trust anchor``."""
    reason: str | None = None
    """Why the status is ``unknown`` or ``not_checked``, or a note on ``good``."""
    revoked_at: _dt.datetime | None = None
    revocation_reason: str | None = None
    """RFC 5280 CRLReason name, e.g. ``key_compromise``, when revoked."""


class StatusLookup(Protocol):
    """Revocation status of ``cert``, issued by ``issuer``, as it stood at ``at``."""

    def status(self, issuer: x509.Certificate, cert: x509.Certificate, at: _dt.datetime) -> RevocationStatus: ...


@dataclass(frozen=True)
class PathEntry:
    subject: str
    issuer: str
    serial: str
    fingerprint_sha256: str
    not_before: _dt.datetime
    not_after: _dt.datetime
    role: Literal["end_entity", "intermediate", "trust_anchor"]
    revocation: RevocationStatus


@dataclass(frozen=True)
class ValidationResult:
    valid: bool
    code: str
    """``validation.ok`` or a stable dotted failure code."""
    reason: str
    purpose: Purpose
    host: str | None
    validated_at: _dt.datetime
    certificate: PathEntry | None
    """The end-entity certificate as sent (also when no path could be built)."""
    path: tuple[PathEntry, ...] = ()
    """The built path, end entity first, trust anchor last; empty when none was built."""
    detail: str | None = None
    """The validation library's own message, for the curious."""


# ----- input --------------------------------------------------------------------

NOT_A_CERTIFICATE = "is not an X.509 certificate (PEM or DER)"


def load_certificate(data: bytes, *, field: str) -> x509.Certificate:
    """One certificate from PEM or DER bytes; InvalidError naming ``field`` otherwise."""
    if not data:
        raise InvalidError("is empty; send an X.509 certificate (PEM or DER)", field=field)
    if len(data) > MAX_CERTIFICATE_BYTES:
        raise InvalidError(
            f"is {len(data)} bytes; certificates over {MAX_CERTIFICATE_BYTES} bytes are not accepted", field=field
        )
    text = data.lstrip()
    try:
        if text.startswith(b"-----BEGIN"):
            if text.count(b"-----BEGIN") > 1:
                raise InvalidError(
                    "holds more than one PEM block; send one certificate here and the others in intermediates",
                    field=field,
                )
            return x509.load_pem_x509_certificate(text)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise InvalidError(NOT_A_CERTIFICATE, field=field, code="validation.malformed_input") from None


def parse_host(host: str) -> x509.DNSName | x509.IPAddress:
    text = host.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        pass
    name = text.lower().removesuffix(".")
    if not name or len(name) > 253 or not re.fullmatch(r"[a-z0-9_*.-]+", name):
        raise InvalidError(f"{host!r} is not a DNS name or IP address", field="host")
    return x509.DNSName(name)


# ----- the core -----------------------------------------------------------------


def _require_email_protection(_policy: Policy, _cert: x509.Certificate, eku: x509.ExtendedKeyUsage) -> None:
    if ExtendedKeyUsageOID.EMAIL_PROTECTION not in eku:
        raise ValueError("not for document signing: its extended key usage lacks emailProtection")


def _require_signing_key_usage(_policy: Policy, _cert: x509.Certificate, ku: x509.KeyUsage) -> None:
    if not (ku.digital_signature or ku.content_commitment):
        raise ValueError("not for document signing: its key usage has neither digitalSignature nor nonRepudiation")


@dataclass(frozen=True)
class ClientRequirements:
    """What a TLS client certificate must carry to sign in (``purpose`` tls_client):
    extended key usage clientAuth, the key usages named here and, when ``policy_oids`` is
    not empty, one of these certificate policies. Each is checked whether or not the
    extension is marked critical (the web PKI defaults refuse a critical EKU or a
    critical certificatePolicies; a sign-in certificate may carry either)."""

    key_usages: frozenset[str] = frozenset({"digital_signature"})
    """Attribute names of ``x509.KeyUsage`` that must be set, e.g. ``digital_signature``."""
    policy_oids: frozenset[str] = frozenset()


def _client_checks(
    requirements: ClientRequirements,
) -> tuple[Callable[..., None], Callable[..., None], Callable[..., None]]:
    def eku(_policy: Policy, _cert: x509.Certificate, value: x509.ExtendedKeyUsage) -> None:
        if ExtendedKeyUsageOID.CLIENT_AUTH not in value:
            raise ValueError("not for sign-in: its extended key usage lacks clientAuth")

    def key_usage(_policy: Policy, _cert: x509.Certificate, value: x509.KeyUsage) -> None:
        missing = sorted(name for name in requirements.key_usages if not getattr(value, name))
        if missing:
            raise ValueError(f"not for sign-in: its key usage lacks {', '.join(missing)}")

    def policies(_policy: Policy, _cert: x509.Certificate, value: x509.CertificatePolicies) -> None:
        asserted = {info.policy_identifier.dotted_string for info in value}
        if requirements.policy_oids and not asserted & requirements.policy_oids:
            raise ValueError(
                f"not for sign-in: certificate policy {', '.join(sorted(requirements.policy_oids))} "
                f"is not asserted (it has {', '.join(sorted(asserted)) or 'none'})"
            )

    return eku, key_usage, policies


def _ee_policy(purpose: Purpose, client: ClientRequirements | None = None) -> ExtensionPolicy:
    # Client and signing certificates need not name anything (our profiles make the SAN optional).
    policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
    )
    if purpose is Purpose.TLS_CLIENT and client is not None:
        eku, key_usage, policies = _client_checks(client)
        policy = policy.require_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, eku).require_present(
            x509.KeyUsage, Criticality.AGNOSTIC, key_usage
        )
        if client.policy_oids:
            policy = policy.require_present(x509.CertificatePolicies, Criticality.AGNOSTIC, policies)
        else:
            policy = policy.may_be_present(x509.CertificatePolicies, Criticality.AGNOSTIC, None)
    if purpose is Purpose.DOCUMENT_SIGNING:
        policy = policy.require_present(
            x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _require_email_protection
        ).require_present(x509.KeyUsage, Criticality.AGNOSTIC, _require_signing_key_usage)
    return policy


def validate(
    leaf: bytes,
    intermediates: Sequence[bytes] = (),
    *,
    purpose: Purpose,
    host: str | None = None,
    at: _dt.datetime,
    trust_anchors: Sequence[x509.Certificate],
    revocation: StatusLookup,
    extra_intermediates: Sequence[x509.Certificate] = (),
    max_chain_depth: int = DEFAULT_MAX_CHAIN_DEPTH,
    max_intermediates: int = MAX_INTERMEDIATES,
    client: ClientRequirements | None = None,
) -> ValidationResult:
    """Build and check a path from ``leaf`` to one of ``trust_anchors`` for ``purpose`` at ``at``.

    Malformed input (not a certificate, too many or too large, missing or bad host)
    raises InvalidError naming the field. A certificate that is not valid is an
    answer, not an error: ``valid`` is false and ``code``/``reason`` say why.
    ``extra_intermediates`` are offered for path building besides the caller's.
    ``client`` (purpose tls_client only): what a sign-in certificate must carry besides."""
    if len(intermediates) > max_intermediates:
        raise InvalidError(
            f"holds {len(intermediates)} certificates; at most {max_intermediates} intermediates are accepted",
            field="intermediates",
        )
    if purpose is Purpose.TLS_SERVER:
        if host is None or not host.strip():
            raise InvalidError("is required when purpose is tls_server: the name the client connected to", field="host")
        subject = parse_host(host)
    elif host is not None:
        raise InvalidError(f"is only used when purpose is tls_server, not {purpose.value}", field="host")
    if client is not None and purpose is not Purpose.TLS_CLIENT:
        raise InvalidError(f"client requirements apply to tls_client, not {purpose.value}", field="purpose")
    if at.tzinfo is None:
        raise InvalidError("must carry a time zone", field="time")
    leaf_cert = load_certificate(leaf, field="certificate")
    chain_in = [load_certificate(der, field=f"intermediates.{i}") for i, der in enumerate(intermediates)]
    seen = {_fp(c) for c in chain_in}
    chain_in += [c for c in extra_intermediates if _fp(c) not in seen]

    at = at.astimezone(_dt.UTC)
    entry = _describe(leaf_cert, "end_entity", RevocationStatus("not_checked", reason="no path was built"))
    result = ValidationResult(
        valid=False,
        code="validation.untrusted",
        reason="",
        purpose=purpose,
        host=host,
        validated_at=at,
        certificate=entry,
    )
    if entry is None:
        return replace(
            result, code="validation.malformed_certificate", reason="the certificate's fields cannot be decoded"
        )
    if not trust_anchors:
        return replace(result, reason="there is no trust anchor to validate against")

    builder = PolicyBuilder().store(Store(list(trust_anchors))).time(at).max_chain_depth(max_chain_depth)
    try:
        if purpose is Purpose.TLS_SERVER:
            chain = builder.build_server_verifier(subject).verify(leaf_cert, chain_in)
        else:
            builder = builder.extension_policies(
                ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=_ee_policy(purpose, client)
            )
            chain = builder.build_client_verifier().verify(leaf_cert, chain_in).chain
    except VerificationError as exc:
        code, reason, detail = explain(str(exc), leaf_cert, chain_in, trust_anchors, at=at, host=host)
        return replace(result, code=code, reason=reason, detail=detail)
    except ValueError as exc:  # e.g. a name the verifier cannot use
        return replace(result, code="validation.malformed_certificate", reason=str(exc), detail=str(exc))

    path: list[PathEntry] = []
    for i, cert in enumerate(chain):
        last = i == len(chain) - 1
        if last:
            status = RevocationStatus("not_checked", source="trust anchor", reason="trust anchors are trusted as such")
        else:
            status = revocation.status(chain[i + 1], cert, at)
        role: Literal["end_entity", "intermediate", "trust_anchor"] = (
            "end_entity" if i == 0 else "trust_anchor" if last else "intermediate"
        )
        described = _describe(cert, role, status)
        if described is None:  # pragma: no cover - the verifier decoded it already
            return replace(result, code="validation.malformed_certificate", reason="a path certificate cannot be read")
        path.append(described)
    result = replace(result, path=tuple(path), certificate=path[0])
    revoked = [p for p in path if p.revocation.status == "revoked"]
    if revoked:
        first = revoked[0]
        which = "the certificate" if first.role == "end_entity" else f"CA certificate {first.subject}"
        when = f" on {_iso(first.revocation.revoked_at)}" if first.revocation.revoked_at else ""
        why = f" ({first.revocation.revocation_reason})" if first.revocation.revocation_reason else ""
        return replace(result, code="validation.revoked", reason=f"{which} was revoked{when}{why}")
    unknown = [p for p in path if p.revocation.status == "unknown"]
    reason = f"a path to trust anchor {path[-1].subject} was built and checked for {purpose.value}"
    if unknown:
        reason += f"; revocation status unknown for {len(unknown)} certificate(s), see path"
    return replace(result, valid=True, code="validation.ok", reason=reason)


def _fp(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(hashes.SHA256())


def _iso(value: _dt.datetime | None) -> str:
    return value.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else "?"


def _describe(
    cert: x509.Certificate, role: Literal["end_entity", "intermediate", "trust_anchor"], status: RevocationStatus
) -> PathEntry | None:
    try:
        return PathEntry(
            subject=cert.subject.rfc4514_string(),
            issuer=cert.issuer.rfc4514_string(),
            serial=format(cert.serial_number, "x") if cert.serial_number >= 0 else f"-{-cert.serial_number:x}",
            fingerprint_sha256=hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            role=role,
            revocation=status,
        )
    except ValueError:
        return None


# ----- explaining failures ------------------------------------------------------

_ENCOUNTERED = re.compile(r"\s*\(encountered processing <Certificate\(.*\)>\)\s*$", re.DOTALL)

# (pattern in the library's message, code, reason) — first match wins.
_RULES: tuple[tuple[str, str, str], ...] = (
    ("not for sign-in: certificate policy", "validation.wrong_policy", ""),
    ("not for sign-in", "validation.wrong_purpose", ""),
    (
        "2.5.29.37: Certificate is missing required extension",
        "validation.wrong_purpose",
        "the certificate has no extended key usage; sign-in needs clientAuth",
    ),
    (
        "2.5.29.15: Certificate is missing required extension",
        "validation.wrong_purpose",
        "the certificate has no key usage; sign-in needs digitalSignature",
    ),
    (
        "2.5.29.32: Certificate is missing required extension",
        "validation.wrong_policy",
        "the certificate asserts no certificate policy; sign-in needs the official certificate policy",
    ),
    ("has no matching subjectAltName", "validation.hostname_mismatch", ""),
    ("has no subjectAltName", "validation.hostname_mismatch", "the certificate names no host (no subjectAltName)"),
    (
        "name constraint",
        "validation.name_constraints",
        "a CA in the path is not allowed to issue for the names in the certificate (name constraints)",
    ),
    ("no permitted name constraints", "validation.name_constraints", ""),
    ("EKU", "validation.wrong_purpose", ""),
    ("not for document signing", "validation.wrong_purpose", ""),
    ("exceeds max depth", "validation.path_too_long", "the path to a trust anchor is longer than allowed"),
    (
        "path length constraint",
        "validation.path_too_long",
        "a CA in the path may not have this many CAs below it (basicConstraints pathLen)",
    ),
    (
        "Exceeded maximum",
        "validation.too_complex",
        "path building gave up: the certificates are too many or too tangled",
    ),
    (
        "signature does not match",
        "validation.bad_signature",
        "no trusted issuer's key verifies the signature: the certificate was not issued by a CA trusted here, "
        "or it was altered",
    ),
    ("parsing error", "validation.malformed_certificate", "a certificate in the path is not well-formed DER"),
    ("malformed", "validation.malformed_certificate", "a certificate in the path has a malformed field"),
    ("Forbidden", "validation.forbidden_algorithm", "a certificate uses a key or signature algorithm not allowed"),
    ("too weak", "validation.forbidden_algorithm", "a certificate in the path has a key that is too weak"),
    (
        "no interior errors",
        "validation.untrusted",
        "no path to a trust anchor: the issuer is unknown here (send the intermediate CA certificates?)",
    ),
    ("basicConstraints", "validation.not_a_ca", ""),
    ("keyCertSign", "validation.not_a_ca", ""),
)


def explain(
    message: str,
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    *,
    at: _dt.datetime,
    host: str | None,
) -> tuple[str, str, str]:
    """(code, reason, detail) for the verifier's message."""
    detail = _ENCOUNTERED.sub("", message).removeprefix("validation failed: ").strip()
    core = detail.removeprefix("candidates exhausted: ")
    if "not valid at validation time" in core:
        return (*_explain_time(leaf, [*intermediates, *anchors], at), detail)
    for needle, code, reason in _RULES:
        if needle in core:
            if code == "validation.hostname_mismatch" and not reason:
                return code, f"the certificate is not for {host!r}; it names {_names(leaf) or 'no host'}", detail
            if not reason and "not for sign-in" in core:
                return code, "the certificate is " + core[core.index("not for sign-in") :], detail
            return code, reason or f"the certificate is not acceptable: {core}", detail
    if "extension" in core:
        return "validation.bad_extension", f"a certificate breaks an RFC 5280 extension rule: {core}", detail
    return "validation.policy", f"the certificate breaks a validation rule: {core}", detail


def _explain_time(leaf: x509.Certificate, cas: Sequence[x509.Certificate], at: _dt.datetime) -> tuple[str, str]:
    when = _iso(at)
    if at > leaf.not_valid_after_utc:
        return "validation.expired", f"the certificate expired on {_iso(leaf.not_valid_after_utc)} (checked at {when})"
    if at < leaf.not_valid_before_utc:
        return (
            "validation.not_yet_valid",
            f"the certificate is valid only from {_iso(leaf.not_valid_before_utc)} (checked at {when})",
        )
    for ca in cas:
        if at > ca.not_valid_after_utc:
            return (
                "validation.expired",
                f"CA certificate {ca.subject.rfc4514_string()} expired on {_iso(ca.not_valid_after_utc)} "
                f"(checked at {when})",
            )
    return "validation.not_yet_valid", f"a CA certificate in the path is not valid at {when}"


def _names(cert: x509.Certificate) -> str:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return ""
    names = [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)]
    names += [f"IP:{n}" for n in san.get_values_for_type(x509.IPAddress)]
    return ", ".join(names)


# ----- revocation ---------------------------------------------------------------


class NoRevocationCheck:
    """Reports every certificate as ``not_checked``."""

    def status(self, issuer: x509.Certificate, cert: x509.Certificate, at: _dt.datetime) -> RevocationStatus:
        return RevocationStatus("not_checked", reason="revocation was not checked")

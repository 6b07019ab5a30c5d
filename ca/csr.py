"""Parse and check certificate signing requests against a profile.

Every refusal is an InvalidError naming the field (``csr``, ``csr.subject.CN``,
``csr.san[0]`` …) and the reason.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ca.profiles import Profile, SanType, SubjectField
from govpki.errors import InvalidError
from keymgmt.interfaces import PublicKey

MAX_CSR_BYTES = 64 * 1024

FIELD_OIDS: dict[SubjectField, x509.ObjectIdentifier] = {
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "CN": NameOID.COMMON_NAME,
}
OID_FIELDS = {oid: f for f, oid in FIELD_OIDS.items()}
# RFC 5280 Appendix A upper bounds
MAX_LENGTH: dict[SubjectField, int] = {"C": 2, "ST": 128, "L": 128, "O": 64, "OU": 64, "CN": 64}
SUBJECT_ORDER: tuple[SubjectField, ...] = ("C", "ST", "L", "O", "OU", "CN")

_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9.-]{1,253}$")
_CURVES = {"secp256r1": "ec-p256", "secp384r1": "ec-p384"}


@dataclass(frozen=True)
class CheckedRequest:
    """A CSR that passed every check, reduced to what the CA may use from it."""

    csr_der: bytes
    public_key: PublicKey
    key_type: str
    subject: tuple[tuple[SubjectField, str], ...]
    sans: tuple[x509.GeneralName, ...]
    spki_sha256: str


def parse_csr(data: bytes | str) -> x509.CertificateSigningRequest:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if not raw or not raw.strip():
        raise InvalidError("is empty; send a PEM or DER PKCS#10 certificate request", field="csr", code="ca.csr_empty")
    if len(raw) > MAX_CSR_BYTES:
        raise InvalidError(
            f"is {len(raw)} bytes; a CSR may be at most {MAX_CSR_BYTES} bytes",
            field="csr",
            code="ca.csr_too_large",
            params={"max": MAX_CSR_BYTES},
        )
    stripped = raw.strip()
    try:
        if stripped.startswith(b"-----BEGIN"):
            label = stripped.split(b"\n", 1)[0].decode("ascii", "replace").strip("- \r")
            if label not in ("BEGIN CERTIFICATE REQUEST", "BEGIN NEW CERTIFICATE REQUEST"):
                raise InvalidError(
                    f"is a PEM '{label.removeprefix('BEGIN ')}', not a 'CERTIFICATE REQUEST'",
                    field="csr",
                    code="ca.csr_malformed",
                )
            return x509.load_pem_x509_csr(stripped)
        return x509.load_der_x509_csr(raw)
    except InvalidError:
        raise
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InvalidError(
            f"is not a valid PKCS#10 certificate request: {exc}", field="csr", code="ca.csr_malformed"
        ) from None


def _key_type(key: object, profile: Profile) -> tuple[PublicKey, str]:
    allowed = ", ".join(profile.key_types)
    if isinstance(key, rsa.RSAPublicKey):
        if "rsa" not in profile.key_types:
            raise InvalidError(
                f"RSA keys are not allowed by profile {profile.name}; allowed: {allowed}",
                field="csr.key",
                code="ca.csr_key_not_allowed",
            )
        bits = key.key_size
        if bits < profile.rsa_min_bits:
            raise InvalidError(
                f"RSA-{bits} is too weak; profile {profile.name} needs at least RSA-{profile.rsa_min_bits}",
                field="csr.key",
                code="ca.csr_key_too_weak",
                params={"bits": bits, "min": profile.rsa_min_bits},
            )
        if bits > 8192:
            raise InvalidError(
                f"RSA-{bits} is larger than the 8192 bits this CA accepts", field="csr.key", code="ca.csr_key_invalid"
            )
        if bits % 8:
            raise InvalidError(
                f"RSA modulus of {bits} bits is not a whole number of bytes", field="csr.key", code="ca.csr_key_invalid"
            )
        e = key.public_numbers().e
        if e < 65537 or e % 2 == 0:
            raise InvalidError(
                f"RSA public exponent {e} is not allowed; use 65537", field="csr.key", code="ca.csr_key_invalid"
            )
        return key, "rsa"
    if isinstance(key, ec.EllipticCurvePublicKey):
        kind = _CURVES.get(key.curve.name)
        if kind is None or kind not in profile.key_types:
            raise InvalidError(
                f"elliptic curve {key.curve.name} is not allowed by profile {profile.name}; allowed: {allowed}",
                field="csr.key",
                code="ca.csr_key_not_allowed",
            )
        return key, kind
    kind_name = type(key).__name__.removeprefix("_").replace("PublicKey", "") or "unknown"
    raise InvalidError(
        f"{kind_name} keys are not allowed by profile {profile.name}; allowed: {allowed}",
        field="csr.key",
        code="ca.csr_key_not_allowed",
    )


def check_text(value: str, field: str, max_length: int) -> str:
    if not value or not value.strip():
        raise InvalidError("is empty", field=field, code="ca.empty")
    if value != value.strip():
        raise InvalidError("has leading or trailing white space", field=field, code="ca.white_space")
    for ch in value:
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            raise InvalidError(
                f"contains the control or unassigned character U+{ord(ch):04X}",
                field=field,
                code="ca.control_character",
                params={"char": f"U+{ord(ch):04X}"},
            )
    if len(value) > max_length:
        raise InvalidError(
            f"is {len(value)} characters; at most {max_length} are allowed",
            field=field,
            code="ca.too_long",
            params={"count": len(value), "max": max_length},
        )
    return value


def check_subject_value(name: SubjectField, value: str, field: str) -> str:
    check_text(value, field, MAX_LENGTH[name])
    if name == "CN" and len(value.encode("utf-8")) > MAX_LENGTH["CN"]:
        # the X.509 library counts ub-common-name in UTF-8 bytes: 21 Chinese characters fit
        raise InvalidError(
            f"is {len(value.encode('utf-8'))} bytes in UTF-8; a common name may be at most {MAX_LENGTH['CN']} bytes",
            field=field,
            code="ca.name_too_long",
            params={"bytes": len(value.encode("utf-8")), "max": MAX_LENGTH["CN"]},
        )
    if name == "C" and not re.fullmatch(r"[A-Z]{2}", value):
        raise InvalidError("must be a two-letter ISO 3166 country code such as CN", field=field, code="ca.country_code")
    return value


def _subject(csr: x509.CertificateSigningRequest, profile: Profile) -> tuple[tuple[SubjectField, str], ...]:
    found: dict[SubjectField, str] = {}
    for rdn in csr.subject.rdns:
        if len(rdn) != 1:
            raise InvalidError("multi-valued RDNs are not accepted", field="csr.subject", code="ca.csr_subject")
        (attr,) = tuple(rdn)
        name = OID_FIELDS.get(attr.oid)
        label = name or attr.oid.dotted_string
        if name is None:
            raise InvalidError(
                f"attribute {attr.oid._name if hasattr(attr.oid, '_name') else label} is not accepted; "
                f"use only {', '.join(SUBJECT_ORDER)}",
                field=f"csr.subject.{label}",
                code="ca.csr_subject",
            )
        if name in profile.subject_from_identity:
            continue  # the CA sets these from the registered identity
        if name not in profile.subject_from_request:
            raise InvalidError(
                f"is not allowed by profile {profile.name}", field=f"csr.subject.{name}", code="ca.csr_subject"
            )
        if name in found:
            raise InvalidError("appears more than once", field=f"csr.subject.{name}", code="ca.csr_subject")
        value = attr.value if isinstance(attr.value, str) else ""
        found[name] = check_subject_value(name, value, f"csr.subject.{name}")
    return tuple((n, found[n]) for n in SUBJECT_ORDER if n in found)


def check_dns_name(value: str, field: str) -> str:
    if len(value) > 253:
        raise InvalidError("DNS name is longer than 253 characters", field=field, code="ca.dns_name")
    if value.startswith("*."):
        raise InvalidError("wildcard DNS names are not issued", field=field, code="ca.dns_name")
    labels = value.split(".")
    if len(labels) < 2 or not all(_DNS_LABEL.match(label) for label in labels):
        raise InvalidError(
            f"{value!r} is not a lower-case fully qualified DNS name (letters, digits, hyphens; IDNs as xn-- labels)",
            field=field,
            code="ca.dns_name",
            params={"value": value},
        )
    return value


def _san(csr: x509.CertificateSigningRequest, profile: Profile) -> tuple[x509.GeneralName, ...]:
    try:
        ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = list(ext.value)
    except x509.ExtensionNotFound:
        names = []
    except ValueError as exc:
        raise InvalidError(f"cannot be read: {exc}", field="csr.san", code="ca.san_invalid") from None
    return check_sans(names, profile)


def check_sans(
    names: Sequence[x509.GeneralName], profile: Profile, field_prefix: str = "csr.san"
) -> tuple[x509.GeneralName, ...]:
    """Check subjectAltNames (from a CSR, or given by the RA from a registered identity) against the profile."""
    if profile.san_required and not names:
        raise InvalidError(
            f"profile {profile.name} needs at least one subjectAltName", field=field_prefix, code="ca.san_required"
        )
    out: list[x509.GeneralName] = []
    seen: set[str] = set()
    for i, gn in enumerate(names):
        field = f"{field_prefix}[{i}]"
        kind: SanType
        if isinstance(gn, x509.DNSName):
            kind = "dns"
            check_dns_name(gn.value, field)
        elif isinstance(gn, x509.IPAddress):
            kind = "ip"
            if not isinstance(gn.value, ipaddress.IPv4Address | ipaddress.IPv6Address):
                raise InvalidError("IP ranges are not certificate names", field=field, code="ca.san_invalid")
        elif isinstance(gn, x509.RFC822Name):
            kind = "email"
            if not _EMAIL.match(gn.value):
                raise InvalidError(f"{gn.value!r} is not a valid e-mail address", field=field, code="ca.san_invalid")
        elif isinstance(gn, x509.UniformResourceIdentifier):
            kind = "uri"
            if "://" not in gn.value:
                raise InvalidError(f"{gn.value!r} is not an absolute URI", field=field, code="ca.san_invalid")
        else:
            raise InvalidError(f"{type(gn).__name__} names are not accepted", field=field, code="ca.san_invalid")
        if kind not in profile.san_types:
            allowed = ", ".join(profile.san_types) or "none"
            raise InvalidError(
                f"{kind} names are not allowed by profile {profile.name} (allowed: {allowed})",
                field=field,
                code="ca.san_not_allowed",
                params={"kind": kind},
            )
        key = f"{kind}:{gn.value}"
        if key in seen:
            raise InvalidError("duplicate subjectAltName", field=field, code="ca.san_duplicate")
        seen.add(key)
        out.append(gn)
    return tuple(out)


def check_csr(data: bytes | str, profile: Profile, *, names: bool = True) -> CheckedRequest:
    """Parse and check a CSR. ``names=False``: the request's subject and subjectAltNames are
    not read at all (an RA puts the registered identity into the certificate instead), so
    the result carries none; key, signature and size are checked as always."""
    csr = parse_csr(data)
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InvalidError(
            f"has a public key this CA cannot use: {exc}", field="csr.key", code="ca.csr_key_not_allowed"
        ) from None
    public_key, key_type = _key_type(key, profile)
    try:
        signature_ok = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InvalidError(
            f"signature cannot be checked: {exc}", field="csr.signature", code="ca.csr_signature"
        ) from None
    if not signature_ok:
        raise InvalidError(
            "signature does not verify: the request was altered or signed by another key",
            field="csr.signature",
            code="ca.csr_signature",
        )
    subject = _subject(csr, profile) if names else ()
    sans = _san(csr, profile) if names else ()
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return CheckedRequest(
        csr_der=csr.public_bytes(serialization.Encoding.DER),
        public_key=public_key,
        key_type=key_type,
        subject=subject,
        sans=sans,
        spki_sha256=hashlib.sha256(spki).hexdigest(),
    )

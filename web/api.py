"""REST API v1 (thin views: parse, call one service, render)."""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from flask import Blueprint, Response, current_app, g, json, request, url_for
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ca.models import CertificateRecord
from ca.revocation import status_of
from ca.validation import PathEntry, Purpose, ValidationResult
from govpki.errors import FieldProblem, InvalidError, NotFoundError
from govpki.principal import Principal
from ra.expiry import MAX_WINDOW_DAYS
from web.container import Services
from web.openapi import Parameter, document, operation
from web.openapi import Response as Doc

bp = Blueprint("api", __name__, url_prefix="/api/v1")

PEM_TYPES = ("application/pem-certificate-chain", "application/x-pem-file")
DER_TYPE = "application/pkix-cert"
SERIAL_PARAM = Parameter(
    "serial", "path", "Certificate serial number, hexadecimal", {"type": "string", "pattern": "^[0-9A-Fa-f:]{1,64}$"}
)


class IssueRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    profile: str = Field(min_length=1, max_length=64, description="Certificate profile name, e.g. service-tls-server")
    csr: str = Field(min_length=1, max_length=65536, description="PKCS#10 request: PEM, or base64 of the DER encoding")
    prefecture: str | None = Field(
        default=None, max_length=12, description="Area code of the prefecture whose RA gets the expiry notices"
    )
    contact_email: str | None = Field(
        default=None, max_length=254, description="The subscriber's e-mail address for expiry notices"
    )


class RenewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    csr: str | None = Field(
        default=None,
        max_length=65536,
        description="A new PKCS#10 request (PEM or base64 DER) with the same or a new key; "
        "left out: the key stays and the original request is used again",
    )


REVOKE_REASONS = Literal[
    "unspecified",
    "keyCompromise",
    "cACompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "privilegeWithdrawn",
    "aACompromise",
]


class RevokeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: REVOKE_REASONS = Field(default="unspecified", description="RFC 5280 CRLReason")
    invalidity_date: _dt.datetime | None = Field(
        default=None, description="RFC 3339; when the key is known or suspected to have been compromised"
    )
    ca_id: int | None = Field(default=None, description="Refuse (404) unless this CA issued the certificate")


class StatusChangeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ca_id: int | None = Field(default=None, description="Refuse (404) unless this CA issued the certificate")


class CertificateOut(BaseModel):
    serial: str = Field(description="lower-case hexadecimal")
    state: Literal["reserved", "approved", "issued", "failed"]
    profile: str
    profile_version: int
    ca_id: int
    subject: str
    subject_alt_names: str
    key_type: str
    requester: str
    not_before: _dt.datetime | None
    not_after: _dt.datetime | None
    fingerprint_sha256: str | None
    created_at: _dt.datetime
    issued_at: _dt.datetime | None
    status: Literal["good", "revoked", "on_hold", "unknown"] = Field(
        description="revocation status: unknown for records that were never signed"
    )
    revocation_reason: str | None = None
    revoked_at: _dt.datetime | None = None
    invalidity_date: _dt.datetime | None = None
    certificate_pem: str | None = None
    chain_pem: str | None = Field(
        default=None,
        description="issuing CA certificate(s), without the root; after a root rollover also the "
        "cross-certificate(s) that lead from the older root to the issuing CA's root",
    )
    failure: str | None = None
    prefecture: str | None = Field(default=None, description="area code of the prefecture it was issued for")
    contact_email: str | None = None
    renewed_from: str | None = Field(default=None, description="serial of the certificate this one renews")


class CertificateList(BaseModel):
    items: list[CertificateOut]
    limit: int
    offset: int


class ValidateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    certificate: str = Field(
        min_length=1, max_length=65536, description="The certificate to validate: PEM, or base64 of the DER encoding"
    )
    intermediates: list[str] = Field(
        default_factory=list,
        description="Intermediate CA certificates (PEM or base64 DER), at most 10; ours are added automatically",
    )
    purpose: Literal["tls_client", "tls_server", "document_signing"] = Field(
        description="What the certificate is to be used for"
    )
    host: str | None = Field(
        default=None, max_length=253, description="DNS name or IP address the client connected to (tls_server only)"
    )
    time: str | None = Field(
        default=None,
        max_length=64,
        description="Validate as of this moment (RFC 3339, e.g. 2026-01-31T12:00:00Z); default now",
    )


class RevocationOut(BaseModel):
    status: Literal["good", "revoked", "unknown", "not_checked"]
    source: str | None = Field(description="database, crl <url>, or trust anchor")
    reason: str | None = Field(description="why the status is unknown or not checked, or a note")
    revoked_at: _dt.datetime | None
    revocation_reason: str | None = Field(description="RFC 5280 CRLReason, when revoked")


class PathEntryOut(BaseModel):
    role: Literal["end_entity", "intermediate", "trust_anchor"]
    subject: str
    issuer: str
    serial: str = Field(description="lower-case hexadecimal")
    fingerprint_sha256: str
    not_before: _dt.datetime
    not_after: _dt.datetime
    revocation: RevocationOut


class ValidationOut(BaseModel):
    valid: bool
    code: str = Field(description="validation.ok, or a stable dotted reason code such as validation.expired")
    reason: str = Field(description="what was found, in words")
    detail: str | None = Field(description="the path validator's own message, when it refused")
    purpose: Literal["tls_client", "tls_server", "document_signing"]
    host: str | None
    validated_at: _dt.datetime
    certificate: PathEntryOut | None = Field(description="the certificate sent, as read")
    path: list[PathEntryOut] = Field(description="the built path, end entity first, trust anchor last; empty if none")


def services() -> Services:
    services: Services = current_app.extensions["govpki"]
    return services


def principal() -> Principal:
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else None
    if header and token is None:
        raise InvalidError("use the Bearer scheme: 'Authorization: Bearer <token>'", field="authorization")
    return services().tokens.authenticate(g.db, token)


def parse_body(model: type[BaseModel]) -> Any:
    if not request.is_json:
        raise InvalidError("send the request body as application/json", field="body", code="api.media_type")
    data = request.get_json(silent=True)
    if data is None:
        raise InvalidError("is not valid JSON", field="body", code="api.malformed_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [FieldProblem(".".join(str(p) for p in e["loc"]) or "body", e["msg"]) for e in exc.errors()]
        raise InvalidError(
            "; ".join(f"{p.field}: {p.reason}" for p in problems), field=problems[0].field, problems=problems
        ) from None


def _csr_bytes(text: str) -> bytes:
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        return stripped.encode("utf-8")
    try:
        return base64.b64decode(stripped, validate=True)
    except (ValueError, binascii.Error):
        raise InvalidError("is neither PEM nor base64-encoded DER", field="csr") from None


def _cert_bytes(text: str, field: str) -> bytes:
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        return stripped.encode("utf-8")
    try:
        return base64.b64decode(stripped, validate=True)
    except (ValueError, binascii.Error):
        raise InvalidError(
            "is not an X.509 certificate (PEM or DER): neither PEM nor base64",
            field=field,
            code="validation.malformed_input",
        ) from None


def _rfc3339(text: str) -> _dt.datetime:
    try:
        value = _dt.datetime.fromisoformat(text.strip())
    except ValueError:
        value = None
    if value is None or value.tzinfo is None or "T" not in text.upper():
        raise InvalidError(
            f"{text!r} is not an RFC 3339 date-time with a time zone, e.g. 2026-01-31T12:00:00Z", field="time"
        )
    return value


def _entry(entry: PathEntry) -> PathEntryOut:
    rev = entry.revocation
    return PathEntryOut(
        role=entry.role,
        subject=entry.subject,
        issuer=entry.issuer,
        serial=entry.serial,
        fingerprint_sha256=entry.fingerprint_sha256,
        not_before=entry.not_before,
        not_after=entry.not_after,
        revocation=RevocationOut(
            status=rev.status,
            source=rev.source,
            reason=rev.reason,
            revoked_at=rev.revoked_at,
            revocation_reason=rev.revocation_reason,
        ),
    )


def render_validation(result: ValidationResult) -> dict[str, Any]:
    return ValidationOut(
        valid=result.valid,
        code=result.code,
        reason=result.reason,
        detail=result.detail,
        purpose=result.purpose.value,
        host=result.host,
        validated_at=result.validated_at,
        certificate=_entry(result.certificate) if result.certificate else None,
        path=[_entry(p) for p in result.path],
    ).model_dump(mode="json")


def _pem(der: bytes) -> str:
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode("ascii")


def render(record: CertificateRecord, *, with_pem: bool = True) -> dict[str, Any]:
    out = CertificateOut(
        serial=record.serial,
        state=record.state,
        profile=record.profile,
        profile_version=record.profile_version,
        ca_id=record.ca_id,
        subject=record.subject,
        subject_alt_names=record.sans,
        key_type=record.key_type,
        requester=record.requester,
        not_before=record.not_before,
        not_after=record.not_after,
        fingerprint_sha256=record.fingerprint_sha256,
        created_at=record.created_at,
        issued_at=record.issued_at,
        failure=record.failure,
        status=status_of(record).status.value,
        revocation_reason=record.revocation_reason,
        revoked_at=record.revoked_at,
        invalidity_date=record.invalidity_date,
        prefecture=record.prefecture_code,
        contact_email=record.contact_email,
        renewed_from=record.renewed_from.serial if record.renewed_from is not None else None,
    )
    if with_pem and record.cert_der is not None:
        out.certificate_pem = _pem(record.cert_der)
        ca = record.ca
        if ca.kind == "issuing" and ca.parent is not None:
            crosses = services().ca.chain_extras(g.db, ca.parent)
            out.chain_pem = "".join(_pem(der) for der in [ca.cert_der, *(c.cert_der for c in crosses)])
        else:
            out.chain_pem = ""
    return out.model_dump(mode="json")


def _json(payload: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(payload, ensure_ascii=False), status=status, mimetype="application/json")


@bp.post("/certificates")
@operation(
    "POST",
    "/api/v1/certificates",
    summary="Issue a certificate from a CSR under a profile",
    tag="certificates",
    body=IssueRequest,
    responses={201: Doc("Issued: linted, recorded and audited", CertificateOut)},
)
def issue_certificate() -> Response:
    who = principal()
    body: IssueRequest = parse_body(IssueRequest)
    record = services().ca.issue(
        g.db,
        who,
        profile=body.profile,
        csr=_csr_bytes(body.csr),
        prefecture=body.prefecture,
        contact_email=body.contact_email,
    )
    response = _json(render(record), 201)
    response.headers["Location"] = url_for("api.get_certificate", serial=record.serial)
    return response


@bp.get("/certificates/<serial>")
@operation(
    "GET",
    "/api/v1/certificates/{serial}",
    summary="One certificate record; PEM or DER by Accept",
    tag="certificates",
    parameters=(SERIAL_PARAM,),
    responses={
        200: Doc(
            "The record (JSON), the certificate and chain (PEM) or the certificate (DER)",
            CertificateOut,
            ("application/json", *PEM_TYPES, DER_TYPE),
        )
    },
)
def get_certificate(serial: str) -> Response:
    who = principal()
    record = services().ca.get_certificate(g.db, who, serial)
    best = request.accept_mimetypes.best_match(["application/json", *PEM_TYPES, DER_TYPE], default="application/json")
    if best in PEM_TYPES or best == DER_TYPE:
        if record.cert_der is None:
            raise InvalidError(
                f"certificate {record.serial} is in state {record.state}: there is no certificate to send",
                field="serial",
                code="api.not_issued",
            )
        if best == DER_TYPE:
            return Response(record.cert_der, mimetype=DER_TYPE)
        chain = _pem(record.cert_der) + (_pem(record.ca.cert_der) if record.ca.kind == "issuing" else "")
        return Response(chain, mimetype=best)
    return _json(render(record))


@bp.get("/certificates")
@operation(
    "GET",
    "/api/v1/certificates",
    summary="List certificate records, newest first",
    tag="certificates",
    parameters=(
        Parameter(
            "state",
            "query",
            "Only records in this state",
            {"type": "string", "enum": ["reserved", "approved", "issued", "failed"]},
        ),
        Parameter(
            "limit",
            "query",
            "At most this many (1-1000)",
            {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50},
        ),
        Parameter("offset", "query", "Skip this many", {"type": "integer", "minimum": 0, "default": 0}),
    ),
    responses={200: Doc("A page of records", CertificateList)},
)
def list_certificates() -> Response:
    who = principal()
    limit = _int_arg("limit", 50)
    offset = _int_arg("offset", 0)
    records = services().ca.list_certificates(
        g.db, who, state=request.args.get("state") or None, limit=limit, offset=offset
    )
    return _json({"items": [render(r, with_pem=False) for r in records], "limit": limit, "offset": offset})


def _optional_body(model: type[BaseModel]) -> Any:
    """A body that may be left out entirely (no Content-Type, no bytes)."""
    if not request.get_data(cache=True) and not request.is_json:
        return model()
    return parse_body(model)


@bp.post("/certificates/<serial>/revoke")
@operation(
    "POST",
    "/api/v1/certificates/{serial}/revoke",
    summary="Revoke a certificate with an RFC 5280 reason (for good; a held certificate may be revoked)",
    tag="revocation",
    parameters=(SERIAL_PARAM,),
    body=RevokeRequest,
    responses={
        200: Doc("Revoked; OCSP and the next CRL show it at once", CertificateOut),
        409: Doc("Already revoked, expired, or never signed"),
    },
)
def revoke_certificate(serial: str) -> Response:
    who = principal()
    body: RevokeRequest = _optional_body(RevokeRequest)
    record = services().revocation.revoke(
        g.db, who, serial, reason=body.reason, invalidity_date=body.invalidity_date, ca_id=body.ca_id
    )
    return _json(render(record, with_pem=False))


@bp.post("/certificates/<serial>/hold")
@operation(
    "POST",
    "/api/v1/certificates/{serial}/hold",
    summary="Suspend a certificate (certificateHold)",
    tag="revocation",
    parameters=(SERIAL_PARAM,),
    body=StatusChangeRequest,
    responses={200: Doc("On hold", CertificateOut), 409: Doc("Already on hold or revoked")},
)
def hold_certificate(serial: str) -> Response:
    who = principal()
    body: StatusChangeRequest = _optional_body(StatusChangeRequest)
    record = services().revocation.hold(g.db, who, serial, ca_id=body.ca_id)
    return _json(render(record, with_pem=False))


@bp.post("/certificates/<serial>/release")
@operation(
    "POST",
    "/api/v1/certificates/{serial}/release",
    summary="Resume a suspended certificate (removeFromCRL in the next delta CRL)",
    tag="revocation",
    parameters=(SERIAL_PARAM,),
    body=StatusChangeRequest,
    responses={200: Doc("Good again", CertificateOut), 409: Doc("Not on hold")},
)
def release_certificate(serial: str) -> Response:
    who = principal()
    body: StatusChangeRequest = _optional_body(StatusChangeRequest)
    record = services().revocation.release(g.db, who, serial, ca_id=body.ca_id)
    return _json(render(record, with_pem=False))


@bp.post("/certificates/<serial>/renew")
@operation(
    "POST",
    "/api/v1/certificates/{serial}/renew",
    summary="Renew a certificate: same profile, subject, SANs, prefecture and contact; same or new key",
    tag="certificates",
    parameters=(SERIAL_PARAM,),
    body=RenewRequest,
    responses={
        201: Doc("The new certificate (renewed_from names the old one)", CertificateOut),
        409: Doc("Revoked, on hold, expired, already renewed, or never issued"),
    },
)
def renew_certificate(serial: str) -> Response:
    who = principal()
    body: RenewRequest = _optional_body(RenewRequest)
    record = services().ca.renew(g.db, who, serial, csr=_csr_bytes(body.csr) if body.csr is not None else None)
    response = _json(render(record), 201)
    response.headers["Location"] = url_for("api.get_certificate", serial=record.serial)
    return response


class ExpiringCertificateOut(BaseModel):
    serial: str
    ca_id: int
    profile: str
    subject: str
    subject_alt_names: str
    not_after: _dt.datetime
    days_left: int
    contact_email: str | None


class PrefectureExpiryOut(BaseModel):
    prefecture: str | None = Field(description="area code; null: certificates issued without a prefecture")
    name: str | None
    name_en: str | None
    certificates: list[ExpiringCertificateOut] = Field(description="soonest first")


class ExpiringOut(BaseModel):
    days: int
    groups: list[PrefectureExpiryOut]


@bp.get("/expiring")
@operation(
    "GET",
    "/api/v1/expiring",
    summary="Good certificates expiring within a window, per prefecture (a prefecture's principal sees its own)",
    tag="certificates",
    parameters=(
        Parameter("days", "query", "Window in days (default GOVPKI_EXPIRY_NOTICE_DAYS)", {"type": "integer"}),
        Parameter("prefecture", "query", "Only this prefecture (area code)", {"type": "string"}),
    ),
    responses={200: Doc("The expiring certificates", ExpiringOut)},
)
def expiring_certificates() -> Response:
    who = principal()
    expiry = services().expiry
    days = _int_arg("days", expiry.settings.window.days)
    if not 1 <= days <= MAX_WINDOW_DAYS:
        raise InvalidError(f"must be between 1 and {MAX_WINDOW_DAYS} days", field="days")
    groups = expiry.expiring(g.db, who, _dt.timedelta(days=days), request.args.get("prefecture") or None)
    now = services().clock.now()
    out = ExpiringOut(
        days=days,
        groups=[
            PrefectureExpiryOut(
                prefecture=group.code,
                name=group.name,
                name_en=group.name_en,
                certificates=[
                    ExpiringCertificateOut(
                        serial=c.serial,
                        ca_id=c.ca_id,
                        profile=c.profile,
                        subject=c.subject,
                        subject_alt_names=c.sans,
                        not_after=c.not_after,
                        days_left=c.days_left(now),
                        contact_email=c.contact_email,
                    )
                    for c in group.certificates
                ],
            )
            for group in groups
        ],
    )
    return _json(out.model_dump(mode="json"))


def _int_arg(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidError(f"{raw!r} is not a whole number", field=name) from None


@bp.post("/validate")
@operation(
    "POST",
    "/api/v1/validate",
    summary="Validate a certificate for a purpose: path, RFC 5280 checks, revocation",
    tag="validation",
    body=ValidateRequest,
    responses={200: Doc("Answered: valid or not, why, the built path and each certificate's status", ValidationOut)},
)
def validate_certificate() -> Response:
    who = principal()
    body: ValidateRequest = parse_body(ValidateRequest)
    result = services().validation.validate(
        g.db,
        who,
        certificate=_cert_bytes(body.certificate, "certificate"),
        intermediates=[_cert_bytes(text, f"intermediates.{i}") for i, text in enumerate(body.intermediates)],
        purpose=Purpose(body.purpose),
        host=body.host,
        at=_rfc3339(body.time) if body.time is not None else None,
    )
    return _json(render_validation(result))


class TreeHeadOut(BaseModel):
    tree_size: int
    timestamp: _dt.datetime
    sha256_root_hash: str = Field(description="base64, as in RFC 6962 get-sth")
    root_hash_hex: str
    tree_head_signature: str = Field(description="base64 DER ECDSA (P-256, SHA-256) over signed_data")
    signed_data: str = Field(description="base64 of the exact signed bytes (canonical JSON)")
    public_key: str = Field(description="base64 DER SubjectPublicKeyInfo of the log's signing key")


class InclusionOut(BaseModel):
    leaf_index: int
    tree_size: int
    leaf_hash: str = Field(description="hex")
    root_hash: str = Field(description="hex: the root of the tree of tree_size leaves")
    audit_path: list[str] = Field(description="base64 node hashes, RFC 9162 PATH order (leaf's sibling first)")


class ConsistencyOut(BaseModel):
    first: int
    second: int
    first_root_hash: str = Field(description="hex")
    second_root_hash: str = Field(description="hex")
    consistency: list[str] = Field(description="base64 node hashes, RFC 9162 PROOF order")


class LogEntryOut(BaseModel):
    index: int
    kind: Literal["issue", "revoke"]
    ca_id: int
    serial: str
    leaf_hash: str = Field(description="hex SHA-256(0x00 || leaf)")
    leaf: str = Field(description="base64 of the leaf bytes (canonical JSON)")


class LogEntriesOut(BaseModel):
    entries: list[LogEntryOut]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _required_int(name: str) -> int:
    raw = request.args.get(name)
    if raw is None or raw.strip() == "":
        raise InvalidError("is required", field=name)
    value = _int_arg(name, 0)
    if not 0 <= value < 1 << 62:
        raise InvalidError("must be 0 or more (and below 2^62)", field=name)
    return value


def _size_param(name: str, description: str) -> Parameter:
    return Parameter(name, "query", description, {"type": "integer", "minimum": 0}, required=True)


@bp.get("/transparency/sth")
@operation(
    "GET",
    "/api/v1/transparency/sth",
    summary="The newest signed tree head of the issuance transparency log (RFC 6962 get-sth)",
    tag="transparency",
    auth=False,
    responses={200: Doc("The signed tree head", TreeHeadOut), 404: Doc("No tree head signed yet")},
)
def transparency_sth() -> Response:
    head = services().tlog.latest_head(g.db)
    if head is None:
        raise NotFoundError("no tree head has been signed yet", field="tree_size")
    return _json(
        TreeHeadOut(
            tree_size=head.tree_size,
            timestamp=head.timestamp,
            sha256_root_hash=_b64(bytes.fromhex(head.root_hash)),
            root_hash_hex=head.root_hash,
            tree_head_signature=_b64(head.signature),
            signed_data=_b64(head.signed_data),
            public_key=_b64(head.public_key_der),
        ).model_dump(mode="json")
    )


@bp.get("/transparency/proof-by-hash")
@operation(
    "GET",
    "/api/v1/transparency/proof-by-hash",
    summary="Inclusion proof of a leaf, by its leaf hash, in the tree of tree_size leaves",
    tag="transparency",
    auth=False,
    parameters=(
        Parameter("hash", "query", "Leaf hash SHA-256(0x00 || leaf): hex or base64", {"type": "string"}, required=True),
        _size_param("tree_size", "Size of the tree to prove inclusion in (at most the log's size)"),
    ),
    responses={200: Doc("The audit path", InclusionOut), 404: Doc("No such leaf in that tree")},
)
def transparency_proof_by_hash() -> Response:
    raw = request.args.get("hash", "")
    if not raw.strip():
        raise InvalidError("is required", field="hash")
    size = _required_int("tree_size")
    proof = services().tlog.inclusion_proof(g.db, raw, size)
    return _json(
        InclusionOut(
            leaf_index=proof.leaf_index,
            tree_size=proof.tree_size,
            leaf_hash=proof.leaf_hash,
            root_hash=proof.root_hash,
            audit_path=[_b64(bytes.fromhex(p)) for p in proof.audit_path],
        ).model_dump(mode="json")
    )


@bp.get("/transparency/consistency")
@operation(
    "GET",
    "/api/v1/transparency/consistency",
    summary="Consistency proof between two tree sizes (RFC 6962 get-sth-consistency)",
    tag="transparency",
    auth=False,
    parameters=(_size_param("first", "The older tree size"), _size_param("second", "The newer tree size")),
    responses={200: Doc("The consistency proof", ConsistencyOut)},
)
def transparency_consistency() -> Response:
    first = _required_int("first")
    second = _required_int("second")
    proof = services().tlog.consistency_proof(g.db, first, second)
    return _json(
        ConsistencyOut(
            first=proof.first,
            second=proof.second,
            first_root_hash=proof.first_root,
            second_root_hash=proof.second_root,
            consistency=[_b64(bytes.fromhex(p)) for p in proof.consistency],
        ).model_dump(mode="json")
    )


@bp.get("/transparency/entries")
@operation(
    "GET",
    "/api/v1/transparency/entries",
    summary="Log entries start..end inclusive, at most 1000 (RFC 6962 get-entries)",
    tag="transparency",
    auth=False,
    parameters=(_size_param("start", "First leaf index"), _size_param("end", "Last leaf index (inclusive)")),
    responses={200: Doc("The entries", LogEntriesOut)},
)
def transparency_entries() -> Response:
    start = _required_int("start")
    end = _required_int("end")
    entries = services().tlog.entries(g.db, start, end)
    return _json(
        LogEntriesOut(
            entries=[
                LogEntryOut(
                    index=e.idx,
                    kind="issue" if e.kind == "issue" else "revoke",
                    ca_id=e.ca_id,
                    serial=e.serial,
                    leaf_hash=e.leaf_hash,
                    leaf=_b64(e.leaf),
                )
                for e in entries
            ]
        ).model_dump(mode="json")
    )


@bp.get("/openapi.json")
@operation(
    "GET",
    "/api/v1/openapi.json",
    summary="This OpenAPI document",
    tag="meta",
    auth=False,
    responses={200: Doc("OpenAPI 3.1")},
)
def openapi_json() -> Response:
    return _json(document(services().config.base_url))

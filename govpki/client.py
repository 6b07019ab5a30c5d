"""A small client applications can import: the validation API and OCSP.

Standard library and ``cryptography`` only::

    from govpki.client import GovpkiClient

    client = GovpkiClient("https://pki.example.gov.cn", token="gpk_...")
    answer = client.validate(pem, purpose="tls_server", host="app.example.gov.cn")
    if not answer.valid:
        print(answer.code, answer.reason)
    status = client.ocsp_status(cert, issuer)  # checked: signer, signature, nonce, CertID, freshness
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import json
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

MAX_RESPONSE_BYTES = 1024 * 1024
CLOCK_SKEW = _dt.timedelta(minutes=5)

CertificateInput = x509.Certificate | bytes | str


class ClientError(Exception):
    """The service refused the request (an RFC 9457 problem) or could not be reached."""

    def __init__(self, message: str, *, status: int | None = None, problem: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.problem = problem or {}

    @property
    def code(self) -> str | None:
        code = self.problem.get("code")
        return code if isinstance(code, str) else None

    @property
    def fields(self) -> list[str | None]:
        return [e.get("field") for e in self.problem.get("errors", []) if isinstance(e, dict)]


class OcspError(Exception):
    """The OCSP answer could not be had or did not check out; the status is not known."""


@dataclass(frozen=True)
class Validation:
    valid: bool
    code: str
    reason: str
    path: list[dict[str, Any]]
    raw: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class OcspStatus:
    status: Literal["good", "revoked", "unknown"]
    this_update: _dt.datetime
    next_update: _dt.datetime | None
    produced_at: _dt.datetime
    revocation_time: _dt.datetime | None = None
    revocation_reason: str | None = None


def _certificate(value: CertificateInput) -> x509.Certificate:
    if isinstance(value, x509.Certificate):
        return value
    data = value.encode("ascii") if isinstance(value, str) else value
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def _wire(value: CertificateInput) -> str:
    """PEM text as given, or base64 DER; the service reads both and does its own checks."""
    if isinstance(value, x509.Certificate):
        return value.public_bytes(serialization.Encoding.PEM).decode("ascii")
    if isinstance(value, str):
        return value
    if value.lstrip().startswith(b"-----BEGIN"):
        return value.decode("ascii")
    return base64.b64encode(value).decode("ascii")


class GovpkiClient:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = 10.0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must be an http:// or https:// URL")
        self.base_url = base_url.rstrip("/")
        self.token = token if token is not None else os.environ.get("GOVPKI_TOKEN")
        self.timeout = timeout

    # ----- validation API --------------------------------------------------------

    def validate(
        self,
        cert: CertificateInput,
        intermediates: Sequence[CertificateInput] = (),
        purpose: Literal["tls_client", "tls_server", "document_signing"] = "tls_server",
        host: str | None = None,
        at: _dt.datetime | None = None,
    ) -> Validation:
        """Ask the service whether ``cert`` is valid for ``purpose``. A certificate
        that is not valid is an answer (``valid`` false); a refused request raises ClientError."""
        body: dict[str, Any] = {
            "certificate": _wire(cert),
            "intermediates": [_wire(c) for c in intermediates],
            "purpose": purpose,
        }
        if host is not None:
            body["host"] = host
        if at is not None:
            if at.tzinfo is None:
                raise ValueError("at must carry a time zone")
            body["time"] = at.isoformat()
        answer = self._post_json("/api/v1/validate", body)
        return Validation(
            valid=bool(answer["valid"]),
            code=str(answer["code"]),
            reason=str(answer["reason"]),
            path=list(answer.get("path", [])),
            raw=answer,
        )

    def _post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(  # noqa: S310  (scheme checked in __init__)
            self.base_url + path, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                data: dict[str, Any] = json.loads(response.read(MAX_RESPONSE_BYTES))
                return data
        except urllib.error.HTTPError as exc:
            problem: dict[str, Any] = {}
            with contextlib.suppress(ValueError):
                problem = json.loads(exc.read(MAX_RESPONSE_BYTES))
            detail = problem.get("detail") or exc.reason
            raise ClientError(f"{exc.code}: {detail}", status=exc.code, problem=problem) from None
        except (OSError, ValueError) as exc:
            raise ClientError(f"cannot reach {self.base_url}: {exc}") from None

    # ----- OCSP --------------------------------------------------------------------

    def ocsp_status(
        self,
        cert: CertificateInput,
        issuer: CertificateInput,
        url: str | None = None,
        *,
        hash_algorithm: hashes.HashAlgorithm | None = None,
        now: _dt.datetime | None = None,
    ) -> OcspStatus:
        """Ask the OCSP responder (the certificate's AIA OCSP URL, or ``url``) and check the answer.

        Checked: response status successful; signed by the issuer or by a responder
        certificate the issuer signed with id-kp-OCSPSigning (valid now); the
        response signature; our nonce echoed; the CertID is ours; thisUpdate not in
        the future and nextUpdate not past. Anything else raises OcspError."""
        leaf, ca = _certificate(cert), _certificate(issuer)
        target = url or _ocsp_url(leaf)
        nonce = os.urandom(16)
        algorithm = hash_algorithm or hashes.SHA256()
        request = (
            ocsp.OCSPRequestBuilder()
            .add_certificate(leaf, ca, algorithm)
            .add_extension(x509.OCSPNonce(nonce), critical=False)
            .build()
        )
        http = urllib.request.Request(  # noqa: S310  (scheme checked in _ocsp_url / below)
            target,
            data=request.public_bytes(serialization.Encoding.DER),
            headers={"Content-Type": "application/ocsp-request", "Accept": "application/ocsp-response"},
            method="POST",
        )
        if not target.startswith(("http://", "https://")):
            raise OcspError(f"only http and https OCSP responders are supported, not {target!r}")
        try:
            with urllib.request.urlopen(http, timeout=self.timeout) as response:  # noqa: S310
                data = response.read(MAX_RESPONSE_BYTES + 1)
        except (OSError, ValueError) as exc:
            raise OcspError(f"OCSP responder {target} did not answer: {exc}") from None
        if len(data) > MAX_RESPONSE_BYTES:
            raise OcspError(f"the OCSP response is larger than {MAX_RESPONSE_BYTES} bytes")
        return check_ocsp_response(data, leaf, ca, nonce=nonce, now=now or _dt.datetime.now(_dt.UTC))


def _ocsp_url(cert: x509.Certificate) -> str:
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        raise OcspError("the certificate names no OCSP responder (no AIA extension); pass url=") from None
    for desc in aia:
        location = desc.access_location
        if desc.access_method == AuthorityInformationAccessOID.OCSP and isinstance(
            location, x509.UniformResourceIdentifier
        ):
            return location.value
    raise OcspError("the certificate's AIA names no OCSP responder; pass url=")


def _verify_signature(key: Any, signature: bytes, data: bytes, algorithm: hashes.HashAlgorithm | None) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
        key.verify(signature, data, ec.ECDSA(algorithm))
    elif isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
        key.verify(signature, data, padding.PKCS1v15(), algorithm)
    elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        key.verify(signature, data)
    else:
        raise OcspError("the OCSP responder uses a key or signature algorithm this client does not support")


def _same_key(a: x509.Certificate, b: x509.Certificate) -> bool:
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return a.public_key().public_bytes(der, spki) == b.public_key().public_bytes(der, spki)


def _responder(response: ocsp.OCSPResponse, issuer: x509.Certificate, now: _dt.datetime) -> x509.Certificate:
    """The certificate whose key signed the response: the issuer, or a delegated responder it certified."""

    def named(cert: x509.Certificate) -> bool:
        if response.responder_name is not None:
            return cert.subject == response.responder_name
        # RFC 6960 ResponderID byKey: SHA-1 of the subjectPublicKey BIT STRING, as RFC 5280 key ids
        key_id = x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
        return response.responder_key_hash == key_id

    if named(issuer):
        return issuer
    for cert in response.certificates:
        if not named(cert):
            continue
        if _same_key(cert, issuer):
            return issuer
        if cert.issuer != issuer.subject:
            raise OcspError("the OCSP responder certificate was not issued by the certificate's issuer")
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            raise OcspError(
                "the OCSP responder certificate's signature does not verify with the issuer's key"
            ) from None
        try:
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            eku = None
        if eku is None or ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
            raise OcspError("the OCSP responder certificate lacks id-kp-OCSPSigning")
        if not cert.not_valid_before_utc - CLOCK_SKEW <= now <= cert.not_valid_after_utc + CLOCK_SKEW:
            raise OcspError("the OCSP responder certificate is not valid now")
        return cert
    raise OcspError("the OCSP response is signed by neither the issuer nor a responder it authorised")


def check_ocsp_response(
    data: bytes, cert: x509.Certificate, issuer: x509.Certificate, *, nonce: bytes | None, now: _dt.datetime
) -> OcspStatus:
    """Check a DER OCSP response for ``cert`` (see GovpkiClient.ocsp_status) and return its status."""
    try:
        response = ocsp.load_der_ocsp_response(data)
    except ValueError:
        raise OcspError("the answer is not an OCSP response") from None
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise OcspError(f"the OCSP responder answered {response.response_status.name.lower()}")
    signer = _responder(response, issuer, now)
    try:
        _verify_signature(
            signer.public_key(), response.signature, response.tbs_response_bytes, response.signature_hash_algorithm
        )
    except InvalidSignature:
        raise OcspError("the OCSP response signature does not verify") from None
    if nonce is not None:
        try:
            echoed = response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        except x509.ExtensionNotFound:
            raise OcspError("the OCSP response does not echo our nonce (a replayed answer?)") from None
        if echoed != nonce:
            raise OcspError("the OCSP response carries another nonce than ours (a replayed answer?)")
    single = None
    for candidate in response.responses:
        expected = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, candidate.hash_algorithm).build()
        if (
            candidate.serial_number == cert.serial_number
            and candidate.issuer_key_hash == expected.issuer_key_hash
            and candidate.issuer_name_hash == expected.issuer_name_hash
        ):
            single = candidate
            break
    if single is None:
        raise OcspError("the OCSP response is about another certificate (CertID does not match)")
    this_update = single.this_update_utc
    next_update = single.next_update_utc
    if this_update > now + CLOCK_SKEW:
        raise OcspError(f"the OCSP response is dated in the future ({this_update.isoformat()})")
    if next_update is not None and next_update < now - CLOCK_SKEW:
        raise OcspError(f"the OCSP response is out of date (next update was {next_update.isoformat()})")
    status = single.certificate_status
    if status == ocsp.OCSPCertStatus.REVOKED:
        reason = single.revocation_reason
        return OcspStatus(
            "revoked",
            this_update=this_update,
            next_update=next_update,
            produced_at=response.produced_at_utc,
            revocation_time=single.revocation_time_utc,
            revocation_reason=reason.name if reason is not None else None,
        )
    return OcspStatus(
        "good" if status == ocsp.OCSPCertStatus.GOOD else "unknown",
        this_update=this_update,
        next_update=next_update,
        produced_at=response.produced_at_utc,
    )

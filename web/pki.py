"""Public PKI URLs: CA certificates at stable addresses (DER and PEM)."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from flask import Blueprint, Response, current_app, g

from ca.models import CaKind, CertificateAuthority, CrossCertificate
from govpki.errors import NotFoundError
from web.container import Services

bp = Blueprint("pki", __name__, url_prefix="/ca")

CACHE = "public, max-age=3600"


def _services() -> Services:
    services: Services = current_app.extensions["govpki"]
    return services


def _send(ca: CertificateAuthority | CrossCertificate, fmt: str) -> Response:
    if fmt == "der":
        response = Response(ca.cert_der, mimetype="application/pkix-cert")
    else:
        pem = x509.load_der_x509_certificate(ca.cert_der).public_bytes(serialization.Encoding.PEM)
        response = Response(pem, mimetype="application/x-pem-file")
    response.headers["Cache-Control"] = CACHE
    name = f"govpki-ca-{ca.id}" if isinstance(ca, CertificateAuthority) else f"govpki-cross-{ca.id}"
    response.headers["Content-Disposition"] = f'inline; filename="{name}.{"cer" if fmt == "der" else "pem"}"'
    return response


def _format(fmt: str) -> str:
    if fmt not in ("der", "pem"):
        raise NotFoundError("CA certificates are served as .der or .pem", field="format")
    return fmt


@bp.get("/root.<fmt>")
def root(fmt: str) -> Response:
    return _send(_services().ca.active_ca(g.db, CaKind.ROOT), _format(fmt))


@bp.get("/issuing.<fmt>")
def issuing(fmt: str) -> Response:
    return _send(_services().ca.active_ca(g.db, CaKind.ISSUING), _format(fmt))


@bp.get("/<int:ca_id>.<fmt>")
def by_id(ca_id: int, fmt: str) -> Response:
    return _send(_services().ca.find_ca(g.db, ca_id), _format(fmt))


@bp.get("/cross/<int:cross_id>.<fmt>")
def cross(cross_id: int, fmt: str) -> Response:
    """A cross-certificate between two of our roots (made at a root rollover)."""
    return _send(_services().ca.find_cross(g.db, cross_id), _format(fmt))


@bp.get("/chain.pem")
def chain() -> Response:
    """The active issuing CA followed by the root, PEM; after a root rollover also the
    cross-certificate(s) NewWithOld, so clients that trust only an older root build a path."""
    services = _services()
    root = services.ca.active_ca(g.db, CaKind.ROOT)
    ders = [services.ca.active_ca(g.db, CaKind.ISSUING).cert_der, root.cert_der]
    ders.extend(c.cert_der for c in services.ca.chain_extras(g.db, root))
    parts = [x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM) for der in ders]
    response = Response(b"".join(parts), mimetype="application/x-pem-file")
    response.headers["Cache-Control"] = CACHE
    return response

"""CRLs at the distribution points written into certificates (RFC 5280 §4.2.1.13):
``/crl/<ca>.crl`` (the newest full CRL, or the root's ARL) and ``/crl/<ca>-delta.crl``
(the newest delta CRL), DER, ``application/pkix-crl``, cacheable until nextUpdate."""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass

from flask import Blueprint, Response, current_app, g, request

from ca.models import CaKind, CrlKind, CrlRecord
from govpki.errors import NotFoundError
from govpki.principal import SYSTEM
from web.container import Services

bp = Blueprint("crl", __name__, url_prefix="/crl")


def _services() -> Services:
    services: Services = current_app.extensions["govpki"]
    return services


@dataclass(frozen=True)
class _Served:
    der: bytes
    sha256: str
    this_update: dt.datetime
    next_update: dt.datetime


# The newest CRL of each (CA, kind) this app served: a CRL can be tens of MB, so a
# request reads the newest record's row without the DER, and the DER once per CRL
# (a hit must have the same SHA-256, so it is the same bytes).
_CACHE = "govpki.crl_cache"
_cache_lock = threading.Lock()


def _served(record: CrlRecord) -> _Served:
    key = (record.ca_id, record.kind)
    with _cache_lock:
        cache: dict[tuple[int, str], _Served] = current_app.extensions.setdefault(_CACHE, {})
        hit = cache.get(key)
    if hit is not None and hit.sha256 == record.sha256:
        return hit
    served = _Served(record.der, record.sha256, record.this_update, record.next_update)
    with _cache_lock:
        cache[key] = served
    return served


def _crl(ca_id: int, kind: CrlKind) -> _Served:
    services = _services()
    ca = services.crl.find_ca(g.db, ca_id)
    if ca.kind == CaKind.ROOT.value:
        if kind is CrlKind.DELTA:
            raise NotFoundError(f"CA {ca_id} is the root: it publishes no delta CRLs, only its ARL", field="ca")
        arl = services.crl.latest(g.db, ca_id, CrlKind.FULL, with_der=False)
        if arl is None:
            raise NotFoundError(
                f"the root CA {ca_id} has no ARL yet: it is signed with the root key at a ceremony "
                "('govpki crl generate --root')",
                field="ca",
                code="ca.no_arl",
            )
        return _served(arl)
    record = services.crl.latest(g.db, ca_id, kind, with_der=False)
    if record is not None and ca.retired_at is not None:
        return _served(record)  # a retired CA signs nothing more: its last CRL stays
    if record is None or record.next_update <= services.clock.now():
        # None yet, or stale (the scheduler is behind): sign one now, in this request's
        # unit of work (committed with the response).
        record = services.crl.generate(g.db, SYSTEM, ca_id, kind)
    return _served(record)


def _send(record: _Served, name: str) -> Response:
    now = _services().clock.now()
    response = Response(record.der, mimetype="application/pkix-crl")
    max_age = max(0, int((record.next_update - now).total_seconds()))
    response.headers["Cache-Control"] = f"public, max-age={max_age}"
    response.expires = record.next_update
    response.last_modified = record.this_update
    response.set_etag(record.sha256)
    response.headers["Content-Disposition"] = f'inline; filename="{name}"'
    response.make_conditional(request)  # 304 for a matching If-None-Match / If-Modified-Since
    return response


@bp.get("/<int:ca_id>.crl")
def full(ca_id: int) -> Response:
    return _send(_crl(ca_id, CrlKind.FULL), f"{ca_id}.crl")


@bp.get("/<int:ca_id>-delta.crl")
def delta(ca_id: int) -> Response:
    return _send(_crl(ca_id, CrlKind.DELTA), f"{ca_id}-delta.crl")

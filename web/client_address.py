"""The client's address for audit records and lock-outs, behind the trusted TLS front.

Behind nginx (``deploy/nginx/govpki.conf``) every request's peer is nginx; nginx
reports the client's address in ``X-Real-IP`` (``$remote_addr``). That header is
believed only when the peer is in ``GOVPKI_TRUSTED_PROXIES`` — the same list and the
same matching as for the client-certificate headers (:func:`authz.certlogin.is_trusted`);
from any other peer, or when it is not one IP address, it is ignored and the peer's
address is the client's. Decisions whether to trust a header are made on the peer
address (``request.remote_addr``), never on this one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from flask import current_app, request

from authz.certlogin import Network, is_trusted

REAL_IP_HEADER = "X-Real-IP"
UNKNOWN = "unknown"


def reported_address(peer: str | None, reported: str | None, proxies: Sequence[Network]) -> str:
    """``reported`` (normalised) when ``peer`` is a trusted proxy and it is one IP address;
    else ``peer`` (``"unknown"`` without one)."""
    if reported and is_trusted(peer, proxies):
        text = reported.strip(" \t")
        try:
            if len(text) <= 64:  # an IPv6 address with a zone fits; the lock-out's source column is 100
                return str(ipaddress.ip_address(text))
        except ValueError:
            pass  # not one address (a list, a name, garbage): the peer's
    return peer or UNKNOWN


def client_address() -> str:
    """This request's client address (see the module): for audit ``source`` and lock-outs."""
    proxies = current_app.extensions["govpki"].certlogin.trusted_proxies
    return reported_address(request.remote_addr, request.headers.get(REAL_IP_HEADER), proxies)

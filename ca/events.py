"""Audit tags of the CA domain (``domain:object:verb``)."""

from __future__ import annotations

import enum


class CaEvent(enum.StrEnum):
    ROOT_CREATE = "ca:authority:create_root"
    ISSUING_CREATE = "ca:authority:create_issuing"
    ISSUING_ROLLOVER = "ca:issuing:rollover"
    ROOT_ROLLOVER = "ca:root:rollover"
    CROSS_CREATE = "ca:cross_certificate:create"
    CA_RETIRE = "ca:ca:retire"
    CEREMONY_ROOT_KEY = "ca:ceremony:root_key"
    CEREMONY_SIGN_ISSUING = "ca:ceremony:sign_issuing"
    CEREMONY_ROOT_ROLLOVER = "ca:ceremony:root_rollover"
    CERT_RESERVE = "ca:certificate:reserve"
    CERT_APPROVE = "ca:certificate:approve"
    CERT_ISSUE = "ca:certificate:issue"
    CERT_REFUSE = "ca:certificate:refuse"
    CERT_REVOKE = "ca:certificate:revoke"
    CERT_HOLD = "ca:certificate:hold"
    CERT_RELEASE = "ca:certificate:release"
    CRL_GENERATE = "ca:crl:generate"
    OCSP_RESPONDER_CREATE = "ca:ocsp_responder:create"
    OCSP_RESPONDER_RETIRE = "ca:ocsp_responder:retire"
    TLOG_SIGN_HEAD = "ca:transparency:sign_head"
    CERT_RENEW = "ca:certificate:renew"
    CERT_EXPIRY_NOTICE = "ca:certificate:expiry_notice"

"""Audit tags of the RA domain (``domain:object:verb``)."""

from __future__ import annotations

import enum


class RaEvent(enum.StrEnum):
    DATA_KEY_CREATE = "ra:data_key:create"
    OFFICIAL_CREATE = "ra:official:create"
    OFFICIAL_REVEAL = "ra:official:reveal"
    SERVICE_CREATE = "ra:service:create"
    REQUEST_SUBMIT = "ra:request:submit"
    REQUEST_APPROVE = "ra:request:approve"
    REQUEST_REJECT = "ra:request:reject"
    REQUEST_COMPLETE = "ra:request:complete"
    REQUEST_FAIL = "ra:request:fail"
    IMPORT_CREATE = "ra:import:create"
    IMPORT_COMPLETE = "ra:import:complete"
    IMPORT_RESUME = "ra:import:resume"
    PKCS12_SHOW = "ra:pkcs12:show"
    PKCS12_DOWNLOAD = "ra:pkcs12:download"

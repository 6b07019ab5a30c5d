"""Audit tags of the key management domain (``domain:object:verb``)."""

from __future__ import annotations

import enum


class BackupEvent(enum.StrEnum):
    CREATE = "keymgmt:backup:create"
    RESTORE = "keymgmt:backup:restore"

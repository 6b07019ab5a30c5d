"""Audit tags of the key-management domain (``domain:object:verb``)."""

from __future__ import annotations

import enum


class KeyEvent(enum.StrEnum):
    REGISTER = "keymgmt:key:register"
    ACTIVATE = "keymgmt:key:activate"
    RETIRE = "keymgmt:key:retire"
    DESTROY = "keymgmt:key:destroy"
    ROTATE = "keymgmt:key:rotate"


class BackupEvent(enum.StrEnum):
    CREATE = "keymgmt:backup:create"
    RESTORE = "keymgmt:backup:restore"


class KmcEvent(enum.StrEnum):
    STORAGE_KEY_CREATE = "kmc:storage_key:create"
    ESCROW_CREATE = "kmc:escrow:create"
    RECOVERY_REQUEST = "kmc:recovery:request"
    RECOVERY_APPROVE = "kmc:recovery:approve"
    RECOVERY_REJECT = "kmc:recovery:reject"
    RECOVERY_RELEASE = "kmc:recovery:release"

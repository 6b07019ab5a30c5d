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

"""Small helpers shared by the key stores: labels, handles and owner-only secret files."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from govpki.errors import InvalidError
from keymgmt.interfaces import KeyNotFoundError, KeyStoreError

_LABEL = re.compile(r"[A-Za-z0-9._-]{1,64}")


def check_label(label: str) -> str:
    if not isinstance(label, str) or not _LABEL.fullmatch(label):
        raise InvalidError("a key label is 1 to 64 characters of A-Z a-z 0-9 . _ -", field="label")
    return label


def label_of(handle: str, kind: str) -> str:
    """The label inside ``<kind>:<label>``; a foreign or malformed handle is not found here."""
    prefix = f"{kind}:"
    label = handle[len(prefix) :] if isinstance(handle, str) and handle.startswith(prefix) else ""
    if not _LABEL.fullmatch(label):
        raise KeyNotFoundError(f"{handle!r} is not a key handle of this {kind} key store", field="handle")
    return label


def write_new_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a new owner-only (0600) file, atomically and without ever replacing
    an existing file: a temporary file is created 0600 with O_EXCL, synced, then hard-linked
    into place. Raises FileExistsError if ``path`` exists."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp, flags, 0o600)
        with open(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_secret_file(path: Path, what: str, field: str) -> bytes:
    """A passphrase or PIN from a file, surrounding whitespace removed."""
    try:
        value = path.read_bytes().strip()
    except FileNotFoundError:
        raise KeyStoreError(f"{what} file {path} does not exist", field=field) from None
    except OSError as exc:
        raise KeyStoreError(f"cannot read {what} file {path}: {exc.strerror}", field=field) from None
    if not value:
        raise KeyStoreError(f"{what} file {path} is empty", field=field)
    return value

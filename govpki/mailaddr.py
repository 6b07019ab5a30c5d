"""E-mail address syntax (RFC 5321 "dot-atom" mailboxes, ASCII only), checked before
an address is stored or a mail is addressed. No delivery check: that is the mail server's."""

from __future__ import annotations

import re

from govpki.errors import InvalidError

MAX_ADDRESS = 254  # RFC 5321 path limit less the angle brackets
_LOCAL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def address_problem(value: str) -> str | None:
    """Why ``value`` is not a usable mailbox address, or None when it is."""
    if not value:
        return "is empty"
    if value != value.strip():
        return "has leading or trailing white space"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        return "contains a control character (such as a line break)"
    if len(value) > MAX_ADDRESS:
        return f"is {len(value)} characters; an e-mail address may have at most {MAX_ADDRESS}"
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain:
        return "is not an e-mail address (name@domain)"
    if len(local) > 64:
        return "has a local part longer than 64 characters"
    if not _LOCAL.match(local):
        return "has a local part with characters or dots that are not allowed (ASCII dot-atom only)"
    labels = domain.split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels) or labels[-1].isdigit():
        return f"has a domain {domain!r} that is not a fully qualified host name"
    return None


def check_address(value: str, field: str) -> str:
    """``value`` when it is a mailbox address; otherwise an InvalidError naming ``field``."""
    problem = address_problem(value)
    if problem is not None:
        raise InvalidError(problem, field=field, code="govpki.invalid_email")
    return value

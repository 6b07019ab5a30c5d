"""Outgoing mail over SMTP (standard library ``smtplib``): one connection per batch,
STARTTLS and login when configured. The password is read from its file when connecting."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from govpki.config import SmtpSettings

# Errors that concern one message (a refused recipient, sender or content): the next may go.
MESSAGE_ERRORS: tuple[type[Exception], ...] = (
    smtplib.SMTPRecipientsRefused,
    smtplib.SMTPSenderRefused,
    smtplib.SMTPDataError,
    smtplib.SMTPNotSupportedError,
)


def message(sender: str, to: str, subject: str, body: str) -> EmailMessage:
    """A plain-text UTF-8 message (quoted-printable, so no 8BITMIME is needed)."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2])
    msg.set_content(body, charset="utf-8", cte="quoted-printable")
    return msg


@contextmanager
def connect(settings: SmtpSettings) -> Iterator[smtplib.SMTP]:
    """An open, greeted (and, as configured, encrypted and logged-in) SMTP connection.
    Raises ``OSError`` or ``smtplib.SMTPException`` when the server cannot be used."""
    client = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout_seconds)
    try:
        client.ehlo()
        if settings.starttls:
            client.starttls(context=ssl.create_default_context())
            client.ehlo()
        if settings.username is not None:
            client.login(settings.username, settings.password() or "")
        yield client
    finally:
        with suppress(smtplib.SMTPException, OSError):
            client.quit()

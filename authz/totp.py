"""TOTP (RFC 6238) second factor: secrets sealed in a key store, codes checked with pyotp.

A TOTP secret is 160 random bits (pyotp's base32 of 32 characters). It is stored only
sealed: AES-256-GCM under a *TOTP key* — an AES-256 secret key made in the online key
store (an HSM key when the online store is PKCS#11) through
:class:`~keymgmt.interfaces.SecretKeyStore`, the same capability the key-management
centre seals escrowed keys with. The key itself never leaves the store; the row
``totp_keys`` names it. The ciphertext is bound (associated data) to the account's id
and the key, so a sealed secret copied onto another account does not open.

Codes are 6 digits, 30-second steps, SHA-1 (what authenticator apps expect). A code is
accepted for the current step and one step either side; the step of an accepted code is
kept, and a code of that step or an earlier one is refused (RFC 6238 §5.2), so a code is
never accepted twice.
"""

from __future__ import annotations

import datetime as _dt
import hmac
from collections.abc import Mapping

import pyotp
from sqlalchemy import select
from sqlalchemy.orm import Session

from authz.models import Account, TotpKey
from govpki.audit import canonical_json
from govpki.errors import InvalidError
from govpki.principal import Principal
from keymgmt.interfaces import KeyStoreError, SecretKeyStore
from keymgmt.policy import KeyPurpose
from keymgmt.services import KeyService

STORE = "online"
DIGITS = 6
STEP_SECONDS = 30
WINDOW_STEPS = 1  # accept the previous and the next step too (clock drift)
ISSUER = "govpki"
_AAD_PURPOSE = "govpki-totp-secret-v1"
_AAD_OFFICIAL = "govpki-official-totp-secret-v1"  # an official's secret (authz/official_signin.py)
KEY_ALGORITHM = "aes-256"
KEY_DESCRIPTION = "TOTP sealing key (staff TOTP secrets)"


def new_secret() -> str:
    return pyotp.random_base32()


def time_step(at: _dt.datetime) -> int:
    return int(at.timestamp()) // STEP_SECONDS


def code_at(secret: str, step: int) -> str:
    """The code of ``step`` (tests and the enrolment check use it)."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).generate_otp(step)


def normalise_code(code: str) -> str:
    """The digits of a code as typed (spaces allowed); InvalidError (field ``code``) otherwise."""
    cleaned = "".join(code.split())
    if len(cleaned) != DIGITS or not cleaned.isascii() or not cleaned.isdigit():
        raise InvalidError(f"must be the {DIGITS} digits your authenticator app shows", field="code")
    return cleaned


def matching_step(secret: str, code: str, at: _dt.datetime, last_step: int | None) -> int | None:
    """The time step within the window whose code is ``code`` and which is later than
    ``last_step``; None if there is none (wrong, too old, or already used)."""
    now = time_step(at)
    found = None
    for step in range(now - WINDOW_STEPS, now + WINDOW_STEPS + 1):
        if hmac.compare_digest(code_at(secret, step), code) and (last_step is None or step > last_step):
            found = step  # no early return: the same work whatever matches
    return found


def provisioning_uri(secret: str, username: str, issuer: str = ISSUER) -> str:
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(name=username, issuer_name=issuer)


class TotpSealer:
    """Seals and opens TOTP secrets with the newest TOTP key (made on first use)."""

    def __init__(
        self, keystores: Mapping[str, object], store_name: str = STORE, *, keys: KeyService | None = None
    ) -> None:
        self._keystores = keystores
        self._store_name = store_name
        self._keys = keys  # the key inventory: every TOTP key gets a record (purpose totp_sealing)

    def _store(self, name: str) -> SecretKeyStore:
        store = self._keystores[name]
        if not isinstance(store, SecretKeyStore):
            raise KeyStoreError(f"key store {name!r} cannot hold secret keys", field="keystore")
        return store

    def current_key(self, session: Session, principal: Principal, *, now: _dt.datetime) -> TotpKey:
        """The newest TOTP key, made now (and recorded in the key inventory) if there is none.
        ``principal``: who caused it (the account enrolling, or the system at start-up)."""
        key = session.scalars(select(TotpKey).order_by(TotpKey.id.desc())).first()
        if key is not None:
            return key
        handle = self._store(self._store_name).generate_secret(f"totp-{now:%Y%m%d%H%M%S}-{now.microsecond:06d}")
        key = TotpKey(key_store=self._store_name, key_handle=handle, created_at=now, created_by=principal.audit_name)
        session.add(key)
        session.flush()
        if self._keys is not None:
            self._keys.register(
                session,
                principal,
                purpose=KeyPurpose.TOTP_SEALING,
                store=self._store_name,
                handle=handle,
                algorithm=KEY_ALGORITHM,
                description=KEY_DESCRIPTION,
            )
        return key

    def record_keys(self, session: Session, principal: Principal) -> int:
        """Give every TOTP key without a key record one (keys made before TOTP keys were
        recorded); idempotent, audited. The caller checks the permission (start-up: the
        system). Returns how many were recorded."""
        if self._keys is None:
            return 0
        return self._keys.register_missing(
            session,
            principal,
            session.scalars(select(TotpKey).order_by(TotpKey.id)),
            purpose=KeyPurpose.TOTP_SEALING,
            algorithm=KEY_ALGORITHM,
            description=KEY_DESCRIPTION,
        )

    def latest_key(self, session: Session) -> TotpKey | None:
        """The TOTP key new enrolments use (``None`` before the first)."""
        return session.scalars(select(TotpKey).order_by(TotpKey.id.desc())).first()

    @staticmethod
    def _aad(account: Account, key: TotpKey) -> bytes:
        return canonical_json(
            {"purpose": _AAD_PURPOSE, "account_id": account.id, "key": f"{key.key_store}/{key.key_handle}"}
        ).encode()

    def seal(self, account: Account, key: TotpKey, secret: str) -> bytes:
        return self._store(key.key_store).encrypt(key.key_handle, secret.encode("ascii"), self._aad(account, key))

    def open(self, session: Session, account: Account) -> str:
        if account.totp_secret is None or account.totp_key_id is None:
            raise InvalidError("no TOTP secret has been made for this account", field="code")
        key = session.get(TotpKey, account.totp_key_id)
        if key is None:  # pragma: no cover - a foreign key
            raise InvalidError("the TOTP key of this account is missing", field="code")
        return self._store(key.key_store).decrypt(key.key_handle, account.totp_secret, self._aad(account, key)).decode()

    # ----- officials' secrets (authz/official_signin.py): bound to the official's id -------------

    @staticmethod
    def _official_aad(official_id: int, key: TotpKey) -> bytes:
        return canonical_json(
            {"purpose": _AAD_OFFICIAL, "official_id": official_id, "key": f"{key.key_store}/{key.key_handle}"}
        ).encode()

    def seal_official(self, official_id: int, key: TotpKey, secret: str) -> bytes:
        return self._store(key.key_store).encrypt(
            key.key_handle, secret.encode("ascii"), self._official_aad(official_id, key)
        )

    def open_official(self, session: Session, official_id: int, key_id: int, sealed: bytes) -> str:
        key = session.get(TotpKey, key_id)
        if key is None:  # pragma: no cover - a foreign key
            raise InvalidError("the TOTP key of this sign-in is missing", field="code")
        return self._store(key.key_store).decrypt(key.key_handle, sealed, self._official_aad(official_id, key)).decode()

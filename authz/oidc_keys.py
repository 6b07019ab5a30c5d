"""Signing and checking the provider's JWTs (ID tokens and access tokens) with the
token-signing key, which stays in its key store (a file store or an HSM).

The key is the ``token_signing`` purpose of the key policy: made on first use in the
online store, rotated by the job loop (or ``govpki oidc rotate``) when its lifetime
minus the overlap has passed; the previous key stays active, and so in the JWKS, until
its planned end of use. The key id (``kid``) is the key's fingerprint: the SHA-256 of
its SubjectPublicKeyInfo, in hex, as in its key record.

The JWS is built here (RFC 7515 compact serialisation) and the signature made by the
key store's signer: ES256 for a P-256 key (the DER ECDSA signature converted to the
JOSE ``r || s`` form), RS256 for an RSA key. Verification is joserfc's, against the
published key set; the claims (issuer, audience, expiry) are checked against our clock.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeyParameters, KeySet, RSAKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from govpki.clock import Clock
from govpki.principal import Principal
from keymgmt.interfaces import KeyStore, PublicKey
from keymgmt.models import KeyRecord, KeyState
from keymgmt.policy import KeyPurpose
from keymgmt.services import KeyService

PURPOSE = KeyPurpose.TOKEN_SIGNING
ALGORITHMS = ("ES256", "RS256")


class TokenError(Exception):
    """A JWT that does not verify: ``reason`` says why (signature, issuer, audience, expiry…)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode("utf-8")


def algorithm_for(public_key: PublicKey) -> str:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.name != "secp256r1":
            raise ValueError(f"token-signing keys on curve {public_key.curve.name} are not supported (use ec-p256)")
        return "ES256"
    return "RS256"


@dataclass(frozen=True)
class VerificationKey:
    kid: str
    alg: str
    public_key: PublicKey
    record_id: int


class TokenSigner:
    def __init__(self, keystores: Mapping[str, KeyStore], keys: KeyService, clock: Clock) -> None:
        self._keystores = keystores
        self._keys = keys
        self._clock = clock

    def sign(self, session: Session, principal: Principal, claims: Mapping[str, Any], *, typ: str = "JWT") -> str:
        """A compact JWS over ``claims`` with the current token-signing key (made now, recorded
        and audited, if there is none). Counts the signature on the key's record."""
        record, _new = self._keys.signing_key(session, principal, PURPOSE)
        store = self._keystores[record.store]
        public_key = store.public_key(record.handle)
        alg = algorithm_for(public_key)
        header = {"alg": alg, "kid": record.spki_sha256, "typ": typ}
        signing_input = f"{_b64(_json(header))}.{_b64(_json(claims))}".encode("ascii")
        signer = store.signer(record.handle)
        if isinstance(signer, ec.EllipticCurvePrivateKey):
            r, s = decode_dss_signature(signer.sign(signing_input, ec.ECDSA(hashes.SHA256())))
            signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        elif isinstance(signer, rsa.RSAPrivateKey):
            signature = signer.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        else:  # pragma: no cover - the key stores make only these
            raise TypeError(f"cannot sign with {type(signer).__name__}")
        self._keys.count_use(session, record.store, record.handle)
        return f"{signing_input.decode('ascii')}.{_b64(signature)}"

    def verification_keys(self, session: Session) -> list[VerificationKey]:
        """The active token-signing keys whose planned end of use has not passed, newest
        first: the current key and, during the overlap, the previous one."""
        now = self._clock.now()
        found: list[VerificationKey] = []
        records = session.scalars(
            select(KeyRecord)
            .where(KeyRecord.purpose == PURPOSE.value, KeyRecord.state == KeyState.ACTIVE.value)
            .order_by(KeyRecord.activated_at.desc(), KeyRecord.id.desc())
        )
        for record in records:
            if self._keys.planned_end(record) <= now or record.spki_sha256 is None:
                continue
            store = self._keystores.get(record.store)
            if store is None or not store.has(record.handle):
                continue
            public_key = store.public_key(record.handle)
            found.append(VerificationKey(record.spki_sha256, algorithm_for(public_key), public_key, record.id))
        return found

    def jwks(self, session: Session) -> dict[str, Any]:
        """The JSON Web Key Set (RFC 7517) of :meth:`verification_keys`."""
        return dict(self._key_set(self.verification_keys(session)).as_dict(private=False))

    @staticmethod
    def _key_set(keys: Sequence[VerificationKey]) -> KeySet:
        members: list[ECKey | RSAKey] = []
        for key in keys:
            params: KeyParameters = {"kid": key.kid, "use": "sig", "alg": key.alg}
            if isinstance(key.public_key, ec.EllipticCurvePublicKey):
                members.append(ECKey.import_key(key.public_key, params))
            else:
                members.append(RSAKey.import_key(key.public_key, params))
        return KeySet(members)  # type: ignore[arg-type]

    def verify(
        self, session: Session, token: str, *, issuer: str, audience: str | None = None, check_expiry: bool = True
    ) -> dict[str, Any]:
        """The claims of ``token`` if its signature verifies with one of our published keys
        and its issuer, audience (when given) and expiry are right; else :class:`TokenError`."""
        keys = self.verification_keys(session)
        if not keys:
            raise TokenError("no token-signing key is active")
        try:
            decoded = jwt.decode(token, self._key_set(keys), algorithms=list(ALGORITHMS))
        except JoseError as exc:
            raise TokenError(f"the token's signature does not verify ({exc.error})") from None
        except (ValueError, TypeError, KeyError):
            raise TokenError("the token is not a well-formed JWT") from None
        claims = dict(decoded.claims)
        if claims.get("iss") != issuer:
            raise TokenError(f"the token's issuer is not {issuer}")
        if audience is not None:
            aud = claims.get("aud")
            audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
            if audience not in audiences:
                raise TokenError("the token was not issued for this audience")
        if check_expiry:
            exp = claims.get("exp")
            if not isinstance(exp, int) or isinstance(exp, bool):
                raise TokenError("the token has no expiry")
            if int(self._clock.now().timestamp()) >= exp:
                raise TokenError("the token has expired")
        return claims

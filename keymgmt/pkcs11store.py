"""A key store on a PKCS#11 token (an HSM; SoftHSM2 in tests).

Handles are ``pkcs11:<label>``: the private and public key objects on the token carry
that ``CKA_LABEL`` (plus a random 16-byte ``CKA_ID`` linking the pair). Private keys are
generated on the token as ``CKA_TOKEN``, ``CKA_PRIVATE``, ``CKA_SENSITIVE`` and not
``CKA_EXTRACTABLE``; they can sign and do nothing else.

Secret keys (the SecretKeyStore capability) are AES-256 ``CKO_SECRET_KEY`` objects made on
the token, sensitive and not extractable, allowed to encrypt and decrypt only; data is
sealed on the token with ``CKM_AES_GCM`` (96-bit random nonce, 128-bit tag, associated data).

Data is hashed in software; the token signs the digest (``CKM_ECDSA``, or ``CKM_RSA_PKCS``
over a DigestInfo, i.e. PKCS#1 v1.5).

Threads and processes: python-pkcs11 initialises a module with ``C_Initialize(NULL)``,
which tells it the caller will not enter it from several threads at once (SoftHSM then
switches its own locking off). So every call into one module goes through one lock per
process. PKCS#11 login is per process and token, not per session: a second ``C_Login``
fails and any ``C_Logout`` logs every session out. So all stores for the same token in a
process share one logged-in session. After ``fork()`` the child initialises the module
again by itself, and :func:`reinitialize_module` lets tests make a loaded module see tokens
created since; stores then open a new session on their next use.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar

import pkcs11
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import load_der_public_key
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.mechanisms import GCMParams
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from govpki.config import KeyAlgorithm
from govpki.errors import ConflictError, InvalidError
from keymgmt._util import check_label, label_of
from keymgmt.interfaces import (
    GCM_NONCE_BYTES,
    KeyExportRefusedError,
    KeyNotFoundError,
    KeyStoreError,
    PublicKey,
    SecretDecryptError,
    SignerHandle,
)
from keymgmt.signers import EcSigner, RsaSigner

T = TypeVar("T")

_CURVES: dict[str, str] = {"ec-p256": "secp256r1", "ec-p384": "secp384r1"}
_RSA_BITS: dict[str, int] = {"rsa-2048": 2048, "rsa-3072": 3072, "rsa-4096": 4096}

# DER DigestInfo prefixes (RFC 8017 §9.2, note 1): prefix + digest is what CKM_RSA_PKCS signs.
_DIGEST_INFO: dict[str, bytes] = {
    "sha224": bytes.fromhex("302d300d06096086480165030402040500041c"),
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}

# Errors after which a fresh session (and login) is worth one more try.
_STALE = (
    p11.SessionHandleInvalid,
    p11.SessionClosed,
    p11.UserNotLoggedIn,
    p11.ObjectHandleInvalid,
    p11.KeyHandleInvalid,
    p11.DeviceRemoved,
    p11.TokenNotPresent,
)


@dataclass(frozen=True)
class KeyProtection:
    """The protection attributes of a private key object, as the token reports them."""

    token: bool
    private: bool
    sensitive: bool
    extractable: bool
    always_sensitive: bool
    never_extractable: bool


class _Module:
    """One loaded PKCS#11 module in this process: its lock and a generation that changes
    whenever the module is initialised again (all session and object handles die then)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.RLock()
        self.generation = 0
        self._pid = -1

    def lib(self) -> Any:
        """The initialised library; call with ``lock`` held."""
        try:
            lib = pkcs11.lib(self.path)
        except (RuntimeError, OSError) as exc:
            raise KeyStoreError(f"cannot load PKCS#11 module {self.path}: {exc}") from None
        if self._pid != os.getpid():
            if self._pid != -1:  # forked: the child must initialise the module itself
                lib.reinitialize()
                self.generation += 1
            self._pid = os.getpid()
        return lib

    def reinitialize(self) -> None:
        with self.lock:
            self.lib().reinitialize()
            self.generation += 1


_registry_lock = threading.Lock()
_modules: dict[str, _Module] = {}
_connections: dict[tuple[str, str], _Connection] = {}


def _module(path: Path) -> _Module:
    key = str(Path(path).resolve())
    with _registry_lock:
        module = _modules.get(key)
        if module is None:
            module = _modules[key] = _Module(key)
        return module


def reinitialize_module(module_path: Path) -> None:
    """``C_Finalize`` + ``C_Initialize`` the module in this process, e.g. so that SoftHSM,
    which reads its token directory at initialisation, sees tokens created since. Every
    :class:`Pkcs11KeyStore` of the module logs in again on its next use."""
    _module(module_path).reinitialize()


class _Connection:
    """The logged-in session for one token in this process, shared by all stores of it."""

    def __init__(self, module: _Module, token_label: str, pin: str) -> None:
        self.module = module
        self.token_label = token_label
        self.pin = pin
        self._session: Any = None
        self._generation = -1
        self._verified = False
        self._objects: dict[tuple[str, ObjectClass], Any] = {}

    def _open(self) -> Any:
        lib = self.module.lib()
        if self._session is not None and self._generation == self.module.generation:
            return self._session
        self._drop()
        where = f"token {self.token_label!r} of {self.module.path}"
        try:
            token = lib.get_token(token_label=self.token_label)
        except p11.NoSuchToken:
            raise KeyStoreError(f"there is no {where}") from None
        except p11.PKCS11Error as exc:
            raise KeyStoreError(f"cannot find {where}: {type(exc).__name__}") from None
        try:
            session = token.open(rw=True, user_pin=self.pin)
        except (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange):
            raise KeyStoreError(f"wrong PIN for {where}", field="pin") from None
        except p11.PinLocked:
            raise KeyStoreError(f"the PIN of {where} is locked", field="pin") from None
        except p11.UserAlreadyLoggedIn:
            # Login is per token and process. If our PIN worked before, a session we lost
            # track of is still logged in; otherwise someone else logged in and our PIN
            # was never checked, so don't piggyback on their login.
            if not self._verified:
                raise KeyStoreError(f"{where} is already logged in by other code in this process") from None
            session = token.open(rw=True)
        except p11.PKCS11Error as exc:
            raise KeyStoreError(f"cannot log in to {where}: {type(exc).__name__}") from None
        self._session, self._generation, self._verified = session, self.module.generation, True
        return session

    def _drop(self) -> None:
        old, self._session = self._session, None
        self._objects.clear()
        if old is not None and self._generation == self.module.generation:
            with contextlib.suppress(p11.PKCS11Error):
                old.close()

    def run(self, operation: Callable[[Any], T]) -> T:
        """Run ``operation(session)`` under the module lock, once more on a new session if
        the session went stale (token re-initialised, device reset)."""
        with self.module.lock:
            for attempt in (1, 2):
                session = self._open()
                try:
                    return operation(session)
                except _STALE as exc:
                    self._drop()
                    if attempt == 2:
                        raise KeyStoreError(f"token {self.token_label!r} failed: {type(exc).__name__}") from None
                except p11.PKCS11Error as exc:
                    raise KeyStoreError(f"token {self.token_label!r} failed: {type(exc).__name__}") from None
            raise AssertionError("unreachable")

    def find(self, session: Any, label: str, object_class: ObjectClass) -> Any:
        """The one object of this class and label (cached per session); call inside ``run``."""
        found = self._objects.get((label, object_class))
        if found is None:
            objects = list(session.get_objects({Attribute.CLASS: object_class, Attribute.LABEL: label}))
            if not objects:
                raise KeyNotFoundError(f"no key labelled {label!r} on token {self.token_label!r}", field="handle")
            if len(objects) > 1:
                raise KeyStoreError(f"token {self.token_label!r} holds {len(objects)} keys labelled {label!r}")
            found = self._objects[(label, object_class)] = objects[0]
        return found

    def forget(self, label: str, object_class: ObjectClass) -> None:
        """Drop a cached object (after it was destroyed); call inside ``run``."""
        self._objects.pop((label, object_class), None)


def _connection(module_path: Path, token_label: str, pin: str) -> _Connection:
    module = _module(module_path)
    with _registry_lock:
        conn = _connections.get((module.path, token_label))
        if conn is None:
            conn = _connections[(module.path, token_label)] = _Connection(module, token_label, pin)
            return conn
    if not hmac.compare_digest(conn.pin.encode(), pin.encode()):
        # The token is logged in already; a different PIN cannot be the right one.
        raise KeyStoreError(f"wrong PIN for token {token_label!r} of {module.path}", field="pin")
    return conn


class Pkcs11KeyStore:
    """Keys on the token labelled ``token_label`` of the PKCS#11 module ``module_path``."""

    def __init__(self, module_path: Path, token_label: str, pin: str) -> None:
        self.module_path = Path(module_path)
        self.token_label = token_label
        self._conn = _connection(self.module_path, token_label, pin)
        self._signers: dict[str, SignerHandle] = {}
        self._lock = threading.Lock()
        try:
            self._conn.run(lambda session: None)  # fail now on a wrong PIN or missing token
        except KeyStoreError:
            with _registry_lock:
                if _connections.get((self._conn.module.path, token_label)) is self._conn:
                    del _connections[(self._conn.module.path, token_label)]
            raise

    @property
    def kind(self) -> Literal["pkcs11"]:
        return "pkcs11"

    def __repr__(self) -> str:
        return f"<Pkcs11KeyStore token={self.token_label!r} module={str(self.module_path)!r}>"

    def generate(self, label: str, algorithm: KeyAlgorithm) -> str:
        check_label(label)
        if algorithm not in _CURVES and algorithm not in _RSA_BITS:
            raise InvalidError(f"unknown key algorithm {algorithm!r}", field="algorithm")
        private_template = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True,
            Attribute.DECRYPT: False,
            Attribute.UNWRAP: False,
            Attribute.DERIVE: False,
        }
        public_template: dict[Attribute, Any] = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: False,
            Attribute.VERIFY: True,
        }
        options: dict[str, Any] = {
            "store": True,
            "label": label,
            "id": secrets.token_bytes(16),
            "capabilities": MechanismFlag.SIGN | MechanismFlag.VERIFY,
            "private_template": private_template,
            "public_template": public_template,
        }

        def make(session: Any) -> None:
            if list(session.get_objects({Attribute.LABEL: label})):
                raise ConflictError(f"a key labelled {label!r} already exists", field="label")
            if algorithm in _CURVES:
                public_template[Attribute.EC_PARAMS] = encode_named_curve_parameters(_CURVES[algorithm])
                session.generate_keypair(KeyType.EC, mechanism=Mechanism.EC_KEY_PAIR_GEN, **options)
            else:
                session.generate_keypair(KeyType.RSA, _RSA_BITS[algorithm], **options)

        self._conn.run(make)
        return f"pkcs11:{label}"

    def signer(self, handle: str) -> SignerHandle:
        label = label_of(handle, self.kind)
        with self._lock:
            signer = self._signers.get(label)
        if signer is not None:
            return signer
        public = self.public_key(handle)
        self._conn.run(lambda session: self._conn.find(session, label, ObjectClass.PRIVATE_KEY))
        if isinstance(public, ec.EllipticCurvePublicKey):
            signer = EcSigner(handle, public, lambda digest, hash_: self._sign_ec(label, digest))
        else:
            signer = RsaSigner(handle, public, lambda digest, hash_: self._sign_rsa(label, digest, hash_))
        with self._lock:
            return self._signers.setdefault(label, signer)

    def _sign_ec(self, label: str, digest: bytes) -> bytes:
        raw: bytes = self._conn.run(
            lambda s: self._conn.find(s, label, ObjectClass.PRIVATE_KEY).sign(digest, mechanism=Mechanism.ECDSA)
        )
        size = len(raw) // 2
        return encode_dss_signature(int.from_bytes(raw[:size], "big"), int.from_bytes(raw[size:], "big"))

    def _sign_rsa(self, label: str, digest: bytes, hash_algorithm: hashes.HashAlgorithm) -> bytes:
        prefix = _DIGEST_INFO.get(hash_algorithm.name)
        if prefix is None:
            raise InvalidError(
                f"RSA signing on the token supports {', '.join(_DIGEST_INFO)}, not {hash_algorithm.name}"
            )
        signature: bytes = self._conn.run(
            lambda s: self._conn.find(s, label, ObjectClass.PRIVATE_KEY).sign(
                prefix + digest, mechanism=Mechanism.RSA_PKCS
            )
        )
        return signature

    def public_key(self, handle: str) -> PublicKey:
        label = label_of(handle, self.kind)

        def read(session: Any) -> PublicKey:
            obj = self._conn.find(session, label, ObjectClass.PUBLIC_KEY)
            if obj.key_type == KeyType.EC:
                key = load_der_public_key(encode_ec_public_key(obj))
            elif obj.key_type == KeyType.RSA:
                n = int.from_bytes(obj[Attribute.MODULUS], "big")
                e = int.from_bytes(obj[Attribute.PUBLIC_EXPONENT], "big")
                key = rsa.RSAPublicNumbers(e, n).public_key()
            else:
                raise KeyStoreError(f"key {label!r} is a {obj.key_type!s} key, not EC or RSA")
            if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
                raise KeyStoreError(f"key {label!r} has an unusable public key")
            return key

        return self._conn.run(read)

    def has(self, handle: str) -> bool:
        try:
            label = label_of(handle, self.kind)
            self._conn.run(lambda s: self._conn.find(s, label, ObjectClass.PRIVATE_KEY))
        except KeyNotFoundError:
            return False
        return True

    def destroy(self, handle: str) -> None:
        """Destroy the private and public key objects of the key on the token."""
        label = label_of(handle, self.kind)

        def remove(session: Any) -> None:
            objects = [
                obj
                for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY)
                for obj in session.get_objects({Attribute.CLASS: object_class, Attribute.LABEL: label})
            ]
            if not objects:
                raise KeyNotFoundError(f"no key labelled {label!r} on token {self.token_label!r}", field="handle")
            for obj in objects:
                obj.destroy()
            for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
                self._conn.forget(label, object_class)

        with self._lock:
            self._signers.pop(label, None)
        self._conn.run(remove)

    def protection(self, handle: str) -> KeyProtection:
        """Read back the private key's protection attributes from the token."""
        return self._protection(handle, ObjectClass.PRIVATE_KEY)

    def _protection(self, handle: str, object_class: ObjectClass) -> KeyProtection:
        label = label_of(handle, self.kind)
        names = (
            Attribute.TOKEN,
            Attribute.PRIVATE,
            Attribute.SENSITIVE,
            Attribute.EXTRACTABLE,
            Attribute.ALWAYS_SENSITIVE,
            Attribute.NEVER_EXTRACTABLE,
        )

        def read(session: Any) -> KeyProtection:
            obj = self._conn.find(session, label, object_class)
            return KeyProtection(*(bool(obj[name]) for name in names))

        return self._conn.run(read)

    def export_private_key(self, handle: str) -> NoReturn:
        """Ask the token for the private value. A protected key is refused by the token, and
        this raises :class:`KeyExportRefusedError`; it never returns key material."""
        label = label_of(handle, self.kind)

        def attempt(session: Any) -> NoReturn:
            obj = self._conn.find(session, label, ObjectClass.PRIVATE_KEY)
            secret = Attribute.VALUE if obj.key_type == KeyType.EC else Attribute.PRIVATE_EXPONENT
            try:
                obj[secret]
            except (p11.AttributeSensitive, p11.KeyUnextractable, p11.AttributeTypeInvalid):
                raise KeyExportRefusedError(
                    f"the token refuses to export the private key {label!r} (sensitive, not extractable)",
                    field="handle",
                ) from None
            raise KeyStoreError(f"the private key {label!r} is readable from the token; it is not protected")

        self._conn.run(attempt)

    # ----- secret (AES-256) keys: the SecretKeyStore capability ---------------

    def generate_secret(self, label: str) -> str:
        check_label(label)
        template = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.ENCRYPT: True,
            Attribute.DECRYPT: True,
            Attribute.WRAP: False,
            Attribute.UNWRAP: False,
            Attribute.SIGN: False,
            Attribute.VERIFY: False,
            Attribute.DERIVE: False,
        }

        def make(session: Any) -> None:
            if list(session.get_objects({Attribute.LABEL: label})):
                raise ConflictError(f"a key labelled {label!r} already exists", field="label")
            session.generate_key(
                KeyType.AES,
                256,
                label=label,
                id=secrets.token_bytes(16),
                store=True,
                capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
                template=template,
            )

        self._conn.run(make)
        return f"pkcs11:{label}"

    def encrypt(self, handle: str, plaintext: bytes, aad: bytes) -> bytes:
        label = label_of(handle, self.kind)
        nonce = secrets.token_bytes(GCM_NONCE_BYTES)
        sealed: bytes = self._conn.run(
            lambda s: self._conn.find(s, label, ObjectClass.SECRET_KEY).encrypt(
                plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, aad)
            )
        )
        return nonce + sealed

    def decrypt(self, handle: str, ciphertext: bytes, aad: bytes) -> bytes:
        label = label_of(handle, self.kind)
        if len(ciphertext) < GCM_NONCE_BYTES + 16:
            raise SecretDecryptError("the ciphertext is too short to be sealed data", field="ciphertext")
        nonce, sealed = ciphertext[:GCM_NONCE_BYTES], ciphertext[GCM_NONCE_BYTES:]

        def open_(session: Any) -> bytes:
            key = self._conn.find(session, label, ObjectClass.SECRET_KEY)
            try:
                plain: bytes = key.decrypt(sealed, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, aad))
            except (p11.GeneralError, p11.EncryptedDataInvalid, p11.EncryptedDataLenRange, p11.FunctionFailed):
                # SoftHSM2 reports a failed GCM tag check as CKR_GENERAL_ERROR
                raise SecretDecryptError(
                    "the ciphertext does not authenticate under this key and associated data", field="ciphertext"
                ) from None
            return plain

        return self._conn.run(open_)

    def has_secret(self, handle: str) -> bool:
        try:
            label = label_of(handle, self.kind)
            self._conn.run(lambda s: self._conn.find(s, label, ObjectClass.SECRET_KEY))
        except KeyNotFoundError:
            return False
        return True

    def secret_protection(self, handle: str) -> KeyProtection:
        """Read back a secret key's protection attributes from the token."""
        return self._protection(handle, ObjectClass.SECRET_KEY)

    def export_secret(self, handle: str) -> NoReturn:
        """Ask the token for a secret key's value; a protected key is refused
        (:class:`KeyExportRefusedError`). Never returns key material."""
        label = label_of(handle, self.kind)

        def attempt(session: Any) -> NoReturn:
            obj = self._conn.find(session, label, ObjectClass.SECRET_KEY)
            try:
                obj[Attribute.VALUE]
            except (p11.AttributeSensitive, p11.KeyUnextractable, p11.AttributeTypeInvalid):
                raise KeyExportRefusedError(
                    f"the token refuses to export the secret key {label!r} (sensitive, not extractable)",
                    field="handle",
                ) from None
            raise KeyStoreError(f"the secret key {label!r} is readable from the token; it is not protected")

        self._conn.run(attempt)

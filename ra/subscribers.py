"""Subscribers registered by a prefecture RA: officials (公务人员) and services.

Officials' resident ID numbers are checked (GB 11643, ``ra.idnumber``), encrypted at
rest and found by a keyed hash:

* an AES-256 *secret* key in a key store (the online store, or an HSM token behind it)
  encrypts each number with AES-GCM, bound by associated data to the number's lookup
  hash (so ciphertext moved to another row does not open);
* the lookup hash is HMAC-SHA256 under a random 256-bit key that is kept in the
  database only sealed under that AES key (``subscriber_data_keys``), opened in memory
  when needed. The hash column is unique across the network: a number is registered once.

People see the masked number (``6501**********1234``) everywhere. The clear number is
shown only to an RA officer of the official's prefecture, who vets registrations and
requests, through :meth:`SubscriberService.reveal_id_number` — audited each time.

Who sees what: RA staff (clerk, officer) see and act on their own prefecture only; a
subscriber of another prefecture is "not found" (its existence does not leak). CA
operators, security administrators and auditors (no prefecture) read every prefecture.
Only a clerk registers. Nothing here commits; each registration is audited in the
caller's transaction, never with the clear number.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import threading
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ca.csr import check_dns_name, check_subject_value
from govpki import audit
from govpki.audit import canonical_json
from govpki.clock import Clock
from govpki.errors import ConflictError, ForbiddenError, InvalidError, NotFoundError, UnavailableError
from govpki.mailaddr import check_address
from govpki.principal import Principal, PrincipalKind, Role
from keymgmt.interfaces import KeyStoreError, SecretKeyStore
from keymgmt.policy import KeyPurpose
from keymgmt.services import KeyService
from ra.events import RaEvent
from ra.idnumber import parse_id_number
from ra.models import Prefecture
from ra.subscriber_models import Official, ServiceSubscriber, SubscriberDataKey

READ_ROLES = frozenset({Role.CA_OPERATOR, Role.SECURITY_ADMIN, Role.SECURITY_AUDITOR})
RA_ROLES = frozenset({Role.RA_CLERK, Role.RA_OFFICER})
DATA_KEY_STORE = "online"
MAX_NAME = 64
MAX_HOSTS = 50
_AAD_PURPOSE = "govpki-ra-id-number-v1"
_HMAC_AAD = b"govpki-ra-id-number-hmac-key-v1"
DATA_KEY_ALGORITHM = "aes-256"
DATA_KEY_DESCRIPTION = "subscriber data key (officials' ID numbers; seals the lookup-hash HMAC key)"
_ID_SHAPE = re.compile(r"\d{17}[\dXx]")


@dataclass(frozen=True)
class OfficialInput:
    name: str
    id_number: str
    department: str
    title: str | None = None
    phone: str | None = None
    email: str | None = None


@dataclass(frozen=True)
class ServiceInput:
    name: str
    department: str
    responsible_official_id: int
    host_names: Sequence[str] = ()
    ip_addresses: Sequence[str] = ()


def ra_prefecture(principal: Principal) -> str | None:
    """The prefecture an RA staff member acts for (None for other principals)."""
    return principal.prefecture if principal.roles & RA_ROLES else None


def check_reader(principal: Principal) -> str | None:
    """Who may read subscribers: RA staff (their prefecture, returned) and the central
    roles (None: every prefecture). Anyone else is refused."""
    if principal.kind is PrincipalKind.SYSTEM:
        return None
    if principal.roles & RA_ROLES:
        if principal.prefecture is None:
            raise ForbiddenError(
                "RA staff act for one prefecture; this account has none", field="prefecture", code="ra.no_prefecture"
            )
        return principal.prefecture
    if principal.roles & READ_ROLES:
        return None
    raise ForbiddenError("your role may not read subscribers", code="ra.may_not_read")


def check_clerk(principal: Principal) -> str:
    """A registration or submission is made by an RA clerk, for the clerk's prefecture."""
    if not principal.has(Role.RA_CLERK):
        raise ForbiddenError(
            "only an RA clerk (受理/录入) registers subscribers and submits requests",
            field="principal",
            code="ra.not_a_clerk",
        )
    if principal.prefecture is None:
        raise ForbiddenError(
            "RA staff act for one prefecture; this account has none", field="prefecture", code="ra.no_prefecture"
        )
    return principal.prefecture


def clean_text(value: str | None, field: str, *, required: bool, max_length: int = MAX_NAME) -> str | None:
    text = (value or "").strip()
    if not text:
        if required:
            raise InvalidError("is required", field=field, code="ra.required")
        return None
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            raise InvalidError(
                f"contains the control or unassigned character U+{ord(ch):04X}",
                field=field,
                code="ra.control_character",
                params={"char": f"U+{ord(ch):04X}"},
            )
    if len(text) > max_length:
        raise InvalidError(
            f"is {len(text)} characters; at most {max_length} are allowed",
            field=field,
            code="ra.too_long",
            params={"count": len(text), "max": max_length},
        )
    return text


def _phone(value: str | None) -> str | None:
    text = (value or "").strip()
    if not text:
        return None
    digits = text.replace("-", "").replace(" ", "")
    if digits.startswith("+"):
        digits = digits[1:]
    if not digits.isascii() or not digits.isdigit() or not 5 <= len(digits) <= 20 or len(text) > 32:
        raise InvalidError(
            "must be a telephone number: 5 to 20 digits, with optional +, - and spaces", field="phone", code="ra.phone"
        )
    return text


class SubscriberService:
    def __init__(
        self,
        keystores: Mapping[str, object],
        clock: Clock,
        store_name: str = DATA_KEY_STORE,
        *,
        keys: KeyService | None = None,
    ) -> None:
        self._keystores = keystores
        self._keys = keys  # the key inventory: every data key gets a record (purpose subscriber_data)
        self._clock = clock
        self._store_name = store_name
        self._hmac_keys: dict[tuple[int, str], bytes] = {}
        self._lock = threading.Lock()

    # ----- the data key ----------------------------------------------------

    def _store(self, name: str) -> SecretKeyStore:
        store = self._keystores[name]
        if not isinstance(store, SecretKeyStore):
            raise KeyStoreError(f"key store {name!r} cannot hold secret keys", field="key_store")
        return store

    def ensure_data_key(self, session: Session, principal: Principal) -> tuple[SubscriberDataKey, bool]:
        """The active subscriber data key, made now if there is none (AES-256 in the key
        store; a new random HMAC key sealed under it). Returns ``(key, created)``."""
        if principal.kind is not PrincipalKind.SYSTEM and not principal.has(Role.SECURITY_ADMIN):
            raise ForbiddenError("only a security administrator may set up the subscriber data key")
        existing = session.scalars(select(SubscriberDataKey).where(SubscriberDataKey.active.is_(True))).first()
        if existing is not None:
            return existing, False
        now = self._clock.now()
        store = self._store(self._store_name)
        handle = store.generate_secret(f"ra-subscriber-data-{now:%Y%m%d%H%M%S}-{secrets.token_hex(3)}")
        hmac_key = secrets.token_bytes(32)
        key = SubscriberDataKey(
            key_store=self._store_name,
            key_handle=handle,
            wrapped_hmac_key=store.encrypt(handle, hmac_key, _HMAC_AAD),
            active=True,
            created_at=now,
            created_by=principal.audit_name,
        )
        session.add(key)
        session.flush()
        if self._keys is not None:
            self._keys.register(
                session,
                principal,
                purpose=KeyPurpose.SUBSCRIBER_DATA,
                store=self._store_name,
                handle=handle,
                algorithm=DATA_KEY_ALGORITHM,
                description=DATA_KEY_DESCRIPTION,
            )
        audit.record(
            session,
            principal,
            RaEvent.DATA_KEY_CREATE.value,
            object_type="subscriber_data_key",
            object_id=str(key.id),
            details={"key_store": self._store_name, "key_handle": handle, "algorithm": "aes-256-gcm, hmac-sha256"},
            clock=self._clock,
        )
        return key, True

    def record_data_keys(self, session: Session, principal: Principal) -> int:
        """Give every subscriber data key without a key record one (keys made before data keys
        were recorded); idempotent, audited. Returns how many were recorded."""
        if principal.kind is not PrincipalKind.SYSTEM and not principal.has(Role.SECURITY_ADMIN):
            raise ForbiddenError("only a security administrator may record the subscriber data keys")
        if self._keys is None:
            return 0
        return self._keys.register_missing(
            session,
            principal,
            session.scalars(select(SubscriberDataKey).order_by(SubscriberDataKey.id)),
            purpose=KeyPurpose.SUBSCRIBER_DATA,
            algorithm=DATA_KEY_ALGORITHM,
            description=DATA_KEY_DESCRIPTION,
        )

    def _active_key(self, session: Session) -> SubscriberDataKey:
        key = session.scalars(
            select(SubscriberDataKey).where(SubscriberDataKey.active.is_(True)).order_by(SubscriberDataKey.id.desc())
        ).first()
        if key is None:
            raise UnavailableError(
                "officials cannot be registered yet: the subscriber data key has not been made "
                "(a security administrator sets it up)",
                field="data_key",
                code="ra.no_data_key",
            )
        return key

    def active_data_key(self, session: Session) -> SubscriberDataKey:
        """The data key new registrations (and sealed RA working data) use."""
        return self._active_key(session)

    def seal(self, key: SubscriberDataKey, data: bytes, aad: bytes) -> bytes:
        """RA working data that holds personal data (an import's rows, a PKCS#12 waiting for
        hand-over) sealed under the data key (AES-GCM in the key store), bound to ``aad``."""
        return self._store(key.key_store).encrypt(key.key_handle, data, aad)

    def unseal(self, key: SubscriberDataKey, sealed: bytes, aad: bytes) -> bytes:
        return self._store(key.key_store).decrypt(key.key_handle, sealed, aad)

    def _hmac_key(self, key: SubscriberDataKey) -> bytes:
        cache_key = (key.id, f"{key.key_store}/{key.key_handle}")
        with self._lock:
            found = self._hmac_keys.get(cache_key)
        if found is None:
            found = self._store(key.key_store).decrypt(key.key_handle, key.wrapped_hmac_key, _HMAC_AAD)
            with self._lock:
                self._hmac_keys[cache_key] = found
        return found

    def _lookup_hashes(self, session: Session, number: str) -> list[str]:
        """The number's keyed hash under every data key there is (a rotated key's rows stay findable)."""
        keys = session.scalars(select(SubscriberDataKey).order_by(SubscriberDataKey.id.desc())).all()
        return [self._hash(key, number) for key in keys]

    def _hash(self, key: SubscriberDataKey, number: str) -> str:
        return hmac.new(self._hmac_key(key), number.encode("ascii"), hashlib.sha256).hexdigest()

    @staticmethod
    def _aad(id_hash: str, key: SubscriberDataKey) -> bytes:
        return canonical_json(
            {"purpose": _AAD_PURPOSE, "id_number_hash": id_hash, "data_key": f"{key.key_store}/{key.key_handle}"}
        ).encode()

    # ----- officials -------------------------------------------------------

    def register_official(self, session: Session, principal: Principal, data: OfficialInput) -> Official:
        """Register an official in the clerk's prefecture. A number registered anywhere in
        the network is refused, naming the prefecture that has it."""
        prefecture = check_clerk(principal)
        name = clean_text(data.name, "name", required=True)
        department = clean_text(data.department, "department", required=True)
        title = clean_text(data.title, "title", required=False)
        phone = _phone(data.phone)
        email = check_address(data.email.strip(), "email") if data.email and data.email.strip() else None
        number = parse_id_number(data.id_number, self._clock.now().date())
        assert name is not None and department is not None
        check_subject_value("CN", name, "name")  # they go into certificates as CN and OU
        check_subject_value("OU", department, "department")
        key = self._active_key(session)
        self._refuse_duplicate(session, self._lookup_hashes(session, number.value))
        id_hash = self._hash(key, number.value)
        official = Official(
            prefecture_code=prefecture,
            name=name,
            id_number_hash=id_hash,
            id_number_encrypted=self._store(key.key_store).encrypt(
                key.key_handle, number.value.encode("ascii"), self._aad(id_hash, key)
            ),
            id_number_masked=number.masked,
            data_key_id=key.id,
            gender=number.gender.value,
            department=department,
            title=title,
            phone=phone,
            email=email,
            created_by=principal.audit_name,
            created_at=self._clock.now(),
        )
        try:
            with session.begin_nested():
                session.add(official)
                session.flush()
        except IntegrityError:
            # registered at the same moment by someone else
            self._refuse_duplicate(session, [id_hash])
            raise
        audit.record(
            session,
            principal,
            RaEvent.OFFICIAL_CREATE.value,
            object_type="official",
            object_id=str(official.id),
            details={
                "prefecture_code": prefecture,
                "name": name,
                "id_number": number.masked,
                "gender": official.gender,
                "department": department,
                "title": title,
            },
            clock=self._clock,
        )
        return official

    def _refuse_duplicate(self, session: Session, hashes: list[str]) -> None:
        existing = session.execute(
            select(Official.id, Prefecture.name)
            .join(Prefecture, Prefecture.code == Official.prefecture_code)
            .where(Official.id_number_hash.in_(hashes))
        ).first()
        if existing is not None:
            raise ConflictError(
                f"this ID number is already registered, in {existing.name}; "
                "an official is registered once in the network",
                field="id_number",
                code="ra.duplicate_id_number",
                params={"prefecture": existing.name},
            )

    def get_official(self, session: Session, principal: Principal, official_id: int) -> Official:
        scope = check_reader(principal)
        official = session.get(Official, official_id)
        if official is None or (scope is not None and official.prefecture_code != scope):
            raise NotFoundError(
                f"no official with id {official_id}" + (f" in prefecture {scope}" if scope else ""),
                field="official_id",
                code="ra.official_not_found",
                params={"id": official_id},
            )
        return official

    def list_officials(
        self,
        session: Session,
        principal: Principal,
        *,
        limit: int = 50,
        offset: int = 0,
        search: str | None = None,
    ) -> list[Official]:
        """Newest first. ``search``: an 18-character ID number is looked up exactly by its
        keyed hash; any other text is a part of the name or the department (a bound
        parameter with LIKE's wildcards escaped: it is only ever text to look for)."""
        scope = check_reader(principal)
        if not 1 <= limit <= 1000:
            raise InvalidError("must be between 1 and 1000", field="limit", code="ra.limit")
        query = select(Official).order_by(Official.id.desc()).limit(limit).offset(max(offset, 0))
        if scope is not None:
            query = query.where(Official.prefecture_code == scope)
        text = (search or "").strip()
        if len(text) > MAX_NAME:
            raise InvalidError(
                f"is {len(text)} characters; at most {MAX_NAME} are allowed",
                field="q",
                code="ra.too_long",
                params={"count": len(text), "max": MAX_NAME},
            )
        if text:
            if _ID_SHAPE.fullmatch(text):
                number = parse_id_number(text, self._clock.now().date(), field="q")
                query = query.where(Official.id_number_hash.in_(self._lookup_hashes(session, number.value)))
            else:
                query = query.where(
                    or_(
                        Official.name.contains(text, autoescape=True),
                        Official.department.contains(text, autoescape=True),
                    )
                )
        return list(session.scalars(query))

    def find_by_id_number(self, session: Session, principal: Principal, id_number: str) -> Official:
        """The official with this number, within what the principal may see."""
        number = parse_id_number(id_number, self._clock.now().date())
        scope = check_reader(principal)
        official = session.scalars(
            select(Official).where(Official.id_number_hash.in_(self._lookup_hashes(session, number.value)))
        ).first()
        if official is None or (scope is not None and official.prefecture_code != scope):
            raise NotFoundError("no official with this ID number", field="id_number", code="ra.official_not_found")
        return official

    def reveal_id_number(self, session: Session, principal: Principal, official_id: int) -> str:
        """The clear ID number, for an RA officer of the official's prefecture vetting a
        registration or request. Audited (``ra:official:reveal``) in the caller's transaction."""
        if not principal.has(Role.RA_OFFICER) or principal.prefecture is None:
            raise ForbiddenError(
                "only an RA officer of the official's prefecture may see the full ID number",
                field="principal",
                code="ra.may_not_reveal",
            )
        official = self.get_official(session, principal, official_id)
        key = official.data_key
        clear = (
            self._store(key.key_store)
            .decrypt(key.key_handle, official.id_number_encrypted, self._aad(official.id_number_hash, key))
            .decode("ascii")
        )
        audit.record(
            session,
            principal,
            RaEvent.OFFICIAL_REVEAL.value,
            object_type="official",
            object_id=str(official.id),
            details={"prefecture_code": official.prefecture_code, "id_number": official.id_number_masked},
            clock=self._clock,
        )
        return clear

    # ----- services --------------------------------------------------------

    def register_service(self, session: Session, principal: Principal, data: ServiceInput) -> ServiceSubscriber:
        """Register a service or application of the clerk's prefecture, with its host names
        and IP addresses (at least one of them) and a responsible official of the same prefecture."""
        prefecture = check_clerk(principal)
        name = clean_text(data.name, "name", required=True)
        department = clean_text(data.department, "department", required=True)
        assert name is not None and department is not None
        check_subject_value("CN", name, "name")
        check_subject_value("OU", department, "department")
        hosts = _host_names(data.host_names)
        ips = _ip_addresses(data.ip_addresses)
        if not hosts and not ips:
            raise InvalidError("give at least one host name or IP address", field="host_names", code="ra.no_host_names")
        responsible = session.get(Official, data.responsible_official_id)
        if responsible is None or responsible.prefecture_code != prefecture:
            raise NotFoundError(
                f"no official with id {data.responsible_official_id} in prefecture {prefecture}",
                field="responsible_official_id",
                code="ra.official_not_found",
                params={"id": data.responsible_official_id},
            )
        taken = session.scalar(
            select(ServiceSubscriber.id).where(
                ServiceSubscriber.prefecture_code == prefecture, ServiceSubscriber.name == name
            )
        )
        if taken is not None:
            raise ConflictError(
                f"a service named {name!r} is already registered in this prefecture (id {taken})",
                field="name",
                code="ra.duplicate_service",
                params={"name": name, "id": taken},
            )
        service = ServiceSubscriber(
            prefecture_code=prefecture,
            name=name,
            department=department,
            host_names=" ".join(hosts),
            ip_addresses=" ".join(ips),
            responsible_official_id=responsible.id,
            created_by=principal.audit_name,
            created_at=self._clock.now(),
        )
        session.add(service)
        session.flush()
        audit.record(
            session,
            principal,
            RaEvent.SERVICE_CREATE.value,
            object_type="service",
            object_id=str(service.id),
            details={
                "prefecture_code": prefecture,
                "name": name,
                "department": department,
                "host_names": hosts,
                "ip_addresses": ips,
                "responsible_official_id": responsible.id,
            },
            clock=self._clock,
        )
        return service

    def get_service(self, session: Session, principal: Principal, service_id: int) -> ServiceSubscriber:
        scope = check_reader(principal)
        service = session.get(ServiceSubscriber, service_id)
        if service is None or (scope is not None and service.prefecture_code != scope):
            raise NotFoundError(
                f"no service with id {service_id}" + (f" in prefecture {scope}" if scope else ""),
                field="service_id",
                code="ra.service_not_found",
                params={"id": service_id},
            )
        return service

    def list_services(
        self, session: Session, principal: Principal, *, limit: int = 50, offset: int = 0
    ) -> list[ServiceSubscriber]:
        scope = check_reader(principal)
        if not 1 <= limit <= 1000:
            raise InvalidError("must be between 1 and 1000", field="limit", code="ra.limit")
        query = select(ServiceSubscriber).order_by(ServiceSubscriber.id.desc()).limit(limit).offset(max(offset, 0))
        if scope is not None:
            query = query.where(ServiceSubscriber.prefecture_code == scope)
        return list(session.scalars(query))


def _host_names(values: Sequence[str]) -> list[str]:
    out: list[str] = []
    if len(values) > MAX_HOSTS:
        raise InvalidError(
            f"at most {MAX_HOSTS} host names", field="host_names", code="ra.too_many_names", params={"max": MAX_HOSTS}
        )
    for i, value in enumerate(values):
        name = value.strip().lower().rstrip(".")
        check_dns_name(name, f"host_names[{i}]")
        if name in out:
            raise InvalidError(
                f"{name} is given twice", field=f"host_names[{i}]", code="ra.given_twice", params={"value": name}
            )
        out.append(name)
    return out


def _ip_addresses(values: Sequence[str]) -> list[str]:
    out: list[str] = []
    if len(values) > MAX_HOSTS:
        raise InvalidError(
            f"at most {MAX_HOSTS} IP addresses",
            field="ip_addresses",
            code="ra.too_many_names",
            params={"max": MAX_HOSTS},
        )
    for i, value in enumerate(values):
        try:
            address = ipaddress.ip_address(value.strip())
        except ValueError:
            raise InvalidError(
                f"{value!r} is not an IPv4 or IPv6 address",
                field=f"ip_addresses[{i}]",
                code="ra.bad_ip_address",
                params={"value": value},
            ) from None
        text = str(address)
        if text in out:
            raise InvalidError(
                f"{text} is given twice", field=f"ip_addresses[{i}]", code="ra.given_twice", params={"value": text}
            )
        out.append(text)
    return out

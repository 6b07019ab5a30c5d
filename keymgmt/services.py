"""The key service: a record for every key the system holds, its life cycle (pre-active →
active → retired → destroyed) and scheduled rotation with an overlap window.

Recording is done by the services that make keys (CA set-up, OCSP responders, signed
statements), in their own transaction and under their own permission checks: they call
:meth:`KeyService.register` (or :meth:`KeyService.generate`) right after the key store
made the key. Managing keys — activate, retire, destroy, rotate now — is for a security
administrator (and the system); a security auditor may read the records.

Rotation (purposes in :data:`keymgmt.policy.ROTATING`): a key is used for
``lifetime_days`` from its activation (its ``use_until``). When ``lifetime_days -
overlap_days`` have passed, a new key becomes the *current* one (the newest active key
of the purpose signs); the old key stays active, for verification, until its
``use_until``, and is then retired. Purposes whose new key needs more than a key (an
OCSP responder needs its certificate) register a *rotator* that makes it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

from cryptography.hazmat.primitives import serialization
from sqlalchemy import Connection, Table, select, update
from sqlalchemy.orm import Session

from govpki import audit
from govpki.clock import Clock
from govpki.config import KEY_ALGORITHMS, KeyAlgorithm
from govpki.errors import ConflictError, ForbiddenError, InvalidError, NotFoundError
from govpki.principal import Principal, PrincipalKind, Role
from keymgmt.events import KeyEvent
from keymgmt.interfaces import KeyNotFoundError, KeyStore, PublicKey
from keymgmt.models import KeyRecord, KeyState
from keymgmt.policy import ROTATING, KeyPolicy, KeyPurpose, purpose_of

MANAGE_ROLES = frozenset({Role.SECURITY_ADMIN})
READ_ROLES = frozenset({Role.SECURITY_ADMIN, Role.SECURITY_AUDITOR})
STATEMENT_STORE = "online"  # where keys made by rotation live (the root store stays offline)

_T = cast(Table, KeyRecord.__table__)

# A rotator makes the new key of a purpose (and whatever goes with it) in the caller's
# session and returns lines saying what it did. ``checkpoint`` (the caller's commit, or
# None) lets it split work that needs a clean session (issuance) into steps.
Rotator = Callable[[Session, Principal, Callable[[], None] | None], list[str]]


def spki_sha256(public_key: PublicKey) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _label_prefix(purpose: KeyPurpose) -> str:
    return purpose.value.replace("_", "-")


class StoredKey(Protocol):
    """A row of a key made by a service (a data, TOTP or KMC storage key): where it lives."""

    @property
    def key_store(self) -> str: ...

    @property
    def key_handle(self) -> str: ...

    @property
    def created_at(self) -> _dt.datetime: ...


@dataclass(frozen=True)
class RotationReport:
    rotated: list[KeyRecord]
    retired: list[KeyRecord]
    lines: list[str]


class KeyService:
    def __init__(self, keystores: Mapping[str, KeyStore], clock: Clock, policy: KeyPolicy) -> None:
        self._keystores = keystores
        self._clock = clock
        self.policy = policy
        self._rotators: dict[KeyPurpose, Rotator] = {}

    # ----- permissions -----------------------------------------------------

    @staticmethod
    def can_manage(principal: Principal) -> bool:
        return principal.kind is PrincipalKind.SYSTEM or bool(principal.roles & MANAGE_ROLES)

    @staticmethod
    def can_read(principal: Principal) -> bool:
        return principal.kind is PrincipalKind.SYSTEM or bool(principal.roles & READ_ROLES)

    def _manage(self, principal: Principal, what: str) -> None:
        if not self.can_manage(principal):
            raise ForbiddenError(f"only a security administrator may {what}", code="keymgmt.forbidden")

    def _read(self, principal: Principal) -> None:
        if not self.can_read(principal):
            raise ForbiddenError(
                "only a security administrator or a security auditor may read key records", code="keymgmt.forbidden"
            )

    # ----- policy ----------------------------------------------------------

    def check_algorithm(self, purpose: KeyPurpose, algorithm: str, field: str = "algorithm") -> None:
        """InvalidError (``keymgmt.algorithm_not_allowed``) if the policy forbids it."""
        self.policy.check_algorithm(purpose, algorithm, field)

    def planned_end(self, record: KeyRecord) -> _dt.datetime:
        """The key's planned end of use: ``use_until``, or activation (else creation) plus the
        policy's lifetime for records that have none (backfilled ones)."""
        if record.use_until is not None:
            return record.use_until
        start = record.activated_at or record.created_at
        return start + self.policy.get(record.purpose).lifetime

    # ----- recording -------------------------------------------------------

    def generate(
        self,
        session: Session,
        principal: Principal,
        purpose: KeyPurpose,
        *,
        store: str = STATEMENT_STORE,
        label: str | None = None,
        algorithm: str | None = None,
        activate: bool = True,
        description: str = "",
    ) -> KeyRecord:
        """Check the algorithm against the policy, make the key in ``store`` and register it."""
        policy = self.policy.get(purpose)
        chosen = algorithm or policy.default_algorithm
        self.check_algorithm(purpose, chosen)
        key_algorithm = _key_algorithm(chosen)
        now = self._clock.now()
        key_store = self._keystores[store]
        label = label or f"{_label_prefix(purpose)}-{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
        handle = key_store.generate(label, key_algorithm)
        return self.register(
            session,
            principal,
            purpose=purpose,
            store=store,
            handle=handle,
            algorithm=chosen,
            public_key=key_store.public_key(handle),
            state=KeyState.ACTIVE if activate else KeyState.PRE_ACTIVE,
            description=description,
        )

    def register(
        self,
        session: Session,
        principal: Principal,
        *,
        purpose: KeyPurpose,
        store: str,
        handle: str,
        algorithm: str,
        public_key: PublicKey | None = None,
        state: KeyState = KeyState.ACTIVE,
        description: str = "",
        use_until: _dt.datetime | None = None,
    ) -> KeyRecord:
        """Record a key just made in ``store`` (in the caller's transaction, audited). The
        caller made the key and checked its own permission. An active key's planned end of
        use is ``use_until`` or now plus the policy's lifetime."""
        self.check_algorithm(purpose, algorithm)
        if state not in (KeyState.ACTIVE, KeyState.PRE_ACTIVE):
            raise InvalidError("a new key is pre-active or active", field="state")
        now = self._clock.now()
        if state is KeyState.ACTIVE and use_until is None:
            use_until = now + self.policy.get(purpose).lifetime
        record = KeyRecord(
            purpose=purpose.value,
            algorithm=algorithm,
            store=store,
            handle=handle,
            spki_sha256=spki_sha256(public_key) if public_key is not None else None,
            description=description[:200],
            state=state.value,
            created_at=now,
            activated_at=now if state is KeyState.ACTIVE else None,
            use_until=use_until,
            usage_count=0,
        )
        session.add(record)
        session.flush()
        self._audit(session, principal, KeyEvent.REGISTER, record)
        return record

    def register_missing(
        self,
        session: Session,
        principal: Principal,
        keys: Iterable[StoredKey],
        *,
        purpose: KeyPurpose,
        algorithm: str,
        description: str,
    ) -> int:
        """Record those of ``keys`` (existing keys: rows naming their store, handle and
        making time) that have no record yet — keys made before their purpose was recorded —
        as active, each audited like :meth:`register`. For start-up (``govpki init`` /
        ``serve``): run it as often as you like. Returns how many were recorded."""
        self._manage(principal, "register keys")
        made = 0
        for key in keys:
            if self.by_handle(session, key.key_store, key.key_handle) is not None:
                continue
            self.register(
                session,
                principal,
                purpose=purpose,
                store=key.key_store,
                handle=key.key_handle,
                algorithm=algorithm,
                description=f"{description}; made {key.created_at:%Y-%m-%d}",
            )
            made += 1
        return made

    def count_use(self, target: Session | Connection, store: str, handle: str, n: int = 1) -> None:
        """Add ``n`` signatures to the key's counter (one UPDATE; a key without a record is
        ignored). Call it in the transaction that stores what was signed."""
        if n <= 0:
            return
        conn = target.connection() if isinstance(target, Session) else target
        conn.execute(
            update(_T)
            .where(_T.c.store == store, _T.c.handle == handle)
            .values(usage_count=_T.c.usage_count + n)
            .execution_options(synchronize_session=False)
        )

    # ----- reading ---------------------------------------------------------

    def find(self, session: Session, principal: Principal, record_id: int) -> KeyRecord:
        self._read(principal)
        return self._get(session, record_id)

    def _get(self, session: Session, record_id: int) -> KeyRecord:
        record = session.get(KeyRecord, record_id, populate_existing=True)
        if record is None:
            raise NotFoundError(f"no key record with id {record_id}", field="id", code="keymgmt.record_not_found")
        return record

    def by_handle(self, session: Session, store: str, handle: str) -> KeyRecord | None:
        return session.scalars(select(KeyRecord).where(KeyRecord.store == store, KeyRecord.handle == handle)).first()

    def list_keys(
        self, session: Session, principal: Principal, *, purpose: str | None = None, state: str | None = None
    ) -> list[KeyRecord]:
        self._read(principal)
        query = select(KeyRecord).order_by(KeyRecord.id)
        if purpose is not None:
            query = query.where(KeyRecord.purpose == purpose_of(purpose).value)
        if state is not None:
            if state not in {s.value for s in KeyState}:
                raise InvalidError(
                    f"unknown key state {state!r}; one of {', '.join(s.value for s in KeyState)}", field="state"
                )
            query = query.where(KeyRecord.state == state)
        return list(session.scalars(query))

    def current(self, session: Session, purpose: KeyPurpose) -> KeyRecord | None:
        """The key that signs for ``purpose`` now: the newest active one whose planned end
        of use has not passed."""
        now = self._clock.now()
        for record in session.scalars(
            select(KeyRecord)
            .where(KeyRecord.purpose == purpose.value, KeyRecord.state == KeyState.ACTIVE.value)
            .order_by(KeyRecord.activated_at.desc(), KeyRecord.id.desc())
        ):
            if self.planned_end(record) > now:
                return record
        return None

    def signing_key(self, session: Session, principal: Principal, purpose: KeyPurpose) -> tuple[KeyRecord, bool]:
        """The current key of ``purpose`` that the key store still holds, or a new one made
        now in the online store (recorded and audited); and whether it is new. Callers
        check their own permission for what they sign."""
        record = self.current(session, purpose)
        if record is not None and record.store in self._keystores and self._keystores[record.store].has(record.handle):
            return record, False
        return self.generate(session, principal, purpose), True

    def is_known(self, session: Session, purpose: KeyPurpose, store: str, handle: str, spki: str) -> bool:
        """Whether ``store``/``handle`` was one of our keys of ``purpose`` with this public
        key (in any state: a destroyed key's old signatures still verify by its record)."""
        record = self.by_handle(session, store, handle)
        return record is not None and record.purpose == purpose.value and record.spki_sha256 == spki

    # ----- life cycle ------------------------------------------------------

    def activate(self, session: Session, principal: Principal, record_id: int) -> KeyRecord:
        self._manage(principal, "activate keys")
        record = self._get(session, record_id)
        if record.state != KeyState.PRE_ACTIVE.value:
            raise ConflictError(
                f"key {record.id} is {record.state}; only a pre-active key can be activated",
                field="id",
                code="keymgmt.not_pre_active",
            )
        now = self._clock.now()
        before = record.state
        record.state = KeyState.ACTIVE.value
        record.activated_at = now
        record.use_until = record.use_until or now + self.policy.get(record.purpose).lifetime
        session.flush()
        self._audit(session, principal, KeyEvent.ACTIVATE, record, before=before)
        return record

    def retire(self, session: Session, principal: Principal, record_id: int, *, reason: str = "") -> KeyRecord:
        """Stop using a key (it signs nothing more; its old signatures stay verifiable).
        For CA rollover: the caller decides when a CA key has done its last work."""
        self._manage(principal, "retire keys")
        return self._retire(session, principal, self._get(session, record_id), reason)

    def retire_used_key(self, session: Session, principal: Principal, store: str, handle: str, reason: str) -> None:
        """Retire the record of ``store``/``handle`` if it is still in use: for services that
        stop using a key of their own (a retired CA) and checked their own permission."""
        record = self.by_handle(session, store, handle)
        if record is not None and record.state in (KeyState.ACTIVE.value, KeyState.PRE_ACTIVE.value):
            self._retire(session, principal, record, reason)

    def _retire(self, session: Session, principal: Principal, record: KeyRecord, reason: str) -> KeyRecord:
        if record.state not in (KeyState.ACTIVE.value, KeyState.PRE_ACTIVE.value):
            raise ConflictError(
                f"key {record.id} is {record.state} already", field="id", code=f"keymgmt.already_{record.state}"
            )
        before = record.state
        record.state = KeyState.RETIRED.value
        record.retired_at = self._clock.now()
        session.flush()
        self._audit(session, principal, KeyEvent.RETIRE, record, before=before, reason=reason or None)
        return record

    def destroy(self, session: Session, principal: Principal, record_id: int) -> KeyRecord:
        """Destroy a retired (or never activated) key in its store — a token's objects, a
        key file — and mark the record destroyed; the record stays. An active key is
        refused: retire it first."""
        self._manage(principal, "destroy keys")
        record = self._get(session, record_id)
        if record.state == KeyState.ACTIVE.value:
            raise ConflictError(
                f"key {record.id} ({record.purpose}) is active; retire it before destroying it",
                field="id",
                code="keymgmt.key_active",
            )
        if record.state == KeyState.DESTROYED.value:
            raise ConflictError(f"key {record.id} is destroyed already", field="id", code="keymgmt.already_destroyed")
        if record.store not in self._keystores:
            raise InvalidError(f"key store {record.store!r} is not configured here", field="store")
        was_there = True
        try:
            self._keystores[record.store].destroy(record.handle)
        except KeyNotFoundError:
            was_there = False  # gone already (removed by hand): the record still says so
        before = record.state
        record.state = KeyState.DESTROYED.value
        record.destroyed_at = self._clock.now()
        session.flush()
        self._audit(session, principal, KeyEvent.DESTROY, record, before=before, in_store=was_there)
        return record

    # ----- rotation --------------------------------------------------------

    def set_rotator(self, purpose: KeyPurpose, rotator: Rotator) -> None:
        """Let another service make the new keys of ``purpose`` (an OCSP responder key
        comes with its certificate). That service then also decides when they are due."""
        self._rotators[purpose] = rotator

    def rotation_due(self, session: Session, purpose: KeyPurpose) -> bool:
        """Whether the current key of ``purpose`` has reached its planned end minus the
        overlap (False when there is no key: one is made on first use)."""
        record = self.current(session, purpose)
        if record is None:
            return False
        return self._clock.now() >= self.planned_end(record) - self.policy.get(purpose).overlap

    def rotate(
        self,
        session: Session,
        principal: Principal,
        purpose: KeyPurpose | str,
        checkpoint: Callable[[], None] | None = None,
    ) -> list[str]:
        """Make a new current key for ``purpose`` now; the previous one keeps verifying
        until its planned end of use. Returns what was done. ``checkpoint`` is passed to a
        rotator that needs to commit between steps (OCSP responders of several CAs)."""
        self._manage(principal, "rotate keys")
        chosen = purpose_of(purpose) if isinstance(purpose, str) else purpose
        if chosen not in ROTATING:
            raise InvalidError(
                f"{chosen.value} keys are not rotated on schedule; one of {', '.join(p.value for p in ROTATING)}",
                field="purpose",
                code="keymgmt.not_rotating",
            )
        return self._rotate(session, principal, chosen, checkpoint)

    def _rotate(
        self,
        session: Session,
        principal: Principal,
        purpose: KeyPurpose,
        checkpoint: Callable[[], None] | None = None,
    ) -> list[str]:
        rotator = self._rotators.get(purpose)
        if rotator is not None:
            return rotator(session, principal, checkpoint)
        previous = self.current(session, purpose)
        record = self.generate(session, principal, purpose)
        self._audit(
            session,
            principal,
            KeyEvent.ROTATE,
            record,
            replaces=previous.id if previous is not None else None,
            previous_until=audit.timestamp(self.planned_end(previous)) if previous is not None else None,
        )
        return [f"new {purpose.value} key {record.id} ({record.handle}) until {record.use_until:%Y-%m-%d}"]

    def rotate_due(self, session: Session, principal: Principal) -> RotationReport:
        """The scheduled job: a new key for every rotating purpose whose current key is due
        (purposes with a rotator are rotated by their own service), then retire every key of
        a rotating purpose whose planned end of use has passed."""
        self._manage(principal, "rotate keys")
        rotated: list[KeyRecord] = []
        lines: list[str] = []
        for purpose in ROTATING:
            if purpose in self._rotators or not self.rotation_due(session, purpose):
                continue
            lines += self._rotate(session, principal, purpose)
            made = self.current(session, purpose)
            if made is not None:
                rotated.append(made)
        retired: list[KeyRecord] = []
        now = self._clock.now()
        candidates = session.scalars(
            select(KeyRecord)
            .where(
                KeyRecord.purpose.in_([p.value for p in ROTATING]),
                KeyRecord.state == KeyState.ACTIVE.value,
            )
            .order_by(KeyRecord.id)
        ).all()
        for record in candidates:
            if self.planned_end(record) <= now:
                retired.append(self._retire(session, principal, record, "end of use (key policy)"))
                lines.append(f"retired {record.purpose} key {record.id} ({record.handle}): end of use")
        return RotationReport(rotated, retired, lines)

    # ----- audit -----------------------------------------------------------

    def _audit(
        self,
        session: Session,
        principal: Principal,
        event: KeyEvent,
        record: KeyRecord,
        before: str | None = None,
        **extra: Any,
    ) -> None:
        """``before``: the state the change left (the auditors' console shows before and after)."""
        details: dict[str, Any] = {
            "purpose": record.purpose,
            "algorithm": record.algorithm,
            "store": record.store,
            "handle": record.handle,
            "spki_sha256": record.spki_sha256,
            "state": record.state,
            "usage_count": record.usage_count,
        }
        if record.use_until is not None:
            details["use_until"] = audit.timestamp(record.use_until)
        if record.description:
            details["description"] = record.description
        details.update({k: v for k, v in extra.items() if v is not None})
        if before is not None:
            details["before"], details["after"] = {"state": before}, {"state": record.state}
        audit.record(
            session,
            principal,
            event.value,
            object_type="key",
            object_id=str(record.id),
            details=details,
            clock=self._clock,
        )


def _key_algorithm(algorithm: str) -> KeyAlgorithm:
    for known in KEY_ALGORITHMS:
        if known == algorithm:
            return known
    raise InvalidError(f"the key stores cannot make {algorithm!r} keys", field="algorithm")

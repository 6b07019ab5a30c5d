"""key records: one row for every key the system holds; backfilled for existing keys

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 10:00:00.000000
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from typing import Any

import sqlalchemy as sa
from alembic import op
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import govpki.db

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

PURPOSES = (
    "root",
    "issuing_ca",
    "ocsp_signing",
    "audit_signing",
    "tlog_signing",
    "token_signing",
    "kmc_storage",
    "escrowed_encryption",
)
STATES = ("pre_active", "active", "retired", "destroyed")
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = govpki.db.UTCDateTime(timezone=True)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "key_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("algorithm", sa.String(length=20), nullable=False),
        sa.Column("store", sa.String(length=20), nullable=False),
        sa.Column("handle", sa.String(length=200), nullable=False),
        sa.Column("spki_sha256", sa.String(length=64), nullable=True),
        sa.Column("description", sa.String(length=200), server_default="", nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.Column("activated_at", When, nullable=True),
        sa.Column("retired_at", When, nullable=True),
        sa.Column("destroyed_at", When, nullable=True),
        sa.Column("use_until", When, nullable=True),
        sa.Column("usage_count", BigId, server_default="0", nullable=False),
        sa.CheckConstraint(_in("purpose", PURPOSES), name=op.f("ck_key_records_purpose")),
        sa.CheckConstraint(_in("state", STATES), name=op.f("ck_key_records_state")),
        sa.CheckConstraint(
            "state != 'active' OR activated_at IS NOT NULL", name=op.f("ck_key_records_active_has_time")
        ),
        sa.CheckConstraint(
            "state != 'retired' OR retired_at IS NOT NULL", name=op.f("ck_key_records_retired_has_time")
        ),
        sa.CheckConstraint(
            "state != 'destroyed' OR destroyed_at IS NOT NULL", name=op.f("ck_key_records_destroyed_has_time")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_key_records")),
        sa.UniqueConstraint("store", "handle", name="uq_key_records_store_handle"),
    )
    with op.batch_alter_table("key_records", schema=None) as batch_op:
        batch_op.create_index("ix_key_records_purpose_state", ["purpose", "state"], unique=False)
        batch_op.create_index(batch_op.f("ix_key_records_spki_sha256"), ["spki_sha256"], unique=False)
    backfill()


# ----- backfill: records for the keys an instance made before this revision -----------

_records = sa.table(
    "key_records",
    sa.column("purpose", sa.String),
    sa.column("algorithm", sa.String),
    sa.column("store", sa.String),
    sa.column("handle", sa.String),
    sa.column("spki_sha256", sa.String),
    sa.column("description", sa.String),
    sa.column("state", sa.String),
    sa.column("created_at", When),
    sa.column("activated_at", When),
    sa.column("retired_at", When),
    sa.column("use_until", When),
    sa.column("usage_count", BigId),
)
_cas = sa.table(
    "certificate_authorities",
    sa.column("id", sa.Integer),
    sa.column("name", sa.String),
    sa.column("kind", sa.String),
    sa.column("key_store", sa.String),
    sa.column("key_handle", sa.String),
    sa.column("key_algorithm", sa.String),
    sa.column("cert_der", sa.LargeBinary),
    sa.column("active", sa.Boolean),
    sa.column("created_at", When),
)
_certs = sa.table("certificates", sa.column("ca_id", sa.Integer), sa.column("cert_der", sa.LargeBinary))
_crls = sa.table("crls", sa.column("ca_id", sa.Integer))
_responders = sa.table(
    "ocsp_responders",
    sa.column("id", sa.Integer),
    sa.column("ca_id", sa.Integer),
    sa.column("key_store", sa.String),
    sa.column("key_handle", sa.String),
    sa.column("cert_der", sa.LargeBinary),
    sa.column("not_after", When),
    sa.column("created_at", When),
)
_responses = sa.table("ocsp_responses", sa.column("responder_id", sa.Integer))


def _statements(name: str, time_column: str) -> Any:
    return sa.table(
        name,
        sa.column("key_store", sa.String),
        sa.column("key_handle", sa.String),
        sa.column("public_key_der", sa.LargeBinary),
        sa.column(time_column, When),
    )


def _spki(public_key: Any) -> bytes:
    der: bytes = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return der


def _algorithm(public_key: Any) -> str:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"ec-p{public_key.curve.key_size}"
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"rsa-{public_key.key_size}"
    return "unknown"


def backfill() -> None:
    conn = op.get_bind()
    now = _dt.datetime.now(_dt.UTC)
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()

    def add(row: dict[str, Any]) -> None:
        if (row["store"], row["handle"]) in seen:
            return
        seen.add((row["store"], row["handle"]))
        rows.append(row)

    issued: dict[int, int] = dict(
        conn.execute(
            sa.select(_certs.c.ca_id, sa.func.count()).where(_certs.c.cert_der.is_not(None)).group_by(_certs.c.ca_id)
        ).all()
    )
    crls: dict[int, int] = dict(conn.execute(sa.select(_crls.c.ca_id, sa.func.count()).group_by(_crls.c.ca_id)).all())
    for ca in conn.execute(sa.select(_cas).order_by(_cas.c.id)):
        public_key = x509.load_der_x509_certificate(ca.cert_der).public_key()
        root = ca.kind == "root"
        add(
            {
                "purpose": "root" if root else "issuing_ca",
                "algorithm": ca.key_algorithm,
                "store": ca.key_store,
                "handle": ca.key_handle,
                "spki_sha256": hashlib.sha256(_spki(public_key)).hexdigest(),
                "description": f"{ca.kind} CA {ca.id} {ca.name}"[:200],
                "state": "active" if ca.active else "retired",
                "created_at": ca.created_at,
                "activated_at": ca.created_at,
                "retired_at": None if ca.active else now,
                "use_until": None,
                "usage_count": issued.get(ca.id, 0) + crls.get(ca.id, 0) + (1 if root else 0),
            }
        )

    signed: dict[int, int] = dict(
        conn.execute(sa.select(_responses.c.responder_id, sa.func.count()).group_by(_responses.c.responder_id)).all()
    )
    for responder in conn.execute(sa.select(_responders).order_by(_responders.c.id)):
        public_key = x509.load_der_x509_certificate(responder.cert_der).public_key()
        expired = responder.not_after <= now
        add(
            {
                "purpose": "ocsp_signing",
                "algorithm": _algorithm(public_key),
                "store": responder.key_store,
                "handle": responder.key_handle,
                "spki_sha256": hashlib.sha256(_spki(public_key)).hexdigest(),
                "description": f"OCSP responder {responder.id} of CA {responder.ca_id}",
                "state": "retired" if expired else "active",
                "created_at": responder.created_at,
                "activated_at": responder.created_at,
                "retired_at": now if expired else None,
                "use_until": responder.not_after,
                "usage_count": signed.get(responder.id, 0),
            }
        )

    for purpose, table_name, time_column in (
        ("audit_signing", "audit_checkpoints", "created_at"),
        ("tlog_signing", "tlog_tree_heads", "timestamp"),
    ):
        t = _statements(table_name, time_column)
        at = t.c[time_column]
        keys = conn.execute(
            sa.select(t.c.key_store, t.c.key_handle, sa.func.min(at), sa.func.count())
            .group_by(t.c.key_store, t.c.key_handle)
            .order_by(sa.func.min(at))
        ).all()
        for store, handle, first, count in keys:
            public_der = conn.execute(
                sa.select(t.c.public_key_der).where(t.c.key_store == store, t.c.key_handle == handle).limit(1)
            ).scalar_one()
            statement_key: Any = serialization.load_der_public_key(public_der)
            add(
                {
                    "purpose": purpose,
                    "algorithm": _algorithm(statement_key),
                    "store": store,
                    "handle": handle,
                    "spki_sha256": hashlib.sha256(public_der).hexdigest(),
                    "description": "",
                    "state": "active",  # the job retires it at its planned end (key policy)
                    "created_at": first,
                    "activated_at": first,
                    "retired_at": None,
                    "use_until": None,
                    "usage_count": count,
                }
            )
    if rows:
        conn.execute(_records.insert(), rows)


def downgrade() -> None:
    with op.batch_alter_table("key_records", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_key_records_spki_sha256"))
        batch_op.drop_index("ix_key_records_purpose_state")
    op.drop_table("key_records")

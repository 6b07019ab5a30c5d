"""RA refusals kept by code: the stable error code and its values beside the English text,
so the portal shows a failed request, a stopped import and each rejected import row in the
reader's language (``ra_requests.failure_*``, ``ra_request_events.code/params``,
``ra_import_jobs.failure_*``, ``ra_import_rows.code/params``; rows written before keep
their English text only)

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-22 23:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

_COLUMNS = (
    ("ra_requests", "failure_code", "failure_params"),
    ("ra_request_events", "code", "params"),
    ("ra_import_jobs", "failure_code", "failure_params"),
    ("ra_import_rows", "code", "params"),
)


def upgrade() -> None:
    for table, code, params in _COLUMNS:
        op.add_column(table, sa.Column(code, sa.String(length=64), nullable=True))
        op.add_column(table, sa.Column(params, sa.JSON(), nullable=True))


def downgrade() -> None:
    for table, code, params in reversed(_COLUMNS):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column(params)
            batch_op.drop_column(code)

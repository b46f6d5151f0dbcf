"""The Telegram bot's delivery table, which the bot used to create itself outside the migrations.

A database the bot has already run on has the table (same columns and index, made by the bot's own
``CREATE TABLE`` on start-up) with rows that still matter: results not yet sent. That table is adopted
as it is; every other database gets it created.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLE = "telegram_deliveries"
INDEX = "ix_telegram_deliveries_pending"


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if inspector.has_table(TABLE):
        # Made by the bot before this migration existed: keep it and its rows, add what may be missing.
        if INDEX not in {index["name"] for index in inspector.get_indexes(TABLE)}:
            op.create_index(INDEX, TABLE, ["delivered_at", "created_at"])
        return
    op.create_table(
        TABLE,
        sa.Column("task_id", sa.String(128), primary_key=True),
        sa.Column("chat_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("delivered_at", sa.DateTime(), nullable=True),
    )
    op.create_index(INDEX, TABLE, ["delivered_at", "created_at"])


def downgrade() -> None:
    op.drop_index(INDEX, table_name=TABLE)
    op.drop_table(TABLE)

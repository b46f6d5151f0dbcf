"""Alembic environment: runs on the connection ``loramill.adapters.store.migrate.upgrade`` passes in,
or on ``sqlalchemy.url`` when the alembic command line is used by a developer."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from loramill.adapters.store.database import make_engine
from loramill.adapters.store.models import Base

config = context.config
target_metadata = Base.metadata


def run(connection: Connection) -> None:
    # render_as_batch: SQLite cannot ALTER most things; batch mode rebuilds the table instead.
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite",
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
elif context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as conn:
        run(conn)
        conn.commit()
    engine.dispose()

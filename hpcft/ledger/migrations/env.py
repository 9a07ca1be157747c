"""Alembic environment of the hpcft ledger.

hpcft runs it itself (hpcft.ledger.migrations.upgrade) with the ledger's connection in config.attributes["connection"],
inside a transaction it owns (alembic then adds none). Run from the alembic CLI it connects to
`sqlalchemy.url` from the ini file, else HPCFT_DB_URL / the default SQLite ledger.
"""

from alembic import context
from sqlalchemy import create_engine
from sqlmodel import SQLModel

from hpcft import paths
from hpcft.ledger import store as ledger
from hpcft.ledger.migrations import include_object

config = context.config
target_metadata = SQLModel.metadata  # the models (hpcft.ledger.store), for --autogenerate


def _url() -> str:
    return ledger.engine_url(config.get_main_option("sqlalchemy.url") or paths.db_url())


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, include_object=include_object,
                      render_as_batch=connection.dialect.name == "sqlite")  # SQLite ALTERs as table copies
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif config.attributes.get("connection") is not None:
    _run(config.attributes["connection"])
else:
    engine = create_engine(_url())
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()

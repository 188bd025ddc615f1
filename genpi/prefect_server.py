"""`prefect server start` with SQLite write transactions that wait their turn instead of failing.

Prefect opens its SQLite transactions DEFERRED: a transaction reads, then writes. In WAL mode, when another
connection committed in between, SQLite refuses the upgrade at once with "database is locked" (the busy timeout
does not apply to it), and the API answers 503. A burst of REST triggers is exactly that case: of 20
simultaneous ``create_flow_run`` calls on 2 cores, 18 got a 503, and with jittered client retries some still
failed after 9 attempts. Begun IMMEDIATE, a write transaction takes the write lock first and waits (the busy
timeout) while another holds it, so concurrent writes queue instead of failing. Readers outside transactions
are unaffected.

This patches one method of Prefect's SQLite configuration and changes nothing else; with PostgreSQL
(``PREFECT_API_DATABASE_CONNECTION_URL``), which heavy use wants anyway, it is a no-op. Used by
`genpi server up`; run as ``python -m genpi.prefect_server start --host H --port P``.
"""

from __future__ import annotations

import sys
from contextlib import asynccontextmanager


def immediate_sqlite_transactions() -> None:
    from prefect.server.database.configurations import AioSqliteConfiguration

    original = AioSqliteConfiguration.begin_transaction
    if getattr(original, "_genpi_immediate", False):
        return

    @asynccontextmanager
    async def begin_transaction(self, session, with_for_update: bool = False):
        async with original(self, session, with_for_update=True) as transaction:
            yield transaction

    begin_transaction._genpi_immediate = True  # type: ignore[attr-defined]
    AioSqliteConfiguration.begin_transaction = begin_transaction  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    immediate_sqlite_transactions()
    from prefect.cli import app

    sys.argv = ["prefect", "server", *(sys.argv[1:] if argv is None else argv)]  # Prefect's CLI reads sys.argv
    app()


if __name__ == "__main__":
    main()

"""``msgtrace db``: the ClickHouse store's schema."""
from __future__ import annotations

import click

from tracer.cli.util import handle_errors, out, store_option


@click.group()
def db() -> None:
    """Manage the ClickHouse store (schema)."""


@db.command("init")
@store_option
@handle_errors
def db_init(store_url: str | None) -> None:
    """Create the database and tables (idempotent)."""
    from tracer.store import Store

    with Store(store_url) as store:
        store.init_schema()
        version = store.server_version()
        out.print(f"schema ready in {store.url.redacted()} (ClickHouse {version})")

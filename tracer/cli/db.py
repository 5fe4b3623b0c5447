"""``msgtrace db``: the ClickHouse store's schema (one server, chDB or a cluster)."""
from __future__ import annotations

import click

from tracer.cli.util import handle_errors, out, store_option


@click.group()
def db() -> None:
    """Manage the ClickHouse store (schema)."""


@db.command("init")
@store_option
@click.option("--cluster", metavar="NAME",
              help="Create Replicated local tables on every node of this cluster (remote_servers) and "
                   "Distributed tables over them, sharded by cityHash64(msg_id) (needs ZooKeeper).")
@click.option("--features", default="auto", show_default=True, metavar="LIST",
              help="Schema improvements: auto (those the server has and that pay: lowcardinality, codecs, "
                   "ttl on ClickHouse >= 20.3; lowcardinality, ttl on chDB), baseline (the 18.16 schema), "
                   "or a list of lowcardinality, codecs, ttl.")
@click.option("--keep-days", type=click.IntRange(min=1), metavar="N",
              help="Keep events N days: a TTL where the server has TTL; on others schedule "
                   "`msgtrace retention --keep-days N`.")
@click.option("--print", "print_only", is_flag=True, help="Print the DDL instead of running it.")
@click.option("--server-version", metavar="X.Y",
              help="With --print: render for this ClickHouse version instead of asking the server.")
@handle_errors
def db_init(store_url: str | None, cluster: str | None, features: str, keep_days: int | None,
            print_only: bool, server_version: str | None) -> None:
    """Create the database and tables (idempotent).

    On a cluster, run it once against any node: ON CLUSTER creates the tables everywhere. The store
    and every query then use the Distributed tables under the usual names.
    """
    from tracer.store import Store
    from tracer.store.schema import Feature, feature_names, parse_features

    with Store(store_url) as store:
        version = server_version or store.server_version()
        chosen = parse_features(features, version, embedded=store.engine == "chdb")
        stmts = store.schema_statements(cluster=cluster, features=chosen, keep_days=keep_days, version=version)
        if print_only:
            click.echo(";\n\n".join(stmts) + ";")
            return
        store.init_schema(cluster=cluster, features=chosen, keep_days=keep_days)
        # trace-msg's lookup tables (--key, --at, --topic): built now, so the first lookup on a big
        # store does not pay the one-off fill from the stored events
        from tracer.analysis.lookup import ensure_lookup
        from tracer.cli.util import progress_display

        with progress_display(True) as progress:
            ensure_lookup(store, progress)
        shown = ", ".join(feature_names(chosen)) or "baseline"
        where = f" on cluster {cluster}" if cluster else ""
        out.print(f"schema ready in {store.url.redacted()}{where} (ClickHouse {version}; features: {shown})")
        if keep_days and Feature.TTL not in chosen:
            out.print(f"no TTL on this server: schedule `msgtrace retention --keep-days {keep_days}` daily")

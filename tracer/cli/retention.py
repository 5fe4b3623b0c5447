"""``msgtrace retention``: drop day partitions older than N days (servers without TTL, and chDB)."""
from __future__ import annotations

import json

import click

from tracer.cli.util import handle_errors, json_option, out, store_option


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


@click.command("retention")
@click.option("--keep-days", type=click.IntRange(min=1), required=True, metavar="N",
              help="Keep the last N days (a day's partition goes once all of it is older than N days).")
@click.option("--dry-run", is_flag=True, help="Show what would be dropped; drop nothing.")
@store_option
@json_option
@handle_errors
def retention(keep_days: int, dry_run: bool, store_url: str | None, as_json: bool) -> None:
    """Drop the store's day partitions (trace_events, quarantine, verdicts) older than --keep-days.

    For ClickHouse 18.16, which has no TTL: run it daily (cron, systemd timer, CronJob). On a
    cluster it drops ON CLUSTER from every shard. Dropping a partition is a metadata change:
    instant, whatever its size.
    """
    from tracer.store import Store
    from tracer.store.retention import apply, plan

    with Store(store_url) as store, store.session():
        p = plan(store, keep_days)
        dropped = 0 if dry_run else apply(store, p)
    if as_json:
        click.echo(json.dumps({
            "keep_days": p.keep_days, "cutoff": p.cutoff, "cluster": p.cluster, "dry_run": dry_run,
            "dropped": dropped, "rows": p.rows, "bytes_on_disk": p.bytes_on_disk, "ttl_tables": p.ttl_tables,
            "partitions": [{"table": d.table, "partition": d.partition, "rows": d.rows,
                            "bytes_on_disk": d.bytes_on_disk} for d in p.drops]}))
        return
    verb = "would drop" if dry_run else "dropped"
    where = f" on cluster {p.cluster}" if p.cluster else ""
    for d in p.drops:
        out.print(f"{verb} {d.table} {d.partition}: {d.rows} rows, {_size(d.bytes_on_disk)}")
    out.print(f"{verb} {len(p.drops)} partition(s) before {p.cutoff}{where}: {p.rows} rows, "
              f"{_size(p.bytes_on_disk)}" + (" (dry run)" if dry_run else ""))
    if p.ttl_tables:
        out.print(f"TTL set on {', '.join(p.ttl_tables)}: the server also drops expired rows there itself")

"""The replay's side of the store: the reconcile run it starts from, and the replay run it leaves.

Reads: a stored reconcile run (``reconcile_runs``) and its verdicts, the events of the messages in
question, earlier replays of them. Writes: one ``replay_runs`` row (who, when, what, the counts)
and one ``replay_messages`` row per message (from where, to where, the result and why), in the
tables ``replay_runs`` and ``replay_messages`` of ``queries/schema.sql`` (:func:`ensure_schema`).
"""
from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tracer.errors import ConfigError
from tracer.replay.plan import Item, Result, VerdictRow
from tracer.store import Store, load_sql

ID_BATCH = 1000


def ensure_schema(store: Store) -> None:
    """Create the replay tables if they are missing (safe to run again). They are part of
    ``queries/schema.sql`` (``db init`` creates them); this covers a store made before they were,
    on one server, chDB or a cluster (Replicated + Distributed like every other table)."""
    if store.schema_present():
        return
    info = store.cluster_info()
    store.init_schema(cluster=info.name if info is not None else None)


@dataclass(slots=True)
class RunInfo:
    """The reconcile run a replay works from."""

    run_id: str
    window_from_us: int = 0
    window_to_us: int = 0
    grace_s: int = 600
    finished_us: int = 0


def reconcile_run(store: Store, run_id: str) -> RunInfo:
    """The stored reconcile run ``run_id`` (``latest``: the newest); a clear error if there is none."""
    rows = store.query_file("replay_reconcile_latest", small=True) if run_id == "latest" else \
        store.query_file("replay_reconcile_run", {"run_id": run_id}, small=True)
    if not rows:
        what = "no reconcile run is stored yet" if run_id == "latest" else f"no reconcile run {run_id!r} is stored"
        raise ConfigError(f"{what} (run `msgtrace reconcile` first, or give --from/--to)")
    r = rows[0]
    return RunInfo(r["run_id"], int(r["window_from_us"]), int(r["window_to_us"]), int(r["grace_s"]),
                   int(r["finished_us"]))


def run_verdicts(store: Store, run_id: str, verdicts: Sequence[str] = (), groups: Sequence[str] = (),
                 topics: Sequence[str] = ()) -> list[VerdictRow]:
    rows = store.query_file("replay_verdicts", {"run_id": run_id, "verdicts": list(verdicts),
                                                "groups": list(groups), "topics": list(topics)})
    return [VerdictRow(r["msg_id"], r["consumer_group"], r["topic"], r["verdict"], list(r["flags"]), r["evidence"])
            for r in rows]


def _batches(ids: Sequence[str]) -> Iterator[list[str]]:
    for k in range(0, len(ids), ID_BATCH):
        yield list(ids[k:k + ID_BATCH])


def events_of(store: Store, ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """msg_id -> its events (``queries/replay_events.sql``), in time order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for batch in _batches(ids):
        for r in store.query_file("replay_events", {"ids": batch}):
            out.setdefault(r["msg_id"], []).append(r)
    return out


def prior_replays(store: Store, ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """msg_id -> {replay run -> when} of earlier runs that published it."""
    out: dict[str, dict[str, int]] = {}
    for batch in _batches(ids):
        for r in store.query_file("replay_prior", {"ids": batch}, small=True):
            out.setdefault(r["msg_id"], {})[r["run_id"]] = int(r["at_us"])
    return out


def who() -> tuple[str, str]:
    """(user, host) running the replay: ``MSGTRACE_REPLAY_USER`` or the login name."""
    user = os.environ.get("MSGTRACE_REPLAY_USER")
    if not user:
        try:
            user = getpass.getuser()
        except Exception:  # noqa: BLE001 - no login name (a container): unknown
            user = "unknown"
    return user, socket.gethostname()


@dataclass(slots=True)
class ReplayRun:
    """One replay run as stored in ``replay_runs``."""

    run_id: str
    started_us: int
    mode: str  # "dry_run" | "execute"
    reconcile: RunInfo
    user: str = ""
    host: str = ""
    note: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    finished_us: int = 0

    def counts(self, items: Sequence[Item]) -> dict[str, int]:
        c = {r.value: 0 for r in Result}
        for i in items:
            c[i.result.value] += 1
        return c


def write_run(store: Store, run: ReplayRun, items: Sequence[Item]) -> None:
    """The run row and one row per message."""
    import orjson

    at = run.finished_us
    if items:
        def loc(i: Item, part: bool) -> int:
            return -1 if i.source_loc is None else (i.source_loc.partition if part else i.source_loc.offset)

        def dest(i: Item, part: bool) -> int:
            return -1 if i.published is None else (i.published.partition if part else i.published.offset)

        store.insert("replay_messages", {
            "run_id": [run.run_id] * len(items), "at_us": [at] * len(items),
            "msg_id": [i.msg_id for i in items], "consumer_groups": [list(i.groups) for i in items],
            "verdicts": [list(i.verdicts) for i in items],
            "source": [i.source.value if i.source else "" for i in items],
            "source_topic": [i.source_loc.topic if i.source_loc else "" for i in items],
            "source_partition": [loc(i, True) for i in items], "source_offset": [loc(i, False) for i in items],
            "target_topic": [i.target_topic for i in items],
            "target_partition": [dest(i, True) for i in items], "target_offset": [dest(i, False) for i in items],
            "result": [i.result.value for i in items], "reason_code": [i.why for i in items],
            "reason": ["; ".join(filter(None, [i.reason, *i.notes])) for i in items]})
    c = run.counts(items)
    store.command(load_sql("replay_write_run"), {
        "run_id": run.run_id, "started_us": run.started_us, "finished_us": at, "user": run.user, "host": run.host,
        "mode": run.mode, "reconcile_run": run.reconcile.run_id, "window_from_us": run.reconcile.window_from_us,
        "window_to_us": run.reconcile.window_to_us, "note": run.note, "params": orjson.dumps(run.params).decode(),
        "planned": c["planned"], "published": c["published"], "skipped": c["skipped"], "failed": c["failed"]})

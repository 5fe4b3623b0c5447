"""Which source supplies each planned message: its sources tried in the plan's order, batched.

Every Kafka location is read in one pass per partition, every DLQ topic scanned at most once, and
the source of truth asked once (in batches) for the messages no broker could supply. Each source
that could not supply a message says why; a message no source supplies is skipped with every reason.
Reading changes nothing anywhere: a dry run does all of this.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tracer.events import MSG_ID_HEADER
from tracer.replay.plan import (
    PRODUCER_SIDE,
    DlqHint,
    Item,
    Location,
    Message,
    Source,
    Why,
)
from tracer.replay.sources import (
    DLQ_SLACK_S,
    BusinessKafka,
    Read,
    SourceOfTruth,
    header,
    to_message,
)

Progress = Callable[[str], None]


@dataclass(slots=True)
class Attempt:
    why: Why
    text: str


@dataclass(slots=True)
class _Found:
    source: Source
    message: Message
    loc: Location | None
    note: str = ""


@dataclass(slots=True)
class Fetcher:
    kafka: BusinessKafka | None
    source: SourceOfTruth | None
    dlq_scan_limit: int = 50_000
    progress: Progress | None = None
    _failed: dict[int, list[tuple[Source, Attempt]]] = field(default_factory=dict)

    def resolve(self, items: list[Item]) -> None:
        """Give each planned item its message (``Item.found``) or skip it with the reasons."""
        todo = [i for i in items if i.open]
        originals = self._business(todo)
        found: dict[int, dict[Source, _Found]] = {id(i): {} for i in todo}
        for i in todo:
            r = originals.get(id(i))
            if r is not None and r.why is None:
                found[id(i)][Source.BUSINESS_TOPIC] = _Found(Source.BUSINESS_TOPIC, to_message(r.record),
                                                             i.location, r.note)
        for key, f in self._dlq(todo, originals).items():
            found[key][Source.DLQ] = f
        need_truth = [i for i in todo if Source.SOURCE_OF_TRUTH in i.chain
                      and not any(s in found[id(i)] for s in i.chain if s != Source.SOURCE_OF_TRUTH)]
        for key, f in self._truth(need_truth).items():
            found[key][Source.SOURCE_OF_TRUTH] = f
        for i in todo:
            got = next((found[id(i)][s] for s in i.chain if s in found[id(i)]), None)
            if got is not None:
                rank = i.chain.index(got.source)
                earlier = [f"not from {s.value}: {a.text}" for s, a in self._attempts(i)
                           if s != got.source and i.chain.index(s) < rank]
                i.found(got.source, got.message, got.loc, "; ".join(filter(None, [got.note, *earlier])))
                if not i.target_topic:
                    i.skip(Why.NO_TARGET_TOPIC, "the events name no topic for it: give --to-topic or return a "
                                                "topic column from --source-sql")
                continue
            attempts = [a for s, a in sorted(self._attempts(i), key=lambda sa: i.chain.index(sa[0]))]
            first = attempts[0] if attempts else Attempt(Why.READ_FAILED, "no source could supply it")
            hint = ""
            if Source.SOURCE_OF_TRUTH not in i.chain and set(i.verdicts) & PRODUCER_SIDE:
                hint = "; give --source-sql and --source-dsn to rebuild it from the source of truth"
            i.skip(first.why, ("; ".join(a.text for a in attempts) or first.text) + hint)

    # --- bookkeeping of failed attempts ----------------------------------------------------
    def _fail(self, item: Item, source: Source, why: Why, text: str) -> None:
        self._failed.setdefault(id(item), []).append((source, Attempt(why, f"[{source.value}] {text}")))

    def _attempts(self, item: Item) -> list[tuple[Source, Attempt]]:
        return self._failed.get(id(item), [])

    # --- the business topic at its offset ---------------------------------------------------
    def _business(self, items: list[Item]) -> dict[int, Read]:
        """The original of every item that has a business-topic location (also the DLQ items: their
        original lets a header-less DLQ copy be matched by key and value)."""
        want = [i for i in items if Source.BUSINESS_TOPIC in i.chain]
        out: dict[int, Read] = {}
        for i in want:
            if i.location is None:
                self._fail(i, Source.BUSINESS_TOPIC, Why.NO_LOCATION,
                           "its events record no partition/offset on the business topic")
            elif self.kafka is None:
                self._fail(i, Source.BUSINESS_TOPIC, Why.NO_BOOTSTRAP,
                           "no --bootstrap (MSGTRACE_BUSINESS_KAFKA_BOOTSTRAP): the business Kafka cannot be read")
        located = [i for i in want if i.location is not None and self.kafka is not None]
        if not located or self.kafka is None:
            return out
        if self.progress:
            self.progress(f"reading {len(located)} messages from the business Kafka")
        ids: dict[Location, str] = {}
        for i in located:
            assert i.location is not None
            ids[i.location] = i.msg_id
        strict = frozenset(i.location for i in located if i.strict and i.location is not None)
        reads = self.kafka.read([i.location for i in located if i.location is not None], ids, strict)
        for i in located:
            assert i.location is not None
            r = reads.get(i.location) or Read(why=Why.READ_FAILED, text=f"{i.location} was not read")
            h = header(r.record, MSG_ID_HEADER) if r.why is None and r.record is not None else None
            if h is not None and h.decode("utf-8", "replace") != i.msg_id:
                # Two planned messages had this location (the log was reset and the offset reused, found by
                # the demo): ``read`` checked the record against one of them; it is not this one.
                r = Read(why=Why.OFFSET_REUSED, text=f"the record at {i.location} is another message "
                                                     f"({h.decode('utf-8', 'replace')!r}): the log was reset "
                                                     "and the offset reused")
            out[id(i)] = r
            if r.why is not None:
                self._fail(i, Source.BUSINESS_TOPIC, r.why, r.text)
        return out

    # --- the DLQ ---------------------------------------------------------------------------
    def _dlq(self, items: list[Item], originals: dict[int, Read]) -> dict[int, _Found]:
        want = [i for i in items if Source.DLQ in i.chain]
        out: dict[int, _Found] = {}
        if not want:
            return out
        scans: dict[str, list[tuple[Item, DlqHint]]] = {}
        direct: list[tuple[Item, DlqHint]] = []
        for i in want:
            hints = [h for h in i.dlq if h.topic]
            if not hints:
                self._fail(i, Source.DLQ, Why.NOT_IN_DLQ, "its dead_lettered event names no DLQ topic "
                                                         "(record attrs dlq_topic, dlq_partition, dlq_offset)")
            elif self.kafka is None:
                self._fail(i, Source.DLQ, Why.NO_BOOTSTRAP, "no --bootstrap: the DLQ cannot be read")
            else:
                h = hints[-1]
                (direct.append((i, h)) if h.partition is not None and h.offset is not None
                 else scans.setdefault(h.topic, []).append((i, h)))
        if self.kafka is None:
            return out
        if direct:
            locs = {Location(h.topic, h.partition or 0, h.offset or 0): i.msg_id for i, h in direct}
            reads = self.kafka.read(list(locs), locs)
            for i, h in direct:
                loc = Location(h.topic, h.partition or 0, h.offset or 0)
                r = reads.get(loc) or Read(why=Why.READ_FAILED, text=f"{loc} was not read")
                if r.why is None:
                    out[id(i)] = _Found(Source.DLQ, to_message(r.record), loc, r.note)
                else:
                    self._fail(i, Source.DLQ, Why.NOT_IN_DLQ if r.why == Why.OFFSET_REUSED else r.why, r.text)
        for topic, pairs in sorted(scans.items()):
            if self.progress:
                self.progress(f"scanning the DLQ {topic} for {len(pairs)} messages")
            since_ms = min(h.ts_us for _, h in pairs) // 1000 - DLQ_SLACK_S * 1000
            records, said = self.kafka.scan(topic, since_ms, self.dlq_scan_limit)
            by_id: dict[str, Any] = {}
            by_body: dict[tuple[bytes | None, bytes | None], list[Any]] = {}
            for r in records:
                hv = header(r, MSG_ID_HEADER)
                if hv is not None:
                    by_id[hv.decode("utf-8", "replace")] = r  # the latest copy wins
                else:
                    by_body.setdefault((r.key, r.value), []).append(r)
            for i, _ in pairs:
                rec = by_id.get(i.msg_id)
                note = ""
                if rec is None:
                    orig = originals.get(id(i))
                    if orig is not None and orig.record is not None:
                        same = by_body.get((orig.record.key, orig.record.value)) or []
                        if len(same) == 1:
                            rec = same[0]
                            note = (f"the DLQ copy at {rec.topic}/{rec.partition}@{rec.offset} has no msgtrace-id "
                                    "header: matched by key and value with the original")
                        elif len(same) > 1:
                            self._fail(i, Source.DLQ, Why.NOT_IN_DLQ,
                                       f"{len(same)} header-less DLQ records have its key and value: ambiguous")
                            continue
                if rec is None:
                    self._fail(i, Source.DLQ, Why.NOT_IN_DLQ, f"no DLQ record with its msgtrace-id ({said})")
                    continue
                out[id(i)] = _Found(Source.DLQ, to_message(rec), Location(rec.topic, rec.partition, rec.offset), note)
        return out

    # --- the source of truth --------------------------------------------------------------------
    def _truth(self, items: list[Item]) -> dict[int, _Found]:
        out: dict[int, _Found] = {}
        if not items or self.source is None:
            return out
        if self.progress:
            self.progress(f"rebuilding {len(items)} messages from the source of truth")
        rows = self.source.fetch(sorted({i.msg_id for i in items}))
        for i in items:
            got = rows.get(i.msg_id) or []
            if not got:
                self._fail(i, Source.SOURCE_OF_TRUTH, Why.NOT_IN_SOURCE,
                           f"the source of truth ({self.source.describe()}) has no row for it")
            elif len(got) > 1:
                self._fail(i, Source.SOURCE_OF_TRUTH, Why.AMBIGUOUS_SOURCE,
                           f"the source of truth returned {len(got)} rows for it: ambiguous, not replayed")
            else:
                row = got[0]
                if not i.target_topic and row.topic:
                    i.target_topic = row.topic
                out[id(i)] = _Found(Source.SOURCE_OF_TRUTH, Message(row.key, row.value, []), None)
        return out

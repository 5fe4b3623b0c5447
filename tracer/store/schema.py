"""The store's DDL: ``queries/schema.sql`` rendered for one server, single or a cluster.

One text serves ClickHouse 18.16, modern servers and chDB: its markers (documented at the top of
the file) become fixed fragments here, chosen by what the server supports (its version) and by
``db init --cluster``. Why one text with markers rather than one file per variant: the column
list is a single fact, and a variant that forgot a column would only fail at insert time.

Version gates: ``LowCardinality``, column codecs and ``TTL`` need a server >= 20.3 (LowCardinality
is experimental on 18.16, codecs and TTL do not parse there); chDB (26.x) has them all. Which of
them a new store gets by default (``features="auto"``) is decided by measurements
(benchmarks/bench_sizing.py, benchmarks/results/sizing.md), not by availability alone.
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from tracer.errors import ConfigError
from tracer.store.core import check_identifier, load_sql


class Feature(enum.Flag):
    """Optional schema improvements for servers that have them."""

    NONE = 0
    LOW_CARDINALITY = enum.auto()  #: dictionary-encoded low-cardinality strings (stage, service, ...)
    CODECS = enum.auto()  #: ZSTD(1) on the wide columns instead of LZ4
    TTL = enum.auto()  #: the server drops expired rows itself (needs keep_days)


#: the oldest server version that has every Feature (LowCardinality GA, codecs, TTL)
MODERN_VERSION = (20, 3)
ALL_FEATURES = Feature.LOW_CARDINALITY | Feature.CODECS | Feature.TTL
#: what ``features="auto"`` turns on where a server has it (benchmarks/results/sizing.md, 10M events
#: of the demo's mix): LowCardinality + ZSTD(1) take a server's trace_events from 43.7 to 16.7 bytes
#: per event (LZ4, a server's default, vs the codecs; measured on chDB with the server's defaults
#: spelled out, as no modern server runs here), and TTL replaces the retention job
AUTO_FEATURES = Feature.LOW_CARDINALITY | Feature.CODECS | Feature.TTL
#: chDB compresses with ZSTD by default already: explicit ZSTD(1) codecs made its store 3% larger
#: (17.8 vs 17.3 bytes per event), LowCardinality 9% smaller (15.7)
AUTO_FEATURES_CHDB = Feature.LOW_CARDINALITY | Feature.TTL

_FEATURE_NAMES = {"lowcardinality": Feature.LOW_CARDINALITY, "codecs": Feature.CODECS, "ttl": Feature.TTL}


def parse_version(text: str) -> tuple[int, int]:
    """(major, minor) of a ClickHouse version string such as ``18.16.1`` or ``26.9.2.1``."""
    m = re.match(r"\s*(\d+)\.(\d+)", text or "")
    if not m:
        raise ConfigError(f"cannot read ClickHouse version {text!r}")
    return int(m.group(1)), int(m.group(2))


def supported_features(version: str) -> Feature:
    return ALL_FEATURES if parse_version(version) >= MODERN_VERSION else Feature.NONE


def parse_features(spec: str, version: str, *, embedded: bool = False) -> Feature:
    """``auto`` (measured defaults the server has; ``embedded``: for chDB), ``baseline`` (none: the
    18.16 schema) or a comma list of ``lowcardinality``, ``codecs``, ``ttl``; a feature the server
    lacks is an error."""
    spec = (spec or "auto").strip().lower()
    have = supported_features(version)
    if spec == "auto":
        return (AUTO_FEATURES_CHDB if embedded else AUTO_FEATURES) & have
    if spec in ("baseline", "none"):
        return Feature.NONE
    want = Feature.NONE
    for word in filter(None, (w.strip() for w in spec.split(","))):
        if word not in _FEATURE_NAMES:
            raise ConfigError(f"unknown schema feature {word!r} (expected auto, baseline or a list of "
                              f"{', '.join(sorted(_FEATURE_NAMES))})")
        want |= _FEATURE_NAMES[word]
    missing = want & ~have
    if missing:
        names = ", ".join(n for n, f in _FEATURE_NAMES.items() if f in missing)
        raise ConfigError(f"ClickHouse {version} lacks schema feature(s) {names} (need >= "
                          f"{MODERN_VERSION[0]}.{MODERN_VERSION[1]})")
    return want


def feature_names(features: Feature) -> list[str]:
    return [n for n, f in _FEATURE_NAMES.items() if f in features]


@dataclass(frozen=True, slots=True)
class SchemaOptions:
    """How to render the schema: for which features, on which cluster, with which retention."""

    features: Feature = Feature.NONE
    cluster: str | None = None
    keep_days: int | None = None  #: TTL in days (with Feature.TTL); None: no TTL

    def __post_init__(self) -> None:
        if self.cluster is not None:
            check_identifier(self.cluster, "cluster name")
        if self.keep_days is not None and self.keep_days < 1:
            raise ConfigError(f"keep days must be at least 1, not {self.keep_days}")


@dataclass(frozen=True, slots=True)
class DistributedSpec:
    """``-- distributed: T BY K``: a Distributed table T over T_local sharded by K."""

    table: str
    sharding_key: str


LOCAL_SUFFIX = "_local"
_DIRECTIVE_RE = re.compile(r"^--\s*distributed:\s*([A-Za-z_][A-Za-z0-9_]*)\s+BY\s+(.+?)\s*$", re.MULTILINE)
_MARKER_RE = re.compile(r"__(LC|CODEC|TTL|ENGINE)__\(")
_TABLE_RE = re.compile(r"CREATE TABLE IF NOT EXISTS \{db:Identifier\}\.([A-Za-z_][A-Za-z0-9_]*)__LOCAL__")


def _marker_arg(text: str, start: int) -> tuple[str, int]:
    """The balanced-parenthesis argument of a marker whose ``(`` is at ``start``; (arg, end)."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return text[start + 1:i], i + 1
    raise ConfigError("unbalanced marker in schema.sql")


def _render_markers(stmt: str, database: str, table: str | None, opts: SchemaOptions) -> str:
    out, pos = [], 0
    for m in _MARKER_RE.finditer(stmt):
        if m.start() < pos:
            continue
        arg, end = _marker_arg(stmt, m.end() - 1)
        kind = m.group(1)
        if kind == "LC":
            frag = f"LowCardinality({arg})" if Feature.LOW_CARDINALITY in opts.features else arg
        elif kind == "CODEC":
            frag = f"CODEC({arg})" if Feature.CODECS in opts.features else ""
        elif kind == "TTL":
            # ttl_only_drop_parts: a part goes once all its rows expired (a day partition's parts at
            # the end of that day + keep_days), dropped whole like a partition, never rewritten
            frag = (f"TTL {arg} + INTERVAL {int(opts.keep_days)} DAY SETTINGS ttl_only_drop_parts = 1"
                    if Feature.TTL in opts.features and opts.keep_days else "")
        else:  # ENGINE
            if opts.cluster:
                zk_path = f"/clickhouse/tables/{{shard}}/{database}/{table}{LOCAL_SUFFIX}"
                frag = f"Replicated{arg}('{zk_path}', '{{replica}}')"
            else:
                frag = f"{arg}()"
        out.append(stmt[pos:m.start()])
        out.append(frag)
        pos = end
    out.append(stmt[pos:])
    text = "".join(out)
    on_cluster = f"ON CLUSTER `{opts.cluster}`" if opts.cluster else ""
    text = text.replace("__ON_CLUSTER__", on_cluster).replace("__LOCAL__", LOCAL_SUFFIX if opts.cluster else "")
    # tidy what an empty fragment leaves: "x String ," and trailing blanks
    text = re.sub(r"[ \t]+(,|\n|$)", r"\1", text)
    return re.sub(r"\n{2,}", "\n", text).strip()


def _chunks(sql: str) -> list[str]:
    """Statements of the file, each with the directive comments that follow it (before the next)."""
    return [c for c in re.split(r";[ \t]*\n", sql) if c.strip()]


def _strip_comments(chunk: str) -> str:
    return "\n".join(ln for ln in chunk.splitlines() if not ln.strip().startswith("--")).strip()


def render_schema(database: str, opts: SchemaOptions, *, sql: str | None = None) -> list[str]:
    """The DDL statements (``{db:Identifier}`` already replaced) creating the store's database and
    tables for ``opts``: with a cluster, the Replicated local tables then the Distributed tables."""
    check_identifier(database)
    text = load_sql("schema") if sql is None else sql
    db = f"`{database}`"
    tables: list[str] = []
    distributed: list[str] = []
    for chunk in _chunks(text):
        for d in _DIRECTIVE_RE.finditer(chunk):
            if opts.cluster:
                spec = DistributedSpec(d.group(1), d.group(2))
                distributed.append(
                    f"CREATE TABLE IF NOT EXISTS {db}.{spec.table} ON CLUSTER `{opts.cluster}` "
                    f"AS {db}.{spec.table}{LOCAL_SUFFIX} "
                    f"ENGINE = Distributed(`{opts.cluster}`, {db}, {spec.table}{LOCAL_SUFFIX}, {spec.sharding_key})")
        body = _strip_comments(chunk)
        if not body:
            continue
        m = _TABLE_RE.search(body)
        tables.append(_render_markers(body, database, m.group(1) if m else None, opts).replace("{db:Identifier}", db))
    return tables + distributed


def distributed_tables(sql: str | None = None) -> dict[str, str]:
    """Table -> sharding key of every ``-- distributed:`` directive in schema.sql."""
    text = load_sql("schema") if sql is None else sql
    return {m.group(1): m.group(2) for m in _DIRECTIVE_RE.finditer(text)}


def schema_tables(sql: str | None = None) -> list[str]:
    """The tables schema.sql creates, by the names queries use."""
    text = load_sql("schema") if sql is None else sql
    return _TABLE_RE.findall(text)

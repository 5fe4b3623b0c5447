"""The emitter's counters as Prometheus metrics, for the application that runs the hooks.

A payment service already exposes ``/metrics``; it registers msgtrace's counters there::

    from prometheus_client import REGISTRY
    from tracer.sdk.metrics import register
    register(tracer)                       # or TracerCollector(tracer) into a registry of its own

A prometheus-client *custom collector*: nothing is counted twice and nothing runs on the hot
path -- each scrape reads :attr:`tracer.Tracer.stats` (the only interface used here) and turns
it into metric families. A scrape never raises into the application: if the stats cannot be
read, the scrape shows ``msgtrace_emitter_up 0``.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("msgtrace.sdk")

PREFIX = "msgtrace_emitter"

#: Tracer.stats key -> (metric name, kind, help). Keys missing from a Tracer's stats are skipped;
#: other numeric keys are exported as ``msgtrace_emitter_<key>`` gauges (the stats may grow).
KNOWN: dict[str, tuple[str, str, str]] = {
    "recorded": ("events_recorded", "counter", "Audit events recorded by the hooks."),
    "shipped": ("events_shipped", "counter", "Audit events the audit sink accepted (Kafka acked or store written)."),
    "dropped": ("events_dropped", "counter", "Audit events dropped (spool full): they show as seq gaps."),
    "invalid": ("events_invalid", "counter", "Events refused by the emitter (bad fields); never shipped."),
    "errors": ("errors", "counter", "Errors inside the emitter (never raised into the application)."),
    "ship_failures": ("ship_failures", "counter", "Failed shipments to the audit sink (each retry counts)."),
    "adopted_spools": ("adopted_spools", "counter", "Spools of dead processes adopted and shipped."),
    "hook_errors": ("hook_errors", "counter", "Errors inside the hooks (never raised into the application)."),
    "pending_forgotten": ("pending_forgotten", "counter",
                          "Received records forgotten before their outcome was recorded (table full)."),
    "spooled_bytes": ("spool_bytes", "gauge", "Bytes in the disk spool not yet shipped."),
    "spool_bytes": ("spool_bytes", "gauge", "Bytes in the disk spool not yet shipped."),
}
#: string stats shown as labels of the info metric
INFO_KEYS = ("emitter_id", "sink")
_NAME_BAD = re.compile(r"[^a-zA-Z0-9_]")


class TracerCollector:
    """A prometheus-client collector over one :class:`tracer.Tracer`'s ``stats``."""

    def __init__(self, tracer: Any, *, prefix: str = PREFIX) -> None:
        self.tracer = tracer
        self.prefix = prefix

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

        try:
            stats = dict(self.tracer.stats)
        except Exception as e:  # never into the application's scrape
            log.debug("msgtrace: cannot read Tracer.stats: %s", e)
            yield GaugeMetricFamily(f"{self.prefix}_up", "1 when the tracer's stats could be read.", value=0)
            return
        yield GaugeMetricFamily(f"{self.prefix}_up", "1 when the tracer's stats could be read.", value=1)
        service = str(getattr(self.tracer, "service", "") or "")
        info = {"service": service, **{k: str(stats[k]) for k in INFO_KEYS if stats.get(k) is not None}}
        yield InfoMetricFamily(self.prefix, "Which service and emitter these counters belong to.", value=info)
        done: set[str] = set()
        for key, value in stats.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            name, kind, doc = KNOWN.get(key) or (_NAME_BAD.sub("_", str(key)), "gauge", f"Tracer.stats[{key!r}].")
            if name in done:  # two spellings of one figure
                continue
            done.add(name)
            full = f"{self.prefix}_{name}"
            if kind == "counter":
                yield CounterMetricFamily(full, doc, value=value)
            else:
                yield GaugeMetricFamily(full, doc, value=value)


def register(tracer: Any, registry: Any = None) -> TracerCollector:
    """Register ``tracer``'s counters in ``registry`` (prometheus-client's default one if None)."""
    if registry is None:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    collector = TracerCollector(tracer)
    registry.register(collector)
    return collector

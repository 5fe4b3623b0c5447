"""OpenTelemetry, as far as the SDK needs it: the current context, and optional spans.

- :class:`Context` answers "is there an active trace, and which?" in one C call when nothing is
  active (OpenTelemetry's own context variable), so the common send pays ~50 ns for it.
- :class:`Spans` starts and ends PRODUCER / CONSUMER spans with the messaging semantic conventions,
  for tracers configured with ``otel_spans`` (the application's TracerProvider, or the global one).

Every call is best effort: the caller catches and counts what goes wrong; no OpenTelemetry error
reaches business code.
"""
from __future__ import annotations

import contextvars
from typing import Any


class Context:
    """The current OpenTelemetry trace, read as cheaply as possible."""

    __slots__ = ("_cv", "_get_span")

    def __init__(self) -> None:
        self._cv: contextvars.ContextVar[Any] | None = None
        self._get_span: Any = None
        try:
            from opentelemetry import context, trace
        except ImportError:  # pragma: no cover - opentelemetry-api is a dependency
            return
        self._get_span = trace.get_current_span
        cv = getattr(getattr(context, "_RUNTIME_CONTEXT", None), "_current_context", None)
        # the stock contextvars runtime context: an empty value means no active span at all
        self._cv = cv if isinstance(cv, contextvars.ContextVar) else None

    def current(self) -> tuple[str, str] | None:
        """(trace_id, span_id) of the active span, or None when there is none (or it is invalid)."""
        cv = self._cv
        if cv is not None:
            if not cv.get():
                return None
        elif self._get_span is None:
            return None
        sc = self._get_span().get_span_context()
        if not sc.is_valid:
            return None
        return f"{sc.trace_id:032x}", f"{sc.span_id:016x}"


class Spans:
    """PRODUCER / CONSUMER spans (messaging semantic conventions) for ``otel_spans`` tracers."""

    __slots__ = ("_tracer",)

    def __init__(self, provider: Any) -> None:
        """``provider``: a TracerProvider, or True for the global one."""
        if hasattr(provider, "get_tracer"):
            self._tracer = provider.get_tracer("msgtrace")
        else:
            from opentelemetry import trace

            self._tracer = trace.get_tracer("msgtrace")

    def start_send(self, system: str, topic: str, msg_id: str, key: str | None) -> tuple[Any, str | None, str | None]:
        """A ``send {topic}`` PRODUCER span, child of the current one: (span, trace_id, span_id).

        The ids are None when no SDK is configured (the API then hands out invalid contexts).
        """
        from opentelemetry.trace import SpanKind

        attrs: dict[str, Any] = {"messaging.system": system, "messaging.operation.name": "send",
                                 "messaging.operation.type": "send", "messaging.destination.name": topic,
                                 "messaging.message.id": msg_id}
        if key is not None:
            name = "messaging.kafka.message.key" if system == "kafka" else "messaging.rabbitmq.destination.routing_key"
            attrs[name] = key
        span = self._tracer.start_span(f"send {topic}", kind=SpanKind.PRODUCER, attributes=attrs)
        sc = span.get_span_context()
        if not sc.is_valid:
            return span, None, None
        return span, f"{sc.trace_id:032x}", f"{sc.span_id:016x}"

    @staticmethod
    def end_send(span: Any, partition: int | None, offset: int | None, error: BaseException | str | None) -> None:
        try:
            if partition is not None:
                span.set_attribute("messaging.destination.partition.id", str(partition))
            if offset is not None:
                span.set_attribute("messaging.kafka.offset", offset)
            if error is not None:
                from opentelemetry.trace import Status, StatusCode

                span.set_attribute("error.type", type(error).__name__ if isinstance(error, BaseException)
                                   else "error")
                span.set_status(Status(StatusCode.ERROR, str(error)))
            span.end()
        except Exception:
            pass

    def start_process(self, system: str, msg_id: str, topic: str, partition: int | None, offset: int | None,
                      group: str | None, trace_id: str | None, span_id: str | None) -> tuple[Any, Any]:
        """A ``process {topic}`` CONSUMER span, child of the producer's span when its ids are known,
        made current; (span, token to detach)."""
        from opentelemetry import context, trace
        from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

        parent = None
        if trace_id and span_id:
            parent = trace.set_span_in_context(NonRecordingSpan(SpanContext(
                int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=TraceFlags(1))))
        attrs: dict[str, Any] = {"messaging.system": system, "messaging.operation.type": "process",
                                 "messaging.operation.name": "process", "messaging.destination.name": topic,
                                 "messaging.message.id": msg_id}
        if partition is not None:
            attrs["messaging.destination.partition.id"] = str(partition)
        if offset is not None:
            attrs["messaging.kafka.offset"] = offset
        if group:
            attrs["messaging.consumer.group.name"] = group
        span = self._tracer.start_span(f"process {topic}".strip(), context=parent, kind=SpanKind.CONSUMER,
                                       attributes=attrs)
        token = context.attach(trace.set_span_in_context(span))
        return span, token

    @staticmethod
    def ids(span: Any) -> tuple[str, str] | None:
        sc = span.get_span_context()
        if not sc.is_valid:
            return None
        return f"{sc.trace_id:032x}", f"{sc.span_id:016x}"

    @staticmethod
    def end_process(span: Any, token: Any, exc: BaseException | None) -> None:
        from opentelemetry import context
        from opentelemetry.trace import Status, StatusCode

        try:
            if exc is not None:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
            span.end()
        finally:
            context.detach(token)


__all__ = ["Context", "Spans"]

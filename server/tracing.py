"""Traces (OpenTelemetry): off unless the standard OTEL_* variables ask for them and the `otel`
extra is installed; then a task is one trace.

The task's submit span is its root's child (or the caller's, when the call carried a trace
context): its W3C `traceparent` is stored with the task and handed to whoever claims it, so the
claim, every attempt (claim to its end, recorded when it ends), the holder's tool calls (MCP
`_meta.traceparent`, which the MCP SDK's own middleware turns into server spans) and the
worker's command (`TRACEPARENT`) all land in the same trace.

Everything here is free when tracing is off: callers test `active()` (a global lookup) first."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import ProxyTracerProvider, Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger("agentfleet.tracing")

tracer = trace.get_tracer("agentfleet")
_propagator = TraceContextTextMapPropagator()
_NS_PER_US = 1000


_UNKNOWN = object()
_seen_active = False


def active() -> bool:
    """Is a real tracer provider installed (by `configure_from_env`, or a test)? Called on every
    task operation, so it reads the API's global directly: `get_tracer_provider()` looks the
    environment up on each call while none is set (~2 µs). A provider is set at most once, so
    once seen it stays."""
    global _seen_active
    if _seen_active:
        return True
    provider = getattr(trace, "_TRACER_PROVIDER", _UNKNOWN)
    if provider is None:
        return False
    if provider is _UNKNOWN:  # an API release without that global: ask it
        provider = trace.get_tracer_provider()
    _seen_active = not isinstance(provider, ProxyTracerProvider)
    return _seen_active


def wanted(env: Mapping[str, str]) -> bool:
    """The standard variables that ask for traces: an OTLP endpoint, or a traces exporter."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(exporter or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def configure_from_env(service_name: str, env: Mapping[str, str] | None = None) -> bool:
    """Install a tracer provider exporting over OTLP/HTTP (or to the console with
    OTEL_TRACES_EXPORTER=console) when the environment asks for traces. True when installed."""
    env = os.environ if env is None else env
    if not isinstance(trace.get_tracer_provider(), ProxyTracerProvider):  # one is set already
        return active()
    if not wanted(env):
        return False
    try:
        from opentelemetry.sdk.resources import OTEL_SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    except ImportError:
        log.warning("OTEL_* variables ask for traces, but the otel extra is missing: pip install 'agentfleet[otel]'")
        return False
    kind = env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    exporter: SpanExporter
    if kind == "console":
        exporter = ConsoleSpanExporter()
    else:
        if kind != "otlp":
            log.warning("OTEL_TRACES_EXPORTER=%s is not supported here; exporting over OTLP/HTTP", kind)
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning("the OTLP/HTTP exporter is missing: pip install 'agentfleet[otel]'")
            return False
        exporter = OTLPSpanExporter()  # reads OTEL_EXPORTER_OTLP_* itself
    attributes = {} if env.get(OTEL_SERVICE_NAME) else {"service.name": service_name}
    provider = TracerProvider(resource=Resource.create(attributes))  # sampler: OTEL_TRACES_SAMPLER
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    log.info("tracing on: %s exporter", kind)
    return True


# -- trace context as text ----------------------------------------------------------------------
def traceparent_of(span: Span) -> str | None:
    context = span.get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def current_traceparent() -> str | None:
    return traceparent_of(trace.get_current_span())


def context_from(traceparent: str | None) -> Context | None:
    """The context a W3C traceparent names; None if absent or malformed (then: a new trace)."""
    if not traceparent:
        return None
    context = _propagator.extract({"traceparent": traceparent})
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def record_span(
    name: str,
    parent: str | None,
    start_us: int,
    end_us: int,
    attributes: Mapping[str, Any],
    *,
    error: str | None = None,
) -> None:
    """A span for something that already happened (an attempt, from its claim to its end), under
    the task's trace context. Only when tracing is on."""
    span = tracer.start_span(
        name,
        context=context_from(parent),
        kind=SpanKind.INTERNAL,
        attributes={k: v for k, v in attributes.items() if v is not None},
        start_time=start_us * _NS_PER_US,
    )
    if error is not None:
        span.set_status(trace.Status(trace.StatusCode.ERROR, error[:500]))
    span.end(end_time=end_us * _NS_PER_US)

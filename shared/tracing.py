"""OpenTelemetry tracing across gateway -> broker -> service -> database; off unless asked for.

Each process calls `configure_tracing(name)` first thing. With none of the variables below set it
does nothing at all (OpenTelemetry is not even imported). Tracing is on when
`OTEL_TRACES_EXPORTER` names an exporter (`otlp`, `console`, or both comma-separated), or when
`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; `OTEL_SDK_DISABLED=true`
or `OTEL_TRACES_EXPORTER=none` keeps it off. Everything else is the SDK's standard `OTEL_*`
configuration, read by the SDK itself: `OTEL_SERVICE_NAME` (default: the process name),
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_*` (OTLP over HTTP/protobuf only), `OTEL_BSP_*`,
`OTEL_TRACES_SAMPLER`.

The instrumentation packages do the work: aiohttp server spans (the gateway's routes, each
service's HTTP port) and client spans (JWKS fetches), aio-pika publish and consume spans, whose
`traceparent` header makes a service's span a child of the gateway's, and asyncpg query spans.
A trace header on a message is correlation only: it grants nothing, the runner never reads it,
and one that is not well-formed text is ignored rather than failing the message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from shared.settings import ConfigurationError

if TYPE_CHECKING:  # imported only once tracing is on
    from opentelemetry.propagators.textmap import TextMapPropagator

EXPORTERS = ("otlp", "console")
#: Health probes and scrapes would make a trace every few seconds and tell nothing.
UNTRACED_PATHS = "/healthz$,/readyz$,/metrics$"


def tracing_exporters(env: Mapping[str, str]) -> list[str]:
    """The exporters the environment asks for; empty means tracing is off."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = [name.strip().lower() for name in env.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip()]
    if not named:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        named = ["otlp"] if endpoint else []
    if named == ["none"]:
        return []
    unknown = [name for name in named if name not in EXPORTERS]
    if unknown:
        raise ConfigurationError(f"OTEL_TRACES_EXPORTER must be otlp, console or none, got {unknown[0]!r}")
    if "otlp" in named:
        for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
            protocol = env.get(variable)
            if protocol and protocol != "http/protobuf":
                raise ConfigurationError(f"{variable} must be http/protobuf (the exporter installed), got {protocol!r}")
    return named


def configure_tracing(process_name: str, env: Mapping[str, str] | None = None) -> bool:
    """Set up the tracer provider, the exporters and the instrumentations; True if tracing is on."""
    env = os.environ if env is None else env
    exporters = tracing_exporters(env)
    if not exporters:
        return False
    _start(process_name, exporters, sampler_from_env="OTEL_TRACES_SAMPLER" in env)
    return True


def _start(process_name: str, exporters: Sequence[str], *, sampler_from_env: bool) -> None:
    from opentelemetry import propagate, trace
    from opentelemetry.instrumentation.aio_pika import AioPikaInstrumentor
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    from opentelemetry.sdk.trace.sampling import ParentBased

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: process_name}))
    provider = (
        TracerProvider(resource=resource)
        if sampler_from_env
        else TracerProvider(resource=resource, sampler=ParentBased(root=_sample_roots()))
    )
    for name in exporters:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)  # flushed at exit by the provider's own atexit hook
    propagate.set_global_textmap(_tolerant(propagate.get_global_textmap()))

    os.environ.setdefault("OTEL_PYTHON_AIOHTTP_SERVER_EXCLUDED_URLS", UNTRACED_PATHS)
    # The server instrumentation swaps in its own web.Application: this must run before any app is built.
    AioHttpServerInstrumentor().instrument()
    AioHttpClientInstrumentor().instrument()
    AioPikaInstrumentor().instrument()
    AsyncPGInstrumentor().instrument()


def _sample_roots() -> Any:
    """Start traces for work that arrives or leaves (an HTTP request, a message consumed or
    published), not for a process's own background queries (the outbox poll, the idempotency
    purge, JWKS refreshes) nor for the gateway's receipt of a reply, whose command is already
    in the request's trace: those would otherwise start a trace every second."""
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
    from opentelemetry.trace import SpanKind

    class RequestRoots(Sampler):
        def should_sample(
            self,
            parent_context: Any,
            trace_id: int,
            name: str,
            kind: SpanKind | None = None,
            attributes: Any = None,
            links: Any = None,
            trace_state: Any = None,
        ) -> SamplingResult:
            if kind in (SpanKind.CLIENT, SpanKind.INTERNAL) or name.startswith("amq.rabbitmq.reply-to"):
                return SamplingResult(Decision.DROP)
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

        def get_description(self) -> str:
            return "RequestRoots"

    return RequestRoots()


def _tolerant(inner: TextMapPropagator) -> TextMapPropagator:
    """The configured propagator, except that a malformed trace header (a number where text
    belongs, say: anyone can publish one) means no parent instead of an exception that would
    fail the message before the runner ever saw it."""
    from opentelemetry.context import Context
    from opentelemetry.propagators.textmap import TextMapPropagator, default_getter, default_setter

    class Tolerant(TextMapPropagator):
        def extract(self, carrier: Any, context: Any = None, getter: Any = default_getter) -> Any:
            try:
                return inner.extract(carrier, context=context, getter=getter)
            except (TypeError, ValueError, AttributeError):
                return context if context is not None else Context()

        def inject(self, carrier: Any, context: Any = None, setter: Any = default_setter) -> None:
            inner.inject(carrier, context=context, setter=setter)

        @property
        def fields(self) -> set[str]:
            return inner.fields

    return Tolerant()

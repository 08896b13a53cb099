"""OpenTelemetry tracing, turned on by the standard OTEL_* variables: one request is one trace,
from the gateway's HTTP span through the publish and the service's consume to its SQL.

The test runs its own OTLP/HTTP receiver and a traced gateway and posts_service (the stack's
posts_service is stopped meanwhile, so the traced one takes the commands). The stack itself runs
with tracing off, as every install does by default.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

from shared.settings import ConfigurationError
from shared.tracing import tracing_exporters
from tests.support.accounts import User
from tests.support.broker import BrokerProbe
from tests.support.stack import Stack, free_port


@dataclass(frozen=True)
class Span:
    service: str
    scope: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str


class OtlpReceiver:
    """Just enough of an OpenTelemetry collector: POST /v1/traces, OTLP protobuf over HTTP."""

    def __init__(self) -> None:
        self.port = free_port()
        self.spans: list[Span] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(
                    Span(
                        attributes.get("service.name", ""),
                        scope_spans.scope.name,
                        s.name,
                        s.kind,
                        s.trace_id.hex(),
                        s.span_id.hex(),
                        s.parent_span_id.hex(),
                    )
                    for s in scope_spans.spans
                )
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf")

    def trace(self, trace_id: str) -> list[Span]:
        return [s for s in self.spans if s.trace_id == trace_id]


def ancestors(span: Span, spans: list[Span]) -> list[Span]:
    by_id = {s.span_id: s for s in spans}
    chain = []
    while span.parent_id in by_id:
        span = by_id[span.parent_id]
        chain.append(span)
    return chain


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    running = OtlpReceiver()
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
async def traced(stack: Stack, receiver: OtlpReceiver, tmp_path: Path) -> AsyncIterator[Stack]:
    """A gateway and a posts_service exporting traces to `receiver`, in place of the stack's posts_service."""
    env = {
        **stack.env,
        "GATEWAY_PORT": str(free_port()),
        "POSTS_HTTP_PORT": str(free_port()),
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    pair = Stack(env, tmp_path)
    stack.stop("posts")
    try:
        pair.start("posts")
        pair.start("gateway")
        await pair.wait_ready("gateway")
        yield pair
    finally:
        for process in pair.processes.values():
            process.terminate()
            # In a thread: at exit the processes flush their spans to the receiver on this loop.
            await asyncio.to_thread(process.wait, 20)
        stack.start("posts")
        await stack.wait_ready("posts")


async def test_one_request_is_one_trace_across_gateway_broker_service_and_database(
    traced: Stack, receiver: OtlpReceiver, new_user, wait_until
) -> None:
    user: User = await new_user("traced")
    request_id = f"otel-{uuid4().hex}"
    headers = {**user.auth, "X-Request-ID": request_id}
    async with (
        aiohttp.ClientSession(base_url=traced.gateway_url) as http,
        http.post("/posts", json={"title": "traced", "body": "b"}, headers=headers) as response,
    ):
        assert response.status == 201, await response.text()

    async def request_span() -> Span | None:
        return next(
            (s for s in receiver.spans if s.service == "gateway" and s.kind == ProtoSpan.SPAN_KIND_SERVER and s.name == "POST /posts"),
            None,
        )

    root = await wait_until(request_span, timeout=10)

    async def whole_trace() -> dict[str, Span | None] | None:
        spans = receiver.trace(root.trace_id)
        found = {
            "publish": next((s for s in spans if s.service == "gateway" and s.kind == ProtoSpan.SPAN_KIND_PRODUCER), None),
            "consume": next((s for s in spans if s.service == "posts_service" and s.kind == ProtoSpan.SPAN_KIND_CONSUMER), None),
            "query": next((s for s in spans if s.service == "posts_service" and "asyncpg" in s.scope), None),
        }
        return found if all(found.values()) else None

    try:
        found = await wait_until(whole_trace, timeout=10)
    except AssertionError:
        raise AssertionError("spans received:\n" + "\n".join(map(str, receiver.spans))) from None
    spans = receiver.trace(root.trace_id)
    assert root in ancestors(found["publish"], spans)
    assert found["consume"].parent_id == found["publish"].span_id  # across the broker, by traceparent
    assert found["consume"] in ancestors(found["query"], spans)
    assert not root.parent_id

    # The service's log lines for the command carry the trace id beside the request id.
    lines = [json.loads(line) for line in (traced.log_dir / "posts.log").read_text().splitlines() if request_id in line]
    decision = next(e for e in lines if e["message"] == "authorization decision")
    assert decision["trace_id"] == root.trace_id and decision["request_id"] == request_id


async def test_a_trace_header_on_a_command_grants_nothing_and_breaks_nothing(traced: Stack, broker: BrokerProbe, new_user) -> None:
    author: User = await new_user("trace-author")
    intruder: User = await new_user("trace-intruder")
    created = await broker.command("create-post", {"title": "t", "body": "b"}, token=author.token)
    assert created is not None and created["ok"] is True
    post_id = created["result"]["id"]
    garbage: list[object] = [12345, bytearray(b"\xff\xfe"), ["00-x"], {"a": 1}, True, 1.5, "not-a-traceparent"]
    for value in garbage:
        reply = await broker.command(
            "get-post", {"post_id": post_id}, headers={"traceparent": value, "tracestate": value, "baggage": value}
        )
        assert reply is not None and reply["ok"] is True, value
    # A well-formed trace header from someone else's trace is still only a trace header.
    reply = await broker.command(
        "delete-post",
        {"post_id": post_id},
        token=intruder.token,
        headers={"traceparent": f"00-{uuid4().hex}-{uuid4().hex[:16]}-01", "baggage": "role=admin,user=author"},
    )
    assert reply is not None and reply["error"]["status"] == 403


@pytest.mark.parametrize(
    ("env", "exporters"),
    [
        ({}, []),
        ({"OTEL_SERVICE_NAME": "x"}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console, otlp"}, ["console", "otlp"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, []),
    ],
)
@pytest.mark.unit
def test_tracing_is_off_unless_the_environment_asks_for_it(env: dict[str, str], exporters: list[str]) -> None:
    assert tracing_exporters(env) == exporters


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ),
    ],
)
@pytest.mark.unit
def test_an_exporter_that_is_not_installed_stops_the_process_naming_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigurationError, match=variable):
        tracing_exporters(env)

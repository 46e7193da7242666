"""A real OTLP/HTTP trace receiver on loopback: decodes each protobuf ExportTraceServiceRequest into span dicts."""

from __future__ import annotations

import argparse
import gzip
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

Span = dict[str, Any]


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {item.key: _value(item.value) for item in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


def decode(body: bytes) -> list[Span]:
    """Every span of one export, with its resource's service.name."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans: list[Span] = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append({
                    "service": resource.get("service.name"),
                    "scope": scope_spans.scope.name,
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex() or None,
                    "name": span.name,
                    "kind": span.kind,
                    "attributes": {a.key: _value(a.value) for a in span.attributes},
                    "events": [{"name": e.name, "attributes": {a.key: _value(a.value) for a in e.attributes}}
                               for e in span.events],
                    "links": [{"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex()} for link in span.links],
                    "status": span.status.code,
                    "start_ns": span.start_time_unix_nano,
                    "end_ns": span.end_time_unix_nano,
                })
    return spans


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, as collectors do: the exporters' session reuses its connection

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        """GET /stats: {spans, bytes, exports, services} so far (the bench reads it from another process)."""
        payload = json.dumps(self.server.receiver.stats()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
            self.send_response(404)
            self.end_headers()
            return
        self.server.receiver.add(body, decode(body))
        payload = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, receiver: OtlpReceiver, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.receiver = receiver


class OtlpReceiver:
    """Point OTEL_EXPORTER_OTLP_ENDPOINT at `endpoint`; read `spans` (decoded) and `raw` (the bodies as sent)."""

    def __init__(self, port: int = 0, *, keep: bool = True) -> None:
        self.spans: list[Span] = []
        self.raw: list[bytes] = []
        self.keep = keep  # False: count only (a long bench run)
        self.counts = {"spans": 0, "bytes": 0, "exports": 0}
        self.by_service: dict[str, int] = {}  # spans per service.name (the bench names one per stack)
        self._lock = threading.Lock()
        self._server = _Server(self, port)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="otlp-receiver", daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def add(self, body: bytes, spans: list[Span]) -> None:
        with self._lock:
            self.counts = {"spans": self.counts["spans"] + len(spans), "bytes": self.counts["bytes"] + len(body),
                           "exports": self.counts["exports"] + 1}
            for span in spans:
                self.by_service[str(span["service"])] = self.by_service.get(str(span["service"]), 0) + 1
            if self.keep:
                self.raw.append(body)
                self.spans.extend(spans)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {**self.counts, "services": dict(self.by_service)}

    def snapshot(self) -> list[Span]:
        with self._lock:
            return list(self.spans)

    def wait_for(self, condition: Callable[[list[Span]], bool], timeout: float = 20.0) -> list[Span]:
        """Poll the received spans until condition holds (exports are batched), or fail with what arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spans = self.snapshot()
            if condition(spans):
                return spans
            time.sleep(0.05)
        names = sorted({(s["service"], s["name"]) for s in self.snapshot()})
        raise AssertionError(f"receiver did not see the expected spans in {timeout}s; it saw {names}")

    def start(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


def main() -> None:
    """Serve on --port until killed, counting only (the tracing bench runs it as a process of its own)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, required=True)
    receiver = OtlpReceiver(parser.parse_args().port, keep=False)
    receiver._server.serve_forever(poll_interval=0.05)


if __name__ == "__main__":
    main()

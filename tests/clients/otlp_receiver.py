"""An OTLP/HTTP trace receiver for the trace tests: accepts `POST /v1/traces` with
`application/x-protobuf` bodies (an ExportTraceServiceRequest, gzip-encoded or not),
decodes them with the `opentelemetry-proto` package (the OpenTelemetry project's own
generated protobuf classes) and appends each span as one JSON line to --out:

  {"trace_id", "span_id", "parent_span_id" (hex; "" for a root), "name", "kind" (SERVER,
   CLIENT, PRODUCER, CONSUMER, INTERNAL), "attributes": {...}, "events": [{"name",
   "attributes"}], "links": [{"trace_id", "span_id", "attributes"}], "status": {"code"
   (UNSET, OK, ERROR), "message"}, "service_name" (the resource's service.name), "scope"}

usage: otlp_receiver.py --out FILE   (prints its port first, then serves until killed)
       otlp_receiver.py --out FILE --self-test
It answers as an OTLP collector does: 200 with an ExportTraceServiceResponse.
"""

import gzip
import json
import urllib.request

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

import jsonl_sink

PROTOBUF = "application/x-protobuf"


def any_value(value):
    """An AnyValue as the JSON value it holds."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return attributes(value.kvlist_value.values)
    if which == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, which)


def attributes(key_values):
    return {kv.key: any_value(kv.value) for kv in key_values}


def enum_name(enum, number, prefix):
    return enum.Name(number).removeprefix(prefix)


def spans(request):
    """Each span of an ExportTraceServiceRequest as a JSON record."""
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield {
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(),
                    "name": span.name,
                    "kind": enum_name(trace_pb2.Span.SpanKind, span.kind, "SPAN_KIND_"),
                    "attributes": attributes(span.attributes),
                    "events": [{"name": e.name, "attributes": attributes(e.attributes)} for e in span.events],
                    "links": [
                        {"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex(),
                         "attributes": attributes(link.attributes)}
                        for link in span.links
                    ],
                    "status": {
                        "code": enum_name(trace_pb2.Status.StatusCode, span.status.code, "STATUS_CODE_"),
                        "message": span.status.message,
                    },
                    "service_name": resource.get("service.name"),
                    "scope": scope_spans.scope.name,
                }


def handler(sink):
    class Receiver(jsonl_sink.Handler):
        def do_POST(self):
            body = jsonl_sink.read_body(self)
            if self.path != "/v1/traces":
                jsonl_sink.answer(self, 404, "text/plain", b"only /v1/traces\n")
                return
            if self.headers.get("Content-Type", "").split(";")[0].strip() != PROTOBUF:
                jsonl_sink.answer(self, 415, "text/plain", b"only application/x-protobuf\n")
                return
            if self.headers.get("Content-Encoding", "").lower() == "gzip":
                body = gzip.decompress(body)
            request = trace_service_pb2.ExportTraceServiceRequest()
            try:
                request.ParseFromString(body)
            except Exception as error:  # a body that is not the message: the exporter's bug
                jsonl_sink.answer(self, 400, "text/plain", f"undecodable: {error}\n".encode())
                return
            sink.write(list(spans(request)))
            response = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            jsonl_sink.answer(self, 200, PROTOBUF, response)

    return Receiver


def self_test(args):
    """Posts one span, encoded by hand with opentelemetry-proto, and reads it back."""
    server = jsonl_sink.start(handler(jsonl_sink.Sink(args.out)), args, announce=False)
    kv = lambda k, **v: common_pb2.KeyValue(key=k, value=common_pb2.AnyValue(**v))
    span = trace_pb2.Span(
        trace_id=bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736"),
        span_id=bytes.fromhex("00f067aa0ba902b7"),
        parent_span_id=bytes.fromhex("1111111111111111"),
        name="POST /score",
        kind=trace_pb2.Span.SPAN_KIND_SERVER,
        attributes=[kv("http.response.status_code", int_value=200), kv("http.route", string_value="/score")],
        events=[trace_pb2.Span.Event(name="exception", attributes=[kv("exception.type", string_value="simpleError")])],
        links=[trace_pb2.Span.Link(trace_id=bytes(16), span_id=bytes.fromhex("2222222222222222"))],
        status=trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_ERROR, message="boom"),
    )
    request = trace_service_pb2.ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.append(kv("service.name", string_value="self-test"))
    resource_spans.scope_spans.add().spans.append(span)
    url = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    body = gzip.compress(request.SerializeToString())
    post = urllib.request.Request(url, body, {"Content-Type": PROTOBUF, "Content-Encoding": "gzip"})
    with urllib.request.urlopen(post, timeout=10) as response:
        assert response.status == 200, response.status
        trace_service_pb2.ExportTraceServiceResponse().ParseFromString(response.read())
    server.shutdown()
    with open(args.out) as f:
        (record,) = [json.loads(line) for line in f]
    expected = {
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7",
        "parent_span_id": "1111111111111111", "name": "POST /score", "kind": "SERVER",
        "attributes": {"http.response.status_code": 200, "http.route": "/score"},
        "events": [{"name": "exception", "attributes": {"exception.type": "simpleError"}}],
        "links": [{"trace_id": "0" * 32, "span_id": "2222222222222222", "attributes": {}}],
        "status": {"code": "ERROR", "message": "boom"}, "service_name": "self-test", "scope": "",
    }
    assert record == expected, f"{record} != {expected}"
    print("otlp_receiver self-test: ok")


if __name__ == "__main__":
    jsonl_sink.main(__doc__, handler, self_test)

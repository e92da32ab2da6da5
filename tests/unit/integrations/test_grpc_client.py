"""grpcio clients (sync and grpc.aio) against a real grpcio server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures

import grpc
import grpc.aio
import pytest

from meshmetrics import classify_error
from meshmetrics.integrations.grpc import aio_interceptors, instance_of, interceptors
from meshmetrics.testing import CapturedMetrics, capture

SERVICE = "test.Echo"
STREAM_GAP_S = 0.1  # between streamed responses: a streaming call lasts at least 3 gaps


class Echo:
    """Byte-echo handlers; "unavailable" and "slow" requests misbehave on purpose."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.hits["Unary"] += 1
        if request == b"unavailable":
            context.abort(grpc.StatusCode.UNAVAILABLE, "draining")
        if request == b"slow":
            time.sleep(1.0)
        return request

    def server_stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self.hits["ServerStream"] += 1
        for i in range(3):
            time.sleep(STREAM_GAP_S)
            yield request + str(i).encode()

    def client_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        self.hits["ClientStream"] += 1
        return b"".join(requests)

    def bidi(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        self.hits["Bidi"] += 1
        for request in requests:
            time.sleep(STREAM_GAP_S)
            yield request


@pytest.fixture(scope="module")
def echo() -> Iterator[tuple[str, Echo]]:
    handlers = Echo()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Unary": grpc.unary_unary_rpc_method_handler(handlers.unary),
                    "ServerStream": grpc.unary_stream_rpc_method_handler(handlers.server_stream),
                    "ClientStream": grpc.stream_unary_rpc_method_handler(handlers.client_stream),
                    "Bidi": grpc.stream_stream_rpc_method_handler(handlers.bidi),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", handlers
    finally:
        server.stop(grace=None).wait(timeout=10)


@pytest.fixture
def refused_target() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def stubs(channel: grpc.Channel | grpc.aio.Channel):
    return (
        channel.unary_unary(f"/{SERVICE}/Unary"),
        channel.unary_stream(f"/{SERVICE}/ServerStream"),
        channel.stream_unary(f"/{SERVICE}/ClientStream"),
        channel.stream_stream(f"/{SERVICE}/Bidi"),
    )


def call_count(c: CapturedMetrics, method: str, outcome: str | None = None, **attributes: str) -> int:
    filters = {"operation": f"{SERVICE}/{method}", **attributes}
    if outcome:
        filters["outcome"] = outcome
    return c.histogram("mesh.call.duration", **filters).count


def assert_streaming_calls(c: CapturedMetrics) -> None:
    for method, gaps in (("ServerStream", 3), ("ClientStream", 0), ("Bidi", 2)):
        duration = c.histogram("mesh.call.duration", operation=f"{SERVICE}/{method}", outcome="success")
        assert duration.count == 1, method
        assert duration.sum >= gaps * STREAM_GAP_S, method  # the whole stream, not its first message
        assert c.value("mesh.calls.active", operation=f"{SERVICE}/{method}") == 0


def test_sync_interceptors_count_every_kind_and_status(echo, refused_target):
    target, handlers = echo
    before = Counter(handlers.hits)
    with capture() as c:
        channel = grpc.intercept_channel(grpc.insecure_channel(target), *interceptors(target, service="echo"))
        refused = grpc.intercept_channel(
            grpc.insecure_channel(refused_target), *interceptors(refused_target, service="echo")
        )
        with channel, refused:
            unary, server_stream, client_stream, bidi = stubs(channel)
            assert unary(b"hi", timeout=10) == b"hi"
            assert unary.future(b"hey", timeout=10).result() == b"hey"
            with pytest.raises(grpc.RpcError) as unavailable:
                unary(b"unavailable", timeout=10)
            assert unavailable.value.code() == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.RpcError) as deadline:
                unary(b"slow", timeout=0.2)
            assert deadline.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            with pytest.raises(grpc.RpcError) as no_connection:
                stubs(refused)[0](b"hi", timeout=10)
            assert no_connection.value.code() == grpc.StatusCode.UNAVAILABLE
            assert list(server_stream(b"s", timeout=10)) == [b"s0", b"s1", b"s2"]
            assert client_stream(iter([b"a", b"b"]), timeout=10) == b"ab"
            assert list(bidi(iter([b"x", b"y"]), timeout=10)) == [b"x", b"y"]
        # a done callback may run on gRPC's thread just after the result reached us
        deadline_at = time.monotonic() + 10
        while c.histogram("mesh.call.duration").count < 8 and time.monotonic() < deadline_at:
            time.sleep(0.01)
    assert handlers.hits - before == Counter({"Unary": 4, "ServerStream": 1, "ClientStream": 1, "Bidi": 1})
    assert c.histogram("mesh.call.duration").count == 8  # each call once, the refused one included
    assert call_count(c, "Unary", "success", service="echo") == 2
    assert call_count(c, "Unary", "failure", error_type="UNAVAILABLE") == 2
    assert call_count(c, "Unary", "failure", error_type="DEADLINE_EXCEEDED") == 1
    assert_streaming_calls(c)
    # per instance: the live one and the refused one
    assert c.value("mesh.lb.requests", service="echo", instance=target, strategy="round_robin") == 7
    assert c.value("mesh.lb.errors", instance=target, error_type="UNAVAILABLE") == 1
    assert c.value("mesh.lb.errors", instance=target, error_type="DEADLINE_EXCEEDED") == 1
    assert c.value("mesh.lb.errors", instance=target) == 2
    assert c.value("mesh.lb.requests", instance=refused_target) == 1
    assert c.value("mesh.lb.errors", instance=refused_target, error_type="UNAVAILABLE") == 1
    # only the refused connection is a connection failure, not the server's own UNAVAILABLE
    assert c.value("mesh.lb.connection.failures", instance=refused_target, error_type="UNAVAILABLE") == 1
    assert c.value("mesh.lb.connection.failures") == 1


def test_unregistered_methods_fold_to_other(echo):
    target, _ = echo
    with capture() as c:
        registered = [f"/{SERVICE}/Unary"]
        intercepted = interceptors(target, service="echo", registered_methods=registered)
        with grpc.intercept_channel(grpc.insecure_channel(target), *intercepted) as channel:
            unary, _, client_stream, _ = stubs(channel)
            unary(b"a", timeout=10)
            client_stream(iter([b"b"]), timeout=10)
    assert {s["mesh.operation"] for s in c.series("mesh.call.duration")} == {f"{SERVICE}/Unary", "other"}


def test_aio_interceptors(echo, refused_target):
    target, _ = echo

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(
            target, interceptors=aio_interceptors(target, service="echo")
        ) as channel:
            unary, server_stream, client_stream, bidi = stubs(channel)
            assert await unary(b"hi", timeout=10) == b"hi"
            with pytest.raises(grpc.aio.AioRpcError) as unavailable:
                await unary(b"unavailable", timeout=10)
            assert unavailable.value.code() == grpc.StatusCode.UNAVAILABLE
            assert [r async for r in server_stream(b"s", timeout=10)] == [b"s0", b"s1", b"s2"]
            assert await client_stream(iter([b"a", b"b"]), timeout=10) == b"ab"
            assert [r async for r in bidi(iter([b"x", b"y"]), timeout=10)] == [b"x", b"y"]
            # streaming calls are recorded by a task scheduled when they end
            deadline = time.monotonic() + 10
            while c.histogram("mesh.call.duration").count < 5 and time.monotonic() < deadline:  # noqa: ASYNC110 - polls a metric
                await asyncio.sleep(0.01)
        async with grpc.aio.insecure_channel(
            refused_target, interceptors=aio_interceptors(refused_target, service="echo")
        ) as refused:
            with pytest.raises(grpc.aio.AioRpcError):
                await stubs(refused)[0](b"hi", timeout=10)

    with capture() as c:
        asyncio.run(scenario())
    assert c.histogram("mesh.call.duration").count == 6
    assert call_count(c, "Unary", "success", service="echo") == 1
    assert call_count(c, "Unary", "failure", error_type="UNAVAILABLE") == 2
    assert_streaming_calls(c)
    assert c.value("mesh.lb.requests", instance=target) == 5
    assert c.value("mesh.lb.connection.failures", instance=refused_target, error_type="UNAVAILABLE") == 1
    assert c.value("mesh.lb.connection.failures") == 1


def test_channel_targets_name_the_instance():
    assert instance_of("dns:///users-1:50051") == "users-1:50051"
    assert instance_of("ipv4:10.0.0.7:50051") == "10.0.0.7:50051"
    assert instance_of("localhost:50051") == "localhost:50051"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (14, "UNAVAILABLE"),
        (0, "OK"),
        (4, "DEADLINE_EXCEEDED"),
        (16, "UNAUTHENTICATED"),
        (17, "_OTHER"),
        (-1, "_OTHER"),
        (503, "503"),
        (grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"),
        (grpc.RpcError(), "grpc.RpcError"),  # no status to tell: its type, as for any exception
    ],
)
def test_classify_error_knows_grpc_statuses(error, expected):
    assert classify_error(error) == expected


def test_classify_error_reads_the_status_of_a_real_rpc_error(echo):
    target, _ = echo
    with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as raised:
        stubs(channel)[0](b"unavailable", timeout=10)
    assert classify_error(raised.value) == "UNAVAILABLE"

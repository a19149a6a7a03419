"""Stream lifecycles: a client that leaves early, many streams at once, and a SIGTERM drain."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time

import openai
import pytest

from recording_upstream import chat_completion_body, chunked_response, full_response, sse_chunk
from support import MODEL, describe, make_async_client, make_client

pytestmark = pytest.mark.timeout(30)

USER = [{"role": "user", "content": "hello"}]


# ---------------------------------------------------------------------------------------------
# 5. Client disconnect closes the upstream connection
# ---------------------------------------------------------------------------------------------


def slow_stream(req):
    """An SSE answer that would take 30 s: one event every 100 ms, 300 events."""
    pieces = [sse_chunk(f"piece {i} ") for i in range(300)] + [sse_chunk(None, "stop"), b"data: [DONE]\n\n"]
    return chunked_response(pieces, interval=0.1)


def test_closing_the_stream_closes_the_upstream_connection(recording_client, recording_upstream):
    recording_upstream.handler = slow_stream
    stream = recording_client.chat.completions.create(model=MODEL, messages=USER, stream=True)
    first = next(iter(stream))
    assert first.choices[0].delta.content == "piece 0 "
    assert not recording_upstream.peer_closed_mid_response.is_set()
    closed_at = time.monotonic()
    stream.close()
    assert recording_upstream.peer_closed_mid_response.wait(2.0), (
        "the gateway kept the upstream connection open after the client closed its stream"
    )
    assert time.monotonic() - closed_at < 2.0
    assert not recording_upstream.response_completed.is_set()


def test_leaving_the_context_manager_closes_the_upstream_connection(recording_client, recording_upstream):
    recording_upstream.handler = slow_stream
    with recording_client.chat.completions.create(model=MODEL, messages=USER, stream=True) as stream:
        for chunk in stream:
            assert chunk.choices[0].delta.content == "piece 0 "
            break
    assert recording_upstream.peer_closed_mid_response.wait(2.0), (
        "the gateway kept the upstream connection open after the client left the stream"
    )


def test_async_client_disconnect_closes_the_upstream_connection(recording_gateway, recording_upstream):
    recording_upstream.handler = slow_stream

    async def run() -> None:
        c = make_async_client(recording_gateway.base_url)
        try:
            stream = await c.chat.completions.create(model=MODEL, messages=USER, stream=True)
            async for chunk in stream:
                assert chunk.choices[0].delta.content == "piece 0 "
                break
            await stream.close()
        finally:
            await c.close()

    asyncio.run(run())
    assert recording_upstream.peer_closed_mid_response.wait(2.0)


# ---------------------------------------------------------------------------------------------
# 7. Many concurrent streams
# ---------------------------------------------------------------------------------------------


def test_64_concurrent_streams_each_complete(gateway):
    n = 64

    async def one(c, i: int) -> tuple[int, str, list[str]]:
        stream = await c.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"concurrent stream number {i}"}],
            stream=True,
            extra_body={"mock": {"chunk_delay_ms": 5}},
        )
        text = ""
        finishes: list[str] = []
        async for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""
                if choice.finish_reason:
                    finishes.append(choice.finish_reason)
        return i, text, finishes

    async def run():
        c = make_async_client(gateway.base_url)
        try:
            return await asyncio.gather(*(one(c, i) for i in range(n)))
        finally:
            await c.close()

    results = asyncio.run(run())
    assert len(results) == n
    for i, text, finishes in results:
        assert text == describe(1, f"concurrent stream number {i}"), f"stream {i}"
        assert finishes == ["stop"], f"stream {i}"


# ---------------------------------------------------------------------------------------------
# 8. SIGTERM drains a live stream, then exits 0
# ---------------------------------------------------------------------------------------------


def connect_refused(port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(("127.0.0.1", port))
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        s.close()
    return False


def test_sigterm_drains_a_live_stream_then_exits_zero(start_gateway, start_mock):
    grace = 10
    mock = start_mock("--chunks", "20", "--chunk-delay-ms", "50")
    g = start_gateway(
        upstreams=[{"name": "mock", "base_url": mock.base_url}],
        models=[{"id": MODEL, "upstream": "mock"}],
        server={"shutdown_grace_secs": grace},
    )
    c = make_client(g.base_url)
    try:
        stream = c.chat.completions.create(model=MODEL, messages=USER, stream=True)
        it = iter(stream)
        first = next(it)
        assert first.choices[0].delta.role == "assistant"

        g.signal(signal.SIGTERM)

        # New connections are refused once the listener is gone. Poll, bounded; the pause
        # between tries waits on the gateway's log (it logs "draining" as it stops accepting).
        deadline = time.monotonic() + 5.0
        refused = False
        while time.monotonic() < deadline:
            if connect_refused(g.port):
                refused = True
                break
            g.wait_for_event(lambda ev: str(ev.get("message", "")).startswith("draining"), timeout=0.05)
        assert refused, f"the gateway still accepted connections 5 s after SIGTERM:\n{g.log_text()}"
        assert g.proc.poll() is None, "the gateway exited before the in-flight stream finished"

        deltas: list[str] = []
        finishes: list[str] = []
        for chunk in it:
            for choice in chunk.choices:
                if choice.delta.content:
                    deltas.append(choice.delta.content)
                if choice.finish_reason:
                    finishes.append(choice.finish_reason)
    finally:
        c.close()
    assert len(deltas) == 20, f"expected 20 content chunks after the drain began, got {len(deltas)}"
    assert "".join(deltas) == describe(1, "hello")
    assert finishes == ["stop"]
    code = g.proc.wait(timeout=grace)
    assert code == 0, f"exit code {code}:\n{g.log_text()}"


def test_client_giving_up_before_upstream_headers_closes_the_upstream_connection(
    recording_gateway, recording_upstream
):
    # The upstream holds its headers back for 20 s; the SDK gives up after 0.5 s. The gateway
    # must drop the upstream request then, not keep it open until the upstream answers.
    def late(req):
        reply = chunked_response([sse_chunk("late"), b"data: [DONE]\n\n"])
        reply.head_delay = 20.0
        return reply

    recording_upstream.handler = late
    c = make_client(recording_gateway.base_url, timeout=0.5)
    try:
        with pytest.raises(openai.APITimeoutError):
            c.chat.completions.create(model=MODEL, messages=USER, stream=True)
    finally:
        c.close()
    assert recording_upstream.request_received.is_set()
    assert recording_upstream.peer_closed_mid_response.wait(2.0), (
        "the gateway kept waiting on the upstream after its client went away"
    )


def test_sigterm_with_an_idle_keep_alive_connection_still_exits_promptly(start_gateway, mock_upstream):
    # An idle pooled connection must not hold the drain open until the grace period ends.
    grace = 15
    g = start_gateway(
        upstreams=[{"name": "mock", "base_url": mock_upstream.base_url}],
        models=[{"id": MODEL, "upstream": "mock"}],
        server={"shutdown_grace_secs": grace},
    )
    c = make_client(g.base_url)
    try:
        assert c.chat.completions.create(model=MODEL, messages=USER).choices[0].finish_reason == "stop"
        started = time.monotonic()
        g.signal(signal.SIGTERM)
        code = g.proc.wait(timeout=grace + 5)
        elapsed = time.monotonic() - started
    finally:
        c.close()
    assert code == 0, f"exit code {code}:\n{g.log_text()}"
    assert elapsed < 5.0, f"an idle keep-alive connection held the drain for {elapsed:.1f}s"


def test_sigterm_lets_an_in_flight_non_streaming_request_finish(start_gateway, recording_upstream):
    # The upstream holds its answer back for 0.8 s; SIGTERM arrives while the gateway waits.
    def delayed(req):
        reply = full_response(chat_completion_body("late but complete"))
        reply.head_delay = 0.8
        return reply

    recording_upstream.handler = delayed
    g = start_gateway(
        upstreams=[{"name": "recording", "base_url": recording_upstream.base_url}],
        models=[{"id": MODEL, "upstream": "recording"}],
        server={"shutdown_grace_secs": 10},
    )
    c = make_client(g.base_url)
    outcome: dict = {}

    def call() -> None:
        try:
            outcome["completion"] = c.chat.completions.create(model=MODEL, messages=USER)
        except Exception as e:  # reported below
            outcome["error"] = e

    t = threading.Thread(target=call)
    try:
        t.start()
        assert recording_upstream.request_received.wait(5.0), "the request never reached the upstream"
        g.signal(signal.SIGTERM)
        t.join(timeout=15)
    finally:
        c.close()
    assert "error" not in outcome, f"in-flight request failed during drain: {outcome.get('error')!r}"
    assert outcome["completion"].choices[0].message.content == "late but complete"
    assert g.proc.wait(timeout=10) == 0

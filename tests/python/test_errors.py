"""Failures as the SDK sees them: the gateway's own errors, upstream errors passed through,
and a stream cut by the upstream."""

from __future__ import annotations

import asyncio
import json
import time

import openai
import pytest

from recording_upstream import Reply, chunked_response, full_response, sse_chunk
from support import MODEL, describe, make_async_client, make_client

pytestmark = pytest.mark.timeout(30)

USER = [{"role": "user", "content": "hello"}]


def test_unreachable_upstream_is_502_upstream_unavailable_and_fast(start_gateway, closed_port):
    g = start_gateway(
        upstreams=[{"name": "gone", "base_url": f"http://127.0.0.1:{closed_port}/v1"}],
        models=[{"id": MODEL, "upstream": "gone"}],
    )
    c = make_client(g.base_url)
    try:
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as info:
            c.chat.completions.create(model=MODEL, messages=USER)
        elapsed = time.monotonic() - started
    finally:
        c.close()
    e = info.value
    assert isinstance(e, openai.APIStatusError)
    assert e.status_code == 502
    assert e.code == "upstream_unavailable"
    assert e.type == "server_error"
    assert e.response.headers.get("x-request-id")
    assert elapsed < 3.0, f"a refused connection should fail fast, took {elapsed:.2f}s"


def test_unreachable_upstream_stream_request_is_502(start_gateway, closed_port):
    g = start_gateway(
        upstreams=[{"name": "gone", "base_url": f"http://127.0.0.1:{closed_port}/v1"}],
        models=[{"id": MODEL, "upstream": "gone"}],
    )
    c = make_client(g.base_url)
    try:
        with pytest.raises(openai.InternalServerError) as info:
            c.chat.completions.create(model=MODEL, messages=USER, stream=True)
    finally:
        c.close()
    assert info.value.status_code == 502
    assert info.value.code == "upstream_unavailable"


def test_no_headers_within_first_byte_timeout_is_504(start_gateway, mock_upstream):
    g = start_gateway(
        upstreams=[{"name": "slow", "base_url": mock_upstream.base_url, "first_byte_timeout_ms": 300}],
        models=[{"id": MODEL, "upstream": "slow"}],
    )
    c = make_client(g.base_url)
    try:
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as info:
            c.chat.completions.create(model=MODEL, messages=USER, extra_body={"mock": {"delay_ms": 3000}})
        elapsed = time.monotonic() - started
    finally:
        c.close()
    e = info.value
    assert e.status_code == 504
    assert e.code == "upstream_timeout"
    assert e.type == "server_error"
    assert 0.25 <= elapsed < 2.5, f"expected the 300 ms first-byte timeout to fire, took {elapsed:.2f}s"


def test_upstream_500_passes_through(client):
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model=MODEL, messages=USER, extra_body={"mock": {"status": 500}})
    e = info.value
    assert e.status_code == 500
    assert json.loads(e.response.content) == {
        "error": {
            "message": "fault injected by the stand-in upstream",
            "type": "invalid_request_error",
            "param": None,
            "code": "mock_fault",
        }
    }
    assert e.code == "mock_fault"
    assert "fault injected by the stand-in upstream" in e.message
    # It is the upstream's answer, not one the gateway made up.
    assert "x-mock-request-sha256" in e.response.headers


def test_upstream_429_is_rate_limit_error_with_retry_after(client):
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model=MODEL, messages=USER, extra_body={"mock": {"status": 429}})
    e = info.value
    assert e.status_code == 429
    assert e.code == "mock_fault"
    assert e.response.headers["retry-after"] == "7"
    assert e.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_upstream_error_on_stream_request_raises_before_iteration(client):
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model=MODEL, messages=USER, stream=True, extra_body={"mock": {"status": 429}})
    assert info.value.response.headers["retry-after"] == "7"


def _drain(stream) -> tuple[list[str], list[str]]:
    received: list[str] = []
    finishes: list[str] = []
    for chunk in stream:
        for choice in chunk.choices:
            received.append(choice.delta.content or "")
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    return received, finishes


def test_mid_stream_cut_raises_api_error(client):
    # The built-in mock aborts its connection after 3 body frames. The stream must open (200
    # and the first events), and iterating must then raise rather than end quietly.
    stream = client.chat.completions.create(
        model=MODEL, messages=USER, stream=True, extra_body={"mock": {"cut_after_chunks": 3}}
    )
    try:
        with pytest.raises(openai.APIError) as info:
            _drain(stream)
    finally:
        stream.close()
    assert info.value.code == "upstream_unavailable"
    assert "truncated" in info.value.message


def test_mid_stream_cut_with_paced_mock_raises_api_error(client):
    # Same cut, with the mock pacing its events so the frames before the cut reach the wire.
    stream = client.chat.completions.create(
        model=MODEL,
        messages=USER,
        stream=True,
        extra_body={"mock": {"cut_after_chunks": 3, "chunk_delay_ms": 20}},
    )
    received: list[str] = []
    finishes: list[str] = []
    try:
        with pytest.raises(openai.APIError) as info:
            for chunk in stream:
                for choice in chunk.choices:
                    received.append(choice.delta.content or "")
                    if choice.finish_reason:
                        finishes.append(choice.finish_reason)
    finally:
        stream.close()
    e = info.value
    assert not isinstance(e, openai.APIStatusError), "the stream had started; this is an in-band error"
    assert e.code == "upstream_unavailable"
    assert e.type == "server_error"
    assert "truncated" in e.message
    assert finishes == [], "a cut stream must not look finished"
    # Events before the cut arrive in order. (How many of the 3 make it is up to the mock's
    # flushing before its abort; the gateway forwards whatever reaches it.)
    expected_prefix = ["", "This ", "is "]
    assert 1 <= len(received) <= 3 and received == expected_prefix[: len(received)]


def test_mid_stream_cut_by_raw_upstream_raises_api_error(recording_client, recording_upstream):
    def cut(req):
        reply = chunked_response([sse_chunk("first "), sse_chunk("second ")])
        reply.cut_after = True
        return reply

    recording_upstream.handler = cut
    stream = recording_client.chat.completions.create(model=MODEL, messages=USER, stream=True)
    received: list[str] = []
    try:
        with pytest.raises(openai.APIError) as info:
            for chunk in stream:
                received += [c.delta.content or "" for c in chunk.choices]
    finally:
        stream.close()
    assert received == ["first ", "second "]
    assert info.value.code == "upstream_unavailable"


def test_mid_stream_cut_raises_in_async_client(gateway):
    async def run() -> list[str]:
        c = make_async_client(gateway.base_url)
        seen: list[str] = []
        try:
            stream = await c.chat.completions.create(
                model=MODEL,
                messages=USER,
                stream=True,
                extra_body={"mock": {"cut_after_chunks": 3, "chunk_delay_ms": 20}},
            )
            try:
                async for chunk in stream:
                    seen += [c.delta.content or "" for c in chunk.choices]
            finally:
                await stream.close()
        finally:
            await c.close()
        return seen

    with pytest.raises(openai.APIError) as info:
        asyncio.run(run())
    assert not isinstance(info.value, openai.APIStatusError)
    assert info.value.code == "upstream_unavailable"


def test_cut_non_streaming_response_is_an_error_not_a_truncated_success(recording_client, recording_upstream):
    # Headers announce 400 bytes; 100 arrive; then the upstream closes. The gateway passes the
    # body through, so the SDK must see a broken response, never a parsed completion.
    def cut(req):
        body = b'{"id":"chatcmpl-cut","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"'
        reply = full_response(body + b"x" * (400 - len(body)))
        reply.pieces = [reply.pieces[0][:100]]
        reply.cut_after = True
        return reply

    recording_upstream.handler = cut
    with pytest.raises(openai.APIConnectionError):
        recording_client.chat.completions.create(model=MODEL, messages=USER)


def test_upstream_closing_without_a_response_is_502(recording_client, recording_upstream):
    recording_upstream.handler = lambda req: Reply(head=b"", close_after=True)
    with pytest.raises(openai.InternalServerError) as info:
        recording_client.chat.completions.create(model=MODEL, messages=USER)
    assert info.value.status_code == 502
    assert info.value.code == "upstream_unavailable"


def test_first_byte_timeout_does_not_limit_a_long_stream(start_gateway, mock_upstream):
    # Headers come at once; the body then takes ~1 s, far past the 300 ms first-byte timeout.
    g = start_gateway(
        upstreams=[{"name": "mock", "base_url": mock_upstream.base_url, "first_byte_timeout_ms": 300}],
        models=[{"id": MODEL, "upstream": "mock"}],
    )
    c = make_client(g.base_url)
    try:
        stream = c.chat.completions.create(
            model=MODEL, messages=USER, stream=True, extra_body={"mock": {"chunks": 10, "chunk_delay_ms": 100}}
        )
        chunks = list(stream)
    finally:
        c.close()
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == describe(1, "hello")
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_body_over_max_body_bytes_is_413(start_gateway, mock_upstream):
    g = start_gateway(
        upstreams=[{"name": "mock", "base_url": mock_upstream.base_url}],
        models=[{"id": MODEL, "upstream": "mock"}],
        server={"max_body_bytes": 2048},
    )
    c = make_client(g.base_url)
    try:
        with pytest.raises(openai.APIStatusError) as info:
            c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x" * 4096}])
        ok = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "small"}])
    finally:
        c.close()
    assert info.value.status_code == 413
    assert info.value.code == "request_too_large"
    assert ok.choices[0].finish_reason == "stop"


def test_mid_event_cut_raises_api_error(recording_client, recording_upstream):
    # The upstream dies in the middle of an SSE event (half a JSON object, no blank line).
    # The SDK must still raise openai.APIError (the gateway's in-band error), not a JSON
    # decoding error about the half-written event.
    def cut(req):
        whole = sse_chunk("first ")
        half = sse_chunk("second ")[:40]
        reply = chunked_response([whole, half])
        reply.cut_after = True
        return reply

    recording_upstream.handler = cut
    stream = recording_client.chat.completions.create(model=MODEL, messages=USER, stream=True)
    received: list[str] = []
    try:
        with pytest.raises(openai.APIError) as info:
            for chunk in stream:
                received += [c.delta.content or "" for c in chunk.choices]
    finally:
        stream.close()
    assert received == ["first "]
    assert info.value.code == "upstream_unavailable"


def test_empty_messages_is_bad_request_from_the_gateway(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[])
    assert info.value.code == "invalid_request"
    assert info.value.param == "messages"
    assert "x-mock-request-sha256" not in info.value.response.headers, "refused before the upstream"

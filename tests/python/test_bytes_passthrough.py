"""Bytes go through unchanged: request bodies upstream (only `model` may be rewritten), and
response bodies, headers and status back to the SDK."""

from __future__ import annotations

import base64
import json

import httpx2
import openai
import pytest

from recording_upstream import chunked_response, full_response
from support import API_KEY, MODEL, SDK_TIMEOUT, make_client, make_png, sha256_hex

pytestmark = pytest.mark.timeout(30)


# ---------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------


def test_sdk_request_bytes_forwarded_unchanged(recording_client, recording_upstream, sent):
    png = make_png(16, 9)
    recording_client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Réponds en français, s'il te plaît. 日本語も OK \u2603"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": 'quotes " and \\ backslashes and \u0000 nul'},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}},
                ],
            },
        ],
        seed=42,
        presence_penalty=0.0,
        extra_body={"vendor_extension": {"nested": [1, 2.5, None, True], "empty": {}}, "safe_prompt": False},
    )
    assert len(recording_upstream.requests) == 1
    got = recording_upstream.requests[0]
    assert got.body == sent.last
    assert got.header("content-length") == str(len(sent.last))
    assert got.header("content-type") == "application/json"
    assert got.json()["vendor_extension"] == {"nested": [1, 2.5, None, True], "empty": {}}


def test_hand_written_request_bytes_forwarded_unchanged(recording_gateway, recording_upstream):
    # Formatting that any re-serialisation would change: whitespace, key order, escapes,
    # number spellings, raw UTF-8, and a trailing newline.
    body = (
        b'{\n  "stream" :false,\t"messages": [ {"content":"caf\\u00e9 \\/ \xe2\x98\x83", "role":"user"} ],\n'
        b'  "temperature": 1.0E0, "top_p":0.50, "max_tokens" : 17,\n'
        b'  "model"   :   "pixtral-12b-2409" , "x": {"b":1,"a":[ ]}\n}\n'
    )
    json.loads(body)  # the body is valid JSON, just unusually written
    with httpx2.Client(trust_env=False, timeout=SDK_TIMEOUT) as http:
        r = http.post(
            recording_gateway.base_url + "/chat/completions",
            content=body,
            headers={"content-type": "application/json", "authorization": f"Bearer {API_KEY}"},
        )
    assert r.status_code == 200, r.text
    assert recording_upstream.requests[0].body == body


def test_upstream_model_rewrites_only_the_model_value(recording_client, recording_upstream, sent):
    recording_client.chat.completions.create(
        model="renamed-model",
        messages=[{"role": "user", "content": "which model am I talking to?"}],
        temperature=0.2,
        metadata={"note": "the model field above is the only thing that changes"},
    )
    client_bytes = sent.last
    assert client_bytes.count(b'"renamed-model"') == 1
    expected = client_bytes.replace(b'"renamed-model"', b'"upstream-name/v2"')
    got = recording_upstream.requests[0]
    assert got.body == expected
    assert got.json()["model"] == "upstream-name/v2"
    assert got.header("content-length") == str(len(expected))


def test_upstream_model_rewrite_keeps_odd_formatting_and_nested_model_keys(recording_gateway, recording_upstream):
    # An escaped spelling of the id, and a nested "model" key that must not be touched.
    body = (
        b'{"metadata": {"model": "renamed-model"},  "model" :  "renamed\\u002dmodel" ,\n'
        b' "messages":[{"role":"user","content":"hi"}], "n": 1}'
    )
    expected = (
        b'{"metadata": {"model": "renamed-model"},  "model" :  "upstream-name/v2" ,\n'
        b' "messages":[{"role":"user","content":"hi"}], "n": 1}'
    )
    with httpx2.Client(trust_env=False, timeout=SDK_TIMEOUT) as http:
        r = http.post(
            recording_gateway.base_url + "/chat/completions",
            content=body,
            headers={"content-type": "application/json"},
        )
    assert r.status_code == 200, r.text
    assert recording_upstream.requests[0].body == expected


def test_mock_sees_the_exact_bytes_and_client_key(sent, gateway):
    # The built-in mock reports SHA-256 digests of the body and Authorization it received.
    http_client = httpx2.Client(event_hooks={"request": [sent.hook]}, trust_env=False, timeout=SDK_TIMEOUT)
    c = make_client(gateway.base_url, http_client=http_client)
    try:
        raw = c.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "digest me"}], temperature=0.1
        )
    finally:
        c.close()
        http_client.close()
    assert raw.headers["x-mock-request-sha256"] == sha256_hex(sent.last)
    assert raw.headers["x-mock-authorization-sha256"] == sha256_hex(f"Bearer {API_KEY}".encode())


def test_upstream_key_replaces_the_client_key(start_gateway, mock_upstream):
    g = start_gateway(
        upstreams=[{"name": "mock", "base_url": mock_upstream.base_url, "api_key_env": "VG_TEST_UPSTREAM_KEY"}],
        models=[{"id": MODEL, "upstream": "mock"}],
        env={"VG_TEST_UPSTREAM_KEY": "sk-upstream-secret"},
    )
    c = make_client(g.base_url)
    try:
        raw = c.chat.completions.with_raw_response.create(model=MODEL, messages=[{"role": "user", "content": "key?"}])
    finally:
        c.close()
    assert raw.headers["x-mock-authorization-sha256"] == sha256_hex(b"Bearer sk-upstream-secret")


# ---------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------

KNOWN_JSON = (
    b'{"id":"chatcmpl-known-1",  "object":"chat.completion","created":1700000000,\n'
    b' "model":"pixtral-12b-2409","system_fingerprint":null,\n'
    b' "choices":[{"index":0,"message":{"role":"assistant","content":"caf\\u00e9 \xe2\x98\x95 \\"exact\\" bytes"},'
    b'"logprobs":null,"finish_reason":"stop"}],\n'
    b' "usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}  }\n'
)


def test_non_streaming_response_bytes_identical(recording_client, recording_upstream):
    recording_upstream.handler = lambda req: full_response(
        KNOWN_JSON,
        headers=[("x-request-id", "upstream-req-1"), ("x-custom-upstream", "kept"), ("openai-processing-ms", "42")],
    )
    raw = recording_client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "send me known bytes"}]
    )
    assert raw.http_response.status_code == 200
    assert raw.http_response.content == KNOWN_JSON
    assert raw.headers["x-custom-upstream"] == "kept"
    assert raw.headers["openai-processing-ms"] == "42"
    assert raw.headers["content-type"] == "application/json"
    assert raw.headers["x-upstream-request-id"] == "upstream-req-1"
    assert raw.headers["x-request-id"] != "upstream-req-1"
    completion = raw.parse()
    assert completion.choices[0].message.content == 'café ☕ "exact" bytes'


# SSE bytes with a comment, a space-less field, CRLF line ends, and a multi-byte character
# split across two HTTP chunks: a passthrough keeps all of it.
KNOWN_SSE_PIECES = [
    b": keep-alive comment\n\n",
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"pixtral-12b-2409",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n',
    b'data:{"id":"c1","object":"chat.completion.chunk","created":1,"model":"pixtral-12b-2409",'
    b'"choices":[{"index":0,"delta":{"content":"caf\xc3',
    b'\xa9 \\u2603"},"finish_reason":null}]}\r\n\r\n',
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"pixtral-12b-2409",'
    b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
    b"data: [DONE]\n\n",
]


def test_streaming_response_bytes_identical(recording_client, recording_upstream):
    recording_upstream.handler = lambda req: chunked_response(
        KNOWN_SSE_PIECES,
        headers=[("cache-control", "no-cache"), ("x-custom-upstream", "sse"), ("x-request-id", "upstream-sse-1")],
    )
    with recording_client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=[{"role": "user", "content": "stream known bytes"}], stream=True
    ) as response:
        assert response.http_response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["x-custom-upstream"] == "sse"
        assert response.headers["x-upstream-request-id"] == "upstream-sse-1"
        assert response.headers["x-request-id"] != "upstream-sse-1"
        received = b"".join(response.iter_bytes())
    assert received == b"".join(KNOWN_SSE_PIECES)


def test_streaming_known_bytes_parse_in_the_sdk(recording_client, recording_upstream):
    recording_upstream.handler = lambda req: chunked_response(KNOWN_SSE_PIECES)
    stream = recording_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "parse known bytes"}], stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "café \u2603"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_error_status_and_body_bytes_pass_through(recording_client, recording_upstream):
    body = b'{"error": {"message": "upstream says no", "type": "invalid_request_error", "param": "temperature", "code": "bad_temp"}}'
    recording_upstream.handler = lambda req: full_response(body, status=400, headers=[("x-custom-upstream", "err")])
    with pytest.raises(openai.BadRequestError) as info:
        recording_client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], temperature=5)
    e = info.value
    assert e.status_code == 400
    assert e.response.content == body
    assert e.code == "bad_temp"
    assert e.param == "temperature"
    assert e.response.headers["x-custom-upstream"] == "err"


def test_hop_by_hop_response_headers_are_dropped_and_others_kept(recording_client, recording_upstream):
    recording_upstream.handler = lambda req: full_response(
        KNOWN_JSON,
        headers=[
            ("connection", "x-hop-secret"),
            ("x-hop-secret", "connection-scoped"),
            ("keep-alive", "timeout=5"),
            ("x-end-to-end", "kept"),
        ],
    )
    raw = recording_client.chat.completions.with_raw_response.create(model=MODEL, messages=[{"role": "user", "content": "h"}])
    assert raw.http_response.content == KNOWN_JSON
    assert raw.headers.get("x-end-to-end") == "kept"
    assert "x-hop-secret" not in raw.headers
    assert "keep-alive" not in raw.headers


def test_request_headers_and_query_reach_the_upstream(recording_client, recording_upstream, sent):
    recording_client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "headers"}],
        extra_headers={"x-client-trace": "trace-123", "OpenAI-Organization": "org-test"},
        extra_query={"api-version": "2024-10-21"},
    )
    got = recording_upstream.requests[0]
    assert got.target == "/v1/chat/completions?api-version=2024-10-21"
    assert got.header("authorization") == f"Bearer {API_KEY}"
    assert got.header("x-client-trace") == "trace-123"
    assert got.header("openai-organization") == "org-test"
    assert got.header("host") == f"127.0.0.1:{recording_upstream.port}"
    assert got.header("content-length") == str(len(sent.last))
    assert got.header("transfer-encoding") is None


def test_base_url_path_prefix_is_kept(start_gateway, recording_upstream):
    g = start_gateway(
        upstreams=[{"name": "prefixed", "base_url": f"http://127.0.0.1:{recording_upstream.port}/custom/prefix/v1/"}],
        models=[{"id": MODEL, "upstream": "prefixed"}],
    )
    c = make_client(g.base_url)
    try:
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "prefix"}])
    finally:
        c.close()
    assert recording_upstream.requests[0].target == "/custom/prefix/v1/chat/completions"

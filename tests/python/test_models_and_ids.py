"""Model routing as the SDK sees it, and request ids on every response."""

from __future__ import annotations

import json
import re

import openai
import pytest

from support import MODEL, make_client

pytestmark = pytest.mark.timeout(30)

USER = [{"role": "user", "content": "hello"}]
GENERATED_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def test_unknown_model_is_not_found_error(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=USER)
    e = info.value
    assert e.status_code == 404
    assert e.code == "model_not_found"
    assert e.type == "invalid_request_error"
    assert e.param == "model"
    assert "no-such-model" in e.message
    body = json.loads(e.response.content)
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert e.response.headers["content-type"].startswith("application/json")


def test_unknown_model_on_a_stream_request_is_not_found_error(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=USER, stream=True)
    assert info.value.code == "model_not_found"


def test_models_list_returns_the_configured_ids(start_gateway, mock_upstream):
    g = start_gateway(
        upstreams=[{"name": "mock", "base_url": mock_upstream.base_url}],
        models=[
            {"id": MODEL, "upstream": "mock"},
            {"id": "*", "upstream": "mock"},
            {"id": "mistral-small-3.1", "upstream": "mock", "upstream_model": "mistral-small-3.1-24b"},
        ],
    )
    c = make_client(g.base_url)
    try:
        models = c.models.list()
        ids = [m.id for m in models]
        assert ids == [MODEL, "mistral-small-3.1"], "configured ids, in order, without '*'"
        for m in models.data:
            assert m.object == "model"
            assert m.owned_by == "mock"
        assert c.models.retrieve("mistral-small-3.1").id == "mistral-small-3.1"
        with pytest.raises(openai.NotFoundError) as info:
            c.models.retrieve("*")
        assert info.value.code == "model_not_found"
        # With a "*" entry, unlisted models are served (by the wildcard's upstream).
        completion = c.chat.completions.create(model="anything-else", messages=USER)
        assert completion.model == "anything-else"
    finally:
        c.close()


def test_x_request_id_on_success_responses(client):
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=USER)
    rid = raw.headers.get("x-request-id")
    assert rid and GENERATED_ID.match(rid)
    # The upstream's own id is kept under another name.
    assert raw.headers.get("x-upstream-request-id") == "mock-upstream-id"
    with client.chat.completions.with_streaming_response.create(model=MODEL, messages=USER, stream=True) as r:
        sid = r.headers.get("x-request-id")
        assert sid and GENERATED_ID.match(sid)
        assert sid != rid
        for _ in r.iter_bytes():
            pass
    listed = client.models.with_raw_response.list()
    assert listed.headers.get("x-request-id")


def test_x_request_id_on_error_responses(client, start_gateway, closed_port):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=USER)
    assert info.value.response.headers.get("x-request-id")
    assert info.value.request_id == info.value.response.headers.get("x-request-id")

    with pytest.raises(openai.InternalServerError) as info5:
        client.chat.completions.create(model=MODEL, messages=USER, extra_body={"mock": {"status": 500}})
    assert info5.value.response.headers.get("x-request-id")
    assert info5.value.response.headers.get("x-request-id") != "mock-upstream-id"

    g = start_gateway(
        upstreams=[{"name": "gone", "base_url": f"http://127.0.0.1:{closed_port}/v1"}],
        models=[{"id": MODEL, "upstream": "gone"}],
    )
    c = make_client(g.base_url)
    try:
        with pytest.raises(openai.InternalServerError) as info502:
            c.chat.completions.create(model=MODEL, messages=USER)
    finally:
        c.close()
    assert info502.value.response.headers.get("x-request-id")


def test_client_request_id_is_echoed_and_forwarded(recording_client, recording_upstream):
    sent_id = "compat-test.id:42_x-Y"
    raw = recording_client.chat.completions.with_raw_response.create(
        model=MODEL, messages=USER, extra_headers={"x-request-id": sent_id}
    )
    assert raw.headers["x-request-id"] == sent_id
    assert recording_upstream.requests[0].header("x-request-id") == sent_id


def test_generated_request_id_is_forwarded_upstream(recording_client, recording_upstream):
    raw = recording_client.chat.completions.with_raw_response.create(model=MODEL, messages=USER)
    rid = raw.headers["x-request-id"]
    assert GENERATED_ID.match(rid)
    assert recording_upstream.requests[0].header("x-request-id") == rid


def test_client_request_id_is_echoed_on_errors_too(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=USER, extra_headers={"x-request-id": "err-id-7"})
    assert info.value.response.headers["x-request-id"] == "err-id-7"


def test_unsafe_client_request_id_is_replaced(client):
    bad = "has spaces and \"quotes\""
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=USER, extra_headers={"x-request-id": bad})
    rid = raw.headers["x-request-id"]
    assert rid != bad
    assert GENERATED_ID.match(rid)
    too_long = "a" * 129
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=USER, extra_headers={"x-request-id": too_long})
    assert raw.headers["x-request-id"] != too_long

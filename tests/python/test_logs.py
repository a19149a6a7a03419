"""JSON logs: every line that belongs to a request carries its id, including lines written
while the response body streams, and a client's unsafe id never reaches the log."""

import openai
import pytest

from support import MODEL, make_client


def _request_lines(gw, request_id: str):
    """Waits for the request's access line, then returns every event logged from the first
    event of the request up to and including that line."""
    done = gw.wait_for_event(lambda e: e.get("request_id") == request_id and e.get("message") == "request", timeout=10)
    assert done is not None, gw.log_text()
    events = list(gw.events)
    first = next(i for i, e in enumerate(events) if e.get("span", {}).get("id") == request_id or e.get("request_id") == request_id)
    last = events.index(done)
    return events[first : last + 1]


@pytest.mark.timeout(30)
def test_every_line_of_a_failing_request_carries_its_id(start_gateway, closed_port):
    gw = start_gateway(upstreams=[{"name": "dead", "base_url": f"http://127.0.0.1:{closed_port}/v1"}], models=[{"id": "*", "upstream": "dead"}])
    client = make_client(gw.base_url)
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_headers={"x-request-id": "trace-me-42"})
    assert err.value.status_code == 502
    lines = _request_lines(gw, "trace-me-42")
    assert len(lines) >= 3, lines  # the upstream failure, the error, the access line
    for e in lines:
        assert e.get("span", {}).get("id") == "trace-me-42", e
    assert any(e.get("level") == "WARN" and e.get("upstream") == "dead" for e in lines)


@pytest.mark.timeout(30)
def test_lines_written_while_a_stream_is_cut_carry_the_id(start_gateway, mock_upstream):
    gw = start_gateway(upstreams=[{"name": "mock", "base_url": mock_upstream.base_url}], models=[{"id": "*", "upstream": "mock"}])
    client = make_client(gw.base_url)
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_body={"mock": {"cut_after_chunks": 2}},
            extra_headers={"x-request-id": "stream-cut-7"},
        ):
            pass
    lines = _request_lines(gw, "stream-cut-7")
    cut = [e for e in lines if e.get("message") == "upstream body cut mid-response"]
    assert cut, lines
    assert all(e.get("span", {}).get("id") == "stream-cut-7" for e in lines), lines


@pytest.mark.timeout(30)
def test_an_unsafe_client_id_never_reaches_the_log(gateway):
    client = make_client(gateway.base_url)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_headers={"x-request-id": "evil\tid\"}"}
    )
    given = raw.headers["x-request-id"]
    assert given.startswith("req_")
    lines = _request_lines(gateway, given)
    assert lines
    assert "evil" not in gateway.log_text()

"""Gateway keys, per-key models and rate limits, through the official OpenAI SDK.

Limits are per minute (GCRA): with `requests_per_minute = 3` a fourth request inside the same
minute is refused, and one request comes back every 20 s, so a test that finishes within
seconds sees exact counts. Shared limits run against a real `redis-server` (Debian's,
installed by scripts/install-deps.sh) on a loopback port of its own.
"""
from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from typing import Optional

import httpx2
import openai
import pytest

from images import data_uri, image_part, jpeg, user
from support import MODEL, SDK_TIMEOUT, sha256_hex

KEY_A = "sk-team-a-0123456789abcdef"
KEY_B = "sk-team-b-fedcba9876543210"
OTHER_MODEL = "mistral-small-3.1"


def client_for(g, key: str, **kw) -> openai.OpenAI:
    kw.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=g.base_url, api_key=key, timeout=SDK_TIMEOUT, **kw)


def ask(c: openai.OpenAI, model: str = MODEL, **kw):
    """One small chat completion; returns the raw response (headers and parsed body)."""
    kw.setdefault("messages", [{"role": "user", "content": "hello"}])
    return c.chat.completions.with_raw_response.create(model=model, **kw)


def seconds(go_duration: str) -> float:
    """Parses OpenAI's reset format ("1m0.5s", "59.947s", "12ms")."""
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:([\d.]+)s)?(?:(\d+)ms)?", go_duration)
    assert m and go_duration, go_duration
    h, mins, secs, ms = m.groups()
    return int(h or 0) * 3600 + int(mins or 0) * 60 + float(secs or 0) + int(ms or 0) / 1000


def error_of(exc: openai.APIStatusError) -> dict:
    body = exc.body
    assert isinstance(body, dict), exc
    return body


@pytest.fixture
def models(mock_upstream):
    return [{"id": MODEL, "upstream": "mock", "context_window": 128000}, {"id": OTHER_MODEL, "upstream": "mock"}]


@pytest.fixture
def upstreams(mock_upstream):
    return [{"name": "mock", "base_url": mock_upstream.base_url}]


# ---------------------------------------------------------------------------------------------
# Keys and permissions
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def keyed(start_gateway, upstreams, models):
    return start_gateway(
        upstreams,
        models,
        keys=[
            {"name": "team-a", "key_env": "TEAM_A_KEY", "models": [MODEL]},
            {"name": "team-b", "sha256": sha256_hex(KEY_B.encode())},
        ],
        env={"TEAM_A_KEY": KEY_A},
    )


def test_the_right_keys_are_accepted(keyed):
    for key in (KEY_A, KEY_B):
        r = ask(client_for(keyed, key))
        assert r.http_response.status_code == 200
        assert "hello" in (r.parse().choices[0].message.content or "")


@pytest.mark.parametrize(
    "key",
    [KEY_A[:-1], KEY_A + "0", KEY_A.upper(), "sk-" + "x" * 40],
    ids=["one-short", "one-long", "case", "unknown"],
)
def test_wrong_keys_are_authentication_errors(keyed, key):
    with pytest.raises(openai.AuthenticationError) as e:
        ask(client_for(keyed, key))
    err = error_of(e.value)
    assert err["code"] == "invalid_api_key"
    assert e.value.response.headers.get("x-request-id")
    # Never echoed, not even in part.
    assert KEY_A[:-1] not in e.value.response.text
    assert key not in e.value.response.text


def test_a_missing_key_is_an_authentication_error(keyed):
    r = httpx2.post(
        f"{keyed.base_url}/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        timeout=SDK_TIMEOUT,
    )
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert "Authorization: Bearer" in r.json()["error"]["message"]
    r = httpx2.get(f"{keyed.base_url}/models", timeout=SDK_TIMEOUT)
    assert r.status_code == 401


def test_a_model_outside_the_keys_list_is_permission_denied(keyed):
    with pytest.raises(openai.PermissionDeniedError) as e:
        ask(client_for(keyed, KEY_A), model=OTHER_MODEL)
    err = error_of(e.value)
    assert err["code"] == "model_not_permitted"
    assert err["param"] == "model"
    assert "team-a" in err["message"] and OTHER_MODEL in err["message"]
    # team-b has every model.
    assert ask(client_for(keyed, KEY_B), model=OTHER_MODEL).http_response.status_code == 200
    # An unknown model is still 404 for everyone.
    with pytest.raises(openai.NotFoundError):
        ask(client_for(keyed, KEY_A), model="no-such-model")


def test_models_lists_what_the_key_may_use(keyed):
    assert [m.id for m in client_for(keyed, KEY_A).models.list()] == [MODEL]
    assert [m.id for m in client_for(keyed, KEY_B).models.list()] == [MODEL, OTHER_MODEL]
    assert client_for(keyed, KEY_A).models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.PermissionDeniedError):
        client_for(keyed, KEY_A).models.retrieve(OTHER_MODEL)


def test_the_gateway_key_never_leaves_or_reaches_the_log(start_gateway, recording_upstream):
    g = start_gateway(
        [{"name": "rec", "base_url": recording_upstream.base_url}],
        [{"id": MODEL, "upstream": "rec"}],
        keys=[{"name": "team-a", "key_env": "TEAM_A_KEY"}],
        env={"TEAM_A_KEY": KEY_A, "RUST_LOG": "trace"},
    )
    ask(client_for(g, KEY_A))
    with pytest.raises(openai.AuthenticationError):
        ask(client_for(g, KEY_A + "x"))
    assert len(recording_upstream.requests) == 1
    sent = recording_upstream.requests[0]
    assert sent.header("authorization") is None, sent.head
    assert KEY_A.encode() not in sent.raw
    access = g.wait_for_event(lambda e: e.get("message") == "request" and e.get("status") == 200, timeout=10)
    assert access is not None and access.get("key") == "team-a", g.log_text()
    # The refused request's lines are logged before its access line: wait for that one.
    assert g.wait_for_event(lambda e: e.get("message") == "request" and e.get("status") == 401, timeout=10)
    everything = "\n".join(g.lines)
    assert any(e.get("level") == "DEBUG" for e in g.events), everything  # the most verbose log
    assert KEY_A not in everything


def test_the_upstream_gets_its_own_key_not_the_gateway_key(start_gateway, recording_upstream):
    g = start_gateway(
        [{"name": "rec", "base_url": recording_upstream.base_url, "api_key_env": "UPSTREAM_KEY"}],
        [{"id": MODEL, "upstream": "rec"}],
        keys=[{"name": "team-a", "key_env": "TEAM_A_KEY"}],
        env={"TEAM_A_KEY": KEY_A, "UPSTREAM_KEY": "sk-upstream-secret"},
    )
    ask(client_for(g, KEY_A))
    assert recording_upstream.requests[0].header_all("authorization") == ["Bearer sk-upstream-secret"]


# ---------------------------------------------------------------------------------------------
# Request limits
# ---------------------------------------------------------------------------------------------


def test_requests_per_minute_then_rate_limit_error_with_headers(start_gateway, upstreams, models):
    g = start_gateway(
        upstreams,
        models,
        keys=[{"name": "team-a", "key_env": "TEAM_A_KEY", "requests_per_minute": 3}],
        env={"TEAM_A_KEY": KEY_A},
    )
    c = client_for(g, KEY_A)
    for remaining in (2, 1, 0):
        r = ask(c)
        h = r.http_response.headers
        assert h["x-ratelimit-limit-requests"] == "3"
        assert h["x-ratelimit-remaining-requests"] == str(remaining)
        assert re.fullmatch(r"(\d+m)?\d+(\.\d+)?s|\d+ms", h["x-ratelimit-reset-requests"]), h
        assert "x-ratelimit-limit-tokens" not in h  # no token limit on this key
    with pytest.raises(openai.RateLimitError) as e:
        ask(c)
    h = e.value.response.headers
    err = error_of(e.value)
    assert err["code"] == "rate_limit_exceeded" and err["type"] == "requests"
    assert "3 requests per minute" in err["message"]
    # One request comes back every 20 s: the wait is just under it, rounded up.
    assert h["retry-after"] == "20", h
    assert 19_000 < int(h["retry-after-ms"]) <= 20_000, h
    assert h["x-ratelimit-remaining-requests"] == "0"
    # Whole again once the wait is over and the other two have come back (20 s each).
    reset = seconds(h["x-ratelimit-reset-requests"])
    assert 40 + int(h["retry-after-ms"]) / 1000 - 0.002 <= reset <= 60, h


def test_every_response_to_a_limited_key_carries_both_trios(start_gateway, upstreams, models):
    g = start_gateway(
        upstreams,
        models,
        keys=[
            {
                "name": "team-a",
                "key_env": "TEAM_A_KEY",
                "models": [MODEL],
                "requests_per_minute": 10,
                "tokens_per_minute": 50000,
            }
        ],
        env={"TEAM_A_KEY": KEY_A},
    )
    c = client_for(g, KEY_A)
    ok = ask(c, max_tokens=1000).http_response.headers
    spent = 50000 - int(ok["x-ratelimit-remaining-tokens"])
    assert spent > 1000 and ok["x-ratelimit-remaining-requests"] == "9"
    # Refused before the token check (403), a route that charges nothing (/v1/models), and a
    # 400: each still tells the key where it stands, and nothing more was charged.
    with pytest.raises(openai.PermissionDeniedError) as e:
        ask(c, model=OTHER_MODEL)
    responses = [e.value.response.headers]
    responses.append(c.models.with_raw_response.list().http_response.headers)
    with pytest.raises(openai.BadRequestError) as e:
        ask(c, messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}])
    responses.append(e.value.response.headers)
    for h in responses:
        assert h["x-ratelimit-limit-requests"] == "10" and h["x-ratelimit-limit-tokens"] == "50000", h
        # Tokens come back at 1.2 ms each while the test runs: never more spent than before.
        assert 50000 - spent <= int(h["x-ratelimit-remaining-tokens"]) <= 50000, (h, spent)
    assert [h["x-ratelimit-remaining-requests"] for h in responses] == ["8", "8", "7"]


def test_an_upstream_429_keeps_its_own_headers(start_gateway, upstreams, models):
    g = start_gateway(
        upstreams,
        models,
        keys=[{"name": "team-a", "key_env": "TEAM_A_KEY", "requests_per_minute": 5}],
        env={"TEAM_A_KEY": KEY_A},
    )
    with pytest.raises(openai.RateLimitError) as e:
        ask(client_for(g, KEY_A), extra_body={"mock": {"status": 429}})
    h = e.value.response.headers
    assert error_of(e.value)["code"] == "mock_fault"  # the upstream's body
    assert h["retry-after"] == "7" and h["x-ratelimit-remaining-requests"] == "0", h
    assert "x-ratelimit-limit-requests" not in h, h


def test_the_providers_figures_never_mix_with_the_keys(start_gateway, recording_upstream):
    from recording_upstream import default_handler

    def with_provider_headers(req):
        reply = default_handler(req)
        reply.head = reply.head.replace(
            b"\r\n\r\n",
            b"\r\nx-ratelimit-limit-tokens: 30000000\r\nx-ratelimit-remaining-tokens: 29999000\r\n"
            b"x-ratelimit-limit-requests: 10000\r\n\r\n",
            1,
        )
        return reply

    recording_upstream.handler = with_provider_headers
    g = start_gateway(
        [{"name": "rec", "base_url": recording_upstream.base_url}],
        [{"id": MODEL, "upstream": "rec"}],
        keys=[
            {"name": "limited", "key_env": "TEAM_A_KEY", "requests_per_minute": 5},
            {"name": "unlimited", "key_env": "TEAM_B_KEY"},
        ],
        env={"TEAM_A_KEY": KEY_A, "TEAM_B_KEY": KEY_B},
    )
    h = ask(client_for(g, KEY_A)).http_response.headers
    # The key limits requests only: its trio, and nothing of the provider account's.
    assert h["x-ratelimit-limit-requests"] == "5", h
    assert "x-ratelimit-limit-tokens" not in h and "x-ratelimit-remaining-tokens" not in h, h
    # A key without limits sees the upstream's headers as they came.
    h = ask(client_for(g, KEY_B)).http_response.headers
    assert h["x-ratelimit-limit-tokens"] == "30000000" and h["x-ratelimit-limit-requests"] == "10000", h


def test_the_sdk_waits_for_retry_after_and_does_not_retry_a_request_that_never_fits(
    start_gateway, upstreams, models
):
    g = start_gateway(
        upstreams,
        models,
        keys=[{"name": "team-a", "key_env": "TEAM_A_KEY", "tokens_per_minute": 500}],
        env={"TEAM_A_KEY": KEY_A},
    )
    sent: list[str] = []
    http = httpx2.Client(event_hooks={"request": [lambda r: sent.append(str(r.url))]}, trust_env=False)
    c = client_for(g, KEY_A, max_retries=2, http_client=http)
    with pytest.raises(openai.RateLimitError) as e:
        ask(c, max_tokens=1000)
    assert e.value.response.headers["x-should-retry"] == "false"
    err = error_of(e.value)
    assert err["type"] == "tokens" and "can never fit" in err["message"], err
    assert len(sent) == 1, sent  # the SDK obeyed x-should-retry: false


def test_keys_are_isolated(start_gateway, upstreams, models):
    g = start_gateway(
        upstreams,
        models,
        keys=[
            {"name": "team-a", "key_env": "TEAM_A_KEY", "requests_per_minute": 2},
            {"name": "team-b", "key_env": "TEAM_B_KEY", "requests_per_minute": 2},
        ],
        env={"TEAM_A_KEY": KEY_A, "TEAM_B_KEY": KEY_B},
    )
    a, b = client_for(g, KEY_A), client_for(g, KEY_B)
    ask(a), ask(a)
    with pytest.raises(openai.RateLimitError):
        ask(a)
    for remaining in ("1", "0"):
        assert ask(b).http_response.headers["x-ratelimit-remaining-requests"] == remaining
    with pytest.raises(openai.RateLimitError):
        ask(b)


# ---------------------------------------------------------------------------------------------
# Token limits, charged with image tokens after downscaling
# ---------------------------------------------------------------------------------------------


def test_token_limits_count_images_at_the_size_sent(start_gateway, upstreams, models):
    g = start_gateway(
        upstreams,
        models,
        keys=[{"name": "team-a", "key_env": "TEAM_A_KEY", "tokens_per_minute": 10000}],
        env={"TEAM_A_KEY": KEY_A},
    )
    big = data_uri(jpeg(2048, 2048))  # 16,512 tokens as sent by the client; 4,160 once at 1024x1024
    body = {"model": MODEL, "messages": user(image_part(big), image_part(big)), "max_tokens": 100}
    report = httpx2.post(
        f"{g.url}/gateway/inspect", json=body, headers={"authorization": f"Bearer {KEY_A}"}, timeout=SDK_TIMEOUT
    ).json()
    cost = report["tokens"]["total"]
    assert report["tokens"]["images"] == 2 * 4160, report
    assert 8420 <= cost < 10000, report

    c = client_for(g, KEY_A)
    r = c.chat.completions.with_raw_response.create(**body)
    h = r.http_response.headers
    assert h["x-ratelimit-limit-tokens"] == "10000"
    assert h["x-ratelimit-remaining-tokens"] == str(10000 - cost), (h, cost)
    # /gateway/inspect charged nothing; a second such request does not fit yet.
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(**body)
    err = error_of(e.value)
    assert err["type"] == "tokens" and "10000 tokens per minute" in err["message"], err
    h = e.value.response.headers
    assert h.get("x-should-retry") is None
    # What is missing comes back at 6 ms a token.
    missing = cost - (10000 - cost)
    # (less the time between the two checks, which earned some back)
    assert missing * 6 - 2000 <= int(h["retry-after-ms"]) <= missing * 6, (h, missing)
    assert int(h["retry-after"]) == -(-int(h["retry-after-ms"]) // 1000)
    # Three such images can never fit in 10,000 a minute.
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(
            model=MODEL, messages=user(image_part(big), image_part(big), image_part(big)), max_tokens=100
        )
    assert e.value.response.headers["x-should-retry"] == "false"


# ---------------------------------------------------------------------------------------------
# In-flight caps
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def slow_upstream(start_mock):
    # 100 chunks 100 ms apart: a stream that stays open for 10 s unless closed.
    return start_mock("--chunks", "100", "--chunk-delay-ms", "100")


def _open_stream(c: openai.OpenAI):
    stream = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True)
    next(iter(stream))  # the response has begun: the request is in flight
    return stream


def _wait_closed(g, n: int) -> None:
    seen: list[dict] = []

    def done(e: dict) -> bool:
        if e.get("message") == "request" and e.get("complete") is False:
            seen.append(e)
        return len(seen) >= n

    assert g.wait_for_event(done, timeout=10), g.log_text()


def test_overload_is_503_with_retry_after_and_no_queue(start_gateway, slow_upstream):
    g = start_gateway(
        [{"name": "mock", "base_url": slow_upstream.base_url}],
        [{"id": MODEL, "upstream": "mock"}],
        server={"max_concurrent_requests": 2},
    )
    c = client_for(g, "sk-any")
    streams = [_open_stream(c), _open_stream(c)]
    with pytest.raises(openai.InternalServerError) as e:
        ask(c)
    assert e.value.status_code == 503
    assert error_of(e.value)["code"] == "overloaded"
    assert e.value.response.headers["retry-after"] == "1"
    # Health and readiness are not admission-controlled.
    assert httpx2.get(f"{g.url}/healthz", timeout=5).status_code == 200
    assert httpx2.get(f"{g.url}/readyz", timeout=5).status_code == 200
    for s in streams:
        s.close()
    _wait_closed(g, 2)
    assert ask(c).http_response.status_code == 200


def test_a_keys_max_concurrent_is_429(start_gateway, slow_upstream):
    g = start_gateway(
        [{"name": "mock", "base_url": slow_upstream.base_url}],
        [{"id": MODEL, "upstream": "mock"}],
        keys=[
            {"name": "team-a", "key_env": "TEAM_A_KEY", "max_concurrent": 1},
            {"name": "team-b", "key_env": "TEAM_B_KEY"},
        ],
        env={"TEAM_A_KEY": KEY_A, "TEAM_B_KEY": KEY_B},
    )
    a = client_for(g, KEY_A)
    stream = _open_stream(a)
    with pytest.raises(openai.RateLimitError) as e:
        ask(a)
    assert "max_concurrent" in error_of(e.value)["message"]
    assert ask(client_for(g, KEY_B)).http_response.status_code == 200  # another key is not held up
    stream.close()
    _wait_closed(g, 1)
    assert ask(a).http_response.status_code == 200


# ---------------------------------------------------------------------------------------------
# Shared limits in Redis
# ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Redis:
    """A real redis-server on a loopback port, without persistence."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is missing: run scripts/install-deps.sh test"
        self.binary = binary
        self.port = _free_port()
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "Redis":
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # its own "Ready to accept connections" line
            if b"Ready to accept connections" in line:
                break
        else:
            raise RuntimeError("redis-server exited before it was ready")
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def command(self, *args: str) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            parts = [f"*{len(args)}\r\n".encode()] + [f"${len(a)}\r\n{a}\r\n".encode() for a in args]
            s.sendall(b"".join(parts))
            return s.recv(65536)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"


@pytest.fixture
def redis():
    r = Redis().start()
    yield r
    r.kill()


def _limited_gateway(start_gateway, upstreams, models, redis, on_error: str = "allow", rpm: int = 5):
    return start_gateway(
        upstreams,
        models,
        keys=[{"name": "team-a", "key_env": "TEAM_A_KEY", "requests_per_minute": rpm}],
        rate_limits={"backend": "redis", "redis_url": redis.url, "on_backend_error": on_error},
        env={"TEAM_A_KEY": KEY_A},
    )


@pytest.mark.parametrize("rpm", [5, 7], ids=["5rpm", "7rpm-fractional-interval"])
def test_two_gateways_share_one_redis_limit_exactly(start_gateway, upstreams, models, redis, rpm):
    g1 = _limited_gateway(start_gateway, upstreams, models, redis, rpm=rpm)
    g2 = _limited_gateway(start_gateway, upstreams, models, redis, rpm=rpm)
    c1, c2 = client_for(g1, KEY_A), client_for(g2, KEY_A)
    seen = []
    for i in range(rpm):
        r = ask((c1, c2)[i % 2])
        seen.append(r.http_response.headers["x-ratelimit-remaining-requests"])
    assert seen == [str(n) for n in range(rpm - 1, -1, -1)]
    for c in (c1, c2):
        with pytest.raises(openai.RateLimitError) as e:
            ask(c)
        # One request comes back every 60/rpm s.
        assert e.value.response.headers["retry-after"] == str(-(-60 // rpm))
        reset = seconds(e.value.response.headers["x-ratelimit-reset-requests"])
        assert 60 - 2 <= reset <= 60, e.value.response.headers
    assert b"vision-gateway:requests:team-a" in redis.command("KEYS", "*")


def _backend_errors(g) -> float:
    text = httpx2.get(f"{g.url}/metrics", timeout=5).text
    m = re.search(r"^vision_gateway_rate_limit_backend_errors_total (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _wait_access_lines(g, n: int) -> None:
    """Waits until `n` chat requests have their access line (metrics are recorded with it)."""
    seen: list[dict] = []

    def done(e: dict) -> bool:
        if e.get("message") == "request" and e.get("path") == "/v1/chat/completions":
            seen.append(e)
        return len(seen) >= n

    assert g.wait_for_event(done, timeout=10), g.log_text()


def _outage_lines(g) -> int:
    return sum("rate-limit backend (Redis) unreachable" in str(e.get("message", "")) for e in list(g.events))


def test_redis_outage_with_allow_lets_requests_through_and_recovers(start_gateway, upstreams, models, redis):
    g = _limited_gateway(start_gateway, upstreams, models, redis, "allow", rpm=3)
    c = client_for(g, KEY_A)
    assert ask(c).http_response.headers["x-ratelimit-remaining-requests"] == "2"
    redis.kill()
    for _ in range(5):  # more than the limit: allowed, not counted
        r = ask(c)
        assert r.http_response.status_code == 200
        assert "x-ratelimit-remaining-requests" not in r.http_response.headers
    _wait_access_lines(g, 6)
    assert _backend_errors(g) == 5
    assert _outage_lines(g) == 1, g.log_text()  # once per outage, not once per request
    redis.start()  # same port, empty: the limit starts afresh
    remaining = None
    for _ in range(100):
        r = ask(c)
        remaining = r.http_response.headers.get("x-ratelimit-remaining-requests")
        if remaining is not None:
            break
        # Polling: the connection manager reconnects in the background (backoff up to 1 s)
        # and nothing outside the gateway announces it.
        time.sleep(0.05)
    assert remaining == "2", g.log_text()
    assert any("answers again" in str(e.get("message", "")) for e in g.events), g.log_text()
    ask(c), ask(c)
    with pytest.raises(openai.RateLimitError):
        ask(c)


def test_redis_outage_with_deny_refuses_and_recovers(start_gateway, upstreams, models, redis):
    g = _limited_gateway(start_gateway, upstreams, models, redis, "deny", rpm=3)
    c = client_for(g, KEY_A)
    assert ask(c).http_response.status_code == 200
    redis.kill()
    for _ in range(3):
        with pytest.raises(openai.InternalServerError) as e:
            ask(c)
        assert e.value.status_code == 503
        assert error_of(e.value)["code"] == "overloaded"
        assert "rate-limit backend" in error_of(e.value)["message"]
    _wait_access_lines(g, 4)
    assert _outage_lines(g) == 1, g.log_text()
    redis.start()
    status = None
    for _ in range(50):
        try:
            status = ask(c).http_response.status_code
            break
        except openai.InternalServerError:
            time.sleep(0.05)  # polling for the background reconnect, as above
    assert status == 200, g.log_text()

"""Fixtures for the OpenAI SDK compatibility suite.

The gateway and the built-in stand-in upstream run as real subprocesses of the binary named by
VISION_GATEWAY_BIN (default: <repo>/target/debug/vision-gateway; the tests never build it).
Each is started with `--listen 127.0.0.1:0` and JSON logs; its port is read from the
"listening" event on stderr, which is the only start-up synchronisation. A thread keeps
draining stderr afterwards (so a chatty process never blocks on a full pipe) and keeps every
line, for failure reports and for tests that wait on a log event. Every process started here
is killed at teardown.

Everything listens on and connects to 127.0.0.1 only.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Iterable, Optional

import httpx2
import pytest

from recording_upstream import RecordingUpstream
from support import (
    GATEWAY_BIN,
    GATEWAY_READY,
    MOCK_READY,
    MODEL,
    SDK_TIMEOUT,
    Gateway,
    MockUpstream,
    SentBodies,
    make_client,
    render_config,
    require_binary,
)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    # Keeps each phase's report on the test item, so fixtures can print logs on failure.
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


def _failed(request) -> bool:
    rep = getattr(request.node, "rep_call", None)
    return rep is None or rep.failed


@pytest.fixture(scope="session")
def gateway_bin() -> Path:
    require_binary()
    return GATEWAY_BIN


@pytest.fixture(scope="session")
def mock_upstream(gateway_bin: Path):
    """The built-in stand-in upstream, shared by the session (it keeps no state that matters)."""
    p = MockUpstream([str(gateway_bin), "mock-upstream", "--listen", "127.0.0.1:0"], MOCK_READY, "mock-upstream")
    try:
        p.wait_ready()
        yield p
    finally:
        p.kill()


@pytest.fixture
def start_mock(gateway_bin: Path):
    """Starts a dedicated `vision-gateway mock-upstream` with extra flags; killed at teardown."""
    started: list[MockUpstream] = []

    def start(*flags: str) -> MockUpstream:
        p = MockUpstream(
            [str(gateway_bin), "mock-upstream", "--listen", "127.0.0.1:0", *flags], MOCK_READY, "mock-upstream"
        )
        started.append(p)
        p.wait_ready()
        return p

    yield start
    for p in started:
        p.kill()


@pytest.fixture
def start_gateway(gateway_bin: Path, tmp_path: Path, request):
    """Writes a config file and starts a gateway on it. Every gateway started is killed at teardown."""
    started: list[Gateway] = []

    def start(
        upstreams: Iterable[dict[str, Any]],
        models: Iterable[dict[str, Any]],
        server: Optional[dict[str, Any]] = None,
        env: Optional[dict[str, str]] = None,
        images: Optional[dict[str, Any]] = None,
        keys: Iterable[dict[str, Any]] = (),
        rate_limits: Optional[dict[str, Any]] = None,
    ) -> Gateway:
        cfg = tmp_path / f"gateway-{len(started)}.toml"
        cfg.write_text(render_config(upstreams, models, server, images, keys, rate_limits))
        g = Gateway(
            [str(gateway_bin), "--config", str(cfg), "--listen", "127.0.0.1:0"],
            GATEWAY_READY,
            "vision-gateway",
            env=env,
        )
        started.append(g)
        g.wait_ready()
        return g

    yield start
    for g in started:
        g.kill()
        if _failed(request):
            print(f"--- {g.name} stderr ({' '.join(g.args)}), exit {g.proc.returncode} ---\n{g.log_text()}")


@pytest.fixture
def gateway(start_gateway, mock_upstream: MockUpstream) -> Gateway:
    """A gateway serving MODEL and a second listed model from the built-in mock."""
    return start_gateway(
        upstreams=[{"name": "mock", "base_url": mock_upstream.base_url}],
        models=[
            {"id": MODEL, "upstream": "mock"},
            {"id": "mistral-small-3.1", "upstream": "mock"},
        ],
    )


@pytest.fixture
def client(gateway: Gateway):
    c = make_client(gateway.base_url)
    yield c
    c.close()


@pytest.fixture
def recording_upstream():
    up = RecordingUpstream().start()
    try:
        yield up
    finally:
        up.close()


@pytest.fixture
def recording_gateway(start_gateway, recording_upstream: RecordingUpstream) -> Gateway:
    """A gateway serving MODEL, and `renamed-model` (sent upstream as `upstream-name/v2`), from
    the recording upstream."""
    return start_gateway(
        upstreams=[{"name": "recording", "base_url": recording_upstream.base_url}],
        models=[
            {"id": MODEL, "upstream": "recording"},
            {"id": "renamed-model", "upstream": "recording", "upstream_model": "upstream-name/v2"},
        ],
    )


@pytest.fixture
def sent() -> SentBodies:
    return SentBodies()


@pytest.fixture
def recording_client(recording_gateway: Gateway, sent: SentBodies):
    """An SDK client for the recording gateway; its httpx client records the bytes it sends."""
    http_client = httpx2.Client(event_hooks={"request": [sent.hook]}, trust_env=False, timeout=SDK_TIMEOUT)
    c = make_client(recording_gateway.base_url, http_client=http_client)
    yield c
    c.close()
    http_client.close()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on: bound, noted, closed."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port

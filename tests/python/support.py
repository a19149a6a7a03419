"""Shared helpers of the OpenAI SDK compatibility suite: subprocess management with JSON-log
synchronisation, config rendering, SDK client construction, and expected-answer helpers.

Everything listens on and connects to 127.0.0.1 only.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import httpx2
import openai
import pytest


REPO = Path(__file__).resolve().parents[2]
GATEWAY_BIN = Path(os.environ.get("VISION_GATEWAY_BIN", str(REPO / "target" / "debug" / "vision-gateway")))

GATEWAY_READY = "vision-gateway listening"
MOCK_READY = "stand-in upstream listening (not a model)"
START_TIMEOUT = 20.0

MODEL = "pixtral-12b-2409"
API_KEY = "sk-test"
SDK_TIMEOUT = 20.0

# Loopback must never go through a proxy from the environment.
for _var in ("NO_PROXY", "no_proxy"):
    _cur = os.environ.get(_var, "")
    os.environ[_var] = ",".join(x for x in (_cur, "127.0.0.1", "localhost") if x)


# ---------------------------------------------------------------------------------------------
# Subprocesses
# ---------------------------------------------------------------------------------------------


class LoggedProcess:
    """A subprocess whose stderr is JSON lines, read until its "listening" event."""

    def __init__(self, args: list[str], ready_message: str, name: str, env: Optional[dict[str, str]] = None):
        self.name = name
        self.args = args
        self.ready_message = ready_message
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.addr: Optional[str] = None
        self._settled = threading.Event()  # listening event seen, or stderr closed
        self._cond = threading.Condition()
        full_env = dict(os.environ)
        for k in ("VISION_GATEWAY_CONFIG", "VISION_GATEWAY_LISTEN", "RUST_LOG"):
            full_env.pop(k, None)
        full_env["VISION_GATEWAY_LOG_FORMAT"] = "json"
        if env:
            full_env.update(env)
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=full_env,
        )
        self._reader = threading.Thread(target=self._read_stderr, name=f"{name}-stderr", daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            try:
                event = json.loads(line)
            except ValueError:
                event = {"message": line}
            with self._cond:
                self.lines.append(line)
                if isinstance(event, dict):
                    self.events.append(event)
                    if self.addr is None and event.get("message") == self.ready_message and "addr" in event:
                        self.addr = str(event["addr"])
                        self._settled.set()
                self._cond.notify_all()
        self._settled.set()
        with self._cond:
            self._cond.notify_all()

    def wait_ready(self, timeout: float = START_TIMEOUT) -> str:
        if not self._settled.wait(timeout):
            self.kill()
            raise RuntimeError(f"{self.name} did not report {self.ready_message!r} within {timeout}s:\n{self.log_text()}")
        if self.addr is None:
            self.kill()
            raise RuntimeError(f"{self.name} exited before listening (code {self.proc.poll()}):\n{self.log_text()}")
        return self.addr

    def wait_for_event(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> Optional[dict[str, Any]]:
        """Waits until a logged event matches (None on timeout)."""
        seen = 0
        with self._cond:
            end = _monotonic() + timeout
            while True:
                while seen < len(self.events):
                    ev = self.events[seen]
                    seen += 1
                    if predicate(ev):
                        return ev
                left = end - _monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    @property
    def port(self) -> int:
        assert self.addr is not None
        return int(self.addr.rsplit(":", 1)[1])

    def log_text(self) -> str:
        with self._cond:
            return "\n".join(self.lines[-200:])

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._reader.join(timeout=5)


def _monotonic() -> float:
    return time.monotonic()


class Gateway(LoggedProcess):
    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    @property
    def base_url(self) -> str:
        return f"http://{self.addr}/v1"


class MockUpstream(LoggedProcess):
    @property
    def base_url(self) -> str:
        return f"http://{self.addr}/v1"


def require_binary() -> None:
    if not GATEWAY_BIN.is_file():
        pytest.fail(
            f"gateway binary not found at {GATEWAY_BIN}; run `cargo build` first or set VISION_GATEWAY_BIN",
            pytrace=False,
        )


# ---------------------------------------------------------------------------------------------
# Config files
# ---------------------------------------------------------------------------------------------


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        # JSON string escapes are valid TOML basic-string escapes for everything json.dumps emits.
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"unsupported TOML value {v!r}")


def render_config(
    upstreams: Iterable[dict[str, Any]],
    models: Iterable[dict[str, Any]],
    server: Optional[dict[str, Any]] = None,
    images: Optional[dict[str, Any]] = None,
    keys: Iterable[dict[str, Any]] = (),
    rate_limits: Optional[dict[str, Any]] = None,
) -> str:
    out: list[str] = []
    for table, values in (("server", server), ("images", images), ("rate_limits", rate_limits)):
        if values:
            out.append(f"[{table}]")
            out += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
            out.append("")
    for u in upstreams:
        out.append("[[upstreams]]")
        out += [f"{k} = {_toml_value(v)}" for k, v in u.items()]
        out.append("")
    for m in models:
        out.append("[[models]]")
        out += [f"{k} = {_toml_value(v)}" for k, v in m.items()]
        out.append("")
    for k in keys:
        out.append("[[keys]]")
        out += [f"{name} = {_toml_value(v)}" for name, v in k.items()]
        out.append("")
    return "\n".join(out)


class SentBodies:
    """The request bodies the SDK put on the wire, captured by an httpx event hook."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []

    def hook(self, request: httpx2.Request) -> None:
        request.read()
        self.bodies.append(bytes(request.content))
        self.headers.append({k.lower(): v for k, v in request.headers.items()})

    @property
    def last(self) -> bytes:
        assert self.bodies, "the SDK sent no request"
        return self.bodies[-1]


def make_client(base_url: str, **kw: Any) -> openai.OpenAI:
    kw.setdefault("timeout", SDK_TIMEOUT)
    return openai.OpenAI(base_url=base_url, api_key=API_KEY, max_retries=0, **kw)


def make_async_client(base_url: str, **kw: Any) -> openai.AsyncOpenAI:
    kw.setdefault("timeout", SDK_TIMEOUT)
    return openai.AsyncOpenAI(base_url=base_url, api_key=API_KEY, max_retries=0, **kw)


# ---------------------------------------------------------------------------------------------
# Helpers shared by the tests
# ---------------------------------------------------------------------------------------------


def describe(message_count: int, last_text: str, images: Iterable[str] = ()) -> str:
    """The built-in stand-in's answer text (see src/mock.rs `describe`)."""
    images = list(images)
    listed = ": " + "; ".join(f"#{i + 1} {d}" for i, d in enumerate(images)) if images else ""
    return (
        "This is vision-gateway's built-in stand-in upstream, not a model. "
        f"I received {message_count} message(s) with {len(images)} image(s){listed}. "
        f'Your last text was: "{last_text[:200]}".'
    )


def make_png(width: int, height: int, rgb: tuple[int, int, int] = (200, 30, 90)) -> bytes:
    """A real, valid RGB PNG, without Pillow."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes(rgb) * width
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(row * height)) + chunk(b"IEND", b"")


def sha256_hex(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()

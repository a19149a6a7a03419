"""A small raw-socket stand-in upstream for what the built-in mock cannot show.

It listens on 127.0.0.1 (never anything else), speaks just enough HTTP/1.1 to take a request
and answer it, and:

* records the exact bytes of every request it receives (head and body, as they came off the
  socket), so tests can compare them with the bytes the SDK sent;
* answers with response bytes the test chooses (`Reply`): a complete response written as is,
  or a head followed by body pieces released one per interval, chunked or not;
* notices when the peer (the gateway) closes the connection before a response is complete
  (while the head is held back, or while the body is streamed), and sets
  `peer_closed_mid_response` (a `threading.Event` the test waits on with a
  timeout).

Threads only, no asyncio, so the SDK's sync and async clients can both be used against it.
Every blocking call is bounded (select with a short tick) so `close()` always stops it.
"""

from __future__ import annotations

import json
import select
import socket
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

# How often blocked loops look at the stop flag. This is a poll period, not a synchronisation.
_TICK = 0.05


class PeerClosed(Exception):
    """The other side closed or reset the connection."""


@dataclass
class RecordedRequest:
    """One request exactly as received."""

    raw: bytes
    head: bytes
    body: bytes
    method: str
    target: str
    headers: list[tuple[str, str]]

    def header(self, name: str) -> Optional[str]:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def json(self):
        return json.loads(self.body)


@dataclass
class Reply:
    """What to send back.

    `head` is written first (status line and headers, ending in a blank line), after
    `head_delay` seconds if set (the peer is watched meanwhile). Then each of
    `pieces` is written, with `interval` seconds between them (the peer is watched while
    waiting, so a close is noticed at once). With `chunked`, each piece is framed as one
    HTTP/1.1 chunk and the terminating chunk follows the last one. `close_after` closes the
    connection once everything is sent (for close-delimited bodies). `cut_after` instead
    closes the connection right after the last piece, without the terminating chunk (or before
    the announced Content-Length is reached): the body is cut mid-response.
    """

    head: bytes
    head_delay: float = 0.0
    pieces: list[bytes] = field(default_factory=list)
    interval: float = 0.0
    chunked: bool = False
    close_after: bool = False
    cut_after: bool = False


def reason_phrase(status: int) -> str:
    return {
        200: "OK",
        400: "Bad Request",
        404: "Not Found",
        429: "Too Many Requests",
        500: "Internal Server Error",
        502: "Bad Gateway",
        503: "Service Unavailable",
    }.get(status, "Status")


def full_response(
    body: bytes,
    *,
    status: int = 200,
    content_type: str = "application/json",
    headers: Iterable[tuple[str, str]] = (),
) -> Reply:
    """A complete response with Content-Length, written in one go."""
    lines = [f"HTTP/1.1 {status} {reason_phrase(status)}", f"content-type: {content_type}"]
    lines += [f"{k}: {v}" for k, v in headers]
    lines.append(f"content-length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return Reply(head=head, pieces=[body] if body else [])


def chunked_response(
    pieces: list[bytes],
    *,
    status: int = 200,
    content_type: str = "text/event-stream",
    headers: Iterable[tuple[str, str]] = (),
    interval: float = 0.0,
) -> Reply:
    """A response whose body is sent as HTTP/1.1 chunks, one per piece."""
    lines = [f"HTTP/1.1 {status} {reason_phrase(status)}", f"content-type: {content_type}"]
    lines += [f"{k}: {v}" for k, v in headers]
    lines.append("transfer-encoding: chunked")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return Reply(head=head, pieces=list(pieces), interval=interval, chunked=True)


def chat_completion_body(text: str, model: str = "pixtral-12b-2409") -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-recording",
            "object": "chat.completion",
            "created": 1700000000,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    ).encode()


def sse_chunk(content: Optional[str], finish_reason: Optional[str] = None, model: str = "pixtral-12b-2409") -> bytes:
    delta = {} if content is None else {"content": content}
    event = {
        "id": "chatcmpl-recording",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def default_handler(req: RecordedRequest) -> Reply:
    """A valid chat completion (SSE when the request asks for a stream) saying 'recorded'."""
    try:
        body = req.json()
    except ValueError:
        return full_response(b'{"error":{"message":"not JSON","type":"invalid_request_error","param":null,"code":null}}', status=400)
    model = body.get("model", "unknown") if isinstance(body, dict) else "unknown"
    if isinstance(body, dict) and body.get("stream") is True:
        pieces = [sse_chunk("recorded", model=model), sse_chunk(None, "stop", model=model), b"data: [DONE]\n\n"]
        return chunked_response(pieces)
    return full_response(chat_completion_body("recorded", model))


class RecordingUpstream:
    """See the module docstring. Use as a context manager or call `start()` / `close()`."""

    def __init__(self, handler: Optional[Callable[[RecordedRequest], Reply]] = None):
        self.handler: Callable[[RecordedRequest], Reply] = handler or default_handler
        self.requests: list[RecordedRequest] = []
        self.request_received = threading.Event()
        self.peer_closed_mid_response = threading.Event()
        self.response_completed = threading.Event()
        self.connections_accepted = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port: int = self._listener.getsockname()[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "RecordingUpstream":
        t = threading.Thread(target=self._accept_loop, name="recording-upstream-accept", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def __enter__(self) -> "RecordingUpstream":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.close()
            except OSError:
                pass
        for t in self._threads:
            t.join(timeout=2)

    # -- accepting -------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._listener], [], [], _TICK)
            except (OSError, ValueError):
                return
            if not ready:
                continue
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns.append(conn)
                self.connections_accepted += 1
            t = threading.Thread(target=self._serve_connection, args=(conn,), name="recording-upstream-conn", daemon=True)
            t.start()
            self._threads.append(t)

    # -- one connection --------------------------------------------------------------------

    def _recv_some(self, conn: socket.socket) -> bytes:
        """Waits for bytes; b'' means the peer closed. Raises PeerClosed on reset or stop."""
        while True:
            if self._stop.is_set():
                raise PeerClosed("stopping")
            try:
                ready, _, _ = select.select([conn], [], [], _TICK)
            except (OSError, ValueError) as e:
                raise PeerClosed(str(e)) from e
            if ready:
                try:
                    return conn.recv(65536)
                except OSError as e:
                    raise PeerClosed(str(e)) from e

    def _read_request(self, conn: socket.socket, buf: bytearray) -> Optional[RecordedRequest]:
        """Reads one request. None when the peer closed cleanly between requests."""
        while b"\r\n\r\n" not in buf:
            data = self._recv_some(conn)
            if not data:
                if buf:
                    raise PeerClosed("closed mid-head")
                return None
            buf += data
        end = buf.index(b"\r\n\r\n") + 4
        head = bytes(buf[:end])
        del buf[:end]
        lines = head[:-4].decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers = []
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers.append((k.strip(), v.strip()))
        hdr = {k.lower(): v for k, v in headers}
        body_raw = bytearray()
        body = bytearray()
        if "chunked" in hdr.get("transfer-encoding", "").lower():
            while True:
                while b"\r\n" not in buf:
                    data = self._recv_some(conn)
                    if not data:
                        raise PeerClosed("closed mid-body")
                    buf += data
                line_end = buf.index(b"\r\n") + 2
                size = int(bytes(buf[: line_end - 2]).split(b";")[0], 16)
                need = line_end + size + 2
                while len(buf) < need:
                    data = self._recv_some(conn)
                    if not data:
                        raise PeerClosed("closed mid-body")
                    buf += data
                body_raw += buf[:need]
                body += buf[line_end : line_end + size]
                del buf[:need]
                if size == 0:
                    break
        else:
            length = int(hdr.get("content-length", "0"))
            while len(buf) < length:
                data = self._recv_some(conn)
                if not data:
                    raise PeerClosed("closed mid-body")
                buf += data
            body_raw += buf[:length]
            body += buf[:length]
            del buf[:length]
        return RecordedRequest(
            raw=head + bytes(body_raw),
            head=head,
            body=bytes(body),
            method=method,
            target=target,
            headers=headers,
        )

    def _send(self, conn: socket.socket, data: bytes) -> None:
        try:
            conn.sendall(data)
        except OSError as e:
            raise PeerClosed(str(e)) from e

    def _wait_watching_peer(self, conn: socket.socket, seconds: float, pending: bytearray) -> None:
        """Waits `seconds`, returning early only by raising PeerClosed if the peer goes away."""
        # The waiting itself is the pacing of the stream; the peer's close is noticed at once
        # because select returns as soon as the socket is readable (EOF or reset).
        remaining = seconds
        while remaining > 0:
            if self._stop.is_set():
                raise PeerClosed("stopping")
            step = min(remaining, _TICK)
            try:
                ready, _, _ = select.select([conn], [], [], step)
            except (OSError, ValueError) as e:
                raise PeerClosed(str(e)) from e
            if ready:
                try:
                    data = conn.recv(65536)
                except OSError as e:
                    raise PeerClosed(str(e)) from e
                if not data:
                    raise PeerClosed("EOF")
                pending += data  # a pipelined request; kept for later
            remaining -= step

    def _serve_connection(self, conn: socket.socket) -> None:
        buf = bytearray()
        try:
            while not self._stop.is_set():
                try:
                    req = self._read_request(conn, buf)
                except PeerClosed:
                    return
                if req is None:
                    return
                with self._lock:
                    self.requests.append(req)
                self.request_received.set()
                reply = self.handler(req)
                try:
                    if reply.head_delay > 0:
                        self._wait_watching_peer(conn, reply.head_delay, buf)
                    self._send(conn, reply.head)
                    for i, piece in enumerate(reply.pieces):
                        if i > 0 and reply.interval > 0:
                            self._wait_watching_peer(conn, reply.interval, buf)
                        if reply.chunked:
                            self._send(conn, b"%x\r\n" % len(piece) + piece + b"\r\n")
                        else:
                            self._send(conn, piece)
                    if reply.cut_after:
                        # A plain close (FIN) so the pieces already written are delivered first;
                        # the body is still incomplete, which is the cut.
                        self.response_completed.set()
                        return
                    if reply.chunked:
                        self._send(conn, b"0\r\n\r\n")
                except PeerClosed:
                    if not self._stop.is_set():
                        self.peer_closed_mid_response.set()
                    return
                self.response_completed.set()
                if reply.close_after:
                    return
        finally:
            try:
                conn.close()
            except OSError:
                pass
            with self._lock:
                if conn in self._conns:
                    self._conns.remove(conn)

"""A loopback image host for the image tests: serves bytes the test chooses at paths it
chooses, counts every request per path, and can misbehave on purpose (redirects, 404, HTML,
endless bodies, responses held until the test releases them).

It listens on 127.0.0.1 only. Threads only (ThreadingHTTPServer), so sync and async SDK
clients can both be used against the gateway in front of it.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    content_type: str = "image/jpeg"
    location: Optional[str] = None  # a redirect
    endless: bool = False  # a body that never ends (chunks until the client goes away)
    lie_length: Optional[int] = None  # Content-Length to claim instead of the real one
    hold: Optional[threading.Event] = None  # answer only once set
    barrier: Optional[threading.Barrier] = None  # answer once this many requests are in flight
    stall_after_body: bool = False  # send the body, then keep the connection open silently


class ImageHost:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.stop = threading.Event()
        host = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                with host._lock:
                    host.hits[path] += 1
                    route = host.routes.get(path)
                if route is None:
                    route = Route(body=b"not found", status=404, content_type="text/plain")
                if route.barrier is not None:
                    try:
                        route.barrier.wait(timeout=10)
                    except threading.BrokenBarrierError:
                        self._reply(Route(body=b"barrier broken", status=500, content_type="text/plain"))
                        return
                if route.hold is not None:
                    while not route.hold.wait(0.05):
                        if host.stop.is_set():
                            return
                self._reply(route)

            def _reply(self, route: Route) -> None:
                self.send_response(route.status)
                self.send_header("Content-Type", route.content_type)
                if route.location is not None:
                    self.send_header("Location", route.location)
                if route.endless:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    chunk = route.body or b"\xff\xd8\xff" + b"\0" * 65533
                    try:
                        while not host.stop.is_set():
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    except OSError:
                        pass
                    return
                length = route.lie_length if route.lie_length is not None else len(route.body)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                try:
                    self.wfile.write(route.body)
                    self.wfile.flush()
                    if route.stall_after_body:
                        while not host.stop.wait(0.05):
                            pass
                except OSError:
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="image-host", daemon=True)

    def start(self) -> "ImageHost":
        self._thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()

    def add(self, path: str, **kw) -> str:
        """Serves a route; returns its URL."""
        self.routes[path] = Route(**kw)
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def count(self, path: Optional[str] = None) -> int:
        with self._lock:
            return sum(self.hits.values()) if path is None else self.hits[path]

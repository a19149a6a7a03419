#!/usr/bin/env python3
"""Time to first chunk of a streaming chat completion, per target (stdlib only, raw sockets).

For each target, one kept-alive HTTP/1.1 connection (re-opened if the server closes it).
Each sample: send the request, stop the clock when the first bytes of an SSE `data:` event
have arrived (headers alone do not count), then read the rest of the stream so the
connection is clean for the next request. Targets are interleaved in a shuffled order every
round, so drift in machine load hits all of them alike. Bounded: per-sample socket timeout
and an overall deadline.

  ttfc.py --n 300 --warmup 30 --deadline 60 --out FILE NAME=HOST:PORT [NAME=HOST:PORT ...]
"""

import argparse
import json
import random
import socket
import statistics
import sys
import time

from util import CHAT

# The load script's request, streamed; a short stream with no pacing: the first chunk is
# what is timed.
BODY = json.dumps(
    dict(CHAT, stream=True, mock={"chunks": 4, "chunk_delay_ms": 0}), separators=(",", ":")
).encode()

SOCKET_TIMEOUT = 5.0


class Conn:
    def __init__(self, host, port):
        self.host, self.port = host, port
        self.sock = None
        self.request = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            f"Content-Length: {len(BODY)}\r\n\r\n"
        ).encode() + BODY

    def connect(self):
        self.close()
        s = socket.create_connection((self.host, self.port), timeout=SOCKET_TIMEOUT)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = s

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    def sample(self):
        """Seconds from sending to the first `data:` bytes."""
        for attempt in (0, 1):
            if self.sock is None:
                self.connect()
            try:
                return self._sample()
            except (ConnectionError, EOFError):
                # A kept-alive connection the server closed between requests: retry once.
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _sample(self):
        s = self.sock
        t0 = time.perf_counter()
        s.sendall(self.request)
        buf = b""
        head_end = -1
        t_first = None
        while True:
            data = s.recv(65536)
            now = time.perf_counter()
            if not data:
                raise EOFError("connection closed mid-response")
            buf += data
            if head_end < 0:
                head_end = buf.find(b"\r\n\r\n")
                if head_end < 0:
                    continue
                head = buf[:head_end].decode("latin-1").split("\r\n")
                status = head[0].split(" ", 2)
                if len(status) < 2 or status[1] != "200":
                    raise RuntimeError(f"unexpected response: {head[0]!r}")
                headers = {}
                for line in head[1:]:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip().lower()
                chunked = "chunked" in headers.get("transfer-encoding", "")
                length = None if chunked else int(headers.get("content-length", "-1"))
                if headers.get("connection") == "close":
                    keep = False
                else:
                    keep = True
                head_end += 4
            if t_first is None and buf.find(b"data:", head_end) >= 0:
                t_first = now
            if t_first is not None and body_complete(buf[head_end:], chunked, length):
                if not keep:
                    self.close()
                return t_first - t0


def body_complete(body, chunked, length):
    if not chunked:
        if length is None or length < 0:
            return False  # read to EOF: not expected for these servers
        return len(body) >= length
    pos = 0
    while True:
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            return False
        size = int(body[pos:eol].split(b";", 1)[0], 16)
        pos = eol + 2
        if size == 0:
            return body.find(b"\r\n", pos) >= 0  # end of (empty) trailers
        pos += size + 2
        if pos > len(body):
            return False


def pct(xs, p):
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--deadline", type=float, default=60.0)
    ap.add_argument("--out", required=True)
    ap.add_argument("targets", nargs="+", help="NAME=HOST:PORT")
    a = ap.parse_args()
    conns = {}
    for t in a.targets:
        name, _, hp = t.partition("=")
        host, _, port = hp.rpartition(":")
        conns[name] = Conn(host, int(port))
    samples = {name: [] for name in conns}
    errors = {name: 0 for name in conns}
    names = list(conns)
    rng = random.Random(1)
    deadline = time.monotonic() + a.deadline
    rounds = 0
    for r in range(a.warmup + a.n):
        if time.monotonic() > deadline:
            print(f"ttfc: deadline of {a.deadline}s reached after {rounds} rounds", file=sys.stderr)
            break
        rng.shuffle(names)
        for name in names:
            try:
                dt = conns[name].sample()
            except (OSError, EOFError, RuntimeError, ValueError) as e:
                errors[name] += 1
                conns[name].close()
                if errors[name] <= 3:
                    print(f"ttfc: {name}: {e}", file=sys.stderr)
                continue
            if r >= a.warmup:
                samples[name].append(dt)
        rounds += 1
    for c in conns.values():
        c.close()
    out = {}
    for name, xs in samples.items():
        out[name] = {
            "n": len(xs),
            "errors": errors[name],
            "median_ms": statistics.median(xs) * 1e3 if xs else None,
            "p90_ms": pct(xs, 90) * 1e3 if xs else None,
            "p99_ms": pct(xs, 99) * 1e3 if xs else None,
            "min_ms": min(xs) * 1e3 if xs else None,
        }
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    for name, v in out.items():
        med = "n/a" if v["median_ms"] is None else f"{v['median_ms']:.3f} ms"
        print(f"  ttfc {name:8s} n={v['n']:4d} errors={v['errors']} median={med}")
    return 0 if all(v["n"] > 0 for v in out.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

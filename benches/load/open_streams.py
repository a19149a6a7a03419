#!/usr/bin/env python3
"""Holds N long-lived streaming chat completions open at once and reads a process's memory
while they are (stdlib only: asyncio raw sockets).

Opens N connections (at most --connect-parallel connecting at a time), sends one streaming
request on each, waits until every one has received its first SSE `data:` bytes, waits
--settle seconds, reads VmRSS/VmHWM and the open file descriptors of --pid (and of
--other-pid, for information), then closes every connection and reads VmRSS again after
--settle seconds. Each stream keeps being read while open, as a real client would.
Bounded: --deadline seconds for all first chunks, then everything is closed either way.

  open_streams.py --host 127.0.0.1 --port P --pid GATEWAY_PID --n 1000 \
      --chunks 600 --chunk-delay-ms 100 --out FILE
"""

import argparse
import asyncio
import json
import os
import socket
import sys
import time


def proc_status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM", "Threads"):
                    out[k] = int(v.split()[0])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError as e:
        out["error"] = str(e)
    return out


class State:
    def __init__(self, n):
        self.n = n
        self.first = 0
        self.all_first = asyncio.Event()
        self.failed = 0
        self.ended_early = 0
        self.errors = []
        self.writers = []


async def one(i, a, st, sem, request):
    try:
        async with sem:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(a.host, a.port), timeout=10)
        st.writers.append(writer)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        writer.write(request)
        await writer.drain()
        buf = b""
        while True:
            data = await reader.read(65536)
            if not data:
                raise EOFError("closed before the first chunk")
            buf += data
            if not buf.startswith(b"HTTP/1.1 200"):
                if len(buf) >= 12:
                    raise RuntimeError(f"unexpected response {buf[:80]!r}")
                continue
            he = buf.find(b"\r\n\r\n")
            if he >= 0 and buf.find(b"data:", he) >= 0:
                break
            if len(buf) > 1 << 20:
                raise RuntimeError("no data: event in the first MiB")
        st.first += 1
        if st.first == st.n:
            st.all_first.set()
        # Keep reading (and discarding) until cancelled.
        while True:
            data = await reader.read(65536)
            if not data:
                st.ended_early += 1
                return
    except asyncio.CancelledError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of one stream is counted, not fatal
        st.failed += 1
        if len(st.errors) < 5:
            st.errors.append(f"stream {i}: {type(e).__name__}: {e}")
        # A failed stream will never get its first chunk: stop waiting for it.
        st.n -= 1
        if st.first >= st.n:
            st.all_first.set()


async def run(a):
    body = json.dumps({
        "model": "pixtral-12b-2409",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Describe this scene in great detail."}]}],
        "temperature": 0.7,
        "max_tokens": 4096,
        "stream": True,
        "mock": {"chunks": a.chunks, "chunk_delay_ms": a.chunk_delay_ms},
    }, separators=(",", ":")).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {a.host}:{a.port}\r\n"
        "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    st = State(a.n)
    sem = asyncio.Semaphore(a.connect_parallel)
    before = proc_status(a.pid)
    t0 = time.monotonic()
    tasks = [asyncio.create_task(one(i, a, st, sem, request)) for i in range(a.n)]
    try:
        await asyncio.wait_for(st.all_first.wait(), timeout=a.deadline)
        all_open = st.first == a.n
    except asyncio.TimeoutError:
        all_open = False
    t_open = time.monotonic() - t0
    await asyncio.sleep(a.settle)
    still_open = sum(1 for t in tasks if not t.done())
    during = proc_status(a.pid)
    other = proc_status(a.other_pid) if a.other_pid else None
    # Close everything.
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for w in st.writers:
        w.close()
    for w in st.writers:
        try:
            await asyncio.wait_for(w.wait_closed(), timeout=2)
        except (asyncio.TimeoutError, OSError):
            pass
    await asyncio.sleep(a.settle)
    after = proc_status(a.pid)
    return {
        "requested": a.n,
        "first_chunk": st.first,
        "all_open": all_open,
        "still_open_at_reading": still_open,
        "failed": st.failed,
        "ended_early": st.ended_early,
        "errors": st.errors,
        "seconds_to_open_all": round(t_open, 3),
        "stream": {"chunks": a.chunks, "chunk_delay_ms": a.chunk_delay_ms},
        "gateway_before": before,
        "gateway_with_streams": during,
        "gateway_after_close": after,
        "upstream_with_streams": other,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--other-pid", type=int, default=0)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--chunks", type=int, default=600)
    ap.add_argument("--chunk-delay-ms", type=int, default=100)
    ap.add_argument("--connect-parallel", type=int, default=64)
    ap.add_argument("--deadline", type=float, default=30.0)
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    res = asyncio.run(run(a))
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    w = res["gateway_with_streams"]
    print(f"  streams: {res['first_chunk']}/{res['requested']} got a first chunk in "
          f"{res['seconds_to_open_all']}s, {res['still_open_at_reading']} open at the reading, "
          f"failed={res['failed']}; gateway VmRSS {w.get('VmRSS', '?')} kB, fds {w.get('fds', '?')}")
    for e in res["errors"]:
        print(f"  streams: {e}", file=sys.stderr)
    return 0 if res["all_open"] else 1


if __name__ == "__main__":
    sys.exit(main())

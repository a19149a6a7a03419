#!/usr/bin/env python3
"""Small helpers for run.sh (stdlib only).

  util.py free-ports N                  print N free TCP ports on 127.0.0.1
  util.py wait-http URL SECONDS [PID]   poll GET URL until 200 (bounded); fail early if PID dies
  util.py probe HOST PORT               one non-streaming and one streaming chat completion; exit 1 unless both are 200
  util.py cpu-ticks PID [PID ...]       print "USER SYS CLK_TCK": CPU ticks used so far by these processes
                                        and their child processes (all threads included)
"""

import http.client
import json
import os
import socket
import sys
import time

CHAT = {
    "model": "pixtral-12b-2409",
    "messages": [
        {"role": "system", "content": "You are a careful assistant."},
        {"role": "user", "content": [{"type": "text", "text": "What is in this image? Answer in one sentence."}]},
    ],
    "temperature": 0.7,
    "max_tokens": 256,
}


def free_ports(n):
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        print(" ".join(str(s.getsockname()[1]) for s in socks))
    finally:
        for s in socks:
            s.close()


def alive(pid):
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); read its state.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def wait_http(url, seconds, pid):
    assert url.startswith("http://")
    hostport, _, path = url[len("http://"):].partition("/")
    host, _, port = hostport.partition(":")
    deadline = time.monotonic() + seconds
    last = "no attempt"
    while time.monotonic() < deadline:
        if not alive(pid):
            print(f"process {pid} exited before {url} answered", file=sys.stderr)
            return 1
        try:
            c = http.client.HTTPConnection(host, int(port), timeout=1)
            c.request("GET", "/" + path)
            r = c.getresponse()
            r.read()
            c.close()
            if r.status == 200:
                return 0
            last = f"status {r.status}"
        except OSError as e:
            last = str(e)
        time.sleep(0.05)
    print(f"{url} did not answer 200 within {seconds}s ({last})", file=sys.stderr)
    return 1


def probe(host, port):
    ok = True
    for stream in (False, True):
        body = dict(CHAT)
        if stream:
            body["stream"] = True
            body["mock"] = {"chunks": 3, "chunk_delay_ms": 0}
        c = http.client.HTTPConnection(host, port, timeout=5)
        c.request("POST", "/v1/chat/completions", body=json.dumps(body),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        c.close()
        kind = "stream" if stream else "json"
        good = r.status == 200 and (b"data: [DONE]" in data if stream else data.startswith(b"{"))
        print(f"  probe {host}:{port} {kind}: HTTP {r.status}, {len(data)} bytes, "
              f"content-type {r.getheader('content-type')}, x-request-id {r.getheader('x-request-id')}"
              + ("" if good else f"  UNEXPECTED: {data[:200]!r}"))
        ok = ok and good
    return 0 if ok else 1


def children(pid):
    """Direct child processes, from /proc (no procps needed)."""
    kids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            kids.append(int(d))
    return kids


def cpu_ticks(pids):
    user = sys_ = 0
    seen = set()
    for pid in pids:
        for p in [pid] + children(pid):
            if p in seen:
                continue
            seen.add(p)
            try:
                with open(f"/proc/{p}/stat") as f:
                    fields = f.read().rsplit(") ", 1)[1].split()
            except (OSError, IndexError):
                continue
            # utime and stime are fields 14 and 15 of stat; here 0-based after the comm.
            user += int(fields[11])
            sys_ += int(fields[12])
    print(user, sys_, os.sysconf("SC_CLK_TCK"))


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "free-ports":
        free_ports(int(argv[2]))
        return 0
    if cmd == "wait-http":
        return wait_http(argv[2], float(argv[3]), int(argv[4]) if len(argv) > 4 else None)
    if cmd == "cpu-ticks":
        cpu_ticks([int(p) for p in argv[2:]])
        return 0
    if cmd == "probe":
        return probe(argv[2], int(argv[3]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))

#!/usr/bin/env python3
"""Drives an instrumented vision-gateway with the work its profile must cover (scripts/pgo.sh).

Loopback only, stdlib only. The gateway runs in front of the built-in stand-in upstream; then:
  1. wrk at c=32 and c=1 with the load benchmark's request (benches/load/post.lua);
  2. streamed requests (SSE, several chunks each);
  3. images: Debian photos (JPEG, from mate-backgrounds) and generated PNGs (with and
     without alpha) sent inline, above the model's max_image_edge so each is decoded,
     downscaled and re-encoded, and small ones that pass as they are;
  4. refusals: malformed JSON, too many images, an unknown route.
Code a profile never sees is compiled as cold (optimised for size, little inlining), so each
path whose speed matters must be exercised here. TLS upstreams are not (no trusted
loopback TLS stand-in).
Usage: pgo_train.py --bin INSTRUMENTED --mock-bin ANY_GATEWAY_BINARY
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOAD = HERE.parent / "benches" / "load"
PHOTOS = [
    Path("/usr/share/backgrounds/mate/abstract/Elephants_3840x2160.jpg"),
    Path("/usr/share/backgrounds/mate/nature/Dune.jpg"),
    Path("/usr/share/backgrounds/mate/nature/Aqua.jpg"),
]


def free_port() -> int:
    out = subprocess.run([sys.executable, str(LOAD / "util.py"), "free-ports", "1"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def wait_http(port: int, path: str, proc: subprocess.Popen) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise SystemExit(f"process exited early: {proc.args}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", path)
            c.getresponse().read()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing answered on port {port}")


def png(width: int, height: int, alpha: bool) -> bytes:
    """A gradient PNG, written with zlib (no imaging library)."""
    rows = bytearray()
    for y in range(height):
        rows.append(0)
        for x in range(width):
            px = [(x * 255) // width, (y * 255) // height, ((x ^ y) * 7) & 255]
            if alpha:
                px.append(128 + (x % 128))
            rows.extend(px)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6 if alpha else 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(bytes(rows), 6)) + chunk(b"IEND", b""))


def check(ok: bool, what: str) -> None:
    # Not `assert`: `python -O` would drop it, and a profile of failures would be worse
    # than none (the success path compiled as cold).
    if not ok:
        raise SystemExit(f"training failed: {what}")


def chat(port: int, body: dict) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("POST", "/v1/chat/completions", json.dumps(body),
              {"Content-Type": "application/json"})
    r = c.getresponse()
    r.read()
    c.close()
    return r.status


def image_message(mime: str, data: bytes) -> dict:
    uri = f"data:{mime};base64,{base64.b64encode(data).decode()}"
    return {"model": "pixtral-12b-2409", "max_tokens": 64, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": uri}}]}]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--mock-bin", required=True)
    ap.add_argument("--seconds", type=int, default=20)
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="vg-pgo."))
    mport, gport = free_port(), free_port()
    while gport == mport:
        gport = free_port()
    mock = subprocess.Popen([a.mock_bin, "mock-upstream", "--listen", f"127.0.0.1:{mport}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, RUST_LOG="warn"))
    gw = None
    try:
        wait_http(mport, "/v1/models", mock)
        cfg = work / "gw.toml"
        cfg.write_text(f'[[upstreams]]\nname = "mock"\nbase_url = "http://127.0.0.1:{mport}/v1"\n'
                       '[[models]]\nid = "*"\nupstream = "mock"\nmax_image_edge = 512\n'
                       'context_window = 128000\n')
        gw = subprocess.Popen([a.bin, "--config", str(cfg), "--listen", f"127.0.0.1:{gport}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=dict(os.environ, RUST_LOG="warn"))
        wait_http(gport, "/healthz", gw)
        url = f"http://127.0.0.1:{gport}/v1/chat/completions"
        post = str(LOAD / "post.lua")
        for threads, conns, secs in ((2, 32, a.seconds), (1, 1, max(1, a.seconds // 4))):
            out = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{secs}s", "-s", post, url],
                                 check=True, capture_output=True, text=True).stdout
            check("Non-2xx" not in out and "Socket errors" not in out, f"wrk saw errors:\n{out}")
        streamed = {"model": "pixtral-12b-2409", "stream": True,
                    "stream_options": {"include_usage": True},
                    "messages": [{"role": "user", "content": "hi"}],
                    "mock": {"chunks": 8, "chunk_delay_ms": 0}}
        for _ in range(300):
            check(chat(gport, streamed) == 200, "a streamed request")
        images = [("image/png", png(1600, 1200, False)), ("image/png", png(900, 700, True)),
                  ("image/png", png(64, 64, False))]
        missing = [str(p) for p in PHOTOS if not p.exists()]
        check(not missing, f"photos missing (Debian package mate-backgrounds): {missing}")
        images += [("image/jpeg", p.read_bytes()) for p in PHOTOS]
        for _ in range(6):
            for mime, data in images:
                check(chat(gport, image_message(mime, data)) == 200, f"an image request ({mime})")
        too_many = image_message("image/png", png(8, 8, False))
        too_many["messages"][0]["content"] *= 13
        check(chat(gport, too_many) == 400, "a request with 13 images")
        for _ in range(50):
            c = http.client.HTTPConnection("127.0.0.1", gport, timeout=10)
            c.request("POST", "/v1/chat/completions", "{not json", {"Content-Type": "application/json"})
            c.getresponse().read()
            c.request("GET", "/nowhere")
            c.getresponse().read()
            c.request("GET", "/v1/models")
            c.getresponse().read()
            c.close()
    finally:
        try:
            if gw is not None:
                gw.send_signal(signal.SIGTERM)  # a clean exit writes the profile
                gw.wait(timeout=60)
        finally:
            mock.terminate()
            mock.wait(timeout=10)
    check(gw is not None and gw.returncode == 0, "the gateway did not exit cleanly (no profile)")
    print("trained; the gateway exited cleanly")


if __name__ == "__main__":
    main()

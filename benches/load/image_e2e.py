#!/usr/bin/env python3
"""End-to-end latency of a chat request carrying one 18-megapixel photo, three ways, in the
same run (loopback only; stdlib only):

  url          the request names the photo's URL; the gateway fetches it from a loopback image
               host, downscales it to 1024 px and sends it inline (cache off, so every request
               does the whole job)
  raw-gateway  the request carries the photo itself as a base64 data: URI; the gateway
               decodes and downscales it before forwarding
  raw-direct   the same raw request sent straight to the upstream (what a client without the
               gateway sends: the full photo, no checks)

The upstream is the built-in stand-in (`vision-gateway mock-upstream`), which decodes the
base64 it receives and answers at once, so the figures are the cost of moving and processing
the image, not of a model. Prints the median and p90 of each mode and the ratios.

Usage: python3 benches/load/image_e2e.py [--bin target/pgo/release/vision-gateway]
                                          [--photo FILE] [--requests N]
The default photo is the baseline twin of Debian's mate-backgrounds Elephants_5640x3172.jpg,
made with vips if missing (benches/images/compare.sh makes the same file).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SOURCE = Path("/usr/share/backgrounds/mate/abstract/Elephants_5640x3172.jpg")
BASELINE = REPO / "target" / "bench-images" / "baseline.jpg"


def free_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_http(url: str, proc: subprocess.Popen, seconds: float = 30) -> None:
    host, port = url.split("//")[1].split("/")[0].split(":")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc.poll() is not None:
            sys.exit(f"{proc.args} exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection(host, int(port), timeout=1)
            c.request("GET", "/healthz")
            c.getresponse()  # any HTTP answer: it is listening
            return
        except OSError:
            pass
        time.sleep(0.05)  # start-up poll, not part of any measurement
    sys.exit(f"{url} did not come up")


def serve_photo(photo: bytes) -> tuple[ThreadingHTTPServer, int]:
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(photo)))
            self.end_headers()
            self.wfile.write(photo)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, srv.server_address[1]


def body_with(url: str) -> bytes:
    return json.dumps(
        {
            "model": "pixtral-12b-2409",
            "max_tokens": 100,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is in this image?"},
                        {"type": "image_url", "image_url": {"url": url}},
                    ],
                }
            ],
        }
    ).encode()


def timed_post(port: int, body: bytes) -> float:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    start = time.perf_counter()
    c.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    r = c.getresponse()
    answer = r.read()
    took = time.perf_counter() - start
    c.close()
    if r.status != 200:
        sys.exit(f"status {r.status}: {answer[:300]!r}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(REPO / "target" / "pgo" / "release" / "vision-gateway"))
    ap.add_argument("--photo", default=str(BASELINE))
    ap.add_argument("--requests", type=int, default=15)
    args = ap.parse_args()
    photo_path = Path(args.photo)
    if not photo_path.exists():
        photo_path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["vips", "copy", str(SOURCE), f"{photo_path}[Q=90,strip]"], check=True)
    photo = photo_path.read_bytes()
    srv, img_port = serve_photo(photo)

    mock_port, gw_port = free_port(), free_port()
    procs = []
    env = dict(os.environ, RUST_LOG="warn")
    try:
        mock = subprocess.Popen([args.bin, "mock-upstream", "--listen", f"127.0.0.1:{mock_port}"], env=env)
        procs.append(mock)
        wait_http(f"http://127.0.0.1:{mock_port}/", mock)
        cfg = Path(tempfile.mkdtemp()) / "gw.toml"
        cfg.write_text(
            f"""
[server]
max_body_bytes = 67108864
[[upstreams]]
name = "mock"
base_url = "http://127.0.0.1:{mock_port}/v1"
[[models]]
id = "*"
upstream = "mock"
[images]
allow_hosts = ["127.0.0.1:{img_port}"]
cache_max_bytes = 0
max_fetch_bytes = 67108864
"""
        )
        gw = subprocess.Popen([args.bin, "--config", str(cfg), "--listen", f"127.0.0.1:{gw_port}"], env=env)
        procs.append(gw)
        wait_http(f"http://127.0.0.1:{gw_port}/", gw)

        by_url = body_with(f"http://127.0.0.1:{img_port}/photo.jpg")
        raw = body_with("data:image/jpeg;base64," + base64.b64encode(photo).decode())
        modes = {
            "url": (gw_port, by_url),
            "raw-gateway": (gw_port, raw),
            "raw-direct": (mock_port, raw),
        }
        times: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(2):  # warm-up
            for port, body in modes.values():
                timed_post(port, body)
        for _ in range(args.requests):  # interleaved, so drift hits every mode alike
            for m, (port, body) in modes.items():
                times[m].append(timed_post(port, body))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
        srv.shutdown()

    print(f"photo: {photo_path} ({len(photo) / 1e6:.1f} MB, 5640x3172), {args.requests} requests per mode")
    med = {m: statistics.median(t) * 1e3 for m, t in times.items()}
    for m, t in times.items():
        p90 = sorted(t)[int(0.9 * (len(t) - 1))] * 1e3
        print(f"  {m:12s} median {med[m]:7.1f} ms   p90 {p90:7.1f} ms")
    print(f"  url / raw-direct         = {med['url'] / med['raw-direct']:.2f}")
    print(f"  raw-gateway / raw-direct = {med['raw-gateway'] / med['raw-direct']:.2f}")


if __name__ == "__main__":
    main()

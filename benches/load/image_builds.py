#!/usr/bin/env python3
"""Image requests through two or more gateway builds, interleaved (loopback only, stdlib only).

Each build runs in front of the built-in stand-in upstream with the image cache off; every
round sends the same three inline images to each build in turn: a 3840x2160 progressive JPEG
(Debian's mate-backgrounds), a smaller JPEG from the same package and a generated 1600x1200
PNG, each above the default max_image_edge, so every request decodes, downscales and
re-encodes. Prints the median latency per image and build (the first round is a warm-up).
Made to check that profile-guided optimisation did not slow the image step:
  python3 benches/load/image_builds.py plain=target/release/vision-gateway \\
      pgo=target/pgo/release/vision-gateway
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "scripts"))
from pgo_train import PHOTOS, free_port, png, wait_http  # noqa: E402


def body(mime: str, data: bytes) -> str:
    uri = f"data:{mime};base64,{base64.b64encode(data).decode()}"
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": uri}}]}]})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("builds", nargs="+", help="NAME=BINARY")
    ap.add_argument("--rounds", type=int, default=9)
    a = ap.parse_args()
    builds = dict(b.split("=", 1) for b in a.builds)
    missing = [str(p) for p in PHOTOS[:2] if not p.exists()]
    if missing:
        raise SystemExit(f"photos missing (Debian package mate-backgrounds): {missing}")
    images = {"jpeg 3840x2160": body("image/jpeg", PHOTOS[0].read_bytes()),
              f"jpeg {PHOTOS[1].name}": body("image/jpeg", PHOTOS[1].read_bytes()),
              "png 1600x1200": body("image/png", png(1600, 1200, False))}
    work = Path(tempfile.mkdtemp(prefix="vg-img."))
    procs: list[subprocess.Popen] = []
    try:
        mport = free_port()
        mock = subprocess.Popen([next(iter(builds.values())), "mock-upstream", "--listen",
                                 f"127.0.0.1:{mport}"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        procs.append(mock)
        wait_http(mport, "/v1/models", mock)
        cfg = work / "gw.toml"
        cfg.write_text(f'[[upstreams]]\nname = "mock"\nbase_url = "http://127.0.0.1:{mport}/v1"\n'
                       '[[models]]\nid = "*"\nupstream = "mock"\n[images]\ncache_max_bytes = 0\n')
        ports = {}
        for name, binary in builds.items():
            port = free_port()
            while port in ports.values() or port == mport:
                port = free_port()
            p = subprocess.Popen([binary, "--config", str(cfg), "--listen", f"127.0.0.1:{port}"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(p)
            wait_http(port, "/healthz", p)
            ports[name] = port
        times = {(n, k): [] for n in builds for k in images}
        for r in range(a.rounds):
            for k, b in images.items():
                for n, port in ports.items():
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                    t = time.perf_counter()
                    c.request("POST", "/v1/chat/completions", b, {"Content-Type": "application/json"})
                    res = c.getresponse()
                    res.read()
                    took = time.perf_counter() - t
                    c.close()
                    if res.status != 200:
                        raise SystemExit(f"{n}: {k}: status {res.status}")
                    if r > 0:
                        times[(n, k)].append(took * 1000)
        for k in images:
            print(f"{k}: " + "  ".join(f"{n} {statistics.median(times[(n, k)]):.1f} ms"
                                       for n in builds) + f"  ({a.rounds - 1} requests each)")
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)


if __name__ == "__main__":
    main()

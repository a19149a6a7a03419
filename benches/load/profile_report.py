#!/usr/bin/env python3
"""Turns `perf script -F comm,ip,sym` output (cpu-clock samples with call graphs) into
microseconds of CPU per request: kernel and user time, each layer of the gateway inclusive
of what it calls, and the costliest functions by self time. Used by profile.sh.

  perf script -F comm,ip,sym | profile_report.py --freq HZ --requests N
"""

import argparse
import collections
import sys

# (label, substring of the frame): a sample counts for a layer when any frame matches.
LAYERS = [
    ("client connection task (hyper, upstream side)", "upstream::pool::Http1Pool::connect::"),
    ("server connection task (hyper + the service)", "server::Protocols::serve::"),
    ("  the service: every layer", "TowerToHyperServiceFuture<S,R> as core::future::future::Future>::poll"),
    ("    router", "routes::Router as tower_service::Service"),
    ("    telemetry's call and the layers below it", "Telemetry<S> as tower_service::Service<http::request::Request<B>>>::call::"),
    ("      checkpoints and forward", "checkpoint::Checked<C,S>::respond::"),
    ("        body read + checks", "checkpoint::Then<A,B> as vision_gateway::layer::checkpoint::Checkpoint<In>>::check::"),
    ("          JSON parse", "chat::ParsedChat::parse"),
    ("        upstream request built and sent", "upstream::forward::Forward as vision_gateway::layer::checkpoint::Endpoint"),
    ("        upstream response head", "upstream::forward::answer"),
    ("  response body polled (telemetry, SSE watch)", "telemetry::ObservedBody<B> as http_body::Body>::poll_frame"),
    ("  telemetry's record (metrics, log line)", "telemetry::Record::finish"),
]


def stacks(lines):
    """Yields each sample's frames, leaf first, as (is_kernel, symbol)."""
    frames = []
    for line in lines:
        if not line.startswith("\t"):
            if frames:
                yield frames
            frames = []
            continue
        parts = line.strip().split(" ", 1)
        if len(parts) == 2:
            frames.append((parts[0].startswith("ffffffff"), parts[1]))
    if frames:
        yield frames


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--freq", type=float, required=True)
    ap.add_argument("--requests", type=int, required=True)
    a = ap.parse_args()
    per_req = 1e6 / a.freq / max(a.requests, 1)  # µs of CPU per sample, per request
    total = kernel = 0
    layer = collections.Counter()
    self_user = collections.Counter()
    for frames in stacks(sys.stdin):
        total += 1
        if frames[0][0]:
            kernel += 1
        else:
            self_user[frames[0][1]] += 1
        for label, needle in LAYERS:
            if any(needle in sym for _, sym in frames):
                layer[label] += 1
    print(f"{a.requests} requests, {total} samples at {a.freq:.0f} Hz\n")
    print("CPU per request, µs")
    print(f"  {'all':<52} {total * per_req:6.2f}")
    print(f"  {'kernel':<52} {kernel * per_req:6.2f}")
    print(f"  {'user':<52} {(total - kernel) * per_req:6.2f}\n")
    print("by layer (inclusive: a layer's own work and all it calls, kernel included)")
    for label, _ in LAYERS:
        print(f"  {label:<52} {layer[label] * per_req:6.2f}")
    print("\ncostliest user-space functions (self)")
    for sym, n in self_user.most_common(25):
        print(f"  {n * per_req:6.3f}  {sym[:110]}")


if __name__ == "__main__":
    main()

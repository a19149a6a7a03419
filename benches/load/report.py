#!/usr/bin/env python3
"""Turns the raw outputs of one run.sh run into the Markdown summary (stdout and --out).

Reads from --work: wrk-<target>-c<C>.txt (wrk --latency output), ratio.txt (the interleaved
throughput rounds: "ROUND TARGET REQ/S ERRORS" per line), p99.txt (the interleaved c=1
latency rounds: "ROUND TARGET P99 ERRORS", P99 as wrk prints it), ttfc.json, streams.json,
meta.json. Exit status 0 always, unless --fail-on-miss and a target was missed.
"""

import argparse
import json
import math
import os
import re
import sys

TARGETS = [("direct", "direct to the mock"), ("nginx", "through nginx"),
           ("gateway", "through vision-gateway")]
UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
MB = 1_000_000  # targets are read as decimal megabytes (the stricter reading)


def parse_time_ms(s):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", s.strip())
    if not m:
        raise ValueError(f"cannot parse wrk time {s!r}")
    return float(m.group(1)) * UNIT_MS[m.group(2)]


def parse_wrk(path):
    if not os.path.exists(path):
        return None
    text = open(path).read()
    r = {"rps": None, "p50": None, "p75": None, "p90": None, "p99": None,
         "requests": None, "non2xx": 0, "socket_errors": 0, "raw_ok": False}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        r["rps"] = float(m.group(1))
    for p in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{p}%\s+(\S+)", text, re.M)
        if m:
            r["p" + p] = parse_time_ms(m.group(1))
    m = re.search(r"(\d+) requests in", text)
    if m:
        r["requests"] = int(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        r["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        r["socket_errors"] = sum(int(x) for x in m.groups())
    r["raw_ok"] = r["rps"] is not None and r["p99"] is not None
    return r


def round_lines(path):
    """The "ROUND TARGET VALUE ERRORS" lines of an interleaved-rounds file, split, and the
    gateway's error count over them."""
    try:
        lines = [line.split() for line in open(path).read().split("\n")]
    except OSError:
        return [], 0
    rows = [f for f in lines if len(f) == 4]
    return rows, sum(int(f[3]) for f in rows if f[1] == "gateway")


def parse_ratio(path):
    """The interleaved rounds: {target: [req/s per round]} and the gateway's error count."""
    rows, errs = round_lines(path)
    rounds = {}
    for f in rows:
        rounds.setdefault(f[1], []).append(float(f[2]))
    return rounds, errs


def parse_p99_rounds(path):
    """The interleaved c=1 rounds: {round: {target: p99 ms}} and the gateway's error count."""
    rows, errs = round_lines(path)
    rounds = {}
    for f in rows:
        cell = rounds.setdefault(int(f[0]), {})
        try:
            cell[f[1]] = parse_time_ms(f[2])
        except ValueError:
            pass  # wrk printed no p99 (it failed): the round has no pair
    return rounds, errs


def rounds_table(L, title, unit, intro, rows):
    """Appends a table of interleaved rounds: one row per (label, values, format), the
    median last."""
    n = max(len(v) for _, v, _ in rows)
    L.append(f"## {title}: {n} interleaved rounds ({unit})")
    L.append("")
    L.append(intro)
    L.append("")
    L.append("| round | " + " | ".join(f"{i + 1}" for i in range(n)) + " | median |")
    L.append("|---|" + "---:|" * (n + 1))
    for label, v, fmt in rows:
        L.append(f"| {label} | " + " | ".join(fmt(x) for x in v)
                 + f" | {fmt(median(v)) if v else 'n/a'} |")
    L.append("")


def median(xs):
    s = sorted(xs)
    n = len(s)
    return (s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2) if n else None


def parse_cpu(path, requests):
    """CPU microseconds per request of the proxy and of the mock during one wrk run."""
    try:
        pu, ps, mu, ms_, tck = (int(x) for x in open(path).read().split())
    except (OSError, ValueError):
        return None
    if not requests:
        return None
    us = 1e6 / tck / requests
    return {"proxy_user": pu * us, "proxy_sys": ps * us, "proxy": (pu + ps) * us,
            "mock": (mu + ms_) * us}


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def f1(x, nd=1):
    return "n/a" if x is None else f"{x:,.{nd}f}"


def ms(x):
    return "n/a" if x is None else f"{x:.3f} ms"


def mb(kib):
    return "n/a" if kib is None else f"{kib * 1024 / MB:.1f} MB ({kib:,} KiB)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--fail-on-miss", action="store_true")
    a = ap.parse_args()
    meta = load_json(os.path.join(a.work, "meta.json")) or {}
    cl, ch = meta.get("c_low", 1), meta.get("c_high", 32)
    wrk = {(t, c): parse_wrk(os.path.join(a.work, f"wrk-{t}-c{c}.txt"))
           for t, _ in TARGETS for c in (cl, ch)}
    cpu = {(t, c): parse_cpu(os.path.join(a.work, f"cpu-{t}-c{c}.txt"), (wrk[(t, c)] or {}).get("requests"))
           for t, _ in TARGETS for c in (cl, ch)}
    ttfc = load_json(os.path.join(a.work, "ttfc.json")) or {}
    streams = load_json(os.path.join(a.work, "streams.json"))
    rounds, round_errs = parse_ratio(os.path.join(a.work, "ratio.txt"))
    p99_rounds, p99_errs = parse_p99_rounds(os.path.join(a.work, "p99.txt"))
    # Rounds in which both targets were measured, in round order.
    p99_pairs = [(v["direct"], v["gateway"]) for _, v in sorted(p99_rounds.items())
                 if "direct" in v and "gateway" in v]

    L = []
    L.append(f"# vision-gateway load benchmark ({meta.get('date', '?')})")
    L.append("")
    L.append("## Machine")
    L.append("")
    L.append(f"- nproc: {meta.get('nproc', '?')}; CPU: {meta.get('cpu', '?')}")
    L.append(f"- kernel: {meta.get('kernel', '?')}")
    L.append(f"- gateway: {meta.get('gateway_version', '?')} (tree at commit {meta.get('commit', '?')}, "
             f"binary built {meta.get('binary_built', '?')}), "
             f"tokio workers = default (one per core); nginx {meta.get('nginx_version', '?')}, "
             f"worker_processes {meta.get('nginx_workers', '?')}; {meta.get('wrk_version', 'wrk')}")
    L.append(f"- load average at start / end: {meta.get('load_start', '?')} / {meta.get('load_end', '?')}")
    L.append(f"- **Caveat:** the load generator (wrk, the Python clients), the mock upstream and the "
             f"proxy under test all share these {meta.get('nproc', '?')} cores, and the machine may be "
             "shared with other builds: absolute numbers are noisy and low; the same-run ratios "
             "are what to read.")
    L.append("")

    L.append(f"## Non-streaming chat completions (wrk --latency, {meta.get('duration', '?')} s each "
             f"after a {meta.get('warmup', '?')} s warm-up)")
    L.append("")
    L.append(f"| target | c={cl} req/s | c={cl} p50 | c={cl} p99 | c={ch} req/s | c={ch} p50 | "
             f"c={ch} p99 | errors |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for t, label in TARGETS:
        lo, hi = wrk[(t, cl)], wrk[(t, ch)]
        errs = sum((r["non2xx"] + r["socket_errors"]) for r in (lo, hi) if r)
        def cell(r, k):
            if r is None or r.get(k) is None:
                return "n/a"
            return f1(r[k], 0) if k == "rps" else ms(r[k])
        L.append(f"| {label} | {cell(lo, 'rps')} | {cell(lo, 'p50')} | {cell(lo, 'p99')} | "
                 f"{cell(hi, 'rps')} | {cell(hi, 'p50')} | {cell(hi, 'p99')} | {errs} |")
    L.append("")
    L.append(f"wrk threads: {meta.get('t_low', '?')} at c={cl}, {meta.get('t_high', '?')} at c={ch}. "
             "errors = non-2xx responses + socket errors over both runs.")
    L.append("")

    L.append("CPU time per request during the same runs (from /proc/PID/stat; 10 ms ticks, so "
             "approximate). The machine is CPU-bound, so CPU per request is what limits the "
             "request rate. It is steadier than req/s for nginx, less so for the gateway (30 to 47 µs "
             "at c=32 across runs on this machine).")
    L.append("")
    L.append(f"| target | c={cl} proxy µs/req | c={ch} proxy µs/req (user + sys) | c={ch} mock µs/req |")
    L.append("|---|---:|---:|---:|")
    for t, label in TARGETS:
        lo, hi = cpu[(t, cl)], cpu[(t, ch)]
        if t == "direct":
            p_lo = p_hi = "— (no proxy)"
        else:
            p_lo = f1(lo["proxy"]) if lo else "n/a"
            p_hi = (f"{f1(hi['proxy'])} ({f1(hi['proxy_user'])} + {f1(hi['proxy_sys'])})" if hi else "n/a")
        L.append(f"| {label} | {p_lo} | {p_hi} | {f1(hi['mock']) if hi else 'n/a'} |")
    L.append("")

    if rounds:
        rounds_table(L, f"Throughput ratio at c={ch}", "req/s",
                     "nginx and the gateway alternate, the order reversed every other round; the "
                     "throughput verdict reads the medians.",
                     [(t, rounds.get(t, []), lambda x: f1(x, 0)) for t in ("nginx", "gateway")])

    if p99_pairs:
        rounds_table(L, f"Added p99 latency at c={cl}", "p99, ms",
                     "direct and the gateway alternate, the order reversed every other round; the "
                     "latency verdict reads the median of the per-round differences.",
                     [("direct", [d for d, _ in p99_pairs], lambda x: f"{x:.3f}"),
                      ("gateway", [g for _, g in p99_pairs], lambda x: f"{x:.3f}"),
                      ("gateway − direct", [g - d for d, g in p99_pairs], lambda x: f"{x:+.3f}")])

    L.append(f"## Streaming: time to first chunk ({meta.get('ttfc_n', '?')} sequential requests per "
             "target, interleaved)")
    L.append("")
    L.append("| target | median | p90 | p99 | added median vs direct | samples | errors |")
    L.append("|---|---:|---:|---:|---:|---:|---:|")
    dmed = (ttfc.get("direct") or {}).get("median_ms")
    for t, label in TARGETS:
        v = ttfc.get(t) or {}
        med = v.get("median_ms")
        added = "—" if t == "direct" else (ms(med - dmed) if med is not None and dmed is not None else "n/a")
        L.append(f"| {label} | {ms(med)} | {ms(v.get('p90_ms'))} | {ms(v.get('p99_ms'))} | {added} | "
                 f"{v.get('n', 0)} | {v.get('errors', 'n/a')} |")
    L.append("")

    L.append("## Gateway memory (VmRSS)")
    L.append("")
    fresh = meta.get("rss_fresh_kib")
    idle = meta.get("rss_idle_after_traffic_kib")
    L.append(f"- idle, right after a fresh start: {mb(fresh)}")
    L.append(f"- idle, after the load above (settled {meta.get('idle_settle', '?')} s): {mb(idle)}")
    sw = (streams or {}).get("gateway_with_streams") or {}
    sa = (streams or {}).get("gateway_after_close") or {}
    n_streams = (streams or {}).get("requested", meta.get("streams", "?"))
    if streams:
        L.append(f"- with {streams['first_chunk']}/{n_streams} streams open (each had received its first "
                 f"chunk; {streams['still_open_at_reading']} still open at the reading; stream = "
                 f"{streams['stream']['chunks']} chunks every {streams['stream']['chunk_delay_ms']} ms): "
                 f"{mb(sw.get('VmRSS'))}; peak VmHWM {mb(sw.get('VmHWM'))}; "
                 f"{sw.get('fds', '?')} open fds; opened in {streams['seconds_to_open_all']} s; "
                 f"failed {streams['failed']}")
        L.append(f"- after closing them: {mb(sa.get('VmRSS'))}")
        up = streams.get("upstream_with_streams") or {}
        if up.get("VmRSS"):
            L.append(f"- (for comparison, the mock upstream with the same streams: {mb(up.get('VmRSS'))})")
        for e in streams.get("errors", []):
            L.append(f"- stream error: `{e}`")
    else:
        L.append("- with open streams: not measured (the streams phase failed or did not run)")
    L.append("")

    # Targets.
    rows = []

    def judge(name, value_s, ratio_s, ok, valid=True, note=""):
        status = "met" if (ok and valid) else "MISSED"
        rows.append((name, value_s, ratio_s, status + (f" ({note})" if note else "")))
        return status == "met"

    g32, n32 = wrk[("gateway", ch)], wrk[("nginx", ch)]
    gm, nm = median(rounds.get("gateway", [])), median(rounds.get("nginx", []))
    single = ""
    if g32 and n32 and g32["rps"] and n32["rps"]:
        single = (f"; the single {meta.get('duration', '?')} s runs above: {f1(g32['rps'], 0)} vs "
                  f"{f1(n32['rps'], 0)} ({g32['rps'] / n32['rps']:.2f}×)")
    if gm and nm:
        r = gm / nm
        errs = round_errs + (g32["non2xx"] + g32["socket_errors"] if g32 else 0)
        judge(f"throughput at c={ch} ≥ 0.9× nginx",
              f"medians of {len(rounds['gateway'])} interleaved rounds: {f1(gm, 0)} vs {f1(nm, 0)} "
              f"req/s{single}", f"{math.floor(r * 1000) / 1000:.3f}×", r >= 0.9, errs == 0,
              f"{errs} gateway errors" if errs else "")
    else:
        judge(f"throughput at c={ch} ≥ 0.9× nginx", "n/a", "n/a", False, note="not measured")

    g1, d1 = wrk[("gateway", cl)], wrk[("direct", cl)]
    if p99_pairs:
        added = median([g - d for d, g in p99_pairs])
        errs = p99_errs + (g1["non2xx"] + g1["socket_errors"] if g1 else 0)
        # A round whose wrk failed has no pair: say so rather than judge on fewer rounds.
        lost = len(p99_rounds) - len(p99_pairs)
        if lost:
            errs += lost
        single = ""
        if g1 and d1 and g1["p99"] is not None and d1["p99"] is not None:
            single = (f"; the single {meta.get('duration', '?')} s runs above: {ms(g1['p99'])} − "
                      f"{ms(d1['p99'])} = {g1['p99'] - d1['p99']:+.3f} ms")
        judge(f"added p99 latency at c={cl} ≤ 1 ms",
              f"median over {len(p99_pairs)} interleaved rounds of gateway p99 − direct p99{single}",
              f"{added:+.3f} ms", added <= 1.0, errs == 0,
              f"{errs} gateway errors or failed rounds" if errs else "")
    elif g1 and d1 and g1["p99"] is not None and d1["p99"] is not None:
        added = g1["p99"] - d1["p99"]
        errs = g1["non2xx"] + g1["socket_errors"]
        note = f"{errs} gateway errors" if errs else ""
        if added < 0:
            note = "but the direct baseline's p99 is above the gateway's: a noisy run, repeat it"
        judge(f"added p99 latency at c={cl} ≤ 1 ms", f"{ms(g1['p99'])} − {ms(d1['p99'])}",
              f"{added:+.3f} ms", added <= 1.0, errs == 0, note)
    else:
        judge(f"added p99 latency at c={cl} ≤ 1 ms", "n/a", "n/a", False, note="not measured")

    gm = (ttfc.get("gateway") or {}).get("median_ms")
    if gm is not None and dmed is not None:
        added = gm - dmed
        errs = (ttfc.get("gateway") or {}).get("errors", 0)
        judge("added time to first chunk ≤ 0.5 ms", f"{ms(gm)} − {ms(dmed)} (medians)",
              f"{added:+.3f} ms", added <= 0.5, errs == 0, f"{errs} gateway errors" if errs else "")
    else:
        judge("added time to first chunk ≤ 0.5 ms", "n/a", "n/a", False, note="not measured")

    idle_vals = [v for v in (fresh, idle) if v is not None]
    if idle_vals:
        worst = max(idle_vals)
        judge("idle RSS ≤ 20 MB", f"{worst * 1024 / MB:.1f} MB (worse of fresh / after load)",
              f"{worst * 1024 / (20 * MB):.2f}× of limit", worst * 1024 <= 20 * MB)
    else:
        judge("idle RSS ≤ 20 MB", "n/a", "n/a", False, note="not measured")

    if streams and sw.get("VmRSS"):
        v = sw["VmRSS"]
        judge(f"RSS with {n_streams} open streams ≤ 100 MB", f"{v * 1024 / MB:.1f} MB",
              f"{v * 1024 / (100 * MB):.2f}× of limit", v * 1024 <= 100 * MB,
              streams["all_open"], "" if streams["all_open"] else
              f"only {streams['first_chunk']} of {n_streams} streams opened")
    else:
        judge("RSS with 1,000 open streams ≤ 100 MB", "n/a", "n/a", False, note="not measured")

    L.append("## Against the targets (same run)")
    L.append("")
    L.append("| target | measured | ratio / margin | verdict |")
    L.append("|---|---|---|---|")
    for r in rows:
        L.append("| " + " | ".join(r) + " |")
    L.append("")
    missed = [r[0] for r in rows if not r[3].startswith("met")]
    L.append(f"**{len(rows) - len(missed)} of {len(rows)} targets met**"
             + (f"; MISSED: {'; '.join(missed)}." if missed else "."))
    L.append("")
    # Context for reading the numbers.
    d32 = wrk[("direct", ch)]
    if d32 and d32["rps"] and n32 and n32["rps"] and g32 and g32["rps"]:
        L.append(f"For context at c={ch}: nginx reaches {n32['rps'] / d32['rps']:.2f}× and the gateway "
                 f"{g32['rps'] / d32['rps']:.2f}× of the direct rate (one extra hop on the same cores).")
        L.append("")

    warns = meta.get("gateway_log_warnings")
    L.append(f"Gateway log (RUST_LOG={meta.get('rust_log', 'warn')}): "
             f"{'n/a' if warns is None else warns} warning/error lines during the run.")
    L.append("")

    text = "\n".join(L)
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        f.write(text + "\n")
    return 1 if (a.fail_on_miss and missed) else 0


if __name__ == "__main__":
    sys.exit(main())

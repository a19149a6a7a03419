#!/usr/bin/env bash
# Does exporting metrics cost throughput? Two gateways, identical but for `server.metrics`,
# in front of one stand-in upstream, measured in the same run with interleaved wrk rounds
# (c=32, 2 threads) so drift on this shared machine hits both alike. Loopback only.
# Prints per-round req/s and CPU µs per request, the medians, and the on/off ratio against
# the target (throughput difference ≤ 3%). Usage: bash benches/load/metrics_overhead.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
ROUNDS=${ROUNDS:-5}            # interleaved rounds per gateway
DURATION=${DURATION:-6}        # seconds per wrk run
CONNS=${CONNS:-32}
PY=${PYTHON:-python3}
BIN=${VISION_GATEWAY_BIN:-$ROOT/target/pgo/release/vision-gateway}
H=127.0.0.1

command -v wrk >/dev/null || { echo "wrk missing: run benches/load/run.sh once (it installs nginx and wrk)"; exit 1; }
if [ "${SKIP_BUILD:-0}" != 1 ]; then "$ROOT/scripts/build-release.sh" >/dev/null; fi

# shellcheck source=benches/load/common.sh
. "$HERE/common.sh"
start_work metrics

read -r MOCK_PORT ON_PORT OFF_PORT < <("$PY" "$HERE/util.py" free-ports 3)
start_mock "$BIN" "$MOCK_PORT"
for mode in on off; do
  metrics=true; port=$ON_PORT
  if [ "$mode" = off ]; then metrics=false; port=$OFF_PORT; fi
  cat >"$WORK/$mode.toml" <<TOML
[server]
metrics = $metrics
[[upstreams]]
name = "mock"
base_url = "http://$H:$MOCK_PORT/v1"
[[models]]
id = "*"
upstream = "mock"
TOML
  RUST_LOG=warn "$BIN" --config "$WORK/$mode.toml" --listen "$H:$port" >"$WORK/$mode.log" 2>&1 &
  PIDS+=($!)
  echo "$!" >"$WORK/$mode.pid"
  "$PY" "$HERE/util.py" wait-http "http://$H:$port/healthz" 15 "$!" || { cat "$WORK/$mode.log"; exit 1; }
done
curl -sf "http://$H:$ON_PORT/metrics" >/dev/null || { echo "metrics-on gateway does not serve /metrics"; exit 1; }
if curl -sf "http://$H:$OFF_PORT/metrics" >/dev/null; then echo "metrics-off gateway serves /metrics"; exit 1; fi

run() { # mode port -> "req/s cpu_us_per_req"
  local pid; pid=$(cat "$WORK/$2.pid")
  read -r u0 s0 hz < <("$PY" "$HERE/util.py" cpu-ticks "$pid")
  out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" -s "$HERE/post.lua" "http://$H:$1/v1/chat/completions")
  read -r u1 s1 _ < <("$PY" "$HERE/util.py" cpu-ticks "$pid")
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
  [ -z "$non2xx" ] || { echo "errors: $out"; exit 1; }
  awk -v r="$rps" -v n="$reqs" -v du="$((u1 - u0 + s1 - s0))" -v hz="$hz" 'BEGIN {printf "%s %.1f\n", r, du / hz * 1e6 / n}'
}

echo "metrics overhead: $ROUNDS interleaved rounds of ${DURATION}s at c=$CONNS; nproc=$(nproc); load $(cut -d' ' -f1-3 /proc/loadavg)"
wrk -t2 -c"$CONNS" -d2s -s "$HERE/post.lua" "http://$H:$ON_PORT/v1/chat/completions" >/dev/null
wrk -t2 -c"$CONNS" -d2s -s "$HERE/post.lua" "http://$H:$OFF_PORT/v1/chat/completions" >/dev/null
: >"$WORK/on.txt"; : >"$WORK/off.txt"
for i in $(seq "$ROUNDS"); do
  # Alternate which goes first, so neither always gets the cooler machine.
  if (( i % 2 )); then order="on off"; else order="off on"; fi
  for mode in $order; do
    port=$ON_PORT; [ "$mode" = off ] && port=$OFF_PORT
    r=$(run "$port" "$mode")
    echo "$r" >>"$WORK/$mode.txt"
    printf 'round %d  metrics %-3s  %10s req/s  %6s µs CPU/req\n' "$i" "$mode" $r
  done
done
"$PY" - "$WORK/on.txt" "$WORK/off.txt" <<'PYEOF'
import statistics, sys
on = [tuple(map(float, l.split())) for l in open(sys.argv[1])]
off = [tuple(map(float, l.split())) for l in open(sys.argv[2])]
mon, moff = statistics.median(r for r, _ in on), statistics.median(r for r, _ in off)
con, coff = statistics.median(c for _, c in on), statistics.median(c for _, c in off)
diff = (moff - mon) / moff * 100
print(f"\nmedian req/s: metrics on {mon:,.0f}, off {moff:,.0f}: on/off = {mon / moff:.3f} ({diff:+.1f}% cost)")
print(f"median CPU per request: on {con:.1f} µs, off {coff:.1f} µs")
print(f"target: throughput difference ≤ 3%: {'met' if diff <= 3 else 'MISSED'}")
PYEOF

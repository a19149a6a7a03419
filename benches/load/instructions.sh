#!/usr/bin/env bash
# Instructions the gateway executes per proxied request, counted by callgrind: repeatable
# for the same binary and inputs whatever else the machine is doing, unlike req/s here.
# The gateway runs under valgrind in front of the stand-in upstream (loopback only); after a
# warm-up the counters are reset, exactly 2 x N_PER_THREAD requests are sent at c=32, and
# the total is divided by that number.
# Usage: bash benches/load/instructions.sh [BIN]   (default: target/pgo/release/vision-gateway, from scripts/build-release.sh)
#        KEEP_PROFILE=/tmp/cg.out bash benches/load/instructions.sh   (keeps the profile)
#        MOCK_BIN=target/release/vision-gateway bash benches/load/instructions.sh \
#          target/release/examples/bare_proxy   (the floor; it has no stand-in of its own)
# Needs valgrind (Debian package `valgrind`) and wrk (benches/load/run.sh installs it).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${1:-$HERE/../../target/pgo/release/vision-gateway}
MOCK_BIN=${MOCK_BIN:-$BIN}
N_PER_THREAD=${N_PER_THREAD:-3000}
PY=${PYTHON:-python3}
for tool in valgrind callgrind_control wrk; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install valgrind wrk)"; exit 1; }
done
# shellcheck source=benches/load/common.sh
. "$HERE/common.sh"
start_work instr

read -r MOCK_PORT GW_PORT < <("$PY" "$HERE/util.py" free-ports 2)
start_mock "$MOCK_BIN" "$MOCK_PORT"
gateway_config "$MOCK_PORT" >"$WORK/gw.toml"
RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" \
  "$BIN" --config "$WORK/gw.toml" --listen "127.0.0.1:$GW_PORT" >"$WORK/gw.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
"$PY" "$HERE/util.py" wait-http "http://127.0.0.1:$GW_PORT/healthz" 60 "$GW_PID" || { cat "$WORK/gw.log"; exit 1; }

URL=http://127.0.0.1:$GW_PORT/v1/chat/completions
export POST_LUA=$HERE/post.lua
N_PER_THREAD=500 wrk -t2 -c32 -d30s -s "$HERE/fixed.lua" "$URL" >/dev/null
callgrind_control -z "$GW_PID" >/dev/null 2>&1
out=$(N_PER_THREAD=$N_PER_THREAD wrk -t2 -c32 -d120s -s "$HERE/fixed.lua" "$URL")
callgrind_control -d "$GW_PID" >/dev/null 2>&1
if grep -q Non-2xx <<<"$out"; then echo "errors during the run:"; echo "$out"; exit 1; fi
requests=$(awk '/requests in/ {print $1}' <<<"$out")
# The dump after the reset holds exactly the measured requests.
total=$(awk '/^(summary|totals):/ {print $2; exit}' "$WORK"/cg.out.* 2>/dev/null || true)
[ -n "$total" ] || { echo "no callgrind dump found"; ls "$WORK"; exit 1; }
# KEEP_PROFILE=FILE keeps the dump for `callgrind_annotate --inclusive=yes FILE`.
[ -n "${KEEP_PROFILE:-}" ] && cp "$(ls "$WORK"/cg.out.* | head -1)" "$KEEP_PROFILE"
awk -v t="$total" -v r="$requests" 'BEGIN {printf "%d requests, %d instructions, %.0f instructions per request\n", r, t, t / r}'

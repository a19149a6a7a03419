#!/usr/bin/env bash
# Where the gateway's CPU goes under load, per request, by layer: a frame-pointer build of the
# gateway in front of the stand-in upstream, wrk at c=32, `perf record -e cpu-clock` with
# call graphs, then profile_report.py prints microseconds per request for each layer
# (inclusive) and the costliest functions (self). Loopback only.
# Usage: bash benches/load/profile.sh        (builds into target/profiling, about 4 minutes
#        the first time; PROFILE_BIN=path skips the build and profiles that binary instead)
# Knobs: DURATION (8 s), FREQ (4000 Hz). Needs perf (Debian: linux-perf), wrk (run.sh
# installs it) and a kernel that lets perf sample (perf_event_paranoid <= 1, or root).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DURATION=${DURATION:-8}; FREQ=${FREQ:-4000}; PY=${PYTHON:-python3}
for tool in perf wrk; do command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install linux-perf wrk)"; exit 1; }; done
BIN=${PROFILE_BIN:-}
if [ -z "$BIN" ]; then
    # Frame pointers make the call graphs cheap and whole; a target dir of its own keeps the
    # normal release build untouched.
    CARGO_TARGET_DIR="$ROOT/target/profiling" RUSTFLAGS="-C force-frame-pointers=yes" \
        cargo build --release --bin vision-gateway --manifest-path "$ROOT/Cargo.toml"
    BIN="$ROOT/target/profiling/release/vision-gateway"
fi
# shellcheck source=benches/load/common.sh
. "$HERE/common.sh"
start_work profile

read -r MOCK_PORT GW_PORT < <("$PY" "$HERE/util.py" free-ports 2)
start_mock "$BIN" "$MOCK_PORT"
gateway_config "$MOCK_PORT" >"$WORK/gw.toml"
RUST_LOG=warn "$BIN" --config "$WORK/gw.toml" --listen "127.0.0.1:$GW_PORT" >"$WORK/gw.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
"$PY" "$HERE/util.py" wait-http "http://127.0.0.1:$GW_PORT/healthz" 15 "$GW_PID"

URL=http://127.0.0.1:$GW_PORT/v1/chat/completions
wrk -t2 -c32 -d2s -s "$HERE/post.lua" "$URL" >/dev/null
# wrk runs a second longer than perf on each side, so every sample falls under load.
wrk -t2 -c32 -d"$((DURATION + 2))s" -s "$HERE/post.lua" "$URL" >"$WORK/wrk.txt" &
WRK=$!
sleep 1
perf record -q -e cpu-clock -F "$FREQ" --call-graph fp -p "$GW_PID" -o "$WORK/perf.data" -- sleep "$DURATION" >/dev/null 2>&1
wait "$WRK"
rate=$(awk '/^Requests\/sec/ {print $2}' "$WORK/wrk.txt")
grep -q "Non-2xx" "$WORK/wrk.txt" && { echo "errors during the run:"; cat "$WORK/wrk.txt"; exit 1; }
perf script -i "$WORK/perf.data" -F comm,ip,sym 2>/dev/null \
    | "$PY" "$HERE/profile_report.py" --freq "$FREQ" --requests "$(awk -v r="$rate" -v d="$DURATION" 'BEGIN {printf "%d", r * d}')"

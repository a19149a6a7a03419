#!/usr/bin/env bash
# Load benchmark for vision-gateway: the mock upstream directly, through nginx (a plain
# reverse proxy, the baseline) and through vision-gateway, all on 127.0.0.1, in one run.
# What it measures and the knobs: benches/load/README.md. Run: bash benches/load/run.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

# ---- knobs (environment) -------------------------------------------------------------
DURATION=${DURATION:-10}            # seconds per measured wrk run
WARMUP=${WARMUP:-2}                 # seconds of wrk warm-up before each measured run
C_LOW=${C_LOW:-1};   T_LOW=${T_LOW:-1}     # low concurrency: connections, wrk threads
C_HIGH=${C_HIGH:-32}; T_HIGH=${T_HIGH:-2}  # high concurrency: connections, wrk threads
WRK_TIMEOUT=${WRK_TIMEOUT:-5}       # seconds before wrk counts a request as timed out
RATIO_ROUNDS=${RATIO_ROUNDS:-5}     # interleaved nginx/gateway rounds for the throughput verdict
RATIO_SECS=${RATIO_SECS:-5}         # seconds per target per round
TTFC_N=${TTFC_N:-300}               # streaming requests per target for time to first chunk
TTFC_WARMUP=${TTFC_WARMUP:-30}      # unrecorded rounds first
STREAMS=${STREAMS:-1000}            # concurrent open streams for the memory reading
STREAM_CHUNKS=${STREAM_CHUNKS:-600}
STREAM_DELAY_MS=${STREAM_DELAY_MS:-100}
STREAMS_DEADLINE=${STREAMS_DEADLINE:-30}   # seconds for all streams to get their first chunk
IDLE_SETTLE=${IDLE_SETTLE:-2}       # seconds of quiet before the idle-after-load RSS reading
NGINX_WORKERS=${NGINX_WORKERS:-$(nproc)}   # the gateway's tokio runtime uses one worker per core
GATEWAY_RUST_LOG=${GATEWAY_RUST_LOG:-warn}
SKIP_INSTALL=${SKIP_INSTALL:-0}     # 1: never apt-get
SKIP_BUILD=${SKIP_BUILD:-0}         # 1: never cargo build
FAIL_ON_MISS=${FAIL_ON_MISS:-0}     # 1: exit 1 if any target is MISSED
RESULTS_DIR=${RESULTS_DIR:-$HERE/results}
KEEP_WORK=${KEEP_WORK:-0}           # 1: keep the temp dir (configs, logs) after the run
PY=${PYTHON:-python3}

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }

# ---- process bookkeeping and cleanup -------------------------------------------------
PIDS=()          # long-running servers we started
CHILD=""         # the current foreground measurement (run in background so traps fire at once)
WORK=""
POLICY_CREATED=0

stop_pid() {     # TERM, bounded wait, then KILL
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 30); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ "$rc" != 0 ]; then log "exit status $rc: stopping everything this run started"; fi
    if [ -n "$CHILD" ]; then stop_pid "$CHILD"; fi
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    wait 2>/dev/null || true
    if [ "$POLICY_CREATED" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        if [ "$KEEP_WORK" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# Runs a command to completion as the current child, so Ctrl-C / TERM stop it at once.
# The first argument is where its stdout goes ("-" for ours). The redirection is on the
# command, never on this function: a trap firing during the wait runs with the function's
# redirections, and its messages must reach the terminal.
run_child() {
    local out=$1
    shift
    if [ "$out" = - ]; then "$@" & else "$@" >"$out" & fi
    CHILD=$!
    local rc=0
    wait "$CHILD" || rc=$?
    CHILD=""
    return "$rc"
}

T_START=$SECONDS

# ---- 1. tools ------------------------------------------------------------------------
NGINX_BIN=$(command -v nginx || true)
[ -z "$NGINX_BIN" ] && [ -x /usr/sbin/nginx ] && NGINX_BIN=/usr/sbin/nginx
need=()
[ -n "$NGINX_BIN" ] || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
command -v "$PY" >/dev/null || need+=(python3)
if [ "${#need[@]}" -gt 0 ]; then
    [ "$SKIP_INSTALL" = 1 ] && die "missing ${need[*]} and SKIP_INSTALL=1"
    [ "$(id -u)" = 0 ] || die "missing ${need[*]}; run as root (apt-get) or install them"
    log "installing from Debian packages: ${need[*]}"
    # Keep the package's postinst from starting a system nginx on 0.0.0.0:80.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\n# temporary, from benches/load/run.sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        POLICY_CREATED=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q "${need[@]}"
    if [ "$POLICY_CREATED" = 1 ]; then rm -f /usr/sbin/policy-rc.d; POLICY_CREATED=0; fi
    NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
fi
[ -x "$NGINX_BIN" ] || die "nginx not found"

# ---- 2. the gateway binary -----------------------------------------------------------
if [ -n "${GATEWAY_BIN:-}" ]; then
    BIN=$GATEWAY_BIN
else
    # The release build users run (scripts/run.sh): optimised with the committed profile.
    BIN=$ROOT/target/pgo/release/vision-gateway
    if [ "$SKIP_BUILD" != 1 ]; then
        if [ ! -x "$BIN" ] || [ -n "$(find "$ROOT/src" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" "$ROOT/pgo" -newer "$BIN" -print -quit 2>/dev/null)" ]; then
            log "building the release binary (scripts/build-release.sh; waits if another build holds the lock)"
            BIN=$("$ROOT/scripts/build-release.sh")
        fi
    fi
fi
[ -x "$BIN" ] || die "no gateway binary at $BIN"

# ---- limits and work dir -------------------------------------------------------------
HARD=$(ulimit -Hn)
WANT=65536
if [ "$HARD" != unlimited ] && [ "$HARD" -lt "$WANT" ]; then WANT=$HARD; fi
ulimit -n "$WANT" 2>/dev/null || true
NOFILE=$(ulimit -n)
if [ "$NOFILE" -lt $((STREAMS * 2 + 512)) ]; then
    log "WARNING: ulimit -n is $NOFILE; $STREAMS streams need about $((STREAMS * 2 + 512)) descriptors in the gateway"
fi

WORK=$(mktemp -d /tmp/vg-load.XXXXXX)
chmod 755 "$WORK"   # nginx workers run as nobody and must reach their temp paths
mkdir -p "$WORK/nginx/tmp" "$RESULTS_DIR"

read -r MOCK_PORT NGINX_PORT GW_PORT < <("$PY" "$HERE/util.py" free-ports 3)
H=127.0.0.1

# ---- machine facts -------------------------------------------------------------------
NPROC=$(nproc)
CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)
KERNEL=$(uname -srm)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
echo
echo "== machine: nproc=$NPROC; CPU: $CPU; kernel: $KERNEL; load average: $LOAD_START"
echo "== NOTE: only $NPROC cores, shared by the load generator (wrk / Python), the mock upstream and"
echo "==       the proxy under test, and possibly by other builds on this machine: absolute numbers"
echo "==       are noisy; read the same-run ratios."
echo

# ---- 3. servers ----------------------------------------------------------------------
log "starting the mock upstream on $H:$MOCK_PORT"
RUST_LOG=$GATEWAY_RUST_LOG "$BIN" mock-upstream --listen "$H:$MOCK_PORT" >"$WORK/mock.log" 2>&1 &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
"$PY" "$HERE/util.py" wait-http "http://$H:$MOCK_PORT/v1/models" 15 "$MOCK_PID" \
    || { cat "$WORK/mock.log" >&2; die "mock upstream did not start"; }

log "starting nginx ($NGINX_WORKERS workers) on $H:$NGINX_PORT"
N=$WORK/nginx
cat >"$N/nginx.conf" <<EOF
# Plain reverse proxy to the mock upstream: the baseline the gateway is compared with.
worker_processes $NGINX_WORKERS;
worker_rlimit_nofile 65536;
daemon off;
master_process on;
pid $N/nginx.pid;
error_log $N/error.log warn;
events {
    worker_connections 8192;
}
http {
    access_log off;
    client_body_temp_path $N/tmp/client_body;
    proxy_temp_path $N/tmp/proxy;
    fastcgi_temp_path $N/tmp/fastcgi;
    uwsgi_temp_path $N/tmp/uwsgi;
    scgi_temp_path $N/tmp/scgi;
    # Like the gateway (hyper), do not close client connections after N requests.
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream mock {
        server $H:$MOCK_PORT;
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 90s;
    }
    server {
        listen $H:$NGINX_PORT;
        location / {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
EOF
"$NGINX_BIN" -t -q -p "$N/" -e "$N/error.log" -c "$N/nginx.conf" || die "nginx config rejected"
"$NGINX_BIN" -p "$N/" -e "$N/error.log" -c "$N/nginx.conf" >"$N/stdout.log" 2>&1 &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
"$PY" "$HERE/util.py" wait-http "http://$H:$NGINX_PORT/v1/models" 15 "$NGINX_PID" \
    || { cat "$N/error.log" >&2; die "nginx did not start"; }

log "starting vision-gateway on $H:$GW_PORT"
cat >"$WORK/gateway.toml" <<EOF
[[upstreams]]
name = "mock"
base_url = "http://$H:$MOCK_PORT/v1"

[[models]]
id = "*"
upstream = "mock"
EOF
RUST_LOG=$GATEWAY_RUST_LOG VISION_GATEWAY_LOG_FORMAT=json \
    "$BIN" --config "$WORK/gateway.toml" --listen "$H:$GW_PORT" >"$WORK/gateway.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
"$PY" "$HERE/util.py" wait-http "http://$H:$GW_PORT/healthz" 15 "$GW_PID" \
    || { cat "$WORK/gateway.log" >&2; die "vision-gateway did not start"; }

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
sleep 0.5
RSS_FRESH=$(rss_kib "$GW_PID")
log "gateway idle RSS after a fresh start: $RSS_FRESH KiB"

for t in "direct:$MOCK_PORT" "nginx:$NGINX_PORT" "gateway:$GW_PORT"; do
    "$PY" "$HERE/util.py" probe "$H" "${t#*:}" || die "${t%%:*} does not answer chat completions correctly"
done

# ---- 4. throughput and latency (wrk) -------------------------------------------------
declare -A PORT=([direct]=$MOCK_PORT [nginx]=$NGINX_PORT [gateway]=$GW_PORT)
declare -A PROXY=([direct]="" [nginx]=$NGINX_PID [gateway]=$GW_PID)   # nginx: master + workers
cpu_ticks() { if [ $# -gt 0 ]; then "$PY" "$HERE/util.py" cpu-ticks "$@"; else echo "0 0 100"; fi; }
for c in "$C_LOW" "$C_HIGH"; do
    if [ "$c" = "$C_LOW" ]; then th=$T_LOW; else th=$T_HIGH; fi
    for t in direct nginx gateway; do
        url="http://$H:${PORT[$t]}/v1/chat/completions"
        log "wrk $t c=$c t=$th: ${WARMUP}s warm-up, ${DURATION}s measured"
        run_child /dev/null wrk -t"$th" -c"$c" -d"${WARMUP}s" --timeout "${WRK_TIMEOUT}s" -s "$HERE/post.lua" "$url" \
            || log "WARNING: wrk warm-up failed for $t"
        # CPU used by the proxy and by the mock during the measured run (ticks, children included).
        # shellcheck disable=SC2086
        read -r pu0 ps0 _ < <(cpu_ticks ${PROXY[$t]})
        read -r mu0 ms0 _ < <(cpu_ticks "$MOCK_PID")
        run_child "$WORK/wrk-$t-c$c.txt" wrk -t"$th" -c"$c" -d"${DURATION}s" --timeout "${WRK_TIMEOUT}s" --latency \
            -s "$HERE/post.lua" "$url" || log "WARNING: wrk failed for $t c=$c"
        # shellcheck disable=SC2086
        read -r pu1 ps1 tck < <(cpu_ticks ${PROXY[$t]})
        read -r mu1 ms1 _ < <(cpu_ticks "$MOCK_PID")
        echo "$((pu1 - pu0)) $((ps1 - ps0)) $((mu1 - mu0)) $((ms1 - ms0)) $tck" >"$WORK/cpu-$t-c$c.txt"
        grep -E 'Requests/sec|^ +(50|99)%|Non-2xx|Socket errors' "$WORK/wrk-$t-c$c.txt" | sed 's/^ */    /' || true
    done
done

# ---- 4b. the throughput ratio, in interleaved rounds ---------------------------------
# One run per target lands anywhere within about ±10% of the ratio on a shared machine (two
# runs 20 minutes apart read 0.86x and 1.01x): the verdict takes the median of rounds in
# which nginx and the gateway alternate, the order reversed every other round, so drift
# hits both alike.
log "throughput ratio: $RATIO_ROUNDS interleaved rounds of ${RATIO_SECS}s per target at c=$C_HIGH"
: >"$WORK/ratio.txt"
for r in $(seq 1 "$RATIO_ROUNDS"); do
    order="nginx gateway"
    [ $((r % 2)) = 0 ] && order="gateway nginx"
    for t in $order; do
        run_child "$WORK/ratio-wrk.txt" wrk -t"$T_HIGH" -c"$C_HIGH" -d"${RATIO_SECS}s" --timeout "${WRK_TIMEOUT}s" \
            -s "$HERE/post.lua" "http://$H:${PORT[$t]}/v1/chat/completions" || log "WARNING: wrk failed for $t (round $r)"
        rps=$(awk '/^Requests\/sec/ {print $2}' "$WORK/ratio-wrk.txt")
        errs=$(awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(/,/, ""); n += $4 + $6 + $8 + $10} END {print n + 0}' "$WORK/ratio-wrk.txt")
        echo "$r $t ${rps:-0} $errs" >>"$WORK/ratio.txt"
    done
    log "  round $r: $(awk -v r="$r" '$1 == r {printf "%s %s req/s  ", $2, $3}' "$WORK/ratio.txt")"
done
rm -f "$WORK/ratio-wrk.txt"

# ---- 4c. the added p99 at c=1, in interleaved rounds ---------------------------------
# A p99 over one 10 s run at c=1 rests on its slowest 1% of requests, which a neighbour's
# burst on this shared machine decides (one run read +0.10 ms, another +1.52 ms for the same
# build): the verdict takes the median over rounds of the gateway's p99 minus the direct
# p99 measured just before or after it.
log "added p99 at c=$C_LOW: $RATIO_ROUNDS interleaved rounds of ${RATIO_SECS}s per target"
: >"$WORK/p99.txt"
for r in $(seq 1 "$RATIO_ROUNDS"); do
    order="direct gateway"
    [ $((r % 2)) = 0 ] && order="gateway direct"
    for t in $order; do
        run_child "$WORK/p99-wrk.txt" wrk -t"$T_LOW" -c"$C_LOW" -d"${RATIO_SECS}s" --timeout "${WRK_TIMEOUT}s" --latency \
            -s "$HERE/post.lua" "http://$H:${PORT[$t]}/v1/chat/completions" || log "WARNING: wrk failed for $t (round $r)"
        p99=$(awk '$1 == "99%" {print $2}' "$WORK/p99-wrk.txt")
        errs=$(awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(/,/, ""); n += $4 + $6 + $8 + $10} END {print n + 0}' "$WORK/p99-wrk.txt")
        echo "$r $t ${p99:-n/a} $errs" >>"$WORK/p99.txt"
    done
    log "  round $r: $(awk -v r="$r" '$1 == r {printf "%s p99 %s  ", $2, $3}' "$WORK/p99.txt")"
done
rm -f "$WORK/p99-wrk.txt"

# ---- 5. streaming: time to first chunk -----------------------------------------------
log "time to first chunk: $TTFC_N streaming requests per target (+$TTFC_WARMUP warm-up), interleaved"
run_child - "$PY" "$HERE/ttfc.py" --n "$TTFC_N" --warmup "$TTFC_WARMUP" --deadline 90 --out "$WORK/ttfc.json" \
    "direct=$H:$MOCK_PORT" "gateway=$H:$GW_PORT" "nginx=$H:$NGINX_PORT" || log "WARNING: ttfc.py reported a problem"

# ---- 6. memory -----------------------------------------------------------------------
sleep "$IDLE_SETTLE"
kill -0 "$GW_PID" 2>/dev/null || die "the gateway died during the load phases (log: $WORK/gateway.log)"
RSS_IDLE=$(rss_kib "$GW_PID")
log "gateway idle RSS after the load: $RSS_IDLE KiB"

log "opening $STREAMS concurrent streams through the gateway ($STREAM_CHUNKS chunks every ${STREAM_DELAY_MS} ms)"
run_child - "$PY" "$HERE/open_streams.py" --host "$H" --port "$GW_PORT" --pid "$GW_PID" --other-pid "$MOCK_PID" \
    --n "$STREAMS" --chunks "$STREAM_CHUNKS" --chunk-delay-ms "$STREAM_DELAY_MS" \
    --deadline "$STREAMS_DEADLINE" --out "$WORK/streams.json" || log "WARNING: not every stream opened"
kill -0 "$GW_PID" 2>/dev/null || die "the gateway died during the streams phase (log: $WORK/gateway.log)"

# ---- 7. report -----------------------------------------------------------------------
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
export M_DATE="$(date -u '+%Y-%m-%d %H:%M UTC')" M_NPROC="$NPROC" M_CPU="$CPU" M_KERNEL="$KERNEL" \
    M_LOAD_START="$LOAD_START" M_LOAD_END="$LOAD_END" M_RSS_FRESH="$RSS_FRESH" M_RSS_IDLE="$RSS_IDLE" \
    M_NGINX_WORKERS="$NGINX_WORKERS" M_DURATION="$DURATION" M_WARMUP="$WARMUP" M_C_LOW="$C_LOW" \
    M_C_HIGH="$C_HIGH" M_T_LOW="$T_LOW" M_T_HIGH="$T_HIGH" M_TTFC_N="$TTFC_N" M_STREAMS="$STREAMS" \
    M_IDLE_SETTLE="$IDLE_SETTLE" M_RUST_LOG="$GATEWAY_RUST_LOG" \
    M_BIN_BUILT="$(date -u -r "$BIN" '+%Y-%m-%d %H:%M UTC')" \
    M_GW_VERSION="$("$BIN" --version 2>/dev/null || echo '?')" \
    M_COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | grep -q . && echo '+uncommitted' || true)" \
    M_NGINX_VERSION="$("$NGINX_BIN" -v 2>&1 | sed 's/.*nginx\///')" \
    M_WRK_VERSION="$(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2 || true)" \
    M_GW_WARNINGS="$(grep -c -E '"level":"(WARN|ERROR)"' "$WORK/gateway.log" || true)"
"$PY" - "$WORK/meta.json" <<'EOF'
import json, os, sys
e = os.environ
ints = lambda k: int(e[k]) if e.get(k, "").isdigit() else None
meta = {
    "date": e["M_DATE"], "nproc": e["M_NPROC"], "cpu": e["M_CPU"], "kernel": e["M_KERNEL"],
    "load_start": e["M_LOAD_START"], "load_end": e["M_LOAD_END"],
    "rss_fresh_kib": ints("M_RSS_FRESH"), "rss_idle_after_traffic_kib": ints("M_RSS_IDLE"),
    "nginx_workers": e["M_NGINX_WORKERS"], "duration": e["M_DURATION"], "warmup": e["M_WARMUP"],
    "c_low": int(e["M_C_LOW"]), "c_high": int(e["M_C_HIGH"]), "t_low": e["M_T_LOW"],
    "t_high": e["M_T_HIGH"], "ttfc_n": e["M_TTFC_N"], "streams": e["M_STREAMS"],
    "idle_settle": e["M_IDLE_SETTLE"], "gateway_version": e["M_GW_VERSION"], "commit": e["M_COMMIT"],
    "nginx_version": e["M_NGINX_VERSION"], "wrk_version": e["M_WRK_VERSION"],
    "gateway_log_warnings": ints("M_GW_WARNINGS"), "rust_log": e["M_RUST_LOG"],
    "binary_built": e["M_BIN_BUILT"],
}
json.dump(meta, open(sys.argv[1], "w"), indent=1)
EOF

mkdir -p "$RESULTS_DIR/raw"
cp "$WORK"/*.txt "$WORK"/*.json "$WORK"/*.log "$WORK/gateway.toml" "$RESULTS_DIR/raw/" 2>/dev/null || true
cp "$N/nginx.conf" "$RESULTS_DIR/raw/nginx.conf" 2>/dev/null || true

echo
REPORT_ARGS=(--work "$WORK" --out "$RESULTS_DIR/latest.md")
[ "$FAIL_ON_MISS" = 1 ] && REPORT_ARGS+=(--fail-on-miss)
rc=0
"$PY" "$HERE/report.py" "${REPORT_ARGS[@]}" || rc=$?
echo
if [ "${M_GW_WARNINGS:-0}" != 0 ]; then
    log "the gateway logged $M_GW_WARNINGS warning/error lines; first ones:"
    grep -m5 -E '"level":"(WARN|ERROR)"' "$WORK/gateway.log" || true
fi
log "summary written to $RESULTS_DIR/latest.md (raw outputs in $RESULTS_DIR/raw/); took $((SECONDS - T_START)) s"
exit "$rc"

#!/usr/bin/env bash
# The throughput ratio to nginx, read in interleaved rounds: nginx and one or more gateway
# binaries in front of one stand-in upstream, wrk at c=32 against each in turn, the order
# reversed every other round, so drift on a shared machine hits all alike. Prints each
# round's req/s and proxy CPU per request, then the medians and the ratio to nginx.
# Usage: bash benches/load/interleaved.sh [NAME=BINARY ...]
#        (default: gateway=target/pgo/release/vision-gateway; build it first: scripts/build-release.sh)
# Knobs: ROUNDS (7), DURATION (5 s), CONNS (32). Loopback only. Needs nginx, wrk (run.sh
# installs them) and bc.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROUNDS=${ROUNDS:-7}; DURATION=${DURATION:-5}; CONNS=${CONNS:-32}; PY=${PYTHON:-python3}
[ $# -gt 0 ] || set -- "gateway=$HERE/../../target/pgo/release/vision-gateway"
MOCK_BIN=${1#*=}
for tool in nginx wrk bc; do command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || { echo "missing $tool"; exit 1; }; done
NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
# shellcheck source=benches/load/common.sh
. "$HERE/common.sh"
start_work interleaved
chmod 755 "$WORK"; mkdir -p "$WORK/tmp"

read -r -a PORTS < <("$PY" "$HERE/util.py" free-ports $(($# + 2)))
MP=${PORTS[0]}; NP=${PORTS[1]}
start_mock "$MOCK_BIN" "$MP"
cat >"$WORK/nginx.conf" <<NGX
worker_processes $(nproc); daemon off; pid $WORK/nginx.pid; error_log $WORK/error.log warn;
events { worker_connections 8192; }
http {
    access_log off; keepalive_requests 1000000;
    client_body_temp_path $WORK/tmp/cb; proxy_temp_path $WORK/tmp/p; fastcgi_temp_path $WORK/tmp/f;
    uwsgi_temp_path $WORK/tmp/u; scgi_temp_path $WORK/tmp/s;
    upstream mock { server 127.0.0.1:$MP; keepalive 64; keepalive_requests 1000000; }
    server { listen 127.0.0.1:$NP; location / { proxy_pass http://mock; proxy_http_version 1.1;
             proxy_set_header Connection ""; proxy_buffering off; } }
}
NGX
"$NGINX_BIN" -p "$WORK/" -e "$WORK/error.log" -c "$WORK/nginx.conf" >/dev/null 2>&1 &
NG=$!; PIDS+=("$NG")
"$PY" "$HERE/util.py" wait-http "http://127.0.0.1:$NP/v1/models" 15 "$NG"
gateway_config "$MP" >"$WORK/gw.toml"
declare -A PORT CPU_PIDS
NAMES=(nginx); PORT[nginx]=$NP; CPU_PIDS[nginx]="$(pgrep -P "$NG" | tr '\n' ' ')"
i=2
for spec in "$@"; do
    name=${spec%%=*}; bin=${spec#*=}; port=${PORTS[$i]}; i=$((i + 1))
    RUST_LOG=warn VISION_GATEWAY_LOG_FORMAT=json "$bin" --config "$WORK/gw.toml" --listen "127.0.0.1:$port" >"$WORK/$name.log" 2>&1 &
    PIDS+=($!); CPU_PIDS[$name]=$!; PORT[$name]=$port; NAMES+=("$name")
    "$PY" "$HERE/util.py" wait-http "http://127.0.0.1:$port/healthz" 15 "$!"
done
ticks() { local t=0 p u s; for p in "$@"; do read -r u s < <(awk '{print $14, $15}' "/proc/$p/stat"); t=$((t + u + s)); done; echo "$t"; }
url() { echo "http://127.0.0.1:${PORT[$1]}/v1/chat/completions"; }
for n in "${NAMES[@]}"; do wrk -t2 -c"$CONNS" -d2s -s "$HERE/post.lua" "$(url "$n")" >/dev/null; done
HZ=$(getconf CLK_TCK)
for r in $(seq 1 "$ROUNDS"); do
    order=("${NAMES[@]}"); [ $((r % 2)) = 0 ] && mapfile -t order < <(printf '%s\n' "${NAMES[@]}" | tac)
    for n in "${order[@]}"; do
        # shellcheck disable=SC2086
        c0=$(ticks ${CPU_PIDS[$n]})
        out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" -s "$HERE/post.lua" "$(url "$n")")
        # shellcheck disable=SC2086
        c1=$(ticks ${CPU_PIDS[$n]})
        grep -q -E 'Non-2xx|Socket errors' <<<"$out" && { echo "errors from $n:"; echo "$out"; exit 1; }
        rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out"); total=$(awk '/requests in/ {print $1}' <<<"$out")
        echo "round $r $n $rps $(echo "scale=1; ($c1 - $c0) * 1000000 / $HZ / $total" | bc)"
    done
done | tee "$WORK/rounds.txt"
"$PY" - "$WORK/rounds.txt" <<'PYEOF'
import collections, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    _, _, name, rps, cpu = line.split()
    rows[name].append((float(rps), float(cpu)))
base = statistics.median(r for r, _ in rows["nginx"])
for name, v in rows.items():
    med = statistics.median(r for r, _ in v)
    print(f"{name:12s} median {med:9.0f} req/s  {med / base:.3f}x nginx  "
          f"proxy CPU {statistics.median(c for _, c in v):.1f} us/req  ({len(v)} rounds)")
PYEOF

# Sourced by the closer-look load scripts (interleaved.sh, instructions.sh, profile.sh,
# metrics_overhead.sh): a temp dir that is removed on exit together with every process
# started, the stand-in upstream on a loopback port, and the gateway config that sends every
# model to it. Expects HERE (benches/load) and PY (python3) to be set.

# Creates $WORK (/tmp/vg-NAME.*) and the exit trap that stops $PIDS and removes it.
start_work() {
    WORK=$(mktemp -d "/tmp/vg-$1.XXXXXX")
    PIDS=()
    trap stop_work EXIT INT TERM
}

stop_work() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}

# start_mock BIN PORT: runs BIN's stand-in upstream on 127.0.0.1:PORT and waits until it
# answers; its pid is $MOCK.
start_mock() {
    RUST_LOG=warn "$1" mock-upstream --listen "127.0.0.1:$2" >"$WORK/mock.log" 2>&1 &
    MOCK=$!
    PIDS+=("$MOCK")
    "$PY" "$HERE/util.py" wait-http "http://127.0.0.1:$2/v1/models" 15 "$MOCK"
}

# gateway_config PORT: prints a config routing every model to the stand-in on PORT.
gateway_config() {
    printf '[[upstreams]]\nname = "mock"\nbase_url = "http://127.0.0.1:%s/v1"\n[[models]]\nid = "*"\nupstream = "mock"\n' "$1"
}

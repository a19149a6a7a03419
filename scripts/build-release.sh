#!/usr/bin/env bash
# Builds the release binary of vision-gateway, optimised with the committed profile
# (pgo/vision-gateway.profdata, made by scripts/pgo.sh), and prints its path. Its own target
# directory (target/pgo): a plain `cargo build --release` and this one do not rebuild each
# other. Without the profile file it builds without one.
set -euo pipefail
cd "$(dirname "$0")/.."
flags=${RUSTFLAGS:-}
if [ -f pgo/vision-gateway.profdata ]; then
    # A profile older than the code still applies to every function that did not change;
    # LLVM's notes about the others would only repeat that.
    flags="$flags -Cprofile-use=$PWD/pgo/vision-gateway.profdata -Cllvm-args=-no-pgo-warn-mismatch"
fi
[ $# -eq 0 ] || { echo "usage: $0 (no arguments)" >&2; exit 2; }
RUSTFLAGS=$flags cargo build --release --locked --target-dir target/pgo --bin vision-gateway >&2
echo "$PWD/target/pgo/release/vision-gateway"

#!/usr/bin/env bash
# Regenerates pgo/vision-gateway.profdata, the profile the release build is optimised with
# (scripts/build-release.sh). Run it after changing the request path, and commit the file.
# Builds an instrumented binary (target/pgo-gen), drives it with scripts/pgo_train.py
# (loopback only), and merges what it recorded with llvm-profdata of rustc's own LLVM
# major version (Debian's llvm-NN package, installed here if missing, with wrk and the
# photos the training sends).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
llvm=$(rustc --version --verbose | awk '/^LLVM version/ {split($3, v, "."); print v[1]}')
./scripts/install-deps.sh pgo "llvm-$llvm"
PROFDATA=llvm-profdata-$llvm
command -v "$PROFDATA" >/dev/null || { echo "missing $PROFDATA (apt-get install llvm-$llvm)" >&2; exit 1; }

RAW=$ROOT/target/pgo-gen/profraw
rm -rf "$RAW"
# Only the profile flag, as build-release.sh adds only the profile: the same code both times.
RUSTFLAGS="-Cprofile-generate=$RAW" cargo build --release --locked --target-dir target/pgo-gen \
    --bin vision-gateway
# Build scripts of dependencies ran instrumented too; only the gateway's run is kept.
rm -rf "$RAW"
python3 scripts/pgo_train.py --bin target/pgo-gen/release/vision-gateway \
    --mock-bin target/pgo-gen/release/vision-gateway
# The stand-in is the same instrumented binary: its profile is the stand-in's code, which
# the gateway binary also carries; merged with the gateway's.
mkdir -p pgo
"$PROFDATA" merge --sparse -o pgo/vision-gateway.profdata "$RAW"
ls -l pgo/vision-gateway.profdata

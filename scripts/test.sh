#!/usr/bin/env bash
# Runs every test of vision-gateway: formatting, lints, Rust unit and integration tests,
# and the OpenAI Python SDK compatibility suite. Installs what it needs (a Python venv with
# the pinned SDK) on a fresh Debian machine. Usage: ./scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --all-targets --locked -- -D warnings

step "Rust unit and integration tests"
cargo build --locked --bin vision-gateway
cargo test --locked

step "Python SDK compatibility suite (venv in .venv)"
if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
export VISION_GATEWAY_BIN="$PWD/target/debug/vision-gateway"
.venv/bin/python -m pytest tests/python -q -p no:cacheprovider

echo
echo "All tests passed."

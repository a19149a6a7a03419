#!/usr/bin/env bash
# Runs every test of vision-gateway: formatting, lints, Rust unit and integration tests, the
# OpenAI Python SDK compatibility suite, and the deployment files' checks. Installs what it
# needs on a fresh Debian machine (a Python venv with pinned packages; Debian's kubectl).
# Usage: ./scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "Debian packages (build: cmake, nasm; tests: mate-backgrounds photos, redis-server for shared limits, chromium for the playground)"
./scripts/install-deps.sh test

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings (default features, then all features)"
cargo clippy --all-targets --locked -- -D warnings
cargo clippy --all-targets --locked --all-features -- -D warnings

step "Rust unit and integration tests"
cargo build --locked --bin vision-gateway
cargo test --locked --all-features

step "Python SDK compatibility suite (venv in .venv)"
if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
export VISION_GATEWAY_BIN="$PWD/target/debug/vision-gateway"
.venv/bin/python -m pytest tests/python -q -p no:cacheprovider

step "Deployment: Dockerfile (hadolint), Kubernetes manifests (kustomize + kubernetes-validate)"
# Always test with Debian's kubectl (what a fresh machine gets), unpacked once into .venv.
if [[ ! -x .venv/debian-kubectl/usr/bin/kubectl ]]; then
  tests/deploy/install.sh --debian-kubectl .venv/debian-kubectl
else
  tests/deploy/install.sh
fi
KUBECTL="$PWD/.venv/debian-kubectl/usr/bin/kubectl" .venv/bin/python -m pytest tests/deploy -q -p no:cacheprovider

echo
echo "All tests passed."

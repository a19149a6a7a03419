#!/usr/bin/env bash
# Runs vision-gateway (release build, optimised with the committed profile: build-release.sh).
# Installs the build's Debian packages first if missing.
# Arguments go to the gateway: ./scripts/run.sh --config config/vision-gateway.toml
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh build
bin=$(./scripts/build-release.sh)
exec "$bin" "$@"

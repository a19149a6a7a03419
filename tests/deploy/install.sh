#!/usr/bin/env bash
# Installs what tests/deploy needs on a fresh Debian 12 machine, then says how to run them.
#
#   tests/deploy/install.sh                          # kubectl (if missing) + the Python venv
#   tests/deploy/install.sh --debian-kubectl DIR     # also unpack Debian's kubectl into DIR
#
# kubectl: installed only when no `kubectl` is on PATH, from Debian (package
# kubernetes-client, kubectl 1.20, whose built-in kustomize is old; the kustomizations are
# written for it). --debian-kubectl unpacks that same package into DIR without installing it,
# for a machine that already has another kubectl; point the tests at it with
# KUBECTL=DIR/usr/bin/kubectl.
# Python: .venv at the repository root (created if missing) with tests/deploy/requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."

debian_kubectl_dir=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --debian-kubectl) debian_kubectl_dir="${2:?--debian-kubectl needs a directory}"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

sudo=()
if [[ $(id -u) -ne 0 ]]; then
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive

if ! command -v kubectl >/dev/null 2>&1; then
  echo "==> kubectl not found: installing Debian's kubernetes-client"
  "${sudo[@]}" apt-get update
  "${sudo[@]}" apt-get install -y kubernetes-client
else
  echo "==> kubectl found at $(command -v kubectl); not installing it"
fi

if [[ -n "$debian_kubectl_dir" ]]; then
  echo "==> unpacking Debian's kubernetes-client into $debian_kubectl_dir"
  mkdir -p "$debian_kubectl_dir"
  debian_kubectl_dir=$(cd "$debian_kubectl_dir" && pwd)
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "${sudo[@]}" apt-get update
  # apt-get download writes into the current directory; _apt may not write to $work.
  (cd "$work" && chmod 0777 . && apt-get download kubernetes-client)
  dpkg -x "$work"/kubernetes-client_*.deb "$debian_kubectl_dir"
  echo "    export KUBECTL=$debian_kubectl_dir/usr/bin/kubectl"
fi

if [[ ! -x .venv/bin/python ]]; then
  echo "==> creating .venv"
  python3 -m venv .venv
fi
echo "==> installing tests/deploy/requirements.txt into .venv"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/deploy/requirements.txt

cat <<'DONE'
==> ready. The check-config tests need the gateway binary:
      cargo build --locked --bin vision-gateway
    then run:
      .venv/bin/python -m pytest tests/deploy
DONE

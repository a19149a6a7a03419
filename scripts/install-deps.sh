#!/usr/bin/env bash
# Installs the Debian packages vision-gateway needs, only those missing.
#   ./scripts/install-deps.sh build   cmake and nasm: the turbojpeg crate builds libjpeg-turbo 3
#                                     (SIMD) from source; Debian 12 ships only 2.1
#   ./scripts/install-deps.sh test    build + mate-backgrounds (real photos the image tests use),
#                                     redis-server and redis-tools (the shared rate-limit tests and bench),
#                                     chromium and fonts-dejavu-core (the playground's browser test
#                                     drives Debian's Chromium; Playwright downloads no browser)
#   ./scripts/install-deps.sh pgo llvm-NN   build + wrk, mate-backgrounds and llvm-NN
#                                     (llvm-profdata of rustc's LLVM, named by scripts/pgo.sh)
# Needs root for apt-get when something is missing; does nothing when all is there.
set -euo pipefail

want=(cmake nasm)
case "${1:-build}" in
  build) ;;
  test) want+=(mate-backgrounds redis-server redis-tools chromium fonts-dejavu-core) ;;
  pgo) [[ ${2:-} == llvm-[0-9]* ]] || { echo "usage: $0 pgo llvm-NN" >&2; exit 2; }
       want+=(wrk mate-backgrounds "$2") ;;
  *) echo "usage: $0 build|test|pgo" >&2; exit 2 ;;
esac

missing=()
for pkg in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -ne 0 ]]; then
  echo "missing Debian packages: ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
  || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }

#!/usr/bin/env bash
# Install the system packages courthub needs, where apt exists; idempotent and quiet when done.
set -euo pipefail

PACKAGES=(mosquitto mosquitto-clients ffmpeg socat openssl)
BINARIES=(mosquitto mosquitto_pub ffmpeg socat openssl)

missing=()
for i in "${!BINARIES[@]}"; do
  command -v "${BINARIES[$i]}" >/dev/null 2>&1 || missing+=("${PACKAGES[$i]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "courthub: apt-get not found; please install: ${missing[*]}" >&2
  echo "courthub: without mosquitto the demo uses the embedded iotcore broker; tests need mosquitto." >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "courthub: not root and no sudo; please install: ${missing[*]}" >&2; exit 1
  fi
fi
echo "courthub: installing ${missing[*]} with apt"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The Debian package starts a system-wide broker on :1883; courthub runs its own, so stop it.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet mosquitto 2>/dev/null; then
  $SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi

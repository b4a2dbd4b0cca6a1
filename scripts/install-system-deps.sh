#!/usr/bin/env bash
# Install the system packages courthub needs, where apt exists; idempotent and quiet when done.
#   mosquitto, mosquitto-clients  the broker the hub owns, and its C clients (benchmark ceiling)
#   ffmpeg                        video recording (stream copy) and H.264 encoding
#   gir1.2-gst-rtsp-server-1.0, python3-gi, gstreamer1.0-plugins-{base,good,bad}  RTSP camera sim
#   socat                         named pty pairs for serial devices
#   openssl                       test certificates
#   portaudio19-dev               PyAudio (microphone capture) builds from source against it
#   alsa-utils                    arecord -l / aplay -L to find a courtroom's input device
#   chromium, fonts-noto-cjk      browser tests of the web console (Chinese UI text)
#   espeak-ng, sox                speech for the transcription tests, resampled to 16 kHz
#   victoria-metrics              a real time-series server for the telemetry sink's tests
#                                 (it accepts InfluxDB's /api/v2/write)
#   faketime (libfaketime)        the chaos suite's clock jump: an agent whose wall clock steps
#   influxdb                      InfluxDB 1.x for the InfluxQL chart reader's tests (they start
#                                 their own influxd; the packaged service is not wanted)
set -euo pipefail

# package:probe — the probe is a command, or dpkg:NAME for packages without a command
WANTED=(
  "mosquitto:mosquitto"
  "mosquitto-clients:mosquitto_pub"
  "ffmpeg:ffmpeg"
  "gir1.2-gst-rtsp-server-1.0:dpkg:gir1.2-gst-rtsp-server-1.0" "python3-gi:dpkg:python3-gi" "gstreamer1.0-plugins-base:dpkg:gstreamer1.0-plugins-base" "gstreamer1.0-plugins-good:dpkg:gstreamer1.0-plugins-good" "gstreamer1.0-plugins-bad:dpkg:gstreamer1.0-plugins-bad"
  "socat:socat"
  "openssl:openssl"
  "portaudio19-dev:dpkg:portaudio19-dev"
  "alsa-utils:arecord"
  "chromium:chromium"
  "fonts-noto-cjk:dpkg:fonts-noto-cjk"
  "espeak-ng:espeak-ng" "sox:sox"
  "victoria-metrics:victoria-metrics"
  "influxdb:influxd"
  "faketime:faketime"
)

present() {
  case "$1" in
    dpkg:*) dpkg -s "${1#dpkg:}" >/dev/null 2>&1 ;;
    *) command -v "$1" >/dev/null 2>&1 ;;
  esac
}

missing=()
for entry in "${WANTED[@]}"; do
  package=${entry%%:*}
  probe=${entry#*:}
  present "$probe" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "courthub: apt-get not found; please install: ${missing[*]}" >&2
  echo "courthub: without mosquitto the demo uses the embedded iotcore broker; tests need all of them." >&2
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
# Likewise the influxdb package's service on :8086: the tests run their own influxd.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet influxdb 2>/dev/null; then
  $SUDO systemctl disable --now influxdb >/dev/null 2>&1 || true
fi

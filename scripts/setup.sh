#!/usr/bin/env bash
# Everything `make demo` and `make test` need on a fresh Debian / Raspberry Pi OS machine:
# the Debian packages (when missing and running as root), a venv, torch pinned, the project.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
# Festival and its voices: the second speech engine of `modelgen dataset keywords`.
DEB_PACKAGES=(mosquitto mosquitto-clients espeak-ng libportaudio2
  festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts)

missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    # Without a package mirror, go on: the tests that need a missing tool skip with a reason.
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
      echo "setup: could not install ${missing[*]}; continuing without them" >&2
    fi
  else
    echo "setup: missing Debian packages (${missing[*]}); run as root or: sudo apt-get install ${missing[*]}" >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q -U pip
fi
# shellcheck disable=SC2086
"$VENV/bin/pip" install -q $TORCH_SPEC
"$VENV/bin/pip" install -q -e '.[all]'
echo "setup: ready ($VENV)"

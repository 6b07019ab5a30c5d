#!/usr/bin/env bash
# Install govpki into .venv and serve it. On an empty instance (./instance by
# default) this runs the demo ceremony first: root CA, issuing CA, the 14
# prefecture RAs and a first security administrator whose one-time password is
# printed once. Configuration: GOVPKI_* environment variables (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  if ! python3 -m venv .venv 2>/dev/null; then
    rm -rf .venv
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv .venv
  fi
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e .
exec .venv/bin/govpki serve "$@"

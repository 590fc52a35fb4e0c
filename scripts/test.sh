#!/usr/bin/env bash
# Set up and run the whole test suite on a fresh Debian machine with Python 3.10+.
# Installs redis-server, openssl, chromium and chromium-driver (apt) if missing, makes .venv, installs the project with its test extra,
# runs ruff and pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
apt_install() {
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)  # cluster create, sentinel checks
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v openssl >/dev/null || missing+=(openssl)  # the TLS tests make their certificates
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"

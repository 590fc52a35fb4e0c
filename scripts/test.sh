#!/usr/bin/env bash
# Set up and run the whole test suite on a fresh Debian machine with Python 3.10+: installs
# redis-server, redis-tools, openssl, chromium and chromium-driver (apt) if missing, makes a
# virtual environment, installs the project and its toolchain, runs ruff, mypy, the docs build
# (mkdocs build --strict: a broken link or reference fails) and pytest.
#
#   bash scripts/test.sh [--locked | --oldest | --latest] [pytest arguments...]
#
#   --locked  (the default; what CI runs) the exact versions in requirements/dev.txt, in .venv
#   --oldest  the lowest versions setup.cfg allows of every runtime dependency (redis, gevent,
#             gevent-websocket, flask, wsproto, gunicorn, hiredis, prometheus-client;
#             scripts/oldest_constraints.py), the rest resolved by pip, in .venv-oldest
#   --latest  the newest releases of everything, without the lock, in .venv-latest
set -euo pipefail
cd "$(dirname "$0")/.."

mode=locked
case "${1:-}" in
  --locked|--oldest|--latest) mode=${1#--}; shift ;;
esac

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

if [ "$mode" = locked ]; then venv=.venv; else venv=.venv-$mode; fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip() { "$venv/bin/python" -m pip --disable-pip-version-check "$@"; }

case $mode in
  locked)
    pip install -q -r requirements/dev.txt
    # built with the locked setuptools, not whichever is newest on PyPI today
    pip install -q --no-deps --no-build-isolation -e . ;;
  oldest)
    python3 scripts/oldest_constraints.py > "$venv/oldest-constraints.txt"
    echo "--oldest: $(tr '\n' ' ' < "$venv/oldest-constraints.txt")"
    pip install -q --upgrade pip
    pip install -q -c "$venv/oldest-constraints.txt" -e '.[test,docs]' ;;
  latest)
    pip install -q --upgrade pip
    pip install -q --upgrade --upgrade-strategy eager -e '.[test,docs]' ;;
esac
pip check

"$venv/bin/ruff" check .
"$venv/bin/mypy"
NO_MKDOCS_2_WARNING=1 "$venv/bin/mkdocs" build --strict --quiet
"$venv/bin/python" -m pytest "$@"

#!/usr/bin/env bash
# Refresh the toolchain lock, requirements/dev.txt: every package the tests, the linters, the docs
# and the benchmarks install (setup.cfg's test, bench, docs and lock extras, and what they need),
# each pinned to the newest release that setup.cfg's ranges allow. Compiled with pip-tools by this
# machine's python3. Then run `bash scripts/test.sh`, and commit the lock if it passes.
# Extra arguments go to pip-compile (e.g. --upgrade-package redis==8.1.0 to hold one back).
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x .venv/bin/python ] || python3 -m venv .venv
# pip and pip-tools at the versions the current lock gives them (pip-tools follows pip's
# internals closely, so the two move together, when the lock moves)
locked=()
[ -f requirements/dev.txt ] && locked=(-c requirements/dev.txt)
.venv/bin/python -m pip install -q "${locked[@]}" pip pip-tools
CUSTOM_COMPILE_COMMAND="bash scripts/lock.sh" .venv/bin/pip-compile --quiet --upgrade \
  --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
  --extra test --extra bench --extra docs --extra lock --output-file requirements/dev.txt "$@" setup.cfg
echo "requirements/dev.txt refreshed; now: bash scripts/test.sh"

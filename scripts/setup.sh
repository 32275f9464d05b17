#!/usr/bin/env bash
# Create ./.venv and install allpairs with its test extras. Idempotent: reinstalls only when pyproject or the
# image's pins change. The pins (containers/requirements.txt) constrain the install, so the tests run with the
# very versions the step image ships.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.allpairs-installed
want="$(cat pyproject.toml containers/requirements.txt | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[test]" -c containers/requirements.txt
    echo "$want" > "$stamp"
fi

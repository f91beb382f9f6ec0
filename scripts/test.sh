#!/usr/bin/env bash
# Install what the test suite needs (PostgreSQL from Debian, a venv with ferry[test]) and run it.
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "installing PostgreSQL (Debian package) for the store tests..."
  sudo_=""; [ "$(id -u)" -ne 0 ] && sudo_="sudo"
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq postgresql >/dev/null
fi

venv=${FERRY_VENV:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e '.[test]'

"$venv/bin/ruff" check src tests examples bench
"$venv/bin/ruff" format --check src tests examples bench
exec "$venv/bin/python" -m pytest -q "$@"

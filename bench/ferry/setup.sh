#!/usr/bin/env bash
# setup.sh: make sure the venv serve.sh uses ($FERRY_VENV, default <repo>/.venv) exists with ferry installed
# editable from $FERRY_SRC (default: the repo that holds this folder).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
venv=${FERRY_VENV:-$repo/.venv} src=${FERRY_SRC:-$repo}
[[ -x $venv/bin/ferry ]] && exit 0
log=${PEERS_HOME:-/tmp/peers}/logs/setup-ferry.log; mkdir -p "${log%/*}"
echo "installing ferry from $src into $venv (log: $log)" >&2
{ python3 -m venv "$venv" && "$venv/bin/python" -m pip install -q -e "$src"; } >"$log" 2>&1 \
  || { tail -20 "$log" >&2; exit 1; }

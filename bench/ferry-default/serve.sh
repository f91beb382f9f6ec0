#!/usr/bin/env bash
# The ferry adapter as a newcomer runs it: plain `ferry serve`, every default (workers: auto, one per core).
FERRY_WORKERS=auto exec "$(dirname "$0")/../ferry/serve.sh" "$@"

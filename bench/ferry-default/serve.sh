#!/usr/bin/env bash
# The ferry adapter as a newcomer runs it: plain `ferry serve`, one process, every default.
FERRY_WORKERS=1 exec "$(dirname "$0")/../ferry/serve.sh" "$@"

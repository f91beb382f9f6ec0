#!/usr/bin/env bash
# plain `ferry serve --workers 1`: every other default (the default before `--workers auto`; issue 28's item 3).
FERRY_WORKERS=1 exec "$(dirname "$0")/../ferry/serve.sh" "$@"

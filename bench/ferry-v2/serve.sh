#!/usr/bin/env bash
# The ferry adapter, queried on /v2 instead of /serve (scenario.sh): the same server, model and batching.
exec "$(dirname "$0")/../ferry/serve.sh" "$@"

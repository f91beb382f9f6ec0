#!/usr/bin/env bash
# The ferry adapter with dynamic batching off (max_batch_size=1): every request is its own model call.
FERRY_BATCH=max_batch_size=1 exec "$(dirname "$0")/../ferry/serve.sh" "$@"

#!/usr/bin/env bash
# Plain `ferry serve` with one model instance (the default before instances followed the cores).
FERRY_WORKERS=1 FERRY_BATCH="max_batch_size=32 max_queue_delay_ms=2 instances=1" exec "$(dirname "$0")/../ferry/serve.sh" "$@"

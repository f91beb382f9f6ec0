#!/usr/bin/env bash
# The ferry-ray adapter with the model inside the ingress replica (aux ray.colocate=true): no model deployment,
# one Ray call a request less than ferry-ray.
case $1 in
  sklearn) export FERRY_BATCH=${FERRY_BATCH:-max_batch_size=32 ray.colocate=true} ;;
  minilm) export FERRY_BATCH=${FERRY_BATCH:-max_batch_size=32 max_queue_delay_ms=2 ray.colocate=true} ;;
esac
exec "$(dirname "$0")/../ferry-ray/serve.sh" "$@"

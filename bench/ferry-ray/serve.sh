#!/usr/bin/env bash
# The ferry adapter on Ray Serve: `ferry serve --ray` on a local cluster of its own, 1 ingress replica and 1 replica
# of the model deployment (its batcher as in the ferry adapter), so the figures compare with `ferry serve`.
export FERRY_RAY=1 FERRY_RAY_INGRESS=${FERRY_RAY_INGRESS:-1}
case $1 in
  sklearn) export FERRY_BATCH=${FERRY_BATCH:-max_batch_size=32 ray.num_cpus=0.5} ;;
  minilm) export FERRY_BATCH=${FERRY_BATCH:-max_batch_size=32 max_queue_delay_ms=2 ray.num_cpus=0.5} ;;
esac
exec "$(dirname "$0")/../ferry/serve.sh" "$@"

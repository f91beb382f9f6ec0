#!/usr/bin/env bash
# The ferry adapter serving the int8 MiniLM that bench/quantize.sh writes (`model convert --quantize int8`).
FERRY_ONNX=${PEERS_HOME:-/tmp/peers}/models/minilm-int8/model.int8.onnx exec "$(dirname "$0")/../ferry/serve.sh" "$@"

#!/usr/bin/env bash
# The main job on the embedded defaults: install ferry, train the sklearn example, register it,
# attach its preprocess code to an endpoint, and show the service's revisions.
#   bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${FERRY_VENV:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e .
export PATH="$PWD/$venv/bin:$PATH"
export FERRY_HOME=${FERRY_HOME:-$(mktemp -d /tmp/ferry-demo-XXXXXX)}
echo "FERRY_HOME=$FERRY_HOME"
set -x
python examples/sklearn/train.py "$FERRY_HOME/sklearn-model.pkl"
sid=$(ferry create --name "serving example" | sed -n 's/.*id=//p')
mid=$(ferry --id "$sid" model upload --name "train sklearn model" --project "serving examples" \
      --framework sklearn --path "$FERRY_HOME/sklearn-model.pkl" | sed -n 's/.*Model ID=//p')
ferry --id "$sid" model add --engine sklearn --endpoint test_model_sklearn --model-id "$mid" \
      --preprocess examples/sklearn/preprocess.py
ferry --id "$sid" model list
ferry --id "$sid" model endpoints
ferry --id "$sid" history

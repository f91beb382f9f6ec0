# Same routes and bodies as the ferry adapter (the minilm job: the model on Triton).
source "$(dirname "${BASH_SOURCE[0]}")/../ferry/scenario.sh"
[[ $SCENARIO == minilm ]] || BODY=

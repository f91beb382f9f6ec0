# Same routes and bodies as the ferry adapter; only the MiniLM job has an int8 model.
source "$(dirname "${BASH_SOURCE[0]}")/../ferry/scenario.sh"
[[ $SCENARIO == minilm ]] || BODY=

# Same routes and bodies as the ferry adapter.
source "$(dirname "${BASH_SOURCE[0]}")/../ferry/scenario.sh"

"""Control plane: the desired state of every service (specs, store, operations, auto-update)."""

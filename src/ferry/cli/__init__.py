"""The `ferry` command line (ClearML-Serving's grammar)."""

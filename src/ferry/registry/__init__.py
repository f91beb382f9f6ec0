"""Model registry: model records in the store and their artifacts behind fsspec URLs."""

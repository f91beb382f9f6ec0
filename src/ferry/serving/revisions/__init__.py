"""Revisions and their lifecycle: poll the store, build and warm what changed, swap, drain, unload."""

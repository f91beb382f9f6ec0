"""Dynamic batching: gather concurrent model calls, pad ragged axes or cut by length, run once, scatter."""

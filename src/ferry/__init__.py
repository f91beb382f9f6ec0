"""ferry: model serving with a registry, server-side pre/post code, live updates and canaries."""

__version__ = "0.1.0"

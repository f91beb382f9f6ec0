"""The HTTP face of the data plane (the only package that speaks ASGI/HTTP)."""

"""KServe V2 gRPC (inference.GRPCInferenceService) over the DataPlane; needs the ``ferry[triton]`` extra."""

from __future__ import annotations

from ferry.errors import InvalidInput

MISSING = "gRPC serving (--grpc-port) needs grpcio and tritonclient: pip install 'ferry[triton]'"


def require() -> None:
    """Raise InvalidInput naming the extra to install when grpcio or tritonclient's stubs cannot be imported."""
    try:
        import grpc  # noqa: F401
        from tritonclient.grpc import service_pb2_grpc  # noqa: F401
    except ImportError:
        raise InvalidInput(MISSING) from None


def address(host: str, port: int) -> str:
    """``host:port`` as gRPC wants it (an IPv6 host in brackets)."""
    return f"[{host.strip('[]')}]:{port}" if ":" in host else f"{host}:{port}"

"""The KServe V2 gRPC servicer over the DataPlane, and the grpc.aio server that carries it."""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pbg

import ferry
from ferry.errors import EngineError, FerryError, InvalidInput, NotFound, NotReady, Timeout, grpc_code, strip_paths
from ferry.grpc.tensors import request_inputs, to_raw
from ferry.serving.request.dataplane import DataPlane
from ferry.serving.v2 import datatype, metadata

log = logging.getLogger(__name__)

Readiness = Callable[[], tuple[str, "str | None"]]
"""What /health/ready answers: ("ready", None), or ("loading" | "unavailable", why)."""


class Gate(Protocol):
    """The serving tokens (rest/auth.py's BearerAuth): None admits, an error refuses."""

    def refusal(self, authorization: str) -> FerryError | None: ...


def guarded(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Check the bearer token, then answer ferry's errors with their gRPC code and message."""

    @functools.wraps(method)
    async def call(self: InferenceServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        error = self.refusal(context)
        if error is None:
            try:
                return await method(self, request, context)
            except FerryError as exc:
                error = exc
            except Exception as exc:  # a bug: answer INTERNAL and keep serving
                error = EngineError(f"internal error in {method.__name__}: {type(exc).__name__}: {exc}")
                error.__cause__ = exc
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:  # 503s: when to try again, as REST's Retry-After header says
            context.set_trailing_metadata((("retry-after", str(max(1, round(retry_after)))),))
        await context.abort(status(error), message(error))

    return call


class InferenceServicer(pbg.GRPCInferenceServiceServicer):
    """ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata and ModelInfer (the protocol's
    CamelCase names); the rest answer UNIMPLEMENTED.

    The liveness and readiness probes stay open like /health/* and /v2/health/*; the rest need a token
    when the server has tokens."""

    def __init__(self, plane: DataPlane, gate: Gate | None = None, readiness: Readiness | None = None) -> None:
        self.plane = plane
        self.gate = gate
        self.readiness = readiness or self._plane_readiness

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.readiness()[0] == "ready")

    @guarded
    async def ModelReady(self, request: Any, context: Any) -> Any:
        try:
            self.plane.model(request.name, request.version or None)
        except (NotFound, NotReady):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @guarded
    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(name="ferry", version=ferry.__version__, extensions=[])

    @guarded
    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        runtime = self.plane.model(request.name, request.version or None)
        versions = [runtime.spec.version] if request.version else [v for v in self.plane.versions(request.name) if v]
        meta = metadata(runtime, versions)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=[str(v) for v in meta["versions"]],
            platform=meta["platform"],
            inputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["inputs"]],
            outputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["outputs"]],
        )

    @guarded
    async def ModelInfer(self, request: Any, context: Any) -> Any:
        inputs = request_inputs(request)
        wanted = [o.name for o in request.outputs] or None
        runtime, outputs = await self.plane.infer_tensors(
            request.model_name, request.model_version or None, inputs, wanted
        )
        answer = pb.ModelInferResponse(
            model_name=request.model_name, model_version=runtime.spec.version or request.model_version, id=request.id
        )
        for name, array in outputs.items():
            answer.outputs.add(name=name, datatype=datatype(array), shape=array.shape)
            answer.raw_output_contents.append(to_raw(array))
        return answer

    def refusal(self, context: Any) -> FerryError | None:
        if self.gate is None:
            return None
        metadata_ = dict(context.invocation_metadata() or ())
        return self.gate.refusal(str(metadata_.get("authorization", "")))

    def _plane_readiness(self) -> tuple[str, str | None]:
        return ("ready", None) if self.plane.ready() else ("loading", "no revision loaded yet")


def status(error: FerryError) -> grpc.StatusCode:
    """The gRPC status of a ferry error, from errors.GRPC_CODES (the table REST's statuses come from too)."""
    return grpc.StatusCode[grpc_code(error.status_code)]


def message(error: FerryError) -> str:
    """ferry's message; for ferry's own failures an id whose details (and traceback) are in the server log."""
    if error.status_code < 500 or isinstance(error, (NotReady, Timeout)) or getattr(error, "retry_after", None):
        return strip_paths(error.message)
    error_id = uuid.uuid4().hex[:12]
    log.error("error %s (%s): %s", error_id, type(error).__name__, error.message, exc_info=error)
    kind = type(error).__name__
    return f"ferry failed to answer this request ({kind}); the server log has the details under id {error_id}"


def bind(
    plane: DataPlane,
    address: str,
    gate: Gate | None = None,
    readiness: Readiness | None = None,
    max_message: int = 64 << 20,
) -> grpc.aio.Server:
    """A grpc.aio server on the running loop, bound to ``address`` (``await server.start()`` serves).

    Several worker processes bind the same port: grpc sets SO_REUSEPORT on Linux and the kernel spreads
    connections over them."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", max_message),
            ("grpc.so_reuseport", 1),
        ]
    )
    pbg.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(plane, gate, readiness), server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if port == 0:
        raise InvalidInput(f"cannot bind gRPC to {address}: the port is taken or not allowed; pick another --grpc-port")
    return server


class GrpcFace:
    """The gRPC face of a ``FerryApp`` (rest/app.py ``Face``): bound at startup on the app's loop, started
    after the first load, stopped with ``grace`` seconds for the calls in flight."""

    def __init__(
        self, plane: DataPlane, address: str, gate: Gate | None, readiness: Readiness, max_message: int
    ) -> None:
        self._bind = functools.partial(bind, plane, address, gate, readiness, max_message)
        self._server: grpc.aio.Server | None = None

    def bind(self) -> None:
        self._server = self._bind()

    async def start(self) -> None:
        if self._server is not None:
            await self._server.start()

    async def stop(self, grace: float) -> None:
        if self._server is not None:
            await self._server.stop(grace)

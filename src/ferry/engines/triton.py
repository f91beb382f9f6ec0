"""The triton engine: the preprocess output goes to a Triton server over gRPC, one shared channel per server."""

from __future__ import annotations

import asyncio
import collections
import os
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from ferry.control.spec import EndpointSpec, TensorSpec, canonical_dtype
from ferry.control.triton_config import triton_model_name
from ferry.engines.base import Process
from ferry.engines.tensor import Feeds, TensorRunner, to_feeds
from ferry.errors import EngineError, FerryError, InputMismatch, NotReady, Timeout

ADDRESS_ENV = ("FERRY_TRITON_GRPC_SERVER", "CLEARML_DEFAULT_TRITON_GRPC_ADDR")
"""Where the address comes from when neither the endpoint (aux ``triton_grpc_server``) nor the service gives one."""

RETRY_AFTER_S = 2.0
"""What a 503 tells the caller to wait: Triton restarting or loading a model takes seconds."""


class TritonEngine(TensorRunner):
    """Sends each request's arrays to ``<endpoint>_<version>`` on a Triton server; Triton batches, not ferry.

    postprocess gets numpy arrays as ClearML's triton engine gives them: one output as its array, several
    as a list in output order (the spec's ``--output-name`` order, else the model's).
    """

    is_async = True

    def __init__(self, spec: EndpointSpec, model_path: Path | None, loaded: Any, process: Process) -> None:
        self.endpoint_key = spec.key
        self.address = server_address(spec)
        self.model = triton_model_name(spec.name, spec.version)
        self.inputs: tuple[TensorSpec, ...] = spec.inputs
        self.output_names = [t.name for t in spec.outputs if t.name]
        self._described = bool(spec.inputs) and all(t.name and t.dtype for t in spec.inputs)
        self._described &= len(self.output_names) == len(spec.outputs) and bool(spec.outputs)
        CHANNELS.acquire(self.address)
        self._closed = False

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name or "" for t in self.inputs)

    def prepare(self, data: Any) -> Feeds:
        """Preprocess output (a dict by name, a list in spec order, or one array) cast to the declared dtypes."""
        return to_feeds(data, self.inputs, self.endpoint_key)

    async def run(self, data: Any, state: dict, collect: Any) -> Any:
        await self.describe()
        return self.unwrap(await self.run_tensors(self.prepare(data)))

    async def run_tensors(self, feeds: Feeds) -> list[np.ndarray]:
        """One infer call on the shared channel; Triton's refusals become ferry's errors (503, 422, ...)."""
        await self.describe()
        inputs = [_infer_input(name, array) for name, array in feeds.items()]
        outputs = [grpcclient.InferRequestedOutput(name) for name in self.output_names]
        try:
            result = await CHANNELS.client(self.address).infer(self.model, inputs, outputs=outputs)
        except InferenceServerException as exc:
            raise self._error(_detached(exc)) from None
        return [result.as_numpy(name) for name in self.output_names]

    async def describe(self) -> None:
        """Input names/dtypes and output names the spec leaves out, from the model's metadata (asked once)."""
        if self._described:
            return
        try:
            meta = await CHANNELS.client(self.address).get_model_metadata(self.model, as_json=True)
        except InferenceServerException as exc:
            raise self._error(_detached(exc)) from None
        self.inputs = _described_inputs(self.inputs, meta.get("inputs", []))
        self.output_names = self.output_names or [o["name"] for o in meta.get("outputs", [])]
        self._described = True

    def _error(self, exc: InferenceServerException) -> FerryError:
        """Triton's error as what the caller can act on: 503 unreachable/not ready, 422 bad input, 504, else 500."""
        status, message = exc.status() or "", REQUEST_ID.sub("", exc.message() or str(exc))
        where = {"endpoint": self.endpoint_key, "server": self.address, "model": self.model}
        if status == "StatusCode.INVALID_ARGUMENT":
            text = f"endpoint {self.endpoint_key}: Triton model {self.model} rejected its input: {message}"
            return InputMismatch(text, stage="model", **where)
        if status == "StatusCode.DEADLINE_EXCEEDED":
            return Timeout(f"endpoint {self.endpoint_key}: Triton server {self.address} timed out: {message}", **where)
        if status == "StatusCode.UNAVAILABLE" and UNREACHABLE.search(message):
            text = (
                f"endpoint {self.endpoint_key}: the Triton server {self.address} is unreachable ({message}): start it, "
                "or fix its address (`ferry config --triton-grpc-server`, or aux config triton_grpc_server)"
            )
            return NotReady(text, retry_after=RETRY_AFTER_S, **where)
        if status in ("StatusCode.UNAVAILABLE", "StatusCode.NOT_FOUND"):
            text = (
                f"endpoint {self.endpoint_key}: model {self.model} is not ready on the Triton server {self.address} "
                f"({message}): load it there (`ferry triton sync`) and retry"
            )
            return NotReady(text, retry_after=RETRY_AFTER_S, **where)
        return EngineError(f"endpoint {self.endpoint_key}: Triton server {self.address}: {status} {message}", **where)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            CHANNELS.release(self.address)


REQUEST_ID = re.compile(r"^\[request id: [^\]]*\] ")
UNREACHABLE = re.compile(r"connect|socket|DNS|unreachable|refused|handshake|end of TCP stream", re.IGNORECASE)
"""gRPC's words for a server it cannot reach (as opposed to a model the server cannot run)."""


def server_address(spec: EndpointSpec) -> str:
    """The endpoint's Triton gRPC address: its aux config (the reconciler puts the service's there), else env."""
    address = spec.aux_config.get("triton_grpc_server") or next(filter(None, map(os.environ.get, ADDRESS_ENV)), None)
    if not address:
        raise EngineError(
            f"endpoint {spec.key}: --engine triton needs a Triton server: set it with `ferry config "
            "--triton-grpc-server HOST:PORT` (or aux config triton_grpc_server=HOST:PORT for this endpoint)",
            endpoint=spec.key,
        )
    return str(address).removeprefix("grpc://")


def _infer_input(name: str, array: np.ndarray) -> grpcclient.InferInput:
    datatype = "BYTES" if array.dtype.kind in "OSU" else np_to_triton_dtype(array.dtype)
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array.astype(np.object_) if datatype == "BYTES" else array)
    return tensor


def _described_inputs(given: tuple[TensorSpec, ...], meta: list[dict]) -> tuple[TensorSpec, ...]:
    """The spec's inputs, their missing names and dtypes taken from the model's metadata, in position."""
    if not given:
        given = tuple(TensorSpec() for _ in meta)
    filled = []
    for i, tensor in enumerate(given):
        known = meta[i] if i < len(meta) else {}
        update = {"name": tensor.name or known.get("name") or f"input_{i}"}
        if tensor.dtype is None and known.get("datatype"):
            update["dtype"] = _spec_dtype(known["datatype"])
        filled.append(tensor.model_copy(update=update))
    return tuple(filled)


def _spec_dtype(datatype: str) -> str | None:
    try:
        return canonical_dtype(datatype)
    except ValueError:  # BF16 and the like: numpy has no name for them, leave the array's own
        return None


class Channels:
    """One asyncio gRPC client per Triton address and event loop in this process, shared by every engine.

    grpc.aio channels belong to the loop that made them: ``ferry serve`` has one loop, but warmup and tests
    run engines under ``asyncio.run``, so a loop without a client gets its own. The last engine of an
    address to close closes its clients; a client whose loop has ended is closed on a loop of its own
    rather than left holding its TCP connection until garbage collection.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[str, dict[asyncio.AbstractEventLoop, grpcaio.InferenceServerClient]] = {}
        self._users: collections.Counter[str] = collections.Counter()
        self._closing: set[asyncio.Future] = set()

    def acquire(self, address: str) -> None:
        with self._lock:
            self._users[address] += 1

    def client(self, address: str) -> grpcaio.InferenceServerClient:
        """The running loop's client for ``address`` (made on first use; clients of closed loops are dropped)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            clients = self._clients.setdefault(address, {})
            stale = [clients.pop(other) for other in list(clients) if other.is_closed()]
            if loop not in clients:
                clients[loop] = grpcaio.InferenceServerClient(address)
            client = clients[loop]
        for orphan in stale:  # their loop is gone (a warmup's asyncio.run): close them on a loop of their own
            _close_orphan(orphan)
        return client

    def clients(self, address: str) -> list[grpcaio.InferenceServerClient]:
        """The live clients for ``address`` (one per loop that used it)."""
        with self._lock:
            return [c for loop, c in self._clients.get(address, {}).items() if not loop.is_closed()]

    def release(self, address: str) -> None:
        with self._lock:
            self._users[address] -= 1
            if self._users[address] > 0:
                return
            del self._users[address]
            clients = self._clients.pop(address, {})
        for loop, client in clients.items():
            self._close(loop, client)

    def _close(self, loop: asyncio.AbstractEventLoop, client: grpcaio.InferenceServerClient) -> None:
        """Close ``client`` on its own loop, from whichever thread releases it."""
        if loop.is_closed():
            _close_orphan(client)
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            task = loop.create_task(client.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        else:
            closing = client.close()
            try:
                asyncio.run_coroutine_threadsafe(closing, loop)
            except RuntimeError:  # the loop closed meanwhile
                closing.close()


def _detached(exc: InferenceServerException) -> InferenceServerException:
    """``exc`` without its traceback and cause: their frames hold the gRPC call, whose channel keeps its TCP
    connection open for as long as an error that was answered (and maybe logged) stays referenced."""
    exc.__traceback__ = exc.__context__ = exc.__cause__ = None
    return exc


def _close_orphan(client: grpcaio.InferenceServerClient) -> None:
    """Close a client whose loop has ended, on a fresh loop in a thread of its own (this one may run a loop)."""
    closer = threading.Thread(target=asyncio.run, args=(client.close(),), name="ferry-triton-close", daemon=True)
    closer.start()
    closer.join(timeout=5)


CHANNELS = Channels()
"""This process's Triton clients."""

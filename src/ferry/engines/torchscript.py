"""The torchscript engine: a TorchScript module called positionally in spec order, answering numpy arrays."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from ferry.control.spec import EndpointSpec
from ferry.engines.base import Process, read_model
from ferry.engines.tensor import ARGUMENT_WORDS, Feeds, TensorRunner, input_specs, rejected_input, to_feeds
from ferry.errors import EngineError


class TorchScriptEngine(TensorRunner):
    """Runs a TorchScript module under ``torch.inference_mode``; a TensorEngine, so the batcher may stack requests."""

    is_async = False
    releases_gil = True  # the model call runs in C++ without the GIL: instances may be threads

    def __init__(self, spec: EndpointSpec, model_path: Path | None, loaded: Any, process: Process) -> None:
        self.endpoint_key = spec.key
        self.device = torch.device(spec.aux_config.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
        threads = int(spec.aux_config.get("intra_op_num_threads", 1))
        if torch.get_num_threads() != threads:  # process-wide: leave it alone unless it must change
            torch.set_num_threads(threads)
        if loaded is not None:
            self.model = loaded.to(self.device) if isinstance(loaded, torch.nn.Module) else loaded
        else:
            self.model = read_model(spec, model_path, lambda path: torch.jit.load(str(path), map_location=self.device))
        self.model.eval()
        self.inputs = input_specs(spec, forward_arguments(self.model))
        self.input_names = tuple(cast(str, t.name) for t in self.inputs)  # ``input_specs`` names every input
        self.output_names = tuple(t.name for t in spec.outputs if t.name)
        self.untyped_inputs = {cast(str, t.name) for t in self.inputs if t.dtype is None}

    def prepare(self, data: Any) -> Feeds:
        """Preprocess output (a list in spec order or a dict by name) as named arrays."""
        feeds = to_feeds(data, self.inputs, self.endpoint_key)
        for name in self.untyped_inputs:  # no dtype in the spec: Python floats become torch's float32
            if feeds[name].dtype == np.float64:
                feeds[name] = feeds[name].astype(np.float32)
        return feeds

    def run_tensors(self, feeds: Feeds) -> list[np.ndarray]:
        """``forward(*inputs)`` in spec order; the outputs as numpy arrays. Shape errors are the request's (422)."""
        tensors = [torch.as_tensor(feeds[name], device=self.device) for name in self.input_names]
        try:
            with torch.inference_mode():
                return self.outputs(self.model(*tensors))
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as exc:
            reason = torch_reason(exc)
            if ARGUMENT_WORDS.search(reason):
                raise rejected_input(self.endpoint_key, "torchscript", reason) from exc
            raise

    def outputs(self, result: Any) -> list[np.ndarray]:
        """A tensor, a tuple/list of them, or a dict (ordered by the spec's output names) as numpy arrays."""
        if isinstance(result, Mapping):
            names = self.output_names or tuple(result)
            missing = [n for n in names if n not in result]
            if missing:
                raise EngineError(
                    f"endpoint {self.endpoint_key}: the model returned no output {missing}; it returned {list(result)}",
                    endpoint=self.endpoint_key,
                )
            return [to_numpy(result[n]) for n in names]
        if isinstance(result, (tuple, list)):
            return [to_numpy(value) for value in result]
        return [to_numpy(result)]

    def close(self) -> None:
        self.model = None


def forward_arguments(model: Any) -> list[str]:
    """The names of ``forward``'s required arguments (after self) where TorchScript records them."""
    schema = getattr(getattr(model, "forward", None), "schema", None)
    if schema is None:
        return ["input"]
    return [a.name for a in schema.arguments[1:] if not a.has_default_value()] or ["input"]


def torch_reason(exc: BaseException) -> str:
    """The last line of a (TorchScript) error: the cause, without the interpreter's traceback of local paths."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1].removeprefix("RuntimeError: ") if lines else type(exc).__name__


def to_numpy(value: Any) -> np.ndarray:
    """A tensor (any device, bfloat16 included) or a plain value as a numpy array."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    return np.asarray(value)

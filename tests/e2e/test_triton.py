"""The Hugging Face example with its model on Triton: tokenizer in ferry, ONNX model on a real tritonserver."""

from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path

import pytest

from ferry.control.triton_config import triton_model_name
from tests.conftest import Ferry
from tests.e2e.conftest import Converted
from tests.e2e.test_huggingface import offline, serve_as_printed  # noqa: F401
from tests.server import Server
from tests.triton import Triton, python_model

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None, reason="needs pip install 'ferry[triton]'"),
]

SENTENCES = (
    "what a great movie",
    "a dull, boring mess",
    "not my cup of tea, too long and too loud",
    "the actors were superb",
)

SENTIMENT_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 8
input [
  {{ name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] }},
  {{ name: "token_type_ids" data_type: TYPE_INT64 dims: [ -1 ] }},
  {{ name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] }}
]
output [ {{ name: "logits" data_type: TYPE_FP32 dims: [ 2 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
"""
SENTIMENT_PY = """
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

INPUTS = ("input_ids", "token_type_ids", "attention_mask")


class TritonPythonModel:
    def initialize(self, args):
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(Path(__file__).parent / "model.onnx"), options)

    def execute(self, requests):
        answers = []
        for request in requests:
            feeds = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in INPUTS}
            (logits,) = self.session.run(["logits"], feeds)
            answers.append(pb_utils.InferenceResponse([pb_utils.Tensor("logits", logits.astype(np.float32))]))
        return answers
"""


def triton_add_line(convert_out: str, endpoint: str) -> list[str]:
    """The `model add` line `model convert` printed, for --engine triton: same tensors, Triton's own batch size."""
    line = next(line for line in convert_out.splitlines() if line.startswith("ferry model add "))
    argv = shlex.split(line)[1:]
    argv[argv.index("--engine") + 1] = "triton"
    argv[argv.index("--endpoint") + 1] = endpoint
    return argv[: argv.index("--aux-config")] + ["--aux-config", "max_batch_size=8"]


def test_sentiment_example_with_the_model_on_triton(
    ferry_sqlite: Ferry, server: Server, sentiment_onnx: Converted, tmp_path: Path
) -> None:
    out, onnx = sentiment_onnx.out, sentiment_onnx.onnx
    serve_as_printed(ferry_sqlite, out)  # the in-process onnxruntime endpoint, to compare with

    repository = tmp_path / "models"
    name = triton_model_name("sentiment_triton")
    python_model(repository, name, SENTIMENT_CONFIG.format(name=name), SENTIMENT_PY, {"model.onnx": onnx})
    with Triton(repository) as triton:
        ferry_sqlite("config", "--triton-grpc-server", triton.grpc_address)
        ferry_sqlite(*triton_add_line(out, "sentiment_triton"))
        server.wait_endpoint("sentiment_triton", {"text": SENTENCES[0]}, timeout=60)
        for text in SENTENCES:
            local = server.post("/serve/sentiment", {"text": text}).json()
            remote = server.post("/serve/sentiment_triton", {"text": text}).json()
            assert remote["label"] == local["label"], (text, remote, local)
            assert max(abs(a - b) for a, b in zip(remote["scores"], local["scores"], strict=True)) < 1e-5
        assert server.post("/serve/sentiment_triton", {"nothing": 1}).status_code == 422
        address = triton.grpc_address

    gone = server.post("/serve/sentiment_triton", {"text": SENTENCES[0]})
    assert gone.status_code == 503 and "Retry-After" in gone.headers, gone.text
    assert address in gone.text and "unreachable" in gone.text, gone.text

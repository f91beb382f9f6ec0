"""Tiny real tensor models for the engine tests: a one-layer BERT (eager, ONNX, TorchScript) and small graphs."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

BERT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
"""BertForSequenceClassification.forward's own order: export and trace in exactly this order."""


@pytest.fixture(scope="session")
def bert():
    """A random one-layer BERT classifier returning tuples (``return_dict=False``), in eval mode."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=2,
        torchscript=True,
        return_dict=False,  # transformers 5 ignores torchscript=True: this is what makes forward return tuples
    )
    return transformers.BertForSequenceClassification(config).eval()


@pytest.fixture(scope="session")
def bert_batch() -> dict[str, np.ndarray]:
    """Two padded sequences with both token types, so a swapped input shows in the logits."""
    input_ids = np.array([[2, 15, 27, 9, 41, 3], [2, 33, 8, 3, 0, 0]], dtype=np.int64)
    token_type_ids = np.array([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 0, 0]], dtype=np.int64)
    return {
        "input_ids": input_ids,
        "attention_mask": (input_ids != 0).astype(np.int64),
        "token_type_ids": token_type_ids,
    }


@pytest.fixture(scope="session")
def bert_logits(bert, bert_batch) -> np.ndarray:
    """PyTorch's own logits for ``bert_batch``."""
    import torch

    with torch.inference_mode():
        return bert(**{k: torch.from_numpy(v) for k, v in bert_batch.items()})[0].numpy()


@pytest.fixture(scope="session")
def bert_onnx(bert, bert_batch, tmp_path_factory) -> Path:
    """``bert`` exported by the legacy exporter (opset 17) with dynamic batch and sequence axes."""
    import torch

    pytest.importorskip("onnx")
    path = tmp_path_factory.mktemp("onnx") / "bert.onnx"
    example = {k: torch.from_numpy(bert_batch[k]) for k in BERT_INPUTS}
    axes = {name: {0: "batch", 1: "sequence"} for name in BERT_INPUTS} | {"logits": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            bert,
            (),
            str(path),
            kwargs=example,  # by keyword: positional args in any other order silently swap inputs
            dynamo=False,
            opset_version=17,
            input_names=list(BERT_INPUTS),
            output_names=["logits"],
            dynamic_axes=axes,
        )
    return path


@pytest.fixture(scope="session")
def bert_torchscript(bert, bert_batch, tmp_path_factory) -> Path:
    """``bert`` traced with ``torch.jit.trace`` in forward order and saved."""
    import torch

    path = tmp_path_factory.mktemp("torchscript") / "bert.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(bert, tuple(torch.from_numpy(bert_batch[k]) for k in BERT_INPUTS))
    traced.save(str(path))
    return path


@pytest.fixture(scope="session")
def two_output_onnx(tmp_path_factory) -> Path:
    """An ONNX graph with one float input x[batch, 3] and two outputs: y1 = x + 1, y2 = x * 2."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y1 = helper.make_tensor_value_info("y1", TensorProto.FLOAT, ["batch", 3])
    y2 = helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["batch", 3])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    nodes = [helper.make_node("Add", ["x", "one"], ["y1"]), helper.make_node("Mul", ["x", "two"], ["y2"])]
    graph = helper.make_graph(nodes, "two_outputs", [x], [y1, y2], initializer=[one, two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("onnx") / "two_outputs.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def dict_module():
    """A scripted module returning a dict {"sum": x + y, "product": x * y}."""
    torch = pytest.importorskip("torch")

    class Pair(torch.nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"sum": x + y, "product": x * y}

    return torch.jit.script(Pair())

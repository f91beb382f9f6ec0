"""KServe V2 protobuf tensors <-> numpy: raw (binary) or typed contents in, raw contents out."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from ferry.errors import InvalidInput
from ferry.serving.v2 import DATATYPES

CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
"""The typed ``InferTensorContents`` field of each V2 datatype (FP16 travels only as raw bytes)."""

LENGTH = struct.Struct("<I")
"""BYTES elements travel as a 4-byte little-endian length, then the bytes."""


def request_inputs(request: Any) -> dict[str, np.ndarray]:
    """A ModelInferRequest's inputs by name: from ``raw_input_contents`` when given, else typed contents."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"the request has {len(request.inputs)} inputs but {len(raw)} raw_input_contents: "
            "give one raw buffer per input, or none and typed contents"
        )
    arrays: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        shape = tuple(tensor.shape)
        dtype = _dtype(tensor.name, tensor.datatype)
        array = from_raw(raw[i], tensor.datatype, dtype, shape, tensor.name) if raw else _from_contents(tensor, dtype)
        arrays[tensor.name] = _reshape(array, shape, tensor.name, tensor.datatype)
    return arrays


def from_raw(buffer: bytes, name: str, dtype: np.dtype, shape: Sequence[int], tensor: str) -> np.ndarray:
    """One input's array from its raw bytes (``name`` is its V2 datatype)."""
    if name == "BYTES":
        return np.array(_split_bytes(buffer, tensor), dtype=object)
    count = int(np.prod(shape, dtype=np.int64))
    if len(buffer) != count * dtype.itemsize:
        raise InvalidInput(
            f"input {tensor}: {len(buffer)} raw bytes do not fill shape {list(shape)} of {name} "
            f"({count * dtype.itemsize} bytes needed)"
        )
    return np.frombuffer(buffer, dtype=dtype.newbyteorder("<"))


def to_raw(array: np.ndarray) -> bytes:
    """An output's raw bytes: little-endian values, or length-prefixed elements for BYTES."""
    if array.dtype.kind in "OSU":
        return b"".join(LENGTH.pack(len(b)) + b for b in (_as_bytes(v) for v in array.reshape(-1)))
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _dtype(tensor: str, name: str) -> np.dtype:
    if name not in DATATYPES:
        raise InvalidInput(f"input {tensor}: unknown datatype {name!r}: use one of {', '.join(DATATYPES)}")
    return np.dtype(DATATYPES[name])


def _from_contents(tensor: Any, dtype: np.dtype) -> np.ndarray:
    field = CONTENTS.get(tensor.datatype)
    if field is None:
        raise InvalidInput(f"input {tensor.name}: {tensor.datatype} travels only in raw_input_contents")
    values = list(getattr(tensor.contents, field))
    return np.array(values, dtype=object) if tensor.datatype == "BYTES" else np.array(values, dtype=dtype)


def _reshape(array: np.ndarray, shape: tuple[int, ...], tensor: str, name: str) -> np.ndarray:
    if any(d < 0 for d in shape) or array.size != int(np.prod(shape, dtype=np.int64)):
        raise InvalidInput(f"input {tensor}: {array.size} {name} value(s) do not fill shape {list(shape)}")
    return array.reshape(shape)


def _split_bytes(buffer: bytes, tensor: str) -> list[bytes]:
    items, at, view = [], 0, memoryview(buffer)
    while at < len(buffer):
        if at + 4 > len(buffer):
            raise InvalidInput(f"input {tensor}: BYTES data ends inside a 4-byte length prefix")
        (size,) = LENGTH.unpack_from(buffer, at)
        if at + 4 + size > len(buffer):
            raise InvalidInput(f"input {tensor}: a BYTES element of {size} bytes runs past the end of its data")
        items.append(bytes(view[at + 4 : at + 4 + size]))
        at += 4 + size
    return items


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")

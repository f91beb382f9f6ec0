"""A Triton model repository's layout: per endpoint version ``<model>/config.pbtxt`` and ``<model>/1/<file>``."""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferry.control.pbtxt import to_pbtxt
from ferry.control.spec import EndpointSpec, TensorSpec
from ferry.control.triton_config import MAPS, TRITON_FIELDS
from ferry.errors import InvalidInput

ENUMS = ("data_type", "format", "kind", "priority", "timeout_action")
"""The enum fields of model_config.proto: their values are written bare (``TYPE_FP32``), not quoted."""

FILENAMES = {
    "onnxruntime_onnx": "model.onnx",
    "onnxruntime": "model.onnx",
    "pytorch_libtorch": "model.pt",
    "pytorch": "model.pt",
    "tensorrt_plan": "model.plan",
    "tensorrt": "model.plan",
    "tensorflow_savedmodel": "model.savedmodel",
    "tensorflow_graphdef": "model.graphdef",
    "python": "model.py",
}
"""Triton platform/backend -> the file (or folder) its backend looks for in the version folder."""

BY_EXTENSION = {
    ".onnx": ("platform", "onnxruntime_onnx"),
    ".pt": ("platform", "pytorch_libtorch"),
    ".pth": ("platform", "pytorch_libtorch"),
    ".torchscript": ("platform", "pytorch_libtorch"),
    ".plan": ("platform", "tensorrt_plan"),
    ".engine": ("platform", "tensorrt_plan"),
    ".savedmodel": ("platform", "tensorflow_savedmodel"),
    ".graphdef": ("platform", "tensorflow_graphdef"),
    ".py": ("backend", "python"),
}
"""A model file's extension -> the platform/backend written when the aux config names none."""

IN_FOLDER = {
    "model.py": ("backend", "python"),
    "saved_model.pb": ("platform", "tensorflow_savedmodel"),
    **{name: BY_EXTENSION[name[5:]] for name in ("model.onnx", "model.pt", "model.plan")},
}
"""A file inside a folder artifact -> the platform/backend that folder is for (first match wins)."""

TRITON_TYPES = {
    "bool": "TYPE_BOOL",
    **{f"{s}int{b}": f"TYPE_{s.upper()}INT{b}" for s in ("", "u") for b in (8, 16, 32, 64)},
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "bytes": "TYPE_STRING",
}
"""ferry's dtype names (control/spec.py) -> Triton's data types."""

VERSION = "1"
MARKER = ".ferry.json"
"""In each model folder ferry wrote: its fingerprint; folders without one are never touched."""
STAGING = ".ferry-"


@dataclass(frozen=True)
class ModelFiles:
    """What one endpoint version puts in the repository, and a fingerprint of it."""

    name: str
    endpoint: str
    config: str
    source: Path
    filename: str
    fingerprint: str


def model_files(spec: EndpointSpec, name: str, artifact: Path, sha256: str) -> ModelFiles:
    """The folder ``name`` that serves ``spec`` from the fetched model ``artifact`` (file or folder)."""
    config, filename = triton_config(spec, name, artifact)
    text = f"# written by `ferry triton sync` for endpoint {spec.key}; it rewrites this file\n" + config_text(config)
    fingerprint = hashlib.sha256(f"{text}\0{filename}\0{sha256}".encode()).hexdigest()
    return ModelFiles(name, spec.key, text, artifact, filename, fingerprint)


def config_text(config: dict[str, Any]) -> str:
    """``config`` as config.pbtxt."""
    return to_pbtxt(config, maps=MAPS, enums=ENUMS)


def triton_config(spec: EndpointSpec, name: str, artifact: Path) -> tuple[dict[str, Any], str]:
    """The ModelConfig of ``spec`` as a dict, and the model's file name under ``1/``.

    Generated: name, platform/backend, max_batch_size, input and output; then every Triton field of the aux
    config as given (it may replace any of them but the name). ferry's own aux keys stay out.
    """
    aux = spec.aux_config
    filename, engine = model_file(aux, artifact)
    batched = int(aux.get("max_batch_size") or 0) > 0
    config: dict[str, Any] = {"name": name, **engine, "max_batch_size": int(aux.get("max_batch_size") or 0)}
    for side, tensors in (("input", spec.inputs), ("output", spec.outputs)):
        if tensors:
            config[side] = [_tensor(spec.key, side, i, t, batched) for i, t in enumerate(tensors)]
    config.update({key: value for key, value in aux.items() if key in TRITON_FIELDS and value is not None})
    config["name"] = name  # the folder's name: Triton refuses a config that names another model
    return _numeric_priorities(config), filename


def model_file(aux: dict[str, Any], artifact: Path) -> tuple[str, dict[str, str]]:
    """The name Triton's backend looks for, and the platform/backend (or file name) fields the config needs."""
    named = aux.get("platform") or aux.get("backend")
    engine = {} if named else _guess_engine(artifact)
    given = aux.get("default_model_filename")
    if given:
        return str(given), engine
    kind = named or next(iter(engine.values()))
    if kind in FILENAMES:
        return FILENAMES[kind], engine
    return artifact.name, {**engine, "default_model_filename": artifact.name}  # a backend with its own default


def _guess_engine(artifact: Path) -> dict[str, str]:
    if artifact.is_dir():
        found = [field for name, field in IN_FOLDER.items() if (artifact / name).exists()]
        if found:
            return dict(found[:1])
    if artifact.suffix.lower() in BY_EXTENSION:
        return dict([BY_EXTENSION[artifact.suffix.lower()]])
    raise InvalidInput(
        f"cannot tell which Triton backend runs the model {artifact.name!r}: add platform=... or backend=... "
        f"to the endpoint's --aux-config ({', '.join(FILENAMES)})"
    )


def _tensor(key: str, side: str, index: int, tensor: TensorSpec, batched: bool) -> dict[str, Any]:
    missing = [
        flag for flag, value in (("name", tensor.name), ("type", tensor.dtype), ("size", tensor.shape)) if value is None
    ]
    if missing:
        raise InvalidInput(
            f"endpoint {key}: {side} {index} has no {' or '.join(missing)}: give --{side}-{missing[0]} at "
            f"`ferry model add`, or write the {side} in --aux-config"
        )
    dims = list(tensor.shape or ())
    if batched and dims[:1] == [-1]:  # ferry's batch axis; Triton adds its own when max_batch_size > 0
        dims = dims[1:]
    entry = {"name": tensor.name, "data_type": TRITON_TYPES[str(tensor.dtype)], "dims": dims or [1]}
    return entry if dims else {**entry, "reshape": {"shape": []}}  # Triton's spelling of a scalar


def _numeric_priorities(config: dict[str, Any]) -> dict[str, Any]:
    """priority_queue_policy is keyed by uint64 priority levels: written as numbers, not strings."""
    batching = config.get("dynamic_batching")
    if isinstance(batching, dict) and isinstance(batching.get("priority_queue_policy"), dict):
        levels = {int(k): v for k, v in batching["priority_queue_policy"].items()}
        config["dynamic_batching"] = {**batching, "priority_queue_policy": levels}
    return config


# the folders -------------------------------------------------------------------------------------


def write_model(repository: Path, files: ModelFiles, service_id: str) -> None:
    """Write the model's folder beside the old one, then swap it in: Triton never loads half a folder."""
    staging = repository / f"{STAGING}new-{files.name}-{uuid.uuid4().hex[:8]}"
    try:
        (staging / VERSION).mkdir(parents=True)
        _place(files.source, staging / VERSION, files.filename)
        (staging / "config.pbtxt").write_text(files.config)
        marker = {"service": service_id, "endpoint": files.endpoint, "fingerprint": files.fingerprint}
        (staging / MARKER).write_text(json.dumps(marker))
        _swap_in(staging, repository / files.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _place(source: Path, version: Path, filename: str) -> None:
    if source.is_dir() and (source / filename).exists():  # a folder holding the model file: it is the version
        shutil.copytree(source, version, dirs_exist_ok=True)
    elif source.is_dir():  # the folder is the model (a saved model)
        shutil.copytree(source, version / filename)
    else:
        shutil.copyfile(source, version / filename)


def _swap_in(staging: Path, final: Path) -> None:
    old = final.with_name(f"{STAGING}old-{final.name}-{uuid.uuid4().hex[:8]}")
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def written(repository: Path, service_id: str) -> dict[str, dict[str, Any]]:
    """The model folders ferry wrote for the service: name -> what its marker says (endpoint, fingerprint)."""
    found = {}
    for marker in sorted(repository.glob(f"*/{MARKER}")):
        try:
            found[marker.parent.name] = json.loads(marker.read_text())
        except (OSError, ValueError):
            found[marker.parent.name] = {}  # a damaged marker: still ours, rewritten on the next change
    return {
        name: doc
        for name, doc in found.items()
        if not name.startswith(STAGING) and doc.get("service", service_id) == service_id  # another's: left alone
    }


def remove_model(repository: Path, name: str) -> None:
    """Delete a model folder ferry wrote."""
    shutil.rmtree(repository / name, ignore_errors=True)


def clean_staging(repository: Path) -> None:
    """Folders a crashed sync left half-written (Triton's repository index would list them)."""
    for leftover in repository.glob(f"{STAGING}*"):
        shutil.rmtree(leftover, ignore_errors=True)

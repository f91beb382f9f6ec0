"""Hugging Face -> ONNX: export a saved transformers model, check it against PyTorch, describe its tensors."""

from __future__ import annotations

import importlib
import inspect
import os
import shlex
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferry.errors import FerryError, InvalidInput, NotFound

TASKS = {"text-classification": "logits", "feature-extraction": "last_hidden_state"}
"""Task -> the model output the ONNX file returns."""

INPUT_ORDER = ("input_ids", "token_type_ids", "attention_mask")
"""The inputs ferry exports, in this order, where the tokenizer produces them and the model takes them."""

SAMPLES = (
    "what a great movie",
    "a dull, boring mess from start to finish",
    "ok",
    "The acting was wonderful, but the story dragged on far too long for my taste.",
)
"""Sentences of different lengths: checked as one padded batch, so padding and the mask count."""

EXPORT_SAMPLES = ("a short one", "and a somewhat longer example sentence")
"""The export's example input: batch 2, so no axis is traced as a constant 1."""

AUX_CONFIG = ("max_batch_size=32", "max_queue_delay_ms=2")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Conversion:
    """What an export produced and how closely ONNX Runtime matched PyTorch."""

    output: Path
    task: str
    input_names: tuple[str, ...]
    output_name: str
    output_size: tuple[int, ...]
    max_abs_diff: float
    samples: int

    def add_args(self, endpoint: str, name: str, project: str, preprocess: str | None) -> list[str]:
        """The `ferry model add` arguments that serve this file with ONNX Runtime."""
        args = ["model", "add", "--engine", "onnxruntime", "--endpoint", endpoint]
        if preprocess:
            args += ["--preprocess", preprocess]
        args += _model(name, project)
        args += ["--input-name", *self.input_names]
        args += ["--input-type", *["int64"] * len(self.input_names)]
        args += ["--input-size", *["[-1, -1]"] * len(self.input_names)]
        args += ["--output-name", self.output_name, "--output-type", "float32"]
        args += ["--output-size", shape_text(self.output_size), "--aux-config", *AUX_CONFIG]
        return args

    def upload_args(self, name: str, project: str) -> list[str]:
        """The `ferry model upload` arguments that register this file."""
        return ["model", "upload", *_model(name, project), "--framework", "onnx", "--path", str(self.output)]


def _model(name: str, project: str) -> list[str]:
    return ["--name", name, *(["--project", project] if project else [])]


def command_line(args: list[str]) -> str:
    """``ferry ARGS`` as one shell line, with ClearML-style double quotes where quoting is needed."""
    return " ".join(["ferry", *map(_quote, args)])


def _quote(arg: str) -> str:
    if arg and shlex.quote(arg) == arg:
        return arg
    if not any(c in arg for c in '"$`\\!'):
        return f'"{arg}"'
    return shlex.quote(arg)


def shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def convert(
    hf: Path,
    task: str,
    output: Path,
    opset: int = 17,
    atol: float = 1e-3,
    progress: Progress = lambda _: None,
) -> Conversion:
    """Export ``hf`` (a save_pretrained folder) for ``task`` to ``output``; fail if ONNX strays over ``atol``."""
    if task not in TASKS:
        raise InvalidInput(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
    _check_folder(hf)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a folder only: never wait on the hub
    libs = libraries()
    tokenizer, model = _load(libs, hf, task, progress)
    names = _input_names(tokenizer, model)
    module = _wrap(libs["torch"], model, names, TASKS[task])
    partial = output.with_name(output.name + ".partial")
    try:
        _export(libs, module, tokenizer, names, TASKS[task], partial, opset, progress)
        diff, size, names = _compare(libs, module, tokenizer, names, TASKS[task], partial, progress)
        if not diff <= atol:  # NaN fails too
            raise FerryError(
                f"ONNX Runtime differs from PyTorch by {diff:.3g} (over --atol {atol:g}) on {len(SAMPLES)} "
                "sample sentences: the export is wrong; nothing written"
            )
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
    shape = (-1, size[-1]) if task == "text-classification" else (-1, -1, size[-1])
    return Conversion(output, task, names, TASKS[task], shape, diff, len(SAMPLES))


def _check_folder(hf: Path) -> None:
    if not hf.exists():
        raise NotFound(f"--hf {hf}: no such folder")
    if not (hf / "config.json").is_file():
        raise InvalidInput(f"--hf {hf}: not a saved transformers model (no config.json; save it with save_pretrained)")


def libraries() -> dict[str, Any]:
    """torch, transformers, onnx and onnxruntime, or one line saying how to install them."""
    libs = {}
    for name in ("torch", "transformers", "onnx", "onnxruntime"):
        try:
            libs[name] = importlib.import_module(name)
        except ImportError:
            raise FerryError(f"model convert needs {name}: pip install 'ferry[hf]'") from None
    return libs


def _load(libs: dict[str, Any], hf: Path, task: str, progress: Progress) -> tuple[Any, Any]:
    transformers = libs["transformers"]
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    auto = transformers.AutoModelForSequenceClassification if task == "text-classification" else transformers.AutoModel
    progress(f"loading {hf} ({auto.__name__}) ...")
    start = time.monotonic()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf), local_files_only=True)
        model = auto.from_pretrained(str(hf), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise InvalidInput(f"--hf {hf}: cannot load it for {task}: {first_line(exc)}") from None
    model.eval()
    progress(f"loaded {type(model).__name__} in {time.monotonic() - start:.1f} s")
    return tokenizer, model


def first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _input_names(tokenizer: Any, model: Any) -> tuple[str, ...]:
    """The standard inputs the tokenizer produces and the model's forward accepts, in INPUT_ORDER."""
    accepted = set(inspect.signature(model.forward).parameters)
    produced = set(tokenizer.model_input_names)
    names = tuple(n for n in INPUT_ORDER if n in accepted and n in produced)
    if "input_ids" not in names:
        raise InvalidInput(f"{type(model).__name__} takes no input_ids from its tokenizer: not a text model")
    return names


def _wrap(torch: Any, model: Any, names: tuple[str, ...], output: str) -> Any:
    """The module that is exported: inputs by position in ``names`` order, passed on to the model BY KEYWORD."""

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: Any) -> Any:
            # by keyword, so the forward's own order (input_ids, attention_mask, token_type_ids) never matters
            return getattr(self.model(**dict(zip(names, tensors, strict=True)), return_dict=True), output)

    return Wrapped().eval()


def encode(tokenizer: Any, texts: tuple[str, ...], names: tuple[str, ...]) -> list[Any]:
    """A padded batch (to its longest text) as int64 numpy arrays in ``names`` order."""
    import numpy as np

    batch = tokenizer(list(texts), padding="longest", truncation=True, max_length=128, return_tensors="np")
    return [np.asarray(batch[n], dtype=np.int64) for n in names]


def _export(
    libs: dict[str, Any],
    module: Any,
    tokenizer: Any,
    names: tuple[str, ...],
    output: str,
    path: Path,
    opset: int,
    progress: Progress,
) -> None:
    torch = libs["torch"]
    example = tuple(torch.from_numpy(a) for a in encode(tokenizer, EXPORT_SAMPLES, names))
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes[output] = {0: "batch"} if output == "logits" else {0: "batch", 1: "sequence"}
    progress(f"exporting to ONNX (opset {opset}, legacy exporter) ...")
    start = time.monotonic()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter
            torch.onnx.export(
                module,
                example,
                str(path),
                input_names=list(names),
                output_names=[output],
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        libs["onnx"].checker.check_model(str(path))
    except Exception as exc:  # the exporter raises many kinds; say which in one line
        raise FerryError(f"ONNX export failed: {type(exc).__name__}: {first_line(exc)}") from None
    progress(f"exported in {time.monotonic() - start:.1f} s ({path.stat().st_size / 1e6:.1f} MB)")


def _compare(
    libs: dict[str, Any],
    module: Any,
    tokenizer: Any,
    names: tuple[str, ...],
    output: str,
    path: Path,
    progress: Progress,
) -> tuple[float, tuple[int, ...], tuple[str, ...]]:
    """PyTorch vs ONNX Runtime on SAMPLES as one padded batch: max abs difference, output shape, graph inputs."""
    import numpy as np

    torch, ort = libs["torch"], libs["onnxruntime"]
    progress(f"checking ONNX Runtime against PyTorch on {len(SAMPLES)} sentences ...")
    arrays = dict(zip(names, encode(tokenizer, SAMPLES, names), strict=True))
    with torch.no_grad():
        expected = module(*(torch.from_numpy(a) for a in arrays.values())).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    graph_inputs = tuple(i.name for i in session.get_inputs())  # the exporter drops inputs the graph never reads
    (got,) = session.run([output], {n: arrays[n] for n in graph_inputs})
    if got.shape != expected.shape:
        raise FerryError(f"ONNX output {output} has shape {list(got.shape)}, PyTorch's {list(expected.shape)}")
    return float(np.max(np.abs(got.astype(np.float64) - expected))), expected.shape, graph_inputs

"""Hugging Face -> ONNX: export a saved transformers model, check it against PyTorch, describe its tensors."""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import shlex
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
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
    libs = _libraries()
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


def _libraries() -> dict[str, Any]:
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
        raise InvalidInput(f"--hf {hf}: cannot load it for {task}: {_first_line(exc)}") from None
    model.eval()
    progress(f"loaded {type(model).__name__} in {time.monotonic() - start:.1f} s")
    return tokenizer, model


def _first_line(exc: BaseException) -> str:
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


def _encode(tokenizer: Any, texts: tuple[str, ...], names: tuple[str, ...]) -> list[Any]:
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
    example = tuple(torch.from_numpy(a) for a in _encode(tokenizer, EXPORT_SAMPLES, names))
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
        raise FerryError(f"ONNX export failed: {type(exc).__name__}: {_first_line(exc)}") from None
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
    arrays = dict(zip(names, _encode(tokenizer, SAMPLES, names), strict=True))
    with torch.no_grad():
        expected = module(*(torch.from_numpy(a) for a in arrays.values())).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    graph_inputs = tuple(i.name for i in session.get_inputs())  # the exporter drops inputs the graph never reads
    (got,) = session.run([output], {n: arrays[n] for n in graph_inputs})
    if got.shape != expected.shape:
        raise FerryError(f"ONNX output {output} has shape {list(got.shape)}, PyTorch's {list(expected.shape)}")
    return float(np.max(np.abs(got.astype(np.float64) - expected))), expected.shape, graph_inputs


EXAMPLE_SENTENCES = Path(__file__).resolve().parents[2] / "examples" / "huggingface" / "sentences.tsv"
"""The quantisation check's default sentences in a source checkout; elsewhere the built-in SAMPLES."""


@dataclass(frozen=True)
class Quantization:
    """The int8 file written and how closely it agreed with the fp32 one."""

    output: Path
    agreement: int
    samples: int
    max_prob_diff: float
    speed: Speed | None = None

    def summary(self) -> str:
        return (
            f"argmax agreement {self.agreement}/{self.samples}, largest probability difference {self.max_prob_diff:.3g}"
        )


VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
"""CPU flags of int8 dot-product instructions, which make ONNX Runtime's int8 matmuls pay (any one will do)."""


@dataclass(frozen=True)
class Speed:
    """fp32 and int8 timed on this CPU: one padded batch, one thread each (as a served model instance runs)."""

    fp32_s: float
    int8_s: float
    batch: int
    flags: tuple[str, ...]
    """The CPU's flags among VNNI_FLAGS and the SIMD ones (empty where /proc/cpuinfo cannot be read)."""

    @property
    def speedup(self) -> float:
        return self.fp32_s / self.int8_s

    def summary(self) -> str:
        flags = " ".join(self.flags) or "unknown"
        return (
            f"int8 runs {self.speedup:.2f}x fp32 on this CPU (a batch of {self.batch} sentences, one thread: "
            f"{self.int8_s * 1000:.1f} ms vs {self.fp32_s * 1000:.1f} ms; CPU flags: {flags})"
        )

    def why_slow(self) -> str:
        """Why int8 gains little here: the instructions it lacks, or (with them) that this model is not matmul-bound."""
        if not any(f in self.flags for f in VNNI_FLAGS):
            return f"this CPU has no VNNI ({', '.join(VNNI_FLAGS)}), so int8 matmuls run little faster than fp32"
        return "the CPU has VNNI, but this model's time is not in its matmuls at this batch"


def cpu_flags() -> tuple[str, ...]:
    """The flags of this CPU that decide int8 and fp32 speed (Linux' /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    have = set(line.partition(":")[2].split())
    return tuple(f for f in ("avx2", "avx512f", *VNNI_FLAGS) if f in have)


def int8_path(fp32: Path) -> Path:
    """Where ``--quantize int8`` writes: beside the fp32 file, ``NAME.int8.onnx``."""
    return fp32.with_name(f"{fp32.stem}.int8{fp32.suffix or '.onnx'}")


def read_samples(path: Path | None) -> tuple[str, ...]:
    """One sentence a line (a TSV's first column, its ``text`` header skipped); None: the example's or SAMPLES."""
    if path is None:
        if not EXAMPLE_SENTENCES.is_file():
            return SAMPLES
        path = EXAMPLE_SENTENCES
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"--samples {path}: cannot read it ({_first_line(exc)})") from None
    texts = [line.split("\t")[0].strip() for line in lines]
    if texts and texts[0] == "text":
        texts = texts[1:]
    texts = [t for t in texts if t]
    if not texts:
        raise InvalidInput(f"--samples {path}: no sentences (give one a line)")
    return tuple(texts)


def quantize(
    fp32: Path,
    hf: Path,
    samples: tuple[str, ...],
    min_agreement: float = 0.98,
    max_prob_diff: float = 0.05,
    progress: Progress = lambda _: None,
) -> Quantization:
    """int8 weights (ONNX Runtime dynamic quantisation) for the classifier ``fp32``, written only if it agrees."""
    libs = _libraries()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    output = int8_path(fp32)
    partial = output.with_name(output.name + ".partial")
    try:
        progress("quantising the weights to int8 (ONNX Runtime dynamic quantisation) ...")
        logging.disable(logging.WARNING)  # its "consider pre-processing" advice goes to the root logger
        try:  # per output channel: one scale per column keeps MiniLM's probabilities within ~0.01, per tensor ~0.08
            quantize_dynamic(str(fp32), str(partial), per_channel=True, weight_type=QuantType.QInt8)
        finally:
            logging.disable(logging.NOTSET)
        done = _agreement(libs, hf, fp32, partial, samples, progress)
        _judge(done, fp32, min_agreement, max_prob_diff)
        done = replace(done, speed=_speed(libs, hf, fp32, partial, samples, progress))
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
    return done


def _agreement(
    libs: dict[str, Any], hf: Path, fp32: Path, int8: Path, samples: tuple[str, ...], progress: Progress
) -> Quantization:
    """Both graphs on ``samples`` (batches of 16, padded): argmax agreement and the largest softmax difference."""
    import numpy as np

    progress(f"checking int8 against fp32 on {len(samples)} sentences ...")
    tokenizer = libs["transformers"].AutoTokenizer.from_pretrained(str(hf), local_files_only=True)
    ort = libs["onnxruntime"]
    runs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32, int8)]
    names = tuple(i.name for i in runs[0].get_inputs())
    agree, diff = 0, 0.0
    for start in range(0, len(samples), 16):
        feeds = dict(zip(names, _encode(tokenizer, samples[start : start + 16], names), strict=True))
        want, got = (_softmax(s.run(None, feeds)[0].astype(np.float64)) for s in runs)
        agree += int(np.sum(want.argmax(-1) == got.argmax(-1)))
        diff = max(diff, float(np.max(np.abs(want - got))))
    return Quantization(int8_path(fp32), agree, len(samples), diff)


def _speed(
    libs: dict[str, Any], hf: Path, fp32: Path, int8: Path, samples: tuple[str, ...], progress: Progress, runs: int = 5
) -> Speed:
    """Both graphs timed on one batch of 32 of ``samples`` (repeated if fewer), one intra-op thread each, in
    turns after a warm-up; the median of ``runs`` each (a shared machine's noise hits both alike)."""
    import statistics
    import time

    progress("timing int8 against fp32 on this CPU ...")
    tokenizer = libs["transformers"].AutoTokenizer.from_pretrained(str(hf), local_files_only=True)
    ort = libs["onnxruntime"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    sessions = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in (fp32, int8)]
    names = tuple(i.name for i in sessions[0].get_inputs())
    texts = tuple((samples * (32 // len(samples) + 1))[:32])
    feeds = dict(zip(names, _encode(tokenizer, texts, names), strict=True))
    times: list[list[float]] = [[], []]
    for turn in range(runs + 1):
        for session, seconds in zip(sessions, times, strict=True):
            started = time.perf_counter()
            session.run(None, feeds)
            if turn:  # the first turn warms both up
                seconds.append(time.perf_counter() - started)
    return Speed(statistics.median(times[0]), statistics.median(times[1]), len(texts), cpu_flags())


def _softmax(logits: Any) -> Any:
    import numpy as np

    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _judge(done: Quantization, fp32: Path, min_agreement: float, max_prob_diff: float) -> None:
    """Refuse the int8 model when it strays: say which threshold and how to override it."""
    why = []
    if not done.agreement >= min_agreement * done.samples:
        why.append(f"agreement {done.agreement / done.samples:.3f} is under --min-agreement {min_agreement:g}")
    if not done.max_prob_diff <= max_prob_diff:  # NaN refuses too
        why.append(f"the difference is over --max-prob-diff {max_prob_diff:g}")
    if why:
        raise FerryError(
            f"int8 model refused: {done.summary()} ({'; '.join(why)}); kept the fp32 {fp32}, wrote no int8 "
            "file. Serve the fp32 file, or accept the int8 one with a lower --min-agreement or a higher --max-prob-diff"
        )

"""int8 quantization of an exported ONNX model (``model convert --quantize int8``): the file, how closely it agrees
with the fp32 one on sample sentences, and how much faster it runs on this CPU, judged against the limits given."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ferry.convert import SAMPLES, Progress, encode, first_line, libraries
from ferry.errors import FerryError, InvalidInput

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
        raise InvalidInput(f"--samples {path}: cannot read it ({first_line(exc)})") from None
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
    libs = libraries()
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
        feeds = dict(zip(names, encode(tokenizer, samples[start : start + 16], names), strict=True))
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

    progress("timing int8 against fp32 on this CPU ...")
    tokenizer = libs["transformers"].AutoTokenizer.from_pretrained(str(hf), local_files_only=True)
    ort = libs["onnxruntime"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    sessions = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in (fp32, int8)]
    names = tuple(i.name for i in sessions[0].get_inputs())
    texts = tuple((samples * (32 // len(samples) + 1))[:32])
    feeds = dict(zip(names, encode(tokenizer, texts, names), strict=True))
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

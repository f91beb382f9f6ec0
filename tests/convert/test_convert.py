"""`ferry model convert` on tiny random transformers models: the real command, its checks, its add line."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import transformers

from ferry.cli.main import build_parser
from ferry.cli.parsing import build_tensors, parse_aux_config
from ferry.errors import FerryError
from tests.conftest import Ferry

TEXT = "what a great movie dull boring mess the film was not good bad and it i loved hated story acting"
WORDS = TEXT.split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BERT_INPUTS = ["input_ids", "token_type_ids", "attention_mask"]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def save_tiny(folder: Path, kind: str) -> Path:
    """A random 1-layer model with a ~100-token vocabulary, saved as save_pretrained writes it."""
    folder.mkdir(parents=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(SPECIALS + WORDS + [f"w{i}" for i in range(100 - len(SPECIALS) - len(WORDS))]))
    torch.manual_seed(0)
    if kind == "bert":
        config = transformers.BertConfig(
            vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=64, num_labels=2,
        )  # fmt: skip
        model, tokenizer = transformers.BertForSequenceClassification(config), transformers.BertTokenizerFast
    else:  # no token_type_ids
        config = transformers.DistilBertConfig(
            vocab_size=100, dim=16, n_layers=1, n_heads=2, hidden_dim=32, max_position_embeddings=64, num_labels=3
        )
        model, tokenizer = (
            transformers.DistilBertForSequenceClassification(config),
            transformers.DistilBertTokenizerFast,
        )
    model.save_pretrained(folder)
    tokenizer(vocab_file=str(vocab)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("hf") / "tiny-bert", "bert")


@pytest.fixture(scope="module")
def tiny_distilbert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("hf") / "tiny-distilbert", "distilbert")


@pytest.fixture
def cli(tmp_path: Path) -> Ferry:
    return Ferry(tmp_path)


def convert(cli: Ferry, hf: Path, task: str, output: Path, *extra: str, ok: bool = True):
    return cli("model", "convert", "--hf", str(hf), "--task", task, "--output", str(output), *extra, ok=ok)


def max_diff(out: str) -> float:
    match = re.search(r"max abs difference PyTorch vs ONNX Runtime: (\S+)", out)
    assert match, out
    return float(match.group(1))


def add_line(out: str) -> list[str]:
    """The printed `ferry model add ...` line as argv (after `ferry`), parsed as a shell would."""
    lines = [line for line in out.splitlines() if line.startswith("ferry model add ")]
    assert len(lines) == 1, out
    return shlex.split(lines[0])[1:]


def tensors(argv: list[str]):
    """The input and output specs `ferry model add` builds from ``argv``."""
    args = build_parser().parse_args(argv)
    assert args.func.__name__ == "add" and args.engine == "onnxruntime"
    return (
        build_tensors(args.input_name, args.input_type, args.input_size, "input"),
        build_tensors(args.output_name, args.output_type, args.output_size, "output"),
        parse_aux_config(args.aux_config)[0],
        args,
    )


def torch_output(hf: Path, task: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    auto = transformers.AutoModelForSequenceClassification if task == "text-classification" else transformers.AutoModel
    model = auto.from_pretrained(hf).eval()
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    return (out.logits if task == "text-classification" else out.last_hidden_state).numpy()


def random_feeds(names: list[str], batch: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    """Token ids with the first request padded: the mask and the type ids both matter."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 100, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    mask[0, seq // 2 :] = 0
    ids[0, seq // 2 :] = 0
    types = np.zeros((batch, seq), dtype=np.int64)
    types[:, seq // 3 :] = 1
    feeds = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
    return {n: feeds[n] for n in names}


@pytest.fixture(scope="module")
def classifier(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The tiny BERT converted once for text-classification: the .onnx path and what the command printed."""
    work = tmp_path_factory.mktemp("classifier")
    output = work / "out" / "tiny.onnx"
    result = convert(Ferry(work), tiny_bert, "text-classification", output, "--endpoint", "sentiment",
                     "--name", "tiny bert", "--project", "convert tests", "--preprocess", "pre dir")  # fmt: skip
    return output, result.out


def test_text_classification(classifier: tuple[Path, str]) -> None:
    output, out = classifier
    assert max_diff(out) < 1e-3
    assert out.count("\n") == 5, out  # diff, wrote, "serve it with:", upload, add: nothing else
    inputs, outputs, aux, args = tensors(add_line(out))
    assert [(t.name, t.dtype, t.shape) for t in inputs] == [(n, "int64", (-1, -1)) for n in BERT_INPUTS]
    assert [(t.name, t.dtype, t.shape) for t in outputs] == [("logits", "float32", (-1, 2))]
    assert aux == {"max_batch_size": 32, "max_queue_delay_ms": 2}
    assert (args.endpoint, args.name, args.project, args.preprocess) == ("sentiment", "tiny bert", "convert tests",
                                                                         "pre dir")  # fmt: skip
    upload = next(line for line in out.splitlines() if line.startswith("ferry model upload "))
    assert shlex.split(upload)[1:] == ["model", "upload", "--name", "tiny bert", "--project", "convert tests",
                                       "--framework", "onnx", "--path", str(output)]  # fmt: skip
    assert [p.name for p in output.parent.iterdir()] == ["tiny.onnx"]  # no .partial left behind


def test_onnx_file_takes_any_batch_and_length_and_matches_pytorch(classifier: tuple[Path, str], tiny_bert: Path):
    session = ort.InferenceSession(str(classifier[0]), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == BERT_INPUTS
    assert [o.name for o in session.get_outputs()] == ["logits"]
    for batch, seq in ((1, 3), (5, 11), (2, 40)):
        feeds = random_feeds(BERT_INPUTS, batch, seq, seed=batch)
        (logits,) = session.run(["logits"], feeds)
        assert logits.shape == (batch, 2)
        # by keyword in PyTorch: a swapped token_type_ids/attention_mask export would differ here
        np.testing.assert_allclose(logits, torch_output(tiny_bert, "text-classification", feeds), atol=1e-4)


def test_feature_extraction(cli: Ferry, tiny_bert: Path, tmp_path: Path) -> None:
    output = tmp_path / "encoder.onnx"
    result = convert(cli, tiny_bert, "feature-extraction", output, "--atol", "1e-4")
    assert max_diff(result.out) < 1e-4
    argv = add_line(result.out)
    assert argv[argv.index("--endpoint") + 1] == "encoder" and argv[argv.index("--name") + 1] == "encoder"
    assert "--project" not in argv and "--preprocess" not in argv
    inputs, outputs, _, _ = tensors(argv)
    assert [t.name for t in inputs] == BERT_INPUTS
    assert [(t.name, t.dtype, t.shape) for t in outputs] == [("last_hidden_state", "float32", (-1, -1, 16))]
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["last_hidden_state"]
    feeds = random_feeds(BERT_INPUTS, 3, 9, seed=7)
    (hidden,) = session.run(None, feeds)
    assert hidden.shape == (3, 9, 16)
    np.testing.assert_allclose(hidden, torch_output(tiny_bert, "feature-extraction", feeds), atol=1e-4)


def test_model_without_token_type_ids(cli: Ferry, tiny_distilbert: Path, tmp_path: Path) -> None:
    output = tmp_path / "distil.onnx"
    result = convert(cli, tiny_distilbert, "text-classification", output)
    inputs, outputs, _, _ = tensors(add_line(result.out))
    assert [t.name for t in inputs] == ["input_ids", "attention_mask"]
    assert [t.shape for t in outputs] == [(-1, 3)]
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert session.run(None, random_feeds(["input_ids", "attention_mask"], 4, 6, seed=1))[0].shape == (4, 3)


@pytest.mark.parametrize("make", ["missing", "no-config"])
def test_bad_folder_is_one_line(cli: Ferry, tmp_path: Path, make: str) -> None:
    hf = tmp_path / "nowhere"
    if make == "no-config":
        hf.mkdir()
    result = convert(cli, hf, "text-classification", tmp_path / "x.onnx", ok=False)
    assert result.code != 0
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert "--hf" in result.err and str(hf) in result.err
    assert not (tmp_path / "x.onnx").exists()


def test_unknown_task_is_a_usage_error(cli: Ferry, tiny_bert: Path, tmp_path: Path) -> None:
    result = convert(cli, tiny_bert, "translation", tmp_path / "x.onnx", ok=False)
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1, result.err


def test_over_atol_fails_and_writes_nothing(tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import ferry.convert as conv

    monkeypatch.setattr(conv, "_compare", lambda *args: (0.5, (4, 2), ("input_ids",)))
    with pytest.raises(FerryError, match=r"differs from PyTorch by 0\.5 \(over --atol 0\.001\)"):
        conv.convert(tiny_bert, "text-classification", tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []


def test_missing_library_names_the_extra(tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import ferry.convert as conv

    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    with pytest.raises(FerryError, match=r"needs onnx: pip install 'ferry\[hf\]'"):
        conv.convert(tiny_bert, "text-classification", tmp_path / "x.onnx")


def test_cli_does_not_import_torch() -> None:
    code = (
        "import sys; from ferry.cli.main import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'transformers', 'onnx', 'onnxruntime') if m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"

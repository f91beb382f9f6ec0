"""The Hugging Face examples for real: MiniLM fine-tuned, converted, uploaded, added as printed, served over HTTP."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ferry.settings import usable_cores
from tests.conftest import Ferry
from tests.e2e.conftest import Converted
from tests.server import Server

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        importlib.util.find_spec("ferry.engines.onnxruntime") is None,
        reason="ferry.engines.onnxruntime does not exist yet: nothing can serve the converted model",
    ),
]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PROJECT = "serving examples"


@pytest.fixture(scope="module", autouse=True)
def offline() -> Iterator[None]:
    """Every subprocess, the module's `ferry serve` too: models load from folders only."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


def run(*argv: str) -> str:
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"{argv} failed:\n{proc.stderr[-3000:]}{proc.stdout}"
    return proc.stdout


def serve_as_printed(ferry: Ferry, convert_out: str) -> None:
    """Run the `ferry model upload` and `ferry model add` lines that `model convert` printed, as printed."""
    for verb in ("upload", "add"):
        line = next(line for line in convert_out.splitlines() if line.startswith(f"ferry model {verb} "))
        ferry(*shlex.split(line)[1:])


def answer(server: Server, endpoint: str, text: str) -> dict:
    """POST {"text": ..}; waits while the endpoint loads, fails at once if it failed to load."""
    return server.wait_endpoint(endpoint, {"text": text}, timeout=60)


def test_sentiment_example(e2e_ferry: Ferry, example_server: Server, sentiment_onnx: Converted) -> None:
    """train.py --quick and `model convert` ran once for the session (the sentiment_onnx fixture)."""
    preprocess, out = sentiment_onnx.example.preprocess, sentiment_onnx.out
    assert {p.name for p in preprocess.iterdir()} >= {"preprocess.py", "tokenizer.json"}
    assert "--input-name input_ids token_type_ids attention_mask" in out and '--output-size "[-1, 2]"' in out
    serve_as_printed(e2e_ferry, out)
    server = example_server

    great = answer(server, "sentiment", "what a great movie")
    assert great["label"] == "positive", great
    assert len(great["scores"]) == 2 and abs(sum(great["scores"]) - 1) < 1e-6
    dull = server.post("/serve/sentiment", {"text": "a dull, boring mess"}).json()
    assert dull["label"] == "negative", dull
    assert server.post("/serve/sentiment", {"nothing": 1}).status_code == 422
    # plain `ferry serve`: one model instance per core and a spare, as threads sharing the session, and its memory
    loaded = re.search(r"endpoint sentiment loaded in [\d.]+ s, batching with (\d+) model instance\(s\) as threads, "
                       r"\+\d+ MiB resident", server.log_path.read_text())  # fmt: skip
    assert loaded and int(loaded.group(1)) == usable_cores() + 1, server.log()


def test_embeddings_example(e2e_ferry: Ferry, example_server: Server, tmp_path: Path) -> None:
    preprocess, onnx = tmp_path / "embed-preprocess", tmp_path / "minilm.onnx"
    minilm = run(str(EXAMPLES / "huggingface_embeddings" / "prepare.py"), str(preprocess)).strip()
    out = e2e_ferry("model", "convert", "--hf", minilm, "--task", "feature-extraction", "--output", str(onnx),
                    "--endpoint", "embed", "--name", "minilm encoder", "--project", PROJECT,
                    "--preprocess", str(preprocess)).out  # fmt: skip
    assert '--output-name last_hidden_state --output-type float32 --output-size "[-1, -1, 384]"' in out
    serve_as_printed(e2e_ferry, out)
    server = example_server

    movie = np.array(answer(server, "embed", "what a great movie")["embedding"])
    film = np.array(server.post("/serve/embed", {"text": "a wonderful film"}).json()["embedding"])
    kernel = np.array(server.post("/serve/embed", {"text": "the linux kernel scheduler"}).json()["embedding"])
    assert movie.shape == (384,) and abs(np.linalg.norm(movie) - 1) < 1e-4
    assert movie @ film > movie @ kernel + 0.2, (movie @ film, movie @ kernel)

"""`pip install ferry` without extras: a `ferry serve` whose Python cannot import torch, transformers, onnxruntime,
tritonclient, ray, xgboost, lightgbm, vllm or llguidance serves the scikit-learn example, and its OpenAI routes
answer with OpenAI's errors rather than a crash (they once imported torch at start: every base install failed)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Ferry
from tests.e2e.conftest import FAST_POLL
from tests.server import Server

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sklearn"
EXTRAS = ("torch", "transformers", "onnxruntime", "tritonclient", "ray", "xgboost", "lightgbm", "vllm", "llguidance")
SITE = """import os
import sys

NAMES = {names!r}


class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in NAMES:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, NotInstalled())
with open(os.environ["FERRY_TEST_BLOCKED"], "w") as marker:
    marker.write(" ".join(NAMES))
"""


def test_a_server_without_the_extras_serves_sklearn(
    e2e_home: Path, e2e_ferry: Ferry, sklearn_example_model: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITE.format(names=EXTRAS))
    sid = e2e_ferry.service("base install")
    e2e_ferry("model", "upload", "--name", "base", "--project", "base", "--path", str(sklearn_example_model))
    e2e_ferry("--id", sid, "model", "add", "--engine", "sklearn", "--endpoint", "sklearn", "--name", "base",
              "--project", "base", "--preprocess", str(EXAMPLE / "preprocess.py"))  # fmt: skip
    marker = tmp_path / "blocked"
    env = {**FAST_POLL, "PYTHONPATH": str(site), "FERRY_TEST_BLOCKED": str(marker)}
    server = Server(e2e_home.parent, "--id", sid, env=env)
    try:
        server.wait_ready()
        answer = server.post("/serve/sklearn", {"x0": 1, "x1": 2})
        chat = {"model": "sklearn", "messages": [{"role": "user", "content": "hi"}]}
        openai = server.post("/serve/openai/v1/chat/completions", chat)
    finally:
        server.stop()
    assert marker.read_text().split() == list(EXTRAS)  # the server ran without them
    assert answer.status_code == 200 and answer.json()["y"] in ([0], [1]), answer.text
    assert openai.status_code == 404 and "not an LLM endpoint" in openai.text, openai.text

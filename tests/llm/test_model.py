"""load_lm: a Hugging Face folder or a GGUF file loaded on its dtype and device, with chat rendering and its errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from ferry.llm import model as model_module
from ferry.llm.model import DTYPE_NAMES, LoadedLM, load_lm, pick_device, pick_dtype
from tests.llm.tiny import EOS_TOKEN

pytestmark = pytest.mark.usefixtures("single_torch_thread")

CPU = torch.device("cpu")
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Héllo 日本語 🚀"}]
CHATML = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHéllo 日本語 🚀<|im_end|>\n"


@pytest.fixture(scope="module")
def lm32(tiny_llama: Path) -> LoadedLM:
    return load_lm(tiny_llama, dtype="float32", device="cpu")[0]


@pytest.mark.parametrize(("name", "dtype"), [("float32", torch.float32), ("float64", torch.float64)])
def test_tiny_folder_loads_in_the_dtype_asked_for(tiny_llama: Path, name: str, dtype: torch.dtype) -> None:
    lm, warnings = load_lm(tiny_llama, dtype=name, device="cpu")
    assert warnings == []
    assert (lm.dtype, lm.device) == (dtype, CPU)
    assert {p.dtype for p in lm.model.parameters()} == {dtype}
    assert {p.device for p in lm.model.parameters()} == {CPU}
    assert not lm.model.training
    assert lm.model.config.vocab_size == len(lm.tokenizer)


def test_auto_on_cpu_is_float32(tiny_llama: Path) -> None:
    lm, warnings = load_lm(tiny_llama, dtype="auto", device="cpu")
    assert lm.dtype == torch.float32 and warnings == []


@pytest.mark.parametrize(("fast_bf16", "fallback"), [(True, torch.bfloat16), (False, torch.float32)])
def test_float16_on_cpu_falls_back_with_a_warning(
    tiny_llama: Path, monkeypatch: pytest.MonkeyPatch, fast_bf16: bool, fallback: torch.dtype
) -> None:
    monkeypatch.setattr(model_module, "cpu_has_fast_bf16", lambda: fast_bf16)
    lm, warnings = load_lm(tiny_llama, dtype="float16", device="cpu")
    assert lm.dtype == fallback
    assert {p.dtype for p in lm.model.parameters()} == {fallback}
    [warning] = warnings
    assert "float16" in warning and str(fallback).removeprefix("torch.") in warning


def test_unknown_dtype_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match="float8") as excinfo:
        pick_dtype("float8", CPU)
    assert all(name in str(excinfo.value) for name in DTYPE_NAMES)


def test_pick_dtype_keeps_what_the_cpu_runs() -> None:
    assert pick_dtype("bfloat16", CPU) == (torch.bfloat16, None)
    assert pick_dtype("float64", CPU) == (torch.float64, None)


def test_pick_device() -> None:
    assert pick_device("cpu") == CPU
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        pick_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused() -> None:
    with pytest.raises(ValueError, match="no CUDA device"):
        pick_device("cuda")


def test_max_model_len_is_capped_by_the_model(tiny_llama: Path, lm32: LoadedLM) -> None:
    assert lm32.max_model_len == 512
    assert load_lm(tiny_llama, dtype="float32", device="cpu", max_model_len=100)[0].max_model_len == 100
    assert load_lm(tiny_llama, dtype="float32", device="cpu", max_model_len=4096)[0].max_model_len == 512
    with pytest.raises(ValueError, match="max_model_len"):
        load_lm(tiny_llama, max_model_len=0)


def test_eos_ids_include_im_end(lm32: LoadedLM) -> None:
    assert lm32.tokenizer.convert_tokens_to_ids(EOS_TOKEN) in lm32.eos_token_ids


def test_chat_renders_the_chatml_text(lm32: LoadedLM) -> None:
    ids = lm32.render_chat(MESSAGES)
    assert lm32.tokenizer.decode(ids) == CHATML + "<|im_start|>assistant\n"
    assert ids == lm32.tokenizer(CHATML + "<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert ids.count(lm32.tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3
    assert lm32.tokenizer.decode(lm32.render_chat(MESSAGES, add_generation_prompt=False)) == CHATML


def test_a_chat_template_given_at_load_time_wins(tiny_llama: Path) -> None:
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    lm, _ = load_lm(tiny_llama, dtype="float32", device="cpu", chat_template=template)
    assert lm.chat_template == template
    assert lm.tokenizer.decode(lm.render_chat(MESSAGES)) == "[system] Be brief.\n[user] Héllo 日本語 🚀\n"


def test_no_chat_template_is_a_value_error(tiny_llama: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny_llama, tmp_path / "no-template")
    (folder / "chat_template.jinja").unlink()
    lm, _ = load_lm(folder, dtype="float32", device="cpu")
    assert lm.chat_template is None
    with pytest.raises(ValueError, match="no chat template"):
        lm.render_chat(MESSAGES)


def test_a_template_that_raises_is_a_value_error(tiny_llama: Path) -> None:
    template = "{{ raise_exception('roles must alternate') }}"
    lm, _ = load_lm(tiny_llama, dtype="float32", device="cpu", chat_template=template)
    with pytest.raises(ValueError, match="roles must alternate"):
        lm.render_chat(MESSAGES)


def test_encode_round_trips_multibyte_text(lm32: LoadedLM) -> None:
    text = "Café über 日本語 🚀"
    ids = lm32.encode(text)
    assert ids == lm32.tokenizer(text)["input_ids"]
    assert lm32.tokenizer.decode(ids) == text


def test_a_folder_without_a_model_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"no config.json and no .gguf file in {tmp_path}"):
        load_lm(tmp_path)


def test_missing_weights_or_tokenizer_are_named(tiny_llama: Path, tmp_path: Path) -> None:
    no_weights = shutil.copytree(tiny_llama, tmp_path / "no-weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=f"no model weights .* in {no_weights}"):
        load_lm(no_weights)
    no_tokenizer = shutil.copytree(tiny_llama, tmp_path / "no-tokenizer")
    (no_tokenizer / "tokenizer.json").unlink()
    (no_tokenizer / "tokenizer_config.json").unlink()
    with pytest.raises(ValueError, match=f"no tokenizer .* in {no_tokenizer}"):
        load_lm(no_tokenizer)


def test_paths_that_are_not_models_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_lm(tmp_path / "absent")
    text_file = tmp_path / "weights.txt"
    text_file.write_text("x")
    with pytest.raises(ValueError, match="not a .gguf file"):
        load_lm(text_file)
    (tmp_path / "a.gguf").write_bytes(b"")
    (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(ValueError, match=r"several \.gguf files \(a\.gguf, b\.gguf\)"):
        load_lm(tmp_path)

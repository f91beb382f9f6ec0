"""A causal language model loaded with transformers (a Hugging Face folder or a GGUF file) on its device and dtype."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

_DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
DTYPE_NAMES = ("auto", *_DTYPES)
"""The names ``pick_dtype`` and ``load_lm`` take."""

_CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin")


@dataclass
class LoadedLM:
    """A loaded model and tokenizer, with what the engine loop needs to know about them."""

    model: Any
    """A transformers ``PreTrainedModel`` in eval mode, on ``device``."""
    tokenizer: Any
    """A fast tokenizer (transformers' ``PreTrainedTokenizerFast``)."""
    device: torch.device
    dtype: torch.dtype
    eos_token_ids: frozenset[int]
    """Every end-of-sequence id the generation config, the model config and the tokenizer name."""
    max_model_len: int
    """Prompt and generated tokens together at most."""
    chat_template: str | None
    """The template given at load time, else the tokenizer's own; None: chat requests cannot be rendered."""

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """The token ids of ``messages`` rendered with the chat template; ValueError without a template."""
        if self.chat_template is None:
            raise ValueError(
                "this model has no chat template (its tokenizer has none): give one with the chat template option"
            )
        from jinja2 import TemplateError

        try:
            text = self.tokenizer.apply_chat_template(
                messages,
                chat_template=self.chat_template,
                add_generation_prompt=add_generation_prompt,
                tokenize=False,
            )
        except TemplateError as exc:
            raise ValueError(f"the chat template could not render these messages: {exc}") from exc
        # The template writes the special tokens itself (a BOS included, where the model wants one).
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode(self, text: str) -> list[int]:
        """The token ids of a completion prompt, with the special tokens the tokenizer adds (a BOS, say)."""
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), read from /proc/cpuinfo's flags."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return not _CPU_BF16_FLAGS.isdisjoint(line.split(":", 1)[-1].split())
    except OSError:
        pass
    return False


def pick_dtype(requested: str, device: torch.device) -> tuple[torch.dtype, str | None]:
    """The dtype to run ``requested`` ('auto' or a dtype name) on ``device``, and a warning when it differs.

    float16 on a CPU falls back to bfloat16 where the CPU has AVX-512 BF16 or AMX, else to float32: CPU kernels
    for float16 are slow or missing. 'auto' is float32 on a CPU; on CUDA bfloat16 where supported, else float16.
    """
    if requested not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {requested!r}: use one of {', '.join(DTYPE_NAMES)}")
    if requested == "auto":
        return _auto_dtype(device), None
    dtype = _DTYPES[requested]
    if dtype is torch.float16 and device.type == "cpu":
        return _cpu_float16_fallback()
    return dtype, None


def _auto_dtype(device: torch.device) -> torch.dtype:
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _cpu_float16_fallback() -> tuple[torch.dtype, str]:
    if cpu_has_fast_bf16():
        return torch.bfloat16, "float16 on a CPU: using bfloat16 instead (this CPU has AVX-512 BF16 or AMX)"
    return torch.float32, "float16 on a CPU: using float32 instead (this CPU has neither AVX-512 BF16 nor AMX)"


def pick_device(requested: str = "auto") -> torch.device:
    """The torch device for ``requested``: 'auto' (CUDA where available, else the CPU), 'cpu', 'cuda', 'cuda:N'."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {requested!r}: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} was asked for, but torch sees no CUDA device")
    return device


def load_lm(
    path: Path,
    *,
    dtype: str = "auto",
    device: str = "auto",
    max_model_len: int | None = None,
    chat_template: str | None = None,
) -> tuple[LoadedLM, list[str]]:
    """Load a Hugging Face folder, a .gguf file, or a folder holding exactly one .gguf file.

    Returns the model and the warnings to log. A path that holds no model is a ValueError naming what is missing.
    """
    if max_model_len is not None and max_model_len < 1:
        raise ValueError(f"max_model_len must be at least 1, not {max_model_len}")
    folder, gguf_file = _locate(Path(path))
    torch_device = pick_device(device)
    torch_dtype, dtype_warning = pick_dtype(dtype, torch_device)
    model, tokenizer = _from_pretrained(folder, gguf_file, torch_dtype, torch_device)
    lm = LoadedLM(
        model=model,
        tokenizer=tokenizer,
        device=torch_device,
        dtype=torch_dtype,
        eos_token_ids=_eos_token_ids(model, tokenizer),
        max_model_len=_max_model_len(model.config, max_model_len, path),
        chat_template=chat_template if chat_template is not None else tokenizer.chat_template,
    )
    return lm, [dtype_warning] if dtype_warning else []


def _locate(path: Path) -> tuple[Path, str | None]:
    """The folder to load from and, for GGUF, the file's name inside it."""
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"{path} is a file but not a .gguf file: give a .gguf file or a Hugging Face folder")
        return path.parent, path.name
    if not path.is_dir():
        raise ValueError(f"{path} does not exist")
    if (path / "config.json").is_file():
        _check_hf_folder(path)
        return path, None
    ggufs = sorted(p.name for p in path.glob("*.gguf"))
    if len(ggufs) == 1:
        return path, ggufs[0]
    if ggufs:
        raise ValueError(f"{path} holds several .gguf files ({', '.join(ggufs)}): give the path of one of them")
    raise ValueError(f"no config.json and no .gguf file in {path}: give a Hugging Face model folder or a .gguf file")


def _check_hf_folder(path: Path) -> None:
    if not any(any(path.glob(pattern)) for pattern in _WEIGHT_PATTERNS):
        raise ValueError(f"no model weights (*.safetensors or *.bin) in {path}")
    if not ((path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()):
        raise ValueError(f"no tokenizer (tokenizer.json or tokenizer_config.json) in {path}")


def _from_pretrained(folder: Path, gguf_file: str | None, dtype: torch.dtype, device: torch.device) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = folder / gguf_file if gguf_file else folder
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    if gguf_file:
        _check_gguf_packages()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **extra)
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, device_map=device, attn_implementation="sdpa", **extra
        )
    except (OSError, ValueError, KeyError, NotImplementedError) as exc:
        raise ValueError(f"could not load the model at {source}: {exc}") from exc
    return model.eval(), tokenizer


def _check_gguf_packages() -> None:
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"loading a .gguf file needs the packages gguf and accelerate: pip install {' '.join(missing)}"
        )


def _eos_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    generation_config = getattr(model, "generation_config", None)
    found = (
        getattr(generation_config, "eos_token_id", None),
        getattr(model.config.get_text_config(), "eos_token_id", None),
        tokenizer.eos_token_id,
    )
    return frozenset(_ids(found))


def _ids(values: Iterable[int | list[int] | None]) -> list[int]:
    out: list[int] = []
    for value in values:
        if isinstance(value, int):
            out.append(value)
        elif value is not None:
            out.extend(int(v) for v in value)
    return out


def _max_model_len(config: Any, requested: int | None, path: Path) -> int:
    limit = getattr(config.get_text_config(), "max_position_embeddings", None)
    if limit is None and requested is None:
        raise ValueError(f"the model at {path} does not say its context length: give max_model_len")
    return min(n for n in (requested, limit) if n is not None)

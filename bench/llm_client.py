"""A small OpenAI streaming load client: N users each send chat requests back to back, streamed, and it reports
output tokens per second, time to first token and inter-token latency (p50/p99).

    python bench/llm_client.py --url http://127.0.0.1:8080/serve/openai/v1 --model chat --users 4 --requests 40

Each request's prompt differs from the first word on (nothing to reuse between requests) unless --same-prompt;
about --prompt-words words (~1.3 tokens each for SmolLM2's tokenizer), --max-tokens output tokens with
ignore_eos so every answer has the same length, greedy. Keep-alive is off: llama-server drops a reused connection
after a streamed answer now and then (../shared/peers/README.md). Tokens are counted from the usage chunk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from dataclasses import dataclass, field

import httpx

WORDS = (  # noqa: SIM905 - one word a line would be 30 lines
    "river mountain quiet engine paper garden silver window morning signal harbor lantern orbit pencil meadow "
    "thunder violet canyon marble ember falcon glacier jungle kettle ladder mirror nickel oyster pepper quartz"
).split()


@dataclass
class Tally:
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    tokens: int = 0
    failed: int = 0


def prompt(rng: random.Random, words: int, same: bool) -> str:
    picked = WORDS[:words] if same else [rng.choice(WORDS) for _ in range(words)]
    return "Continue this list of words: " + " ".join(picked)


async def one(client: httpx.AsyncClient, args: argparse.Namespace, text: str, tally: Tally) -> None:
    body = {
        "model": args.model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": args.max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if args.ignore_eos:
        body["ignore_eos"] = True
    started = time.perf_counter()
    last = None
    try:
        async with client.stream("POST", f"{args.url}/chat/completions", json=body) as answer:
            if answer.status_code != 200:
                tally.failed += 1
                await answer.aread()
                return
            async for line in answer.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tally.tokens += chunk["usage"]["completion_tokens"]
                choices = chunk.get("choices") or []
                if choices and (choices[0].get("delta") or {}).get("content"):
                    now = time.perf_counter()
                    if last is None:
                        tally.ttft.append(now - started)
                    else:
                        tally.itl.append(now - last)
                    last = now
    except httpx.HTTPError:
        tally.failed += 1


async def user(client: httpx.AsyncClient, args: argparse.Namespace, rng: random.Random, todo: list, tally: Tally):
    while todo:
        todo.pop()
        await one(client, args, prompt(rng, args.prompt_words, args.same_prompt), tally)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the OpenAI base URL, e.g. http://127.0.0.1:8080/serve/openai/v1")
    parser.add_argument("--model", default="chat")
    parser.add_argument("--users", type=int, default=1)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--prompt-words", type=int, default=96)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--same-prompt", action="store_true")
    parser.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    tally, todo = Tally(), list(range(args.requests))
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(user(client, args, random.Random(i), todo, tally) for i in range(args.users)))
        seconds = time.perf_counter() - started
    mean_itl = statistics.fmean(tally.itl) * 1000 if tally.itl else float("nan")
    print(
        f"{args.label or args.model} users={args.users} requests={args.requests} failed={tally.failed} "
        f"out_tok/s={tally.tokens / seconds:.1f} "
        f"ttft_ms p50={pct(tally.ttft, 0.5):.0f} p99={pct(tally.ttft, 0.99):.0f} "
        f"itl_ms p50={pct(tally.itl, 0.5):.1f} p99={pct(tally.itl, 0.99):.1f} mean_itl_ms={mean_itl:.1f}"
    )


if __name__ == "__main__":
    asyncio.run(main())

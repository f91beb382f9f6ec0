"""A small OpenAI streaming load client: N users each send chat requests back to back, streamed, and it reports
output tokens and requests per second, time to first token and inter-token latency (p50/p95/p99), and the
server's memory (RSS) while it runs.

    python bench/llm_client.py --url http://127.0.0.1:8080/serve/openai/v1 --model chat --users 4 --requests 40

Prompts: unless --same-prompt, each request's prompt differs from the first word on, so nothing can be reused
between requests, nor between runs (each user draws its words from its own generator, seeded anew each run unless
--seed): --prompt-words random words as the system message (104 words are 128 tokens in SmolLM2's chat template:
bench/llm_weights.py tokens), so that the template adds no default system prompt ahead of them, then "Continue this
list of words." as the user's. --prefix-words W instead gives every request the same system prompt of W words (a
fixed list) and the random words after it, in the user's message: the first request is sent alone, the rest --users
at a time, and the time to first token of the first (nothing cached) is reported beside the rest's (the shared
prefix cached, where the server caches one).

Answers: --max-tokens tokens, greedy (temperature 0), with the end of sequence ignored so every answer has the same
length, asked the way the server understands (--eos): `ignore_eos` (vLLM's extra, llama-server and ferry take it),
`generation_config` (`transformers serve`: {"eos_token_id": -1}, end of sequence off), or `none`. Tokens are
counted from the usage chunk, else one per streamed content chunk; an answer shorter than --max-tokens is counted
as short. Inter-token latency is the time between content chunks. Keep-alive is off: llama-server drops a reused
connection after a streamed answer now and then (../shared/peers/README.md).

--pid PID: the peak RSS of the process tree under PID (the server and its children: VmRSS from /proc summed,
sampled every --rss-interval seconds while the requests run). --rss-of PID prints that tree's RSS now (MiB), and
nothing else. --json FILE appends the results as one JSON line (bench/llm_table.py turns those into a table).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

WORDS = (  # noqa: SIM905 - one word a line would be 30 lines
    "river mountain quiet engine paper garden silver window morning signal harbor lantern orbit pencil meadow "
    "thunder violet canyon marble ember falcon glacier jungle kettle ladder mirror nickel oyster pepper quartz"
).split()
PROMPT_WORDS = 104  # ~128 tokens with SmolLM2's chat template (bench/llm_weights.py tokens)
INSTRUCTION = "Continue this list of words."


@dataclass
class Tally:
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    tokens: int = 0
    chunks: int = 0
    done: int = 0
    failed: int = 0
    short: int = 0
    finish: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def shared_system(words: int) -> str:
    """The system prompt every request of the shared-prefix case starts with: a fixed list of `words` words."""
    rng = random.Random(12345)
    return " ".join(rng.choice(WORDS) for _ in range(words))


def messages(rng: random.Random, words: int, system: str | None, same: bool = False) -> list[dict]:
    picked = (WORDS * (words // len(WORDS) + 1))[:words] if same else [rng.choice(WORDS) for _ in range(words)]
    text = " ".join(picked)
    if system is None:  # the words first: SmolLM2's template puts its default system prompt only where none is given
        return [{"role": "system", "content": text}, {"role": "user", "content": INSTRUCTION}]
    return [{"role": "system", "content": system}, {"role": "user", "content": f"{INSTRUCTION} {text}"}]


def body_of(args: argparse.Namespace, chat: list[dict]) -> dict:
    body = {
        "model": args.model,
        "messages": chat,
        "max_tokens": args.max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if args.eos == "ignore_eos":
        body["ignore_eos"] = True
    elif args.eos == "generation_config":
        body["generation_config"] = json.dumps({"eos_token_id": -1})
    return body


async def one(client: httpx.AsyncClient, args: argparse.Namespace, chat: list[dict], tally: Tally) -> None:
    started = time.perf_counter()
    last = None
    usage = chunks = 0
    finish = "none"
    try:
        async with client.stream("POST", f"{args.url}/chat/completions", json=body_of(args, chat)) as answer:
            if answer.status_code != 200:
                tally.failed += 1
                text = (await answer.aread()).decode(errors="replace")
                tally.errors.append(f"HTTP {answer.status_code}: {text[:300]}")
                return
            async for line in answer.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    usage = chunk["usage"].get("completion_tokens") or 0
                choices = chunk.get("choices") or []
                if choices and choices[0].get("finish_reason"):
                    finish = choices[0]["finish_reason"]
                if choices and (choices[0].get("delta") or {}).get("content"):
                    now = time.perf_counter()
                    if last is None:
                        tally.ttft.append(now - started)
                    else:
                        tally.itl.append(now - last)
                    last = now
                    chunks += 1
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        tally.failed += 1
        tally.errors.append(f"{type(exc).__name__}: {exc}")
        return
    made = usage or chunks
    tally.tokens += made
    tally.chunks += chunks
    tally.done += 1
    tally.short += made < args.max_tokens
    tally.finish[finish] = tally.finish.get(finish, 0) + 1


async def user(client: httpx.AsyncClient, args: argparse.Namespace, rng: random.Random, todo: list, tally: Tally):
    while todo:
        todo.pop()
        await one(client, args, messages(rng, args.prompt_words, args.system, args.same_prompt), tally)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


# -- the server's memory --------------------------------------------------------------------------------------------


def tree_pids(root: int) -> list[int]:
    """`root` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name, in brackets, may hold spaces
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mib(root: int) -> float:
    return sum(rss_kib(pid) for pid in tree_pids(root)) / 1024


class RssPeak:
    """The highest RSS of a process tree, sampled in a thread until stopped (the tree re-read every 20 samples)."""

    def __init__(self, root: int | None, interval: float) -> None:
        self.root, self.interval, self.peak = root, interval, 0.0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssPeak:
        if self.root:
            self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopped.set()
        if self.root:
            self.thread.join()

    def _run(self) -> None:
        pids: list[int] = []
        samples = 0
        while True:
            if samples % 20 == 0:
                pids = tree_pids(self.root)
            self.peak = max(self.peak, sum(rss_kib(pid) for pid in pids) / 1024)
            samples += 1
            if self.stopped.wait(self.interval):
                return


# -- a run ----------------------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict:
    tally, first = Tally(), Tally()
    limits = httpx.Limits(max_keepalive_connections=0)
    timeout = httpx.Timeout(args.timeout, connect=10)
    count = args.requests
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        if args.system is not None:  # the shared-prefix case: the first request alone, nothing cached yet
            rng = random.Random(f"{args.seed}-first")
            await one(client, args, messages(rng, args.prompt_words, args.system), first)
            count -= 1
        todo = list(range(count))
        started = time.perf_counter()
        rngs = [random.Random(f"{args.seed}-{i}") for i in range(args.users)]
        await asyncio.gather(*(user(client, args, rng, todo, tally) for rng in rngs))
        seconds = time.perf_counter() - started
    result = {
        "server": args.label or args.model,
        "case": "prefix" if args.system is not None else "random",
        "users": args.users,
        "requests": args.requests,
        "failed": tally.failed + first.failed,
        "short": tally.short + first.short,
        "tokens": tally.tokens,
        "seconds": round(seconds, 3),
        "out_tok_s": tally.tokens / seconds,
        "req_s": tally.done / seconds,
        "ttft_p50": pct(tally.ttft, 0.5),
        "ttft_p95": pct(tally.ttft, 0.95),
        "ttft_p99": pct(tally.ttft, 0.99),
        "itl_p50": pct(tally.itl, 0.5),
        "itl_p95": pct(tally.itl, 0.95),
        "itl_p99": pct(tally.itl, 0.99),
        "tokens_per_chunk": tally.tokens / tally.chunks if tally.chunks else float("nan"),
        "finish": {k: first.finish.get(k, 0) + tally.finish.get(k, 0) for k in {*first.finish, *tally.finish}},
        "errors": (first.errors + tally.errors)[:3],
    }
    if args.system is not None:
        result["first_ttft"] = pct(first.ttft, 0.5)
    return result


def answer(args: argparse.Namespace) -> str:
    """One greedy answer to --answer, not streamed, ending where the model ends it (or at --max-tokens)."""
    body = body_of(args, [{"role": "user", "content": args.answer}])
    body.update(stream=False)
    del body["stream_options"]
    reply = httpx.post(f"{args.url}/chat/completions", json=body, timeout=args.timeout)
    reply.raise_for_status()
    choice = reply.json()["choices"][0]
    return f"{choice['message']['content']!r} ({choice.get('finish_reason')})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="the OpenAI base URL, e.g. http://127.0.0.1:8080/serve/openai/v1")
    parser.add_argument("--model", default="chat")
    parser.add_argument("--users", type=int, default=1)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--prompt-words", type=int, default=PROMPT_WORDS)
    parser.add_argument("--prefix-words", type=int, default=0, help="the shared-prefix case: a system prompt this long")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--same-prompt", action="store_true")
    parser.add_argument("--seed", help="the prompts' random seed (default: a new one each run)")
    parser.add_argument("--eos", choices=("ignore_eos", "generation_config", "none"), default="ignore_eos")
    parser.add_argument("--no-ignore-eos", dest="eos", action="store_const", const="none")
    parser.add_argument("--timeout", type=float, default=300, help="seconds a request may take")
    parser.add_argument("--label", default="")
    parser.add_argument("--pid", type=int, help="the server's process: its tree's peak RSS while the requests run")
    parser.add_argument("--rss-interval", type=float, default=0.2)
    parser.add_argument("--rss-load", type=float, help="the server's RSS after loading (MiB), for the JSON line")
    parser.add_argument("--rss-of", type=int, metavar="PID", help="print the RSS of PID's tree (MiB) and exit")
    parser.add_argument("--json", type=Path, help="append the results to this file as one JSON line")
    parser.add_argument("--answer", metavar="QUESTION", help="print one greedy answer to QUESTION and exit")
    args = parser.parse_args()
    if args.rss_of:
        print(f"{tree_rss_mib(args.rss_of):.0f}")
        return
    if not args.url:
        parser.error("--url is required")
    if args.answer:
        print(answer(args))
        return
    if args.prefix_words and args.requests < 2:
        parser.error("the shared-prefix case needs at least 2 requests")
    args.system = shared_system(args.prefix_words) if args.prefix_words else None
    args.seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(64)
    with RssPeak(args.pid, args.rss_interval) as rss:
        result = asyncio.run(run(args))
    result["rss_load_mib"] = args.rss_load
    result["rss_peak_mib"] = rss.peak if args.pid else None
    first = f"ttft_first_ms={result['first_ttft']:.0f} " if "first_ttft" in result else ""
    print(
        f"{result['server']} {result['case']} users={args.users} requests={args.requests} failed={result['failed']} "
        f"short={result['short']} out_tok/s={result['out_tok_s']:.1f} req/s={result['req_s']:.2f} {first}"
        f"ttft_ms p50={result['ttft_p50']:.0f} p95={result['ttft_p95']:.0f} p99={result['ttft_p99']:.0f} "
        f"itl_ms p50={result['itl_p50']:.1f} p95={result['itl_p95']:.1f} p99={result['itl_p99']:.1f} "
        f"tok/chunk={result['tokens_per_chunk']:.2f} finish={','.join(f'{k}:{v}' for k, v in result['finish'].items())}"
        + (f" rss_peak_mib={rss.peak:.0f}" if args.pid else "")
    )
    for error in result["errors"]:
        print(f"  error: {error}", file=sys.stderr)
    if args.json:
        with args.json.open("a") as out:
            out.write(json.dumps(result) + "\n")
    if result["failed"] == args.requests:
        sys.exit(2)


if __name__ == "__main__":
    main()

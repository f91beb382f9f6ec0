"""Ask an LLM endpoint through the official openai client, streamed: prints the answer as it comes, then its time
to first token and tokens per second.

    python examples/llm/chat.py [--url http://127.0.0.1:8080] [--model chat] [question...]
"""

import argparse
import time

from openai import OpenAI


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--model", default="chat", help="the endpoint")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("question", nargs="*", default=["What is the capital of France?"])
    args = parser.parse_args()
    client = OpenAI(base_url=f"{args.url}/serve/openai/v1", api_key="-")
    started = time.perf_counter()
    first = None
    usage = None
    stream = client.chat.completions.create(
        model=args.model,
        messages=[{"role": "user", "content": " ".join(args.question)}],
        max_tokens=args.max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            print(chunk.choices[0].delta.content, end="", flush=True)
    ended = time.perf_counter()
    print()
    if first is not None and usage is not None:
        rate = (usage.completion_tokens - 1) / (ended - first) if ended > first else float("nan")
        print(f"time to first token {first - started:.3f} s, {usage.completion_tokens} tokens, {rate:.1f} tokens/s")


if __name__ == "__main__":
    main()

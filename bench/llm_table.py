"""bench/llm_client.py's JSON lines (one per server and case) as markdown tables, for bench/llm.sh.

    python bench/llm_table.py RESULTS.jsonl [NOTES.txt]

One table for the prompts that differ from the first token on, one for the shared-prefix case, then NOTES (one line
each: each server's greedy answer to one question, servers that did not start or answer).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def num(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def pair(a: float | None, b: float | None, digits: int = 0) -> str:
    return f"{num(a, digits)} / {num(b, digits)}"


def bad(row: dict) -> str:
    """Failed / short, and how the answers ended where any ended otherwise than at max_tokens ("length")."""
    ends = {k: v for k, v in row.get("finish", {}).items() if k != "length"}
    how = f" ({', '.join(f'{k} {v}' for k, v in ends.items())})" if ends else ""
    return f"{row['failed']} / {row['short']}{how}"


def main() -> None:
    rows = [json.loads(line) for line in Path(sys.argv[1]).read_text().splitlines() if line.strip()]
    notes = Path(sys.argv[2]).read_text().splitlines() if len(sys.argv) > 2 and Path(sys.argv[2]).is_file() else []
    random_rows = [row for row in rows if row["case"] == "random"]
    prefix_rows = [row for row in rows if row["case"] == "prefix"]
    if random_rows:
        print(
            "| server | users | requests | failed / short | TTFT p50 / p95 ms | ITL p50 / p95 ms | output tok/s "
            "| req/s | RSS loaded / peak MiB |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for row in random_rows:
            print(
                f"| {row['server']} | {row['users']} | {row['requests']} | {bad(row)} "
                f"| {pair(row['ttft_p50'], row['ttft_p95'])} | {pair(row['itl_p50'], row['itl_p95'], 1)} "
                f"| {num(row['out_tok_s'], 1)} | {num(row['req_s'], 2)} "
                f"| {pair(row['rss_load_mib'], row['rss_peak_mib'])} |"
            )
    if prefix_rows:
        print()
        print(
            "Shared prefix: every request has the same ~1000-token system prompt, then its own words; the first is "
            "sent alone (nothing cached), the rest `users` at a time.\n"
        )
        print(
            "| server | users | requests | failed / short | TTFT first ms | TTFT rest p50 / p95 ms | ITL p50 / p95 ms "
            "| output tok/s | RSS loaded / peak MiB |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for row in prefix_rows:
            print(
                f"| {row['server']} | {row['users']} | {row['requests']} | {bad(row)} | {num(row.get('first_ttft'))} "
                f"| {pair(row['ttft_p50'], row['ttft_p95'])} | {pair(row['itl_p50'], row['itl_p95'], 1)} "
                f"| {num(row['out_tok_s'], 1)} | {pair(row['rss_load_mib'], row['rss_peak_mib'])} |"
            )
    if notes:
        print()
        for note in notes:
            print(f"- {note}")


if __name__ == "__main__":
    main()

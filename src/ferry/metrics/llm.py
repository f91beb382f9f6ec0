"""The LLM endpoints' metrics, named as vLLM names them (``vllm:num_requests_running`` is
``ferry_llm_num_requests_running`` here), per endpoint and version.

The engine records through an ``LLMMeter`` (it never imports this module: the runtime hands the meter over,
``EndpointRuntime.attach``); histograms and counters are recorded on the event loop's thread as every ferry
record, the two gauges are read from the engine loop's counts when /metrics is scraped.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LABELS = ("endpoint", "version")
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0)
FINISH_REASONS = ("stop", "length", "abort")


class LLMFamilies:
    """The metric families of every LLM endpoint of one serving process."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.running = Gauge(
            "ferry_llm_num_requests_running", "Sequences in the engine loop's batch", LABELS, registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.waiting = Gauge(
            "ferry_llm_num_requests_waiting", "Sequences waiting for a slot (max_num_seqs)", LABELS, registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.ttft = Histogram(
            "ferry_llm_time_to_first_token_seconds", "Time from a sequence's submission to its first token", LABELS,
            buckets=TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.itl = Histogram(
            "ferry_llm_inter_token_latency_seconds", "Time between two tokens of one sequence", LABELS,
            buckets=ITL_BUCKETS, registry=r,
        )  # fmt: skip
        self.e2e = Histogram(
            "ferry_llm_e2e_request_latency_seconds", "Time from a sequence's submission to its last token", LABELS,
            buckets=E2E_BUCKETS, registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter("ferry_llm_prompt_tokens", "Prompt tokens prefilled", LABELS, registry=r)
        self.generation_tokens = Counter("ferry_llm_generation_tokens", "Tokens generated", LABELS, registry=r)
        self.kv_usage = Gauge(
            "ferry_llm_kv_cache_usage_perc", "Share of the KV budget's blocks running sequences hold (0 to 1)",
            LABELS, registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.prefix_queries = Counter(
            "ferry_llm_prefix_cache_queries", "Prompt tokens looked up in the prefix cache", LABELS, registry=r
        )
        self.prefix_hits = Counter(
            "ferry_llm_prefix_cache_hits", "Prompt tokens found in the prefix cache (not computed again)", LABELS,
            registry=r,
        )  # fmt: skip
        self.preemptions = Counter(
            "ferry_llm_num_preemptions", "Sequences preempted for KV blocks (recomputed later)", LABELS, registry=r
        )
        self.finished = Counter(
            "ferry_llm_request_success", "Sequences ended, by finish reason (stop, length, abort)",
            (*LABELS, "finished_reason"), registry=r,
        )  # fmt: skip

    def meter(self, name: str, version: str) -> LLMMeter:
        return LLMMeter(self, name, version)


class LLMMeter:
    """One LLM endpoint version's series; its finish reasons exist at 0 from the start."""

    def __init__(self, families: LLMFamilies, name: str, version: str) -> None:
        self.families = families
        self.running = families.running.labels(name, version)
        self.waiting = families.waiting.labels(name, version)
        self.ttft = families.ttft.labels(name, version)
        self.itl = families.itl.labels(name, version)
        self.e2e = families.e2e.labels(name, version)
        self.prompt_tokens = families.prompt_tokens.labels(name, version)
        self.generation_tokens = families.generation_tokens.labels(name, version)
        self.finished = {reason: families.finished.labels(name, version, reason) for reason in FINISH_REASONS}
        self.kv_usage = families.kv_usage.labels(name, version)
        self._counters = (
            families.prefix_queries.labels(name, version),
            families.prefix_hits.labels(name, version),
            families.preemptions.labels(name, version),
        )
        self._seen = [0, 0, 0]
        """The engine's totals each counter was last advanced to."""

    def sequence_ended(self, reason: str, prompt_tokens: int, generated: int, seconds: float) -> None:
        """One sequence's end: its reason, tokens and end-to-end time."""
        counter = self.finished.get(reason)
        if counter is not None:
            counter.inc()
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(generated)
        self.e2e.observe(seconds)

    def gauges(self, running: int, waiting: int) -> None:
        self.running.set(running)
        self.waiting.set(waiting)

    def cache(self, usage: float, queries: int, hits: int, preemptions: int) -> None:
        """The KV cache's state: the share of blocks in use, and the engine's running totals of prefix-cache
        queries and hits (tokens) and preemptions (the counters advance by what changed since the last call)."""
        self.kv_usage.set(usage)
        for i, total in enumerate((queries, hits, preemptions)):
            if total > self._seen[i]:
                self._counters[i].inc(total - self._seen[i])
                self._seen[i] = total


def attach(engine: Any, meter: LLMMeter | None) -> None:
    """Give an LLM engine its meter (engines that take one have ``attach_meter``)."""
    attach_meter = getattr(engine, "attach_meter", None)
    if attach_meter is not None:
        attach_meter(meter)


def refresh(engine: Any) -> None:
    """Set an LLM engine's gauges from its engine loop before a scrape."""
    refresh_meter = getattr(engine, "refresh_meter", None)
    if refresh_meter is not None:
        refresh_meter()

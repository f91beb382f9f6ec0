"""How many serving processes `ferry serve` starts: a count given, or ``auto`` (the default).

``auto`` is one worker per usable core, at most ``AUTO_MAX``: one Python process is one core of HTTP, JSON and
pre/post code, so a second core serves a second process's requests (sklearn on 2 cores: 1.65x one worker,
bench/README.md). Each worker loads every model, so the cap bounds the memory a large machine spends on copies. A
service with an LLM endpoint (or an auto-update rule that deploys one) gets one worker: its engine batches every
user's decoding step on all the cores, and a second worker would load the model again beside it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # pydantic loads when a command runs, not for --help
    from ferry.control.spec import ServiceConfig

AUTO_MAX = 8
"""``auto`` starts at most this many workers, whatever the core count."""

Workers = int | Literal["auto"]


def workers_arg(text: str) -> Workers:
    """argparse's type for ``--workers``: a positive count or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    if text.strip().isdigit() and int(text) > 0:
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r}: give a count of processes (1, 2, ...) or auto")


def resolve_workers(given: Workers, config: Callable[[], ServiceConfig | None]) -> tuple[int, str]:
    """The worker count for ``given``, and why in words when ``auto`` chose it.

    ``config`` reads the service's current configuration (None when the store cannot be read yet); it is only
    called for ``auto``."""
    if given != "auto":
        return given, ""
    from ferry.settings import usable_cores

    current = config()
    if current is None:
        return 1, "auto: 1 until the store answers (its endpoints decide)"
    llm = sorted(generative_endpoints(current))
    if llm:
        return 1, f"auto: 1 for the LLM endpoint {llm[0]!r}, whose engine uses every core (--workers N to change)"
    cores = usable_cores()
    return min(cores, AUTO_MAX), f"auto: one per core, {cores} usable" + (
        f", at most {AUTO_MAX}" if cores > AUTO_MAX else ""
    )


def generative_endpoints(config: ServiceConfig) -> set[str]:
    """The endpoints (and auto-update rules) of ``config`` that run an LLM engine."""
    from ferry.control.engine_names import GENERATIVE

    named = {key for key, spec in config.endpoints.items() if spec.engine in GENERATIVE}
    return named | {name for name, rule in config.auto_update.items() if rule.template.engine in GENERATIVE}

"""How many serving processes `ferry serve` starts: a count given, or ``auto`` (the default).

``auto`` is one worker per usable core, at most ``AUTO_MAX``: one Python process is one core of HTTP, JSON and
pre/post code, so a second core serves a second process's requests (sklearn on 2 cores: 1.65x one worker,
bench/README.md). Each worker loads every model, so ``auto`` also keeps the copies within ``MEMORY_SHARE`` of the
memory available (the models' artifact sizes standing for what they take loaded), and the cap bounds what a large
machine spends on copies. A service with an LLM endpoint (or an auto-update rule that deploys one) gets one worker:
its engine batches every user's decoding step on all the cores, and a second worker would load the model again.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # pydantic loads when a command runs, not for --help
    from ferry.cli.context import Context
    from ferry.control.spec import ServiceConfig

AUTO_MAX = 8
"""``auto`` starts at most this many workers, whatever the core count."""
MEMORY_SHARE = 0.5
"""``auto``'s workers together keep their models within this share of the memory available at start."""

Workers = int | Literal["auto"]


@dataclass(frozen=True)
class Machine:
    """What ``auto`` weighs: the usable cores and the memory available now (None where unknown)."""

    cores: int
    memory: int | None


def workers_arg(text: str) -> Workers:
    """argparse's type for ``--workers``: a positive count or ``auto``."""
    from ferry.settings import parse_workers

    workers = parse_workers(text)
    if workers is None:
        raise argparse.ArgumentTypeError(f"{text!r}: give a count of processes (1, 2, ...) or auto")
    return workers


def workers_for(ctx: Context, flag: Workers | None) -> tuple[int, str]:
    """``ferry serve``'s worker count: ``--workers``, else $CLEARML_SERVING_NUM_PROCESS, else FERRY_WORKERS (``auto``
    by default), with ``auto`` resolved against the service's endpoints; and why, in words, when ``auto`` chose."""
    given = flag or _clearml_workers() or ctx.settings.workers
    return resolve_workers(given, lambda: _config(ctx), lambda config: _model_bytes(ctx, config))


def resolve_workers(
    given: Workers,
    config: Callable[[], ServiceConfig | None],
    model_bytes: Callable[[ServiceConfig], int],
    machine: Callable[[], Machine] | None = None,
) -> tuple[int, str]:
    """The worker count for ``given``, and why in words when ``auto`` chose it.

    ``config`` reads the service's current configuration (None when the store cannot be read yet) and
    ``model_bytes`` the size of the models it serves; both are only called for ``auto``."""
    if given != "auto":
        return given, ""
    current = config()
    if current is None:
        return 1, "auto: 1, as the store could not be read to see the endpoints (--workers N to choose)"
    llm = sorted(generative_endpoints(current))
    if llm:
        return 1, f"auto: 1 for the LLM endpoint {llm[0]!r}, whose engine uses every core (--workers N to change)"
    have = (machine or this_machine)()
    workers, why = min(have.cores, AUTO_MAX), f"auto: one per core, {have.cores} usable"
    if have.cores > AUTO_MAX:
        why += f", at most {AUTO_MAX}"
    size = model_bytes(current)
    if have.memory is not None and size > 0 and size * workers > have.memory * MEMORY_SHARE:
        workers = max(1, int(have.memory * MEMORY_SHARE // size))
        why += f"; {workers} as each loads the models ({_gib(size)}) and they keep to half of {_gib(have.memory)} free"
    return workers, why


def this_machine() -> Machine:
    from ferry.settings import memory_available, usable_cores

    return Machine(usable_cores(), memory_available())


def generative_endpoints(config: ServiceConfig) -> set[str]:
    """The endpoints (and auto-update rules) of ``config`` that run an LLM engine."""
    from ferry.control.engine_names import GENERATIVE

    named = {key for key, spec in config.endpoints.items() if spec.engine in GENERATIVE}
    return named | {name for name, rule in config.auto_update.items() if rule.template.engine in GENERATIVE}


def _gib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB"


def _clearml_workers() -> int | None:
    value = os.environ.get("CLEARML_SERVING_NUM_PROCESS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def _config(ctx: Context) -> ServiceConfig | None:
    """The service's current configuration; None while the store cannot be read (``ferry serve`` said so)."""
    from sqlalchemy.exc import DBAPIError

    try:
        return ctx.store.get_revision(ctx.service.id).config
    except DBAPIError:
        return None


def _model_bytes(ctx: Context, config: ServiceConfig) -> int:
    """The artifact sizes of the models ``config``'s endpoints serve (a model the registry lost counts 0)."""
    from ferry.errors import NotFound

    total = 0
    for model_id in {spec.model_id for spec in config.endpoints.values() if spec.model_id}:
        with contextlib.suppress(NotFound):
            total += ctx.registry.get(model_id).size
    return total

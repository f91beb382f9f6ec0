"""Engines that run a model, looked up by name so that heavy libraries load only when used."""

from ferry.engines.base import Engine, StatsFn
from ferry.engines.loading import ENGINES, load_engine

__all__ = ["ENGINES", "Engine", "StatsFn", "load_engine"]

"""Lazily opened parts (settings, store, registry, artifacts, service control) shared by the commands."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported on first use: `ferry --help` loads neither SQLAlchemy nor pydantic
    from ferry.control.service import ServiceControl
    from ferry.control.store import ServiceRecord, Store
    from ferry.registry.artifacts import ArtifactStore
    from ferry.registry.models import ModelRegistry
    from ferry.settings import Settings


class Context:
    """What a command needs, opened on first use so `--help` touches nothing."""

    def __init__(self, service_id: str | None = None) -> None:
        self.service_id = service_id

    @cached_property
    def settings(self) -> Settings:
        from ferry.settings import Settings

        return Settings()

    @cached_property
    def store(self) -> Store:
        from ferry.control.store import Store

        return Store.open(self.settings.store_url())

    @cached_property
    def artifacts(self) -> ArtifactStore:
        from ferry.registry.artifacts import ArtifactStore

        return ArtifactStore(self.settings.artifact_url(), self.settings.cache_path())

    @cached_property
    def registry(self) -> ModelRegistry:
        from ferry.registry.models import ModelRegistry

        return ModelRegistry(self.store.sql, self.artifacts)

    @cached_property
    def control(self) -> ServiceControl:
        from ferry.control.service import ServiceControl

        return ServiceControl(self.store, self.registry, self.artifacts)

    @cached_property
    def service(self) -> ServiceRecord:
        """The service named by --id or FERRY_SERVICE, or the only one there is."""
        return self.store.resolve_service(self.service_id or self.settings.service or None)

    def close(self) -> None:
        """Give back what the command opened: the store's connection pool (the registry shares its engine).

        A process's exit would close the connections anyway; a caller that runs many commands in one process
        (the test suite) would otherwise hold a pool per command, past PostgreSQL's connection limit.
        """
        store = self.__dict__.pop("store", None)  # only if it was opened: closing opens nothing
        if store is not None:
            store.sql.dispose()

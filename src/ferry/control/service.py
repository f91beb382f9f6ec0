"""The operations users call on a service; each validates its input and writes one new revision."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ferry.control.aux_config import validate_aux_config
from ferry.control.spec import (
    MODEL_FREE_ENGINES,
    EndpointSpec,
    ModelQuery,
    ServiceConfig,
    TensorSpec,
)
from ferry.control.store import Revision, Store
from ferry.errors import InvalidInput, NotFound
from ferry.registry.artifacts import ArtifactStore
from ferry.registry.models import ModelRegistry


@dataclass
class Outcome:
    """A committed revision plus what the user should be warned about."""

    revision: Revision
    warnings: list[str] = field(default_factory=list)


class ServiceControl:
    """Validated edits of a service's config, each stored as a new revision."""

    def __init__(self, store: Store, registry: ModelRegistry, artifacts: ArtifactStore) -> None:
        self.store = store
        self.registry = registry
        self.artifacts = artifacts

    def add_endpoint(
        self,
        service_id: str,
        *,
        engine: str,
        endpoint: str,
        version: str = "",
        model_id: str | None = None,
        query: ModelQuery | None = None,
        preprocess: Path | None = None,
        inputs: tuple[TensorSpec, ...] = (),
        outputs: tuple[TensorSpec, ...] = (),
        aux_config: dict[str, Any] | None = None,
        aux_config_text: str | None = None,
    ) -> Outcome:
        """Add (or replace) the endpoint ``endpoint[/version]`` serving one model."""
        self.store.get_service(service_id)
        aux = validate_aux_config(engine, aux_config or {}, aux_config_text)
        model_id = self._pick_model(engine, model_id, query)
        spec = validated(
            EndpointSpec,
            name=endpoint,
            version=version,
            engine=engine,
            model_id=model_id,
            preprocess=self._upload_preprocess(preprocess),
            inputs=inputs,
            outputs=outputs,
            aux_config=aux,
            aux_config_text=aux_config_text,
        )
        warnings: list[str] = []

        def change(config: ServiceConfig) -> tuple[ServiceConfig, str]:
            warnings.clear()
            if spec.engine == "triton" and not config.settings.triton_grpc_server:
                raise InvalidInput(
                    "--engine triton needs a Triton server: set it with `ferry config --triton-grpc-server HOST:PORT`, "
                    "or serve the model in-process with --engine onnxruntime, torchscript, sklearn, xgboost or lightgbm"
                )
            verb = "added"
            if spec.key in config.endpoints:
                warnings.append(f"endpoint {spec.key!r} already existed: replaced it")
                verb = "replaced"
            endpoints = {**config.endpoints, spec.key: spec}
            model = f"model {spec.model_id}" if spec.model_id else "no model"
            return _with(config, endpoints=endpoints), f"endpoint {spec.key} {verb} ({spec.engine}, {model})"

        return Outcome(self.store.commit(service_id, change), warnings)

    def remove_endpoint(self, service_id: str, endpoint: str) -> Outcome:
        """Remove an endpoint version, a canary or an auto-update rule named ``endpoint``."""
        key = endpoint.strip().strip("/")

        def change(config: ServiceConfig) -> tuple[ServiceConfig, str]:
            if key in config.endpoints:
                endpoints = {k: v for k, v in config.endpoints.items() if k != key}
                return _with(config, endpoints=endpoints), f"endpoint {key} removed"
            if key in config.canaries:
                canaries = {k: v for k, v in config.canaries.items() if k != key}
                return _with(config, canaries=canaries), f"canary {key} removed"
            if key in config.auto_update:
                rules = {k: v for k, v in config.auto_update.items() if k != key}
                return _with(config, auto_update=rules), f"auto-update rule {key} removed"
            raise NotFound(f"no endpoint, canary or auto-update rule {key!r}; there are: {_names(config)}")

        return Outcome(self.store.commit(service_id, change))

    def configure(self, service_id: str, **settings: Any) -> Outcome:
        """Change service-wide settings (base serving URL, Triton server, metric sampling)."""
        given = {k: v for k, v in settings.items() if v is not None}
        if not given:
            raise InvalidInput("nothing to change: give at least one setting")

        def change(config: ServiceConfig) -> tuple[ServiceConfig, str]:
            new = validated(type(config.settings), **{**config.settings.model_dump(), **given})
            summary = "config: " + ", ".join(f"{k}={v}" for k, v in given.items())
            return _with(config, settings=new), summary

        return Outcome(self.store.commit(service_id, change))

    def rollback(self, service_id: str, to: int) -> Outcome:
        """Re-activate revision ``to`` by writing its config as a new revision."""
        old = self.store.get_revision(service_id, to)
        return Outcome(self.store.commit(service_id, lambda _: (old.config, f"rollback to revision {to}")))

    def _pick_model(self, engine: str, model_id: str | None, query: ModelQuery | None) -> str | None:
        if model_id:
            return self.registry.get(model_id).id
        if query and (query.name or query.project):
            found = self.registry.newest(query.name, query.project, list(query.tags), query.published)
            return found.id
        if engine in MODEL_FREE_ENGINES:
            return None
        raise InvalidInput(
            f"engine {engine!r} needs a model: give --model-id, or --name and --project to pick the newest"
        )

    def _upload_preprocess(self, path: Path | None):
        if path is None:
            return None
        path = Path(path)
        if not path.exists():
            raise NotFound(f"preprocess file {str(path)!r} does not exist")
        if path.is_dir() and not (path / "preprocess.py").is_file():
            raise InvalidInput(f"preprocess folder {str(path)!r} has no preprocess.py")
        if path.is_file() and path.suffix != ".py":
            raise InvalidInput(f"preprocess file {str(path)!r} is not a .py file")
        return self.artifacts.put(path)


def validated(model: type, **fields: Any) -> Any:
    """Build a pydantic spec, turning validation errors into one InvalidInput line."""
    try:
        return model(**fields)
    except ValidationError as exc:
        raise InvalidInput(describe(exc)) from None


def describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def _with(config: ServiceConfig, **changes: Any) -> ServiceConfig:
    return config.model_copy(update=changes)


def _names(config: ServiceConfig) -> str:
    names = [*config.endpoints, *config.canaries, *config.auto_update]
    return ", ".join(sorted(names)) or "(none)"

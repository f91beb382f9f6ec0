"""The operations users call on a service; each validates its input and writes one new revision."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from pydantic import ValidationError
from typing_extensions import Unpack

from ferry.control import canary, metrics_config
from ferry.control.autoupdate import commit_reconcile
from ferry.control.aux_config import validate_aux_config
from ferry.control.spec import (
    MODEL_FREE_ENGINES,
    AutoUpdateSpec,
    CanarySpec,
    EndpointSpec,
    MetricSpec,
    ModelQuery,
    ServiceConfig,
    ShadowSpec,
    TensorSpec,
)
from ferry.control.store import Revision, Store
from ferry.errors import InvalidInput, NotFound
from ferry.registry.artifacts import ArtifactRef, ArtifactStore
from ferry.registry.models import ModelRegistry


class EndpointSettings(TypedDict, total=False):
    """What `model add` and `model auto-update` share: the preprocess code, tensor specs and engine settings."""

    preprocess: Path | None
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    aux_config: dict[str, Any] | None
    aux_config_text: str | None


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
        **settings: Unpack[EndpointSettings],
    ) -> Outcome:
        """Add (or replace) the endpoint ``endpoint[/version]`` serving one model."""
        self.store.get_service(service_id)
        model_id = self._pick_model(engine, model_id, query)
        fields = self._endpoint_fields(engine, settings)
        spec = validated(EndpointSpec, name=endpoint, version=version, engine=engine, model_id=model_id, **fields)
        aux = spec.aux_config
        warnings: list[str] = []

        def change(config: ServiceConfig) -> tuple[ServiceConfig, str]:
            warnings.clear()
            if spec.engine == "triton" and not (config.settings.triton_grpc_server or aux.get("triton_grpc_server")):
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

    def add_auto_update(
        self,
        service_id: str,
        *,
        engine: str,
        endpoint: str,
        query: ModelQuery,
        max_versions: int = 1,
        **settings: Unpack[EndpointSettings],
    ) -> Outcome:
        """Add (or replace) a rule serving the newest ``max_versions`` models matching ``query`` at ``endpoint/N``."""
        self.store.get_service(service_id)
        if not (query.name or query.project or query.tags):
            raise InvalidInput("an auto-update rule needs --name, --project or --tags to pick its models")
        fields = self._endpoint_fields(engine, settings)
        template = validated(
            EndpointSpec, name=endpoint, engine=engine, auto_update=endpoint.strip().strip("/"), **fields
        )
        rule = validated(
            AutoUpdateSpec, endpoint=template.name, query=query, template=template, max_versions=max_versions
        )
        warnings: list[str] = []

        def change(config: ServiceConfig) -> tuple[ServiceConfig, str]:
            if engine == "triton" and not config.settings.triton_grpc_server:
                raise InvalidInput(
                    "--engine triton needs a Triton server: set it with `ferry config --triton-grpc-server`"
                )
            warnings[:] = [f"auto-update rule {rule.endpoint!r} already existed: replaced it"] * (
                rule.endpoint in config.auto_update
            )
            old = config.auto_update.get(rule.endpoint)
            last = {"last_version": old.last_version} if old else {}  # a replaced rule never reuses a number
            rules = {**config.auto_update, rule.endpoint: rule.model_copy(update=last)}
            return _with(config, auto_update=rules), f"auto-update rule {rule.endpoint} set ({engine}, {_query(query)})"

        revision = commit_reconcile(self.store, self.registry, service_id, change)
        return Outcome(revision or self.store.get_revision(service_id), warnings)

    def add_canary(
        self,
        service_id: str,
        *,
        endpoint: str,
        weights: tuple[float, ...],
        input_endpoints: tuple[str, ...] = (),
        input_endpoint_prefix: str | None = None,
    ) -> Outcome:
        """Add (or replace) the canary ``endpoint``: requests split by ``weights`` over fixed endpoints, or
        over the newest versions of the endpoint ``input_endpoint_prefix`` names (newest first)."""
        self.store.get_service(service_id)
        try:
            targets = tuple(canary.target_key(t) for t in input_endpoints)
            prefix = canary.prefix_name(input_endpoint_prefix)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        spec = validated(
            CanarySpec, endpoint=endpoint, weights=weights, input_endpoints=targets, input_endpoint_prefix=prefix
        )
        warnings: list[str] = []

        def change(config: ServiceConfig) -> tuple[ServiceConfig, str]:
            warnings[:] = canary.warnings(spec, config)
            verb = "replaced" if spec.endpoint in config.canaries else "added"
            canaries = {**config.canaries, spec.endpoint: spec}
            return _with(config, canaries=canaries), f"canary {spec.endpoint} {verb}: {canary.summary(spec)}"

        return Outcome(self.store.commit(service_id, change), warnings)

    def add_shadow(self, service_id: str, *, endpoint: str, target: str, fraction: float = 1.0) -> Outcome:
        """Copy ``fraction`` of ``endpoint``'s requests to ``target`` after each live answer (replaces its shadow)."""
        self.store.get_service(service_id)
        spec = validated(ShadowSpec, endpoint=endpoint, target=target, fraction=fraction)
        warnings: list[str] = []

        def change(config: ServiceConfig) -> tuple[ServiceConfig, str]:
            _check_shadow(config, spec)
            warnings[:] = [f"endpoint {spec.endpoint!r} had a shadow: replaced it"] * (spec.endpoint in config.shadows)
            shadows = {**config.shadows, spec.endpoint: spec}
            summary = f"shadow of {spec.endpoint} set: {spec.fraction:g} of its requests copied to {spec.target}"
            return _with(config, shadows=shadows), summary

        return Outcome(self.store.commit(service_id, change), warnings)

    def set_metrics(self, service_id: str, spec: MetricSpec) -> Outcome:
        """Add ``spec``'s variables to its endpoint's metric config (same names replaced); set its log_freq if given."""
        self.store.get_service(service_id)
        spec = spec.model_copy(update={"endpoint": metrics_config.metric_endpoint(spec.endpoint)})
        warnings: list[str] = []

        def change(config: ServiceConfig) -> tuple[ServiceConfig, str]:
            merged, warnings[:] = metrics_config.merge(config.metrics.get(spec.endpoint), spec)
            if not metrics_config.endpoint_exists(config, spec.endpoint):
                warnings.append(f"no endpoint {spec.endpoint!r} yet: its metrics apply once it is added")
            metrics = {**config.metrics, spec.endpoint: merged}
            metrics_config.check_shared_names(metrics)
            return _with(config, metrics=metrics), metrics_config.summary(merged)

        return Outcome(self.store.commit(service_id, change), warnings)

    def remove_metrics(self, service_id: str, endpoint: str, variable: str | None = None) -> Outcome:
        """Remove ``endpoint``'s whole metric config, or only its ``variable``."""

        def change(config: ServiceConfig) -> tuple[ServiceConfig, str]:
            metrics, line = metrics_config.without(config, endpoint, variable)
            return _with(config, metrics=metrics), line

        return Outcome(self.store.commit(service_id, change))

    def remove_endpoint(self, service_id: str, endpoint: str) -> Outcome:
        """Remove the shadow, canary, endpoint version or auto-update rule named ``endpoint`` (first found)."""
        key = endpoint.strip().strip("/")

        def change(config: ServiceConfig) -> tuple[ServiceConfig, str]:
            if key in config.shadows:  # before all: a shadow bears its endpoint's name; a second remove takes that
                shadows = {k: v for k, v in config.shadows.items() if k != key}
                return _with(config, shadows=shadows), f"shadow of {key} removed"
            if key in config.canaries:  # first: a canary wins over an endpoint of its name, here as in routing
                canaries = {k: v for k, v in config.canaries.items() if k != key}
                return _with(config, canaries=canaries), f"canary {key} removed"
            if key in config.endpoints:
                endpoints = {k: v for k, v in config.endpoints.items() if k != key}
                return _with(config, endpoints=endpoints), f"endpoint {key} removed"
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

    def _endpoint_fields(self, engine: str, settings: EndpointSettings) -> dict[str, Any]:
        """An endpoint's fields from what `model add` and `model auto-update` share: aux config checked for the
        engine, the preprocess code uploaded."""
        aux_text = settings.get("aux_config_text")
        return {
            "preprocess": self._upload_preprocess(settings.get("preprocess")),
            "inputs": settings.get("inputs", ()),
            "outputs": settings.get("outputs", ()),
            "aux_config": validate_aux_config(engine, settings.get("aux_config") or {}, aux_text),
            "aux_config_text": aux_text,
        }

    def _upload_preprocess(self, path: Path | None) -> ArtifactRef | None:
        if path is None:
            return None
        path = Path(path)
        if not path.exists():
            raise NotFound(f"preprocess file {str(path)!r} does not exist")
        if path.is_dir() and not (path / "preprocess.py").is_file():
            raise InvalidInput(f"preprocess folder {str(path)!r} has no preprocess.py")
        if path.is_file() and path.suffix != ".py":
            raise InvalidInput(f"preprocess file {str(path)!r} is not a .py file")
        _compiles(path / "preprocess.py" if path.is_dir() else path)
        return self.artifacts.put(path)


def _compiles(path: Path) -> None:
    """Refuse code that cannot even be parsed now, not when a server fails to load it (nothing is run here)."""
    try:
        compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
    except SyntaxError as exc:
        where = f"{str(path)!r} line {exc.lineno}" if exc.lineno else repr(str(path))
        raise InvalidInput(f"preprocess file {where}: {type(exc).__name__}: {exc.msg}; fix it and run again") from None
    except ValueError as exc:  # null bytes: not Python source
        raise InvalidInput(f"preprocess file {str(path)!r}: {exc}") from None


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


def _query(query: ModelQuery) -> str:
    return ", ".join(f"{k}={v}" for k, v in query.model_dump(exclude_defaults=True).items())


def _names(config: ServiceConfig) -> str:
    names = [*config.endpoints, *config.canaries, *config.auto_update]
    return ", ".join(sorted(names)) or "(none)"


def _check_shadow(config: ServiceConfig, spec: ShadowSpec) -> None:
    """Both ends must exist: the target is an endpoint; the shadowed one may also be a canary or a rule."""
    served = {*config.endpoints, *(e.name for e in config.endpoints.values())}
    for what, name, known in (
        ("endpoint to shadow", spec.endpoint, served | {*config.canaries, *config.auto_update}),
        ("shadow target", spec.target, served),
    ):
        if name not in known:
            listed = ", ".join(sorted(known)) or "(none)"
            raise NotFound(f"no {what} {name!r} on this service: add it first (`ferry model add`); there are: {listed}")

"""Reads a YAML document into a validated ServiceConfig, naming the place in the file of every problem."""

from __future__ import annotations

import hashlib
import re
import tempfile
import typing
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ferry.control import canary
from ferry.control.aux_config import validate_aux_config
from ferry.control.metrics_config import check_shared_names
from ferry.control.service import ServiceControl, _check_shadow
from ferry.control.spec import CanarySpec, EndpointSpec, ServiceConfig
from ferry.errors import FerryError, InvalidInput
from ferry.registry.artifacts import ArtifactRef, url_to_fs
from ferry.registry.packing import pack_folder

SECTIONS = tuple(ServiceConfig.model_fields)
"""The document's top-level keys: the fields of ServiceConfig, in order."""
PENDING = "pending:"
"""URL prefix of a preprocess artifact that apply has still to upload."""
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def map_refs(data: Any, convert: Any) -> Any:
    """``data`` with every stored artifact reference (a dict with url and sha256) replaced by ``convert(ref)``."""
    if isinstance(data, dict):
        if is_ref(data):
            return convert(data)
        return {k: map_refs(v, convert) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [map_refs(v, convert) for v in data]
    return data


def is_ref(data: Any) -> bool:
    return isinstance(data, dict) and {"url", "sha256", "size", "filename"} <= data.keys()


class Places:
    """Names a place in the document: its dotted path, and its line when the YAML has one."""

    def __init__(self, source: str, root: yaml.Node | None) -> None:
        self.source = source
        self.root = root

    def name(self, path: tuple[Any, ...]) -> str:
        dotted = ".".join(str(p) for p in path) or "the document"
        line = self._line(path)
        return f"{self.source} line {line}, {dotted}" if line else f"{self.source}, {dotted}"

    def _line(self, path: tuple[Any, ...]) -> int | None:
        node, line = self.root, None
        for step in path:
            found = _child(node, step)
            if found is None:
                break
            line, node = found[0].start_mark.line + 1, found[1]
        return line


def _child(node: yaml.Node | None, step: Any) -> tuple[yaml.Node, yaml.Node] | None:
    """The (key or item, value) nodes at ``step`` under ``node``: the key's line is where a user looks."""
    if isinstance(node, yaml.MappingNode):
        return next(((k, v) for k, v in node.value if k.value == str(step)), None)
    if isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
        return node.value[step], node.value[step]
    return None


def parse_yaml(text: str, source: str) -> tuple[Any, Places]:
    """The document in ``text`` and the means to name places in it; InvalidInput when it is not YAML."""
    try:
        return yaml.safe_load(text), Places(source, yaml.compose(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{source}: not valid YAML: {exc}") from None


@dataclass
class Reader:
    """Turns a parsed document into a validated ServiceConfig, collecting every problem with its place."""

    control: ServiceControl
    places: Places
    base_dir: Path
    head: ServiceConfig
    """The service's config now: entries equal to its own are not checked again against the rest."""
    known: list[ArtifactRef]
    """Preprocess artifacts the service has used, oldest first: an exported path (their URL) names one."""
    errors: list[str] = field(default_factory=list)
    uploads: dict[str, Path] = field(default_factory=dict)
    """Local preprocess files and folders to upload, by the pending URL that stands for them."""

    def read(self, doc: Any) -> ServiceConfig:
        """The config ``doc`` describes; InvalidInput listing every problem (with its place) when it is not valid."""
        config = self._config(doc)
        if config is not None:
            self._check_triton(config)
            self._check_shadows(config)
            self._check_metrics(config)
        if self.errors:
            listing = "\n  ".join(self.errors)
            raise InvalidInput(f"{self.places.source} is not valid, nothing was changed:\n  {listing}")
        assert config is not None
        return config

    def fail(self, path: tuple[Any, ...], message: str) -> None:
        self.errors.append(f"{self.places.name(path)}: {message}")

    def _config(self, doc: Any) -> ServiceConfig | None:
        if not isinstance(doc, dict):
            self.fail((), f"expected a mapping with the keys {', '.join(SECTIONS)}, got {_kind(doc)}")
            return None
        for key in sorted(map(str, doc.keys() - set(SECTIONS))):
            self.fail((key,), f"unknown key {key!r}: the valid top-level keys are {', '.join(SECTIONS)}")
        fields = {}
        for section in SECTIONS:
            if doc.get(section) is not None:
                fields[section] = self._section(section, doc[section])
        return self._validate(ServiceConfig, fields, ()) if not self.errors else None

    def _section(self, section: str, value: Any) -> Any:
        model = _entry_type(section)
        if model is None:
            return self._validate(ServiceConfig.model_fields[section].annotation, value, (section,))
        if not isinstance(value, dict):
            self.fail((section,), f"expected a mapping of names to entries, got {_kind(value)}")
            return {}
        entries = {}
        for key, entry in value.items():
            path = (section, key)
            if not isinstance(entry, dict):
                self.fail(path, f"expected a mapping of settings, got {_kind(entry)}")
                continue
            spec = self._validate(model, self._prepare(model, str(key), entry, path), path)
            if spec is not None:
                spec = self._checked(spec, path)
                entries[_key_of(spec, str(key))] = spec
        return entries

    def _prepare(
        self, model: type[BaseModel], key: str, entry: dict[str, Any], path: tuple[Any, ...]
    ) -> dict[str, Any]:
        entry = dict(entry)
        if model is EndpointSpec:
            name, _, version = key.strip("/").partition("/")
            entry.setdefault("name", name)
            entry.setdefault("version", version)
            self._pick_model(entry, path)
        elif "endpoint" in model.model_fields:
            entry.setdefault("endpoint", key)
        if model is CanarySpec:
            self._canary_targets(entry, path)
        resolved: dict[str, Any] = self._resolve_preprocess(entry, path)  # a dict in gives a dict out
        return resolved

    def _canary_targets(self, entry: dict[str, Any], path: tuple[Any, ...]) -> None:
        """Targets and prefix spelled as `model canary` stores them (``/a/2/`` -> ``a/2``, ``a/`` -> ``a``)."""
        try:
            if isinstance(entry.get("input_endpoints"), list):
                entry["input_endpoints"] = [canary.target_key(str(t)) for t in entry["input_endpoints"]]
            if isinstance(entry.get("input_endpoint_prefix"), str):
                entry["input_endpoint_prefix"] = canary.prefix_name(entry["input_endpoint_prefix"])
        except ValueError as exc:
            self.fail(path, str(exc))

    def _pick_model(self, entry: dict[str, Any], path: tuple[Any, ...]) -> None:
        query = entry.pop("model", None)
        if query is None:
            return
        if not isinstance(query, dict) or "model_id" in entry:
            self.fail(path + ("model",), "write model as {name, project, tags, published}, and no model_id with it")
            return
        try:
            tags = list(query.get("tags") or [])
            found = self.control.registry.newest(
                query.get("name"), query.get("project"), tags, bool(query.get("published"))
            )
            entry["model_id"] = found.id
        except FerryError as exc:
            self.fail(path + ("model",), str(exc))

    def _resolve_preprocess(self, data: Any, path: tuple[Any, ...]) -> Any:
        if not isinstance(data, dict):
            return data
        out = {}
        for key, value in data.items():
            if key == "preprocess" and value is not None:
                out[key] = self._preprocess(value, path + (key,))
            else:
                out[key] = self._resolve_preprocess(value, path + (key,))
        return out

    def _preprocess(self, value: Any, path: tuple[Any, ...]) -> ArtifactRef | None:
        spec = {"path": value} if isinstance(value, str) else value
        if not isinstance(spec, dict) or not isinstance(spec.get("path"), str) or spec.keys() - {"path", "sha256"}:
            self.fail(path, "write preprocess as {path: FILE_OR_FOLDER, sha256: ...} or as a plain path")
            return None
        where, sha256 = spec["path"], spec.get("sha256")
        stored = next((ref for ref in reversed(self.known) if ref.url == where), None)
        if stored is not None:
            if sha256 and sha256 != stored.sha256:
                self.fail(
                    path + ("sha256",), f"{sha256} is not the sha256 of {where} ({stored.sha256}): fix or drop it"
                )
            return stored
        if "://" in where:
            return self._stored_preprocess(where, sha256, path)
        return self._local_preprocess(Path(where).expanduser(), path)

    def _stored_preprocess(self, url: str, sha256: str | None, path: tuple[Any, ...]) -> ArtifactRef | None:
        """A preprocess artifact another service uploaded (``<root>/<sha[:2]>/<sha>/<name>``), e.g. an export's."""
        digest, name = PurePosixPath(url).parent.name, PurePosixPath(url).name
        if not SHA256.match(digest) or (sha256 and sha256 != digest):
            self.fail(path + ("path",), f"{url} is not a preprocess artifact ferry stored: give a local path instead")
            return None
        try:
            fs, remote = url_to_fs(url)
            info = fs.info(remote)
            if info["type"] != "file":
                raise ValueError("a folder, not a stored artifact")
            size = int(info["size"])
        except (OSError, ImportError, ValueError) as exc:
            self.fail(path + ("path",), f"cannot read {url} ({exc}): give a local path instead")
            return None
        # Preprocess files end in .py; folders are stored packed: .tar (and .tar.gz before ferry stopped compressing)
        is_dir = name.endswith((".tar", ".tar.gz"))
        filename = name.removesuffix(".gz").removesuffix(".tar") if is_dir else name
        return ArtifactRef(url=url, sha256=digest, size=size, filename=filename, is_dir=is_dir)

    def _local_preprocess(self, where: Path, path: tuple[Any, ...]) -> ArtifactRef | None:
        local = where if where.is_absolute() else self.base_dir / where
        problem = _preprocess_problem(local)
        if problem:
            self.fail(path + ("path",), problem)
            return None
        ref = local_ref(local.resolve(), self.control.artifacts.cache_dir)
        same = next((k for k in reversed(self.known) if (k.sha256, k.is_dir) == (ref.sha256, ref.is_dir)), None)
        if same is not None:  # already stored: nothing to upload
            return same
        pending = ref.model_copy(update={"url": PENDING + str(local.resolve())})
        self.uploads[pending.url] = local.resolve()
        return pending

    def _validate(self, model: Any, data: Any, path: tuple[Any, ...]) -> Any:
        try:
            if isinstance(model, type) and issubclass(model, BaseModel):
                return model.model_validate(data)
            return data
        except ValidationError as exc:
            for err in exc.errors():
                self.fail(path + tuple(err["loc"]), str(err["msg"]).removeprefix("Value error, "))
            return None

    def _checked(self, spec: BaseModel, path: tuple[Any, ...]) -> BaseModel:
        """``spec`` with the endpoints in it checked as `model add` checks them (aux config, model)."""
        if isinstance(spec, EndpointSpec):
            return self._checked_endpoint(spec, path)
        nested = {
            name: self._checked_endpoint(value, path + (name,))
            for name, value in spec
            if isinstance(value, EndpointSpec)
        }
        return spec.model_copy(update=nested) if nested else spec

    def _checked_endpoint(self, spec: EndpointSpec, path: tuple[Any, ...]) -> EndpointSpec:
        try:
            aux = validate_aux_config(spec.engine, spec.aux_config, spec.aux_config_text)
        except InvalidInput as exc:
            self.fail(path + ("aux_config",), str(exc).removeprefix("--aux-config: "))
            aux = spec.aux_config
        if spec.model_id:
            try:
                self.control.registry.get(spec.model_id)
            except FerryError as exc:
                self.fail(path + ("model_id",), str(exc))
        return spec.model_copy(update={"aux_config": aux})

    def _check_triton(self, config: ServiceConfig) -> None:
        triton = [
            key
            for key, spec in config.endpoints.items()
            if spec.engine == "triton" and not spec.aux_config.get("triton_grpc_server")
        ]
        if triton and not config.settings.triton_grpc_server:
            self.fail(
                ("settings", "triton_grpc_server"),
                f"endpoint {triton[0]} uses --engine triton: set triton_grpc_server to the Triton server's HOST:PORT",
            )

    def _check_shadows(self, config: ServiceConfig) -> None:
        for key, spec in config.shadows.items():
            if self.head.shadows.get(key) != spec:  # new or changed: both ends must exist, as for `model shadow`
                try:
                    _check_shadow(config, spec)
                except FerryError as exc:
                    self.fail(("shadows", key), str(exc))

    def _check_metrics(self, config: ServiceConfig) -> None:
        try:
            check_shared_names(config.metrics)
        except FerryError as exc:
            self.fail(("metrics",), str(exc))


def _entry_type(section: str) -> type[BaseModel] | None:
    """The spec type of a section's entries, or None for a section that is one model (settings)."""
    args = typing.get_args(ServiceConfig.model_fields[section].annotation)
    return args[1] if len(args) == 2 else None


def _key_of(spec: BaseModel, key: str) -> str:
    if isinstance(spec, EndpointSpec):
        return spec.key
    return getattr(spec, "endpoint", key)


def _kind(value: Any) -> str:
    kinds = {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}
    return kinds.get(type(value), f"a {type(value).__name__}")


def _preprocess_problem(local: Path) -> str | None:
    if not local.exists():
        return (
            f"{str(local)!r} is neither a local file or folder nor a preprocess artifact this service has used: "
            "give the path of a .py file or of a folder with preprocess.py"
        )
    if local.is_dir() and not (local / "preprocess.py").is_file():
        return f"preprocess folder {str(local)!r} has no preprocess.py"
    if local.is_file() and local.suffix != ".py":
        return f"preprocess file {str(local)!r} is not a .py file"
    return None


def local_ref(local: Path, scratch: Path) -> ArtifactRef:
    """The reference ArtifactStore.put would give ``local`` (a folder packed the same way), with no URL yet."""
    if local.is_file():
        return ArtifactRef(url="", sha256=_sha256(local), size=local.stat().st_size, filename=local.name)
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix=".pack-") as tmp:
        archive = pack_folder(local, Path(tmp) / f"{local.name}.tar")
        return ArtifactRef(
            url="", sha256=_sha256(archive), size=archive.stat().st_size, filename=local.name, is_dir=True
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def stored_refs(configs: list[ServiceConfig]) -> list[ArtifactRef]:
    """Every artifact reference in ``configs``, in order (later ones win where two share a URL)."""
    found: list[ArtifactRef] = []
    for config in configs:
        map_refs(config.model_dump(mode="json"), lambda ref: found.append(ArtifactRef(**ref)))
    return found

"""The service config as one YAML document: export it, diff two configs, apply a document to a service."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from ferry.control.autoupdate import commit_reconcile
from ferry.control.config_reader import PENDING, SECTIONS, Reader, is_ref, map_refs, parse_yaml, stored_refs
from ferry.control.service import ServiceControl
from ferry.control.spec import ServiceConfig, endpoint_key
from ferry.control.store import Revision

NOUNS = {"endpoints": "endpoint", "canaries": "canary", "shadows": "shadow", "auto_update": "auto-update rule"}
SUMMARY_ITEMS = 8
IDENTITY = ("name", "version", "endpoint")
"""Fields an entry's key already says; the diff does not repeat them."""


# --- export --------------------------------------------------------------------------------------


def export_document(config: ServiceConfig) -> dict[str, Any]:
    """The whole config as plain data: one mapping per section, preprocess code as {path, sha256}."""
    doc: dict[str, Any] = {}
    for section in SECTIONS:
        value = getattr(config, section)
        if isinstance(value, BaseModel):
            doc[section] = value.model_dump(mode="json")
        else:
            doc[section] = {key: _export_entry(spec, key) for key, spec in sorted(value.items())}
    return doc


def _export_entry(spec: BaseModel, key: str) -> dict[str, Any]:
    entry = spec.model_dump(mode="json", exclude_defaults=True)
    if "engine" in entry and endpoint_key(entry.get("name", ""), entry.get("version", "")) == key:
        entry.pop("name", None)
        entry.pop("version", None)
    elif entry.get("endpoint") == key:
        entry.pop("endpoint")
    exported: dict[str, Any] = map_refs(entry, lambda ref: {"path": ref["url"], "sha256": ref["sha256"]})
    return exported


class _Dumper(yaml.SafeDumper):
    """Lists of plain values on one line (shapes, weights, tags); everything else in block style."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(not isinstance(v, (dict, list)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def to_yaml(doc: dict[str, Any], header: str = "") -> str:
    """``doc`` as YAML, after ``header`` written as comment lines."""
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    return comments + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)


# --- diff ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One entry added (+), changed (~) or removed (-), with the fields that differ."""

    sign: str
    what: str
    details: tuple[str, ...] = ()

    @property
    def short(self) -> str:
        return f"{self.sign}{self.what}"


def diff(old: ServiceConfig, new: ServiceConfig) -> list[Change]:
    """What turns ``old`` into ``new``, entry by entry, in section order."""
    changes: list[Change] = []
    for section in SECTIONS:
        before, after = getattr(old, section), getattr(new, section)
        noun = NOUNS.get(section, section)
        if isinstance(before, BaseModel):
            if before != after:
                changes.append(Change("~", noun, _details(before, after)))
            continue
        for key in sorted(before.keys() | after.keys()):
            if key not in after:
                changes.append(Change("-", f"{noun} {key}"))
            elif key not in before:
                changes.append(Change("+", f"{noun} {key}", _details(None, after[key])))
            elif before[key] != after[key]:
                changes.append(Change("~", f"{noun} {key}", _details(before[key], after[key])))
    return changes


def summary(changes: list[Change]) -> str:
    """The history line of an apply: ``apply: +endpoint a/2, ~endpoint b, -canary c``."""
    shown = [c.short for c in changes[:SUMMARY_ITEMS]]
    more = len(changes) - len(shown)
    return "apply: " + ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _details(before: BaseModel | None, after: BaseModel) -> tuple[str, ...]:
    old = dict(_flatten(before.model_dump(mode="json"))) if before is not None else {}
    new = dict(_flatten(after.model_dump(mode="json")))
    lines = []
    for path in [*new, *(p for p in old if p not in new)]:
        if old.get(path) != new.get(path) and path not in IDENTITY:
            shown = new.get(path, "(none)")
            lines.append(f"{path}: {old[path]} -> {shown}" if path in old else f"{path}: {shown}")
    return tuple(lines)


def _flatten(data: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    if is_ref(data):
        where = "to upload" if data["url"].startswith(PENDING) else "stored"
        yield prefix, f"{data['filename']} (sha256 {data['sha256'][:12]}, {where})"
    elif isinstance(data, dict) and data:
        for key, value in data.items():
            yield from _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(data, list) and any(isinstance(v, dict) for v in data):
        for i, value in enumerate(data):
            yield from _flatten(value, f"{prefix}.{i}")
    elif data not in (None, {}, [], ""):
        yield prefix, str(data)


# --- apply ---------------------------------------------------------------------------------------


@dataclass
class Applied:
    """What an apply found and did: the changes, the files uploaded (or to upload), the new revision if any."""

    changes: list[Change]
    uploads: list[Path]
    revision: Revision | None


def apply_document(
    control: ServiceControl, service_id: str, text: str, source: str, base_dir: Path, dry_run: bool = False
) -> Applied:
    """Make the service match the YAML ``text``: validate all of it, upload changed code, write one revision.

    Nothing is written when the document is invalid, when it equals the service's config, or with ``dry_run``.
    """
    revisions = control.store.list_revisions(service_id)
    doc, places = parse_yaml(text, source)
    head = revisions[-1].config
    reader = Reader(control, places, base_dir, head, stored_refs([r.config for r in revisions]))
    config = reader.read(doc)
    changes = diff(head, config)
    uploads = list(reader.uploads.values())
    if not changes or dry_run:
        return Applied(changes, uploads, None)
    config = _uploaded(control, config, reader.uploads)

    def change(current: ServiceConfig) -> tuple[ServiceConfig, str]:
        now = diff(current, config)  # another writer may have moved the head since the diff above
        return (config, summary(now)) if now else (current, "")

    # The rules in the document deploy their matching models in the same revision, as `model auto-update` does.
    return Applied(changes, uploads, commit_reconcile(control.store, control.registry, service_id, change))


def _uploaded(control: ServiceControl, config: ServiceConfig, uploads: dict[str, Path]) -> ServiceConfig:
    if not uploads:
        return config
    stored = {url: control.artifacts.put(path).model_dump(mode="json") for url, path in uploads.items()}
    data = map_refs(config.model_dump(mode="json"), lambda ref: stored.get(ref["url"], ref))
    return ServiceConfig.model_validate(data)

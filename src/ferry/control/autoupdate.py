"""Auto-update rules: reconcile a service's rules against the registry, writing at most one revision."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from ferry.control.spec import AutoUpdateSpec, EndpointSpec, ModelQuery, ServiceConfig
from ferry.control.store import Revision, Store
from ferry.registry.models import ModelRecord, ModelRegistry

Matches = Mapping[str, Sequence[str]]
"""Per rule name, the ids of the models its query matches, oldest first (newest last)."""


def reconcile(config: ServiceConfig, matches: Matches) -> tuple[ServiceConfig, list[str]]:
    """The config with every rule serving its newest ``max_versions`` matches (see ``_newest``), and what changed.

    A model keeps its version number while it stays deployed; a newly deployed one gets the next number
    after every version the endpoint has (or the rule ever deployed). Nothing changes: ``config`` itself
    is returned, with no changes.
    """
    endpoints = dict(config.endpoints)
    rules = dict(config.auto_update)
    changes: list[str] = []
    for name, rule in sorted(config.auto_update.items()):
        changed, last = _reconcile_rule(endpoints, name, rule, matches.get(name, ()))
        changes += changed
        if last != rule.last_version:
            rules[name] = rule.model_copy(update={"last_version": last})
    if not changes:
        return config, []
    return config.model_copy(update={"endpoints": endpoints, "auto_update": rules}), changes


def _reconcile_rule(
    endpoints: dict[str, EndpointSpec], name: str, rule: AutoUpdateSpec, ids: Sequence[str]
) -> tuple[list[str], int]:
    """Edit ``endpoints`` in place for one rule: a line per endpoint added, changed or withdrawn; the last version."""
    managed = {key: spec for key, spec in endpoints.items() if _managed_by(spec, name, rule)}
    by_version = sorted(managed.values(), key=lambda s: int(s.version), reverse=True)
    version_of = {spec.model_id: spec.version for spec in by_version}  # a model deployed twice keeps its first
    wanted = _newest(list(dict.fromkeys(ids)), version_of, rule.max_versions)
    changes = []
    for key, spec in managed.items():
        if spec.model_id not in wanted or version_of[spec.model_id] != spec.version:
            del endpoints[key]
            changes.append(f"-{key}")
    next_version = max(_highest_version(endpoints, rule.endpoint, managed), rule.last_version) + 1
    for model_id in wanted:
        version = version_of.get(model_id)
        if version is None:
            version, next_version = str(next_version), next_version + 1
        spec = render(rule, name, model_id, version)
        if endpoints.get(spec.key) != spec:
            changes.append(f"{'~' if spec.key in endpoints else '+'}{spec.key} (model {model_id})")
            endpoints[spec.key] = spec
    return changes, max(next_version - 1, rule.last_version)


def _newest(ids: list[str], deployed: Mapping[str | None, str], max_versions: int) -> list[str]:
    """The newest ``max_versions`` of the deployed matches and the matches newer than the oldest of them.

    A match older than everything the rule still serves stays out: withdrawing the newest version brings
    back the one before it, not a model that was retired long ago as a new version.
    """
    kept = [i for i, model_id in enumerate(ids) if model_id in deployed]
    floor = kept[0] if kept else -1
    return [m for i, m in enumerate(ids) if i >= floor][-max_versions:]


def render(rule: AutoUpdateSpec, name: str, model_id: str, version: str) -> EndpointSpec:
    """The endpoint that serves ``model_id`` as ``rule.endpoint/version``, from the rule's template."""
    update = {"name": rule.endpoint, "version": version, "model_id": model_id, "auto_update": name}
    return rule.template.model_copy(update=update)


def _managed_by(spec: EndpointSpec, name: str, rule: AutoUpdateSpec) -> bool:
    return spec.auto_update == name and spec.name == rule.endpoint and spec.version.isdigit()


def _highest_version(endpoints: Mapping[str, EndpointSpec], endpoint: str, managed: Mapping[str, EndpointSpec]) -> int:
    """The highest numeric version of ``endpoint`` there is or was a moment ago (withdrawn ones included)."""
    versions = [s.version for s in (*endpoints.values(), *managed.values()) if s.name == endpoint]
    return max((int(v) for v in versions if v.isdigit()), default=0)


def matching_ids(registry: ModelRegistry, query: ModelQuery) -> list[str]:
    """Ids of the registry models ``query`` matches, oldest first."""
    found = registry.list(query.name, query.project, list(query.tags), query.published)
    return [m.id for m in sorted(found, key=lambda m: (m.created_at, m.id))]


def registry_change(registry: ModelRegistry, config: ServiceConfig) -> tuple[ServiceConfig, list[str]]:
    """``reconcile`` of ``config`` against what the registry holds now."""
    matches = {name: matching_ids(registry, rule.query) for name, rule in config.auto_update.items()}
    return reconcile(config, matches)


def commit_reconcile(
    store: Store,
    registry: ModelRegistry,
    service_id: str,
    edit: Callable[[ServiceConfig], tuple[ServiceConfig, str]] | None = None,
) -> Revision | None:
    """Apply ``edit`` (if any), then reconcile the rules, as one revision; None when nothing changed.

    Runs inside ``Store.commit``: a writer that lost the race re-reads the head and the registry and
    reconciles again, so two reconcilers at once converge on one result and never deploy a model twice.
    """
    wrote: list[bool] = []

    def change(config: ServiceConfig) -> tuple[ServiceConfig, str]:
        wrote.clear()
        edited, summary = edit(config) if edit else (config, "")
        new, changes = registry_change(registry, edited)
        if new is config:
            return config, ""  # the store writes no revision for an unchanged config
        wrote.append(True)
        deployed = f"auto-update: {', '.join(changes)}" if changes else ""
        return new, "; ".join(part for part in (summary, deployed) if part)

    revision = store.commit(service_id, change, author="auto-update")
    return revision if wrote else None


def reconcile_service(store: Store, registry: ModelRegistry, service_id: str) -> Revision | None:
    """Reconcile the service's rules if it has any (one cheap read when it has none); the new revision or None."""
    if not store.get_revision(service_id).config.auto_update:
        return None
    return commit_reconcile(store, registry, service_id)


def reconcile_for_model(store: Store, registry: ModelRegistry, model: ModelRecord) -> list[Revision]:
    """Reconcile every service with a rule that names ``model``'s name and project (before or after a change)."""
    written = []
    for service in store.list_services():
        rules = store.get_revision(service.id).config.auto_update.values()
        if any(_may_match(rule.query, model) for rule in rules):
            revision = commit_reconcile(store, registry, service.id)
            if revision is not None:
                written.append(revision)
    return written


def _may_match(query: ModelQuery, model: ModelRecord) -> bool:
    """Whether the rule's query could match the model, whatever its tags and published flag are."""
    return (query.name is None or query.name == model.name) and (
        query.project is None or query.project == model.project
    )


def unmanaged(store: Store, serving: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """Of ``serving`` (endpoint keys per service id), those no auto-update rule of the service owns."""
    left = {}
    for service_id, keys in serving.items():
        config = store.get_revision(service_id).config
        own = [k for k in keys if config.endpoints[k].auto_update not in config.auto_update]
        if own:
            left[service_id] = own
    return left

"""Export and apply of a service config as YAML, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ferry.control.config_reader import local_ref
from ferry.control.declarative import apply_document, export_document, to_yaml
from ferry.control.service import ServiceControl
from ferry.control.spec import CanarySpec, MetricSpec, ServiceConfig, ShadowSpec
from ferry.control.store import Store
from ferry.errors import InvalidInput
from ferry.registry.artifacts import ArtifactStore
from ferry.registry.models import ModelRegistry

PREPROCESS = "class Preprocess:\n    def preprocess(self, body, state, collect_custom_statistics_fn=None):\n"


@pytest.fixture
def control(store_url: str, ferry_home: Path) -> ServiceControl:
    store = Store.open(store_url)
    artifacts = ArtifactStore(str(ferry_home / "artifacts"), ferry_home / "cache", progress=False)
    return ServiceControl(store, ModelRegistry(store.sql, artifacts), artifacts)


@pytest.fixture
def code(tmp_path: Path) -> Path:
    """A folder holding a preprocess file and a preprocess package folder."""
    root = tmp_path / "code"
    (root / "pipe").mkdir(parents=True)
    (root / "pre.py").write_text(PREPROCESS + "        return body\n")
    (root / "pipe" / "preprocess.py").write_text("import helpers\n" + PREPROCESS + "        return body\n")
    (root / "pipe" / "helpers.py").write_text("SCALE = 2\n")
    return root


@pytest.fixture
def service(control: ServiceControl, code: Path, tmp_path: Path) -> str:
    """A service with an sklearn endpoint, a folder endpoint, a canary, a shadow, metrics and settings."""
    sid = control.store.create_service("declarative").id
    model = tmp_path / "model.pkl"
    model.write_bytes(b"not really a model" * 10)
    mid = control.registry.upload("logreg", path=model, project="demo").id
    control.add_endpoint(
        sid, engine="sklearn", endpoint="a", model_id=mid, preprocess=code / "pre.py", aux_config={"max_batch_size": 4}
    )
    control.add_endpoint(sid, engine="custom", endpoint="pipe", version="2", preprocess=code / "pipe")

    def extras(config: ServiceConfig) -> tuple[ServiceConfig, str]:
        update = {
            "canaries": {"c": CanarySpec(endpoint="c", weights=(0.1, 0.9), input_endpoints=("a", "pipe/2"))},
            "shadows": {"a": ShadowSpec(endpoint="a", target="pipe/2", fraction=0.5)},
            "metrics": {"a": MetricSpec(endpoint="a", log_freq=0.5)},
            "settings": config.settings.model_copy(update={"metric_log_freq": 0.25}),
        }
        return config.model_copy(update=update), "extras"

    control.store.commit(sid, extras)
    return sid


def exported(control: ServiceControl, sid: str) -> str:
    return to_yaml(export_document(control.store.get_revision(sid).config), "exported")


def apply(control: ServiceControl, sid: str, text: str, base: Path, dry_run: bool = False):
    return apply_document(control, sid, text, "service.yaml", base, dry_run=dry_run)


def stored_objects(home: Path) -> set[Path]:
    return {p for p in (home / "artifacts").rglob("*") if p.is_file() and ".staging" not in p.parts}


def test_export_then_apply_is_a_no_op(control: ServiceControl, service: str, tmp_path: Path):
    text = exported(control, service)
    doc = yaml.safe_load(text)
    assert list(doc) == ["endpoints", "canaries", "auto_update", "shadows", "metrics", "settings"]
    assert doc["endpoints"]["a"]["preprocess"]["sha256"] == local_ref(tmp_path / "code" / "pre.py", tmp_path).sha256
    assert doc["canaries"]["c"] == {"weights": [0.1, 0.9], "input_endpoints": ["a", "pipe/2"]}
    assert "weights: [0.1, 0.9]" in text  # lists of plain values on one line
    head = control.store.head(service)

    applied = apply(control, service, text, tmp_path)

    assert applied.changes == [] and applied.uploads == [] and applied.revision is None
    assert control.store.head(service) == head


def test_apply_writes_one_revision_that_matches_the_file(control: ServiceControl, service: str, tmp_path: Path):
    doc = yaml.safe_load(exported(control, service))
    doc["endpoints"]["b/2"] = {"engine": "custom", "preprocess": {"path": "code/pipe"}}
    doc["canaries"]["c"]["weights"] = [0.5, 0.5]
    del doc["shadows"]["a"]
    doc["settings"]["base_serving_url"] = "http://serving:8080"
    head = control.store.head(service)

    applied = apply(control, service, yaml.safe_dump(doc), tmp_path)

    assert applied.revision is not None and applied.revision.number == head + 1
    assert applied.revision.summary == "apply: +endpoint b/2, ~canary c, -shadow a, ~settings"
    assert control.store.head(service) == head + 1
    changed = {c.what: c.details for c in applied.changes}
    assert changed["canary c"] == ("weights: [0.1, 0.9] -> [0.5, 0.5]",)
    assert changed["settings"] == ("base_serving_url: http://serving:8080",)
    config = control.store.get_revision(service).config
    assert config.endpoints["b/2"].preprocess == config.endpoints["pipe/2"].preprocess  # same folder, same bytes
    assert config.canaries["c"].weights == (0.5, 0.5) and config.shadows == {}
    again = yaml.safe_load(exported(control, service))
    doc["endpoints"]["b/2"]["preprocess"] = doc["endpoints"]["pipe/2"]["preprocess"]
    assert again == doc
    assert apply(control, service, exported(control, service), tmp_path).changes == []


def test_dry_run_reports_and_writes_nothing(control: ServiceControl, service: str, tmp_path: Path, ferry_home: Path):
    doc = yaml.safe_load(exported(control, service))
    (tmp_path / "new.py").write_text(PREPROCESS + "        return {'new': body}\n")
    doc["endpoints"]["a"]["preprocess"] = "new.py"
    del doc["canaries"]["c"]
    before, head = stored_objects(ferry_home), control.store.head(service)

    applied = apply(control, service, yaml.safe_dump(doc), tmp_path, dry_run=True)

    assert [c.short for c in applied.changes] == ["~endpoint a", "-canary c"]
    assert applied.uploads == [tmp_path / "new.py"] and applied.revision is None
    assert control.store.head(service) == head and stored_objects(ferry_home) == before


BAD_DOCUMENTS = {
    "unknown key": (
        lambda d: d.update(endpoint={}),
        "endpoint: unknown key 'endpoint': the valid top-level keys are endpoints, canaries, auto_update",
    ),
    "bad engine": (
        lambda d: d["endpoints"]["a"].update(engine="sklern"),
        "endpoints.a.engine: unknown engine 'sklern': choose one of sklearn",
    ),
    "wrong type": (
        lambda d: d["canaries"]["c"].update(weights="heavy"),
        "canaries.c.weights: Input should be a valid tuple",
    ),
    "section not a mapping": (lambda d: d.update(shadows=["a"]), "shadows: expected a mapping of names to entries"),
    "aux key": (
        lambda d: d["endpoints"]["a"]["aux_config"].update(max_batch=8),
        "endpoints.a.aux_config: unknown key 'max_batch' for the sklearn engine (did you mean 'max_batch_size'?)",
    ),
    "unknown model": (
        lambda d: d["endpoints"]["a"].update(model_id="0" * 32),
        f"endpoints.a.model_id: no model with id {'0' * 32!r}",
    ),
    "shadow target": (
        lambda d: d["shadows"]["a"].update(target="nowhere"),
        "shadows.a: no shadow target 'nowhere' on this service",
    ),
    "canary target": (
        lambda d: d["canaries"]["c"].update(input_endpoints=["a/1/2", "pipe/2"]),
        "canaries.c: invalid canary target 'a/1/2': use NAME or NAME/VERSION",
    ),
    "missing preprocess": (
        lambda d: d["endpoints"]["pipe/2"].update(preprocess="gone.py"),
        "endpoints.pipe/2.preprocess.path: ",
    ),
}


@pytest.mark.parametrize("case", BAD_DOCUMENTS)
def test_invalid_documents_are_refused_before_any_write(
    control: ServiceControl, service: str, tmp_path: Path, ferry_home: Path, case: str
):
    edit, message = BAD_DOCUMENTS[case]
    doc = yaml.safe_load(exported(control, service))
    (tmp_path / "changed.py").write_text(PREPROCESS + "        return 'changed'\n")
    doc["endpoints"]["a"]["preprocess"] = "changed.py"  # would be uploaded, were the document valid
    edit(doc)
    text = yaml.safe_dump(doc, sort_keys=False)
    before, head = stored_objects(ferry_home), control.store.head(service)

    with pytest.raises(InvalidInput) as caught:
        apply(control, service, text, tmp_path)

    assert "service.yaml is not valid, nothing was changed" in str(caught.value)
    assert message in str(caught.value)
    assert "service.yaml line " in str(caught.value)
    assert control.store.head(service) == head and stored_objects(ferry_home) == before


def test_error_names_the_line_of_the_bad_value(control: ServiceControl, service: str, tmp_path: Path):
    text = exported(control, service).replace("engine: sklearn", "engine: sklern")
    line = text.splitlines().index("    engine: sklern") + 1
    with pytest.raises(InvalidInput, match=f"service.yaml line {line}, endpoints.a.engine: unknown engine"):
        apply(control, service, text, tmp_path)
    with pytest.raises(InvalidInput, match="service.yaml: not valid YAML"):
        apply(control, service, "endpoints: {a: [", tmp_path)


def test_preprocess_is_uploaded_only_when_its_content_changes(
    control: ServiceControl, service: str, code: Path, tmp_path: Path, ferry_home: Path
):
    doc = yaml.safe_load(exported(control, service))
    doc["endpoints"]["a"]["preprocess"] = {"path": "code/pre.py"}  # the same bytes as stored
    doc["endpoints"]["pipe/2"]["preprocess"] = str(code / "pipe")
    before = stored_objects(ferry_home)

    same = apply(control, service, yaml.safe_dump(doc), tmp_path)
    assert same.changes == [] and same.uploads == [] and stored_objects(ferry_home) == before

    (code / "pipe" / "helpers.py").write_text("SCALE = 3\n")
    changed = apply(control, service, yaml.safe_dump(doc), tmp_path)

    assert [c.short for c in changed.changes] == ["~endpoint pipe/2"] and changed.uploads == [code / "pipe"]
    assert len(stored_objects(ferry_home) - before) == 1
    ref = control.store.get_revision(service).config.endpoints["pipe/2"].preprocess
    assert ref.is_dir and ref.sha256 == local_ref(code / "pipe", tmp_path).sha256
    assert control.artifacts.exists(ref)
    assert apply(control, service, yaml.safe_dump(doc), tmp_path).changes == []


def test_models_may_be_named_by_query(control: ServiceControl, service: str, tmp_path: Path):
    doc = yaml.safe_load(exported(control, service))
    mid = doc["endpoints"]["a"].pop("model_id")
    doc["endpoints"]["a"]["model"] = {"name": "logreg", "project": "demo"}
    assert apply(control, service, yaml.safe_dump(doc), tmp_path).changes == []
    doc["endpoints"]["a"]["model"] = {"name": "logreg", "project": "elsewhere"}
    with pytest.raises(InvalidInput, match="endpoints.a.model: no model matches name='logreg', project='elsewhere'"):
        apply(control, service, yaml.safe_dump(doc), tmp_path)
    assert control.store.get_revision(service).config.endpoints["a"].model_id == mid


def test_canary_targets_are_stored_as_model_canary_stores_them(control: ServiceControl, service: str, tmp_path: Path):
    doc = yaml.safe_load(exported(control, service))
    doc["canaries"]["c"]["input_endpoints"] = ["/a/", "pipe/2/"]
    assert apply(control, service, yaml.safe_dump(doc), tmp_path).changes == []
    doc["canaries"]["p"] = {"weights": [1], "input_endpoint_prefix": "pipe/"}
    applied = apply(control, service, yaml.safe_dump(doc), tmp_path)
    assert [c.short for c in applied.changes] == ["+canary p"]
    assert control.store.get_revision(service).config.canaries["p"].input_endpoint_prefix == "pipe"


def test_another_service_applies_an_export_without_uploading(
    control: ServiceControl, service: str, tmp_path: Path, ferry_home: Path
):
    text = exported(control, service)
    other = control.store.create_service("staging copy").id
    before = stored_objects(ferry_home)

    applied = apply(control, other, text, tmp_path)

    assert applied.uploads == [] and stored_objects(ferry_home) == before
    assert control.store.get_revision(other).config == control.store.get_revision(service).config
    with pytest.raises(InvalidInput, match=r"endpoints\.a\.preprocess\.path: cannot read file://.*/gone\.py"):
        apply(control, other, text.replace("/pre.py", "/gone.py"), tmp_path)

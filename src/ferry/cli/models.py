"""Model commands: upload, list, publish, tag, delete (the registry) and add, remove, endpoints (a service)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ferry.cli import autoupdate, canary, convert, shadow
from ferry.cli.context import Context
from ferry.cli.output import console, emit_json, size, table, warn, when
from ferry.cli.parsing import add_endpoint_settings, add_model_query, endpoint_settings, model_query
from ferry.control.engine_names import (
    BATCHED_BY_DEFAULT,
    ENGINE_NAMES,
    batching_summary,
    effective_max_batch_size,
    queue_delay_ms,
)
from ferry.errors import Conflict

if TYPE_CHECKING:
    from ferry.control.spec import EndpointSpec


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    model = sub.add_parser("model", parents=[common], help="registry models and the endpoints serving them")
    msub = model.add_subparsers(dest="model_command", metavar="COMMAND", required=True)
    _upload(msub, common)
    _list(msub, common)
    p = msub.add_parser("publish", parents=[common], help="mark a model as published")
    p.add_argument("--model-id", required=True, help="the model to publish")
    p.set_defaults(func=publish)
    p = msub.add_parser("tag", parents=[common], help="add tags to a model")
    p.add_argument("--model-id", required=True, help="the model to tag")
    p.add_argument("--tags", nargs="+", required=True, help="tags to add")
    p.set_defaults(func=tag)
    p = msub.add_parser("delete", parents=[common], help="delete a model from the registry (and its unshared bytes)")
    p.add_argument("--model-id", required=True, help="the model to delete")
    p.add_argument("--force", action="store_true", help="delete it even while an endpoint serves it")
    p.set_defaults(func=delete)
    _add(msub, common)
    p = msub.add_parser("remove", parents=[common], help="remove an endpoint, canary, shadow or auto-update rule")
    p.add_argument("--endpoint", required=True, metavar="NAME[/VERSION]", help="what to remove")
    p.set_defaults(func=remove)
    p = msub.add_parser("endpoints", parents=[common], help="list the service's endpoints, canaries, shadows, rules")
    p.add_argument("--json", action="store_true", help="print one JSON document and nothing else")
    p.set_defaults(func=endpoints)
    convert.register(msub, common)
    autoupdate.register(msub, common)
    canary.register(msub, common)
    shadow.register(msub, common)


def _upload(msub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = msub.add_parser("upload", parents=[common], help="upload a model file or folder into the registry")
    p.add_argument("--name", required=True, help="model name")
    p.add_argument("--project", default="", help="model project")
    p.add_argument("--framework", default="", help="framework label (sklearn, xgboost, onnx, ...)")
    p.add_argument("--tags", nargs="*", default=[], help="tags")
    p.add_argument("--publish", action="store_true", help="publish the model right away")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--path", help="local model file or folder to upload")
    src.add_argument("--url", help="register a model that already lives at this URL (no copy)")
    p.add_argument("--destination", help="fsspec URL to upload to instead of the default artifact root")
    p.set_defaults(func=upload)


def _list(msub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = msub.add_parser("list", parents=[common], help="list registry models, newest first")
    p.add_argument("--name", help="exact model name")
    p.add_argument("--project", help="exact project")
    p.add_argument("--tags", nargs="*", default=[], help="only models carrying all of these tags")
    p.add_argument("--published", action="store_true", help="only published models")
    p.add_argument("--json", action="store_true", help="print one JSON document and nothing else")
    p.set_defaults(func=list_models)


def _add(msub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = msub.add_parser("add", parents=[common], help="serve a model at an endpoint (new revision)")
    p.add_argument("--engine", required=True, choices=ENGINE_NAMES, help="what runs the model")
    p.add_argument("--endpoint", required=True, help="endpoint name: served at /serve/NAME[/VERSION]")
    p.add_argument("--version", default="", help="endpoint version (default: none)")
    p.add_argument("--model-id", help="registry model to serve")
    add_model_query(p, name_help="pick the newest model with this exact name")
    add_endpoint_settings(p)
    p.set_defaults(func=add)


def upload(ctx: Context, args: argparse.Namespace) -> None:
    links = _links_stored_as_files(args.path)
    record = ctx.registry.upload(
        name=args.name,
        path=args.path,
        url=args.url,
        project=args.project,
        framework=args.framework,
        tags=args.tags,
        publish=args.publish,
        destination=args.destination,
    )
    _print_links(links)
    print(f"Model created and registered, new Model ID={record.id}")
    autoupdate.follow(ctx, record)


def list_models(ctx: Context, args: argparse.Namespace) -> None:
    found = ctx.registry.list(args.name, args.project, args.tags, args.published)
    versions = _version_numbers(ctx, found)
    docs = [{**m.to_dict(), "version": versions[m.id]} for m in found]
    if args.json:
        return emit_json(docs)
    table(
        "models (newest first)",
        ("id", "project", "name", "version", "framework", "tags", "published", "size", "created"),
        [
            (
                d["id"],
                d["project"],
                d["name"],
                d["version"],
                d["framework"],
                " ".join(d["tags"]),
                "yes" if d["published"] else "",
                size(d["size"]),
                when(d["created_at"]),
            )
            for d in docs
        ],
    )


def _version_numbers(ctx: Context, found: list) -> dict[str, int]:
    """Number each model 1, 2, ... by upload order within its project and name."""
    numbers: dict[str, int] = {}
    for project, name in {(m.project, m.name) for m in found}:
        siblings = sorted(ctx.registry.list(name=name, project=project), key=lambda m: m.created_at)
        numbers.update({m.id: i for i, m in enumerate(siblings, 1)})
    return numbers


def publish(ctx: Context, args: argparse.Namespace) -> None:
    record = ctx.registry.publish(args.model_id)
    print(f"Model {record.id} published")
    autoupdate.follow(ctx, record)


def tag(ctx: Context, args: argparse.Namespace) -> None:
    record = ctx.registry.tag(args.model_id, args.tags)
    print(f"Model {record.id} tags: {' '.join(record.tags)}")
    autoupdate.follow(ctx, record)


def delete(ctx: Context, args: argparse.Namespace) -> None:
    from ferry.control.autoupdate import unmanaged

    record = ctx.registry.get(args.model_id)
    serving = unmanaged(ctx.store, ctx.store.endpoints_serving(record.id))  # auto-update withdraws its own
    if serving and not args.force:
        service_id, keys = next(iter(serving.items()))
        raise Conflict(
            f"model {record.id} is served by {_in_words(ctx, serving)}: remove those endpoints first "
            f"(`ferry --id {service_id} model remove --endpoint {keys[0]}`), or pass --force to delete it anyway"
        )
    if serving:
        warn(f"model {record.id} was served by {_in_words(ctx, serving)}: those endpoints fail to load from now on")
    ctx.registry.remove(record.id)
    print(f"Model {record.id} deleted")
    autoupdate.follow(ctx, record)


def _in_words(ctx: Context, serving: dict[str, list[str]]) -> str:
    return "; ".join(
        f"service {ctx.store.get_service(sid).name!r} ({sid}) endpoint(s) {', '.join(keys)}"
        for sid, keys in serving.items()
    )


def add(ctx: Context, args: argparse.Namespace) -> None:
    query = model_query(args)
    links = _links_stored_as_files(args.preprocess)
    outcome = ctx.control.add_endpoint(
        ctx.service.id,
        engine=args.engine,
        endpoint=args.endpoint,
        version=args.version,
        model_id=args.model_id,
        query=query,
        **endpoint_settings(args),
    )
    for message in outcome.warnings:
        warn(message)
    _print_links(links)
    print(f"revision {outcome.revision.number}: {outcome.revision.summary}")


def _links_stored_as_files(path: str | None) -> list[tuple[str, str]]:
    """The links to files in the folder ``path`` that the upload stores as files (it refuses other links)."""
    from ferry.registry.packing import dereferenced_links

    return dereferenced_links(Path(path).resolve()) if path and Path(path).is_dir() else []


def _print_links(links: list[tuple[str, str]]) -> None:
    for relative, target in links:
        print(f"stored the content of link {relative} -> {target}")


def remove(ctx: Context, args: argparse.Namespace) -> None:
    outcome = ctx.control.remove_endpoint(ctx.service.id, args.endpoint)
    print(f"revision {outcome.revision.number}: {outcome.revision.summary}")


def endpoints(ctx: Context, args: argparse.Namespace) -> None:
    revision = ctx.store.get_revision(ctx.service.id)
    config = revision.config
    if args.json:
        doc = config.model_dump(mode="json", include={"endpoints", "canaries", "shadows", "auto_update"})
        batching = {
            key: _batching_doc(e) for key, e in sorted(config.endpoints.items()) if e.engine in BATCHED_BY_DEFAULT
        }
        return emit_json({"revision": revision.number, **doc, "batching": batching})
    console.print(f"service {ctx.service.id}, revision {revision.number}", highlight=False)
    table(
        "endpoints",
        ("endpoint", "engine", "model", "preprocess", "inputs", "outputs", "batching"),
        [
            (
                key,
                e.engine,
                e.model_id or "",
                e.preprocess.filename if e.preprocess else "",
                _tensors(e.inputs),
                _tensors(e.outputs),
                batching_summary(e.engine, e.aux_config),
            )
            for key, e in sorted(config.endpoints.items())
        ],
    )
    table(
        "canaries",
        ("endpoint", "weights", "targets"),
        [
            (k, c.weights, " ".join(c.input_endpoints) or f"{c.input_endpoint_prefix}*")
            for k, c in config.canaries.items()
        ],
    )
    table(
        "shadows",
        ("endpoint", "target", "fraction"),
        [(k, s.target, f"{s.fraction:g}") for k, s in sorted(config.shadows.items())],
    )
    table(
        "auto-update rules",
        ("endpoint", "engine", "model query", "max versions"),
        [
            (k, r.template.engine, r.query.model_dump(exclude_defaults=True), r.max_versions)
            for k, r in config.auto_update.items()
        ],
    )


def _batching_doc(spec: EndpointSpec) -> dict[str, Any]:
    """The batching an endpoint runs with: its cap, whether that is the engine's default, the queue delay."""
    size, default = effective_max_batch_size(spec.engine, spec.aux_config)
    return {"max_batch_size": size, "default": default, "max_queue_delay_ms": queue_delay_ms(spec.aux_config)}


def _tensors(specs) -> str:
    return " ".join(f"{t.name or '?'}:{t.dtype or '?'}{list(t.shape) if t.shape else ''}" for t in specs)

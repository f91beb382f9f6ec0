"""Rollouts as users run them over a real `ferry serve`: ClearML's readme lines, changes under load, rollback."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import orjson
import pytest

from ferry.cli.context import Context
from tests.conftest import Ferry
from tests.e2e import one_server
from tests.e2e.test_examples import EXAMPLES, PROJECT, SETOSA, iris, train, upload
from tests.load import hammer
from tests.server import Server

pytestmark = pytest.mark.e2e

ferry_sqlite, server = one_server.ferry_sqlite, one_server.server  # one store and one `ferry serve` here

EXAMPLE_LINES = {
    # example: (engine, model file, registry name, a body, its answer)
    "sklearn": ("sklearn", "sklearn-model.pkl", "train sklearn model", {"x0": 1, "x1": 2}, {"y": [1]}),
    "xgboost": ("xgboost", "xgb_model", "train xgboost model", iris(SETOSA), {"y": [0]}),
    "lightgbm": ("lightgbm", "lgbm_model", "train lightgbm model", iris(SETOSA), {"y": 0}),
}


@pytest.mark.parametrize("example", list(EXAMPLE_LINES))
def test_clearml_readme_auto_update_and_canary_lines(
    example: str, e2e_ferry: Ferry, e2e_service: str, example_server: Server, tmp_path: Path
):
    """`model auto-update ... --max-versions 2`, then `/serve/<x>_auto/1`; `model canary ... --input-endpoint-prefix
    <x>_auto`, then `/serve/<x>_auto`: as ClearML-Serving's example readmes end."""
    engine, filename, name, body, answer = EXAMPLE_LINES[example]
    model = tmp_path / filename
    train(example, model)
    upload(e2e_ferry, name, model)
    endpoint = f"test_model_{example}_auto"
    preprocess = str(EXAMPLES / example / "preprocess.py")
    e2e_ferry("--id", e2e_service, "model", "auto-update", "--engine", engine, "--endpoint", endpoint,
              "--preprocess", preprocess, "--name", name, "--project", PROJECT, "--max-versions", "2")  # fmt: skip
    assert example_server.wait_endpoint(f"{endpoint}/1", body) == answer
    e2e_ferry("--id", e2e_service, "model", "canary", "--endpoint", endpoint, "--weights", "0.1", "0.9",
              "--input-endpoint-prefix", endpoint)  # fmt: skip
    applied(example_server, Context(e2e_service), e2e_service)
    assert e2e_ferry("--id", e2e_service, "model", "endpoints", "--json").json()["canaries"][endpoint]
    for _ in range(20):
        assert example_server.serve(endpoint, body).json() == answer


def tagged(folder: Path, tag: str) -> Path:
    path = folder / f"tag_{tag}.py"
    path.write_text(
        textwrap.dedent(
            f"""
            class Preprocess:
                def process(self, data, state, collect=None):
                    return {{"tag": "{tag}"}}
            """
        )
    )
    return path


def applied(server: Server, ctx: Context, service: str) -> None:
    head = ctx.store.head(service)
    server.wait_for(lambda: server.client.get("/health/ready").json().get("revision") == head, what="revision")


def test_twenty_swaps_and_weight_changes_under_load_fail_nothing(ferry_sqlite: Ferry, server: Server, tmp_path: Path):
    """A canary over m/1 and m/2 while both versions are replaced and the weights change, 16 connections asking."""
    ctx = Context()
    service = ctx.service.id
    for version in ("1", "2"):
        ctx.control.add_endpoint(service, engine="custom", endpoint="m", version=version,
                                 preprocess=tagged(tmp_path, f"{version}-0"))  # fmt: skip
    ctx.control.add_canary(service, endpoint="c", weights=(0.5, 0.5), input_endpoints=("m/1", "m/2"))
    server.wait_endpoint("c", {})

    async def go():
        stop = asyncio.Event()
        load = asyncio.create_task(hammer(server.port, "/serve/c", orjson.dumps({}), connections=16, until=stop))
        for n in range(1, 21):
            version = "1" if n % 2 else "2"
            await asyncio.to_thread(ctx.control.add_endpoint, service, engine="custom", endpoint="m",
                                    version=version, preprocess=tagged(tmp_path, f"{version}-{n}"))  # fmt: skip
            weights = (n / 21, 1 - n / 21)
            await asyncio.to_thread(ctx.control.add_canary, service, endpoint="c", weights=weights,
                                    input_endpoints=("m/1", "m/2"))  # fmt: skip
            await asyncio.to_thread(applied, server, ctx, service)
        stop.set()
        return await load

    tally = asyncio.run(go())
    tags = {a.json()["tag"] for a in tally.answers if a.status == 200}
    print(f"20 swaps + 20 weight changes: {len(tally.answers)} requests, statuses {tally.statuses()}")
    assert tally.statuses() == {200: len(tally.answers)} and len(tally.answers) > 500
    assert "1-19" in tags  # the canary reached the last m/1 (m/2 has 1/21 of the traffic at the end)
    assert server.serve("m/2", {}).json() == {"tag": "2-20"}


def test_rollback_restores_the_earlier_answers_exactly(ferry_sqlite: Ferry, server: Server, tmp_path: Path):
    """Sticky keys: each key's answer after `rollback` equals its answer at that revision. Its own endpoints (`r`,
    canary `rc`): the module's server is shared, and the rollback undoes only what this test changed after."""
    ctx = Context()
    service = ctx.service.id
    for version in ("1", "2"):
        ctx.control.add_endpoint(service, engine="custom", endpoint="r", version=version,
                                 preprocess=tagged(tmp_path, f"before-{version}"))  # fmt: skip
    ctx.control.add_canary(service, endpoint="rc", weights=(0.3, 0.7), input_endpoints=("r/1", "r/2"))
    server.wait_endpoint("rc", {})
    applied(server, ctx, service)
    keys = [f"user-{i}" for i in range(40)]

    def answers() -> dict[str, str]:
        return {k: server.post("/serve/rc", {}, headers={"X-Ferry-Routing-Key": k}).json()["tag"] for k in keys}

    before, revision = answers(), ctx.store.head(service)
    ctx.control.add_endpoint(service, engine="custom", endpoint="r", version="2", preprocess=tagged(tmp_path, "after"))
    ctx.control.add_canary(service, endpoint="rc", weights=(0.9, 0.1), input_endpoints=("r/1", "r/2"))
    applied(server, ctx, service)
    assert answers() != before
    ferry_sqlite("rollback", "--to", str(revision))
    applied(server, ctx, service)
    assert answers() == before
    assert {"before-1", "before-2"} == set(before.values())

"""The data plane without HTTP: routing, the Preprocess contract end to end, errors, live changes."""

from __future__ import annotations

import asyncio
import threading

import pytest

from ferry.errors import EngineError, NotFound, NotReady, Timeout, UserCodeError

SKLEARN_CODE = """
    import numpy as np

    class Preprocess:
        def preprocess(self, body, state, collect_custom_statistics_fn=None):
            state["seen"] = body
            return [[body["x0"], body["x1"]]]

        def postprocess(self, data, state, collect_custom_statistics_fn=None):
            return {"y": data.tolist(), "echo": state["seen"]}
"""


def infer(service, endpoint: str, body, version: str | None = None):
    async def go():
        service.plane.loop = asyncio.get_running_loop()
        return await service.plane.infer(endpoint, version, body)

    return asyncio.run(go())


def echo_code(service, tag: str):
    return service.code(
        f"""
        class Preprocess:
            def process(self, data, state, collect_custom_statistics_fn=None):
                return {{"tag": "{tag}", "data": data}}
        """
    )


def test_sklearn_endpoint_runs_pre_model_post_with_shared_state(service):
    service.add("sk", "sklearn", code=service.code(SKLEARN_CODE), model_id=service.model())
    service.apply()
    assert infer(service, "sk", {"x0": 3, "x1": 2}) == {"y": [1], "echo": {"x0": 3, "x1": 2}}
    assert infer(service, "sk", {"x0": -3, "x1": -2})["y"] == [0]


def test_without_version_the_newest_answers(service):
    for version in ("1", "2", "10"):
        service.add("m", version=version, code=echo_code(service, version))
    service.apply()
    assert infer(service, "m", 0)["tag"] == "10"
    assert infer(service, "m", 0, version="2")["tag"] == "2"
    service.add("m", code=echo_code(service, "plain"))
    service.apply()
    assert infer(service, "m", 0)["tag"] == "plain"


def test_unknown_endpoint_and_version_list_what_exists(service):
    service.add("m", version="1", code=echo_code(service, "1"))
    service.apply()
    with pytest.raises(NotFound, match="served endpoints: m/1"):
        infer(service, "nope", {})
    with pytest.raises(NotFound, match="'m/7'"):
        infer(service, "m", {}, version="7")


def test_every_hook_optional_and_async_hooks_awaited(service):
    service.add("bare", code=service.code("class Preprocess:\n    def process(self, data, state, c=None):\n"
                                          "        return data\n"))  # fmt: skip
    service.add(
        "mixed",
        code=service.code(
            """
            class Preprocess:
                async def preprocess(self, body, state, collect=None):
                    state["n"] = body["n"]
                    return body["n"] * 2
                def process(self, data, state, collect=None):
                    return data + 1
                async def postprocess(self, data, state, collect=None):
                    return {"out": data, "n": state["n"]}
            """
        ),
    )
    service.apply()
    assert infer(service, "bare", {"a": [1, 2]}) == {"a": [1, 2]}
    assert infer(service, "mixed", {"n": 5}) == {"out": 11, "n": 5}


def test_user_exception_names_endpoint_and_stage(service):
    code = service.code(
        """
        class Preprocess:
            def preprocess(self, body, state, collect=None):
                return body["missing"]
            def process(self, data, state, collect=None):
                return data
        """
    )
    service.add("bad", version="3", code=code)
    service.apply()
    with pytest.raises(UserCodeError, match=r"endpoint bad/3: preprocess raised KeyError: 'missing'") as err:
        infer(service, "bad", {})
    assert err.value.status_code == 422


def test_model_rejecting_input_is_422_and_engine_crash_is_500(service):
    mid = service.model()
    service.add("sk", "sklearn", model_id=mid)  # no preprocess: the body goes to predict as it is
    service.add(
        "crash",
        "sklearn",
        model_id=mid,
        code=service.code(
            "class Preprocess:\n    def load(self, path):\n        return self\n"
            "    def predict(self, data):\n        raise MemoryError('boom')\n"
        ),  # fmt: skip
    )
    service.apply()
    with pytest.raises(UserCodeError, match="sklearn model rejected its input"):
        infer(service, "sk", [[1.0]])  # one feature instead of two
    with pytest.raises(EngineError, match="engine failed: MemoryError: boom") as err:
        infer(service, "crash", [[1.0, 2.0]])
    assert err.value.status_code == 500
    assert infer(service, "sk", [[1.0, 2.0]]).tolist() == [1]


def test_failed_version_keeps_the_old_one_and_is_reported(service):
    service.add("m", code=echo_code(service, "good"))
    service.apply()
    service.add("m", code=service.code("class Preprocess:\n    def __init__(self):\n        1 / 0\n"))
    service.add("other", code=service.code("import not_a_module_anywhere\n"))
    service.apply()
    assert infer(service, "m", 1)["tag"] == "good"
    states = service.plane.endpoint_states()
    assert states["other"]["state"] == "failed" and "not_a_module_anywhere" in states["other"]["error"]
    assert "ZeroDivisionError" in service.plane.table.failed["m"]
    with pytest.raises(NotReady, match="other failed to load: .*ModuleNotFoundError"):
        infer(service, "other", 1)


def test_loading_endpoint_is_503_with_retry_after(service):
    import dataclasses

    service.plane.swap(dataclasses.replace(service.plane.table, loading=frozenset({"soon"})))
    with pytest.raises(NotReady, match="soon is loading") as err:
        infer(service, "soon", {})
    assert err.value.retry_after >= 1


def test_removed_version_drains_then_unloads(service, tmp_path):
    marker = tmp_path / "unloaded"
    code = service.code(
        f"""
        import time
        class Preprocess:
            def process(self, data, state, collect=None):
                time.sleep(data)
                return "done"
            def unload(self):
                open({str(marker)!r}, "w").write("yes")
        """
    )
    service.add("slow", code=code)
    service.apply()
    runtime = service.plane.table.resolve("slow")

    async def scenario():
        service.plane.loop = asyncio.get_running_loop()
        inflight = asyncio.create_task(service.plane.infer("slow", None, 0.5))
        await asyncio.sleep(0.1)
        service.control.remove_endpoint(service.id, "slow")
        await asyncio.to_thread(service.apply)  # waits for the drain
        return await inflight

    assert asyncio.run(scenario()) == "done"
    assert marker.read_text() == "yes" and runtime.inflight == 0
    with pytest.raises(NotFound):
        infer(service, "slow", 0)


def test_same_module_names_in_two_versions_stay_apart(service):
    for version in ("1", "2"):
        code = service.code(
            """
            import helpers
            class Preprocess:
                def process(self, data, state, collect=None):
                    return helpers.VALUE
            """,
            helpers=f"VALUE = 'v{version}'\n",
        )
        service.add("iso", version=version, code=code)
    service.apply()
    assert infer(service, "iso", None, "1") == "v1" and infer(service, "iso", None, "2") == "v2"


def test_send_request_sync_from_many_threads_and_async(service):
    service.add("sk", "sklearn", code=service.code(SKLEARN_CODE), model_id=service.model())
    service.add(
        "fanout",
        code=service.code(
            """
            from concurrent.futures import ThreadPoolExecutor
            class Preprocess:
                def send_request(self, endpoint, version=None, data=None):
                    raise RuntimeError("placeholder: the server replaces this")
                def process(self, data, state, collect=None):
                    with ThreadPoolExecutor(32) as pool:
                        jobs = [pool.submit(self.send_request, endpoint="/sk/", data=d) for d in data]
                        answers = [j.result() for j in jobs]
                    missing = self.send_request(endpoint="/ghost/", data={})
                    return {"ys": [a["y"][0] for a in answers], "missing": missing}
            """
        ),
    )
    service.add(
        "together",
        "custom_async",
        code=service.code(
            """
            import asyncio
            class Preprocess:
                async def process(self, data, state, collect=None):
                    a, b = await asyncio.gather(
                        self.send_request(endpoint="/sk/", data=data),
                        self.send_request(endpoint="fanout", data=[data]),
                    )
                    return {"a": a["y"], "b": b["ys"]}
            """
        ),
    )
    service.apply()
    signs = [1, -1, -1, 1] * 10
    out = infer(service, "fanout", [{"x0": 3 * s, "x1": 2 * s} for s in signs])
    assert out["missing"] is None and out["ys"] == [1 if s > 0 else 0 for s in signs]
    assert infer(service, "together", {"x0": 4, "x1": 4}) == {"a": [1], "b": [1]}


def test_replacing_code_serves_the_new_code_after_apply(service):
    service.add("m", code=echo_code(service, "old"))
    service.apply()
    service.add("m", code=echo_code(service, "new"))
    service.apply()
    assert infer(service, "m", 0)["tag"] == "new"
    assert service.plane.table.revision == service.store.head(service.id)


def test_heartbeat_state_reports_requests(service):
    service.add("m", code=echo_code(service, "x"))
    service.apply()
    for _ in range(3):
        infer(service, "m", 0)
    state = service.reconciler.state()
    assert state["endpoints"]["m"] == {"state": "ready", "requests": 3, "errors": 0, "inflight": 0}
    assert state["rss_bytes"] > 0


def test_stage_pool_is_not_deadlocked_by_nested_calls(service):
    """More concurrent outer requests than pool threads, each calling another endpoint: all finish."""
    service.add("leaf", code=echo_code(service, "leaf"))
    service.add(
        "outer",
        code=service.code(
            """
            class Preprocess:
                def process(self, data, state, collect=None):
                    return self.send_request(endpoint="leaf", data=data)["tag"]
            """
        ),
    )
    service.apply()

    async def many():
        service.plane.loop = asyncio.get_running_loop()
        return await asyncio.gather(*(service.plane.infer("outer", None, i) for i in range(100)))

    done = threading.Event()
    result: list = []
    worker = threading.Thread(target=lambda: (result.append(asyncio.run(many())), done.set()))
    worker.start()
    assert done.wait(30), "nested send_request calls deadlocked the stage pool"
    assert result[0] == ["leaf"] * 100


def test_clearml_storage_manager_stand_in(service, tmp_path):
    """A ClearML-Serving file that fetches an extra file with StorageManager runs unchanged."""
    extra = tmp_path / "labels.txt"
    extra.write_text("negative\npositive\n")
    code = service.code(
        f"""
        from clearml import StorageManager

        class Preprocess:
            def __init__(self):
                path = StorageManager.get_local_copy(remote_url={extra.as_uri()!r})
                self.labels = open(path).read().split()
                self.missing = StorageManager.get_local_copy(remote_url={(tmp_path / "nope").as_uri()!r})

            def process(self, data, state, collect=None):
                return {{"label": self.labels[data], "missing": self.missing}}
        """
    )
    service.add("labels", code=code)
    service.apply()
    assert infer(service, "labels", 1) == {"label": "positive", "missing": None}


def test_a_failed_load_is_retried_without_a_new_revision(service, monkeypatch):
    """The model's bytes are missing (an artifact store outage), then come back: the endpoint loads."""
    from pathlib import Path

    from ferry.serving.revisions import reconciler

    monkeypatch.setattr(reconciler, "RETRY_FIRST_S", 0.1)
    mid = service.model()
    stored = Path(service.registry.get(mid).url.removeprefix("file://"))
    hidden = stored.with_name("away")
    stored.rename(hidden)
    service.add("sk", "sklearn", model_id=mid, code=service.code(SKLEARN_CODE))
    service.reconciler.poll_interval = 0.05

    async def until(check, timeout=10.0):
        deadline = asyncio.get_running_loop().time() + timeout
        while not check():
            assert asyncio.get_running_loop().time() < deadline, service.plane.endpoint_states()
            await asyncio.sleep(0.05)

    async def scenario():
        service.plane.loop = asyncio.get_running_loop()
        task = asyncio.create_task(service.reconciler.run())
        try:
            await until(lambda: "sk" in service.plane.table.failed)
            assert "not found" in service.plane.table.failed["sk"]
            hidden.rename(stored)
            await until(lambda: "sk" in service.plane.table.runtimes)
            return await service.plane.infer("sk", None, {"x0": 3, "x1": 2})
        finally:
            service.reconciler.stop()
            await task

    assert asyncio.run(scenario())["y"] == [1]


def test_requests_past_the_drain_timeout_get_503_with_retry_after(service, caplog):
    """A replaced version waits for its requests up to the drain timeout; the stragglers get 503, never 500."""
    slow = service.code(
        """
        import time
        class Preprocess:
            def process(self, data, state, collect=None):
                time.sleep(data)
                return {"slept": data}
        """
    )
    service.add("d", code=slow)
    service.apply()
    service.reconciler.swap.drain_timeout = 0.3

    async def go():
        service.plane.loop = asyncio.get_running_loop()
        quick = asyncio.ensure_future(service.plane.infer("d", None, 0.1))
        stuck = asyncio.ensure_future(service.plane.infer("d", None, 1.5))
        await asyncio.sleep(0.05)
        service.add("d", code=echo_code(service, "new"))
        await asyncio.to_thread(service.apply)  # swaps, then retires the old version: drains 0.3 s, unloads
        after = await service.plane.infer("d", None, 0)
        return await asyncio.gather(quick, stuck, return_exceptions=True), after

    (quick, stuck), after = asyncio.run(go())
    assert quick == {"slept": 0.1}  # finished within the drain on the version it resolved
    assert isinstance(stuck, NotReady) and stuck.retry_after == 1.0 and "unloaded" in str(stuck)
    assert after["tag"] == "new"
    assert "still running after the 0.3 s drain" in caplog.text


def test_a_request_that_resolved_a_retiring_version_runs_on_its_successor(service):
    service.add("r", code=echo_code(service, "old"))
    service.apply()
    old = service.plane.table.resolve("r")
    service.add("r", code=echo_code(service, "new"))
    service.apply()
    assert old.closed and old.inflight == 0
    with pytest.raises(Exception, match="r"):
        asyncio.run(old.run(1, None, service.plane.pool))  # a closed version takes nothing
    assert infer(service, "r", 1)["tag"] == "new"


def test_a_timed_out_request_still_holds_its_version_until_its_thread_ends(service, tmp_path):
    """504 at the timeout, but the version is unloaded only once the stage still running in a thread is done."""
    log = tmp_path / "events.txt"
    slow = service.code(
        f"""
        import time
        class Preprocess:
            def process(self, data, state, collect=None):
                time.sleep(data)
                with open({str(log)!r}, "a") as f:
                    f.write("done\\n")
                return data
            def unload(self):
                with open({str(log)!r}, "a") as f:
                    f.write("unload\\n")
        """
    )
    service.add("t", code=slow, aux_config={"request_timeout_ms": 100, "inline_budget_ms": 0})
    service.apply()
    service.reconciler.swap.drain_timeout = 5.0

    async def go():
        service.plane.loop = asyncio.get_running_loop()
        with pytest.raises(Timeout):
            await service.plane.infer("t", None, 0.6)
        service.add("t", code=echo_code(service, "new"))
        await asyncio.to_thread(service.apply)  # retires the old version: must wait for the sleeping thread

    asyncio.run(go())
    assert log.read_text().split() == ["done", "unload"]

"""The `ferry` command against a temporary FERRY_HOME (SQLite and PostgreSQL): its main() in process, and the
installed console script in a subprocess for the main commands, the exit status and concurrent processes."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ferry.cli.main import build_parser
from ferry.control.store import os_user
from tests.conftest import FERRY_BIN, Ferry

PREPROCESS = """
class Preprocess:
    def preprocess(self, body, state, collect_custom_statistics_fn=None):
        return [[body["x0"], body["x1"]]]
"""


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    model = tmp_path / "model.pkl"
    model.write_bytes(b"\x80\x04not really a model" * 10)
    pre = tmp_path / "preprocess.py"
    pre.write_text(PREPROCESS)
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "preprocess.py").write_text("import helpers\n" + PREPROCESS)
    (folder / "helpers.py").write_text("SCALE = 2\n")
    return {"model": model, "pre": pre, "folder": folder}


def model_id(out: str) -> str:
    assert out.strip().splitlines()[-1].startswith("Model created and registered, new Model ID=")
    return out.strip().rsplit("=", 1)[1]


def test_registry_and_endpoint_flow(ferry: Ferry, files: dict[str, Path]):
    sid = ferry.service()
    assert len(sid) == 32
    services = ferry("list", "--json").json()
    assert [(s["id"], s["name"], s["revision"]) for s in services] == [(sid, "serving example", 1)]

    up = ferry("--id", sid, "model", "upload", "--name", "logreg", "--project", "demo", "--path", str(files["model"]))
    mid = model_id(up.out)
    listed = ferry("--id", sid, "model", "list", "--json").json()
    assert listed[0]["id"] == mid and listed[0]["size"] == files["model"].stat().st_size
    assert listed[0]["version"] == 1 and listed[0]["published"] is False
    ferry("--id", sid, "model", "publish", "--model-id", mid)
    ferry("--id", sid, "model", "tag", "--model-id", mid, "--tags", "prod", "v1")
    (one,) = ferry("model", "list", "--published", "--tags", "prod", "--json").json()
    assert one["tags"] == ["prod", "v1"]

    add = ferry(
        "--id", sid, "model", "add", "--engine", "sklearn", "--endpoint", "test_model_sklearn",
        "--name", "logreg", "--project", "demo", "--published", "--preprocess", str(files["pre"]),
        "--input-size", "[-1, 2]", "--input-type", "float32", "--output-size", "-1", "1",
    )  # fmt: skip
    assert add.out.startswith("revision 2: endpoint test_model_sklearn added (sklearn, model " + mid)
    ferry("model", "add", "--engine", "custom", "--endpoint", "pipe", "--version", "2",
          "--preprocess", str(files["folder"]))  # fmt: skip
    eps = ferry("model", "endpoints", "--json").json()
    assert eps["revision"] == 3 and set(eps["endpoints"]) == {"test_model_sklearn", "pipe/2"}
    sk = eps["endpoints"]["test_model_sklearn"]
    assert sk["model_id"] == mid and sk["inputs"] == [{"name": None, "dtype": "float32", "shape": [-1, 2]}]
    assert sk["outputs"][0]["shape"] == [-1, 1] and len(sk["preprocess"]["sha256"]) == 64
    assert eps["endpoints"]["pipe/2"]["preprocess"]["is_dir"] is True
    assert eps["batching"] == {"test_model_sklearn": {"max_batch_size": 32, "default": True, "max_queue_delay_ms": 0}}
    assert "up to 32 (default)" in ferry("model", "endpoints").out

    replaced = ferry("model", "add", "--engine", "custom", "--endpoint", "pipe", "--version", "2")
    assert "already existed: replaced it" in replaced.err
    ferry("model", "remove", "--endpoint", "pipe/2")
    ferry("config", "--metric-log-freq", "0.5", "--triton-grpc-server", "127.0.0.1:8001")
    assert ferry("config", "--json").json()["metric_log_freq"] == 0.5

    hist = ferry("history", "--json").json()
    assert [h["revision"] for h in hist] == [1, 2, 3, 4, 5, 6]
    assert {h["author"] for h in hist} == {os_user()}  # who ran the commands
    assert hist[4]["summary"] == "endpoint pipe/2 removed"
    assert ferry("rollback", "--to", "3").out.startswith("revision 7: rollback to revision 3")
    eps = ferry("model", "endpoints", "--json").json()
    assert eps["revision"] == 7 and set(eps["endpoints"]) == {"test_model_sklearn", "pipe/2"}
    assert ferry("config", "--json").json()["metric_log_freq"] == 1.0
    status = ferry("status", "--json").json()
    assert status == {"service": sid, "revision": 7, "instances": []}


def test_the_console_script_runs_the_main_commands_as_main_does_in_process(ferry_sqlite: Ferry, files: dict[str, Path]):
    """The installed `ferry` script end to end (the other tests run its main() in process): create, upload, add
    and list; and what it prints and exits with is what the in-process runs give (a table, a usage mistake, a
    command that fails)."""
    script = Ferry(ferry_sqlite.cwd, process=True)
    sid = script.service()
    mid = model_id(script("model", "upload", "--name", "logreg", "--path", str(files["model"])).out)
    added = script("--id", sid, "model", "add", "--engine", "sklearn", "--endpoint", "e", "--model-id", mid)
    assert added.out.startswith(f"revision 2: endpoint e added (sklearn, model {mid}")
    assert [m["id"] for m in script("model", "list", "--json").json()] == [mid]

    table = script("model", "list")
    assert mid in table.out and "\x1b[" not in table.out and table == ferry_sqlite("model", "list")
    usage = script("list", "--no-such-flag", ok=False)
    assert usage.code == 2 and usage == ferry_sqlite("list", "--no-such-flag", ok=False)
    failed = script("--id", "nope", "history", ok=False)
    assert failed.code == 1 and failed == ferry_sqlite("--id", "nope", "history", ok=False)


def test_in_process_runs_keep_the_test_process_as_it_was(ferry_sqlite: Ferry, tmp_path: Path):
    """A command run in process sees its own environment and folder, and leaves the test's as they were; one
    that runs until a signal is refused there (it would block the test and take over its signal handlers)."""
    (tmp_path / "elsewhere").mkdir()
    here, env = os.getcwd(), dict(os.environ)
    ferry_sqlite.service()
    elsewhere = Ferry(tmp_path / "elsewhere")
    elsewhere("dashboard", "export", "--output", "dash.json")
    assert (tmp_path / "elsewhere" / "dash.json").is_file()
    assert "no service with id 'nope'" in elsewhere("export", env={"FERRY_SERVICE": "nope", "NEW": "1"}, ok=False).err
    assert os.getcwd() == here and dict(os.environ) == env
    for argv in (["serve"], ["triton", "sync", "--model-repository", ".", "--watch"]):
        with pytest.raises(AssertionError, match="runs until a signal .* process=True"):
            ferry_sqlite(*argv)
    assert "usage: ferry serve" in ferry_sqlite("serve", "--help").out  # answered before any serving


def test_folder_and_url_uploads(ferry_sqlite: Ferry, files: dict[str, Path], tmp_path: Path):
    ferry = ferry_sqlite
    ferry.service()
    folder_id = model_id(ferry("model", "upload", "--name", "hf", "--path", str(files["folder"])).out)
    url_id = model_id(ferry("model", "upload", "--name", "remote", "--url", files["model"].as_uri()).out)
    by_id = {m["id"]: m for m in ferry("model", "list", "--json").json()}
    assert by_id[folder_id]["is_dir"] is True and by_id[folder_id]["filename"] == "code"
    assert by_id[url_id]["url"] == files["model"].as_uri()


def test_every_listing_prints_only_json(ferry_sqlite: Ferry):
    ferry_sqlite.service()
    for cmd in (["list"], ["model", "list"], ["model", "endpoints"], ["history"], ["status"], ["config"]):
        json.loads(ferry_sqlite(*cmd, "--json").out)


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]):
    out = subprocess.run([FERRY_BIN, "model", "add", "--help"], capture_output=True, text=True, check=True).stdout
    assert "usage: ferry model add" in out and "--aux-config" in out
    commands = [[], ["create"], ["list"], ["config"], ["history"], ["rollback"], ["status"], ["model"]]
    commands += [["model", c] for c in ("upload", "list", "publish", "tag", "delete", "add", "remove", "endpoints")]
    for cmd in commands:
        with pytest.raises(SystemExit) as done:
            build_parser().parse_args([*cmd, "--help"])
        assert done.value.code == 0
        assert f"usage: ferry {' '.join(cmd)}".strip() in capsys.readouterr().out


def test_help_and_usage_errors_load_neither_the_store_nor_validation_libraries():
    """`ferry --help` and a mistyped flag answer at once: SQLAlchemy, pydantic and numpy (most of a second
    of imports) load only when a command runs."""
    code = (
        "import sys; from ferry.cli.main import build_parser; build_parser()\n"
        "print(sorted(m for m in ('sqlalchemy', 'pydantic', 'numpy', 'fsspec', 'uvicorn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    usage = subprocess.run([FERRY_BIN, "list", "--no-such-flag"], capture_output=True, text=True)
    assert usage.returncode == 2 and "--no-such-flag" in usage.stderr


def test_every_flag_has_help_text():
    def walk(parser: argparse.ArgumentParser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    yield from walk(child)
            elif action.option_strings:
                yield parser.prog, action

    undocumented = [f"{prog} {a.option_strings[0]}" for prog, a in walk(build_parser()) if not a.help]
    assert undocumented == []


def test_two_adds_at_once_both_survive(ferry: Ferry):
    ferry.service()
    procs = [
        subprocess.Popen(
            [FERRY_BIN, "model", "add", "--engine", "custom", "--endpoint", f"e{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    eps = ferry("model", "endpoints", "--json").json()
    assert set(eps["endpoints"]) == {"e0", "e1", "e2", "e3"} and eps["revision"] == 5


BAD_INPUT = [
    (["--id", "nope", "history"], "no service with id 'nope'"),
    (["model", "upload", "--name", "m", "--path", "missing.pkl"], "missing.pkl"),
    (["model", "add", "--engine", "custom", "--endpoint", "e", "--preprocess", "missing.py"], "missing.py"),
    (["model", "add", "--engine", "custom", "--endpoint", "e", "--input-size", "[1, x]"], "bad --input-size"),
    (["model", "add", "--engine", "custom", "--endpoint", "e", "--input-type", "float33"], "unknown dtype"),
    (["model", "add", "--engine", "onnx", "--endpoint", "e"], "invalid choice: 'onnx'"),
    (["model", "add", "--engine", "custom", "--endpoint", "a/b"], "for a version give --endpoint a --version b"),
    (["model", "add", "--engine", "custom", "--endpoint", "a b"], "no '/', no spaces"),
    (["model", "add", "--engine", "sklearn", "--endpoint", "e", "--name", "nothing"], "no model matches"),
    (["model", "add", "--engine", "sklearn", "--endpoint", "e"], "needs a model"),
    (["model", "add", "--engine", "sklearn", "--endpoint", "e", "--model-id", "zzz"], "no model with id"),
    (["rollback", "--to", "99"], "has no revision 99"),
    (["model", "remove", "--endpoint", "ghost"], "no endpoint, canary or auto-update rule 'ghost'"),
    (["model", "publish", "--model-id", "zzz"], "no model with id"),
    (["config", "--metric-log-freq", "3"], "metric_log_freq"),
    (["model", "add", "--engine", "triton", "--endpoint", "e", "--model-id", "zzz"], "no model with id"),
    (["model", "add", "--engine", "custom", "--endpoint", "e", "--aux-config", "a=1", "a.b=2"], "already set"),
    (["model", "add", "--engine", "custom", "--endpoint", "e", "--preprocess", "broken.py"], "'broken.py' line 2: Syn"),
]
BROKEN = "class Preprocess:\n    def process(self, data, state, collect=None)\n        return data\n"
"""A preprocess file that does not parse (the colon after the signature is missing)."""


def test_bad_input_is_one_line_and_changes_nothing(ferry_sqlite: Ferry):
    sid = ferry_sqlite.service()
    (ferry_sqlite.cwd / "broken.py").write_text(BROKEN)
    for args, message in BAD_INPUT:
        result = ferry_sqlite(*args, ok=False)
        assert message in result.err, args
        assert "Traceback" not in result.err and len(result.err.strip().splitlines()) == 1, result.err
    assert ferry_sqlite("--id", sid, "history", "--json").json()[-1]["revision"] == 1
    assert ferry_sqlite("model", "list", "--json").json() == []
    home = Path(os.environ["FERRY_HOME"])
    leftovers = [p for p in home.rglob("*") if ".staging" in p.parts or p.name.startswith(".download")]
    assert leftovers == []


def test_ambiguous_service_name_lists_ids(ferry_sqlite: Ferry):
    a = ferry_sqlite.service("twin")
    b = ferry_sqlite.service("twin")
    err = ferry_sqlite("history", ok=False).err
    assert a in err and b in err
    assert ferry_sqlite("--id", b, "history", "--json").json()[0]["revision"] == 1
    assert ferry_sqlite("history", "--json", env={"FERRY_SERVICE": a}).json()[0]["revision"] == 1


def test_triton_engine_needs_a_configured_server(ferry_sqlite: Ferry, files: dict[str, Path]):
    ferry_sqlite.service()
    mid = model_id(ferry_sqlite("model", "upload", "--name", "m", "--path", str(files["model"])).out)
    err = ferry_sqlite("model", "add", "--engine", "triton", "--endpoint", "t", "--model-id", mid, ok=False).err
    assert "ferry config --triton-grpc-server HOST:PORT" in err and "--engine onnxruntime" in err
    ferry_sqlite("config", "--triton-grpc-server", "127.0.0.1:8001")
    assert ferry_sqlite("model", "add", "--engine", "triton", "--endpoint", "t", "--model-id", mid).out.startswith(
        "revision 3: endpoint t added (triton"
    )


def test_upload_to_an_s3_destination(ferry_sqlite: Ferry, files, s3_bucket: str):
    """`--destination s3://...` on an S3-compatible server (moto): the bytes land there, content-addressed."""
    import boto3

    ferry_sqlite.service()
    dest = f"s3://{s3_bucket}/models"
    mid = model_id(
        ferry_sqlite("model", "upload", "--name", "m", "--path", str(files["model"]), "--destination", dest).out
    )
    (record,) = ferry_sqlite("model", "list", "--json").json()
    assert record["id"] == mid and record["url"].startswith(f"s3://{s3_bucket}/models/")
    key = record["url"].removeprefix(f"s3://{s3_bucket}/")
    body = boto3.client("s3").get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    assert body == files["model"].read_bytes()


def test_model_delete_refuses_a_served_model_and_keeps_shared_bytes(ferry: Ferry, files: dict[str, Path]):
    sid = ferry.service("shop")
    served = model_id(ferry("model", "upload", "--name", "m", "--path", str(files["model"])).out)
    twin = model_id(ferry("model", "upload", "--name", "twin", "--path", str(files["model"])).out)
    ferry("model", "add", "--engine", "sklearn", "--endpoint", "price", "--version", "2", "--model-id", served)

    refused = ferry("model", "delete", "--model-id", served, ok=False)
    assert f"model {served} is served by service 'shop' ({sid}) endpoint(s) price/2" in refused.err
    assert f"`ferry --id {sid} model remove --endpoint price/2`" in refused.err and "--force" in refused.err
    assert {m["id"] for m in ferry("model", "list", "--json").json()} == {served, twin}

    forced = ferry("model", "delete", "--model-id", served, "--force")
    assert forced.out.strip() == f"Model {served} deleted" and "fail to load" in forced.err
    (left,) = ferry("model", "list", "--json").json()
    assert left["id"] == twin and Path(left["url"].removeprefix("file://")).read_bytes() == files["model"].read_bytes()

    ferry("model", "delete", "--model-id", twin)  # nothing serves it, nothing else holds its bytes
    assert not Path(left["url"].removeprefix("file://")).exists()
    assert "no model with id" in ferry("model", "delete", "--model-id", twin, ok=False).err


def test_two_tags_at_once_both_land(ferry: Ferry, files: dict[str, Path]):
    mid = model_id(ferry("model", "upload", "--name", "m", "--path", str(files["model"])).out)
    procs = [
        subprocess.Popen(
            [FERRY_BIN, "model", "tag", "--model-id", mid, "--tags", f"t{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    (model,) = ferry("model", "list", "--json").json()
    assert model["tags"] == ["t0", "t1", "t2", "t3"]

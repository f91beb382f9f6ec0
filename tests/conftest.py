"""Shared fixtures: a throwaway FERRY_HOME, real PostgreSQL and S3-compatible servers, the `ferry` command."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from filelock import FileLock

from tests import cli_runner

FERRY_BIN = str(Path(sys.executable).with_name("ferry"))

os.environ["FERRY_WORKERS"] = "1"
"""Every `ferry serve` a test starts runs one worker unless it asks for more: the pytest-xdist workers already use
the cores, and `auto` (the default) would start one per core in each. tests/e2e/test_serve.py runs `auto`."""


PORTS = range(20000, 32768)
"""Where ``free_port`` picks: below Linux's ephemeral range (32768-60999), which the kernel also hands out as the
source port of every outgoing connection, so a port found free there could be taken by a connection before
the server binds it (a CI run failed "Address already in use" so)."""
_given_ports: set[int] = set()


def free_port() -> int:
    """A port on 127.0.0.1 free now, picked at random outside the ephemeral range, never twice in this run: the
    pytest-xdist workers claim each port they give in a folder they share (``_claim``), since a server binds its
    port only once its first revision loaded, seconds after the pick (a run lost a port to the other worker so)."""
    rng = random.SystemRandom()
    while True:
        port = rng.choice(PORTS)
        if port in _given_ports or not _claim(port):
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given_ports.add(port)
        return port


def _claims() -> Path | None:
    """The folder where this run's xdist workers claim ports; None without workers."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    return Path(tempfile.gettempdir()) / f"ferry-test-ports-{run}" if run else None


def _claim(port: int) -> bool:
    """Claim ``port`` for this run's workers (a file created once); True when no other worker has it."""
    folder = _claims()
    if folder is None:
        return True  # one process: _given_ports is enough
    folder.mkdir(exist_ok=True)
    try:
        os.close(os.open(folder / str(port), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Each worker removes its port claims; the last one out, the folder."""
    folder = _claims()
    if folder is None:
        return
    for port in _given_ports:
        (folder / str(port)).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (scripts/test.sh: ``-n 2 --dist loadgroup``) a module's tests run on one worker,
    as they share its servers, and the Ray package's together, as they share its cluster."""
    for item in items:
        group = "ray" if "on_ray" in item.path.parts else str(item.path)
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture
def ferry_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "ferry-home"
    for name in ("FERRY_STORE", "FERRY_ARTIFACT_ROOT", "FERRY_SERVICE", "FERRY_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FERRY_HOME", str(home))
    return home


# --- PostgreSQL ---------------------------------------------------------------------------------


def _pg_bin() -> Path:
    """PostgreSQL's bin folder; the test fails in CI (which must have it) and is skipped elsewhere without it."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        message = "PostgreSQL is not installed (scripts/test.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return Path(found[-1]).parent


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="session")
def pg_server():
    """A PostgreSQL server of our own on a free loopback port, for the whole session."""
    bindir = _pg_bin()
    root = Path(tempfile.mkdtemp(prefix="ferry-pg-"))  # not under pytest's 0700 root-only tmp
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    port = free_port()
    subprocess.run(
        _as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]),
        check=True,
        capture_output=True,
    )
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    log = root / "pg.log"
    subprocess.run(
        _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts, "-w", "start"]),
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: str):
    """A fresh, empty database on the session's server."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    plain = pg_server.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(f"{plain}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"{pg_server}/{name}"
    with psycopg.connect(f"{plain}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, ferry_home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test using this runs twice: on SQLite under FERRY_HOME and on a real PostgreSQL database."""
    sqlite = f"sqlite:///{ferry_home / 'ferry.db'}"
    url = sqlite if request.param == "sqlite" else request.getfixturevalue("pg_url")
    monkeypatch.setenv("FERRY_STORE", url)
    return url


# --- an S3-compatible server (moto) -----------------------------------------------------------


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """A fresh bucket on the moto server, reached the way users reach any S3-compatible server."""
    import boto3
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # Keep the developer's own AWS config and profiles out of the test.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    bucket = f"ferry-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    s3fs.S3FileSystem.clear_instance_cache()
    yield bucket
    s3fs.S3FileSystem.clear_instance_cache()


# --- the Hugging Face example's model, trained once ------------------------------------------------


@dataclass(frozen=True)
class TrainedExample:
    """What examples/huggingface/train.py --quick wrote: the fine-tuned model and its preprocess folder."""

    hf: Path
    preprocess: Path


def once_per_run(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]) -> Path:
    """The folder ``name`` that ``make(folder)`` filled, made once per run: under pytest-xdist the workers share
    it (the first to take the lock makes it, the others wait and read it), as a session fixture alone would
    make it once per worker. Only for what the tests read and none writes to."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the run's root, shared by the workers
    folder = root / f"shared-{name}"
    with FileLock(root / f"shared-{name}.lock"):
        done = folder / ".done"
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed try left
            folder.mkdir()
            make(folder)
            done.touch()
    return folder


def _train_hf_example(root: Path) -> None:
    train = Path(__file__).resolve().parents[1] / "examples" / "huggingface" / "train.py"
    argv = [sys.executable, str(train), str(root / "hf-model"), "--preprocess-dir", str(root / "preprocess"), "--quick"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, f"{argv} failed:\n{proc.stderr[-3000:]}{proc.stdout}"


@pytest.fixture(scope="session")
def hf_example(tmp_path_factory: pytest.TempPathFactory) -> TrainedExample:
    """The example's MiniLM fine-tuned with --quick (~10-16 s), once per run, shared by the xdist workers:
    tests read it, none writes to it."""
    root = once_per_run(tmp_path_factory, "hf-example", _train_hf_example)
    return TrainedExample(root / "hf-model", root / "preprocess")


# --- the real command ---------------------------------------------------------------------------


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


class Ferry:
    """The `ferry` command with the test's environment: its ``main(argv)`` in this process (tests/cli_runner.py:
    a subprocess costs most of a second of imports a call), or with ``process=True`` (here or per call) the
    installed console script in a subprocess, for what only a process shows: signals, the exit of the script,
    `serve` and `triton sync --watch`, which the in-process runner refuses."""

    def __init__(self, cwd: Path, process: bool = False) -> None:
        self.cwd = cwd
        self.process = process

    def __call__(
        self, *args: str, ok: bool = True, env: dict[str, str] | None = None, process: bool | None = None
    ) -> Result:
        run = self._subprocess if (self.process if process is None else process) else self._in_process
        result = run(list(args), env or {})
        if ok and result.code != 0:
            raise AssertionError(f"ferry {' '.join(args)} failed ({result.code}):\n{result.err}{result.out}")
        if not ok and result.code == 0:
            raise AssertionError(f"ferry {' '.join(args)} should have failed:\n{result.out}")
        return result

    def _in_process(self, args: list[str], env: dict[str, str]) -> Result:
        return Result(*cli_runner.run(args, self.cwd, env))

    def _subprocess(self, args: list[str], env: dict[str, str]) -> Result:
        proc = subprocess.run(
            [FERRY_BIN, *args],
            capture_output=True,
            text=True,
            cwd=self.cwd,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def service(self, name: str = "serving example") -> str:
        out = self("create", "--name", name).out
        return out.strip().rsplit("id=", 1)[1]


@pytest.fixture
def ferry(store_url: str, tmp_path: Path) -> Ferry:
    """The `ferry` command against a fresh store (runs on SQLite and on PostgreSQL)."""
    return Ferry(tmp_path)


@pytest.fixture
def ferry_sqlite(ferry_home: Path, tmp_path: Path) -> Ferry:
    """The `ferry` command against the default embedded store only."""
    return Ferry(tmp_path)

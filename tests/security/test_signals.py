"""Every long-running command stops within 5 s of SIGINT or SIGTERM, whatever it waits on, and leaves no process
behind (docs: README, "Stopping").

`ferry serve` (starting, loading a model for minutes, serving requests that outlast the drain, the store refused,
silent or locked, several workers) and `ferry triton sync --watch` (loading in a real Triton over gRPC and HTTP,
Triton refused or silent, the store silent or locked): 20 runs per command, each sent SIGINT or SIGTERM at a
random moment of its start or of its work (the seed is printed; FERRY_SIGNALS_SEED replays one), some started with
SIGINT ignored as a background job of a script starts (the cause of a CI failure: the watch never stopped).
A process may exit 0 (the stop finished), 128 + the signal (cut short: a deadline, a second signal), or die of the
signal (it came before Python ran ferry's code). `ferry serve --ray`: tests/e2e/on_ray/test_signals.py.

SIGTERM's moment counts from the start of the process; SIGINT's from when ferry handles it. Before that, Python's
own KeyboardInterrupt landed wherever the process was, and 3 of 36 such SIGINTs during `ferry.cli.main`'s imports
crashed the process (SIGSEGV inside orjson's module init); the console script (`ferry.cli.entry`) now exits 130 on
a SIGINT until the command starts (40 SIGINTs 0.02-0.6 s after spawn, by hand: 37 stops with 0, 3 exits with 130,
no crash).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import sqlite3
import subprocess
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import FERRY_BIN, Ferry, free_port
from tests.process import wait_until
from tests.triton import MODEL_PY_HEADER, Triton

pytestmark = pytest.mark.e2e

STOP_BOUND_S = 5.0
"""What the issue asks: gone within 5 s of the signal."""
RUNS = 20
PARALLEL = 4
"""Runs at once (each its own process group): the 20 runs of a command take about a minute."""
SEED = int(os.environ.get("FERRY_SIGNALS_SEED") or random.SystemRandom().randrange(10**6))
IGNORE_SIGINT = ["bash", "-c", 'trap "" INT; exec "$@"', "bash"]
"""Start a command with SIGINT ignored, as `cmd &` in a non-interactive shell does."""


@dataclass
class Run:
    """One command started, signalled at a moment and measured; ``during`` runs beside it until the signal."""

    scenario: str
    argv: list[str]
    env: dict[str, str]
    sig: int
    delay: float
    after: str = ""
    """Wait for this text in the output first (a process that ignores SIGINT until ferry's code runs)."""
    after_s: float = 60.0
    ignore_sigint: bool = False
    during: Callable[[Run, threading.Event], None] | None = None
    cwd: Path | None = None
    log: Path | None = None
    status: int | None = None
    took: float | None = None
    problems: list[str] = field(default_factory=list)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log and self.log.exists() else ""

    def line(self) -> str:
        name = signal.Signals(self.sig).name
        took = f"{self.took:.2f} s" if self.took is not None else "-"
        return f"{self.scenario:<28} {name:<7} at {self.delay:4.2f} s{' after ' + repr(self.after) if self.after else ''}: status {self.status}, gone in {took}"  # noqa: E501


def execute(run: Run, workdir: Path, index: int) -> Run:
    """Start ``run``, signal it, wait at most STOP_BOUND_S, check its status and that its process group is empty."""
    run.log = workdir / f"run-{index:02d}-{run.scenario}.log"
    argv = [*(IGNORE_SIGINT if run.ignore_sigint else []), FERRY_BIN, *run.argv]
    with open(run.log, "wb") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=run.cwd or workdir,
            env={**os.environ, **run.env}, start_new_session=True,
        )  # fmt: skip
    stop = threading.Event()
    beside = threading.Thread(target=run.during, args=(run, stop), daemon=True) if run.during else None
    try:
        if beside is not None:
            beside.start()
        if run.after:
            deadline = time.monotonic() + run.after_s
            while run.after not in run.output() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if run.after not in run.output():
                run.problems.append(f"never printed {run.after!r}")
        elif run.sig == signal.SIGINT:  # from when ferry handles it (see the module's text)
            deadline = time.monotonic() + run.after_s
            while not handles_sigterm(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
        time.sleep(run.delay)
        if proc.poll() is not None:
            run.problems.append(f"exited ({proc.returncode}) before the signal")
            run.status = proc.returncode
            return run
        os.kill(proc.pid, run.sig)
        sent = time.monotonic()
        try:
            run.status = proc.wait(STOP_BOUND_S)
            run.took = time.monotonic() - sent
        except subprocess.TimeoutExpired:
            run.problems.append(f"still running {STOP_BOUND_S:g} s after {signal.Signals(run.sig).name}")
        allowed = {0, 128 + run.sig, -run.sig}
        if run.status is not None and run.status not in allowed:
            run.problems.append(f"status {run.status}, not one of {sorted(allowed)}")
        left = left_behind(proc.pid, within=1.0)
        if left:
            run.problems.append(f"left behind: {left}")
        return run
    finally:
        stop.set()
        if proc.poll() is None or left_behind(proc.pid, within=0):
            with_group_killed(proc)


def handles_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has a handler for SIGTERM: ferry's (Python installs none of its own)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            caught = next(line for line in status if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)))


def left_behind(group: int, within: float) -> list[str]:
    """Live processes of process group ``group`` (zombies do not count), waiting ``within`` s for them to go."""
    deadline = time.monotonic() + within
    while True:
        found = []
        for p in psutil.process_iter(["pid", "status", "cmdline"]):
            try:
                if os.getpgid(p.pid) == group and p.info["status"] != psutil.STATUS_ZOMBIE:
                    found.append(f"{p.pid} {' '.join(p.info['cmdline'] or [])[:120]}")
            except (ProcessLookupError, psutil.Error):
                continue
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


def with_group_killed(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def execute_all(runs: list[Run], workdir: Path, between: Callable[[], None] | None = None) -> None:
    """The runs, PARALLEL at a time (``between`` after each batch); one assertion naming every failed run."""
    print(f"\nFERRY_SIGNALS_SEED={SEED}")
    for start in range(0, len(runs), PARALLEL):
        batch = list(enumerate(runs))[start : start + PARALLEL]
        with ThreadPoolExecutor(len(batch)) as pool:
            list(pool.map(lambda item: execute(item[1], workdir, item[0]), batch))
        if between is not None:
            between()
    for run in runs:
        print(run.line())
    failed = [f"{run.line()}: {'; '.join(run.problems)}\n{run.output()}" for run in runs if run.problems]
    assert not failed, f"FERRY_SIGNALS_SEED={SEED}: {len(failed)} of {len(runs)} runs failed:\n" + "\n".join(failed)


# --- what the commands wait on ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers: a store or a Triton that hangs."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(512)  # never accepted: the kernel completes the handshakes, nothing is ever sent
        yield server.getsockname()[1]


def refused_port() -> int:
    return free_port()  # nothing listens there: PostgreSQL or Triton down


@contextlib.contextmanager
def locked(home: Path) -> Iterator[None]:
    """The SQLite store of ``home`` write-locked by another connection: every write waits (30 s busy timeout)."""
    conn = sqlite3.connect(home / "ferry.db", timeout=30, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def store_env(home: Path) -> dict[str, str]:
    return {"FERRY_HOME": str(home), "FERRY_STORE": "", "FERRY_SERVICE": "", "FERRY_ARTIFACT_ROOT": ""}


def postgres_env(port: int) -> dict[str, str]:
    return {"FERRY_STORE": f"postgresql+psycopg://postgres@127.0.0.1:{port}/ferry", "FERRY_SERVICE": ""}


def write(path: Path, source: str) -> Path:
    path.write_text(textwrap.dedent(source))
    return path


# --- ferry serve -------------------------------------------------------------------------------------------

SLEEPY = """
    import time

    class Preprocess:
        def process(self, data, state, collect=None):
            time.sleep(float(data.get("sleep", 0)))
            return {"slept": data.get("sleep", 0)}
    """
SLOW_LOAD = """
    import time

    class Preprocess:
        def load(self, local_file_name):
            time.sleep(120)

        def process(self, data, state, collect=None):
            return {}
    """
SERVE_ENV = {"FERRY_POLL_INTERVAL": "0.2", "FERRY_HEARTBEAT_INTERVAL": "0.5", "FERRY_METRICS": "0"}


@dataclass(frozen=True)
class Homes:
    """Stores for the `ferry serve` runs: ``ready`` (endpoints that load at once), ``slow`` (a load of 2 minutes),
    ``locked`` (write-locked for the test's length)."""

    ready: Path
    slow: Path
    locked: Path


@pytest.fixture(scope="module")
def homes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Homes]:
    root = tmp_path_factory.mktemp("signals-serve")
    found = Homes(root / "ready", root / "slow", root / "locked")
    ferry = Ferry(root)
    for home in (found.ready, found.slow, found.locked):
        ferry("create", "--name", home.name, env=store_env(home))
    sleepy = write(root / "sleepy.py", SLEEPY)
    for home in (found.ready, found.locked):
        ferry("model", "add", "--engine", "custom", "--endpoint", "sleepy", "--preprocess", str(sleepy),
              env=store_env(home))  # fmt: skip
    (root / "model.bin").write_bytes(b"a model file")  # load(local_file_name) runs for an endpoint with a model
    model = ferry("model", "upload", "--name", "m", "--path", str(root / "model.bin"), env=store_env(found.slow))
    ferry("model", "add", "--engine", "custom", "--endpoint", "slow", "--model-id", model.out.strip().rsplit("=", 1)[1],
          "--preprocess", str(write(root / "slow.py", SLOW_LOAD)), env=store_env(found.slow))  # fmt: skip
    with locked(found.locked):
        yield found


def requests_in_flight(port: int, sleeps: tuple[float, ...]) -> Callable[[Run, threading.Event], None]:
    """Once the server is ready, one request per ``sleeps`` (seconds its process() sleeps), until the signal."""

    def send(run: Run, stop: threading.Event) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            while not stop.is_set():
                try:
                    if client.get("/health/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            with ThreadPoolExecutor(len(sleeps)) as pool:
                for seconds in sleeps:
                    pool.submit(_post, client, {"sleep": seconds})

    return send


def _post(client: httpx.Client, body: dict) -> None:
    with contextlib.suppress(httpx.HTTPError):  # abandoned by the stop: closed, or answered an error
        client.post("/serve/sleepy", json=body)


def serve_runs(homes: Homes, silent: int, rng: random.Random) -> list[Run]:
    """20 `ferry serve` runs over what it can wait on; each signal at a random moment of its window."""

    def run(scenario: str, env: dict[str, str], window: float, *args: str, **kw) -> Run:
        port = free_port()
        sig = kw.pop("sig", None) or rng.choice((signal.SIGINT, signal.SIGTERM))
        during = kw.pop("during", None)
        built = Run(scenario, ["serve", "--port", str(port), *args], {**SERVE_ENV, **env}, sig,
                    round(rng.uniform(0, window), 2), **kw)  # fmt: skip
        built.during = during(port) if during else None
        return built

    ready, slow, locked_home = store_env(homes.ready), store_env(homes.slow), store_env(homes.locked)
    runs = []
    for _ in range(3):
        runs.append(run("starting, then serving", ready, 4.0))
        runs.append(run("loading a model for 2 min", slow, 5.0))
        runs.append(run("requests outlasting drain", ready, 5.0, during=lambda p: requests_in_flight(p, (0.5, 30, 30))))
        runs.append(run("SIGINT ignored, serving", ready, 2.0, sig=signal.SIGINT, after="serving service",
                        ignore_sigint=True))  # fmt: skip
    for _ in range(2):
        runs.append(run("the store refused", postgres_env(refused_port()), 4.0, "--id", "abc"))
        runs.append(run("the store silent", postgres_env(silent), 3.0, "--id", "abc"))
        runs.append(run("the store write-locked", locked_home, 4.0))
        runs.append(run("2 workers", ready, 7.0, "--workers", "2"))
    assert len(runs) == RUNS
    rng.shuffle(runs)
    return runs


def test_serve_stops_within_5_s_of_a_signal_at_any_moment(homes: Homes, silent_port: int, tmp_path: Path):
    execute_all(serve_runs(homes, silent_port, random.Random(SEED)), tmp_path)


def test_serve_drains_what_ends_in_time_and_a_second_signal_ends_it_at_once(homes: Homes, tmp_path: Path):
    """SIGTERM with a 1 s and a 60 s request in flight: the first is answered 200, the other abandoned, and the
    process exits 0 after the 2 s drain (and up to 1 s for the unload). Again with a second SIGTERM 0.3 s after
    the first: gone at once, status 143."""
    status, took, answers, text = stop_with_requests_in_flight(homes.ready, tmp_path, second=False)
    assert status == 0 and 1.5 < took < 4.0, (status, took, text)
    assert answers[1.0] == 200 and answers[60.0] == 503, (answers, text)  # drained; abandoned, told to retry
    assert "1 request(s) still running" in text  # the unload says what it cut short
    assert Ferry(tmp_path)("status", "--json", env=store_env(homes.ready)).json()["instances"] == []

    status, took, answers, text = stop_with_requests_in_flight(homes.ready, tmp_path, second=True)
    assert status == 143 and took < 1.5, (status, took, text)
    assert "SIGTERM again: exiting now" in text


def stop_with_requests_in_flight(home: Path, workdir: Path, second: bool) -> tuple[int, float, dict, str]:
    """`ferry serve` with requests of 1 s and 60 s in flight, sent SIGTERM (twice when ``second``): its status,
    how long it took to go, the answers by request, its output."""
    port = free_port()
    log = workdir / f"serve-{port}.log"
    env = {**os.environ, **SERVE_ENV, **store_env(home)}
    with open(log, "wb") as out:
        command = [FERRY_BIN, "serve", "--port", str(port)]
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    answers: dict[float, object] = {}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=70) as client:
            wait_until(proc, "ferry serve", lambda: client.get("/health/ready").status_code == 200, 60, "ready",
                       lambda: log.read_text(errors="replace"))  # fmt: skip

            def post(seconds: float) -> None:
                try:
                    answers[seconds] = client.post("/serve/sleepy", json={"sleep": seconds}).status_code
                except httpx.HTTPError as exc:
                    answers[seconds] = type(exc).__name__

            senders = [threading.Thread(target=post, args=(seconds,)) for seconds in (1.0, 60.0)]
            for sender in senders:
                sender.start()
            time.sleep(0.5)  # both in flight
            proc.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            if second:
                time.sleep(0.3)
                proc.send_signal(signal.SIGTERM)
            status = proc.wait(STOP_BOUND_S)
            took = time.monotonic() - sent
            for sender in senders:
                sender.join(10)
    finally:
        with_group_killed(proc)
    return status, took, answers, log.read_text(errors="replace")[-3000:]


# --- ferry triton sync --watch -----------------------------------------------------------------------------

LOADING = """
import time

class TritonPythonModel:
    def initialize(self, args):
        time.sleep(3)

    def execute(self, requests):
        return []
"""
WATCHERS = 4
"""Services whose watches may run at once, each with its own Triton model."""


@dataclass(frozen=True)
class Watched:
    triton: Triton
    home: Path
    services: list[str]


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watched]:
    """A tritonserver in explicit mode, and WATCHERS services each with a triton endpoint whose load takes 3 s."""
    root = tmp_path_factory.mktemp("signals-watch")
    (root / "models").mkdir()
    home, ferry = root / "home", Ferry(root)
    folder = root / "loading"
    folder.mkdir()
    (folder / "model.py").write_text(MODEL_PY_HEADER + LOADING)
    with Triton(root / "models", explicit=True) as triton:
        services = []
        for n in range(WATCHERS):
            sid = ferry("create", "--name", f"watched {n}", env=store_env(home)).out.strip().rsplit("id=", 1)[1]
            ferry("--id", sid, "config", "--triton-grpc-server", triton.grpc_address, env=store_env(home))
            model = ferry("--id", sid, "model", "upload", "--name", f"loading{n}", "--path", str(folder),
                          env=store_env(home)).out.strip().rsplit("=", 1)[1]  # fmt: skip
            ferry("--id", sid, "model", "add", "--engine", "triton", "--endpoint", f"loading{n}", "--model-id", model,
                  "--input-name", "INPUT0", "--input-type", "float32", "--input-size", "[-1, 2]",
                  "--output-name", "OUTPUT0", "--output-type", "float32", "--output-size", "[-1, 2]",
                  "--aux-config", "max_batch_size=8", env=store_env(home))  # fmt: skip
            services.append(sid)
        yield Watched(triton, home, services)


def unload_all(triton: Triton) -> Callable[[], None]:
    """After a batch: Triton unloads every model, and forgets the folders, so the next watches load again."""

    def unload() -> None:
        # Triton unloads in the background: its folders go only once nothing is loading, loaded or unloading
        # (tritonserver 2.x crashed, SIGSEGV, when a folder went while its model was still unloading).
        triton.wait_for(lambda: not any(m.get("state") == "LOADING" for m in triton.index()), 30, "loads done")
        seen: list[list[dict]] = [[]]

        def unloaded() -> bool:
            # Asked again while any is still up: a load the killed watch had asked for can land after the first ask.
            seen[0] = triton.index()
            up = [m["name"] for m in seen[0] if m.get("state") in ("READY", "LOADING", "UNLOADING")]
            for name in up:
                if next(m for m in seen[0] if m["name"] == name).get("state") == "READY":
                    triton.client.post(f"/v2/repository/models/{name}/unload")
            return not up

        try:
            triton.wait_for(unloaded, 30, "models unloaded")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nthe model index last: {seen[0]}") from None
        for folder in triton.repository.iterdir():
            subprocess.run(["rm", "-rf", str(folder)], check=True)

    return unload


def watch_runs(watched: Watched, homes: Homes, silent: int, rng: random.Random) -> list[Run]:
    """20 watch runs: 12 that load in Triton, in batches of WATCHERS (one service each), then 8 that wait on
    something away (Triton refused or silent, the store silent or write-locked)."""
    triton, repository = watched.triton, str(watched.triton.repository)

    def run(scenario: str, window: float, sid: str, *args: str, home: Path | None = None, **kw) -> Run:
        sig = kw.pop("sig", None) or rng.choice((signal.SIGINT, signal.SIGTERM))
        env = kw.pop("env", None) or store_env(home or watched.home)
        argv = [*(["--id", sid] if sid else []), "triton", "sync", "--model-repository", repository, "--watch",
                "--interval", "0.2", *args]  # fmt: skip
        return Run(scenario, argv, env, sig, round(rng.uniform(0, window), 2), **kw)

    def ignoring(sid: str, *args: str) -> Run:
        return run("SIGINT ignored, loading", 3.0, sid, *args, sig=signal.SIGINT, after="Ctrl-C stops",
                   ignore_sigint=True)  # fmt: skip

    sids, http = watched.services, ("--triton-url", triton.url)
    loading = [run("loading over gRPC", 5.0, sid) for sid in sids]
    loading += [run("loading over HTTP", 5.0, sid, *http) for sid in sids[:2]] + [
        ignoring(sid, *http) for sid in sids[2:]
    ]
    loading += [ignoring(sid) for sid in sids]
    sid = sids[0]
    away = [
        run("Triton refused, gRPC", 3.0, sid, "--triton-url", f"grpc://127.0.0.1:{refused_port()}"),
        run("Triton refused, HTTP", 3.0, sid, "--triton-url", f"127.0.0.1:{refused_port()}"),
        *(run("Triton silent, gRPC", 4.0, sid, "--triton-url", f"grpc://127.0.0.1:{silent}") for _ in range(2)),
        *(run("Triton silent, HTTP", 4.0, sid, "--triton-url", f"127.0.0.1:{silent}") for _ in range(2)),
        run("the store silent", 3.0, "abc", env=postgres_env(silent)),
        run("the store write-locked", 3.0, "", home=homes.locked),
    ]
    for batch in range(0, len(loading), WATCHERS):  # shuffled within each batch: one service a watch
        loading[batch : batch + WATCHERS] = rng.sample(loading[batch : batch + WATCHERS], WATCHERS)
    runs = loading + rng.sample(away, len(away))
    assert len(runs) == RUNS and PARALLEL == WATCHERS
    return runs


def test_triton_sync_watch_stops_within_5_s_of_a_signal_at_any_moment(
    watched: Watched, homes: Homes, silent_port: int, tmp_path: Path
):
    runs = watch_runs(watched, homes, silent_port, random.Random(SEED + 1))
    execute_all(runs, tmp_path, between=unload_all(watched.triton))
    stopped = [run for run in runs if run.status == 0 and "Ctrl-C stops" in run.output()]
    assert all("stopped" in run.output() for run in stopped), [run.output() for run in stopped]
    listed = Ferry(tmp_path)("list", "--json", env=store_env(watched.home)).json()
    assert all(service.get("instances", 0) == 0 for service in listed), listed  # each deregistered on its way out

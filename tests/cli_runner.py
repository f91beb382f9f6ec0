"""Run one `ferry` command inside the test process, as a fresh `ferry` process would have run it.

A subprocess costs 0.6-1 s of imports per call and the suite makes several hundred calls, so the tests call
``ferry.cli.main.main(argv)`` here instead. What the process gave is kept: the environment and working directory
of the call (restored after), an empty stdin that is no terminal, stdout and stderr captured apart, the exit
status (``SystemExit`` included), a traceback on stderr and status 1 for an unexpected exception, log records
and Python warnings printed to stderr as an unconfigured process prints them, and none of the per-process
memory a command fills (the stores found ready, the warnings given once) carried from one call to the next.
Commands that run until a signal (`serve`, `triton sync --watch`) are refused: they need a process.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

_LOCK = threading.Lock()
"""One command at a time in this process: streams, environment, working directory and signals are process-wide."""
THREAD_EXIT_S = 30.0
"""How long a command's non-daemon threads may run on after it returns (a process waits for them at exit)."""


def run(argv: list[str], cwd: Path, env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``ferry *argv`` in this process from ``cwd`` with ``env`` over ``os.environ``: (status, stdout, stderr)."""
    with _LOCK:
        refuse_long_running(argv)
        out, err = _Captured(), _Captured()
        with _process_state(cwd, env or {}, out, err):
            code = _main(argv)
        return code, out.getvalue(), err.getvalue()


def refuse_long_running(argv: list[str]) -> None:
    """A command that serves or follows until SIGINT or SIGTERM would block the test process and install its
    signal handlers in it: such a command must run as a process (``process=True``)."""
    from ferry.cli import serve, triton
    from ferry.cli.main import build_parser

    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            args = build_parser().parse_args(argv)
    except SystemExit:  # --help, --version or a usage error: main ends the same way before any command runs
        return
    waits = args.func is serve.serve or (args.func is triton.sync and args.watch)
    assert not waits, (
        f"`ferry {' '.join(argv)}` runs until a signal and never runs inside the test process: "
        "run it as a process, with Ferry(cwd, process=True) or ferry(..., process=True)"
    )


def _main(argv: list[str]) -> int:
    """``main(argv)``'s status, or what the interpreter makes of a ``SystemExit`` or an exception that escapes it."""
    from ferry.cli.main import main

    try:
        return main(list(argv))
    except SystemExit as exc:
        return _exit_status(exc.code)
    except Exception:  # a process prints the traceback and exits 1 (pytest's timeout and Ctrl-C pass through)
        traceback.print_exc(file=sys.stderr)
        return 1


def _exit_status(code: object) -> int:
    """The status ``sys.exit(code)`` gives a process: None is 0, an int itself, anything else printed and 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


class _Captured(io.StringIO):
    """A captured stream that tells the truth a pipe would: no terminal, UTF-8 text."""

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def _process_state(cwd: Path, env: Mapping[str, str], out: io.StringIO, err: io.StringIO) -> Iterator[None]:
    """What a fresh process would have had, set up for one call and put back after it."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(_environment(env))
        stack.enter_context(_working_directory(cwd))
        stack.enter_context(_stdin_from_devnull())
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        stack.enter_context(_signal_handlers_kept())
        stack.enter_context(_fresh_process_memory())
        stack.enter_context(_warnings_as_a_process_prints_them())
        stack.enter_context(_logging_as_a_process_prints_it(out, err))
        stack.enter_context(_threads_finished())
        yield


@contextlib.contextmanager
def _environment(overlay: Mapping[str, str]) -> Iterator[None]:
    """``overlay`` over ``os.environ`` for the call; afterwards every variable is as before (the command's own
    writes, such as ``os.environ.setdefault``, undone too)."""
    before = dict(os.environ)
    os.environ.update(overlay)
    try:
        yield
    finally:
        for name in [name for name in os.environ if name not in before]:
            del os.environ[name]
        for name, value in before.items():
            if os.environ.get(name) != value:
                os.environ[name] = value


@contextlib.contextmanager
def _working_directory(cwd: Path) -> Iterator[None]:
    """``cwd`` for the call (``contextlib.chdir`` is Python 3.11's)."""
    saved = os.getcwd()
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(saved)


@contextlib.contextmanager
def _stdin_from_devnull() -> Iterator[None]:
    """An empty stdin that is no terminal, as ``stdin=subprocess.DEVNULL`` gave."""
    saved = sys.stdin
    with open(os.devnull, encoding="utf-8") as devnull:
        sys.stdin = devnull
        try:
            yield
        finally:
            sys.stdin = saved


@contextlib.contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    """Every signal's handler as it was before the call (a process's handlers end with it)."""
    if threading.current_thread() is not threading.main_thread():  # no command can change them from here
        yield
        return
    catchable = [s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP)]
    before = {s: signal.getsignal(s) for s in catchable}
    try:
        yield
    finally:
        for sig, handler in before.items():
            if signal.getsignal(sig) is not handler and handler is not None:
                signal.signal(sig, handler)


@contextlib.contextmanager
def _fresh_process_memory() -> Iterator[None]:
    """ferry's once-per-process memory starts empty for the call and is put back after it: the stores found at
    head (``ferry.migrations._ready``, by URL: a store changed since is checked again, as a new process would)
    and the stored-config warnings already given (``ferry.control.spec._warned``)."""
    from ferry import migrations
    from ferry.control import spec

    ready, warned = migrations._ready, spec._warned
    migrations._ready, spec._warned = set(), set()
    try:
        yield
    finally:
        migrations._ready, spec._warned = ready, warned


_PROCESS_FILTERS = (
    ("default", DeprecationWarning, "__main__"),
    ("ignore", DeprecationWarning, ""),
    ("ignore", PendingDeprecationWarning, ""),
    ("ignore", ImportWarning, ""),
    ("ignore", ResourceWarning, ""),
)
"""Python's warning filters in a process started without -W or PYTHONWARNINGS, as ``warnings.filters`` lists them
(the first that matches applies)."""


@contextlib.contextmanager
def _warnings_as_a_process_prints_them() -> Iterator[None]:
    """Python warnings go to stderr under a new interpreter's filters, not to pytest's warning summary."""
    with warnings.catch_warnings():
        warnings.resetwarnings()
        for action, category, module in reversed(_PROCESS_FILTERS):
            warnings.filterwarnings(action, category=category, module=module)  # type: ignore[arg-type]
        warnings.showwarning = _show_on_stderr
        yield


def _show_on_stderr(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


class _CallerRecords(logging.Filter):
    """The records of the calling thread and of threads started during the call (not a test's servers)."""

    def __init__(self) -> None:
        super().__init__()
        self.caller = threading.get_ident()
        self.others = {t.ident for t in threading.enumerate()} - {self.caller}

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread not in self.others


class _StderrHandler(logging.StreamHandler):
    """``logging.lastResort``: a process that configures no logging prints warnings and errors, message only,
    to the stderr of the moment."""

    def __init__(self) -> None:
        super().__init__()
        self.setLevel(logging.WARNING)
        self.addFilter(_CallerRecords())

    @property
    def stream(self):  # noqa: ANN201 - the stream of the moment, as lastResort's
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


@contextlib.contextmanager
def _logging_as_a_process_prints_it(*captured: io.StringIO) -> Iterator[None]:
    """The command's warnings and errors on its stderr, as in a process with no logging set up (here pytest's
    handlers on the root logger would keep ``logging.lastResort`` from printing them). A handler the call left
    on one of its captured streams (``logging.basicConfig``, a library's own at its import) is removed after
    it: none accumulates, none writes to a stream that is gone."""
    handler = _StderrHandler()
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        for logger in _all_loggers():
            for stale in [h for h in logger.handlers if getattr(h, "stream", None) in captured]:
                logger.removeHandler(stale)


def _all_loggers() -> list[logging.Logger]:
    named = [v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger)]
    return [logging.getLogger(), *named]


@contextlib.contextmanager
def _threads_finished() -> Iterator[None]:
    """A process exits once its non-daemon threads end: wait for those the command started, and fail if one
    is still running (it would hang the console script too)."""
    before = set(threading.enumerate())
    yield
    started = [t for t in threading.enumerate() if t not in before and not t.daemon]
    for thread in started:
        thread.join(THREAD_EXIT_S)
    running = [t.name for t in started if t.is_alive()]
    assert not running, f"the command left non-daemon threads running: {running} (its process would not exit)"

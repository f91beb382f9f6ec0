"""How ferry's long-running commands (`serve`, `serve --ray`, `triton sync --watch`) stop on SIGINT and SIGTERM.

The first signal asks for a stop: the command stops taking work, lets what is in flight finish for a moment
(each command says how long) and cleans up. A second signal ends the process at once, and whatever the command
waits on (a load, the store, Triton, Ray), the process is gone ``DEADLINE_S`` after the first one.

Exit status: 0 when the stop finished its cleanup (also when it came while the command was setting up: nothing
to clean yet); 128 + the signal's number (130 for SIGINT, 143 for SIGTERM) when a second signal or the deadline
cut it short. A signal that comes while Python itself starts, before ferry's handlers are in place, ends the
process as Python's default does (130 "interrupted", or killed by the signal).

The handlers are installed explicitly, SIGINT's too: Python raises KeyboardInterrupt only in a process that
started with SIGINT handled, and a background job of a non-interactive shell (``ferry serve &`` in a script, a CI
step) starts with SIGINT ignored; it would never stop on ``kill -INT``.

A stopped process ends with ``os._exit``, never through the interpreter's own exit: that waits for the threads a
load or a call left running, and finalizes modules under the daemon threads still in C code (a thread
importing numpy then crashed the exit with SIGSEGV).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, NoReturn, TypeVar

DEADLINE_S = 4.0
"""The most a process lives after its first SIGINT or SIGTERM."""
LAST_WORDS_S = 0.3
"""At the exit, what is left in stdout, stderr and the log handlers gets this long to be written."""
SIGNALS = (signal.SIGINT, signal.SIGTERM)
T = TypeVar("T")


class Stop:
    """The stop of this process: ``requested`` is set by the first SIGINT or SIGTERM (see the module's text).

    ``interrupt``: the first signal also ends the process at once, with status 0: what a command does while it
    sets up (connecting to the store or to a cluster) needs no cleanup; the command turns it off once its main
    thread only waits. Python runs a signal's handler in the main thread between two bytecodes, so a setup
    step that may block in C (SQLite waits out its 30 s busy timeout without a look at signals) runs through
    ``call``. ``actions`` run in the signal handler on the first signal; ``before_exit`` before any exit.
    """

    def __init__(self, deadline_s: float = DEADLINE_S, *, interrupt: bool = False) -> None:
        self.deadline_s = deadline_s
        self.interrupt = interrupt
        self.requested = threading.Event()
        self.signum: int | None = None
        self.actions: list[Callable[[int], None]] = []
        self.before_exit: list[Callable[[], None]] = []
        self.repeat_ends = True
        """Whether a second signal ends the process at once (a worker process whose supervisor decides: no)."""

    def install(self) -> Stop:
        """Handle SIGINT and SIGTERM here (from the main thread), whatever was there before."""
        for sig in SIGNALS:
            signal.signal(sig, self.handle)
        return self

    def handle(self, signum: int, frame: FrameType | None = None) -> None:
        if self.signum is not None:
            if self.repeat_ends:
                self.exit(128 + signum, f"{_name(signum)} again: exiting now, what was still running is abandoned")
            return
        self.signum = signum
        self.requested.set()
        threading.Thread(target=self._deadline, name="ferry stop deadline", daemon=True).start()
        for action in list(self.actions):
            action(signum)
        if self.interrupt:
            self.done()

    def _deadline(self) -> None:
        threading.Event().wait(self.deadline_s)
        self.exit(self.status, f"still stopping {self.deadline_s:g} s after {_name(self.signum)}: exiting now")

    @property
    def status(self) -> int:
        """128 + the first signal's number (0 before any)."""
        return 128 + self.signum if self.signum is not None else 0

    def exit(self, status: int, why: str = "") -> NoReturn:
        """End the process now with ``status``: no thread is waited for (those still running are abandoned)."""
        for hook in list(self.before_exit):
            try:
                hook()
            except Exception as exc:  # the exit goes on
                why = f"{why}; {type(exc).__name__}: {exc}" if why else f"{type(exc).__name__}: {exc}"
        # Written from a thread of its own: a stream or log handler that another thread holds blocked (a full
        # pipe) must not hold the exit.
        last = threading.Thread(target=_last_words, args=(f"ferry: {why}" if why else "",), daemon=True)
        last.start()
        last.join(LAST_WORDS_S)
        os._exit(status)

    def done(self) -> NoReturn:
        """The stop finished its cleanup: exit 0 now, without waiting for threads a load or a call left running."""
        self.exit(0)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a daemon thread while the main thread waits, so that a stop signal is
        handled at once even when ``fn`` blocks in C; on a stop, ``fn`` is left to the process's exit."""
        finished = threading.Event()
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["value"] = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - raised again in the main thread
                outcome["error"] = exc
            finally:
                finished.set()

        threading.Thread(target=run, name=f"ferry {getattr(fn, '__name__', 'call')}", daemon=True).start()
        while not finished.wait(0.1):
            if self.requested.is_set():
                self.done()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    def follow(self, work: Callable[[], object], name: str, drain_s: float) -> tuple[bool, BaseException | None]:
        """``work()`` (a command's following, which ends once it sees ``requested``) in a daemon thread while the
        main thread waits for it or for a stop; then up to ``drain_s`` more for it to end. Whether it ended, and
        what it raised (for the caller to raise after its cleanup)."""
        raised: list[BaseException] = []

        def run() -> None:
            try:
                work()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                raised.append(exc)

        worker = threading.Thread(target=run, name=name, daemon=True)
        worker.start()
        while worker.is_alive() and not self.requested.wait(0.5):
            pass
        worker.join(drain_s)
        return not worker.is_alive(), (raised[0] if raised else None)


def _name(signum: int | None) -> str:
    return signal.Signals(signum).name if signum is not None else "the signal"


def _last_words(line: str) -> None:
    try:
        if line:
            sys.stderr.write(line + "\n")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:  # noqa: BLE001, S110 - a closed or broken stream: nothing more to tell
        pass


def call_bounded(what: str, fn: Callable[[], object], timeout_s: float) -> bool:
    """``fn()`` in a daemon thread, waited for ``timeout_s`` at most; whether it ended in time (a failure is told)."""

    def run() -> None:
        try:
            fn()
        except Exception as exc:
            print(f"ferry: stopping: {what} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)

    worker = threading.Thread(target=run, name=f"ferry stop: {what}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        print(f"ferry: stopping: {what} did not end within {timeout_s:g} s; left behind", file=sys.stderr, flush=True)
        return False
    return True

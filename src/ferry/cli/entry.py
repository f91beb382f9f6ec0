"""The `ferry` console script: Ctrl-C while ferry imports ends it at once, then the command runs as usual.

Python turns SIGINT into KeyboardInterrupt wherever the main thread is, also in the middle of a C extension's
module init (orjson's was seen to crash with SIGSEGV there). Until the command starts, SIGINT exits with 130
instead; then the handler the process started with is back (the long-running commands install their own).
"""

from __future__ import annotations

import os
import signal
import sys


def main() -> int:
    started_with = signal.getsignal(signal.SIGINT)
    if started_with is signal.default_int_handler:
        signal.signal(signal.SIGINT, _exit_at_once)
    from ferry.cli.main import main as run

    return run(before_command=lambda: signal.signal(signal.SIGINT, started_with))


def _exit_at_once(signum: int, _frame: object) -> None:
    os._exit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())

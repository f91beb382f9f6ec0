"""A sink for EngineLoop tests: keeps one sequence's steps (or the error that ended it) until its last."""

from __future__ import annotations

import threading

from ferry.llm.params import Step


class Collector:
    """Pass it to ``EngineLoop.submit``; ``wait()`` until the sequence ended, then read what it got."""

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.error: BaseException | None = None
        self.done = threading.Event()

    def __call__(self, item: Step | BaseException) -> None:
        if isinstance(item, BaseException):
            self.error = item
            self.done.set()
            return
        self.steps.append(item)
        if item.finish_reason is not None:
            self.done.set()

    def wait(self) -> Collector:
        assert self.done.wait(30), "the sequence never ended"
        return self

    @property
    def tokens(self) -> list[int]:
        return [t for step in self.steps for t in step.token_ids]

    @property
    def text(self) -> str:
        return "".join(step.text for step in self.steps)

    @property
    def finish_reason(self) -> str | None:
        assert self.error is None, self.error
        return self.steps[-1].finish_reason

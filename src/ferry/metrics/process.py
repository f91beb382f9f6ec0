"""CPU time and resident memory of every serving process, read at scrape time (psutil)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

_PID_FILE = re.compile(r"_(\d+)\.db$")
"""prometheus_client's multiprocess files end in _<pid>.db: the workers that share the folder."""


class ProcessStats(Collector):
    """``ferry_process_*`` per pid: this process alone, or with --workers N every live worker."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self._processes: dict[int, psutil.Process] = {}

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        cpu = CounterMetricFamily("ferry_process_cpu_seconds", "CPU time of a serving process", labels=["pid"])
        rss = GaugeMetricFamily("ferry_process_resident_memory_bytes", "Resident memory", labels=["pid"])
        for pid in self._pids():
            try:
                process = self._processes.get(pid) or self._processes.setdefault(pid, psutil.Process(pid))
                with process.oneshot():
                    times, memory = process.cpu_times(), process.memory_info()
            except psutil.Error:  # a worker that exited since its files were written
                self._processes.pop(pid, None)
                continue
            cpu.add_metric([str(pid)], times.user + times.system)
            rss.add_metric([str(pid)], memory.rss)
        yield cpu
        yield rss

    def _pids(self) -> list[int]:
        if self.multiprocess_dir is None:
            return [os.getpid()]
        found = {int(m.group(1)) for f in Path(self.multiprocess_dir).iterdir() if (m := _PID_FILE.search(f.name))}
        return sorted(found | {os.getpid()})

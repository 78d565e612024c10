"""Peak resident memory of the whole process tree (this process + children, e.g. Dask workers).

Sampled by a background thread every ``interval`` seconds with psutil; used by
the k0 stage (recorded in manifests) and by the benchmarks (checked against
the ``--memory`` budget).
"""

from __future__ import annotations

import threading

import psutil

__all__ = ["TreeMemorySampler", "tree_rss"]


def tree_rss(root: psutil.Process | None = None) -> int:
    root = root or psutil.Process()
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


class TreeMemorySampler:
    """``with TreeMemorySampler() as m: ...; m.peak`` — peak tree RSS in bytes."""

    def __init__(self, interval: float = 0.1, pid: int | None = None):
        self.interval = interval
        self.root = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, tree_rss(self.root))
            except psutil.NoSuchProcess:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> "TreeMemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self.peak = max(self.peak, tree_rss(self.root))
        except psutil.NoSuchProcess:
            pass

"""Where heavy steps run: a Dask cluster sized from one memory budget.

``--memory`` bounds the whole process tree (client + scheduler + workers).
:func:`plan_cluster` splits it: a fixed reserve for the client process (which
also hosts the scheduler of a ``LocalCluster``), then equal shares per worker,
each share minus a worker's own baseline being what one task may use. Workers
run one thread each, so a task's share is not shared with another task.

Schedulers:

* ``None`` / ``"local"`` (default): ``LocalCluster`` of processes on 127.0.0.1,
  dashboard on ``127.0.0.1:8787`` (another free port if taken), link printed;
* ``"sync"``: no cluster, tasks run in this process one after another (small
  inputs, debugging, tests);
* ``"tcp://HOST:PORT"`` or any address: an existing ``dask scheduler``; the
  workers' memory is theirs, the plan still sizes tasks from ``--memory``.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass

from .errors import CtstoreError, one_line
from .log import log, progress, progress_disabled
from .units import format_bytes, parse_memory

__all__ = ["ClusterPlan", "plan_cluster", "Runner"]

CLIENT_RESERVE = 400 * 2**20  # client + scheduler: Python, numpy, dask, distributed
WORKER_BASELINE = 300 * 2**20  # a worker process with numpy, pyarrow, zarr, distributed loaded
MIN_TASK_MEMORY = 64 * 2**20
TASK_FRACTION = 0.75


@dataclass(frozen=True)
class ClusterPlan:
    memory: int
    n_workers: int
    worker_memory: int
    task_memory: int

    def describe(self) -> str:
        return (f"memory budget {format_bytes(self.memory)}: {self.n_workers} worker(s) x "
                f"{format_bytes(self.worker_memory)}, {format_bytes(self.task_memory)} per task")


def plan_cluster(memory: str | int = "4GB", n_workers: int | None = None, in_process: bool = False,
                 client_extra: int = 0) -> ClusterPlan:
    """Split a memory budget into workers and per-task memory; fail if it cannot fit.

    >>> p = plan_cluster("2GB", n_workers=2)
    >>> p.n_workers, p.task_memory > 500 * 2**20
    (2, True)
    """
    total = parse_memory(memory)
    cores = os.cpu_count() or 1
    reserve = CLIENT_RESERVE + client_extra  # the client may hold dense panels (randomized SVD)
    if in_process:
        task = total - reserve
        if task < MIN_TASK_MEMORY:
            raise CtstoreError(f"--memory {format_bytes(total)} is too small: the process alone needs "
                               f"{format_bytes(reserve + MIN_TASK_MEMORY)}")
        return ClusterPlan(total, 1, task, task)
    workers = n_workers or cores
    while workers > 1 and int((total - reserve) // workers * TASK_FRACTION) - WORKER_BASELINE < MIN_TASK_MEMORY:
        workers -= 1
    worker_memory = (total - reserve) // workers
    # dask pauses a worker at 80% of its limit and kills it at 95%: stay below both
    task = int(worker_memory * TASK_FRACTION) - WORKER_BASELINE
    if task < MIN_TASK_MEMORY:
        need = reserve + WORKER_BASELINE + MIN_TASK_MEMORY
        raise CtstoreError(f"--memory {format_bytes(total)} is too small for a cluster: one worker needs "
                           f"{format_bytes(need)} (or use --scheduler sync)")
    return ClusterPlan(total, workers, worker_memory, task)


TASK_GROUPS = 64  # blocks are dealt to this many task groups whatever the cluster (see round_robin)


def round_robin(blocks, n_tasks: int = TASK_GROUPS) -> list[list]:
    """Deal blocks to at most ``n_tasks`` task groups (every group non-empty).

    Sums inside a task follow its group, so callers that want results independent
    of the cluster pass a fixed ``n_tasks`` (the default), not one derived from
    the number of workers.
    """
    return [list(blocks[i::n_tasks]) for i in range(min(n_tasks, len(blocks)))]


HANDSHAKE_TIMEOUT = 5.0  # seconds to connect to a --scheduler address and hear it answer as a Dask scheduler


def probe_scheduler(address: str, timeout: float | None = None) -> None:
    """Fail in one line unless ``address`` answers as a Dask scheduler within ``timeout`` seconds.

    ``distributed.Client`` bounds the TCP connect but not the handshake after
    it, so a server that accepts and never answers (or an HTTP server) made
    ``--scheduler`` wait forever. This sends the scheduler's ``identity`` request
    itself with every step under one deadline.
    """
    import asyncio

    timeout = HANDSHAKE_TIMEOUT if timeout is None else timeout

    async def identity():
        from distributed.comm import connect

        comm = await connect(address, timeout=timeout)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    where = f"--scheduler {one_line(address)}"
    try:
        reply = asyncio.run(asyncio.wait_for(identity(), timeout))
    except (asyncio.TimeoutError, TimeoutError):
        raise CtstoreError(f"{where}: no answer from a Dask scheduler within {timeout:.0f} s") from None
    except (ValueError, TypeError) as exc:
        raise CtstoreError(f"{where}: not a scheduler address such as tcp://HOST:8786 ({one_line(exc)})") from None
    except Exception as exc:  # OSError, CommClosedError, a server speaking another protocol
        raise CtstoreError(f"{where}: cannot connect ({one_line(exc) or type(exc).__name__})") from None
    if not isinstance(reply, dict) or reply.get("type") != "Scheduler":
        raise CtstoreError(f"{where}: answered, but not as a Dask scheduler")


class Runner:
    """Run functions over lists of arguments on the configured scheduler, with progress."""

    def __init__(self, memory: str | int = "4GB", scheduler: str | None = None, n_workers: int | None = None,
                 dashboard: str = "127.0.0.1:8787", client_extra: int = 0):
        self.scheduler = scheduler or "local"
        self.plan = plan_cluster(memory, n_workers, in_process=self.scheduler == "sync", client_extra=client_extra)
        self.dashboard = dashboard
        self.client = None
        self.cluster = None
        self._before: tuple[set, bool] = (set(), True)

    @property
    def dashboard_link(self) -> str | None:
        return self.client.dashboard_link if self.client is not None else None

    def __enter__(self) -> "Runner":
        if self.scheduler == "sync":
            return self
        from distributed import Client, LocalCluster

        for name in ("distributed", "bokeh", "tornado"):
            logging.getLogger(name).setLevel(logging.ERROR)
        if self.scheduler == "local":
            self._before = _process_state()
            try:
                import bokeh  # noqa: F401
            except ImportError:
                log("dashboard unavailable: install bokeh>=3.1 to get the Dask dashboard")
            with _sigint_ignored_by_children(), _worker_settings():
                self.cluster = LocalCluster(
                    n_workers=self.plan.n_workers, threads_per_worker=1, processes=True,
                    memory_limit=self.plan.worker_memory, host="127.0.0.1",
                    dashboard_address=self.dashboard, silence_logs=logging.ERROR,
                )
            self.client = Client(self.cluster)
            self.client.run(_drop_lost_scheduler_tracebacks)
        else:
            probe_scheduler(self.scheduler)  # a bounded handshake first: Client() alone can wait forever
            try:
                self.client = Client(self.scheduler, timeout=f"{HANDSHAKE_TIMEOUT}s")
            except (OSError, TimeoutError, ValueError) as exc:
                raise CtstoreError(f"--scheduler {one_line(self.scheduler)}: cannot connect "
                                   f"({one_line(exc)})") from None
        log(f"dask: {len(self.client.scheduler_info(n_workers=-1)['workers'])} worker(s); "
            f"dashboard {self.client.dashboard_link}")
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is not None:  # shutting down on an error or Ctrl-C: ctstore's own line is the last word
            for name in ("distributed", "tornado", "asyncio", "bokeh"):
                logging.getLogger(name).setLevel(logging.CRITICAL + 1)
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
            _reap_worker_processes(self._before)
        self.client = self.cluster = None

    def share(self, obj):
        """Send a large argument (a dense panel) to every worker once; pass the result to tasks."""
        if self.client is None:
            return obj
        return self.client.scatter(obj, broadcast=True, hash=False)

    def map_reduce(self, fn, items: list[tuple], combine, desc: str):
        """Fold ``combine(acc, fn(*item))`` over the results **in item order** (bounded client memory).

        The order of a floating-point sum changes its last bits, so results are
        folded in the order of ``items`` whatever order tasks finish in: the same
        job gives bit-identical output in-process and on any cluster. A result
        that arrives early waits; at most ``window`` tasks run ahead of the fold.
        """
        acc = None
        bar = progress(total=len(items), desc=desc, unit="task", leave=False,
                       disable=progress_disabled() or not items)
        try:
            if self.client is None:
                for item in items:
                    acc = combine(acc, fn(*item))
                    bar.update()
                return acc
            from distributed import as_completed

            window = max(4, 4 * self.plan.n_workers)
            futures: dict = {}
            early: dict = {}
            submitted = folded = 0

            def submit_more(pending):
                nonlocal submitted
                while submitted < len(items) and submitted - folded < window:
                    future = self.client.submit(fn, *items[submitted], pure=False, retries=2)
                    futures[future.key] = submitted
                    pending.add(future)
                    submitted += 1

            pending = as_completed(loop=self.client.loop)
            try:
                submit_more(pending)
                for future in pending:
                    early[futures.pop(future.key)] = future.result()
                    future.release()
                    bar.update()
                    while folded in early:
                        acc = combine(acc, early.pop(folded))
                        folded += 1
                    submit_more(pending)
            finally:
                for f in list(pending.futures):
                    f.cancel()
            return acc
        finally:
            bar.close()

    def map(self, fn, items: list[tuple], desc: str) -> list:
        """``[fn(*item) for item in items]`` on the cluster, in order, with a progress bar."""
        bar = progress(total=len(items), desc=desc, unit="task", disable=progress_disabled() or not items)
        try:
            if self.client is None:
                out = []
                for item in items:
                    out.append(fn(*item))
                    bar.update()
                return out
            from distributed import as_completed

            futures = [self.client.submit(fn, *item, pure=False, retries=2) for item in items]
            where = {future.key: i for i, future in enumerate(futures)}
            out, finished = [None] * len(items), set()
            try:
                for future in as_completed(futures):
                    i = where[future.key]
                    out[i] = future.result()  # raises the task's exception here
                    finished.add(i)
                    future.release()  # the result is here: nothing may recompute the task later
                    bar.update()
                return out
            finally:
                for i, f in enumerate(futures):
                    if i not in finished:
                        f.cancel()
        finally:
            bar.close()

    def stream(self, jobs: list[tuple], on_result, desc: str) -> None:
        """Run ``(tag, fn, args)`` jobs; ``on_result(tag, result)`` runs in this process as each result comes
        (in completion order) and returns more jobs, which start at once, before the first jobs still
        waiting: a phase's next tasks need not wait for the whole phase (a lag assembles while the next lags
        reduce, and its scratch goes sooner)."""
        bar = progress(total=len(jobs), desc=desc, unit="task", disable=progress_disabled() or not jobs)

        def grow(more):
            if more:
                bar.total += len(more)
                if hasattr(bar, "refresh"):
                    bar.refresh()
            return more

        try:
            if self.client is None:
                todo = list(jobs)
                while todo:
                    tag, fn, args = todo.pop(0)
                    todo[:0] = grow(on_result(tag, fn(*args)))  # ahead of the first jobs still waiting
                    bar.update()
                return
            from distributed import as_completed

            tags: dict = {}
            pending = as_completed(loop=self.client.loop)

            def submit(more, priority=0):
                for tag, fn, args in more:
                    future = self.client.submit(fn, *args, pure=False, retries=2, priority=priority)
                    tags[future.key] = tag
                    pending.add(future)

            try:
                submit(jobs)
                for future in pending:
                    result = future.result()  # raises the task's exception here
                    future.release()
                    submit(grow(on_result(tags.pop(future.key), result)), priority=1)
                    bar.update()
            finally:
                for f in list(pending.futures):
                    f.cancel()
        finally:
            bar.close()


@contextmanager
def _sigint_ignored_by_children():
    """Start worker processes with SIGINT ignored (a spawned Python keeps an ignored SIGINT ignored).

    Ctrl-C in a terminal reaches the whole process group: workers used to raise
    KeyboardInterrupt and print dozens of traceback lines after ctstore's own
    message. Now only the client takes it, closes the cluster and reaps the workers.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _drop_lost_scheduler_tracebacks() -> None:
    """Run in each worker of a LocalCluster that ctstore owns: drop log records about a closed scheduler link.

    That scheduler goes away only when ctstore closes the cluster; on Ctrl-C a worker's heartbeat can race
    the close and print a 40-line CommClosedError traceback after ctstore's own last line.
    """

    class LostScheduler(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            exc = record.exc_info[1] if record.exc_info else None
            return type(exc).__name__ not in ("CommClosedError", "StreamClosedError")

    for name in ("distributed.worker", "distributed.core", "distributed.comm"):
        logging.getLogger(name).addFilter(LostScheduler())


def _tracker():
    from multiprocessing import resource_tracker

    return getattr(resource_tracker, "_resource_tracker", None)


def _process_state() -> tuple[set, bool]:
    """Child processes and whether the resource tracker runs, before a LocalCluster starts."""
    import multiprocessing

    return {p.pid for p in multiprocessing.active_children()}, getattr(_tracker(), "_fd", None) is not None


# glibc malloc in the workers of a LocalCluster ctstore starts. Dask's default MALLOC_TRIM_THRESHOLD_ of 64 KiB
# hands freed memory back to the kernel at once, and the mmap threshold sends every array above 32 MiB to
# its own mapping: each task's buffers were faulted in afresh (count map/reduce of 20M synthetic tokens at
# V = 131,072: 4.3 s system of 22 s CPU; 2.6-3.1 s with these). Up to 128 MiB of freed memory stays in the
# heap for the next task instead; the worker's memory limit still bounds it (Dask measures RSS).
WORKER_MALLOC = {"MALLOC_TRIM_THRESHOLD_": str(1 << 27), "MALLOC_MMAP_THRESHOLD_": str(1 << 25),
                 "MALLOC_TOP_PAD_": str(1 << 26)}


# Dask's statistical profiler samples every worker thread's stack every 10 ms (the dashboard's Profile page):
# that cost the count map tasks 7% (200M synthetic tokens: 0.67 -> 0.62 s median per task, total 50.6 ->
# 49.0 s on 2 cores). Off in ctstore's own workers unless the variable below is set.
PROFILE_VARIABLE = "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"


@contextmanager
def _worker_settings():
    """Dask's ``pre-spawn-environ`` with :data:`WORKER_MALLOC` (a user's own setting of a variable wins) and
    the workers' profiler off (unless :data:`PROFILE_VARIABLE` is set), for the workers of a LocalCluster
    created inside (a Nanny takes Dask's configuration when it is made)."""
    import dask

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    for name, value in WORKER_MALLOC.items():
        if name not in os.environ:
            environ[name] = value
    settings = {"distributed.nanny.pre-spawn-environ": environ}
    if PROFILE_VARIABLE not in os.environ:
        settings["distributed.worker.profile.enabled"] = False
    with dask.config.set(settings):
        yield


def _reap_worker_processes(before: tuple[set, bool], timeout: float = 5.0) -> None:
    """Wait for this process's children to exit once the LocalCluster is closed.

    The workers are spawned through ``multiprocessing``, which also starts a
    resource-tracker process. The tracker only exits when its parent does, so it
    used to outlive ``ctstore count`` by a second or two (a zombie until init
    reaped it). Stopping it here, after the workers are gone, and waiting for any
    worker still shutting down leaves no child behind when the command returns.
    """
    import multiprocessing

    children_before, tracker_was_running = before
    for child in multiprocessing.active_children():  # joins finished ones; ours get a deadline
        if child.pid in children_before:
            continue  # not started by this cluster: not ours to wait for
        child.join(timeout)
        if child.is_alive():
            child.kill()
            child.join(timeout)
    stop = getattr(_tracker(), "_stop", None)  # CPython >= 3.8; private, so guarded
    if stop is not None and not tracker_was_running:
        try:
            stop()
        except (OSError, ChildProcessError, RuntimeError):
            pass

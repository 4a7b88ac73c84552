"""Local executor of the data engine: work units on a process pool of this machine.

What it adds to running ``process_unit`` in a loop, none of which the unit code or the commit
protocol (data_engine/queue.py) knows about, so another executor (Ray tasks across nodes) can
run the same units with the same commits:
- a per-document wall-clock limit: a worker still busy after ``timeout_s`` is stopped
  (SIGTERM, then SIGKILL: a render stuck inside MuPDF never returns to Python) and the
  document is recorded as ``timeout``;
- a per-page wall-clock limit (``stalled``): a worker whose current page has run too long is
  stopped the same way and its document re-queued with that page marked to be skipped, so one
  page cannot hold a worker for the whole document limit;
- crash isolation: a worker that dies (MuPDF segfault, OOM killer) fails only the document it
  was running, which is retried up to ``max_crash_retries`` times, then recorded as
  ``worker_crash``;
- workers die with their driver, also after ``kill -9`` of the driver (``die_with_parent``);
- the engine's own output errors (``queue.OutputError``) and a failed worker set-up
  (``WorkerStartError``) stop the run: they are re-raised, never recorded on a document.

The pool is pebble's ``ProcessPool`` (per-task timeouts and per-task crash attribution, which
``concurrent.futures`` lacks).
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, wait
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool

import pebble

from data_engine import queue

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """End this process when the process ``parent_pid`` (its driver) ends, however it ends.

    Linux: the kernel sends SIGKILL on the parent's death (PR_SET_PDEATHSIG), which also stops
    a worker stuck in C code. Elsewhere: a thread polls the parent pid (it cannot run while a
    C call holds the GIL, so it is the fallback only).
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != parent_pid:  # the driver died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="driver-watch", daemon=True).start()


class WorkerStartError(RuntimeError):
    """A worker's set-up failed (e.g. a layout model that does not load): every unit would
    fail the same way, so the run stops instead."""


_START_ERROR: list[str] = []  # set in a worker whose initializer raised


def _worker_init(parent_pid: int, initializer: Callable | None, initargs: tuple) -> None:
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    # The pool stops a worker over its time limit with SIGTERM; a Python-level handler would
    # only run once MuPDF returns (never, for a stuck render), so the default action: exit now.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if initializer is not None:
        try:
            initializer(*initargs)
        except Exception as e:  # noqa: BLE001 - reported by the first unit (an exiting worker would be restarted for ever)
            _START_ERROR.append(f"{type(e).__name__}: {e}")


def _call(fn: Callable, unit: dict) -> dict:
    if _START_ERROR:
        raise WorkerStartError(f"engine workers could not start: {_START_ERROR[0]}")
    return fn(unit)


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:300]


# A pebble pool that declares itself broken is replaced; more breakages than this in one run
# mean something else is wrong (workers killed over and over): the run stops.
MAX_POOL_RESTARTS = 8


class LocalExecutor:
    """``workers`` processes started with ``start_method``, each set up once by ``initializer``.

    pebble declares the whole pool broken (every later call: "Unexpected error within the Pool")
    when a worker dies while no task is running (between two units; "All workers expired") or
    mid-message. Units are idempotent, so the executor starts a new pool and requeues the units
    that were in flight, without blaming them."""

    def __init__(self, workers: int, initializer: Callable | None = None, initargs: tuple = (),
                 start_method: str = "spawn"):
        self.workers = workers
        self._pool_kw = dict(max_workers=workers, initializer=_worker_init,
                             initargs=(os.getpid(), initializer, tuple(initargs)),
                             context=mp.get_context(start_method))
        self.pool = pebble.ProcessPool(**self._pool_kw)
        self.pool_restarts = 0

    def _replace_broken_pool(self) -> None:
        if self.pool.active:  # another unit of the same breakage already replaced it
            return
        self.pool_restarts += 1
        if self.pool_restarts > MAX_POOL_RESTARTS:
            raise RuntimeError(f"the worker pool broke {self.pool_restarts} times (workers killed "
                               "between units?); stopping: committed documents are kept")
        self.pool.stop()
        self.pool.join()
        self.pool = pebble.ProcessPool(**self._pool_kw)

    def _schedule(self, fn: Callable, unit: dict, timeout_s: float | None):
        try:
            return self.pool.schedule(_call, args=(fn, unit), timeout=timeout_s)
        except RuntimeError:
            if self.pool.active:  # not a broken pool (e.g. closed): a real error
                raise
            self._replace_broken_pool()
            return self.pool.schedule(_call, args=(fn, unit), timeout=timeout_s)

    def run(self, fn: Callable[[dict], dict], units: Sequence[dict], *, timeout_s: float | None,
            max_crash_retries: int, fail: Callable[[dict, str, str], dict],
            stalled: Callable[[dict], dict | None] | None = None, poll_s: float = 1.0) -> Iterator[dict]:
        """Yield the record of every unit as it finishes (any order).

        ``fn(unit)`` processes and commits a unit and returns its record; ``fail(unit, reason,
        detail)`` commits and returns a failure record made by the driver (timeout, crash, an
        exception ``fn`` let through). ``queue.OutputError`` propagates: the run must stop.
        ``stalled(unit)``, asked every ``poll_s`` about each running unit, returns the unit to
        re-queue (e.g. with a page to skip) when its worker must be stopped, else None.
        """
        pending = list(reversed(units))  # pop() from the end keeps submission in the given order
        in_flight: dict = {}
        crashes: dict[str, int] = {}
        window = 4 * self.workers  # bounded submission: millions of units never sit in memory as futures
        while pending or in_flight:
            while pending and len(in_flight) < window:
                u = pending.pop()
                in_flight[self._schedule(fn, u, timeout_s)] = u
            finished, _ = wait(in_flight, timeout=poll_s if stalled else None, return_when=FIRST_COMPLETED)
            if stalled is not None:
                for fut, u in list(in_flight.items()):
                    retry = None if fut.done() or not fut.running() else stalled(u)
                    if retry is not None and fut.cancel():  # a running pebble task: its worker is stopped
                        del in_flight[fut]
                        pending.append(retry)
            for fut in finished:
                u = in_flight.pop(fut)
                try:
                    yield fut.result()
                except FutureTimeout:
                    yield fail(u, queue.TIMEOUT, f"still running after {timeout_s:g} s: its worker was stopped")
                except BrokenProcessPool:  # the pool broke, not this unit: a new pool, the unit again
                    self._replace_broken_pool()
                    pending.append(u)
                except pebble.ProcessExpired as e:
                    n = crashes[u["doc_id"]] = crashes.get(u["doc_id"], 0) + 1
                    if n <= max_crash_retries:
                        pending.append(u)
                        continue
                    yield fail(u, queue.WORKER_CRASH, f"killed its worker process {n} times (exit code {e.exitcode})")
                except (queue.OutputError, WorkerStartError):
                    raise
                except Exception as e:  # noqa: BLE001 - a bug in the unit code: recorded on the unit, run goes on
                    yield fail(u, queue.UNIT_ERROR, _err(e))

    def map(self, fn: Callable, *iterables) -> list:
        """``[fn(*args) ...]`` on the pool, in order; a call whose worker dies is run here instead."""
        if not self.pool.active:
            self._replace_broken_pool()
        futures = [self.pool.schedule(fn, args=args) for args in zip(*iterables)]
        out = []
        for fut, args in zip(futures, zip(*iterables)):
            try:
                out.append(fut.result())
            except (pebble.ProcessExpired, BrokenProcessPool):
                out.append(fn(*args))
        return out

    def close(self, wait_for_workers: bool = True) -> None:
        """Let the workers finish (``wait_for_workers``) or stop them now."""
        if wait_for_workers:
            self.pool.close()
        else:
            self.pool.stop()
        self.pool.join()

"""`executor: ray`: the data engine's units as Ray tasks, across the nodes of a Ray cluster.

Nothing about the work changes: a task runs the same `pipeline.process_unit` on the same
content-hashed unit and commits it through the same `queue.UnitStore` protocol (unique
temporary names, atomic renames, the record last), and the driver assembles the shards with
the same deterministic plan. So a Ray run writes the same shards, byte for byte, as a local run
on the same inputs, and a run interrupted anywhere (driver killed, node lost) resumes by running
the same command again. Inputs, `out` and `work_dir` must be on a file system every node sees
at the same path (NFS, Lustre, CephFS, or a bucket mounted with a FUSE driver): the commit
protocol needs atomic renames, which object stores do not offer.

What runs where:
- hashing: batches of input paths per task (every byte of every input is read once);
- units: one task per document (`num_cpus=1`), at most 2x the cluster's CPUs in flight, so
  millions of units never sit in the driver as object references;
- assembly: one task per shard.
The driver keeps the progress bar, the hash cache, the reports and the unit bookkeeping.

Failures: a task whose worker process dies (MuPDF segfault, OOM killer) is retried by Ray
`max_crash_retries` times, alone in its own process, so only the culprit is recorded as
`worker_crash`, like the local pool does. A task still running after `doc_timeout_s` is
cancelled (`ray.cancel(force=True)` kills its worker) and recorded as `timeout`; the limit counts
from submission (see `RayExecutor.run`). `queue.OutputError` and a failed worker set-up stop the
run, nothing recorded against the document. Other cluster errors (node died, object lost) re-run
the unit up to `_INFRA_RETRIES` times, then stop the run: committed units are kept and the
next run resumes; a document is never recorded as failed for the cluster's sake.

Connection (`ray_address`): an address ("auto", "10.0.0.1:6379", "ray://head:10001") connects
to a running cluster; unset, `$RAY_ADDRESS` is used, else a new single-node instance is started
here with `workers` CPUs (default: all) and shut down at the end. An already initialised Ray
(`ray.init` by the caller) is used as is and left running.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayError, RayTaskError, WorkerCrashedError

from data_engine import pipeline, queue
from data_engine.executor import WorkerStartError

_HASH_BATCH = 64     # input paths hashed per task
_INFRA_RETRIES = 3   # re-runs of a unit after cluster (not document) failures
_REPO_ROOT = str(Path(__file__).resolve().parents[1])


@ray.remote(num_cpus=1)
def _unit_task(fn, cfg, prompts: dict, unit: dict) -> dict:
    try:
        pipeline.ensure_worker(cfg, prompts)
    except Exception as e:  # every unit would fail the same way: stop the run (as the local pool)
        raise WorkerStartError(f"engine workers could not start: {type(e).__name__}: {e}") from e
    return fn(unit)


@ray.remote(num_cpus=1, max_retries=3)
def _map_task(fn, args: list[tuple]) -> list:
    return [fn(*a) for a in args]


def _runtime_env(runtime_env: dict | None) -> dict:
    """The user's runtime_env; by default workers also import this checkout (shared file system)."""
    env = dict(runtime_env or {})
    if not ({"py_modules", "working_dir", "pip", "conda", "uv", "container"} & set(env)):
        env_vars = dict(env.get("env_vars") or {})
        if "PYTHONPATH" not in env_vars:
            env_vars["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO_ROOT, os.environ.get("PYTHONPATH")) if p)
        env["env_vars"] = env_vars
    return env


def connect(address: str | None, *, num_cpus: int, runtime_env: dict | None = None) -> bool:
    """Join or start Ray (module doc, "Connection"): ``address``, else ``$RAY_ADDRESS``, else a
    new single-node instance here with ``num_cpus`` CPUs. Returns whether this call started the
    connection (the caller then ends it with ``disconnect``); an initialised Ray is used as is."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    kw: dict[str, Any] = {"runtime_env": _runtime_env(runtime_env), "log_to_driver": True}
    if address == "local":
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network at run time
        kw.update(num_cpus=num_cpus, include_dashboard=False)
    ray.init(address=address, **kw)
    return True


def disconnect(owns: bool) -> None:
    """End a connection that ``connect`` started (a Ray the caller initialised stays up)."""
    if owns and ray.is_initialized():
        ray.shutdown()


class RayExecutor:
    """The engine's executor on Ray, with `executor.LocalExecutor`'s interface: `run`, `map`, `close`."""

    def __init__(self, cfg, prompts: dict):
        self.cfg = cfg
        self.owns = connect(cfg.ray_address, num_cpus=pipeline._num_workers(cfg), runtime_env=cfg.ray_runtime_env)
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._cfg_ref, self._prompts_ref = ray.put(cfg), ray.put(prompts)

    # -- what _hash_inputs and _assemble call
    def map(self, fn, *iterables, chunksize: int = 1) -> list:
        args = list(zip(*iterables))
        step = max(chunksize, _HASH_BATCH if chunksize > 1 else 1)
        batches = [args[i:i + step] for i in range(0, len(args), step)]
        out: list = [None] * len(batches)
        in_flight: dict = {}
        window = 2 * self.workers
        for i, batch in enumerate(batches):
            if len(in_flight) >= window:
                self._collect(in_flight, out)
            in_flight[_map_task.remote(fn, batch)] = i
        while in_flight:
            self._collect(in_flight, out)
        return [r for batch in out for r in batch]

    @staticmethod
    def _collect(in_flight: dict, out: list) -> None:
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        for ref in ready:
            out[in_flight.pop(ref)] = ray.get(ref)

    def run(self, fn: Callable[[dict], dict], units: Sequence[dict], *, timeout_s: float | None,
            max_crash_retries: int, fail: Callable[[dict, str, str], dict],
            stalled: Callable[[dict], dict | None] | None = None, poll_s: float = 1.0) -> Iterator[dict]:
        """Yield the record of every unit as it finishes (any order); see `LocalExecutor.run`.
        `stalled` (the per-page limit) is not enforced here: the progress files it reads live
        on the workers' nodes; a stuck page costs its document at `timeout_s`.

        `timeout_s` counts from the task's submission: with a limit, at most one task per
        cluster CPU is in flight, so a task waits for a CPU only while the cluster is shared
        with other work. A task over its limit is cancelled with `force=True` (its worker
        process is killed, as a stuck MuPDF call never returns) and recorded as `timeout`.
        """
        pending = list(reversed(units))  # pop() from the end keeps submission in the given order
        in_flight: dict = {}  # ObjectRef -> (unit, deadline, cluster-error re-runs so far)
        window = (1 if timeout_s else 2) * self.workers

        def submit(u: dict, attempt: int) -> None:
            ref = _unit_task.options(max_retries=max_crash_retries, retry_exceptions=False).remote(
                fn, self._cfg_ref, self._prompts_ref, u)
            in_flight[ref] = (u, time.monotonic() + timeout_s if timeout_s else None, attempt)

        while pending or in_flight:
            while pending and len(in_flight) < window:
                submit(pending.pop(), 0)
            deadlines = [d for _, d, _ in in_flight.values() if d is not None]
            wait_s = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=wait_s)
            if not ready:  # a deadline passed
                now = time.monotonic()
                for ref, (u, deadline, _) in list(in_flight.items()):
                    if deadline is not None and deadline <= now:
                        del in_flight[ref]
                        ray.cancel(ref, force=True, recursive=True)
                        yield fail(u, queue.TIMEOUT, f"still running after {timeout_s:g} s: its Ray task was cancelled")
                continue
            for ref in ready:
                u, _, attempt = in_flight.pop(ref)
                try:
                    rec = ray.get(ref)
                except WorkerCrashedError:  # its process died on every attempt: the document's fault
                    rec = fail(u, queue.WORKER_CRASH,
                               f"killed its Ray worker process {max_crash_retries + 1} times")
                except RayTaskError as e:  # the task raised: the engine's output or set-up stops the run
                    cause = getattr(e, "cause", None) or e
                    if isinstance(cause, (queue.OutputError, WorkerStartError)):
                        raise cause from None
                    rec = fail(u, queue.UNIT_ERROR, f"{type(cause).__name__}: {cause}"[:300])
                except RayError as e:  # node lost, object lost, ...: not the document's fault
                    if attempt >= _INFRA_RETRIES:
                        raise RuntimeError(f"unit {u['doc_id']} ({u['path']}) failed {attempt + 1} times on the "
                                           f"Ray cluster; committed units are kept, re-run to resume") from e
                    submit(u, attempt + 1)
                    continue
                yield rec

    def close(self, wait_for_workers: bool = True) -> None:
        disconnect(self.owns)

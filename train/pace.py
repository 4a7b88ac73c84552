"""Threads per process, and one warning when training steps slow down far below their pace.

On a CPU machine that other work already keeps busy, a process with 2+ OpenMP threads spins
while it waits for a core: steps 10-40x longer have been seen on a shared 2-core machine
(docs/training.md "Threads"). ``default_threads`` gives each process ``cores / processes``
threads, and 1 when the machine is oversubscribed (1-minute load average at or above its
cores). ``StepPace`` notices the slow-down during a run and says so once. ``WallLimit``
ends a run after a number of wall seconds (``train.max_wall_s``) at the same step on every rank.
"""

from __future__ import annotations

import logging
import os
import statistics
import time

log = logging.getLogger(__name__)


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads(processes: int = 1, cores: int | None = None, load: float | None = None) -> int:
    """OpenMP threads per process for ``processes`` processes on this machine."""
    cores = cpu_cores() if cores is None else cores
    load = os.getloadavg()[0] if load is None else load
    if load >= cores:  # already oversubscribed: a second thread would only spin
        return 1
    return max(1, cores // max(1, processes))


class StepPace:
    """``observe(step, seconds)`` after each step; warns once when a step takes more than
    ``factor`` times the median of the first ``baseline`` timed steps (the first step, which
    includes set-up, is not one of them)."""

    def __init__(self, baseline: int = 5, factor: float = 5.0):
        self.baseline, self.factor = baseline, factor
        self.times: list[float] = []
        self.warned = False

    def observe(self, step: int, seconds: float) -> bool:
        """True when this step triggered the warning."""
        if step <= 1 or self.warned:
            return False
        if len(self.times) < self.baseline:
            self.times.append(seconds)
            return False
        usual = statistics.median(self.times)
        if seconds <= self.factor * usual:
            return False
        self.warned = True
        threads = os.environ.get("OMP_NUM_THREADS", "unset")
        log.warning("step %d took %.2f s, %.0fx the first steps' %.2f s: the machine is likely busy "
                    "(load %.1f on %d cores, OMP_NUM_THREADS=%s); on a shared CPU machine run with "
                    "OMP_NUM_THREADS=1 (docs/training.md, Threads)", step, seconds, seconds / usual,
                    usual, os.getloadavg()[0], cpu_cores(), threads)
        return True


class WallLimit:
    """``reached()`` after each step: whether ``limit_s`` wall seconds have passed since the
    limit was made (None: never). Under several ranks the slowest rank's clock decides (an
    all-reduce MAX), so every rank stops after the same step."""

    def __init__(self, limit_s: float | None, device=None):
        self.limit_s, self.device = limit_s, device
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def reached(self) -> bool:
        if self.limit_s is None:
            return False
        elapsed = self.elapsed()
        import torch.distributed as dist

        if dist.is_initialized() and dist.get_world_size() > 1:
            import torch

            t = torch.tensor([elapsed], dtype=torch.float64, device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            elapsed = float(t)
        return elapsed >= self.limit_s


def _main() -> None:  # launch.sh: threads per process for N processes
    import sys

    print(default_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1))


if __name__ == "__main__":
    _main()

"""How many CPU threads torch should use, given how much its threads have to wait for a core right now.

PyTorch's CPU kernels split every matrix product over `torch.get_num_threads()` threads and wait for the slowest.
When another process keeps one of the cores busy, one of those threads is descheduled for whole time slices and the
others spin waiting for it. Measured on this project's 2-core machine (LoRA step of SmolLM2-135M, 2 x 450 tokens):

    idle machine:            2 threads 140 tokens/s, 1 thread 85
    one core kept busy:      2 threads  49 tokens/s, 1 thread 88

So on a busy laptop, using fewer threads than cores is 1.8x faster, and the demo's 15-minute promise depends on it.

`ThreadGovernor.tick()` is cheap enough to call at every training or decoding step. At most every `interval` seconds
it reads the kernel's scheduler statistics of this process's threads (`/proc/self/task/*/schedstat`: the time each
spent runnable but waiting for a CPU) and, when torch's threads waited for more than `WAITING` of a core over the
interval, gives torch one thread fewer. Every `probe_every` seconds below the core count it tries one more thread; if
that thread has to wait, the next look takes it back (at most one interval of slow steps per probe). Waiting is the
signal rather than other processes' CPU use, because only waiting hurts: a process that yields the core as soon as
ours wants it (a niced job in the same scheduling group, a low-weight cgroup) uses idle cycles without slowing us,
and one at equal weight does not.

It only chooses how many threads compute the same numbers, so results do not change beyond float summation order
(the demo's loss curves agree to 1e-3 either way). An explicit `RAGTUNE_THREADS` (or `OMP_NUM_THREADS`) fixes the
count and turns the governor off; so does a platform without `/proc/self/task` (then nothing changes).

Foundation module: imports nothing from ragtune; torch is imported lazily.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

THREADS_ENV = "RAGTUNE_THREADS"
# Torch's threads are contended once they wait, summed over threads, for this share of the interval. With 2 threads
# and one spinning process on 2 cores they wait ~0.7; on an idle machine well under 0.1.
WAITING = 0.25


def fixed_threads() -> int | None:
    """The thread count the user fixed through the environment, if any."""
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def waiting_ns() -> int | None:
    """Nanoseconds this process's threads have spent runnable but not running, all threads together."""
    total = 0
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/schedstat", encoding="ascii") as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the thread ended since listdir
    return total


def next_threads(threads: int, cores: int, waited: float, probe_due: bool) -> int:
    """The thread count after an interval in which torch's threads waited `waited` cores' worth for a CPU."""
    if waited > WAITING:  # contended: one thread fewer (or more fewer on a big machine); never below one
        return max(1, threads - max(1, round(waited)))
    if probe_due and threads < cores:
        return threads + 1
    return threads


class ThreadGovernor:
    """Keeps torch's CPU thread count where its threads do not wait for a core (see the module doc)."""

    def __init__(self, interval: float = 2.0, on_change: Callable[[str], None] | None = None,
                 cores: int | None = None, probe_every: float = 20.0, report_every: float = 60.0) -> None:
        """`on_change(text)` hears about a step down, at most once per `report_every` seconds (a fluctuating load
        must not flood the log); `changes` counts every change, probes included."""
        self.interval = interval
        self.probe_every = probe_every
        self.report_every = report_every
        self.on_change = on_change
        self.cores = cores or usable_cores()
        self.changes = 0
        self._reported = -float("inf")
        self._last_at = time.monotonic()
        self._last_wait = waiting_ns() if fixed_threads() is None and self.cores > 1 else None
        self._changed_at = self._last_at
        self.enabled = self._last_wait is not None

    def tick(self) -> int | None:
        """Look again if `interval` seconds have passed; returns the new thread count when it changed."""
        if not self.enabled or self._last_wait is None:
            return None
        now = time.monotonic()
        if now - self._last_at < self.interval:
            return None
        wait = waiting_ns()
        if wait is None:
            self.enabled = False
            return None
        waited = (wait - self._last_wait) / 1e9 / (now - self._last_at)
        self._last_at, self._last_wait = now, wait
        import torch

        have = torch.get_num_threads()
        want = next_threads(have, self.cores, waited, now - self._changed_at >= self.probe_every)
        if want == have:
            return None
        torch.set_num_threads(want)
        self.changes += 1
        self._changed_at = now
        if want < have and self.on_change is not None and now - self._reported >= self.report_every:
            self._reported = now
            self.on_change(f"torch threads waited {waited:.1f} cores' worth for a CPU (another process is busy): "
                           f"threads {have} -> {want}, trying {want + 1} again every {self.probe_every:.0f} s")
        return want

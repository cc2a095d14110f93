"""How many CPU threads torch should use, given what other processes on the machine are doing right now.

PyTorch's CPU kernels split every matrix product over `torch.get_num_threads()` threads and wait for the slowest.
When another process keeps one of the cores busy, one of those threads is descheduled for whole time slices and the
others spin waiting for it. Measured on this project's 2-core machine (LoRA step of SmolLM2-135M, 2 x 450 tokens):

    idle machine:            2 threads 140 tokens/s, 1 thread 85
    one core kept busy:      2 threads  49 tokens/s, 1 thread 88

So on a busy laptop, using fewer threads than cores is 1.8x faster, and the demo's 15-minute promise depends on it.
`ThreadGovernor.tick()` is cheap enough to call at every training step or decoding step: at most every `interval`
seconds it reads `/proc/stat` (all processes' CPU time) and `/proc/self/stat` (this process's), works out how many
cores the *other* processes used over the interval, and sets torch's thread count to the cores left (at least 1).
It only chooses how many threads compute the same numbers, so results do not change beyond float summation order
(the demo's loss curves agree to 1e-3 either way). An explicit `RAGTUNE_THREADS` (or `OMP_NUM_THREADS`) fixes the
count and turns the governor off; so does a platform without `/proc` (then nothing changes).

Foundation module: imports nothing from ragtune; torch is imported lazily.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

THREADS_ENV = "RAGTUNE_THREADS"
# A core counts as taken once other processes use this much of it: with 2 torch threads and one spinning process
# on 2 cores the spinner gets about 2/3 of a core, and that must already make the governor step down to 1 thread.
TAKEN = 0.5


@dataclass
class CpuSample:
    at: float  # time.monotonic()
    busy_ticks: int  # all CPUs, all processes: user + nice + system + irq + softirq + steal
    own_ticks: int  # this process, all its threads: utime + stime


def _read_sample() -> CpuSample | None:
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
        with open("/proc/self/stat", encoding="ascii") as f:
            own = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # cpu user nice system idle iowait irq softirq steal ...
    values = [int(v) for v in fields[1:9]]
    busy = values[0] + values[1] + values[2] + values[5] + values[6] + values[7]
    # after the ")" of the command name: state is field 3 of stat(5), utime 14, stime 15
    return CpuSample(time.monotonic(), busy, int(own[11]) + int(own[12]))


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


def threads_for(cores: int, others: float) -> int:
    """Threads to use on `cores` cores when other processes use `others` cores' worth of CPU."""
    taken = int(others + (1.0 - TAKEN))  # 0.5 of a core taken counts as the whole core
    return max(1, min(cores, cores - taken))


class ThreadGovernor:
    """Keeps torch's CPU thread count at the number of cores other processes leave free (see the module doc)."""

    def __init__(self, interval: float = 2.0, on_change: Callable[[str], None] | None = None,
                 cores: int | None = None, report_every: float = 60.0) -> None:
        """`on_change(text)` hears about a change, at most once per `report_every` seconds (a fluctuating load
        must not flood the log; `changes` counts them all)."""
        self.interval = interval
        self.report_every = report_every
        self._reported = -float("inf")
        self.on_change = on_change
        self.cores = cores or usable_cores()
        self.enabled = fixed_threads() is None and self.cores > 1
        self.ticks_per_second = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._last = _read_sample() if self.enabled else None
        if self._last is None:
            self.enabled = False
        self.changes = 0

    def tick(self) -> int | None:
        """Look again if `interval` seconds have passed; returns the new thread count when it changed."""
        if not self.enabled or self._last is None:
            return None
        now = time.monotonic()
        if now - self._last.at < self.interval:
            return None
        sample = _read_sample()
        if sample is None:
            self.enabled = False
            return None
        elapsed = (sample.at - self._last.at) * self.ticks_per_second
        others = max(0.0, (sample.busy_ticks - self._last.busy_ticks) - (sample.own_ticks - self._last.own_ticks))
        self._last = sample
        if elapsed <= 0:
            return None
        load = others / elapsed
        import torch

        want = threads_for(self.cores, load)
        have = torch.get_num_threads()
        if want == have:
            return None
        torch.set_num_threads(want)
        self.changes += 1
        if self.on_change is not None and now - self._reported >= self.report_every:
            self._reported = now
            self.on_change(f"other processes use {load:.1f} of {self.cores} cores: torch threads {have} -> {want}")
        return want

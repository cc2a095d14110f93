"""The thread governor: torch's CPU threads step down when they wait for a core (ragtune.llm.cpu_share)."""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import pytest

from ragtune.llm import cpu_share
from ragtune.llm.cpu_share import ThreadGovernor, next_threads


def test_next_threads_steps_down_when_threads_wait_and_probes_back_up():
    assert next_threads(2, 2, waited=0.05, probe_due=True) == 2  # idle: nothing to change
    assert next_threads(2, 2, waited=0.7, probe_due=False) == 1  # a spinner on one of 2 cores
    assert next_threads(1, 2, waited=0.0, probe_due=False) == 1  # no probe yet
    assert next_threads(1, 2, waited=0.0, probe_due=True) == 2  # try one more thread
    assert next_threads(1, 2, waited=0.9, probe_due=True) == 1  # never fewer than one
    assert next_threads(8, 8, waited=2.6, probe_due=False) == 5


def test_an_explicit_thread_count_turns_the_governor_off(monkeypatch):
    monkeypatch.setenv(cpu_share.THREADS_ENV, "2")
    governor = ThreadGovernor(interval=0.0, cores=2)
    assert not governor.enabled
    assert governor.tick() is None


def _spin() -> None:  # pragma: no cover - runs in the child
    while True:
        pass


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="the governor reads /proc (Linux only)")
def test_a_busy_core_takes_torch_down_to_one_thread(monkeypatch):
    """Two real spinning processes at this process's priority: torch's two threads wait for a core, the governor
    sees it in the scheduler's statistics and gives torch one thread; the report says why."""
    import torch

    monkeypatch.delenv(cpu_share.THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    said: list[str] = []
    hogs = [mp.get_context("spawn").Process(target=_spin, daemon=True) for _ in range(2)]
    for hog in hogs:
        hog.start()
    try:
        time.sleep(1.0)  # let the spinners start
        torch.set_num_threads(2)
        governor = ThreadGovernor(interval=0.5, on_change=said.append, cores=2, probe_every=60.0)
        assert governor.enabled
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline and torch.get_num_threads() == 2:
            torch.ones(512, 512) @ torch.ones(512, 512)
            governor.tick()
        assert torch.get_num_threads() == 1
        assert said and "threads 2 -> 1" in said[0]
    finally:
        for hog in hogs:
            hog.terminate()
            hog.join()
        torch.set_num_threads(before)

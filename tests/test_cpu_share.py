"""The thread governor: torch's CPU threads follow what other processes leave free (ragtune.llm.cpu_share)."""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import pytest

from ragtune.llm import cpu_share
from ragtune.llm.cpu_share import ThreadGovernor, threads_for


def test_threads_for_steps_down_once_half_a_core_is_taken():
    assert threads_for(2, 0.0) == 2
    assert threads_for(2, 0.3) == 2
    assert threads_for(2, 0.6) == 1  # 2 torch threads + 1 spinner on 2 cores: the spinner gets ~2/3 of a core
    assert threads_for(2, 1.0) == 1
    assert threads_for(2, 5.0) == 1  # never fewer than one
    assert threads_for(8, 2.2) == 6


def test_an_explicit_thread_count_turns_the_governor_off(monkeypatch):
    monkeypatch.setenv(cpu_share.THREADS_ENV, "2")
    governor = ThreadGovernor(interval=0.0, cores=2)
    assert not governor.enabled
    assert governor.tick() is None


def _spin() -> None:  # pragma: no cover - runs in the child
    while True:
        pass


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="the governor reads /proc (Linux only)")
def test_a_busy_core_takes_torch_down_to_one_thread(monkeypatch):
    """A real second process spinning on one core: the governor sees it (and not this process's own work) and
    gives torch one thread; the report says why."""
    import torch

    monkeypatch.delenv(cpu_share.THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    said: list[str] = []
    hog = mp.get_context("spawn").Process(target=_spin, daemon=True)
    hog.start()
    try:
        time.sleep(1.0)  # let the spinner start
        governor = ThreadGovernor(interval=0.5, on_change=said.append, cores=2)
        assert governor.enabled
        torch.set_num_threads(2)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:  # this process works too: its own CPU time must not count as "others"
            torch.ones(256, 256) @ torch.ones(256, 256)
            governor.tick()
        assert torch.get_num_threads() == 1
        assert said and "torch threads 2 -> 1" in said[0]
    finally:
        hog.terminate()
        hog.join()
        torch.set_num_threads(before)

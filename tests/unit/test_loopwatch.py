"""The loop watch that the GUI tests fail on: it measures a stall and names the code that held the loop."""

from __future__ import annotations

import asyncio
import functools
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable

import pytest

from fleetdesk.gui.loopwatch import LoopWatch


def a_callback_that_blocks_the_loop() -> None:
    time.sleep(0.15)


def test_a_stall_is_measured_and_reported_with_the_code_that_held_the_loop() -> None:
    watch = LoopWatch(where=True)

    async def scenario() -> None:
        watch.start()
        await asyncio.sleep(0.05)
        asyncio.get_running_loop().call_soon(a_callback_that_blocks_the_loop)
        await asyncio.sleep(0.1)
        watch.stop()

    asyncio.run(scenario())
    assert 0.12 <= watch.worst < 1.0, watch.stalls
    assert "a_callback_that_blocks_the_loop" in watch.worst_where()
    assert len(watch.where) == 1, [late for late, _ in watch.where]  # beats on time sample nothing


def test_without_sampling_nothing_is_sampled() -> None:
    watch = LoopWatch()

    async def scenario() -> None:
        watch.start()
        await asyncio.sleep(0.05)
        watch.stop()

    asyncio.run(scenario())
    assert watch.stalls and watch.where == [] and watch.worst_where() == ""


def catastrophic_regex() -> None:
    """Computes in C with the GIL held (the re module never releases it): nothing else in the process runs."""
    started = time.perf_counter()
    while time.perf_counter() - started < 0.15:
        re.match(r"(a+)+b", "a" * 18)


@functools.cache
def _one_call_of_at_least(seconds: float) -> str:
    """A subject for `(a+)+b` that one re.match call takes at least `seconds` over on this machine: each more "a"
    doubles the backtracking, so the length is found by timing (a fixed length took 0.11 s on one host, 0.15 on
    another). Each length is timed three times and the fastest counts: a busy host only ever makes a call slower,
    and a length timed slow by chance once gave a call of 0.119 s where 0.15 was asked."""
    subject = "a" * 16
    while True:
        fastest = min(_time_one_match(subject) for _ in range(3))
        if fastest >= seconds / 2:
            return subject + "a"
        subject += "a"


def _time_one_match(subject: str) -> float:
    started = time.perf_counter()
    re.match(r"(a+)+b", subject)
    return time.perf_counter() - started


def a_worker_thread_that_holds_the_gil() -> None:
    """One regex call of at least 0.25 s in another thread (twice the 0.12 s asked of the stall, for a noisy host):
    the loop's thread waits for the GIL, using no CPU."""
    threading.Thread(target=re.match, args=(r"(a+)+b", _one_call_of_at_least(0.25))).start()


def beats_while(action: Callable[[], None]) -> LoopWatch:
    watch = LoopWatch(where=True)

    async def scenario() -> None:
        watch.start()
        await asyncio.sleep(0.05)
        asyncio.get_running_loop().call_soon(action)
        await asyncio.sleep(0.1)
        watch.stop()

    asyncio.run(scenario())
    return watch


@pytest.mark.parametrize("action", [a_callback_that_blocks_the_loop, catastrophic_regex,
                                    a_worker_thread_that_holds_the_gil])
def test_a_loop_that_sleeps_or_holds_the_gil_or_waits_for_it_is_blamed(action: Callable[[], None]) -> None:
    _one_call_of_at_least(0.25)  # timed here, before the loop runs, so the loop only ever waits for the thread
    watch = beats_while(action)
    assert watch.worst_blamed() >= 0.12 and watch.process_pauses() == [], watch.stalls


def test_a_process_the_machine_does_not_run_is_not_blamed_on_the_loop() -> None:
    """SIGSTOP for 0.3 s, sent from outside, is what a host pausing the machine or two busy cores look like to
    the process: every thread stops at once, so no sample is taken and the loop's thread uses no CPU."""
    def stopped_from_outside() -> None:
        subprocess.Popen(["sh", "-c", f"kill -STOP {os.getpid()}; sleep 0.3; kill -CONT {os.getpid()}"])

    watch = beats_while(stopped_from_outside)
    assert watch.worst >= 0.2, watch.stalls
    assert max(watch.process_pauses()) >= 0.2 and watch.worst_blamed() < 0.1, (watch.stalls, watch.blamed)

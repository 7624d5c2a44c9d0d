"""The loop watch that the GUI tests fail on: it measures a stall and names the code that held the loop."""

from __future__ import annotations

import asyncio
import time

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

"""The watchdog behind the ``loop_watch`` fixture (tests/support/loopwatch.py): a blocking call
and a long computation on the loop are caught with the line that did it; a loop that waits,
however long, is not."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from tests.support.loopwatch import LoopWatch


@pytest.fixture
async def watch() -> AsyncIterator[LoopWatch]:
    w = LoopWatch(asyncio.get_running_loop(), threshold_s=0.3, cpu_threshold_s=0.2)
    w.start()
    yield w
    w.stop()


@pytest.mark.timeout(30)
async def test_a_blocking_sleep_on_the_loop_is_caught_with_its_line(watch: LoopWatch) -> None:
    await asyncio.sleep(0.1)
    time.sleep(1.2)  # the blocking call  # noqa: ASYNC251 (the point of the test)
    await asyncio.sleep(0.2)  # the loop runs again: the stall ends
    watch.stop()
    assert len(watch.blocks) == 1, watch.report()
    block = watch.blocks[0]
    assert block.stalled_s >= 1.0 and block.cpu_s < 0.5
    assert "time.sleep(1.2)  # the blocking call" in block.stack


@pytest.mark.timeout(30)
async def test_a_long_computation_on_the_loop_is_caught(watch: LoopWatch) -> None:
    end = time.thread_time() + 0.8
    while time.thread_time() < end:  # CPU, not wall time: the machine may be busy
        pass
    await asyncio.sleep(0.2)
    watch.stop()
    assert len(watch.blocks) == 1, watch.report()
    assert watch.blocks[0].cpu_s >= 0.2
    assert "time.thread_time() < end" in watch.blocks[0].stack


@pytest.mark.timeout(30)
async def test_a_loop_that_waits_is_not_blocked(watch: LoopWatch) -> None:
    await asyncio.sleep(1.2)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.Event().wait(), 0.5)
    for _ in range(20):
        await asyncio.sleep(0.02)
    watch.stop()
    assert watch.blocks == []

"""``Rollbacks``: the engine cuts of interruptions run as tasks, each once the one before has
ended (the engine cuts its newest turns), and replies wait (``settled``) until all have."""

from __future__ import annotations

import asyncio

from moss_pipecat.protocol.errors import ServerUnavailableError
from moss_pipecat.service.interruption import InterruptionPlan, Rollbacks
from moss_pipecat.service.reply import Reply


class Turn:
    summary = None
    turn_id = 7

    def cancel(self) -> None:
        pass


class Session:
    """Each ``interrupt`` waits until the test lets it go; records the order of the cuts."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None, int | None]] = []
        self.go: list[asyncio.Event] = []
        self.fail: set[int] = set()

    async def interrupt(self, frames: int, units: int | None, turn_id: int | None = None):
        n = len(self.calls)
        self.calls.append((frames, units, turn_id))
        self.go.append(asyncio.Event())
        await self.go[n].wait()
        if n in self.fail:
            raise ServerUnavailableError("connection to the server lost")
        return None


def decided_plan(context_id: str) -> InterruptionPlan:
    """An interruption of one reply nothing of which was heard (it never played)."""
    reply = Reply(context_id, previous=None)
    reply.turn = Turn()
    plan = InterruptionPlan(kept=[], dropped=[reply], newest=[reply])
    plan.decide(0)
    return plan


async def until(condition) -> None:
    while not condition():
        await asyncio.sleep(0)


async def test_cuts_run_one_after_another_and_replies_wait_for_all():
    rollbacks, session, errors, cut = Rollbacks(), Session(), [], []

    async def on_cut(context_id, summary):
        cut.append(context_id)

    async def push_error(**kwargs):
        errors.append(kwargs["error_msg"])

    first, second = decided_plan("a"), decided_plan("b")
    for plan in (first, second):
        rollbacks.begin(plan)
        assert not rollbacks.settled.is_set()
        rollbacks.cut(plan, session, on_cut, push_error, asyncio.ensure_future)
    assert rollbacks.dropped_reply("a") is first.dropped[0]
    assert rollbacks.dropped_reply("b") is second.dropped[0]
    await until(lambda: session.calls)
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(session.calls) == 1  # the second cut waits for the first
    session.fail.add(0)  # the first fails: the next runs all the same
    session.go[0].set()
    await until(lambda: len(session.calls) == 2)
    assert not rollbacks.settled.is_set()
    assert rollbacks.dropped_reply("a") is None  # its cut has ended
    session.go[1].set()
    await rollbacks.wait()
    assert [call[2] for call in session.calls] == [7, 7]  # each cut names its turn
    assert rollbacks.settled.is_set() and not rollbacks.tasks
    assert errors and "interrupt failed" in errors[0] and len(errors) == 1


async def test_an_interruption_abandoned_before_its_cut_settles():
    rollbacks = Rollbacks()
    plan = decided_plan("a")
    rollbacks.begin(plan)
    rollbacks.end(plan)
    assert rollbacks.settled.is_set() and rollbacks.dropped_reply("a") is None
    await rollbacks.wait()  # nothing under way

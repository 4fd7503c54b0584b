"""A turn's channel: ``Channel.put_all`` (a tick's chunks in one wake-up per event loop) hands
every channel its items in order, exactly as one ``put`` each would."""

from __future__ import annotations

import asyncio
import threading

from moss_pipecat.engine.events import Channel


class _Loop:
    """An event loop on a thread of its own, as a server's readers have."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def channel(self) -> Channel:
        async def make() -> Channel:
            return Channel()

        return self.run(make())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


class _Logged(Channel):
    """A channel that takes its items its own way (as the traffic drivers' do)."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[object] = []

    def put(self, item: object) -> None:
        self.log.append(item)


def test_put_all_gives_each_channel_its_items_in_order():
    first, second = _Loop(), _Loop()
    try:
        a, b, c = first.channel(), first.channel(), second.channel()
        plain, logged = Channel(), _Logged()
        items = [(a, 1), (plain, "p1"), (b, 2), (a, 3), (c, 4), (logged, "l1"), (b, 5)]
        items += [(logged, "l2"), (plain, "p2"), (c, 6), (a, 7)]
        Channel.put_all(items)
        a.put("after")  # a later put (a turn's summary) comes after the batch

        async def take(ch: Channel, n: int) -> list[object]:
            return [await ch.get() for _ in range(n)]

        assert first.run(take(a, 4)) == [1, 3, 7, "after"]
        assert first.run(take(b, 2)) == [2, 5]
        assert second.run(take(c, 2)) == [4, 6]
        assert [plain.get_sync(timeout=0), plain.get_sync(timeout=0)] == ["p1", "p2"]
        assert logged.log == ["l1", "l2"]
    finally:
        first.close()
        second.close()


def test_put_all_to_a_closed_loop_drops_its_items_and_serves_the_others():
    gone = _Loop()
    lost = gone.channel()
    gone.close()
    plain = Channel()
    Channel.put_all([(lost, 1), (plain, 2)])  # nobody listens to ``lost`` any more: no error
    assert plain.get_sync(timeout=0) == 2

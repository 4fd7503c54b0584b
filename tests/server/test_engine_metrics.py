"""The engine's counters on ``/metrics``: what an operator sizes the KV pools by."""

from __future__ import annotations

from moss_pipecat.client import RemoteEngine

from .conftest import GREEDY
from .turns import say

POOLS = dict(max_sessions=3, max_context=512, context_budget=500, turn_reserve=40)


async def test_pool_moves_and_turns_dropped_for_want_of_a_slot_are_scraped(
    make_tiny_engine, make_server
):
    engine = make_tiny_engine(eos_min_frames=30, kv_pools=((2, 128), (1, 512)), **POOLS)
    server = await make_server(engine)
    sample = server.hub.metrics.registry.get_sample_value

    def slots(capacity: int, state: str) -> float | None:
        return sample("moss_engine_kv_slots", {"capacity": str(capacity), "state": state})

    assert (slots(128, "free"), slots(512, "free")) == (2, 1)
    client = RemoteEngine(server.url)
    grows = await client.create_session(sampling=GREEDY)
    other = await client.create_session(sampling=GREEDY)
    assert (slots(128, "used"), slots(512, "used")) == (2, 0)
    for _ in range(4):  # past its 128 positions: moved to the 512 pool
        await say(grows, "A sentence that takes a while to say.", 30)
    assert sample("moss_engine_kv_pool_moves_total") == 1
    assert (slots(128, "used"), slots(512, "used")) == (1, 1)
    for _ in range(4):  # past 128 with the large slot taken: the oldest turns go
        await say(other, "A sentence that takes a while to say.", 30)
    snap = await other.snapshot()
    dropped = 4 - len(snap["turns"])
    assert dropped > 0
    assert sample("moss_engine_history_turns_dropped_total", {"reason": "no_slot"}) == dropped
    assert sample("moss_engine_history_turns_dropped_total", {"reason": "budget"}) == 0
    assert sample("moss_engine_prefill_rows_total") > 0
    await grows.close()
    await other.close()
    assert (slots(128, "used"), slots(512, "used")) == (0, 0)

"""Many remote sessions over loopback produce exactly the local engine's frames (greedy), and
leave nothing behind."""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc

import torch

from moss_pipecat.client import RemoteEngine

from ..fixture_facts import frame_pcm_bytes
from .conftest import GREEDY, TOKEN, eventually
from .scripts import make_script, run_script

N_SESSIONS = 32


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def _run_local(engine, scripts):
    sessions = [engine.create_session(sampling=GREEDY) for _ in scripts]
    try:
        return await asyncio.gather(
            *(run_script(s, sc) for s, sc in zip(sessions, scripts, strict=True))
        )
    finally:
        for s in sessions:
            await s.close()


async def _run_remote(url, scripts):
    # 32 handshakes at once on a loaded 2-core CI box can take longer than the 5 s default;
    # this test is about equal audio, not connect latency.
    client = RemoteEngine(
        url, token=TOKEN, request_timeout=30, connect_timeout=30, reconnect_timeout=90
    )

    async def one(i, script):
        session = await client.create_session(conversation_id=f"parity-{i}", sampling=GREEDY)
        try:
            return await run_script(session, script)
        finally:
            await session.close()

    return await asyncio.gather(*(one(i, sc) for i, sc in enumerate(scripts)))


def _assert_same(local, remote, frame_bytes: int):
    for i, (a, b) in enumerate(zip(local, remote, strict=True)):
        assert len(a) == len(b)
        for t, ((ca, sa, ha, pa), (cb, sb, hb, pb)) in enumerate(zip(a, b, strict=True)):
            assert (sa, ha) == (sb, hb), f"session {i} turn {t}: {(sa, ha)} != {(sb, hb)}"
            assert torch.equal(ca, cb), f"session {i} turn {t}: frames differ"
            assert pa == pb == [frame_bytes], f"session {i} turn {t}: PCM frame sizes {pa} {pb}"


async def test_32_concurrent_remote_sessions_equal_local_and_leak_nothing(
    make_tiny_engine, make_server, realtime_meta, codec_dir
):
    scripts = [make_script(1000 + i, realtime_meta) for i in range(N_SESSIONS)]
    # No turn ends before 10 frames, so every scripted interruption (after <= 10 chunks)
    # happens, wherever this fixture set's model would stop.
    local_engine = make_tiny_engine(max_sessions=N_SESSIONS, eos_min_frames=10)
    t0 = time.monotonic()
    local = await _run_local(local_engine, scripts)
    print(f"local {time.monotonic() - t0:.1f}s")
    local_engine.shutdown()  # the two engines share the model: never run them at once
    interrupted = sum(stop == "interrupted" for turns in local for _, stop, _, _ in turns)
    assert interrupted >= 10, "the scripts should exercise interruptions"

    engine = make_tiny_engine(max_sessions=N_SESSIONS, eos_min_frames=10)
    server = await make_server(engine, token=TOKEN)
    hub = server.hub
    t0 = time.monotonic()
    remote = await _run_remote(server.url, scripts)
    print(f"remote {time.monotonic() - t0:.1f}s")
    _assert_same(local, remote, frame_pcm_bytes(codec_dir))
    # Frames sent >= frames read (a client stops reading when it interrupts).
    assert hub.metrics.frames.value() >= sum(c.shape[0] for turns in remote for c, _, _, _ in turns)

    async def settled():
        await eventually(lambda: not hub.connections, what="server connections to close")
        assert hub.conversations == {}
        assert engine.session_ids == []

    await settled()
    baseline_tasks = len(asyncio.all_tasks())

    # Second round, measured: the same traffic must not grow memory or tasks.
    gc.collect()
    rss0 = _rss_mb()
    tracemalloc.start()
    traced0, _ = tracemalloc.get_traced_memory()
    t0 = time.monotonic()
    again = await _run_remote(server.url, scripts)
    print(f"remote traced {time.monotonic() - t0:.1f}s")
    _assert_same(local, again, frame_pcm_bytes(codec_dir))
    await settled()
    gc.collect()
    traced1, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = _rss_mb()
    await eventually(lambda: len(asyncio.all_tasks()) <= baseline_tasks, what="tasks to finish")
    assert traced1 - traced0 < 4 * 2**20, (
        f"python heap grew by {(traced1 - traced0) / 2**20:.1f} MiB"
    )
    assert rss1 - rss0 < 64, f"RSS grew by {rss1 - rss0:.0f} MiB"
    assert hub.metrics.connections.value() == 0 and hub.metrics.sessions.value() == 0

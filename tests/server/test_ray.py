"""The Ray Serve app on a local CPU cluster: two tiny replicas, conversation affinity, and the
same frames as the local engine. Opt-in by installation: skipped when ``ray[serve]`` is absent
(install the ``serve`` extra to run it)."""

from __future__ import annotations

import pytest
import torch

from moss_pipecat.client import RemoteEngine
from moss_pipecat.engine import TINY_ENGINE_CONFIG
from moss_pipecat.server import UnauthorizedError

from .conftest import GREEDY, TOKEN

TEXTS = ["Hello from a replica.", "And a second turn."]


async def _turns(session, rvq: int) -> list[torch.Tensor]:
    out = []
    for i, text in enumerate(TEXTS):
        if i:
            await session.add_user_turn([5, 6, 7], torch.arange(3 * rvq).reshape(3, rvq))
        turn = await session.start_turn(max_frames=8)
        turn.push_text(text)
        turn.end_text()
        codes = [c.codes async for c in turn]
        out.append(torch.stack(codes) if codes else torch.zeros(0, rvq, dtype=torch.long))
    return out


@pytest.fixture
async def ray_serve(ray_moss_app):
    """The shared app (``ray_moss_app``) with two running replicas: its proxy URL."""
    await ray_moss_app.ensure(2)
    return ray_moss_app.url


async def test_ray_app_serves_conversations_pinned_to_replicas(ray_serve, make_tiny_engine):
    # The app's turns run to their max_frames (``eos_min_frames``); so do the local ones,
    # under the EOS rules a tiny app takes by default (the stand-in's).
    engine = make_tiny_engine(
        max_sessions=1,
        max_context=1024,
        eos_min_frames=80,
        eos_after_text=TINY_ENGINE_CONFIG.eos_after_text,
    )
    local = engine.create_session(sampling=GREEDY)
    rvq = engine.layout.rvq
    expected = await _turns(local, rvq)
    await local.close()
    engine.shutdown()

    # The app is the standalone server's: a wrong token is refused at the upgrade.
    with pytest.raises(UnauthorizedError):
        await RemoteEngine(ray_serve, token="wrong", reconnect_timeout=2).create_session()
    client = RemoteEngine(ray_serve, token=TOKEN, request_timeout=30)
    servers = set()
    for k in range(4):
        session = await client.create_session(conversation_id=f"ray-{k}", sampling=GREEDY)
        first = session.server_id
        got = await _turns(session, rvq)
        for a, b in zip(expected, got, strict=True):
            assert torch.equal(a, b)
        # Reconnects land on the replica that holds the conversation.
        for _ in range(2):
            await session._link.close()
            snap = await session.snapshot()
            assert session.resumed and session.server_id == first
            assert [r for r, _ in snap["turns"]] == ["assistant", "user", "assistant"]
        servers.add(first)
        await session.close()
    assert len(servers) >= 1

"""A conversation id is not a claim (issue #24): after its server is killed, whoever says hello
first with the id makes a conversation under it, with a secret of their own. The client that
created it first proves so with the resume ticket its server issued (servers of a deployment
share the resume key): the squatter's conversation is closed with a clear error, and the
owner's call goes on with the history of its journal."""

from __future__ import annotations

import asyncio

import pytest
import torch

from moss_pipecat.client import RemoteEngine
from moss_pipecat.protocol.errors import ForbiddenError

from ..engine.helpers import random_frames
from .conftest import GREEDY
from .processes import ServerProcess, http_get
from .turns import say

KEY = "squat-test-resume-key-0123456789abcdef"


async def test_a_squatter_after_kill_9_loses_the_id_and_the_owner_s_call_goes_on(
    fixtures_dir, tmp_path, realtime_meta
):
    key_file = tmp_path / "resume.key"
    key_file.write_text(KEY + "\n")
    extra = ("--resume-key-file", str(key_file))
    async with ServerProcess(fixtures_dir, tmp_path / "server.log", extra=extra) as server:
        url = server.url
        # The id is guessable (a telephony call SID).
        owner = await RemoteEngine(url).create_session(conversation_id="CA0001", sampling=GREEDY)
        lo = realtime_meta["text_ids_drawn_from"][0]
        frames = random_frames(torch.Generator().manual_seed(5), 5, realtime_meta)
        await owner.add_user_turn(list(range(lo, lo + 3)), frames)
        assert await say(owner, "Hello there.", 4) == 4
        before = await owner.snapshot()
        assert [r for r, _ in before["turns"]] == ["user", "assistant"]

        await server.restart()  # kill -9: the server keeps nothing

        # The attacker is first on the new server: the id is free, so it makes the
        # conversation with its own secret, and a history of its own.
        attacker = await RemoteEngine(url).create_session(conversation_id="CA0001", sampling=GREEDY)
        assert not attacker.resumed and attacker.resume_secret != owner.resume_secret
        assert await say(attacker, "Not yours.", 3) == 3

        # The owner's next call proves it came first: its history is back, the call goes on.
        assert await say(owner, "Still here.", 3) == 3
        assert owner.restored == 1 and owner.history_lost == 0 and not owner.resumed
        after = await owner.snapshot()
        n = before["rows"].shape[0]
        assert torch.equal(after["rows"][:n], before["rows"])
        assert [r for r, _ in after["turns"]] == ["user", "assistant", "assistant"]
        assert after["turn_frames"][:2] == before["turn_frames"]

        # The attacker was told at once, and cannot take the conversation back.
        with pytest.raises(ForbiddenError, match="created earlier"):
            await asyncio.wait_for(attacker.snapshot(), 10)
        with pytest.raises(ForbiddenError, match="created earlier"):
            await asyncio.wait_for(attacker.snapshot(), 10)
        assert (await owner.snapshot())["rows"].equal(after["rows"])
        status, metrics = await asyncio.to_thread(http_get, server.http_url + "/metrics")
        assert status == 200
        assert "moss_server_resume_takeovers_total 1.0" in metrics
        assert 'moss_server_resume_refused_total{reason="ticket_newer"} 2.0' in metrics
        await owner.close()

"""``RemoteSession``: one conversation on the server, re-connected (and resumed, or its voice
and sampling re-applied) on the next call after its link drops."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from loguru import logger

from moss_pipecat import protocol as P
from moss_pipecat.client.journal import Journal
from moss_pipecat.client.remote_cut import RemoteCuts
from moss_pipecat.client.remote_hello import RemoteHello
from moss_pipecat.client.remote_turn import RemoteTurn
from moss_pipecat.client.tries import Tries
from moss_pipecat.client.wire import (
    _wire_sampling,
    codes_payload,
    snapshot_dict,
    user_audio_bytes,
)
from moss_pipecat.errors import MossError, SessionClosedError
from moss_pipecat.protocol.errors import ServerUnavailableError
from moss_pipecat.speech.commands import (
    AddUserTurn,
    CreateSession,
    Interrupt,
    SetLimits,
    SetSampling,
    StartTurn,
)
from moss_pipecat.speech.sampling import SamplingParams

if TYPE_CHECKING:
    from moss_pipecat.client.link import Link
    from moss_pipecat.client.remote_engine import RemoteEngine

# Connections one call tries when each drops while its conversation is being made again.
_REMAKE_ATTEMPTS = 3
# Turns whose ids a cut may name: more than the replies one barge-in cuts (the one playing and
# those opened behind it).
_OPENED_KEPT = 8


class RemoteSession(RemoteCuts, RemoteHello):
    """Async handle of one conversation on an engine server; mirrors ``Session``.

    Create it with ``RemoteEngine.create_session``.
    """

    def __init__(
        self,
        engine: RemoteEngine,
        conversation_id: str | None,
        sampling: SamplingParams | None,
        seed: int | None,
        resume_secret: str | None = None,
        resume_ticket: str | None = None,
    ) -> None:
        # The engine's own checks, before anything is sent.
        created = CreateSession(sampling=sampling or SamplingParams(), seed=seed)
        self.engine = engine
        self.id = conversation_id
        # The conversation's resume secret, sent in every hello. A new conversation gets ours
        # (drawn here, before the first hello: a retry of a handshake whose ``ready`` was lost
        # must hold it too); ``ready`` says which one is in force.
        self.resume_secret = resume_secret or secrets.token_urlsafe(32)
        # The server's proof that we made the conversation (``ready`` and each ``history``
        # give a fresh one), sent in every hello: a server that lost the conversation gives
        # it back to us from whoever made it anew meanwhile (``protocol``).
        self.resume_ticket = resume_ticket
        self.closed = False
        self.resumed = False  # did the last (re)connect find the conversation on the server?
        self.reconnects = 0
        # Reconnects that found the conversation gone and could not restore it (a history known
        # to be empty, no turn and no voice, loses nothing and is not counted).
        self.history_lost = 0
        self.restored = 0  # reconnects that found it gone and restored it from the journal
        self.moves = 0  # reconnects because the server drained (``goaway``)
        # The history as the server reported it: restored to a server that lost it.
        self.journal = Journal()
        self.audio: P.AudioInfo | None = None  # what the server's frames carry
        self.server_id: str | None = None  # the server (replica) the last connection reached
        self._features: tuple[str, ...] = ()  # the optional fields its ``ready`` listed
        self._sampling = sampling
        self._seed = created.seed
        self._voice: tuple[str, bytes, int | None] | None = None  # re-sent after a history loss
        self._limits: P.Limits | None = None  # re-applied to a conversation made anew
        self._link: Link | None = None
        # Set (to whether it was the first connection) while a conversation the server made
        # anew is not yet whole again (limits, history or voice): see ``_finish_remake``.
        self._remake: bool | None = None
        self._made = 0  # times a server made the conversation (anew)
        self._connect_lock = asyncio.Lock()
        self._turn: RemoteTurn | None = None
        self._turn_made = 0  # ``_made`` when the turn started
        # (turn id, ``_made``) of the turns opened lately: which ids a cut may name (RemoteCuts)
        self._opened: deque[tuple[int, int]] = deque(maxlen=_OPENED_KEPT)
        # The lost turn whose heard part a restore made the last turn (till the history moves)
        self._lost_restored: RemoteTurn | None = None
        # Cuts made in the journal while no server answered, with the server that held the
        # turn: made there again if it resumes the call (``RemoteCuts.send_held_cuts``)
        self._held_cuts: list[tuple[Interrupt, str | None]] = []

    # ---- connection -------------------------------------------------------------------------
    @property
    def connected_once(self) -> bool:
        """Whether a server answered a hello (``ready``): before that, the conversation may
        exist nowhere yet, and its first connection makes (or resumes) it."""
        return self.audio is not None

    async def open(self, *, retry: bool = True) -> Link:
        """The live link, (re)connecting first when there is none (each call does this);
        ``retry=False``: one connection attempt (``RemoteEngine.connect``)."""
        if self.closed:
            raise SessionClosedError(f"session {self.id!r} is closed")
        link = self._link
        if link is not None and link.alive:
            return link
        async with self._connect_lock:
            if self._link is not None and self._link.alive:
                return self._link
            tries = 0
            while True:
                link = await self._connect(retry)
                try:
                    await self._finish_remake(link)
                    return link
                except ServerUnavailableError:
                    # The link dropped while the conversation was being made again: the
                    # next connection resumes it and finishes the job (``_finish_remake``).
                    tries += 1
                    if link.alive or tries == _REMAKE_ATTEMPTS:
                        raise

    async def _connect(self, retry: bool) -> Link:
        old, self._link = self._link, None
        if old is not None:
            await old.close()
        first = not self.connected_once
        link = await self.engine.connect(self, after=old, retry=retry)
        self._link = link
        if not first:
            self.reconnects += 1
        if old is not None and old.moved is not None:
            self.moves += 1
        if not self.resumed:
            self._held_cuts.clear()  # the journal's history, with them, is restored
            self._made += 1
            self._remake = first
            self.journal.restore_due = not first and self.journal.restorable
        return link

    async def _finish_remake(self, link: Link) -> None:
        """Makes a conversation the server made anew whole again (``_made_anew``), also when
        the connection that began it was lost before it was done and this one resumed it:
        then the server's full history after ``ready`` says whether the restore landed. A
        server that resumed it with an older copy than the journal's has it replaced."""
        if self.journal.verify_due:
            await link.history_seen(self.engine.request_timeout)
        if self.journal.stale:
            await self._replace_stale(link)
        if self._remake is None:
            await self.send_held_cuts(link)
            return
        if self.resumed and self.journal.restore_due:
            await link.history_seen(self.engine.request_timeout)
            if not self.journal.restore_due:  # it landed; its reply was lost
                self._restored()
                self._remake = None
                return
        await self._made_anew(link, self._remake)
        self._remake = None

    async def _made_anew(self, link: Link, first: bool) -> None:
        """The server made the conversation anew: its limits again, then its history from the
        journal (or, without one, its voice)."""
        if self._limits is not None:
            await self._request(link, P.Settings, limits=self._limits)
        if self.journal.restore_due:
            fields, data = self._restore_request(link)
            carried = self.journal.lost is not None
            try:
                await self._request(link, P.Restore, data, **fields)
                self.journal.restore_due = False
                self._lost_restored = self._turn if carried else None
                self._restored()
                return
            except ServerUnavailableError:
                raise
            except MossError as e:  # refused (e.g. a smaller server): start afresh
                logger.warning(f"conversation {self.id}: restore refused: {e}")
        # Without a journal nothing says the history was empty: it counts as lost.
        lost = not (self.engine.journal and self.journal.empty)
        self.journal.clear()
        if self._voice is not None:
            fmt, data, rate = self._voice
            await self._request(link, P.Voice, data, format=fmt, sample_rate=rate, bytes=len(data))
        if not first and lost:
            self.history_lost += 1
            logger.warning(f"conversation {self.id}: the server lost its history")

    async def _replace_stale(self, link: Link) -> None:
        """This server held the conversation from before it went on elsewhere (it was
        unreachable, not gone, while another server carried the call): its older copy is
        replaced with the journal's, what was said meanwhile included."""
        fields, data = self._restore_request(link)
        self._held_cuts.clear()  # made in the journal's copy, the one this one is replaced with
        try:
            await self._request(link, P.Reset)
            await self._request(link, P.Restore, data, **fields)
        except ServerUnavailableError:
            raise  # the next connection checks again (``verify_due`` stays with ``stale``)
        except MossError as e:  # refused: the server's copy stays, the journal follows it
            logger.warning(f"conversation {self.id}: its older copy stays: {e}")
            self.journal.stale = self.journal.restore_due = False
            self.journal.valid = False  # until the server's next full history
            self.history_lost += 1
            return
        self.journal.stale = self.journal.restore_due = False
        self._restored()

    def _restore_request(self, link: Link) -> tuple[dict, bytes]:
        fields, data = self.journal.restore_request(self._seed)
        if P.RESTORE_TURN_NOISE not in link.ready.features:
            fields.pop("turn_noise", None)  # a server older than it refuses the field
        return fields, data

    def _restored(self) -> None:
        self.restored += 1
        logger.info(f"conversation {self.id}: history restored on {self.server_id}")

    async def _request(
        self, link: Link, cls: type[P._Msg], payload: bytes | None = None, **fields: Any
    ) -> Any:
        return await link.request(cls, payload, self.engine.request_timeout, **fields)

    async def _call(self, cls: type[P._Msg], payload: bytes | None = None, **fields: Any) -> Any:
        """A request that does the same however often it lands (voice, settings, reset,
        snapshot; a turn's start: the server cuts a turn a lost connection opened at what it
        sent it) is sent again after a reconnect if lost with its connection (the reconnect
        resumes the conversation, or first restores the journal's history), as ``Tries``
        allows."""
        tries = Tries(self.engine)
        while True:
            link = await self.open()
            try:
                return await self._request(link, cls, payload, **fields)
            except ServerUnavailableError as e:
                if not await tries.again():
                    raise
                logger.info(f"conversation {self.id}: {cls.__name__} lost with its connection: {e}")

    # ---- turns ----------------------------------------------------------------------------------
    async def start_turn(
        self,
        max_frames: int | None = None,
        *,
        min_frames: int | None = None,
        eos_after_text: bool | None = None,
    ) -> RemoteTurn:
        """Opens an assistant turn (fails if one is open); arguments as ``Session.start_turn``."""
        command = StartTurn(
            max_frames=max_frames, min_frames=min_frames, eos_after_text=eos_after_text
        )
        inbox = await self._call(P.TurnStart, **P.TurnStart.fields_of(command))
        # The link (the one ``_call`` used) filled the turn's inbox from the moment the server
        # opened it; the turn reads it.
        self._turn, self._turn_made = RemoteTurn(self, self._link, inbox), self._made
        self._opened.append((self._turn.turn_id, self._made))
        return self._turn

    async def add_user_turn(self, text_ids: Sequence[int], frames: Any) -> None:
        """Adds what the user said as transcript ids and codec frames [A, rvq] (as locally)."""
        command = AddUserTurn(text_ids, frames)
        await self.open()
        data = self._codes(frames, "user audio frames")
        await self._add_user(data, text_ids=list(command.text_ids), format="codes")

    async def _add_user(self, data: bytes, **fields: Any) -> None:
        """A user turn's request. One lost with its connection before its reply is sent again
        after the reconnect (as ``Tries`` allows), unless the history then held (the journal:
        the server's copy on a resume, the restored one on a server that lost it) ends with
        it."""
        before = self.journal.last_turn()
        tries = Tries(self.engine)
        while True:
            link = await self.open()
            if tries.sent > 1:
                if self.resumed:
                    await link.history_seen(self.engine.request_timeout)
                if self.journal.ends_with_user_turn_after(before):
                    return
                logger.info(f"conversation {self.id}: a user turn lost with its connection: again")
            try:
                await self._request(link, P.UserTurn, data, bytes=len(data), **fields)
                return
            except ServerUnavailableError:  # the connection was lost with the request on it
                if not self.engine.journal or not self.journal.valid:
                    raise  # (without a valid journal nothing says whether it landed)
                if not await tries.again():
                    raise

    def _codes(self, frames: Any, name: str) -> bytes:
        return codes_payload(frames, self.audio.rvq if self.audio else 16, name)

    async def add_user_audio_turn(self, text: str, audio: Any, sample_rate: int) -> None:
        """Adds what the user said as its transcript and audio; the server encodes the audio.

        Args:
            text: the transcript.
            audio: mono PCM16 bytes, an int16 array, or float samples in [-1, 1].
            sample_rate: rate of ``audio`` (resampled by the server's codec).
        """
        data = self._check_audio(audio, sample_rate)
        await self._add_user(data, text=str(text), format="pcm16", sample_rate=sample_rate)

    def _check_audio(self, audio: Any, sample_rate: int) -> bytes:
        limit = self._link.limits.max_audio_seconds if self._link else None
        return user_audio_bytes(audio, sample_rate, limit)

    # ---- settings ---------------------------------------------------------------------------
    async def set_voice(self, frames: Any | None) -> None:
        """Replaces the reference voice (codec frames [R, rvq]) or removes it (None)."""
        if frames is None:
            await self._call(P.Voice, format="none")
            self._voice = None
            return
        await self.open()
        data = self._codes(frames, "voice")
        await self._call(P.Voice, data, format="codes", bytes=len(data))
        self._voice = ("codes", data, None)

    async def set_voice_audio(self, audio: Any, sample_rate: int) -> None:
        """Replaces the reference voice with a recording (encoded by the server's codec)."""
        data = self._check_audio(audio, sample_rate)
        await self._call(
            P.Voice, data, format="pcm16", sample_rate=int(sample_rate), bytes=len(data)
        )
        self._voice = ("pcm16", data, int(sample_rate))

    async def set_sampling(self, sampling: SamplingParams, seed: int | None = None) -> None:
        command = SetSampling(sampling, seed)
        await self._call(P.Settings, sampling=_wire_sampling(command.sampling), seed=command.seed)
        self._sampling = command.sampling
        if command.seed is not None:
            self._seed = command.seed

    async def set_limits(
        self,
        context_budget: int | None = None,
        lookahead_s: float | None = None,
        unlimited_lookahead: bool = False,
    ) -> None:
        """Per-conversation context budget and lookahead (None: the server engine's)."""
        command = SetLimits(context_budget, lookahead_s, unlimited_lookahead)
        limits = P.Limits.of(command)
        await self._call(P.Settings, limits=limits)
        self._limits = limits

    async def reset(self) -> None:
        """Forgets every turn (keeps the system prompt and voice)."""
        await self._call(P.Reset)

    async def close(self) -> None:
        """Ends the conversation on the server (best effort if the server is gone)."""
        if self.closed:
            return
        link = self._link
        if link is not None and link.alive:
            with contextlib.suppress(MossError):
                await self._request(link, P.Close)
        self.closed = True
        self._held_cuts.clear()
        self.journal.clear()  # dropped with the conversation
        if link is not None:
            await link.close()
        self._link = None
        self.engine.discard(self)

    async def snapshot(self) -> dict:
        """The server's snapshot (``rows`` as a tensor), for tests and debugging."""
        reply: P.Result = await self._call(P.Snapshot)
        return snapshot_dict(reply, self.audio.rvq if self.audio else 16)

    async def __aenter__(self) -> RemoteSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

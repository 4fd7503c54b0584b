"""Caller-side handles: ``Session`` (async), ``SyncSession`` (blocking) and ``TurnStream``.

Each method builds one command (``engine.commands``) and submits it; nothing here touches
engine state. Input is checked by the commands and by ``MossEngine.submit``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import torch

from moss_pipecat.engine.commands import (
    AddUserTurn,
    Close,
    Command,
    EndText,
    HistoryDelta,
    Interrupt,
    PushText,
    Reset,
    RestoreHistory,
    SetLimits,
    SetSampling,
    SetVoice,
    Snapshot,
    StartTurn,
)
from moss_pipecat.engine.events import AudioChunk, Channel, TurnSummary
from moss_pipecat.engine.records import HistoryChange, HistoryCursor, TurnRecord
from moss_pipecat.errors import InvalidInputError, SessionClosedError, TurnStateError
from moss_pipecat.model.sampling import SamplingParams
from moss_pipecat.speech import fields as F

if TYPE_CHECKING:
    from moss_pipecat.engine.engine import MossEngine


class TurnStream:
    """One assistant turn: push text in, iterate audio chunks out.

    Text goes in with ``push_text`` (needs the engine's tokenizer) or ``push_ids``, then
    ``end_text``. Iterating yields ``AudioChunk`` until the turn ends; ``summary`` then says
    how. Pushing never blocks; text pushed after the model ended the turn is dropped.
    """

    def __init__(self, session: Session, turn_id: int, channel: Channel) -> None:
        self.session = session
        self.turn_id = turn_id
        self._channel = channel
        self._engine = session.engine
        self._tokenizer = None
        self._chars = 0
        self._sent_chars = 0  # characters of the tokenizer's text sent to the engine
        self._text_ended = False
        self._cancelled = False
        # Every text id sent to the engine for this turn, in order: the turn's own ids, as far
        # as the engine takes them (text that comes after the turn ended is dropped there).
        self.ids_sent: list[int] = []
        self.summary: TurnSummary | None = None

    # ---- text in -----------------------------------------------------------------------------
    def push_ids(self, ids: Sequence[int], text: str = "") -> None:
        """Feeds text token ids (e.g. for a model without a tokenizer)."""
        self._check_open()
        self._send(ids, text, done=False)

    def push_text(self, piece: str | bytes) -> None:
        """Feeds the next piece of text exactly as the LLM streamed it."""
        self._check_open()
        piece = F.text_piece(piece)
        tok = self._incremental()
        self._chars += len(piece)
        if self._chars > self._engine.config.max_text_chars:
            raise InvalidInputError(
                f"turn text exceeds {self._engine.config.max_text_chars} characters"
            )
        self._send_tokenized(tok, tok.push(piece), done=False)

    def end_text(self) -> None:
        """No more text: the turn speaks what it has, then ends."""
        self._check_open()
        self._text_ended = True
        if self._tokenizer is None:
            self._send([], "", done=True)
        else:
            self._send_tokenized(self._tokenizer, self._tokenizer.finish(), done=True)

    def _send_tokenized(self, tok: Any, ids: list[int], done: bool) -> None:
        # The engine's turn text is the tokenizer's (cleaned) text, so each id's span end
        # tells the engine which characters the fed ids cover (word times never run ahead).
        text = tok.text
        delta, self._sent_chars = text[self._sent_chars :], len(text)
        spans = tok.token_spans()
        ends = [e for _, e in spans[len(spans) - len(ids) :]]
        self._send(self._engine.map_text_ids(ids), delta, done, ends)

    def _incremental(self):
        if self._tokenizer is None:
            if self._engine.tokenizer is None:
                raise InvalidInputError("this engine has no tokenizer: use push_ids")
            from moss_pipecat.engine.text import IncrementalTokenizer

            self._tokenizer = IncrementalTokenizer(
                self._engine.tokenizer, max_chars=self._engine.config.max_text_chars
            )
        return self._tokenizer

    def _check_open(self) -> None:
        if self.session.closed:
            raise SessionClosedError(f"session {self.session.id!r} is closed")
        if self._text_ended:
            raise TurnStateError("text already ended for this turn")

    def _send(
        self, ids: Sequence[int], text: str, done: bool, ends: list[int] | None = None
    ) -> None:
        kind = EndText if done else PushText
        command = kind(self.turn_id, tuple(ids), text, ends)
        self.session.submit(command)
        self.ids_sent.extend(command.ids)

    # ---- audio out -----------------------------------------------------------------------------
    @property
    def prefilled(self) -> tuple[int, int]:
        """(rows fed, rows to feed) of this turn's prefill (its history and prompt rows not yet
        in the cache), advanced by the engine thread per prefill chunk; (0, 0) before the
        prefill starts. Cheap and safe from any thread: a keepalive's proof of progress."""
        return self._channel.prefilled

    def cancel(self) -> None:
        """Drops every chunk not yet read (the engine's interrupt does the rest)."""
        self._cancelled = True

    def _accept(self, item: object) -> AudioChunk | None:
        if isinstance(item, TurnSummary):
            self.summary = item
            return None
        return None if self._cancelled else item

    def __aiter__(self) -> AsyncIterator[AudioChunk]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[AudioChunk]:
        while self.summary is None:
            chunk = self._accept(await self._channel.get())
            if chunk is not None:
                yield chunk

    def __iter__(self) -> Iterator[AudioChunk]:
        while self.summary is None:
            chunk = self._accept(self._channel.get_sync())
            if chunk is not None:
                yield chunk

    async def wait(self) -> TurnSummary:
        """Reads (and drops) the remaining chunks; returns the summary."""
        async for _ in self:
            pass
        return self.summary

    def wait_sync(self) -> TurnSummary:
        for _ in self:
            pass
        return self.summary


class Session:
    """Async handle of one conversation on a ``MossEngine``."""

    def __init__(self, engine: MossEngine, session_id: str) -> None:
        self.engine = engine
        self.id = session_id
        self.closed = False
        self._turn: TurnStream | None = None

    def submit(self, command: Command) -> Future:
        """Submits a command for this conversation; returns the future of its result."""
        if self.closed:
            raise SessionClosedError(f"session {self.id!r} is closed")
        return self.engine.submit(self.id, command)

    async def request(self, command: Command) -> Any:
        """Submits a command and awaits its result."""
        return await asyncio.wrap_future(self.submit(command))

    # ---- turns -------------------------------------------------------------------------------
    async def start_turn(
        self,
        max_frames: int | None = None,
        *,
        min_frames: int | None = None,
        eos_after_text: bool | None = None,
    ) -> TurnStream:
        """Opens an assistant turn (fails if one is open).

        Args:
            max_frames: optional cap on this turn's frames (on top of the engine's caps).
            min_frames: the turn's first ``min_frames`` frames never end it (EOS is masked);
                default: the engine's ``eos_min_frames``.
            eos_after_text: mask EOS until the whole text has been fed; default: the
                engine's ``eos_after_text``.
        """
        command = StartTurn(Channel(), max_frames, min_frames, eos_after_text)
        return self._opened(command, await self.request(command))

    def _opened(self, command: StartTurn, turn_id: int) -> TurnStream:
        self._turn = TurnStream(self, turn_id, command.channel)
        return self._turn

    def _drop_unread(self) -> None:
        if self._turn is not None and self._turn.summary is None:
            self._turn.cancel()

    async def interrupt(
        self, heard_frames: int, heard_units: int | None = None, turn_id: int | None = None
    ) -> TurnSummary | None:
        """Stops the current (or just finished) assistant turn and keeps only the first
        ``heard_frames`` frames in the conversation; ``heard_units``: the units the listener
        kept; ``turn_id``: only that turn (``Interrupt``). Returns None if nothing was cut."""
        command = Interrupt(heard_frames, heard_units, turn_id)
        self._drop_unread()
        return await self.request(command)

    async def add_user_turn(self, text_ids: Sequence[int], frames: torch.Tensor) -> None:
        """Adds what the user said: transcript ids and the speech's codec frames [A, rvq]."""
        await self.request(AddUserTurn(tuple(text_ids), frames))

    def user_text_ids(self, text: str) -> list[int]:
        """Tokenizes a whole user transcript with the engine's tokenizer."""
        if self.engine.tokenizer is None:
            raise InvalidInputError("this engine has no tokenizer: pass ids")
        from moss_pipecat.engine.text import encode_text

        if len(text) > self.engine.config.max_text_chars:
            raise InvalidInputError(
                f"user text exceeds {self.engine.config.max_text_chars} characters"
            )
        return self.engine.map_text_ids(encode_text(self.engine.tokenizer, text))

    # ---- settings ----------------------------------------------------------------------------
    async def set_voice(self, frames: torch.Tensor | None) -> None:
        """Replaces the reference voice (codec frames [R, rvq]) or removes it (None)."""
        await self.request(SetVoice(frames))

    async def set_sampling(self, sampling: SamplingParams, seed: int | None = None) -> None:
        await self.request(SetSampling(sampling, seed))

    async def set_limits(
        self,
        context_budget: int | None = None,
        lookahead_s: float | None = None,
        unlimited_lookahead: bool = False,
    ) -> None:
        """Per-session overrides of the engine's context budget and lookahead (None: the
        engine's value; ``unlimited_lookahead`` generates as fast as possible)."""
        await self.request(SetLimits(context_budget, lookahead_s, unlimited_lookahead))

    async def reset(self) -> None:
        """Forgets every turn (keeps the system prompt and voice)."""
        await self.request(Reset())

    async def close(self) -> None:
        if self.closed:
            return
        fut = self.submit(Close())
        self.closed = True
        await asyncio.wrap_future(fut)

    async def snapshot(self) -> dict:
        """Rows of the conversation and cache bookkeeping (for tests and debugging)."""
        return await self.request(Snapshot())

    async def restore(
        self,
        turns: Sequence[TurnRecord],
        voice: torch.Tensor | None = None,
        seed: int | None = None,
        noise_counter: int = 0,
        turn_noise: int | None = None,
    ) -> None:
        """Gives this conversation (no turns yet) a history kept elsewhere (see
        ``RestoreHistory``)."""
        await self.request(RestoreHistory(tuple(turns), voice, seed, noise_counter, turn_noise))

    async def history_delta(self, cursor: HistoryCursor, full: bool = False) -> HistoryChange:
        """What changed in the history since ``cursor`` (see ``HistoryDelta``)."""
        return await self.request(HistoryDelta(cursor, full))


class SyncSession:
    """Blocking twin of ``Session`` for scripts (do not use inside an event loop): the same
    commands, waited for."""

    def __init__(self, session: Session) -> None:
        self.session = session

    @property
    def id(self) -> str:
        return self.session.id

    def request(self, command: Command) -> Any:
        return self.session.submit(command).result()

    def start_turn(
        self,
        max_frames: int | None = None,
        *,
        min_frames: int | None = None,
        eos_after_text: bool | None = None,
    ) -> TurnStream:
        command = StartTurn(Channel(), max_frames, min_frames, eos_after_text)
        return self.session._opened(command, self.request(command))

    def say(
        self,
        ids: Sequence[int] | None = None,
        text: str | None = None,
        max_frames: int | None = None,
        min_frames: int | None = None,
    ) -> tuple[list[AudioChunk], TurnSummary]:
        """Speaks a whole text; returns (chunks, summary)."""
        turn = self.start_turn(max_frames, min_frames=min_frames)
        if text is not None:
            turn.push_text(text)
        if ids is not None:
            turn.push_ids(ids)
        turn.end_text()
        chunks = list(turn)
        return chunks, turn.summary

    def interrupt(
        self, heard_frames: int, heard_units: int | None = None, turn_id: int | None = None
    ) -> TurnSummary | None:
        command = Interrupt(heard_frames, heard_units, turn_id)
        self.session._drop_unread()
        return self.request(command)

    def add_user_turn(self, text_ids: Sequence[int], frames: torch.Tensor) -> None:
        self.request(AddUserTurn(tuple(text_ids), frames))

    def set_voice(self, frames: torch.Tensor | None) -> None:
        self.request(SetVoice(frames))

    def set_sampling(self, sampling: SamplingParams, seed: int | None = None) -> None:
        self.request(SetSampling(sampling, seed))

    def set_limits(
        self,
        context_budget: int | None = None,
        lookahead_s: float | None = None,
        unlimited_lookahead: bool = False,
    ) -> None:
        self.request(SetLimits(context_budget, lookahead_s, unlimited_lookahead))

    def reset(self) -> None:
        self.request(Reset())

    def close(self) -> None:
        if not self.session.closed:
            fut = self.session.submit(Close())
            self.session.closed = True
            fut.result()

    def snapshot(self) -> dict:
        return self.request(Snapshot())

    def restore(
        self,
        turns: Sequence[TurnRecord],
        voice: torch.Tensor | None = None,
        seed: int | None = None,
        noise_counter: int = 0,
        turn_noise: int | None = None,
    ) -> None:
        self.request(RestoreHistory(tuple(turns), voice, seed, noise_counter, turn_noise))

    def history_delta(self, cursor: HistoryCursor, full: bool = False) -> HistoryChange:
        return self.request(HistoryDelta(cursor, full))

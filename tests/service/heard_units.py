"""What was heard, measured apart from the service: the units each engine turn placed (read by a
recording wrapper around the real engine, or the real server client) and the audio the output
transport had played when the interruption reached it."""

from __future__ import annotations

from typing import Any

from moss_pipecat.speech.frames import FRAME_SECONDS
from moss_pipecat.speech.units import TimedWord, join_units


class _TurnLog:
    """A turn stream as the service reads it, keeping every unit its frames place."""

    def __init__(self, turn: Any, units: list[TimedWord]) -> None:
        self._turn, self._units = turn, units

    def __getattr__(self, name: str) -> Any:
        return getattr(self._turn, name)

    def __aiter__(self):
        return self._chunks()

    async def _chunks(self):
        async for chunk in self._turn:
            self._units.extend(chunk.words)
            yield chunk


class _SessionLog:
    def __init__(self, session: Any, turns: list[list[TimedWord]]) -> None:
        self._session, self._turns = session, turns

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    async def start_turn(self, *args: Any, **kwargs: Any) -> _TurnLog:
        self._turns.append([])
        return _TurnLog(await self._session.start_turn(*args, **kwargs), self._turns[-1])


class EngineLog:
    """Wraps a ``MossEngine`` (``acreate_session``) or a ``RemoteEngine`` (``create_session``):
    ``turns`` holds, per engine turn, the units its frames placed, at their engine times."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.turns: list[list[TimedWord]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    async def acreate_session(self, *args: Any, **kwargs: Any) -> _SessionLog:
        return _SessionLog(await self._engine.acreate_session(*args, **kwargs), self.turns)

    async def create_session(self, *args: Any, **kwargs: Any) -> _SessionLog:
        return _SessionLog(await self._engine.create_session(*args, **kwargs), self.turns)


def check_within_one_unit_of_heard(cut: Any, units: list[TimedWord], heard_s: float) -> None:
    """The history kept a prefix of the turn's units (``spoken_text``) within one unit (a CJK
    character or a word) of the units placed in the frames heard (``heard_s`` of audio, as
    the transport played it, in whole 80 ms frames)."""
    kept = [n for n in range(len(units) + 1) if join_units(units[:n]) == cut.spoken_text]
    assert kept, f"{cut.spoken_text!r} is not a prefix of the units placed"
    heard_end = int(heard_s / FRAME_SECONDS + 1e-9) * FRAME_SECONDS
    heard = sum(1 for u in units if u[1] < heard_end)
    assert abs(kept[-1] - heard) <= 1, (kept[-1], heard, heard_s)

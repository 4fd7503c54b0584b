"""What was heard, measured apart from the service: the units each engine turn placed (read by a
recording wrapper around the real engine, or the real server client) and the audio the output
transport had played when the interruption reached it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from moss_pipecat.speech.frames import FRAME_SECONDS
from moss_pipecat.speech.units import TimedWord, join_units

# One CJK character's time (4.5 characters a second): units of scripts spoken about a frame a
# unit (Thai characters) may be this late through a loaded loop, as a CJK one may be one unit.
SLACK_S = 3 * FRAME_SECONDS


class _TurnLog:
    """A turn stream as the service reads it, keeping every unit its frames place and those
    its end places (and telling ``on_frame`` of each frame as the service reads it)."""

    def __init__(self, turn: Any, units: list[TimedWord], on_frame: Callable | None) -> None:
        self._turn, self._units, self._on_frame = turn, units, on_frame

    def __getattr__(self, name: str) -> Any:
        return getattr(self._turn, name)

    def __aiter__(self):
        return self._chunks()

    async def _chunks(self):
        async for chunk in self._turn:
            self._units.extend(chunk.words)
            if self._on_frame is not None:
                self._on_frame(chunk)
            yield chunk
        summary = self._turn.summary
        if summary is not None:  # the units placed at its end (spread over its last audio)
            self._units.extend(summary.words)


class _SessionLog:
    def __init__(self, session: Any, log: EngineLog) -> None:
        self._session, self._log = session, log

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    async def start_turn(self, *args: Any, **kwargs: Any) -> _TurnLog:
        self._log.turns.append([])
        turn = await self._session.start_turn(*args, **kwargs)
        return _TurnLog(turn, self._log.turns[-1], self._log.on_frame)


class EngineLog:
    """Wraps a ``MossEngine`` (``acreate_session``) or a ``RemoteEngine`` (``create_session``):
    ``turns`` holds, per engine turn, the units its frames placed, at their engine times;
    ``on_frame`` (if set) is called with each frame (chunk) as the service reads it."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.turns: list[list[TimedWord]] = []
        self.on_frame: Callable[[Any], None] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    async def acreate_session(self, *args: Any, **kwargs: Any) -> _SessionLog:
        return _SessionLog(await self._engine.acreate_session(*args, **kwargs), self)

    async def create_session(self, *args: Any, **kwargs: Any) -> _SessionLog:
        return _SessionLog(await self._engine.create_session(*args, **kwargs), self)


def check_within_one_unit_of_heard(
    cut: Any,
    units: list[TimedWord],
    heard_s: float,
    speaking_s: float | None = None,
    slack_s: float = 0.0,
) -> None:
    """The history kept a prefix of the turn's units (``spoken_text``) within one unit (a CJK
    character or a word) or one frame, or ``slack_s`` of units where that holds more
    (``SLACK_S`` for Thai, a unit a character), of the units placed in the frames heard
    (``heard_s`` of audio, as the transport played it, in whole 80 ms frames). With
    ``speaking_s`` (the transport's ``speaking_s()``: what it would have played had it never
    run dry), a loaded loop's underruns count too: the kept units lie within one of the range
    between the two. One frame: the service's heard clock and the transport's play clock are
    two clocks counted in whole frames, so a few ms between them can be a frame (seen: 7
    frames kept, 0.641 s played); a random model can place several units in one frame."""
    kept = [n for n in range(len(units) + 1) if join_units(units[:n]) == cut.spoken_text]
    assert kept, f"{cut.spoken_text!r} is not a prefix of the units placed"

    def units_in(seconds: float) -> int:
        end = int(seconds / FRAME_SECONDS + 1e-9) * FRAME_SECONDS
        return sum(1 for u in units if u[1] < end)

    low = units_in(heard_s)
    high = max(low, units_in(speaking_s)) if speaking_s is not None else low
    low_end = min(low - 1, units_in(heard_s - max(slack_s, FRAME_SECONDS)))
    high_end = max(high + 1, units_in((speaking_s or heard_s) + max(slack_s, FRAME_SECONDS)))
    assert low_end <= kept[-1] <= high_end, (kept[-1], low, high, heard_s, speaking_s)

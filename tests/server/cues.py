"""A director for pipecat pipelines in front of a remote TTS service: ``Cue`` frames in the
script hold the frames behind them until the replies' audio (``Watcher``, downstream of the
service) has come as far as the cue says, then a ``CueDirector`` does what it says (a barge-in,
a snapshot, ``kill -9`` of the server...). Every wait is woken by a frame, never by a timer."""

from __future__ import annotations

import asyncio

from pipecat.frames.frames import DataFrame, Frame, TTSAudioRawFrame, TTSStoppedFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from moss_pipecat.service.resampling import engine_frames

from .processes import ServerProcess


class Cue(DataFrame):
    """A step of the director's script: ``what`` once the ``reply``-th reply has ``frames``
    audio frames out (``frames`` None: once it has ended)."""

    def __init__(self, what: str, reply: int, frames: int | None = None) -> None:
        super().__init__()
        self.what, self.reply, self.frames = what, reply, frames


class Watcher(FrameProcessor):
    """Downstream of the TTS: the replies' audio and ends, as they come out; a reply's frames
    are the engine frames its audio frames complete (``resampling.engine_frames``: one audio
    frame a frame at the engine's own rate; resampled, an audio frame may complete none or
    several, the resampler holding some of the audio)."""

    def __init__(self) -> None:
        super().__init__()
        self.contexts: list[str] = []  # replies in the order their audio began
        self.frames: dict[str, int] = {}
        self.stopped: set[str] = set()
        self.changed = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            if frame.context_id not in self.frames:
                self.contexts.append(frame.context_id)
            done = engine_frames(frame)
            self.frames[frame.context_id] = self.frames.get(frame.context_id, 0) + done
        elif isinstance(frame, TTSStoppedFrame):
            self.stopped.add(frame.context_id)
        self.changed.set()
        await self.push_frame(frame, direction)

    async def reached(self, reply: int, frames: int | None) -> None:
        def done() -> bool:
            if len(self.contexts) <= reply:
                return False
            ctx = self.contexts[reply]
            return ctx in self.stopped if frames is None else self.frames[ctx] >= frames

        while not done():  # woken by each frame that comes out, never by a timer
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 60)


class CueDirector(FrameProcessor):
    """Upstream of the TTS: passes frames on, but holds those behind a ``Cue`` until ``cue``
    has done what it says (the subclass's script). ``snapshots`` are the service's session's,
    by cue; ``server`` is the one the service talks to."""

    def __init__(self, tts, watcher: Watcher, server: ServerProcess) -> None:
        super().__init__()
        self.tts, self.watcher, self.server = tts, watcher, server
        self.snapshots: dict[str, dict] = {}
        self.session = None  # the service's, as the last cue found it

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, Cue):
            await self.cue(frame)
        else:
            await self.push_frame(frame, direction)

    async def cue(self, frame: Cue) -> None:
        raise NotImplementedError

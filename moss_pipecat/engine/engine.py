"""The engine: many streaming MOSS conversations on one device, batched by one thread.

Callers (asyncio or plain threads) hand the engine commands (``engine.commands``) with
``submit(session_id, command)``, which returns a future. One engine thread owns all state
(``EngineCore``): between ticks it applies the queued commands in order (``engine.handlers``),
then runs one tick of batched model work (``engine.scheduler``). ``Session`` is the caller's
handle over ``submit``.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import torch

from moss_pipecat._log import logger
from moss_pipecat.engine import gc_policy
from moss_pipecat.engine.clock import Clock
from moss_pipecat.engine.commands import Close, Command, CreateSession, EngineFacts
from moss_pipecat.engine.config import EngineConfig
from moss_pipecat.engine.core import EngineCore
from moss_pipecat.engine.handlers import HANDLERS
from moss_pipecat.engine.parts import check_parts
from moss_pipecat.engine.prefix_cache import PrefixCache
from moss_pipecat.engine.rows import RowLayout
from moss_pipecat.engine.session import Session
from moss_pipecat.errors import InvalidInputError
from moss_pipecat.model import MossTTSRealtime, SamplingParams


class MossEngine:
    """Serves many MOSS-TTS-Realtime conversations on one device.

    Args:
        model: the TTS model (its device and dtype are the engine's).
        layout: special ids and delay of the conversation rows.
        codec: optional ``MossAudioCodec``; with it every frame also comes out as PCM.
        config: capacity, context budget, lookahead, caps.
        system_text_ids: ids of the system sentence every conversation starts with.
        voice_instruction_ids: ids of the sentence that introduces a reference voice.
        tokenizer: optional tokenizer for ``push_text``; without it turns take ids.
        text_id_map: optional map applied to every token id from the tokenizer (a tiny test
            model's vocabulary is smaller than the real tokenizer's).
        clock: where the engine reads time (default: the monotonic clock).
        runner_factory: builds the model runner (default ``ModelRunner``; a simulated device
            passes its own, driven in virtual time through ``core`` without the thread).

    Raises:
        CheckpointError: the layout, model and codec disagree (``engine.parts.check_parts``).
    """

    def __init__(
        self,
        model: MossTTSRealtime,
        layout: RowLayout,
        *,
        codec: Any | None = None,
        config: EngineConfig | None = None,
        system_text_ids: Sequence[int] = (),
        voice_instruction_ids: Sequence[int] = (),
        tokenizer: Any | None = None,
        text_id_map: Callable[[int], int] | None = None,
        clock: Clock | None = None,
        runner_factory: Callable[..., Any] | None = None,
    ) -> None:
        check_parts(model.cfg, layout, codec)  # before anything is built on them
        self.model = model
        self.layout = layout
        self.codec = codec
        self.config = config or EngineConfig()
        self.tokenizer = tokenizer
        self.text_id_map = text_id_map
        self.device = next(model.parameters()).device
        self.core = EngineCore(
            model,
            layout,
            codec,
            self.config,
            system_text_ids,
            voice_instruction_ids,
            clock=clock,
            runner_factory=runner_factory,
        )
        self.facts = EngineFacts(layout, self.config, model.cfg.language.vocab_size)
        self._mailbox: deque[tuple[Callable[[], Any], Future]] = deque()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # ================================================================== lifecycle
    def start(self) -> MossEngine:
        with self._cv:
            if self._thread is None:
                if self.config.capture_graphs_at_start and self.uses_cuda_graphs:
                    self.capture_graphs()
                gc_policy.engine_started()  # start-up is done: what it made leaves the GC's scans
                self._stopping = False
                self._thread = threading.Thread(target=self._run, name="moss-engine", daemon=True)
                self._thread.start()
        return self

    def shutdown(self, timeout: float = 10.0) -> None:
        """Ends every open turn (stop "closed") and stops the engine thread."""
        thread = self._thread
        if thread is None:
            return
        core = self.core
        done = self.call(lambda: [core.execute(sid, Close()) for sid in list(core.sessions)])
        try:
            done.result(timeout)
        finally:
            with self._cv:
                self._stopping = True
                self._cv.notify()
            thread.join(timeout)
            self._thread = None
            gc_policy.engine_stopped()

    def __enter__(self) -> MossEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    @property
    def alive(self) -> bool:
        """True while the engine thread runs."""
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._stopping

    # ================================================================== commands
    def submit(self, session_id: str, command: Command) -> Future:
        """Queues ``command`` for session ``session_id``; returns the future of its result.

        The command is checked here, on the caller's thread (bad input raises
        ``InvalidInputError`` at once); the engine thread applies commands between ticks in
        the order they were submitted.
        """
        if type(command) not in HANDLERS:
            raise InvalidInputError(f"not an engine command: {command!r}")
        if not isinstance(session_id, str) or not session_id:
            raise InvalidInputError(f"session id must be a non-empty str, got {session_id!r}")
        command = command.checked(self.facts)
        return self.call(lambda: self.core.execute(session_id, command))

    def call(self, fn: Callable[[], Any]) -> Future:
        """Runs ``fn`` on the engine thread between ticks (with every piece of state to
        itself); returns its future. For tools and tests: commands go through ``submit``."""
        fut: Future = Future()
        with self._cv:
            if self._thread is None:
                raise RuntimeError("engine is not running; call start()")
            self._mailbox.append((fn, fut))
            self._cv.notify()
        return fut

    def create_session(
        self,
        *,
        voice: torch.Tensor | None = None,
        sampling: SamplingParams | None = None,
        seed: int | None = None,
        session_id: str | None = None,
    ) -> Session:
        """Opens a conversation (blocks until the engine thread has set it up).

        Args:
            voice: reference-voice codec frames [R, rvq] (see ``MossAudioCodec.encode_frames``).
            sampling: decoding settings (default: upstream sampling).
            seed: the key of the session's sampling noise (default: random): the same seed
                and the same inputs give the same frames, whoever shares the batch.
            session_id: a caller-chosen id (default: a random one).
        """
        sid = session_id or uuid.uuid4().hex
        self.start().submit(sid, _create(voice, sampling, seed)).result()
        return Session(self, sid)

    async def acreate_session(
        self,
        *,
        voice: torch.Tensor | None = None,
        sampling: SamplingParams | None = None,
        seed: int | None = None,
        session_id: str | None = None,
    ) -> Session:
        """``create_session`` for event loops: awaits the engine thread instead of blocking."""
        sid = session_id or uuid.uuid4().hex
        await asyncio.wrap_future(self.start().submit(sid, _create(voice, sampling, seed)))
        return Session(self, sid)

    # ================================================================== facts
    @property
    def graphed(self) -> bool:
        """Whether decode steps (TTS and codec) run through the graphed static-buffer steps."""
        return self.core.runner.graphed

    @property
    def uses_cuda_graphs(self) -> bool:
        """Whether the graphed steps replay captured CUDA graphs (not just padded buffers)."""
        return self.core.runner.uses_cuda_graphs

    def capture_graphs(self) -> int:
        """Prepares (on CUDA: captures) every decode-step and prefill bucket each KV pool's
        sessions can hit, and the codec's. Call before ``start()``, or it runs on the engine
        thread. Returns the number of buckets."""
        if self._thread is not None and threading.current_thread() is not self._thread:
            return self.call(self.core.runner.capture_graphs).result()
        return self.core.runner.capture_graphs()

    @property
    def start_up(self) -> dict | None:
        """What ``capture_graphs`` cost, by phase (buckets, seconds, device MiB on CUDA) and
        the kernel-cache entries it added (0: nothing compiled); None before it ran."""
        return self.core.runner.start_up

    @property
    def stats(self) -> dict[str, int]:
        """Counters: ticks, prefill rows, decode steps, frames, prefix-cache hits/misses,
        refusals for load, KV pool moves, turns dropped (past the budget, for want of a
        larger slot), replies cut for want of one (``EngineCore.__init__``)."""
        return self.core.stats

    def kv_slots(self) -> list[tuple[int, int, int]]:
        """(capacity, slots, used) of each KV pool, smallest capacity first (read from any
        thread: a snapshot, not a lock)."""
        return [(p.capacity, p.n_slots, p.n_slots - len(p.free)) for p in self.core.pools]

    @property
    def prefix_cache(self) -> PrefixCache:
        return self.core.prefix_cache

    @property
    def session_ids(self) -> list[str]:
        return list(self.core.sessions)

    def map_text_ids(self, ids: list[int]) -> list[int]:
        """Tokenizer ids -> model text ids (identity unless a ``text_id_map`` was given)."""
        return ids if self.text_id_map is None else [self.text_id_map(i) for i in ids]

    def system_rows(self, voice: torch.Tensor | None) -> torch.Tensor:
        """The rows every conversation with this voice starts with (system sentence + voice)."""
        return self.core.system_rows(voice)

    # ================================================================== the loop
    def _run(self) -> None:
        timeout: float | None = None
        with torch.inference_mode():
            while True:
                with self._cv:
                    if not self._mailbox and not self._stopping and timeout != 0:
                        self._cv.wait(timeout)
                    if self._stopping:
                        return
                    work = list(self._mailbox)
                    self._mailbox.clear()
                for fn, fut in work:
                    if not fut.set_running_or_notify_cancel():
                        continue
                    try:
                        fut.set_result(fn())
                    except BaseException as e:  # handed to the caller
                        fut.set_exception(e)
                try:
                    timeout = self.core.tick()
                except Exception as e:  # a bug in shared code: fail every turn in flight
                    logger.exception("engine tick failed")
                    self.core.fail_all(e)
                    timeout = None


def _create(voice, sampling: SamplingParams | None, seed: int | None) -> CreateSession:
    return CreateSession(voice, sampling or SamplingParams(), seed)

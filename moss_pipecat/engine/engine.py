"""The engine: many streaming sessions on one model, stepped together by one thread.

Callers (asyncio or plain threads) send commands; the engine thread owns every session's
state, the KV cache and the codec streams. Each tick it gathers every session that is ready
(prefill chunks, decode steps whose next text token is known and that are within their
real-time lookahead) into batched model calls: one padded backbone call for prefills, one for
decode steps, then one local-transformer call for every frame due. A session waiting for text
costs nothing; a failing model call is retried session by session so only the culprit fails.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import torch

from moss_pipecat._log import logger
from moss_pipecat.engine.config import EngineConfig
from moss_pipecat.engine.events import AudioChunk, Channel, TurnSummary
from moss_pipecat.engine.history import AssistantTurn, ConversationHistory, UserTurn
from moss_pipecat.engine.prefix_cache import PrefixCache
from moss_pipecat.engine.rows import RowLayout
from moss_pipecat.engine.state import OpenTurn, Phase, SessionState, now
from moss_pipecat.engine.word_times import WordTimer
from moss_pipecat.errors import (
    CapacityError,
    InvalidInputError,
    SessionClosedError,
    TurnStateError,
    UnknownSessionError,
)
from moss_pipecat.model import BatchSampling, MossTTSRealtime, SamplingParams
from moss_pipecat.model.sampling import NO_HISTORY, NoiseKeys

if TYPE_CHECKING:
    from moss_pipecat.engine.session import Session


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
    ) -> None:
        self.model = model
        self.layout = layout
        self.codec = codec
        self.config = config or EngineConfig()
        self.system_text_ids = list(system_text_ids)
        self.voice_instruction_ids = list(voice_instruction_ids)
        self.tokenizer = tokenizer
        self.text_id_map = text_id_map
        cfg = self.config
        self.device = next(model.parameters()).device
        graphed = cfg.graphed_decode
        if graphed is None:
            graphed = self.device.type == "cuda"
        self._pools: list[KVPool] = []
        offset = 0
        for n_slots, capacity in cfg.pools():
            self._pools.append(KVPool.build(model, n_slots, capacity, offset, graphed, cfg))
            offset += n_slots
        rvq = model.cfg.rvq
        self._hist = torch.full(
            (cfg.max_sessions, cfg.repetition_window_max, rvq),
            NO_HISTORY,
            dtype=torch.int64,
            device=self.device,
        )
        self._codec_state = codec.new_stream_state(cfg.max_sessions) if codec is not None else None
        self._frame_graph = None
        if graphed:
            from moss_pipecat.model.graphs import GraphedFrameStep

            self._frame_graph = GraphedFrameStep(
                model, window=cfg.repetition_window_max, max_batch=cfg.max_sessions
            )
        self._codec_graph = None
        if codec is not None and graphed:
            from moss_pipecat.codec.graphs import GraphedCodecDecode

            self._codec_graph = GraphedCodecDecode(codec, self._codec_state)
        self._sessions: dict[str, SessionState] = {}
        self._commands: deque[tuple[Callable[[], Any], Future]] = deque()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._rr = 0  # rotates the prefill order for fairness
        # KV of each distinct system block (system sentence + voice), shared by all sessions.
        self.prefix_cache = PrefixCache(cfg.prefix_cache_bytes)
        self.stats = {"ticks": 0, "prefill_rows": 0, "decode_steps": 0, "frames": 0}
        self.stats.update(prefix_hits=0, prefix_misses=0, prefix_rows_reused=0)

    # ================================================================== lifecycle
    def start(self) -> MossEngine:
        with self._cv:
            if self._thread is None:
                if self.config.capture_graphs_at_start and self.uses_cuda_graphs:
                    self.capture_graphs()
                self._stopping = False
                self._thread = threading.Thread(target=self._run, name="moss-engine", daemon=True)
                self._thread.start()
        return self

    def shutdown(self, timeout: float = 10.0) -> None:
        """Ends every open turn (stop "closed") and stops the engine thread."""
        thread = self._thread
        if thread is None:
            return
        done = self.submit(self._close_all)
        try:
            done.result(timeout)
        finally:
            with self._cv:
                self._stopping = True
                self._cv.notify()
            thread.join(timeout)
            self._thread = None

    def __enter__(self) -> MossEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def submit(self, fn: Callable[[], Any]) -> Future:
        """Runs ``fn`` on the engine thread between ticks; returns its future."""
        fut: Future = Future()
        with self._cv:
            if self._thread is None:
                raise RuntimeError("engine is not running; call start()")
            self._commands.append((fn, fut))
            self._cv.notify()
        return fut

    # ================================================================== sessions
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
        sid, create = self._prepare_session(voice, sampling, seed, session_id)
        self.submit(create).result()
        return self._handle(sid)

    async def acreate_session(
        self,
        *,
        voice: torch.Tensor | None = None,
        sampling: SamplingParams | None = None,
        seed: int | None = None,
        session_id: str | None = None,
    ) -> Session:
        """``create_session`` for event loops: awaits the engine thread instead of blocking."""
        import asyncio

        sid, create = self._prepare_session(voice, sampling, seed, session_id)
        await asyncio.wrap_future(self.submit(create))
        return self._handle(sid)

    def _prepare_session(self, voice, sampling, seed, session_id):
        self.start()
        sid = session_id or uuid.uuid4().hex
        if voice is not None:
            voice = self.layout.check_frames(voice, "voice")
        sampling = sampling or SamplingParams()
        self._check_sampling(sampling)
        return sid, lambda: self._create(sid, voice, sampling, seed)

    def _handle(self, sid: str) -> Session:
        from moss_pipecat.engine.session import Session

        return Session(self, sid)

    @property
    def graphed(self) -> bool:
        """Whether decode steps (TTS and codec) run through the graphed static-buffer steps."""
        return self._pools[0].graphs is not None

    @property
    def uses_cuda_graphs(self) -> bool:
        """Whether the graphed steps replay captured CUDA graphs (not just padded buffers)."""
        graphs = self._pools[0].graphs
        return graphs is not None and graphs.use_cuda_graphs

    def capture_graphs(self) -> int:
        """Prepares (on CUDA: captures) every decode-step and prefill bucket each KV pool's
        sessions can hit, and the codec's. Call before ``start()``, or it runs on the engine
        thread. Returns the number of buckets."""
        if self._thread is not None and threading.current_thread() is not self._thread:
            return self.submit(self.capture_graphs).result()
        t0 = time.perf_counter()
        n = 0
        with torch.inference_mode():
            for pool in self._pools:
                if pool.graphs is not None:
                    n += pool.graphs.capture_all(pool.n_slots)
                if pool.prefill is not None:
                    n += pool.prefill.capture_all()
            if self._frame_graph is not None:
                n += self._frame_graph.capture_all()
            if self._codec_graph is not None:
                n += self._codec_graph.capture_all(self.model.cfg.rvq)  # the codes it decodes
        logger.info(f"prepared {n} graph buckets in {time.perf_counter() - t0:.1f} s")
        return n

    @property
    def alive(self) -> bool:
        """True while the engine thread runs."""
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._stopping

    def map_text_ids(self, ids: list[int]) -> list[int]:
        """Tokenizer ids -> model text ids (identity unless a ``text_id_map`` was given)."""
        return ids if self.text_id_map is None else [self.text_id_map(i) for i in ids]

    @property
    def session_ids(self) -> list[str]:
        return list(self._sessions)

    def _check_sampling(self, sampling: SamplingParams) -> None:
        if sampling.repetition_window > self.config.repetition_window_max:
            raise InvalidInputError(
                f"repetition_window {sampling.repetition_window} exceeds the engine's "
                f"{self.config.repetition_window_max}"
            )

    def _state(self, sid: str) -> SessionState:
        s = self._sessions.get(sid)
        if s is None:
            raise UnknownSessionError(f"no session {sid!r}")
        if s.phase is Phase.CLOSED:
            raise SessionClosedError(f"session {sid!r} is closed")
        return s

    def _create(
        self, sid: str, voice: torch.Tensor | None, sampling: SamplingParams, seed: int | None
    ) -> None:
        if sid in self._sessions:
            raise InvalidInputError(f"session {sid!r} already exists")
        free = [i for i, p in enumerate(self._pools) if p.free]
        if not free:
            raise CapacityError(f"all {self.config.max_sessions} session slots are in use")
        pool = free[0]  # the smallest: a new conversation is short
        slot = self._pools[pool].free.pop(0)
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        history = ConversationHistory(self.layout, self._system_rows(voice))
        hist_row = self._pools[pool].hist_offset + slot
        state = SessionState(sid, pool, slot, hist_row, history, sampling, int(seed))
        self._sessions[sid] = state
        self._truncate(state, 0)

    def _system_rows(self, voice: torch.Tensor | None) -> torch.Tensor:
        return self.layout.system_block(self.system_text_ids, voice, self.voice_instruction_ids)

    # ---- commands (engine thread) ---------------------------------------------------------
    def _start_turn(
        self,
        sid: str,
        channel: Channel,
        max_frames: int | None = None,
        min_frames: int | None = None,
        eos_after_text: bool | None = None,
    ) -> int:
        s = self._state(sid)
        if s.phase is not Phase.IDLE:
            raise TurnStateError("an assistant turn is already open; end or interrupt it first")
        cfg = self.config
        s.turn = OpenTurn(
            turn_id=s.next_turn_id,
            channel=channel,
            max_frames=max_frames,
            min_frames=cfg.eos_min_frames if min_frames is None else min_frames,
            eos_after_text=cfg.eos_after_text if eos_after_text is None else eos_after_text,
            words=WordTimer(s.chars_per_second),
        )
        s.next_turn_id += 1
        s.phase = Phase.WAIT_TEXT
        return s.turn.turn_id

    def _push(
        self,
        sid: str,
        turn_id: int,
        ids: list[int],
        text: str,
        done: bool,
        ends: list[int] | None = None,
    ) -> None:
        """Adds text to the open turn: ``ids`` with, for each, the end of its characters in
        the turn's text (None: each id covers all the text so far, as for bare ids)."""
        s = self._sessions.get(sid)
        t = s.turn if s is not None else None
        if t is None or t.turn_id != turn_id or t.text_done:
            return  # the turn already ended (EOS, cap, interruption): late text is dropped
        vocab = self.model.cfg.language.vocab_size
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            self._fail_turn(s, InvalidInputError(f"text ids {bad[:5]} outside [0, {vocab})"))
            return
        t.tokens.extend(ids)
        t.text += text
        t.words.add_text(text)
        if ends is None or len(ends) != len(ids):
            ends = [len(t.text)] * len(ids)
        t.token_ends.extend(min(e, len(t.text)) for e in ends)
        t.text_done = done
        if t.record is not None:
            t.record.text = t.text
        if done and not t.tokens and s.phase is Phase.WAIT_TEXT:
            self._end_turn(s, TurnSummary(t.turn_id, "empty", text=t.text))

    def _interrupt(self, sid: str, heard: int) -> TurnSummary | None:
        s = self._state(sid)
        if heard < 0:
            raise InvalidInputError(f"heard_frames must be >= 0, got {heard}")
        t = s.turn
        if t is not None:
            summary = TurnSummary(t.turn_id, "interrupted", text_ids=list(t.tokens), text=t.text)
            if t.record is not None:
                self._close_record(s, len(s.history.turns) - 1, heard, summary)
            s.to_feed = None
            self._end_turn(s, summary)
            return summary
        last = s.history.turns[-1] if s.history.turns else None
        if not isinstance(last, AssistantTurn):
            return None  # nothing is being said: a no-op
        if heard >= last.audio_frames(self.layout.audio_eos):
            return None  # everything was heard already
        summary = TurnSummary(last.turn_id, "interrupted", text_ids=list(last.text_ids))
        summary.text = last.text
        self._close_record(s, len(s.history.turns) - 1, heard, summary)
        return summary

    def _close_record(self, s: SessionState, index: int, heard: int, summary: TurnSummary) -> None:
        """Cuts assistant turn ``index`` to ``heard`` frames and rolls the cache back."""
        rec: AssistantTurn = s.history.turns[index]
        total = rec.audio_frames(self.layout.audio_eos)
        start = s.history.offset(index)
        rec.close(self.layout, heard)
        kept = len(rec.frames)
        if kept == 0:
            s.history.turns.pop(index)  # nothing was heard: as if the turn never happened
            keep = start
        else:
            keep = start + len(s.history.header(index)) + rec.lead + len(rec.steps)
        self._truncate(s, min(s.cache_len, keep))
        summary.audio_frames = total
        summary.heard_frames = kept
        summary.spoken_text = rec.words.heard_text(kept) if rec.words is not None else ""

    def _add_user_turn(self, sid: str, text_ids: list[int], frames: torch.Tensor) -> None:
        s = self._state(sid)
        if s.phase is not Phase.IDLE:
            raise TurnStateError("cannot add a user turn while an assistant turn is open")
        cfg, layout = self.config, self.layout
        if frames.shape[0] > cfg.max_user_frames:
            frames = frames[-cfg.max_user_frames :]  # keep the most recent speech
        limit = layout.lead(len(text_ids)) + frames.shape[0] + 1
        if len(text_ids) > limit:
            logger.warning(f"user transcript of {len(text_ids)} tokens cut to {limit} to fit")
            text_ids = text_ids[:limit]
        first = not s.history.turns
        header = layout.header("user", first)
        body = layout.turn_rows(header, text_ids, frames)[header.shape[0] :]
        s.history.turns.append(UserTurn(list(text_ids), frames, body))
        try:
            self._fit_budget(s, 0)
        except CapacityError:
            s.history.turns.pop()
            raise

    def _set_voice(self, sid: str, voice: torch.Tensor | None) -> None:
        s = self._state(sid)
        if s.phase is not Phase.IDLE:
            raise TurnStateError("cannot change the voice while an assistant turn is open")
        s.history.system = self._system_rows(voice)
        self._truncate(s, 0)  # everything after the system block moved: re-prefill it all

    def _set_sampling(self, sid: str, sampling: SamplingParams, seed: int | None) -> None:
        s = self._state(sid)
        s.sampling = sampling
        if seed is not None:  # the noise restarts: frame k after a reseed is reproducible
            s.seed, s.noise_counter = int(seed), 0

    def _set_limits(
        self, sid: str, context_budget: int | None, lookahead_s: float | None, unlimited: bool
    ) -> None:
        s = self._state(sid)
        cfg = self.config
        if context_budget is not None and not (
            cfg.turn_reserve < context_budget <= cfg.max_context
        ):
            raise InvalidInputError(
                f"context_budget must be in ({cfg.turn_reserve}, {cfg.max_context}]"
            )
        if lookahead_s is not None and lookahead_s <= 0:
            raise InvalidInputError("lookahead_s must be > 0")
        s.context_budget = context_budget
        s.lookahead_s = lookahead_s
        s.unlimited_lookahead = unlimited

    def _reset(self, sid: str) -> None:
        s = self._state(sid)
        if s.turn is not None:
            self._end_turn(s, TurnSummary(s.turn.turn_id, "closed", text=s.turn.text))
        s.history.turns.clear()
        self._truncate(s, min(s.cache_len, s.history.system.shape[0]))

    def _close(self, sid: str) -> None:
        s = self._sessions.get(sid)
        if s is None:
            return
        if s.turn is not None:
            self._end_turn(s, TurnSummary(s.turn.turn_id, "closed", text=s.turn.text))
        s.phase = Phase.CLOSED
        del self._sessions[sid]
        self._truncate(s, 0)
        self._pools[s.pool].release(s.slot)

    def _close_all(self) -> None:
        for sid in list(self._sessions):
            self._close(sid)

    def _snapshot(self, sid: str) -> dict:
        s = self._state(sid)
        return {
            "rows": s.history.all_rows(),
            "cache_len": s.cache_len,
            "device_cache_len": self._pools[s.pool].cache.length(s.slot),
            "pool_capacity": self._pools[s.pool].capacity,
            "system_rows": s.history.system.shape[0],
            "turns": [(t.role, len(t.text_ids)) for t in s.history.turns],
            "turn_frames": s.history.audio_frames(),
            "phase": s.phase.value,
            "slot": s.slot,
            "sampling": s.sampling,
            "context_budget": s.budget(self.config),
        }

    # ---- helpers (engine thread) ----------------------------------------------------------
    def _truncate(self, s: SessionState, length: int) -> None:
        s.cache_len = length
        self._pools[s.pool].cache.lengths[s.slot] = length

    def _make_room(self, s: SessionState, need: int) -> bool:
        """Moves the session to a pool that holds ``need`` positions if its own does not
        (copying its cached keys/values, no recomputation). False if no such slot is free."""
        if need <= self._pools[s.pool].capacity:
            return True
        for i, dst in enumerate(self._pools):
            if dst.capacity >= need and dst.free:
                src = self._pools[s.pool]
                slot = dst.free.pop(0)
                n = s.cache_len
                dst.cache.k[:, slot, :, :n] = src.cache.k[:, s.slot, :, :n]
                dst.cache.v[:, slot, :, :n] = src.cache.v[:, s.slot, :, :n]
                row = dst.hist_offset + slot
                self._hist[row] = self._hist[s.hist_row]
                src.cache.lengths[s.slot] = 0
                src.release(s.slot)
                s.pool, s.slot, s.hist_row = i, slot, row
                self._truncate(s, n)
                logger.debug(f"session {s.session_id}: moved to the {dst.capacity}-position pool")
                return True
        return False

    def _fit_budget(self, s: SessionState, extra: int) -> None:
        """Makes room for ``extra`` more rows plus the turn reserve: drops the oldest turns
        past the session's budget, and moves the session to a larger KV pool when its own is
        too small (or, with none free, trims to the slot it has)."""
        cfg = self.config
        self._trim_to(s, s.budget(cfg), extra)
        if not self._make_room(s, len(s.history) + extra + cfg.turn_reserve):
            self._trim_to(s, self._pools[s.pool].capacity, extra)
        if len(s.history) + extra > self._pools[s.pool].capacity - 3:
            raise CapacityError("the system prompt and the new turn do not fit the context")

    def _trim_to(self, s: SessionState, limit: int, extra: int) -> None:
        reserve = self.config.turn_reserve
        if len(s.history) + extra + reserve <= limit:
            return
        before = len(s.history.turns)
        s.history.trim(limit - reserve - extra)
        if len(s.history.turns) != before:
            logger.debug(f"session {s.session_id}: dropped {before - len(s.history.turns)} turns")
            # Later turns moved to new positions: keep the system block, re-prefill the rest.
            self._truncate(s, min(s.cache_len, s.history.system.shape[0]))

    def _end_turn(self, s: SessionState, summary: TurnSummary) -> None:
        t = s.turn
        if summary.ttfa_s is None and t.t_first is not None and t.t_trigger is not None:
            summary.ttfa_s = t.t_first - t.t_trigger
        t.channel.put(summary)
        rec = t.record
        if rec is not None:  # ids never fed are never needed again (one more: the closing row)
            del rec.text_ids[rec.lead + len(rec.steps) + 1 :]
        s.turn = None
        s.to_feed = None
        s.phase = Phase.IDLE
        if s.codec_slot is not None:
            self._codec_state.remove_stream(s.codec_slot)
            s.codec_slot = None

    def _fail_turn(self, s: SessionState, error: BaseException) -> None:
        """Ends the turn with an error, rolling back whatever it fed; the session stays usable."""
        logger.warning(f"session {s.session_id}: turn failed: {error!r}")
        t = s.turn
        summary = TurnSummary(t.turn_id, "error", text=t.text, error=error)
        if t.record is not None:
            self._close_record(s, len(s.history.turns) - 1, 0, summary)
        self._end_turn(s, summary)

    # ================================================================== the loop
    def _run(self) -> None:
        timeout: float | None = None
        with torch.inference_mode():
            while True:
                with self._cv:
                    if not self._commands and not self._stopping and timeout != 0:
                        self._cv.wait(timeout)
                    if self._stopping:
                        return
                    commands = list(self._commands)
                    self._commands.clear()
                for fn, fut in commands:
                    if not fut.set_running_or_notify_cancel():
                        continue
                    try:
                        fut.set_result(fn())
                    except BaseException as e:  # handed to the caller
                        fut.set_exception(e)
                try:
                    timeout = self._tick()
                except Exception as e:  # a bug in shared code: fail every turn in flight
                    logger.exception("engine tick failed")
                    for s in list(self._sessions.values()):
                        self._fail_safely(s, e)
                    timeout = None

    def _tick(self) -> float | None:
        """One round of work. Returns 0 if work was done, else how long to wait (None: until
        a command arrives)."""
        t_now = now()
        sessions = list(self._sessions.values())
        if sessions:
            self._rr = (self._rr + 1) % len(sessions)
            sessions = sessions[self._rr :] + sessions[: self._rr]
        for s in sessions:
            if s.ready_to_prefill(self.layout.delay):
                try:
                    self._begin_prefill(s, t_now)
                except Exception as e:
                    self._fail_safely(s, e)
        prefills = [s for s in sessions if s.phase is Phase.PREFILL]
        done = []
        for group in self._by_pool(prefills):  # one backbone call per KV pool
            done += self._isolated(group, self._prefill_chunk)
        self._keep_prefixes(prefills)
        done = [(s, h) for s, h in done if s.turn is not None]  # drop turns that failed
        if done:
            hidden_of = dict(done)
            first = self._isolated([s for s, _ in done], lambda b: self._first_frames(b, hidden_of))
            self._deliver(first)
        steppers = [
            s
            for s in sessions
            if s.phase is Phase.DECODE
            and s.turn.record.frames
            and s.next_text_id(self.layout.text_pad) is not None
            and s.within_lookahead(self.config, t_now)
        ]
        for group in self._by_pool(steppers):
            self._deliver(self._isolated(group, self._decode))
        if done or steppers or prefills:
            self.stats["ticks"] += 1
            return 0.0
        waits = [
            s.seconds_until_lookahead(self.config, t_now)
            for s in sessions
            if s.phase is Phase.DECODE and s.next_text_id(self.layout.text_pad) is not None
        ]
        return min(waits) if waits else None

    def _by_pool(self, sessions: list[SessionState]) -> list[list[SessionState]]:
        groups: dict[int, list[SessionState]] = {}
        for s in sessions:
            groups.setdefault(s.pool, []).append(s)
        return [groups[i] for i in sorted(groups)]

    def _isolated(self, batch: list[SessionState], fn: Callable[[list[SessionState]], list]):
        """Runs ``fn`` on the batch; if it raises, runs each session alone and fails only the
        sessions that still raise. Returns the concatenated results.

        ``fn`` must change host state only after its model calls succeed; the device-side cache
        lengths a failed call may have advanced are restored from the host mirror.
        """
        try:
            return fn(batch)
        except Exception as e:
            self._resync_lengths(batch)
            if len(batch) == 1:
                self._fail_safely(batch[0], e)
                return []
        out = []
        for s in batch:
            try:
                out += fn([s])
            except Exception as e:
                self._resync_lengths([s])
                self._fail_safely(s, e)
        return out

    def _fail_safely(self, s: SessionState, error: BaseException) -> None:
        """``_fail_turn`` that never raises, so one session's fault stays its own: if rolling
        its turn back fails too, the turn is dropped from the history and the session's cache
        emptied (its next turn re-prefills the history)."""
        if s.turn is None:
            return
        try:
            self._fail_turn(s, error)
            return
        except Exception:
            logger.exception(f"session {s.session_id}: rolling back a failed turn failed")
        t = s.turn
        if t is None:
            return
        if t.record is not None and s.history.turns and s.history.turns[-1] is t.record:
            s.history.turns.pop()
        self._truncate(s, 0)
        s.turn, s.to_feed, s.phase = None, None, Phase.IDLE
        if s.codec_slot is not None:
            self._codec_state.remove_stream(s.codec_slot)
            s.codec_slot = None
        t.channel.put(TurnSummary(t.turn_id, "error", text=t.text, error=error))

    def _resync_lengths(self, batch: list[SessionState]) -> None:
        for s in batch:
            self._pools[s.pool].cache.lengths[s.slot] = s.cache_len

    # ---- prefill ----------------------------------------------------------------------------
    def _begin_prefill(self, s: SessionState, t_now: float) -> None:
        t, layout = s.turn, self.layout
        header = layout.header("assistant", first=not s.history.turns)
        prompt = layout.prefill_rows(header, t.tokens)[header.shape[0] :]
        try:
            self._fit_budget(s, header.shape[0] + prompt.shape[0])
        except CapacityError as e:
            self._fail_turn(s, e)
            return
        self._use_prefix(s)
        rec = AssistantTurn(
            text_ids=t.tokens,
            lead=prompt.shape[0],
            prompt=prompt,
            turn_id=t.turn_id,
            text=t.text,
            words=t.words,
        )
        s.history.turns.append(rec)
        t.record, t.fed_text, t.t_trigger = rec, rec.lead, t_now
        s.to_feed = s.history.all_rows()[s.cache_len :]
        s.phase = Phase.PREFILL

    def _use_prefix(self, s: SessionState) -> None:
        """A prefill that would feed the system block (a new conversation, a new voice, a
        cache emptied by a fault) copies its KV from the prefix cache instead; on a miss the
        block's KV is kept once the prefill has fed it (``_keep_prefixes``)."""
        system = s.history.system
        s.prefix_pending = None
        if not self.prefix_cache.enabled or s.cache_len >= system.shape[0]:
            return
        if self.prefix_cache.restore(system, self._pools[s.pool].cache, s.slot) is None:
            s.prefix_pending = system
            self.stats["prefix_misses"] += 1
            return
        self._truncate(s, system.shape[0])
        self.stats["prefix_hits"] += 1
        self.stats["prefix_rows_reused"] += system.shape[0]

    def _keep_prefixes(self, prefills: list[SessionState]) -> None:
        """Stores the system-block KV of the sessions whose prefill missed the prefix cache
        and has now fed that block (the block still being the one it missed on)."""
        for s in prefills:
            system = s.prefix_pending
            if system is None or s.cache_len < system.shape[0]:
                continue
            s.prefix_pending = None
            if s.history.system is not system:
                continue
            try:
                self.prefix_cache.store(system, self._pools[s.pool].cache, s.slot)
            except Exception:  # a cache that cannot grow costs speed, never a turn
                logger.exception(f"session {s.session_id}: could not keep its prompt prefix")

    def _prefill_chunk(self, batch: list[SessionState]) -> list[tuple[SessionState, torch.Tensor]]:
        chunk = self.config.prefill_chunk
        sizes = [min(chunk, s.to_feed.shape[0]) for s in batch]
        T = max(sizes)
        rows = torch.stack(
            [
                torch.cat((s.to_feed[:n], s.to_feed[n - 1 : n].expand(T - n, -1)))
                for s, n in zip(batch, sizes, strict=True)
            ]
        ).to(self.device)  # [B, T, 17]; padding repeats a real row and is never attended
        pool = self._pools[batch[0].pool]  # the batch shares one pool
        last = None  # [B, H]: each session's last row, from a graph bucket if one holds it
        if pool.prefill is not None:
            need = max(s.cache_len + n for s, n in zip(batch, sizes, strict=True))
            last = pool.prefill.step(rows, [s.slot for s in batch], sizes, need)
        if last is None:
            slots = torch.tensor([s.slot for s in batch], device=self.device)
            n_new = torch.tensor(sizes, device=self.device)
            kv_len = max(s.cache_len for s in batch) + T
            hidden = self.model.backbone(rows, pool.cache, slots, n_new, kv_len)  # [B, T, H]
        done = []
        for b, (s, n) in enumerate(zip(batch, sizes, strict=True)):
            s.cache_len += n
            s.to_feed = s.to_feed[n:]
            self.stats["prefill_rows"] += n
            if s.to_feed.shape[0] == 0:
                s.to_feed = None
                s.phase = Phase.DECODE
                done.append((s, hidden[b, n - 1] if last is None else last[b]))
        return done

    # ---- frames -----------------------------------------------------------------------------
    def _sampling_inputs(self, batch: list[SessionState], rows: torch.Tensor, stepping: bool):
        """Penalty history (each session's own window), sampling settings and noise keys of a
        batch (the noise itself is made inside the step from each session's seed and frame
        counter: no launch per session).

        ``rows``: the sessions' rows of the history buffer; ``stepping``: the frames come from
        decode steps (which feed a text token), not from prefills."""
        dev = self.device
        hist = self._hist[rows]  # [B, W, rvq]
        W = hist.shape[1]
        windows = torch.tensor([s.sampling.repetition_window for s in batch], device=dev)
        old = torch.arange(W, device=dev)[None, :] < (W - windows)[:, None]  # [B, W]
        penalty_hist = hist.masked_fill(old[:, :, None], NO_HISTORY)
        params = [s.sampling for s in batch]
        noise = None
        if not all(p.greedy for p in params):
            noise = NoiseKeys.from_ints(
                [s.seed for s in batch], [s.noise_counter for s in batch], dev
            )
        allow = [s.eos_allowed(stepping) for s in batch]
        return hist, penalty_hist, BatchSampling.from_params(params, dev, allow), noise

    def _push_history(self, rows: torch.Tensor, hist: torch.Tensor, frames: torch.Tensor) -> None:
        if hist.shape[1]:
            self._hist[rows] = torch.cat((hist[:, 1:], frames[:, None]), dim=1)

    def _hist_rows(self, batch: list[SessionState]) -> torch.Tensor:
        return torch.tensor([s.hist_row for s in batch], device=self.device)

    def _first_frames(
        self, batch: list[SessionState], hidden_of: dict[SessionState, torch.Tensor]
    ) -> list:
        """Frame 0 of each turn whose prefill just ended (no repetition penalty yet)."""
        hist_rows = self._hist_rows(batch)
        self._hist[hist_rows] = NO_HISTORY  # a new turn: the penalty starts afresh
        hist, penalty_hist, sampling, noise = self._sampling_inputs(batch, hist_rows, False)
        hidden = torch.stack([hidden_of[s] for s in batch])  # [B, H]
        if self._frame_graph is not None:
            frames = self._frame_graph.step(hidden, sampling, penalty_hist, noise)  # [B, rvq]
        else:
            frames = self.model.generate_frame(hidden, sampling, penalty_hist, noise)
        self._push_history(hist_rows, hist, frames)
        frames = frames.cpu()
        for s in batch:
            s.noise_counter += 1
        return list(zip(batch, frames, strict=True))

    def _decode(self, batch: list[SessionState]) -> list:
        """One step for each session: its step row in, its next frame out (one fused call)."""
        pad = self.layout.text_pad
        prev = torch.stack([s.turn.record.frames[-1] for s in batch])  # [B, rvq]
        step_rows = self.layout.step_rows([s.next_text_id(pad) for s in batch], prev)  # [B, 17]
        rows = step_rows[:, None].to(self.device)  # [B, 1, 17]
        slots = [s.slot for s in batch]
        pool = self._pools[batch[0].pool]  # the batch shares one pool
        kv_len = max(s.cache_len for s in batch) + 1
        hist_rows = self._hist_rows(batch)
        hist, penalty_hist, sampling, noise = self._sampling_inputs(batch, hist_rows, True)
        if pool.graphs is not None:
            frames, _ = pool.graphs.step(rows, slots, kv_len, sampling, penalty_hist, noise)
        else:
            slot_t = torch.tensor(slots, device=self.device)
            frames, _ = self.model.decode_step(
                rows, pool.cache, slot_t, kv_len, sampling, penalty_hist, noise
            )
        self._push_history(hist_rows, hist, frames)
        frames = frames.cpu()
        for s, row in zip(batch, step_rows, strict=True):
            t = s.turn
            t.record.steps.append(row)
            if t.fed_text < len(t.tokens):
                t.fed_text += 1
            s.cache_len += 1
            s.noise_counter += 1
        self.stats["decode_steps"] += len(batch)
        return list(zip(batch, frames, strict=True))

    def _deliver(self, items: list[tuple[SessionState, torch.Tensor]]) -> None:
        """Records each new frame, sends audio chunks out, and ends the turns that are done."""
        eos = self.layout.audio_eos
        t_now = now()
        # Codebook 0 of every frame in one look (not a host read per session).
        ended = (torch.stack([f for _, f in items])[:, 0] == eos).tolist() if items else []
        audio: list[tuple[SessionState, torch.Tensor, int]] = []
        for (s, f), end in zip(items, ended, strict=True):
            t = s.turn
            t.record.frames.append(f)
            if t.t_first is None:
                t.t_first = t_now
            self.stats["frames"] += 1
            if not end:
                audio.append((s, f, len(t.record.frames) - 1))
        pcm = self._pcm_isolated([(s, f) for s, f, _ in audio])
        for (s, f, index), p in zip(audio, pcm, strict=True):
            t = s.turn
            if t is not None:
                words = tuple(t.words.on_audio(index + 1, t.fed_chars()))
                t.channel.put(AudioChunk(t.turn_id, index, f, p, words))
        for (s, _), end in zip(items, ended, strict=True):
            if s.turn is None:
                continue  # its audio failed to decode: the turn already ended with an error
            try:
                rec = s.turn.record
                if end:
                    self._finish(s, "eos")
                elif len(rec.frames) >= s.frame_cap(self.config) or not self._room_for_step(s):
                    self._finish(s, "max_frames")
            except Exception as e:  # this session's bookkeeping: the others go on
                self._fail_safely(s, e)

    def _room_for_step(self, s: SessionState) -> bool:
        """Whether the slot takes another step (plus closing rows), moving to a larger pool
        if it must."""
        cfg = self.config
        if s.out_of_room(cfg.max_context):
            return False
        return not s.out_of_room(self._pools[s.pool].capacity) or self._make_room(
            s, min(s.cache_len + cfg.turn_reserve, cfg.max_context)
        )

    def _pcm_isolated(self, items: list[tuple[SessionState, torch.Tensor]]) -> list:
        """Batched codec decode; if it fails, session by session, failing only the culprits."""
        try:
            return self._decode_pcm(items)
        except Exception as e:
            if len(items) > 1:
                return [p for item in items for p in self._pcm_isolated([item])]
            s = items[0][0]
            if s.codec_slot is not None:  # its stream state is suspect: start it afresh
                self._codec_state.remove_stream(s.codec_slot)
                s.codec_slot = None
            self._fail_turn(s, e)
            return [None]

    def _decode_pcm(self, items: list[tuple[SessionState, torch.Tensor]]) -> list[bytes | None]:
        if self.codec is None or not items:
            return [None] * len(items)
        from moss_pipecat.codec import pcm16

        new = [s for s, _ in items if s.codec_slot is None]  # turns starting: reset together
        if new:
            for s, slot in zip(new, self._codec_state.add_streams(len(new)), strict=True):
                s.codec_slot = slot
        size = self.codec.config.quantizer.codebook_size
        # [Q, B, 1]; specials (pad/BOS) can only appear in untrained models: clamp for the codec
        codes = torch.stack([f for _, f in items], dim=1)[:, :, None].clamp(0, size - 1)
        slots = [s.codec_slot for s, _ in items]
        if self._codec_graph is not None:
            wav = self._codec_graph.step(codes, slots)
        else:
            wav = self.codec.decode_step(self._codec_state, codes, slots, check=False)
        # int16 for the whole batch, one copy to the host, then each row's bytes.
        pcm = pcm16(wav).cpu().numpy().astype("<i2", copy=False)  # [B, samples]
        return [row.tobytes() for row in pcm]

    def _finish(self, s: SessionState, stop: str) -> None:
        t, rec = s.turn, s.turn.record
        total = rec.audio_frames(self.layout.audio_eos)
        rec.close(self.layout, total)
        all_fed = t.text_done and t.fed_text >= len(t.tokens)
        if stop == "eos" and all_fed:
            s.learn_speaking_rate(t.text.strip(), total)
        # Words never fed (an early EOS, a frame cap) were not said: they get no time.
        tail = t.words.finish(total, t.fed_chars())
        summary = TurnSummary(
            t.turn_id,
            stop,
            audio_frames=total,
            heard_frames=total,
            text_ids=list(t.tokens),
            text=t.text,
            spoken_text=t.words.heard_text(total),
            words=tail,
        )
        self._end_turn(s, summary)


class KVPool:
    """One KV cache of equal-capacity slots (plus, graphed, a spare position per slot)."""

    def __init__(
        self, cache, capacity: int, n_slots: int, hist_offset: int, graphs, prefill=None
    ) -> None:
        self.cache, self.capacity, self.hist_offset, self.graphs = (
            cache,
            capacity,
            hist_offset,
            graphs,
        )
        self.prefill = prefill  # GraphedPrefill, or None: prefill chunks run eagerly
        self.n_slots = n_slots
        self.free = list(range(n_slots))

    @classmethod
    def build(
        cls,
        model: MossTTSRealtime,
        n_slots: int,
        capacity: int,
        hist_offset: int,
        graphed: bool,
        config: EngineConfig,
    ) -> KVPool:
        # The graphed steps run idle rows too; their writes need one spare position.
        cache = model.new_cache(n_slots, capacity + int(graphed))
        graphs = prefill = None
        if graphed:
            from moss_pipecat.model.graphs import GraphedDecodeStep, GraphedPrefill

            graphs = GraphedDecodeStep(
                model,
                cache,
                window=config.repetition_window_max,
                compile_backend=config.compile_decode,
            )
            if config.graphed_prefill:
                prefill = GraphedPrefill(model, cache)
        return cls(cache, capacity, n_slots, hist_offset, graphs, prefill)

    def release(self, slot: int) -> None:
        self.free.append(slot)
        self.free.sort()

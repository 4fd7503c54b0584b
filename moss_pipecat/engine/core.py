"""The engine's state and the rules that keep it true, owned by one thread.

``EngineCore`` holds every session's state, the KV pools, the model runner and the prefix
cache. It applies commands (``execute``, see ``engine.handlers``) and runs ticks (``tick``, see
``engine.scheduler``); both run on the engine thread only, so nothing here locks. The rules
shared by both live here: a session's history is the truth and the KV cache a prefix of it
(``truncate``), the context budget (``fit_budget``), and how a turn ends (``end_turn``,
``fail_turn``, ``close_record``).

Single-threaded drivers (launch counting, benchmarks) may call ``execute`` and ``tick`` directly
on an engine whose thread is not running.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from moss_pipecat._log import logger
from moss_pipecat.engine.clock import Clock, MonotonicClock
from moss_pipecat.engine.commands import Command, PushText
from moss_pipecat.engine.config import EngineConfig
from moss_pipecat.engine.costs import CostModel
from moss_pipecat.engine.device_costs import DeviceCosts
from moss_pipecat.engine.events import TurnSummary
from moss_pipecat.engine.handlers import HANDLERS
from moss_pipecat.engine.history import AssistantTurn
from moss_pipecat.engine.kv_pools import KVPools
from moss_pipecat.engine.prefix_cache import PrefixCache
from moss_pipecat.engine.rows import RowLayout
from moss_pipecat.engine.runner import ModelRunner
from moss_pipecat.engine.scheduler import Scheduler
from moss_pipecat.engine.start_up import use_kernel_cache
from moss_pipecat.engine.state import Phase, SessionState
from moss_pipecat.errors import CapacityError, SessionClosedError, UnknownSessionError
from moss_pipecat.model import MossTTSRealtime
from moss_pipecat.model.device_kernels import fused_by_default
from moss_pipecat.model.kernels import use_fused


class EngineCore:
    """Sessions, KV pools, runner and scheduler of one engine (engine thread only)."""

    def __init__(
        self,
        model: MossTTSRealtime,
        layout: RowLayout,
        codec: Any | None,
        config: EngineConfig,
        system_text_ids: Sequence[int],
        voice_instruction_ids: Sequence[int],
        clock: Clock | None = None,
        runner_factory: Callable[..., ModelRunner] | None = None,
    ) -> None:
        self.model, self.layout, self.codec, self.config = model, layout, codec, config
        self.clock = clock or MonotonicClock()
        self.system_text_ids = list(system_text_ids)
        self.voice_instruction_ids = list(voice_instruction_ids)
        device = next(model.parameters()).device
        use_kernel_cache(config.kernel_cache_dir)  # before anything compiles
        self.fused = fused_by_default(device) if config.fused is None else config.fused
        if self.fused:
            from moss_pipecat.codec.device_kernels import register_device_kernels

            register_device_kernels()  # the model's and the codec's
        for part in (model, codec):  # the one switch for both (a stand-in codec has none)
            if isinstance(part, torch.nn.Module):
                use_fused(part, self.fused)
        graphed = config.graphed_decode
        if graphed is None:
            graphed = device.type == "cuda"
        self.pools = KVPools(model, config)
        # A simulated device (``moss_pipecat.testing.simulated_device``) stands in here.
        make_runner = runner_factory or ModelRunner
        self.runner = make_runner(model, codec, config, self.pools, graphed)
        self.sessions: dict[str, SessionState] = {}
        # KV of each distinct system block (system sentence + voice), shared by all sessions.
        self.prefix_cache = PrefixCache(config.prefix_cache_bytes)
        self.stats = {"ticks": 0, "prefill_rows": 0, "decode_steps": 0, "frames": 0}
        self.stats.update(prefix_hits=0, prefix_misses=0, prefix_rows_reused=0)
        # Pacing (``engine.pacing``): conversations refused for load, ticks whose prefill the
        # budget cut short.
        self.stats.update(refused_overload=0, prefill_capped_ticks=0)
        # KV memory: moves to a larger pool, turns dropped from a history past its context
        # budget or for want of a larger free slot, replies ended early for want of one.
        self.stats.update(pool_moves=0, turns_dropped_budget=0, turns_dropped_no_slot=0)
        self.stats.update(replies_cut_no_slot=0)
        self.costs = CostModel()  # what each kind of device call costs, learned online
        if config.cost_table is not None:  # ... starting from a measured table
            DeviceCosts.load(config.cost_table, self.fused).prime(self.costs)
        self.scheduler = Scheduler(self)

    # ---- entry points ------------------------------------------------------------------------
    def execute(self, session_id: str, command: Command) -> Any:
        """Applies one (checked) command; returns its result. A turn that ends with audio
        still on its way out is ended as it would be without overlap: text for it is dropped
        (late text), anything else first sends that session's audio and ends it
        (``AudioOut.settle_for``; the other sessions' audio keeps its pace)."""
        if self.scheduler.audio.ending(session_id):
            if isinstance(command, PushText):
                return None  # its turn has ended (its last audio is on its way): dropped
            self.scheduler.audio.settle_for(session_id)
        return HANDLERS[type(command)](self, session_id, command)

    def tick(self) -> float | None:
        """One round of work: 0 if work was done, else how long to wait (None: until a
        command arrives)."""
        return self.scheduler.tick()

    def fail_all(self, error: BaseException) -> None:
        """A fault in shared code: every turn in flight ends with it, sessions stay usable."""
        for s in list(self.sessions.values()):
            self.fail_safely(s, error)

    def state(self, session_id: str) -> SessionState:
        s = self.sessions.get(session_id)
        if s is None:
            raise UnknownSessionError(f"no session {session_id!r}")
        if s.phase is Phase.CLOSED:
            raise SessionClosedError(f"session {session_id!r} is closed")
        return s

    def system_rows(self, voice: torch.Tensor | None) -> torch.Tensor:
        return self.layout.system_block(self.system_text_ids, voice, self.voice_instruction_ids)

    # ---- the cache follows the history -----------------------------------------------------
    def truncate(self, s: SessionState, length: int) -> None:
        """Sets the slot's cached length (host mirror and device); the rows past it are fed
        again by the next prefill."""
        s.cache_len = length
        self.pools.set_length(s.pool, s.slot, length)

    def resync_lengths(self, batch: list[SessionState]) -> None:
        """Restores device lengths a failed model call may have advanced."""
        for s in batch:
            self.pools.set_length(s.pool, s.slot, s.cache_len)

    def make_room(self, s: SessionState, need: int) -> bool:
        """Moves the session to a pool that holds ``need`` positions if its own does not.
        False if no such slot is free."""
        if need <= self.pools[s.pool].capacity:
            return True
        moved = self.pools.move(s.pool, s.slot, s.cache_len, need)
        if moved is None:
            return False
        row = self.pools.hist_row(*moved)
        self.runner.copy_history(s.hist_row, row)
        s.pool, s.slot, s.hist_row = *moved, row
        self.stats["pool_moves"] += 1
        logger.debug(f"session {s.session_id}: moved to the {self.pools[s.pool].capacity} pool")
        return True

    def fit_budget(self, s: SessionState, extra: int) -> None:
        """Makes room for ``extra`` more rows plus the turn reserve: drops the oldest turns
        past the session's budget, and moves the session to a larger KV pool when its own is
        too small (or, with none free, trims to the slot it has)."""
        cfg = self.config
        self._trim_to(s, s.budget(cfg), extra, "budget")
        if not self.make_room(s, len(s.history) + extra + cfg.turn_reserve):
            self._trim_to(s, self.pools[s.pool].capacity, extra, "no_slot")
        if len(s.history) + extra > self.pools[s.pool].capacity - 3:
            raise CapacityError("the system prompt and the new turn do not fit the context")

    def _trim_to(self, s: SessionState, limit: int, extra: int, reason: str) -> None:
        reserve = self.config.turn_reserve
        if len(s.history) + extra + reserve <= limit:
            return
        before = len(s.history.turns)
        s.history.trim(limit - reserve - extra)
        dropped = before - len(s.history.turns)
        if dropped:
            self.stats[f"turns_dropped_{reason}"] += dropped
            if reason == "budget":
                logger.debug(f"session {s.session_id}: dropped {dropped} turns")
            else:  # memory pressure: the operator's pools are too small for the calls held
                logger.warning(
                    f"session {s.session_id}: no larger KV slot free, dropped {dropped} turns "
                    f"to fit its {limit}-position slot"
                )
            # Later turns moved to new positions: keep the system block, re-prefill the rest.
            self.truncate(s, min(s.cache_len, s.history.system.shape[0]))

    # ---- how turns end -----------------------------------------------------------------------
    def close_record(
        self,
        s: SessionState,
        index: int,
        heard: int,
        summary: TurnSummary,
        units: int | None = None,
    ) -> None:
        """Cuts assistant turn ``index`` to ``heard`` frames and rolls the cache back; its
        spoken text is its first ``units`` units if given (``Interrupt.heard_units``)."""
        rec: AssistantTurn = s.history.turns[index]
        total = rec.audio_frames(self.layout.audio_eos)
        start = s.history.offset(index)
        rec.close(self.layout, heard)
        kept = len(rec.frames)
        if rec.noise_start is not None:
            # Frames past the heard never were, nor were the draws of the turns after this one
            # (the last turn: those were cut away), nor, after a reseed, the draws before it
            # (``noise_start`` is negative then).
            s.noise_counter = max(0, rec.noise_start + kept)
        if kept == 0:
            s.history.turns.pop(index)  # nothing was heard: as if the turn never happened
            keep = start
        else:
            keep = start + len(s.history.header(index)) + rec.lead + len(rec.steps)
        self.truncate(s, min(s.cache_len, keep))
        summary.audio_frames = total
        summary.heard_frames = kept
        summary.spoken_text = rec.words.heard_text(kept, units) if rec.words is not None else ""

    def end_turn(self, s: SessionState, summary: TurnSummary) -> None:
        t = s.turn
        if summary.ttfa_s is None and t.t_first is not None and t.t_trigger is not None:
            summary.ttfa_s = t.t_first - t.t_trigger
        t.channel.put(summary)
        rec = t.record
        if rec is not None:  # ids never fed are never needed again (one more: the closing row)
            del rec.text_ids[rec.lead + len(rec.steps) + 1 :]
            if rec.words is not None:  # only its heard text is asked of it from now on
                rec.words = rec.words.settled()
        s.turn = None
        s.to_feed = None
        s.phase = Phase.IDLE
        self.release_stream(s)

    def fail_turn(self, s: SessionState, error: BaseException) -> None:
        """Ends the turn with an error, rolling back whatever it fed; the session stays usable."""
        logger.warning(f"session {s.session_id}: turn failed: {error!r}")
        t = s.turn
        summary = TurnSummary(t.turn_id, "error", text=t.text, error=error)
        if t.record is not None:
            self.close_record(s, len(s.history.turns) - 1, 0, summary)
        self.end_turn(s, summary)

    def fail_safely(self, s: SessionState, error: BaseException) -> None:
        """``fail_turn`` that never raises, so one session's fault stays its own: if rolling
        its turn back fails too, the turn is dropped from the history and the session's cache
        emptied (its next turn re-prefills the history)."""
        if s.turn is None:
            return
        self.scheduler.audio.settle()  # its audio made so far goes out first
        if s.turn is None:
            return  # it ended with that audio
        try:
            self.fail_turn(s, error)
            return
        except Exception:
            logger.exception(f"session {s.session_id}: rolling back a failed turn failed")
        t = s.turn
        if t is None:
            return
        if t.record is not None and s.history.turns and s.history.turns[-1] is t.record:
            s.history.turns.pop()
        self.truncate(s, 0)
        s.turn, s.to_feed, s.phase = None, None, Phase.IDLE
        self.release_stream(s)
        t.channel.put(TurnSummary(t.turn_id, "error", text=t.text, error=error))

    def release_stream(self, s: SessionState) -> None:
        """Frees the session's codec stream (its turn has no more frames to decode)."""
        if s.codec_slot is not None:
            self.runner.close_stream(s.codec_slot)
            s.codec_slot = None

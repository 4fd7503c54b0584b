"""The scheduler: what each engine tick runs, for whom, and what the results mean.

Each tick gathers every session that is ready (prefill chunks, decode steps whose next text
token is known and that are within their real-time lookahead) into batched runner calls, one
per KV pool: a padded backbone call for prefills, then one frame call for every turn whose
prefill ended, then one fused decode step. A session waiting for text costs nothing. A failing
batch is retried session by session so only the culprit fails (``isolated``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from moss_pipecat._log import logger
from moss_pipecat.engine.audio_out import AudioOut, PendingAudio
from moss_pipecat.engine.history import AssistantTurn
from moss_pipecat.engine.pacing import TICK, PrefillWant, plan_prefill, tick_budget
from moss_pipecat.engine.runner import RowSampling
from moss_pipecat.engine.state import Phase, SessionState
from moss_pipecat.errors import CapacityError

if TYPE_CHECKING:
    from moss_pipecat.engine.core import EngineCore


class Scheduler:
    """Runs the engine's ticks over the core's sessions (engine thread only)."""

    def __init__(self, core: EngineCore) -> None:
        self.core = core
        self.runner = core.runner
        self.clock = core.clock
        self.layout, self.config = core.layout, core.config
        self._rr = 0  # rotates the prefill order for fairness
        self._plan: dict[SessionState, int] = {}  # this tick's prefill rows per session
        self._ticks = 0
        self.audio = AudioOut(core)  # audio whose PCM is still on the device

    def tick(self) -> float | None:
        """One round of work. Returns 0 if work was done, else how long to wait (None: until
        a command arrives)."""
        t_now = self.clock.now()
        self._ticks += 1
        sessions = list(self.core.sessions.values())
        if sessions:
            self._rr = (self._rr + 1) % len(sessions)
            sessions = sessions[self._rr :] + sessions[: self._rr]
        for s in sessions:
            if s.ready_to_prefill(self.layout.delay):
                try:
                    self.begin_prefill(s, t_now)
                except Exception as e:
                    self.core.fail_safely(s, e)
        prefills = [s for s in sessions if s.phase is Phase.PREFILL]
        self._plan = self.plan(prefills, sessions, t_now)
        done = []
        for group in _by_pool([s for s in prefills if s in self._plan]):  # one call per pool
            done += self.isolated(group, self.prefill_chunk)
        self.keep_prefixes(prefills)
        done = [(s, h) for s, h in done if s.turn is not None]  # drop turns that failed
        if done:
            hidden_of = dict(done)
            first = self.isolated([s for s, _ in done], lambda b: self.first_frames(b, hidden_of))
            self.deliver(first)
        steppers = [s for s in sessions if self.steps(s, t_now)]
        for group in _by_pool(steppers):
            self.deliver(self.isolated(group, self.decode))
        late = self.audio.made_before(self._ticks)
        if late:  # no decode step this tick for the codec to run beside: send it now
            self.audio.settle()
        if done or steppers or prefills or late:
            self.core.stats["ticks"] += 1
            if steppers and self.config.frame_deadline_s is not None:
                # What a tick at this many conversations took, all in (host work, device,
                # the turns starting in it): what admission projects (``pacing.admits``).
                self.core.costs.observe(TICK, len(self.core.sessions), self.clock.now() - t_now)
            return 0.0
        pad = self.layout.text_pad
        waits = [
            s.seconds_until_lookahead(self.config, t_now)
            for s in sessions
            if s.phase is Phase.DECODE and s.next_text_id(pad) is not None
        ]
        return min(waits) if waits else None

    def steps(self, s: SessionState, t_now: float) -> bool:
        """Whether the session takes a decode step this tick (it has a frame to follow, its
        next text token is known, and it is within its real-time lookahead)."""
        return (
            s.phase is Phase.DECODE
            and not self.audio.ending(s.session_id)
            and bool(s.turn.record.frames)
            and s.next_text_id(self.layout.text_pad) is not None
            and s.within_lookahead(self.config, t_now)
        )

    def plan(
        self, prefills: list[SessionState], sessions: list[SessionState], t_now: float
    ) -> dict[SessionState, int]:
        """Rows each prefilling session feeds this tick, within the tick's budget."""
        if not prefills:
            return {}  # nothing to plan (a decode tick: no call counted per session)
        cfg = self.config
        wants = [
            PrefillWant(s, s.to_feed.shape[0], s.turn.t_trigger, s.cache_len < s.refeed_end)
            for s in prefills
        ]
        budget = tick_budget(
            self.core.costs,
            cfg.frame_deadline_s,
            cfg.prefill_budget_rows,
            decoding=sum(self.steps(s, t_now) for s in sessions),
            wants=wants,
            chunk=cfg.prefill_chunk,
            codec=self.core.codec is not None,
            overlap=cfg.overlap_codec,
            replay=self.runner.batch_of,
        )
        plan = plan_prefill(wants, budget, cfg.prefill_chunk)
        if budget is not None and sum(plan.values()) < sum(
            min(w.rows, cfg.prefill_chunk) for w in wants
        ):
            self.core.stats["prefill_capped_ticks"] += 1
        return plan

    def timed(self, kind: str, size: int, call: Callable[[], Any]) -> Any:
        """Runs one device call; with a frame deadline, teaches the cost model what it took."""
        if self.config.frame_deadline_s is None:
            return call()
        t0 = self.clock.now()
        out = call()
        if kind == "prefill":
            self.runner.sync()  # its results stay on the device: wait for them to be made
        self.core.costs.observe(kind, size, self.clock.now() - t0)
        return out

    def isolated(self, batch: list[SessionState], fn: Callable[[list[SessionState]], list]):
        """Runs ``fn`` on the batch; if it raises, runs each session alone and fails only the
        sessions that still raise. Returns the concatenated results.

        ``fn`` must change host state only after its model calls succeed; the device-side cache
        lengths a failed call may have advanced are restored from the host mirror.
        """
        core = self.core
        try:
            return fn(batch)
        except Exception as e:
            core.resync_lengths(batch)
            if len(batch) == 1:
                core.fail_safely(batch[0], e)
                return []
        out = []
        for s in batch:
            try:
                out += fn([s])
            except Exception as e:
                core.resync_lengths([s])
                core.fail_safely(s, e)
        return out

    # ---- prefill ----------------------------------------------------------------------------
    def begin_prefill(self, s: SessionState, t_now: float) -> None:
        t, layout = s.turn, self.layout
        header = layout.header("assistant", first=not s.history.turns)
        prompt = layout.prefill_rows(header, t.tokens)[header.shape[0] :]
        try:
            self.core.fit_budget(s, header.shape[0] + prompt.shape[0])
        except CapacityError as e:
            self.core.fail_turn(s, e)
            return
        self.use_prefix(s)
        rec = AssistantTurn(
            text_ids=t.tokens,
            lead=prompt.shape[0],
            prompt=prompt,
            turn_id=t.turn_id,
            text=t.text,
            words=t.words,
        )
        s.refeed_end = _refeed_end(s)
        s.history.turns.append(rec)
        t.record, t.fed_text, t.t_trigger = rec, rec.lead, t_now
        s.feed(s.history.all_rows()[s.cache_len :])
        s.phase = Phase.PREFILL

    def use_prefix(self, s: SessionState) -> None:
        """A prefill that would feed the system block (a new conversation, a new voice, a
        cache emptied by a fault) copies its KV from the prefix cache instead; on a miss the
        block's KV is kept once the prefill has fed it (``keep_prefixes``)."""
        core, system = self.core, s.history.system
        s.prefix_pending = None
        if not core.prefix_cache.enabled or s.cache_len >= system.shape[0]:
            return
        if core.prefix_cache.restore(system, core.pools[s.pool].cache, s.slot) is None:
            s.prefix_pending = system
            core.stats["prefix_misses"] += 1
            return
        core.truncate(s, system.shape[0])
        core.stats["prefix_hits"] += 1
        core.stats["prefix_rows_reused"] += system.shape[0]

    def keep_prefixes(self, prefills: list[SessionState]) -> None:
        """Stores the system-block KV of the sessions whose prefill missed the prefix cache
        and has now fed that block (the block still being the one it missed on)."""
        core = self.core
        for s in prefills:
            system = s.prefix_pending
            if system is None or s.cache_len < system.shape[0]:
                continue
            s.prefix_pending = None
            if s.history.system is not system:
                continue
            try:
                core.prefix_cache.store(system, core.pools[s.pool].cache, s.slot)
            except Exception:  # a cache that cannot grow costs speed, never a turn
                logger.exception(f"session {s.session_id}: could not keep its prompt prefix")

    def prefill_chunk(self, batch: list[SessionState]) -> list[tuple[SessionState, torch.Tensor]]:
        """Feeds each session its next chunk of rows; returns (session, last hidden [H]) for
        the sessions whose prefill is complete."""
        rows = [s.to_feed[: self._plan[s]] for s in batch]
        last = self.timed(
            "prefill",
            sum(r.shape[0] for r in rows),
            lambda: self.runner.prefill(
                batch[0].pool,  # the batch shares one pool
                rows,
                [s.slot for s in batch],
                [s.cache_len for s in batch],
            ),
        )  # [B, H]
        done = []
        for b, (s, r) in enumerate(zip(batch, rows, strict=True)):
            n = r.shape[0]
            s.fed(n)
            self.core.stats["prefill_rows"] += n
            if s.to_feed.shape[0] == 0:
                s.to_feed = None
                s.phase = Phase.DECODE
                done.append((s, last[b]))
        return done

    # ---- frames -----------------------------------------------------------------------------
    def first_frames(
        self, batch: list[SessionState], hidden_of: dict[SessionState, torch.Tensor]
    ) -> list:
        """Frame 0 of each turn whose prefill just ended (no repetition penalty yet)."""
        hidden = torch.stack([hidden_of[s] for s in batch])  # [B, H]
        rows = [_sampling(s, False) for s in batch]
        frames = self.timed(
            "first_frame",
            self.runner.batch_of(len(batch)),
            lambda: self.audio.host([self.runner.first_frames(hidden, rows)], pcm=False),
        )[0]
        for s in batch:
            s.turn.record.noise_start = s.noise_counter
            s.noise_counter += 1
        return list(zip(batch, frames, strict=True))

    def decode(self, batch: list[SessionState]) -> list:
        """One step for each session: its step row in, its next frame out."""
        pad = self.layout.text_pad
        prev = torch.stack([s.turn.record.frames[-1] for s in batch])  # [B, rvq]
        step_rows = self.layout.step_rows([s.next_text_id(pad) for s in batch], prev)  # [B, 17]
        frames = self.timed(
            "decode",
            self.runner.batch_of(max(s.slot for s in batch) + 1, batch[0].pool),
            lambda: self.audio.host(
                [
                    self.runner.decode(
                        batch[0].pool,  # the batch shares one pool
                        step_rows,
                        [s.slot for s in batch],
                        [s.cache_len for s in batch],
                        [_sampling(s, True) for s in batch],
                    )
                ]
            ),
        )[0]
        for s, row in zip(batch, step_rows, strict=True):
            t = s.turn
            t.record.steps.append(row)
            if t.fed_text < len(t.tokens):
                t.fed_text += 1
            s.cache_len += 1
            s.noise_counter += 1
        self.core.stats["decode_steps"] += len(batch)
        return list(zip(batch, frames, strict=True))

    def deliver(self, items: list[tuple[SessionState, torch.Tensor]]) -> None:
        """Records each new frame (host), launches the codec on the audio frames, and sends
        the audio out and ends the turns that are done: at once, or with
        ``overlap_codec`` at the next tick's host wait (``audio_out``)."""
        eos = self.layout.audio_eos
        t_now = self.clock.now()
        # Codebook 0 of every frame in one look (not a host read per session).
        ended = (torch.stack([f for _, f in items])[:, 0] == eos).tolist() if items else []
        out = PendingAudio(self._ticks, self.layout.text_pad)
        self.core.stats["frames"] += len(items)
        for (s, f), end in zip(items, ended, strict=True):
            t = s.turn
            t.record.frames.append(f)
            if t.t_first is None:
                t.t_first = t_now
            if not end:  # word times now: the text fed so far places them
                index = len(t.record.frames) - 1
                words = tuple(t.words.on_audio(index + 1, t.fed_chars()))
                out.chunks.append((s, t, index, f, words))
        out.pcm = self.pcm_isolated(out)
        for (s, _), end in zip(items, ended, strict=True):
            if s.turn is None:
                continue  # its audio failed to decode: the turn already ended with an error
            try:
                rec = s.turn.record
                if end:
                    out.finishes.append((s, s.turn, "eos"))
                elif len(rec.frames) >= s.frame_cap(self.config) or not self.room_for_step(s):
                    out.finishes.append((s, s.turn, "max_frames"))
            except Exception as e:  # this session's bookkeeping: the others go on
                self.core.fail_safely(s, e)
        for s, _, _ in out.finishes:  # no more frames to decode: its codec slot is free now
            self.core.release_stream(s)  # (a new stream's reset queues after this codec call)
        out.sessions = {s.session_id for s, *_ in out.chunks + out.finishes}
        out.ending = {s.session_id for s, *_ in out.finishes}
        if out.chunks or out.finishes:
            self.audio.pending.append(out)
        if not self.config.overlap_codec or out.pcm is None:
            self.audio.settle()

    def room_for_step(self, s: SessionState) -> bool:
        """Whether the slot takes another step (plus closing rows), moving to a larger pool
        if it must."""
        cfg = self.config
        if s.out_of_room(cfg.max_context):
            return False
        if not s.out_of_room(self.core.pools[s.pool].capacity) or self.core.make_room(
            s, min(s.cache_len + cfg.turn_reserve, cfg.max_context)
        ):
            return True
        self.core.stats["replies_cut_no_slot"] += 1
        logger.warning(f"session {s.session_id}: no larger KV slot free, its reply ends here")
        return False

    def pcm_isolated(self, out: PendingAudio) -> torch.Tensor | None:
        """Launches the batched codec call on ``out``'s frames (PCM left on the device); if
        it fails, session by session, failing only the culprits (their chunks are dropped)."""
        if self.core.codec is None or not out.chunks:
            return None
        try:
            return self.decode_pcm(out.chunks)
        except Exception as e:
            if len(out.chunks) == 1:
                s = out.chunks[0][0]
                if s.codec_slot is not None:  # its stream state is suspect: start it afresh
                    self.runner.close_stream(s.codec_slot)
                    s.codec_slot = None
                self.core.fail_turn(s, e)
                out.chunks = []
                return None
            first_error = e
        rows, kept = [], []
        for chunk in out.chunks:
            one = PendingAudio(out.tick, out.pad, [chunk])
            pcm = self.pcm_isolated(one)
            if one.chunks:
                rows.append(pcm)
                kept.append(chunk)
        out.chunks = kept
        logger.debug(f"batched codec call failed ({first_error!r}); ran it session by session")
        return torch.cat(rows) if rows else None

    def decode_pcm(self, chunks: list) -> torch.Tensor:
        new = [s for s, *_ in chunks if s.codec_slot is None]  # turns starting: reset together
        if new:
            for s, slot in zip(new, self.runner.open_streams(len(new)), strict=True):
                s.codec_slot = slot
        frames, streams = [c[3] for c in chunks], [c[0].codec_slot for c in chunks]
        size = self.runner.batch_of(max(streams) + 1)
        return self.timed("codec", size, lambda: self.runner.pcm(frames, streams))


def _refeed_end(s: SessionState) -> int:
    """Where the rows this new turn brings start (the end of the last assistant turn): the
    history below it was fed before, so a prefill that starts under it is a re-prefill. A
    conversation's first turn re-feeds nothing (0)."""
    turns = s.history.turns
    last = max((i for i, t in enumerate(turns) if isinstance(t, AssistantTurn)), default=None)
    return 0 if last is None else s.history.offset(last + 1)


def _by_pool(sessions: list[SessionState]) -> list[list[SessionState]]:
    groups: dict[int, list[SessionState]] = {}
    for s in sessions:
        groups.setdefault(s.pool, []).append(s)
    return [groups[i] for i in sorted(groups)]


def _sampling(s: SessionState, stepping: bool) -> RowSampling:
    """How the session's next frame samples; ``stepping``: it comes from a decode step (which
    feeds a text token), not from a prefill."""
    return RowSampling(s.sampling, s.seed, s.noise_counter, s.eos_allowed(stepping), s.hist_row)

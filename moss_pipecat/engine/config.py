"""Engine settings."""

from __future__ import annotations

from dataclasses import dataclass

from moss_pipecat.errors import InvalidInputError
from moss_pipecat.speech.frames import FRAME_SECONDS  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class EngineConfig:
    """How one engine serves many sessions on one device.

    Attributes:
        max_sessions: concurrent sessions (KV-cache slots).
        max_context: KV positions each slot holds (the model's window is 32K).
        context_budget: a session is trimmed (oldest turns dropped, system prompt and voice
            kept) when a new turn would leave fewer than ``turn_reserve`` free positions
            below this budget.
        turn_reserve: positions kept free for the turn being started.
        lookahead_s: how far generation may run ahead of real time per session; limits the
            compute an interruption wastes. None = as fast as possible.
        prefill_chunk: rows prefilled per session per tick, so a long (re-)prefill never
            stalls the other sessions' decode steps for long.
        prefill_budget_rows: rows prefilled per tick across all sessions (chunks shared in
            priority order: turns whose first audio is due before re-prefills, oldest first;
            see ``engine.pacing``). None: unbounded (every session its chunk each tick).
        frame_deadline_s: the frame deadline of a decoding call (80 ms: one frame of audio).
            When set, the engine learns what its calls cost, bounds each tick's prefill so the
            projected tick fits the deadline while calls are decoding, and refuses a new
            conversation (``OverloadedError``) when a tick with every conversation speaking
            would not fit. None: off.
        cost_table: a cost table the cost model starts from (a ``scripts/gpu_bench.sh``
            output folder, or a table saved by ``DeviceCosts.save``; see
            ``engine.device_costs``), so a fresh engine paces and refuses from its first tick
            instead of admitting everyone until its own calls have taught it; its own
            measurements take over from there. Use a table measured on the same GPU model
            and settings (dtype, graphs). None: learn from nothing.
        overlap_codec: decode each tick's frames to PCM on a CUDA stream of its own, beside
            the next tick's decode step (events order them; no host wait between them), and
            deliver that PCM at the next tick's one wait on the device: a tick costs about
            max(decode step, codec) instead of their sum, and audio leaves one tick later.
            Frames and PCM are the same either way. On a CPU the stream is a no-op (same
            schedule, nothing runs beside). The tick projection (``engine.pacing``) counts
            the codec beside the decode step then.
        max_turn_frames: absolute cap on frames per assistant turn.
        frames_per_text_token, min_turn_frames: the per-turn cap relative to text length
            (ends a runaway turn): min_turn_frames + frames_per_text_token * tokens.
        eos_min_frames: a turn's first ``eos_min_frames`` frames never end it: the EOS logit of
            codebook 0 is masked, so every turn has at least that many audio frames (unless a
            frame cap or an interruption ends it sooner). 0: off. Per turn:
            ``start_turn(min_frames=...)``. (Not to be confused with ``min_turn_frames``, the
            smallest per-turn frame *cap*.)
        eos_after_text: EOS is masked until the turn's text has ended and every text token
            has been fed, so the model cannot stop before it has read the whole text. Per
            turn: ``start_turn(eos_after_text=...)``.
        repetition_window_max: longest repetition-penalty window a session may ask for.
        max_text_chars: characters per assistant turn.
        max_user_frames: audio frames of one user turn (longer audio keeps its last frames).
        graphed_decode: run decode steps through the padded static-buffer step that is
            captured as CUDA graphs on a GPU (on a CPU it runs eagerly: same results, for
            tests). None: on for CUDA devices.
        graphed_prefill: with ``graphed_decode``, prefill chunks that fit a bucket (a few
            sessions, up to 256 rows) run through padded static buffers too, replayed as
            CUDA graphs on a GPU (the TTFA path); larger ones run eagerly.
        capture_graphs_at_start: with CUDA graphs, ``start()`` captures every bucket the
            configured sessions can hit (seconds at start-up), so no call waits for a capture.
        compile_decode: ``torch.compile`` backend for the graphed decode step ("inductor":
            fused kernels inside the graphs; minutes of compiling at start). None: off.
        fused: run the model through its fused ops (``moss_pipecat.model.kernels``: norm
            with its weight, residual add + norm, q/k norm + RoPE, SiLU·mul, one sampling op
            per codebook, one keyed-noise op per frame). On a CPU each op runs the plain
            path's formula: the same frames bit for bit. On CUDA with ``triton`` installed
            each op is one Triton kernel (``model.triton_kernels``; the same roundings, a
            reduction's order and a last bit of ``rsqrt`` may differ); without it the ops run
            their formulas there too. None (default): on where the model is on CUDA and the
            Triton kernels can be had, off elsewhere (measured on an H200, 2026-12-04: the
            graphed step at batch 1 11.7 -> 8.2 ms, the codec frame 5.6 -> 4.0 ms, greedy and
            seeded frames equal to the plain graphed step's; ``tests/gpu/test_fused_cuda.py``).
            The setting belongs to the model and the codec (this switch sets both):
            engines sharing them share it.
        kernel_cache_dir: folder for the compiled kernels (Triton's and inductor's caches,
            ``engine.start_up``), kept across restarts so a restart does not compile again
            (their defaults live in the home and temp dirs, which a container loses); it
            sets ``TRITON_CACHE_DIR`` and ``TORCHINDUCTOR_CACHE_DIR`` for the process. None:
            the environment's (or their defaults).
        kv_pools: ((slots, capacity), ...) KV-cache pools, so memory follows real context
            length: a session starts in the smallest pool with a free slot and moves (its KV
            copied, not recomputed) to a larger one when its conversation outgrows it. The
            slots must add up to ``max_sessions`` and the largest capacity must be
            ``max_context``. None: one pool of ``max_sessions`` slots of ``max_context``.
        prefix_cache_bytes: device bytes for the prompt prefix cache: the KV of each distinct
            system block (system sentence + voice prompt) is prefilled once and copied into
            every new conversation that starts with it (least recently used prefixes evicted
            first). At the real size a position is 112 KiB in bf16, so a system block with a
            10 s voice (~170 rows) is ~19 MiB. 0: off.
    """

    max_sessions: int = 8
    max_context: int = 32768
    context_budget: int = 30000
    turn_reserve: int = 2000
    lookahead_s: float | None = 1.0
    prefill_chunk: int = 1024
    prefill_budget_rows: int | None = None
    frame_deadline_s: float | None = None
    cost_table: str | None = None
    overlap_codec: bool = False
    max_turn_frames: int = 1500
    frames_per_text_token: float = 8.0
    min_turn_frames: int = 40
    eos_min_frames: int = 0
    eos_after_text: bool = False
    repetition_window_max: int = 50
    max_text_chars: int = 20000
    max_user_frames: int = 1500
    graphed_decode: bool | None = None
    graphed_prefill: bool = True
    capture_graphs_at_start: bool = True
    compile_decode: str | None = None
    fused: bool | None = None
    kernel_cache_dir: str | None = None
    kv_pools: tuple[tuple[int, int], ...] | None = None
    prefix_cache_bytes: int = 256 * 2**20

    def __post_init__(self) -> None:
        if self.max_sessions < 1:
            raise InvalidInputError("max_sessions must be >= 1")
        if self.compile_decode is not None and self.graphed_decode is False:
            raise InvalidInputError("compile_decode needs the graphed decode step")
        if not 0 < self.context_budget <= self.max_context:
            raise InvalidInputError("need 0 < context_budget <= max_context")
        if not 0 < self.turn_reserve < self.context_budget:
            raise InvalidInputError("need 0 < turn_reserve < context_budget")
        if self.lookahead_s is not None and self.lookahead_s <= 0:
            raise InvalidInputError("lookahead_s must be > 0 or None")
        if self.prefill_chunk < 1 or self.max_turn_frames < 1 or self.min_turn_frames < 1:
            raise InvalidInputError("prefill_chunk, max_turn_frames, min_turn_frames must be >= 1")
        if self.prefill_budget_rows is not None and self.prefill_budget_rows < 1:
            raise InvalidInputError("prefill_budget_rows must be >= 1 or None")
        if self.frame_deadline_s is not None and not self.frame_deadline_s > 0:
            raise InvalidInputError("frame_deadline_s must be > 0 or None")
        if self.eos_min_frames < 0:
            raise InvalidInputError("eos_min_frames must be >= 0")
        if self.prefix_cache_bytes < 0:
            raise InvalidInputError("prefix_cache_bytes must be >= 0 (0: off)")
        if self.kv_pools is not None:
            pools = self.pools()
            if any(n < 1 or cap < 64 for n, cap in pools):
                raise InvalidInputError("kv_pools need >= 1 slot and >= 64 positions each")
            if sum(n for n, _ in pools) != self.max_sessions:
                raise InvalidInputError("kv_pools slots must add up to max_sessions")
            if pools[-1][1] != self.max_context:
                raise InvalidInputError("the largest kv_pools capacity must be max_context")

    def pools(self) -> list[tuple[int, int]]:
        """(slots, capacity) of each KV pool, smallest capacity first."""
        if self.kv_pools is None:
            return [(self.max_sessions, self.max_context)]
        return sorted(((int(n), int(c)) for n, c in self.kv_pools), key=lambda p: p[1])

    def turn_frame_cap(self, n_text_tokens: int) -> int:
        return min(
            self.max_turn_frames,
            self.min_turn_frames + int(self.frames_per_text_token * n_text_tokens),
        )

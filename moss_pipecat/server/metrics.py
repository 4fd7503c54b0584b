"""The engine server's Prometheus metrics (``prometheus_client``).

Each server has its own ``CollectorRegistry``, so several servers in one process (tests, an
embedding application) never collide, and ``/metrics`` shows only its own server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what ``render`` returns

TTFA_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)


class _Counter:
    """A counter with optional labels, readable by tests (``value``)."""

    def __init__(
        self, registry: CollectorRegistry, name: str, doc: str, labels: Sequence[str] = ()
    ) -> None:
        self._registry = registry
        self._name = name
        self._metric = Counter(name, doc, labelnames=tuple(labels), registry=registry)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        (self._metric.labels(**labels) if labels else self._metric).inc(amount)

    def value(self, **labels: str) -> float:
        got = self._registry.get_sample_value(f"{self._name}_total", labels or None)
        return got or 0.0


class _Gauge:
    """A gauge read from a callback at scrape time."""

    def __init__(
        self, registry: CollectorRegistry, name: str, doc: str, fn: Callable[[], float]
    ) -> None:
        self._fn = fn
        Gauge(name, doc, registry=registry).set_function(lambda: float(fn()))

    def value(self) -> float:
        return float(self._fn())


# The engine's own counters (``MossEngine.stats``), read at scrape time: (name, doc, label,
# {label value: stats key}); label None: one unlabelled sample. Frames and load refusals are
# the server's own counters above.
ENGINE_COUNTERS: tuple[tuple[str, str, str | None, dict[str | None, str]], ...] = (
    ("moss_engine_ticks", "Engine ticks that did work.", None, {None: "ticks"}),
    (
        "moss_engine_prefill_rows",
        "Rows prefilled into the KV cache (new turns, user turns, restores, re-prefills after "
        "a trim).",
        None,
        {None: "prefill_rows"},
    ),
    (
        "moss_engine_prefill_capped_ticks",
        "Ticks whose prefill the per-tick budget cut short.",
        None,
        {None: "prefill_capped_ticks"},
    ),
    (
        "moss_engine_prefix_cache_lookups",
        "System blocks (system sentence + voice) looked up in the prefix cache, by result.",
        "result",
        {"hit": "prefix_hits", "miss": "prefix_misses"},
    ),
    (
        "moss_engine_kv_pool_moves",
        "Conversations moved to a larger KV pool (their cache copied).",
        None,
        {None: "pool_moves"},
    ),
    (
        "moss_engine_history_turns_dropped",
        "Oldest turns dropped from conversations, by reason: budget (past the context "
        "budget), no_slot (no larger KV slot free: the pools are too small for the calls held).",
        "reason",
        {"budget": "turns_dropped_budget", "no_slot": "turns_dropped_no_slot"},
    ),
    (
        "moss_engine_replies_cut_no_slot",
        "Replies ended early because their slot was full and no larger KV slot was free.",
        None,
        {None: "replies_cut_no_slot"},
    ),
)


class EngineCollector(Collector):
    """The engine's counters and KV slots, read when scraped (the engine thread counts; a
    scrape reads a copy, no lock)."""

    def __init__(
        self,
        stats: Callable[[], dict[str, int]],
        kv_slots: Callable[[], list[tuple[int, int, int]]],
    ) -> None:
        self._stats, self._kv_slots = stats, kv_slots

    def collect(self) -> Iterator[Metric]:
        stats = dict(self._stats())
        for name, doc, label, keys in ENGINE_COUNTERS:
            family = CounterMetricFamily(name, doc, labels=[label] if label else None)
            for value, key in keys.items():
                family.add_metric([value] if value else [], stats[key])
            yield family
        slots = GaugeMetricFamily(
            "moss_engine_kv_slots",
            "KV-cache slots (one per conversation) by pool capacity (positions) and state.",
            labels=["capacity", "state"],
        )
        for capacity, n_slots, used in self._kv_slots():
            slots.add_metric([str(capacity), "used"], used)
            slots.add_metric([str(capacity), "free"], n_slots - used)
        yield slots


class ServerMetrics:
    """Every metric one engine server exports, in its own registry."""

    def __init__(
        self,
        sessions: Callable[[], float],
        attached: Callable[[], float],
        conns: Callable[[], float],
        pending: Callable[[], float] = lambda: 0,
        engine: EngineCollector | None = None,
    ) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        if engine is not None:
            r.register(engine)
        self.sessions = _Gauge(
            r, "moss_server_sessions", "Conversations held (engine sessions).", sessions
        )
        self.attached = _Gauge(
            r, "moss_server_sessions_attached", "Conversations with a live connection.", attached
        )
        self.connections = _Gauge(
            r, "moss_server_connections", "Open websocket connections.", conns
        )
        self.pending = _Gauge(
            r,
            "moss_server_connections_pending",
            "Open websockets not yet authenticated (no bearer header; waiting for hello).",
            pending,
        )
        self.frames = _Counter(r, "moss_server_frames", "Audio frames (80 ms) sent to clients.")
        self.turns = _Counter(
            r, "moss_server_turns", "Assistant turns ended, by stop reason.", ["stop"]
        )
        # Error replies, and frames the websocket layer refused with a close (1009, 1007).
        self.errors = _Counter(
            r, "moss_server_errors", "Errors (replies and refused frames), by code.", ["code"]
        )
        self.refused = _Counter(
            r,
            "moss_server_connections_refused",
            "Websocket upgrades refused, by reason (unauthorized, busy, pending_busy, origin).",
            ["reason"],
        )
        self.conversations_refused = _Counter(
            r,
            "moss_server_conversations_refused",
            "New conversations the engine refused (wire code capacity), by reason: overloaded "
            "(every call speaking at once would miss the frame deadline), full (no free slot).",
            ["reason"],
        )
        self.resume_refused = _Counter(
            r,
            "moss_server_resume_refused",
            "Hellos refused for a conversation held with another resume secret, by the resume "
            "ticket's fault: no_ticket, ticket_invalid, ticket_expired, ticket_newer (the "
            "holder made the conversation first).",
            ["reason"],
        )
        self.takeovers = _Counter(
            r,
            "moss_server_resume_takeovers",
            "Conversations given back to the client whose resume ticket proved it made them "
            "first (the holder, who made them anew after their server was lost, is closed).",
        )
        self.resumes = _Counter(
            r,
            "moss_server_history_resumes",
            "Conversations resumed by a client that keeps a journal, by the history sent after "
            "ready: delta (what changed since the journal's last delta, hello.history_at), full.",
            ["history"],
        )
        self.misrouted = _Counter(
            r,
            "moss_server_hellos_misrouted",
            "Hellos refused (bad_message) because their conversation id is not the x-session-id "
            "header their connection was routed by (Ray Serve may have sent it to a replica "
            "that does not hold the conversation).",
        )
        self.expired = _Counter(
            r, "moss_server_sessions_expired", "Conversations closed after idle expiry."
        )
        self.slow_peers = _Counter(
            r,
            "moss_server_slow_peers_dropped",
            "Connections dropped because a send to them waited past the write timeout.",
        )
        self.idle_closed = _Counter(
            r,
            "moss_server_idle_sockets_closed",
            "Idle TCP sockets (no request in flight) the server closed, by reason: evicted "
            "(the oldest, past max_idle_sockets), timeout (no whole request within the "
            "handshake timeout).",
            ["reason"],
        )
        self.ttfa = Histogram(
            "moss_server_ttfa_seconds",
            "Time to first audio frame of a turn (prefill trigger to first frame).",
            buckets=TTFA_BUCKETS,
            registry=r,
        )

    @classmethod
    def of_hub(cls, hub: Any) -> ServerMetrics:
        """The metrics of a ``ConversationHub``: its gauges read the hub and its engine."""
        return cls(
            sessions=lambda: len(hub.conversations),
            attached=lambda: sum(c.conn is not None for c in hub.conversations.values()),
            conns=lambda: len(hub.connections),
            pending=lambda: hub.budget.pending,
            engine=EngineCollector(lambda: hub.engine.stats, hub.engine.kv_slots),
        )

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition for a scrape with this ``Accept`` header: (body, content type)."""
        if not accept:
            return generate_latest(self.registry), CONTENT_TYPE
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

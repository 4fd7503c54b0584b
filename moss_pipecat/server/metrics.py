"""Prometheus metrics in the text exposition format (no client library needed).

Only what the server needs: counters and gauges with optional labels, and histograms.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence

_Labels = tuple[tuple[str, str], ...]


def _fmt_labels(labels: _Labels, extra: tuple[str, str] | None = None) -> str:
    items = list(labels) + ([extra] if extra else [])
    if not items:
        return ""
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in items)
    return "{" + body + "}"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help = help_text
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    """Monotonic counter, optionally labelled."""

    kind = "counter"

    def __init__(self, name: str, help_text: str) -> None:
        super().__init__(name, help_text)
        self._values: dict[_Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items()) or [((), 0.0)]
        return self.header() + [f"{self.name}{_fmt_labels(k)} {_num(v)}" for k, v in items]


class Gauge(_Metric):
    """A value read from a callback at scrape time (or set explicitly)."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, fn: Callable[[], float] | None = None) -> None:
        super().__init__(name, help_text)
        self._fn = fn
        self._value = 0.0

    def set(self, value: float) -> None:
        self._value = value

    def value(self) -> float:
        return float(self._fn()) if self._fn is not None else self._value

    def render(self) -> list[str]:
        return [*self.header(), f"{self.name} {_num(self.value())}"]


class Histogram(_Metric):
    """Cumulative-bucket histogram."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        super().__init__(name, help_text)
        self.buckets = sorted(buckets)
        self._counts = [0] * len(self.buckets)
        self._sum = 0.0
        self._count = 0

    def observe(self, value: float) -> None:
        with self._lock:
            self._sum += value
            self._count += 1
            for i, b in enumerate(self.buckets):
                if value <= b:
                    self._counts[i] += 1

    @property
    def count(self) -> int:
        return self._count

    def render(self) -> list[str]:
        with self._lock:
            lines = self.header()
            for b, c in zip(self.buckets, self._counts, strict=True):
                lines.append(f'{self.name}_bucket{{le="{_num(b)}"}} {c}')
            lines.append(f'{self.name}_bucket{{le="+Inf"}} {self._count}')
            lines.append(f"{self.name}_sum {_num(self._sum)}")
            lines.append(f"{self.name}_count {self._count}")
        return lines


class ServerMetrics:
    """Every metric one engine server exports."""

    def __init__(
        self,
        sessions: Callable[[], float],
        attached: Callable[[], float],
        conns: Callable[[], float],
    ) -> None:
        self.sessions = Gauge(
            "moss_server_sessions", "Conversations held (engine sessions).", sessions
        )
        self.attached = Gauge(
            "moss_server_sessions_attached", "Conversations with a live connection.", attached
        )
        self.connections = Gauge("moss_server_connections", "Open websocket connections.", conns)
        self.frames = Counter("moss_server_frames_total", "Audio frames (80 ms) sent to clients.")
        self.turns = Counter("moss_server_turns_total", "Assistant turns ended, by stop reason.")
        self.errors = Counter("moss_server_errors_total", "Error replies sent, by code.")
        self.expired = Counter(
            "moss_server_sessions_expired_total", "Conversations closed after idle expiry."
        )
        self.slow_peers = Counter(
            "moss_server_slow_peers_dropped_total",
            "Connections dropped because a send to them waited past the write timeout.",
        )
        self.ttfa = Histogram(
            "moss_server_ttfa_seconds",
            "Time to first audio frame of a turn (prefill trigger to first frame).",
            [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0],
        )
        self._all: list[_Metric] = [
            self.sessions,
            self.attached,
            self.connections,
            self.frames,
            self.turns,
            self.errors,
            self.expired,
            self.slow_peers,
            self.ttfa,
        ]

    def render(self) -> str:
        lines: list[str] = []
        for m in self._all:
            lines += m.render()
        return "\n".join(lines) + "\n"


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

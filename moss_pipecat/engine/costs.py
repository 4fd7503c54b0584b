"""What each kind of device call costs, learned online from the calls the engine makes.

One small estimator, pure host arithmetic: ``observe(kind, size, seconds)`` after a call
(size: the batch of a decode step, first frame or codec call; the rows of a prefill call),
``predict(kind, size)`` before one. Sizes fall into power-of-two buckets; each bucket keeps a
moving average of its sizes and costs, and a prediction interpolates between buckets. The
scheduler uses it to size each tick's prefill and to refuse a conversation it could not serve
(``engine.pacing``).

A measured table (``prime``, from ``EngineConfig.cost_table``) gives the costs before any call
and their shape outside the sizes the engine has run: there a prediction is the table's,
scaled by what the engine's own calls cost at the nearest size it has run against the table. (The
table times each call alone; under traffic a call also pays for the codec stream beside it
and the host's work, and sizes not yet run must not be priced as if it did not.)
"""

from __future__ import annotations

import bisect


class CostModel:
    """Seconds per call kind and size bucket, as exponential moving averages.

    Args:
        alpha: weight of a new observation (the rest is the bucket's history), so a cost that
            drifts (a warmer cache, a longer context) is followed within a few calls.
    """

    def __init__(self, alpha: float = 0.25) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        # kind -> bucket -> [mean size, mean seconds, variance of seconds]
        self._cells: dict[str, dict[int, list[float]]] = {}
        self._prior: dict[str, list[tuple[float, float]]] = {}  # kind -> (size, seconds)

    def observe(self, kind: str, size: int, seconds: float) -> None:
        """Records one call of ``kind`` over ``size`` items that took ``seconds``."""
        if size < 1 or seconds < 0:
            return  # nothing was run, or a clock that went back: no information
        cells = self._cells.setdefault(kind, {})
        cell = cells.get(size.bit_length())
        if cell is None:
            cells[size.bit_length()] = [float(size), float(seconds), 0.0]
            return
        a = self.alpha
        cell[0] += a * (size - cell[0])
        d = seconds - cell[1]
        cell[1] += a * d
        cell[2] = (1 - a) * (cell[2] + a * d * d)  # exponentially weighted variance

    def prime(self, kind: str, points: list[tuple[float, float]]) -> None:
        """A measured table's (size, seconds) points for ``kind``: the prediction before any
        call of it, and its shape outside the sizes the engine has run (see the module)."""
        self._prior[kind] = _monotone(sorted((float(s), float(c)) for s, c in points))

    def knows(self, kind: str) -> bool:
        return bool(self._cells.get(kind)) or bool(self._prior.get(kind))

    def predict(self, kind: str, size: int, spread: float = 0.0) -> float | None:
        """Seconds a call of ``kind`` over ``size`` items is expected to take (0 for size 0);
        None when no call of that kind was seen nor primed. ``spread``: that many standard
        deviations above the mean (a bound most calls stay under, e.g. 2: ~98 % of normal
        costs).

        Between buckets the cost is interpolated linearly; past the largest bucket it grows
        along the last two buckets' slope (with one bucket: in proportion to size); below the
        smallest it is that bucket's cost. A larger call is never predicted cheaper than a
        smaller one (the averages of noisy buckets may say so; the device does not). With a
        primed table: that table before any call, and its shape outside the buckets run.
        """
        if size <= 0:
            return 0.0
        points, prior = self._points(kind, spread), self._prior.get(kind)
        if prior and not points:
            return _interpolate(prior, size)
        if not points:
            return None
        if prior and not points[0][0] <= size <= points[-1][0]:
            # Outside the sizes it has run: the table's shape, scaled to its nearest bucket.
            s1, c1 = points[-1] if size > points[-1][0] else points[0]
            base = _interpolate(prior, s1)
            shaped = _interpolate(prior, size) * (c1 / base if base > 0 else 1.0)
            return max(c1, shaped) if size > s1 else min(c1, shaped)
        return _interpolate(points, size)

    def largest_within(self, kind: str, seconds: float, limit: int) -> int | None:
        """The largest size in [0, ``limit``] whose predicted cost fits ``seconds`` (None if
        the kind was never seen)."""
        if not self.knows(kind):
            return None
        lo, hi = 0, limit
        while lo < hi:  # predict is non-decreasing in size
            mid = (lo + hi + 1) // 2
            if self.predict(kind, mid) <= seconds:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def table(self) -> dict[str, list[tuple[float, float]]]:
        """Each kind's (mean size, seconds) per bucket, smallest first, or its primed points
        before any call (for logs and tests)."""
        kinds = sorted(set(self._cells) | set(self._prior))
        return {kind: self._points(kind) or list(self._prior[kind]) for kind in kinds}

    def _points(self, kind: str, spread: float = 0.0) -> list[tuple[float, float]]:
        cells = self._cells.get(kind, {})
        points, top = [], 0.0
        for bucket in sorted(cells):
            size, cost, var = cells[bucket]
            top = max(top, cost + spread * var**0.5)
            points.append((size, top))
        return points


def _monotone(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Costs never falling with size (a larger call is never cheaper)."""
    out, top = [], 0.0
    for size, cost in points:
        top = max(top, cost)
        out.append((size, top))
    return out


def _interpolate(points: list[tuple[float, float]], size: float) -> float:
    """Piecewise linear through ``points`` (sorted); below the first its cost; past the last
    along the last two points' slope (one point: in proportion to size)."""
    sizes = [p[0] for p in points]
    i = bisect.bisect_left(sizes, size)
    if i < len(points) and sizes[i] == size:
        return points[i][1]
    if i == 0:
        return points[0][1]
    if i == len(points):
        (s0, c0), (s1, c1) = (points[-2] if len(points) > 1 else (0.0, 0.0)), points[-1]
        return c1 + (c1 - c0) / (s1 - s0) * (size - s1)
    (s0, c0), (s1, c1) = points[i - 1], points[i]
    return c0 + (c1 - c0) * (size - s0) / (s1 - s0)

"""What each kind of device call costs, learned online from the calls the engine makes.

One small estimator, pure host arithmetic: ``observe(kind, size, seconds)`` after a call
(size: the batch of a decode step, first frame or codec call; the rows of a prefill call),
``predict(kind, size)`` before one. Sizes fall into power-of-two buckets; each bucket keeps a
moving average of its sizes and costs, and a prediction interpolates between buckets. The
scheduler uses it to size each tick's prefill and to refuse a conversation it could not serve
(``engine.pacing``).
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
        # kind -> bucket -> [mean size, mean seconds]
        self._cells: dict[str, dict[int, list[float]]] = {}

    def observe(self, kind: str, size: int, seconds: float) -> None:
        """Records one call of ``kind`` over ``size`` items that took ``seconds``."""
        if size < 1 or seconds < 0:
            return  # nothing was run, or a clock that went back: no information
        cells = self._cells.setdefault(kind, {})
        cell = cells.get(size.bit_length())
        if cell is None:
            cells[size.bit_length()] = [float(size), float(seconds)]
            return
        a = self.alpha
        cell[0] += a * (size - cell[0])
        cell[1] += a * (seconds - cell[1])

    def knows(self, kind: str) -> bool:
        return bool(self._cells.get(kind))

    def predict(self, kind: str, size: int) -> float | None:
        """Seconds a call of ``kind`` over ``size`` items is expected to take (0 for size 0);
        None when no call of that kind was seen.

        Between buckets the cost is interpolated linearly; past the largest bucket it grows
        along the last two buckets' slope (with one bucket: in proportion to size); below the
        smallest it is that bucket's cost. A larger call is never predicted cheaper than a
        smaller one (the averages of noisy buckets may say so; the device does not).
        """
        if size <= 0:
            return 0.0
        points = self._points(kind)
        if not points:
            return None
        sizes = [p[0] for p in points]
        i = bisect.bisect_left(sizes, size)
        if i < len(points) and sizes[i] == size:
            return points[i][1]
        if i == 0:
            return points[0][1]
        if i == len(points):
            # One bucket: the line through the origin (cost in proportion to size).
            (s0, c0), (s1, c1) = (points[-2] if len(points) > 1 else (0.0, 0.0)), points[-1]
            return c1 + (c1 - c0) / (s1 - s0) * (size - s1)
        (s0, c0), (s1, c1) = points[i - 1], points[i]
        return c0 + (c1 - c0) * (size - s0) / (s1 - s0)

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
        """Each kind's (mean size, seconds) per bucket, smallest first (for logs and tests)."""
        return {kind: self._points(kind) for kind in sorted(self._cells)}

    def _points(self, kind: str) -> list[tuple[float, float]]:
        cells = self._cells.get(kind, {})
        points, top = [], 0.0
        for bucket in sorted(cells):
            size, cost = cells[bucket]
            top = max(top, cost)
            points.append((size, top))
        return points

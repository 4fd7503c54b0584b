"""The prefill budget, its priority order, the cost model and admission, as pure functions."""

from __future__ import annotations

import pytest

from moss_pipecat.engine.costs import CostModel
from moss_pipecat.engine.pacing import (
    PLANNED_SHARE,
    PROGRESS_ROWS,
    REFEED_YIELD_S,
    TICK,
    TICK_SPREAD,
    PrefillWant,
    admits,
    plan_prefill,
    tick_budget,
)


def _costs() -> CostModel:
    """decode/first_frame 10 ms + 0.1 ms per row, codec 5 ms + 0.05, prefill 10 ms + 0.1/row."""
    m = CostModel()
    for n in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024):
        m.observe("decode", n, 0.010 + 1e-4 * n)
        m.observe("first_frame", n, 0.010 + 1e-4 * n)
        m.observe("codec", n, 0.005 + 5e-5 * n)
        m.observe("prefill", n, 0.010 + 1e-4 * n)
    return m


# ---- the cost model ----------------------------------------------------------------------------
def test_cost_model_interpolates_between_buckets_and_extrapolates_past_them():
    m = CostModel()
    assert m.predict("decode", 4) is None and not m.knows("decode")
    m.observe("decode", 1, 0.010)
    assert m.predict("decode", 0) == 0.0
    assert m.predict("decode", 3) == pytest.approx(0.030)  # one bucket: in proportion to size
    m.observe("decode", 8, 0.017)
    assert m.predict("decode", 4) == pytest.approx(0.010 + 0.007 * 3 / 7)
    assert m.predict("decode", 16) == pytest.approx(0.017 + 0.001 * 8)  # the last slope on
    assert m.predict("decode", 1) == pytest.approx(0.010)


def test_cost_model_follows_a_bucket_by_moving_average_and_never_predicts_bigger_cheaper():
    m = CostModel(alpha=0.5)
    m.observe("prefill", 16, 0.020)
    m.observe("prefill", 16, 0.040)
    assert m.predict("prefill", 16) == pytest.approx(0.030)
    m.observe("prefill", 64, 0.010)  # a noisy, cheaper larger bucket
    assert m.predict("prefill", 64) == pytest.approx(0.030)
    assert m.largest_within("prefill", 0.029, 1000) == 0  # below the first bucket: its cost
    assert m.largest_within("prefill", 0.030, 1000) == 1000  # flat: the cheaper bucket is noise
    assert m.largest_within("decode", 1.0, 10) is None
    m.observe("prefill", 16, -1.0)  # a clock that went back teaches nothing
    m.observe("prefill", 0, 0.5)  # neither does an empty call
    assert m.predict("prefill", 16) == pytest.approx(0.030)


def test_a_primed_table_shapes_the_costs_the_engine_has_not_run_yet():
    m = CostModel()
    m.prime("decode", [(1, 0.010), (64, 0.020), (256, 0.050)])
    assert m.knows("decode") and m.predict("decode", 128) == pytest.approx(0.030)
    m.observe("decode", 64, 0.030)  # under traffic a step costs 1.5x what the table says
    assert m.predict("decode", 64) == pytest.approx(0.030)  # run: its own cost
    assert m.predict("decode", 256) == pytest.approx(0.075)  # not run: the table, x 1.5
    assert m.predict("decode", 512) == pytest.approx(1.5 * (0.050 + 0.030 / 192 * 256))
    assert m.predict("decode", 1) == pytest.approx(0.015)  # below it too: the table, x 1.5
    assert m.table()["decode"] == [(64.0, 0.030)]
    fresh = CostModel()
    fresh.prime("codec", [(1, 0.005), (8, 0.004)])  # never cheaper with size
    assert fresh.table() == {"codec": [(1.0, 0.005), (8.0, 0.005)]}


def test_cost_model_bounds_a_noisy_cost_by_its_spread():
    m = CostModel(alpha=0.5)
    for t in (0.020, 0.040, 0.020, 0.040):
        m.observe("tick", 100, t)
    mean, bound = m.predict("tick", 100), m.predict("tick", 100, spread=2.0)
    assert mean == pytest.approx(0.0325)
    # Exponentially weighted variance (alpha 0.5) after those four: 9.375e-5 (std ~10 ms).
    assert bound == pytest.approx(mean + 2.0 * 9.375e-5**0.5, rel=1e-6)
    steady = CostModel()
    for _ in range(4):
        steady.observe("tick", 100, 0.030)
    assert steady.predict("tick", 100, spread=2.0) == pytest.approx(0.030)  # no spread


# ---- the plan ------------------------------------------------------------------------------------
def test_the_budget_bounds_a_ticks_rows_and_each_session_gets_at_most_a_chunk():
    wants = [PrefillWant(i, rows, since=float(i)) for i, rows in enumerate([40, 5, 300, 7])]
    plan = plan_prefill(wants, budget=64, chunk=32)
    assert plan == {0: 32, 1: 5, 2: 27}  # oldest first; the last is cut short by the budget
    assert plan_prefill(wants, budget=None, chunk=32) == {0: 32, 1: 5, 2: 32, 3: 7}


def test_first_audio_goes_before_re_prefills_for_at_most_the_yield():
    refeed = PrefillWant("refeed", 500, since=10.0, refeed=True)
    newer = PrefillWant("newer", 20, since=10.0 + REFEED_YIELD_S / 2)
    much_newer = PrefillWant("much_newer", 20, since=10.0 + 2 * REFEED_YIELD_S)
    plan = plan_prefill([much_newer, refeed, newer], budget=20, chunk=1000)
    assert plan == {"newer": 20}  # the re-prefill waits for the newer first audio
    plan = plan_prefill([much_newer, refeed, newer], budget=600, chunk=1000)
    assert list(plan) == ["newer", "refeed", "much_newer"]  # ... but not behind later ones
    assert plan == {"newer": 20, "refeed": 500, "much_newer": 20}


def test_no_session_starves_under_a_steady_stream_of_new_turns():
    """Tick after tick, two new 30-row turns arrive and the budget is 48 rows: every turn,
    the long re-prefill among them, finishes, and within a bounded number of ticks."""
    chunk, budget, tick_s = 16, 48, 0.08
    left: dict[str, int] = {"refeed": 400}
    since = {"refeed": 0.0}
    finished: dict[str, int] = {}
    for tick in range(400):
        t = tick * tick_s
        if tick < 300:
            for j in range(2):
                key = f"t{tick}.{j}"
                left[key], since[key] = 30, t
        wants = [PrefillWant(k, n, since[k], refeed=k == "refeed") for k, n in left.items()]
        plan = plan_prefill(wants, budget, chunk)
        assert sum(plan.values()) <= budget
        assert all(n <= chunk for n in plan.values())
        for k, n in plan.items():
            left[k] -= n
            if left[k] == 0:
                del left[k]
                finished[k] = tick
    assert "refeed" in finished
    assert not left  # everybody got through once arrivals stopped
    waits = [finished[k] - round(since[k] / tick_s) for k in finished]
    assert max(waits) < 300  # nobody waited for the stream to end


# ---- the adaptive budget and admission -----------------------------------------------------------
def test_the_budget_keeps_the_projected_tick_within_the_deadline():
    # A deadline whose planned share (``PLANNED_SHARE``) is 80 ms: ticks are planned to that.
    m, deadline = _costs(), 0.080 / PLANNED_SHARE
    wants = [PrefillWant(i, 20, float(i)) for i in range(10)]
    budget = tick_budget(m, deadline, None, decoding=100, wants=wants, chunk=64, codec=True)
    # Sessions of 20 rows are taken while decode(100+k) + first_frame(k) + codec(100+k) +
    # codec(k) + prefill(20k) fits 80 ms: 10 + 0.1(100+k) + 10 + 0.1k + 5 + 0.05(100+k) + 5 +
    # 0.05k + 10 + 2k = 55 + 2.3k ms <= 80 -> k = 10 is 78 ms: all ten fit; the budget is then
    # what prefill alone may add beside the 48 ms of the rest: 10 + 0.1r <= 32 -> 220 rows.
    assert budget == 220
    budget = tick_budget(m, deadline, None, decoding=150, wants=wants, chunk=64, codec=True)
    # 62.5 + 2.3k <= 80 -> k = 7 (78.6 ms); then rows of the 8th while prefill alone fits.
    fixed7 = (10 + 0.1 * 157) + (10 + 0.1 * 7) + (5 + 0.05 * 157) + (5 + 0.05 * 7)
    assert budget == int((80 - fixed7 - 10) / 0.1 + 1e-9)
    assert 140 <= budget < 160
    assert tick_budget(m, deadline, 64, decoding=150, wants=wants, chunk=64, codec=True) == 64
    # Nothing decoding: nobody's deadline is at stake, only the static cap applies.
    assert tick_budget(m, deadline, 64, decoding=0, wants=wants, chunk=64, codec=True) == 64
    assert tick_budget(m, deadline, None, decoding=0, wants=wants, chunk=64, codec=True) is None
    assert tick_budget(m, None, 32, decoding=9, wants=wants, chunk=64, codec=True) == 32
    # The decode step alone fills the deadline: prefill still moves, by the progress floor.
    assert tick_budget(m, deadline, None, 900, wants, 64, True) == PROGRESS_ROWS
    # Costs not learned yet: the static cap (the first calls teach them).
    assert tick_budget(CostModel(), deadline, 48, 10, wants, 64, True) == 48


def test_admission_refuses_the_conversation_that_would_break_the_deadline():
    m, deadline = _costs(), 0.080 / PLANNED_SHARE  # planned to 80 ms
    # decode(n) + codec(n) + prefill(16) + first_frame(1) + codec(1)
    # = 10 + 0.1n + 5 + 0.05n + 11.6 + 10.1 + 5.05 = 41.75 + 0.15n ms <= 80 -> n <= 255
    assert admits(m, deadline, 255, codec=True)
    assert not admits(m, deadline, 256, codec=True)
    assert admits(m, None, 10_000, codec=True)
    assert admits(CostModel(), deadline, 10_000, codec=True)  # nothing known yet


def test_ticks_are_planned_to_a_share_of_the_deadline():
    m, wants = _costs(), [PrefillWant(i, 20, float(i)) for i in range(10)]
    assert PLANNED_SHARE < 1.0
    planned = tick_budget(m, 0.080, None, decoding=100, wants=wants, chunk=64, codec=True)
    whole = tick_budget(m, 0.080 / PLANNED_SHARE, None, 100, wants, 64, True)
    assert planned < whole
    assert admits(m, 0.080 / PLANNED_SHARE, 255, codec=True)
    assert not admits(m, 0.080, 255, codec=True)  # 80 ms of calls in a 72 ms plan


def test_admission_also_holds_the_measured_ticks_to_the_deadline():
    # The device projection says 200 fit (41.75 + 0.15 * 200 = 71.75 ms), but ticks measured
    # at ~200 conversations run 76 ms +- 8: on average within 80 ms, with the spread over.
    m, deadline = _costs(), 0.080 / PLANNED_SHARE  # planned to 80 ms
    assert admits(m, deadline, 200, codec=True)
    for t in (0.068, 0.084) * 8:
        m.observe(TICK, 200, t)
    assert m.predict(TICK, 200) < 0.080 < m.predict(TICK, 200, TICK_SPREAD)
    assert not admits(m, deadline, 200, codec=True)
    quiet = _costs()
    for _ in range(8):
        quiet.observe(TICK, 120, 0.050)
    assert admits(quiet, deadline, 121, codec=True)  # measured and projected both fit
    assert not admits(quiet, deadline, 256, codec=True)  # the projection still refuses

"""Cost tables for admission tests: linear, exact at every size, so the conversation
admission stops at is known in advance (and no call runs to teach the engine otherwise)."""

from __future__ import annotations

from pathlib import Path

from moss_pipecat.engine.device_costs import DeviceCosts

DEADLINE_S = 0.08


def write_cost_table(path: Path, decode_s: float) -> str:
    """A table where a decode step (and a first frame) costs ``decode_s`` per session, a codec
    call 1 ms per frame and a prefill 0.1 ms per row. With ``DEADLINE_S`` and decode_s=0.02
    admission takes 2 conversations (a tick of 3 speaking plus a turn start: 85.6 ms > 80);
    with decode_s=0.1 it takes none."""

    def line(per: float) -> list[tuple[float, float]]:
        return [(1, per), (4096, 4096 * per)]

    table = DeviceCosts(
        {
            "decode": line(decode_s),
            "first_frame": line(decode_s),
            "codec": line(0.001),
            "prefill": line(0.0001),
        },
        source="linear test table",
    )
    table.save(path)
    return str(path)

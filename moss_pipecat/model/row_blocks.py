"""How many rows an exact (eager) call runs: a whole number of row blocks.

On a CPU the matmul library (MKL here) computes rows that fill its micro-kernel's row block
with one kernel and the rows of a partial block with others, which sum in another order: a
row's last bits then depend on how many rows came with it (measured: a call of 1-3, 5-7 or
9-11 rows differs from the same rows in a larger call; whole blocks of 4 never do). Calls
whose row count is a multiple of ``ROW_BLOCK`` (8: covers 4- and 8-row kernels) give every
row the same numbers whichever rows share the call. Attention needs the other half: every
eager call attends over the whole KV slot (``Qwen3Backbone``), never a length of the call.
"""

from __future__ import annotations

ROW_BLOCK = 8


def padded_rows(n: int) -> int:
    """The smallest multiple of ``ROW_BLOCK`` that holds ``n`` rows (``n`` >= 1)."""
    return -(-n // ROW_BLOCK) * ROW_BLOCK

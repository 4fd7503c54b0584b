"""Connection budgets: authenticated sockets and not-yet-authenticated ones are counted apart.

A socket whose upgrade request carried a valid bearer token (or any socket, when no token is
configured) takes a slot of ``max_connections``. One without the header, while a token is
configured, takes a slot of the small ``max_pending_connections`` budget and must authenticate
in its ``hello`` within ``pending_hello_timeout_s``; then it moves to ``max_connections`` (if
there is room). So sockets that never say hello cannot lock authenticated clients out.

Admission is synchronous (no await between the check and the reservation): concurrent
upgrades cannot overshoot a budget.
"""

from __future__ import annotations


class Admission:
    """One socket's slot; ``release`` it when the socket ends (idempotent)."""

    def __init__(self, budget: ConnectionBudget, authenticated: bool) -> None:
        self._budget = budget
        self.authenticated = authenticated
        self._held = True

    def promote(self) -> bool:
        """Moves a pending socket that authenticated in-band to the main budget.

        Returns False (and keeps the pending slot) when the main budget is full.
        """
        if self.authenticated:
            return True
        b = self._budget
        if not self._held or b.active >= b.max_connections:
            return False
        b.pending -= 1
        b.active += 1
        self.authenticated = True
        return True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        if self.authenticated:
            self._budget.active -= 1
        else:
            self._budget.pending -= 1


class ConnectionBudget:
    """Counts open sockets against ``max_connections`` / ``max_pending_connections``."""

    def __init__(self, max_connections: int, max_pending: int) -> None:
        self.max_connections = max_connections
        self.max_pending = max_pending
        self.active = 0
        self.pending = 0

    def admit(self, authenticated: bool) -> Admission | None:
        """A slot for a new socket, or None when its budget is full."""
        if authenticated:
            if self.active >= self.max_connections:
                return None
            self.active += 1
        else:
            if self.pending >= self.max_pending:
                return None
            self.pending += 1
        return Admission(self, authenticated)

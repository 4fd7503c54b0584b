"""Resume tickets: which client created a conversation first, told by servers that never met it.

A conversation's resume secret lives in its server's memory only. When the server is lost
(kill -9, a lost Ray replica), whoever says ``hello`` first with the id makes the conversation
anew on the next server, with a secret of their own; the id may be guessable (a telephony call
SID). So in ``ready`` (and in every ``history`` delta, fresh) the server gives the client a
ticket::

    1.CREATED_MS.ISSUED_MS.MAC   MAC = HMAC-SHA256(resume key, id, SHA-256(secret), both times)

base64url, unpadded. The servers of a deployment share the resume key (``ServerConfig``); a
server without one draws its own, so its tickets mean nothing elsewhere (as servers behaved
before tickets). A ticket is good when it verifies for the hello's id and secret
(``hmac.compare_digest``) and was issued within ``resume_ticket_max_age_s``:

- the id is free: the conversation is made with the ticket's creation time (its priority);
- another secret holds the id and the ticket's creation time is earlier than the holder's:
  the holder made it after the ticket's owner did (a squatter) and loses it;
- otherwise the hello is refused (``forbidden``) and nothing changes.

The clock is the wall clock (``time.time``): replicas' clocks agree to NTP's milliseconds,
far below the time a squatter needs to notice a lost server.

What no ticket can tell (servers share no state): a client that made the id's conversation
first and ended it keeps a good ticket for up to ``resume_ticket_max_age_s``, and one that
claims a guessable id before its call begins holds it; both look like an owner whose server
was lost. Unguessable ids (the server picks one when the hello names none) avoid both.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

_DOMAIN = b"moss-pipecat resume ticket v1\0"


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Claim:
    """What a good ticket says: when the conversation was first made."""

    created_ms: int


class ResumeTickets:
    """Issues and checks the resume tickets of one server.

    Args:
        key: the deployment's resume key (``ServerConfig.resume_key``); None: one drawn for
            this process.
        max_age_s: how long after it was issued a ticket is good.
    """

    def __init__(self, key: str | None, max_age_s: float) -> None:
        self._key = key.encode() if key is not None else secrets.token_bytes(32)
        self.max_age_ms = max_age_s * 1000

    def issue(self, cid: str, secret: str, created_ms: int, issued_ms: int | None = None) -> str:
        """A ticket for ``cid`` held with ``secret`` since ``created_ms`` (issued now)."""
        issued = _now_ms() if issued_ms is None else issued_ms
        return f"1.{created_ms}.{issued}.{self._mac(cid, secret, created_ms, issued)}"

    def _mac(self, cid: str, secret: str, created_ms: int, issued_ms: int) -> str:
        msg = b"\0".join(
            (
                _DOMAIN,
                cid.encode(),
                hashlib.sha256(secret.encode()).digest(),
                str(created_ms).encode(),
                str(issued_ms).encode(),
            )
        )
        mac = hmac.new(self._key, msg, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def check(self, ticket: str | None, cid: str, secret: str | None) -> Claim | str:
        """The ticket's ``Claim``, or why it is no good: ``no_ticket``, ``ticket_invalid``
        (forged, another id or secret, another deployment's key) or ``ticket_expired``."""
        if ticket is None or secret is None:
            return "no_ticket"
        try:  # the edge checked the pattern (``protocol.RESUME_TICKET_PATTERN``)
            _, created, issued, mac = ticket.split(".")
            created_ms, issued_ms = int(created), int(issued)
        except ValueError:
            return "ticket_invalid"
        want = self._mac(cid, secret, created_ms, issued_ms)
        if not hmac.compare_digest(mac.encode(), want.encode()):
            return "ticket_invalid"
        if _now_ms() - issued_ms > self.max_age_ms:
            return "ticket_expired"
        return Claim(created_ms)

    @staticmethod
    def now_ms() -> int:
        """A new conversation's creation time."""
        return _now_ms()


REFUSALS = {
    "no_ticket": "conversation {cid!r} exists: resuming it needs its resume_secret",
    "ticket_invalid": "conversation {cid!r} exists: resuming it needs its resume_secret (and "
    "the resume ticket is not valid for this id, secret and deployment)",
    "ticket_expired": "conversation {cid!r} exists: resuming it needs its resume_secret (and "
    "the resume ticket has expired)",
    "ticket_newer": "conversation {cid!r} was created earlier by another client: resuming it "
    "needs its resume_secret",
}
TAKEN_OVER = (
    "conversation {cid!r} was created earlier by another client, who proved it (resume "
    "ticket): this conversation, made with the id after it, is closed"
)

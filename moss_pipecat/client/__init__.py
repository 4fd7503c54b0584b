"""Client of the engine server: ``RemoteEngine`` -> ``RemoteSession`` -> ``RemoteTurn``.

The async API mirrors ``moss_pipecat.engine.session.Session`` / ``TurnStream``: the same
method names, arguments, return types (``AudioChunk``, ``TurnSummary``) and exception types
(``InvalidInputError``, ``TurnStateError``, ``CapacityError``, ...). What a network adds:

* every call may raise ``ServerUnavailableError`` (server unreachable, gone mid-request, or no
  reply within ``request_timeout``); iterating a turn raises it when the connection drops;
* a dropped connection is re-opened on the next call, with exponential backoff for up to
  ``reconnect_timeout`` seconds (a session made with ``create_session(connect=False)`` makes
  its first connection so too, on its first call); the server keeps the conversation (its
  acoustic history) for its idle expiry, so ``RemoteSession.resumed`` is normally True after a
  reconnect; if the server lost it (restart, expiry), the session starts afresh with its voice
  and sampling re-applied, and ``resumed`` is False (``history_lost`` counts such events);
* a server that drains for a deploy sends ``goaway``: the turn in flight ends on that
  connection, and the next call reconnects, to the next of several URLs
  (``RemoteEngine([url_a, url_b])``) or to the same one (a load balancer, Ray Serve);
  ``RemoteSession.moves`` counts such moves;
* user audio can be sent as audio (``add_user_audio_turn``) and encoded by the server's codec;
* resuming a conversation takes its resume secret (``RemoteSession.resume_secret``): a session
  draws one for the conversation it creates and proposes it in its first hello (so a retry
  after a lost ``ready`` still holds it), keeps the one in force for its reconnects, and
  another process resumes with ``create_session(conversation_id=..., resume_secret=...)``.
* a server that lost the conversation gives it back from whoever made it anew meanwhile to
  the session whose resume ticket (``RemoteSession.resume_ticket``, from ``ready`` and each
  ``history`` delta, sent in every hello) proves it made the conversation first;

Messages are built and read through the protocol's models (``protocol.ClientMessage`` and
``protocol.ServerMessage``).

Where things live: ``remote_engine`` (``RemoteEngine``: TLS, token, handshake, backoff),
``remote_session`` (``RemoteSession``: the calls, reconnect and resume), ``remote_turn``
(``RemoteTurn``), ``link`` (``Link``: one websocket, its writer and reader tasks), ``inbox``
(``TurnInbox``: what the link received for a turn, read by the turn), ``wire`` (messages and
binary payloads). Each uses the next one's public methods only, in that order; the client
needs the protocol (``moss_pipecat.protocol``) and no torch. This module re-exports the public
names.
"""

from moss_pipecat.client.remote_engine import RemoteEngine
from moss_pipecat.client.remote_session import RemoteSession
from moss_pipecat.client.remote_turn import RemoteTurn
from moss_pipecat.client.wire import codes_bytes, pcm16_from_audio
from moss_pipecat.protocol.errors import ForbiddenError, ServerUnavailableError

__all__ = [
    "ForbiddenError",
    "RemoteEngine",
    "RemoteSession",
    "RemoteTurn",
    "ServerUnavailableError",
    "codes_bytes",
    "pcm16_from_audio",
]

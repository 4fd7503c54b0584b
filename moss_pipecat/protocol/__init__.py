"""Wire protocol of the engine server, version 1.

One websocket per conversation, at ``ws://HOST:PORT/v1/ws``. Control messages are JSON text
frames ``{"type": ..., ...}``; audio and uploads are binary frames. Nothing is ever pickled.

Connection
    The client may send ``Authorization: Bearer TOKEN`` (and, behind Ray Serve, the routing
    header ``x-session-id: CONVERSATION_ID``) with the upgrade request. Its first message must
    be ``hello`` (within ``hello_timeout_s``); the server answers ``ready`` or ``error`` and
    closes. A hello whose ``conversation_id`` is not the ``x-session-id`` header sent with it
    (or names none) is refused (``bad_message``): the header chose the server. A
    conversation outlives its connection: the server keeps its engine session (and with it
    the acoustic history in the KV cache) for ``idle_expiry_s`` after the last connection
    left, so a client that reconnects with the same ``conversation_id`` gets its history back
    (``ready.resumed`` says whether it did). A second connection for a conversation replaces
    the first (which is closed with code 4409).

    A conversation id is not a credential: ``ready`` gives the creating client the
    conversation's ``resume_secret`` (random, per conversation), and a ``hello`` for a
    conversation that exists must carry it (compared in constant time). Without it, or with a
    wrong one, the hello is refused (``error`` code ``forbidden``, close 4403) and the live
    connection and the conversation are left as they were. A client may propose the secret
    of a conversation it creates (``resume_secret`` in that hello; 22 to 256 URL-safe
    characters, i.e. at least 128 bits drawn at random): then a retry of a handshake whose
    ``ready`` was lost still holds the conversation's secret. Without one the server draws it.

    A server that lost a conversation (killed, a lost replica) knows nothing of its secret:
    whoever says hello first with the id makes it anew. So ``ready`` (and each ``history``
    delta) also gives the client a ``resume_ticket``: the servers' proof, signed with a key
    the servers of a deployment share, of when the client made the conversation with its
    secret; the client sends it in every hello. A hello whose ticket is good (its id and
    secret, issued within ``resume_ticket_max_age_s``) for a conversation held with another
    secret and made after the ticket's conversation wins it: the holder gets a fatal
    ``forbidden`` error (close 4403) and its conversation is closed; the hello's conversation
    is made anew (``resumed`` false) with the ticket's creation time, for the client to
    ``restore``. Any other ticket changes nothing (``forbidden`` as without one);
    ``server.tickets`` has the rules.

Client -> server (JSON)
    ``hello``       v, conversation_id?, resume_secret?, resume_ticket?, token?, sampling?,
                    seed?, history? (sampling/seed apply to a new conversation only;
                    resume_secret is required when conversation_id names a live
                    conversation; resume_ticket: the last one the client was given;
                    history: the client keeps a journal, send it ``history`` deltas;
                    history_at? {server, rev}, feature ``hello.history_at``: the journal
                    holds server ``server``'s history as of its delta ``rev``, so a resume
                    on that server, at that rev, gets a delta after ``ready``, not the
                    full history)
    ``turn.start``  req, max_frames?, min_frames?, eos_after_text?
                                                     -> ``turn.started`` {req, turn_id}
    ``turn.text``   turn_id, text                    (no reply; a failure ends the turn)
    ``turn.ids``    turn_id, ids, text?              (token ids instead of text)
    ``turn.end``    turn_id                          (text ended)
    ``interrupt``   req, heard_frames, heard_units?, turn_id?
                                                     -> ``result`` {req, summary | null}
                    (turn_id, feature ``interrupt.turn_id``: cut only that turn, if it is
                    the open or just finished one; the same cut again answers as the first)
    ``user_turn``   req, text | text_ids, format ("pcm16" | "codes"), sample_rate (pcm16),
                    bytes                            + one binary frame -> ``result``
    ``voice``       req, format ("pcm16" | "codes" | "none"), sample_rate, bytes
                    + one binary frame unless "none" -> ``result``
    ``settings``    req, sampling?, seed?, limits? {context_budget?, lookahead_s?,
                    unlimited_lookahead?}            -> ``result``
    ``reset``       req                              -> ``result``
    ``snapshot``    req                              -> ``result`` {snapshot}
    ``close``       req                              -> ``result``; ends the conversation
    ``restore``     req, turns, voice_frames?, seed?, noise?, turn_noise?, bytes + one binary frame
                    -> ``result``: a conversation with no turns yet gets the history the
                    client kept of it (its journal of ``history`` deltas; see
                    ``protocol.history`` for the frame), checked like any input

    A message that carries an engine command (``turn.start``, ``turn.text``, ``turn.ids``,
    ``turn.end``, ``interrupt``, ``settings.limits``) takes the command's fields by name and is
    checked by the command itself (``moss_pipecat.speech.commands``): a value the command
    refuses is a ``bad_message``; one only the engine can judge (the vocabulary, the context,
    codec frames) is ``invalid_input``. Sampling values are checked against their ranges
    (``speech.sampling.in_range``) the same way.

    Binary uploads follow their JSON header immediately: ``pcm16`` is mono little-endian int16
    at ``sample_rate``; ``codes`` is little-endian uint16 frames, row-major ``[frames, 16]``.
    A text message where the data was due refuses the upload (``bad_message``) and is then
    served as the next message.

Server -> client
    ``ready``        v, conversation_id, resumed, resume_secret, resume_ticket, server_id,
                     limits {...}, audio {...}, features [...] (the optional client fields
                     this server takes: ``FEATURES``; a client sends only those)
    ``turn.started`` req, turn_id
    audio (binary)   ``AUDIO_HEADER`` = magic ``b"MSA1"``, turn_id u32, index u32, n u16,
                     then n codes u16, then the frame's PCM (int16 LE, empty without a codec);
                     all little-endian. One frame (80 ms) per message, sent as generated.
    ``turn.words``   turn_id, index, words [[word, seconds], ...], spaced [i, ...]: the word
                     times the engine placed with frame ``index``; sent just before that
                     frame. A word is a unit (a word, or a CJK character); ``spaced`` (optional,
                     default none) lists the units that carry their own spacing: two spaced
                     units join with nothing between them, any others with one space
                     (``engine.units.join_units``); text_from, text_ids (optional, sent
                     when the turn got text since its previous frame; lead and text_pad with
                     its first ids): the turn's text ids from its ``text_from``-th, so a
                     client's journal holds the turn in flight (its rows: ``lead`` ids, then
                     one id per frame row, ``text_pad`` past the text, an EOS row) and keeps
                     it, cut at what was heard, when the server is lost
    ``turn.text_ids`` turn_id, text_from, text_ids: the ids the server took for the turn
                     from a ``turn.text``, ``turn.ids`` or ``turn.end``, as it took them (its
                     ``text_from``-th first), to a client that keeps a journal (``hello``
                     history): its turn in flight then holds every id its server held
    ``turn.progress`` turn_id, rows_done, rows_total: a keepalive while a turn's prefill
                     runs long (a restored long call): sent when the turn has sent no frame
                     for ``progress_interval_s`` and its prefill fed more rows since; a
                     stuck engine sends none. A client treats it as a sign of life (an
                     older one ignores it, as any type it does not know)
    ``turn.end``     turn_id, summary {turn_id, stop, audio_frames, heard_frames, text_ids,
                     text, spoken_text, words, spaced, ttfa_s, error}
    ``history``      rev, full, drop, keep, turns [{role, ids, lead, codes}], voice_changed,
                     voice, seed, noise, turn_noise, resume_ticket: what changed in the
                     conversation's history, sent to a client whose hello asked for
                     ``history`` after every change (before the ``result`` or ``turn.end``
                     of what changed it) and after a ``ready`` that resumed: full, or what
                     changed since the hello's ``history_at`` where that is one of this
                     server's deltas it still keeps (those taken after it sent again
                     first, their revs in order); the
                     client keeps it to ``restore`` the conversation on a server that lost
                     it (resume_ticket: a fresh one)
    ``result``       req, plus what the request returns (``summary``, ``snapshot``)
    ``error``        code, message, req? (the request it answers), turn_id?, fatal (the
                     server closes the connection after a fatal error), subcode? (a finer
                     code: ``overloaded`` beside ``capacity`` for a conversation refused
                     because every call speaking at once would miss its frame deadline,
                     where ``capacity`` alone means no free slot; see ``error_codes``)
    ``goaway``       deadline_s, reason: the server is draining (a deploy): the client
                     finishes the turn in flight here, then reconnects (another server, or
                     the same URL behind a load balancer) for what comes next; a turn still
                     open ``deadline_s`` after it is cut at the frames the client received
                     (its ``turn.end`` has stop ``interrupted``)

Draining
    On SIGTERM (``moss-pipecat serve``) or a Ray Serve replica shutdown the server stops
    admitting (upgrades get 503 ``draining``, ``/readyz`` 503), sends every connection a
    goaway, lets turns in flight end (cutting them at the frames sent when the drain
    deadline, ``drain_timeout_s``, passes), closes what is left with 1001, and exits.

Both directions are pydantic models (``ClientMessage``, ``ServerMessage``: one discriminated
union on ``type`` each); a message is sent as built (``to_json``): the fields given when it was
made, null included, and ``type``. Error codes and exception types map both ways through one
table, ``ERROR_CODES``.

Close codes: 4400 protocol violation before ``ready``, 4401 unauthorized, 4403 forbidden
(a resume without the conversation's secret), 4408 no hello in time, 4409 replaced by a
newer connection for the conversation, 1001 server going away, 1009 frame over the hard size
cap.

The parts live apart (this module gathers them, so ``protocol.X`` names all of them):
``client_messages`` (the client's messages and their checks), ``server_messages`` (the
server's), ``error_codes`` (the code table), ``wire_audio`` (binary audio frames) and
``wire_json`` (what the JSON messages of both directions share) and ``history`` (the
``restore`` frame and the codes of ``history`` turns).
"""

from __future__ import annotations

from moss_pipecat.protocol.client_messages import (
    CLIENT_MESSAGES,
    CONVERSATION_ID_PATTERN,
    CUT_NAMES_TURN,
    FEATURES,
    HELLO_HISTORY_AT,
    PROTOCOL_VERSION,
    RESTORE_TURN_NOISE,
    RESUME_SECRET_PATTERN,
    RESUME_TICKET_PATTERN,
    ClientMessage,
    Close,
    Finite,
    Hello,
    HistoryAt,
    Interrupt,
    Limits,
    MessageError,
    ReqId,
    Reset,
    Restore,
    Sampling,
    Seed,
    Settings,
    Snapshot,
    TurnEnd,
    TurnId,
    TurnIds,
    TurnStart,
    TurnText,
    UserTurn,
    Voice,
    parse_client_message,
)
from moss_pipecat.protocol.client_messages import _Msg as _Msg  # the client's requests' base
from moss_pipecat.protocol.error_codes import (
    ERROR_CODES,
    ERROR_SUBCODES,
    error_code,
    error_fields,
    error_from_wire,
    error_subcode,
)
from moss_pipecat.protocol.errors import ProtocolError, ServerUnavailableError
from moss_pipecat.protocol.history import codes_b64, codes_from_b64, pack_restore, unpack_restore
from moss_pipecat.protocol.server_messages import (
    SERVER_MESSAGES,
    AudioInfo,
    ErrorReply,
    GoAway,
    History,
    HistoryTurn,
    Ready,
    ReadyLimits,
    Result,
    ServerMessage,
    TurnEnded,
    TurnProgress,
    TurnStarted,
    TurnTextIds,
    TurnWords,
    WireSnapshot,
    WireSummary,
    Words,
    parse_server_message,
)
from moss_pipecat.protocol.server_messages import _Out as _Out
from moss_pipecat.protocol.wire_audio import AUDIO_HEADER, AUDIO_MAGIC, pack_audio, unpack_audio
from moss_pipecat.protocol.wire_json import WireModel, dumps
from moss_pipecat.speech.sampling import MAX_REPETITION_WINDOW, MAX_TOP_K

WS_PATH = "/v1/ws"
SESSION_HEADER = "x-session-id"  # Ray Serve's session-affinity header (ConsistentHashRouter)

# ---- close codes ---------------------------------------------------------------------------
CLOSE_PROTOCOL = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_HELLO_TIMEOUT = 4408
CLOSE_SUPERSEDED = 4409
CLOSE_GOING_AWAY = 1001

__all__ = [
    "AUDIO_HEADER",
    "AUDIO_MAGIC",
    "CLIENT_MESSAGES",
    "CLOSE_FORBIDDEN",
    "CLOSE_GOING_AWAY",
    "CLOSE_HELLO_TIMEOUT",
    "CLOSE_PROTOCOL",
    "CLOSE_SUPERSEDED",
    "CLOSE_UNAUTHORIZED",
    "CONVERSATION_ID_PATTERN",
    "CUT_NAMES_TURN",
    "ERROR_CODES",
    "ERROR_SUBCODES",
    "FEATURES",
    "HELLO_HISTORY_AT",
    "MAX_REPETITION_WINDOW",
    "MAX_TOP_K",
    "PROTOCOL_VERSION",
    "RESTORE_TURN_NOISE",
    "RESUME_SECRET_PATTERN",
    "RESUME_TICKET_PATTERN",
    "SERVER_MESSAGES",
    "SESSION_HEADER",
    "WS_PATH",
    "AudioInfo",
    "ClientMessage",
    "Close",
    "ErrorReply",
    "Finite",
    "GoAway",
    "Hello",
    "History",
    "HistoryAt",
    "HistoryTurn",
    "Interrupt",
    "Limits",
    "MessageError",
    "ProtocolError",
    "Ready",
    "ReadyLimits",
    "ReqId",
    "Reset",
    "Restore",
    "Result",
    "Sampling",
    "Seed",
    "ServerMessage",
    "ServerUnavailableError",
    "Settings",
    "Snapshot",
    "TurnEnd",
    "TurnEnded",
    "TurnId",
    "TurnIds",
    "TurnProgress",
    "TurnStart",
    "TurnStarted",
    "TurnText",
    "TurnTextIds",
    "TurnWords",
    "UserTurn",
    "Voice",
    "WireModel",
    "WireSnapshot",
    "WireSummary",
    "Words",
    "codes_b64",
    "codes_from_b64",
    "dumps",
    "error_code",
    "error_fields",
    "error_from_wire",
    "error_subcode",
    "pack_audio",
    "pack_restore",
    "parse_client_message",
    "parse_server_message",
    "unpack_audio",
    "unpack_restore",
]

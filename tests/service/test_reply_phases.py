"""A reply's life in the service: its phases, the moves between them, and what each phase
allows (``moss_pipecat/service/phases.py``)."""

from __future__ import annotations

import pytest

from moss_pipecat.service.phases import TRANSITIONS, ReplyPhase, ReplyPhaseError
from moss_pipecat.service.reply import Reply

P = ReplyPhase
SPOKEN = [P.OPENING, P.FEEDING, P.TEXT_ENDED, P.READ, P.CLOSED, P.DONE]
FAILED = [P.OPENING, P.FEEDING, P.FAILED, P.CLOSED, P.DONE]


def _walk(path: list[ReplyPhase]) -> Reply:
    reply = Reply("c1", None)
    for phase in path:
        reply.move(phase)
    return reply


def test_a_reply_spoken_to_its_end_goes_through_every_phase_in_order():
    reply = Reply("c1", None)
    seen = [reply.phase]
    for phase in SPOKEN:
        reply.move(phase)
        seen.append(reply.phase)
    assert seen == [P.WAITING, *SPOKEN]


@pytest.mark.parametrize("old", list(ReplyPhase))
@pytest.mark.parametrize("new", list(ReplyPhase))
def test_every_move_outside_the_table_is_refused_and_changes_nothing(old, new):
    reply = Reply("c1", None)
    reply.phase = old  # the starting point under test
    if new in TRANSITIONS[old]:
        reply.move(new)
        assert reply.phase is new
    else:
        with pytest.raises(ReplyPhaseError, match=f"'c1': {old.value} -> {new.value}"):
            reply.move(new)
        assert reply.phase is old


def test_the_table_has_one_end_and_every_phase_leads_to_it():
    assert [p for p, nxt in TRANSITIONS.items() if not nxt] == [P.STOPPED]
    assert all(P.STOPPED in TRANSITIONS[p] for p in ReplyPhase if p is not P.STOPPED)
    reached, frontier = {P.WAITING}, [P.WAITING]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()] - reached:
            reached.add(nxt)
            frontier.append(nxt)
    assert reached == set(ReplyPhase)


def test_the_error_names_the_reply_and_the_moves_allowed():
    reply = _walk([P.OPENING, P.FEEDING, P.TEXT_ENDED])
    with pytest.raises(ReplyPhaseError) as e:
        reply.move(P.FEEDING)  # text cannot be fed again once it ended
    assert str(e.value) == (
        "reply 'c1': text_ended -> feeding is not allowed (from text_ended: failed, read, stopped)"
    )
    stopped = _walk([P.STOPPED])
    with pytest.raises(ReplyPhaseError, match=r"\(from stopped: none\)"):
        stopped.move(P.OPENING)  # a dropped reply never opens its turn


def test_text_is_taken_until_it_ends_or_pipecat_ends_it():
    assert [_walk(SPOKEN[:n]).takes_text for n in range(len(SPOKEN) + 1)] == [
        True,  # waiting: held until the turn opens
        True,  # opening
        True,  # feeding
        False,  # text ended
        False,
        False,
        False,
    ]
    flushed = _walk([P.OPENING])
    flushed.flushed = True  # pipecat ended the text while the turn was opening
    assert not flushed.takes_text
    assert not _walk([P.OPENING, P.FAILED]).takes_text
    assert not _walk([P.STOPPED]).takes_text


def test_a_reply_closes_once_read_and_flushed_or_failed_with_no_word_held():
    read = _walk(SPOKEN[:4])
    assert read.phase is P.READ and not read.ready_to_close  # pipecat still has its text
    read.flushed = True
    assert read.ready_to_close
    read.held_words.append(("word", 0.1))  # waits for playback to start
    assert not read.ready_to_close
    assert _walk(FAILED[:3]).ready_to_close  # a failed reply ends whatever pipecat holds
    assert not _walk(SPOKEN[:3]).ready_to_close
    done = _walk(SPOKEN)
    assert done.closed and not done.ready_to_close  # closed once


def test_started_and_closed_follow_the_phase():
    assert [_walk(SPOKEN[:n]).started for n in range(len(SPOKEN) + 1)] == [False] + [True] * 6
    assert [_walk(SPOKEN[:n]).closed for n in range(len(SPOKEN) + 1)] == [False] * 5 + [True] * 2
    assert not _walk([P.STOPPED]).started

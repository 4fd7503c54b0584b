"""Word times: strictly increasing, inside the audio, never beyond the text fed."""

from __future__ import annotations

import random
from itertools import pairwise

from moss_pipecat.engine.config import FRAME_SECONDS
from moss_pipecat.engine.word_times import WordTimer


def _check(words, frames):
    times = [t for _, t in words]
    assert all(a < b for a, b in pairwise(times))
    assert not times or (times[0] >= 0 and times[-1] < frames * FRAME_SECONDS)


def test_two_hundred_words_over_five_seconds_stay_inside_the_audio():
    # The reported defect: a finish() after few placed words ran quadratically past the audio.
    text = " ".join(f"w{i}" for i in range(200))
    timer = WordTimer(chars_per_second=14.0)
    timer.add_text(text)
    placed = []
    for frame in range(1, 66):  # 5.2 s of audio
        placed += timer.on_audio(frame, fed_chars=len(text))
    placed += timer.finish(65, fed_chars=len(text))
    assert [w for w, _ in placed] == text.split()
    _check(placed, 65)


def test_words_never_fed_are_never_placed():
    text = "one two three four five six seven eight"
    timer = WordTimer(chars_per_second=1000.0)  # fast: only the fed bound holds words back
    timer.add_text(text)
    fed = len("one two three")  # the model read three words, then stopped (early EOS)
    placed = timer.on_audio(5, fed_chars=fed) + timer.finish(5, fed_chars=fed)
    assert [w for w, _ in placed] == ["one", "two", "three"]
    _check(placed, 5)
    # A word fed only in part was not said either.
    timer = WordTimer(chars_per_second=14.0)
    timer.add_text(text)
    assert [w for w, _ in timer.finish(20, fed_chars=len("one tw"))] == ["one"]


def test_the_last_word_waits_while_the_text_may_still_grow():
    timer = WordTimer(chars_per_second=1000.0)
    timer.add_text("hello wor")
    assert [w for w, _ in timer.on_audio(10, fed_chars=9)] == ["hello"]
    timer.add_text("ld again")
    assert [w for w, _ in timer.on_audio(11, fed_chars=17)] == ["world"]
    assert [w for w, _ in timer.finish(12, fed_chars=17)] == ["again"]


def test_heard_is_a_prefix_cut_by_frames():
    text = "a bb ccc dddd eeeee ffffff"
    timer = WordTimer(chars_per_second=10.0)
    timer.add_text(text)
    placed = []
    for f in range(1, 40):
        placed += timer.on_audio(f, fed_chars=len(text))
    placed += timer.finish(40, fed_chars=len(text))
    for frames in range(0, 41):
        heard = timer.heard(frames)
        assert heard == placed[: len(heard)]
        assert all(t < frames * FRAME_SECONDS for _, t in heard)
    assert timer.heard_text(40) == text


def test_a_count_past_the_units_placed_takes_the_next_ones_fed():
    """``heard_text(frames, units)`` with more units than placed: the listener took text with
    the word before it (pipecat gives a sentence's trailing emoji to its last word) that the
    audio had not reached; the next units fed, never one not fed whole."""
    text = "Have a nice day 😊 :) ok"
    timer = WordTimer(chars_per_second=12.0)  # 1.12 s of audio reaches "day", not the emoji
    timer.add_text(text)
    placed = []
    for f in range(1, 15):
        placed += timer.on_audio(f, fed_chars=len("Have a nice day 😊 :"))
    assert [w for w, _ in placed] == ["Have", "a", "nice", "day"]
    assert timer.heard_text(14, 4) == "Have a nice day"
    assert timer.heard_text(14, 5) == "Have a nice day 😊"
    assert timer.heard_text(14, 7) == "Have a nice day 😊"  # ":)" was fed in part
    assert timer.heard_text(14, 2) == "Have a"


def test_random_streams_keep_the_invariants():
    rng = random.Random(0)
    for _ in range(200):
        words = ["".join(rng.choices("abcxyz,.", k=rng.randint(1, 9))) for _ in range(60)]
        text = " ".join(words)
        timer = WordTimer(chars_per_second=rng.uniform(5, 40))
        pos, fed, placed, frames = 0, 0, [], 0
        while pos < len(text) or frames < 3:
            step = rng.randint(0, 12)
            timer.add_text(text[pos : pos + step])
            pos = min(len(text), pos + step)
            fed = min(pos, fed + rng.randint(0, 10))
            frames += rng.randint(0, 2)
            placed += timer.on_audio(frames, fed)
        total = frames + rng.randint(0, 30)
        placed += timer.finish(total, fed)
        _check(placed, max(total, 1))
        said = " ".join(w for w, _ in placed)
        assert text[:fed].startswith(said) or not said

"""The conversation row builder reproduces the reference session's rows exactly."""

from __future__ import annotations

import pytest
import torch

from moss_pipecat.engine import RowLayout
from moss_pipecat.engine.text import layout_from_golden
from moss_pipecat.errors import InvalidInputError


@pytest.fixture(scope="module")
def layout(realtime_meta) -> RowLayout:
    return layout_from_golden(realtime_meta)


def _system(layout, g, meta):
    ref = g.get("session.ref_codes") if meta["conversation"]["ref_frames"] else None
    return layout.system_block(
        meta["system_prompt_text_ids"], ref, meta["voice_clone_instruction_ids"]
    )


def test_system_block(layout, realtime_golden, realtime_meta):
    assert torch.equal(
        _system(layout, realtime_golden, realtime_meta), realtime_golden["session.system_rows"]
    )


def test_user_turn_rows(layout, realtime_golden):
    g = realtime_golden
    rows = layout.turn_rows(
        layout.header("user", first=False), g["session.user_text"].tolist(), g["session.user_codes"]
    )
    assert torch.equal(rows, g["session.user_rows"])


def test_turn_prompts_and_closing_rows(layout, realtime_golden, realtime_meta):
    g, turns = realtime_golden, realtime_meta["turns"]
    system = _system(layout, g, realtime_meta)
    text1, text2 = g["session.text1"].tolist(), g["session.text2"].tolist()
    prompt1 = torch.cat((system, layout.prefill_rows(layout.header("assistant", True), text1)))
    assert torch.equal(prompt1, g["turn1.prompt"])

    # Turn 1's closing rows follow from how it stopped and which text it had used.
    def closing(k: int, text: list[int]) -> torch.Tensor:
        t = turns[f"turn{k}"]
        frames = g[f"turn{k}.frames"]
        used = layout.lead(len(text)) + len(g[f"turn{k}.fed"])
        last = frames[-1] if t["stop"] == "max_frames" else None
        return layout.closing_rows(iter(text[used:]), last)

    for k, text in ((1, text1), (2, text2)):
        assert closing(k, text).tolist() == turns[f"turn{k}"]["closing_rows"]

    prompt2 = torch.cat(
        (
            closing(1, text1),
            g["session.user_rows"],
            layout.prefill_rows(layout.header("assistant", False), text2),
        )
    )
    assert torch.equal(prompt2, g["turn2.prompt"])


def test_finished_assistant_turn_rebuilt_equals_what_was_fed(
    layout, realtime_golden, realtime_meta
):
    """turn_rows(assistant) == prefill + steps + closing rows, for turn 1 however it stopped
    (EOS: its EOS frame is not audio; frame cap: its last frame was never fed)."""
    g, t = realtime_golden, realtime_meta["turns"]["turn1"]
    text1 = g["session.text1"].tolist()
    n_audio = t["n_frames"] - (1 if t["stop"] == "eos" else 0)
    frames = g["turn1.frames"][:n_audio]
    lead = layout.lead(len(text1))
    # Text past the row that closes the turn is never fed: a turn that stopped early keeps
    # only the text that fits beside its audio.
    rebuilt = layout.turn_rows(
        layout.header("assistant", True), text1[: lead + n_audio + 1], frames
    )
    n_sys = g["session.system_rows"].shape[0]
    fed = g["session.rows"][n_sys : g["turn1.prompt"].shape[0] + len(g["turn1.fed"])]
    last = g["turn1.frames"][-1] if t["stop"] == "max_frames" else None
    closing = layout.closing_rows(iter(text1[lead + len(g["turn1.fed"]) :]), last)
    assert closing.tolist() == t["closing_rows"]
    assert torch.equal(rebuilt, torch.cat((fed, closing)))


def test_short_text_layout(layout):
    """Short text: audio right after the text; BOS on the last text row."""
    text, frames = [1, 2, 3], torch.arange(2 * layout.rvq).reshape(2, layout.rvq)
    header = layout.header("assistant", first=False)
    rows = layout.turn_rows(header, text, frames)
    P = header.shape[0]
    assert rows.shape[0] == P + 3 + 2 + 1
    assert rows[P : P + 3, 0].tolist() == text
    assert rows[P + 2, 1] == layout.audio_bos
    assert torch.equal(rows[P + 3 : P + 5, 1:], frames)
    assert rows[P + 3 :, 0].tolist() == [layout.text_pad] * 3
    assert rows[-1, 1] == layout.audio_eos and (rows[-1, 2:] == layout.audio_pad).all()


def test_bad_rows_input(layout):
    header = layout.header("user", first=True)
    with pytest.raises(InvalidInputError, match="do not fit"):
        layout.turn_rows(header, list(range(40)), torch.zeros(3, layout.rvq, dtype=torch.long))
    with pytest.raises(InvalidInputError, match="frames"):
        layout.turn_rows(header, [1], torch.zeros(3, layout.rvq + 1, dtype=torch.long))
    with pytest.raises(InvalidInputError, match="outside"):
        layout.turn_rows(header, [1], torch.full((3, layout.rvq), layout.audio_eos + 1))
    with pytest.raises(InvalidInputError, match="integer"):
        layout.turn_rows(header, [1], torch.zeros(3, layout.rvq))
    with pytest.raises(InvalidInputError, match="unknown role"):
        layout.header("narrator", first=True)

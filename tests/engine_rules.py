"""EOS rules the tests give a tiny engine whose replies they read: a random model may end a
reply on EOS at any frame, frame 0 included (pipecat then says the TTS context completed with
no audio), so these replies never end before their whole text was read, nor before 4 frames
(a short text fits in the prefill)."""

from __future__ import annotations

SPEAKS: dict[str, object] = dict(eos_after_text=True, eos_min_frames=4)

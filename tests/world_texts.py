"""Replies in the scripts and odd text users really send (the engine's units tests and the
service tests, local and remote, share them)."""

from __future__ import annotations

import unicodedata

VI = "Tiếng Việt có nhiều dấu: người, được, những, trường học."
REPLIES = {
    "ko": "안녕하세요 여러분, 오늘 날씨가 정말 좋네요. 공원에 산책하러 갈까요?",
    "th": "สวัสดีครับวันนี้อากาศดีมากเราไปเดินเล่นที่สวนสาธารณะกันเถอะแล้วค่อยกินข้าว",
    "th_spaced": "สวัสดีครับ. วันนี้อากาศดีมาก! เราไปเดินเล่นที่สวนกันเถอะ",
    "ar": "مرحبا بكم، كيف حالكم اليوم؟ الطقس جميل جداً، هيا نذهب إلى الحديقة.",
    "he": "שלום לכולם, מה שלומכם היום? מזג האוויר יפה מאוד, בואו נלך לפארק.",
    "hi": "नमस्ते दोस्तों, आज मौसम बहुत अच्छा है। चलो पार्क में टहलने चलते हैं।",
    "vi_nfc": unicodedata.normalize("NFC", VI),
    "vi_nfd": unicodedata.normalize("NFD", VI),
    "ru": "Привет всем, как дела сегодня? Погода отличная, пойдём гулять в парк.",
    "emoji": "Great job 👍🏽 family 👨‍👩‍👧‍👦 flags 🇯🇵🇫🇷 love ❤️ and 🧑🏿‍💻 coding!",
    "emoji_cjk": "太好了！🎉我们一家👨‍👩‍👧‍👦去公园❤️玩吧！",
    "fullwidth": "价格是１２３元，ＡＢＣ公司（北京）！？好。",
    "mixed": "我用iPhone 15拍照，然后发到Instagram上。",
    "code": "Run `pip install moss-pipecat==0.3.1`, visit https://example.com/a?x=1&y=2 — 3.14%.",
    "punct": "?!... — !!! ???",
    "cjk_punct": "……！？。、",
    "spaces": "100\u00a0km and\u3000then\tthe end\n\nnext para.",
    "long_thai": "สวัสดีครับ" * 50,
    "long_cjk": ("今天天气很好我们去公园散步吧" * 36)[:500],
    "long_url": "https://example.com/" + "abcdefghij" * 48,
}
# Streamed as UTF-16 code units: emoji reach the service as two lone surrogates.
SPLIT_SURROGATES = ("emoji", "emoji_cjk")


def utf16_tokens(text: str) -> list[str]:
    """An LLM client decoding JSON escapes per chunk: one or two UTF-16 code units a piece."""
    units = text.encode("utf-16-le", "surrogatepass")
    pieces, i = [], 0
    while i < len(units):
        n = 2 * (1 + len(pieces) % 2)
        pieces.append(units[i : i + n].decode("utf-16-le", "surrogatepass"))
        i += n
    return pieces

"""The audio frame every layer counts in (the codec's, the heard clock's, the wire's)."""

FRAME_SECONDS = 0.08  # one audio frame = 1920 samples at 24 kHz

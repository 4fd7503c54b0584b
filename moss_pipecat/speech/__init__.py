"""What every layer says about speech, in pure Python (no torch): the audio frame
(``frames``), a turn's output (``events``: ``AudioChunk``, ``TurnSummary``), the units its words
are spoken, timed and joined in (``units``), a session's sampling settings (``sampling``), the
commands a conversation takes with their checks (``commands``, built on the value checks of
``fields``) and the default checkpoints (``models``). The protocol, the client and the pipecat
services' remote path build on these alone; the engine re-exports them.
"""

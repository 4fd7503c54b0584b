"""moss-pipecat: MOSS-TTS-Realtime as a streaming, multi-turn pipecat TTS service."""

__version__ = "0.1.0"

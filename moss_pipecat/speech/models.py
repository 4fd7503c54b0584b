"""The default checkpoints' Hugging Face ids: the service names its model in its settings
without loading it (``moss_pipecat.engine.factory`` loads them)."""

DEFAULT_MODEL = "OpenMOSS-Team/MOSS-TTS-Realtime"
DEFAULT_CODEC = "OpenMOSS-Team/MOSS-Audio-Tokenizer"

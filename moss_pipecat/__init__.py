"""moss-pipecat: MOSS-TTS-Realtime as a streaming, multi-turn pipecat TTS service."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("moss-pipecat")  # pyproject.toml holds the version, nowhere else
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

"""pipecat integration: ``MossTTSService`` on a local (optionally shared) engine."""

from moss_pipecat.service.base import MossTTSServiceBase, MossTTSSettings
from moss_pipecat.service.tts import MossTTSService

__all__ = ["MossTTSService", "MossTTSServiceBase", "MossTTSSettings"]

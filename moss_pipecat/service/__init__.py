"""pipecat integration: ``MossTTSService`` on a local (optionally shared) engine."""

from moss_pipecat.service.tts import MossTTSService, MossTTSSettings

__all__ = ["MossTTSService", "MossTTSSettings"]

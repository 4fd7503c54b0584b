"""pipecat integration: ``MossTTSService`` (local engine) and ``MossRemoteTTSService``
(engine server; import it from ``moss_pipecat.service.remote``)."""

from moss_pipecat.service.base import MossTTSServiceBase, MossTTSSettings
from moss_pipecat.service.tts import MossTTSService

__all__ = ["MossTTSService", "MossTTSServiceBase", "MossTTSSettings"]

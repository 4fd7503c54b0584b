"""pipecat integration: ``MossTTSService`` (local engine) and ``MossRemoteTTSService``
(engine server; import it from ``moss_pipecat.service.remote``).

``MossTTSService`` is loaded on first use: it needs torch and the engine, which the remote
service (the light install: ``pip install moss-pipecat``) does without.
"""

from typing import TYPE_CHECKING, Any

from moss_pipecat.service.base import MossTTSServiceBase, MossTTSSettings

if TYPE_CHECKING:
    from moss_pipecat.service.tts import MossTTSService

__all__ = ["MossTTSService", "MossTTSServiceBase", "MossTTSSettings"]


def __getattr__(name: str) -> Any:
    # PEP 562: importing the package (as ``service.remote`` does) must not import torch.
    if name == "MossTTSService":
        from moss_pipecat.service.tts import MossTTSService

        return MossTTSService
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

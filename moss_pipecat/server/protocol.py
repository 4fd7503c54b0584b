"""Deprecated alias of ``moss_pipecat.protocol`` (the wire protocol is shared by the server and
the client, so it moved out of the server). Importing this module gives that package itself."""

import sys

from moss_pipecat import protocol

# The same module object, so ``P.Hello is moss_pipecat.protocol.Hello`` and isinstance holds.
sys.modules[__name__] = protocol

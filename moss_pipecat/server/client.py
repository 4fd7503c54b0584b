"""Deprecated alias of ``moss_pipecat.client`` (the client moved out of the server so that it
installs without the server's dependencies). Importing this module gives that package."""

import sys
import warnings

from moss_pipecat import client

warnings.warn(
    "moss_pipecat.server.client is deprecated; import moss_pipecat.client",
    DeprecationWarning,
    stacklevel=2,
)
# The same module object, so classes stay identical whichever path imported them.
sys.modules[__name__] = client

"""ChatKit routes for tokensvc: hosted sessions, threads, SSE streams, upstream relay.

Depends only on tokensvc's public names; tokensvc finds it through the
``tokensvc.extensions`` entry point and never imports it.
"""

from chatkit.extension import ChatkitExtension, ChatkitState
from tokensvc import Config

__all__ = ["ChatkitExtension", "ChatkitState", "extension"]


def extension(config: Config) -> ChatkitExtension:
    """Entry point: the extension for a configuration."""
    return ChatkitExtension(config)

"""The error every unreadable, corrupt or untrusted artifact raises (one line naming file and part)."""

from __future__ import annotations


class ArtifactError(ValueError):
    """A file that is not a readable nncompress artifact, or one that asks for untrusted code."""

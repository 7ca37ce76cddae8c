"""Artifact format (save/load) and atomic file writes."""

from nncompress.io.artifact import ArtifactError, load, read_manifest, save

__all__ = ["ArtifactError", "load", "read_manifest", "save"]

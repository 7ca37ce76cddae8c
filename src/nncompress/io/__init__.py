"""Artifact format (save/load), what a load may import (trust), and atomic file writes."""

from nncompress.io.artifact import ArtifactError, load, read_manifest, save
from nncompress.io.trust import trust_modules, trusted_modules, untrust_modules

__all__ = ["ArtifactError", "load", "read_manifest", "save", "trust_modules", "trusted_modules", "untrust_modules"]

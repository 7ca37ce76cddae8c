"""Artifact format (save/load), what a load may import (trust), atomic file writes, and Hugging Face
``save_pretrained`` files of a compressed transformers model."""

from nncompress.io.artifact import ArtifactError, load, read_manifest, save
from nncompress.io.hf_pretrained import save_pretrained
from nncompress.io.trust import trust_modules, trusted_modules, untrust_modules

__all__ = [
    "ArtifactError",
    "load",
    "read_manifest",
    "save",
    "save_pretrained",
    "trust_modules",
    "trusted_modules",
    "untrust_modules",
]

"""The low layer every family may import: layer discovery, layer selection, setting checks, settings blocks.

Nothing here imports a family (prune, quantize, distill, lowrank, train), io, measure, report, search
or tasks, so any of them can build on it without an import cycle (``tests/test_architecture.py``).

- ``base.modules``: find weight layers, replace a module by name, pick the edge layers.
- ``base.selection``: ``exclude`` / ``layers`` patterns, one meaning for every step.
- ``base.checks``: one-line ValueErrors for bad settings (counts, flags, bits, choices).
- ``base.data``: the first batches of a split, for calibration.
- ``base.settings``: the settings blocks steps are composed of.
"""

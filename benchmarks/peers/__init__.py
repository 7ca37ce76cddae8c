"""Side-by-side benchmark of nncompress against peer tools (``python benchmarks/peers/run.py``)."""

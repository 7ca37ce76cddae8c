"""Deep Compression end to end on a small MLP: prune -> k-means -> Huffman-coded artifact.

The sizes asserted follow from the maths: at 8% density a kept weight costs about H(0.08)/0.08
= 5 bits of position plus under 4 bits of code, against 32 bits dense.
"""

from __future__ import annotations

import json
import math
import re
import zipfile

import torch
from conftest import init_model, make_task

import nncompress as nc
from nncompress.core.step import builtin_steps

STEPS = builtin_steps()


def _part_bytes(path) -> dict[str, int]:
    with zipfile.ZipFile(path) as zf:
        data = zf.read("tensors.safetensors")
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    return {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}


def test_pruned_kmeans_mlp_is_over_25x_smaller_and_exact(tmp_path, one_thread):
    task = make_task(n_train=128)
    recipe = [
        STEPS["magnitude-prune"](sparsity=0.92, keep_classifier=False),
        STEPS["kmeans-quantize"](bits_linear=4, epochs=0, centroid_dtype="int8", bias_dtype="int8"),
    ]
    result = nc.compress(init_model("mlp"), recipe, task, measure_config=nc.MeasureConfig(latency=False))
    path = nc.save(result.model, tmp_path / "m.ncz")
    dense = result.report.baseline.dense_fp32_bytes
    assert dense / path.stat().st_size > 25  # 4-class LeNet-300-100: 265k weights, 21k kept

    # the k-means step's log prices each layer's codes at exactly the bytes the artifact stores
    notes = result.report.steps[1].notes
    parts = _part_bytes(path)
    for name in ("fc1", "fc2", "fc3"):
        line = next(n for n in notes if n.startswith(f"{name}: codebook"))
        stored_bits = int(re.search(r"(\d+) bits Huffman-coded", line)[1])
        assert parts[f"{name}.packed::data"] == stored_bits // 8

    # fc1: within 3% (plus the code tables) of a Bernoulli mask's entropy H(p)/p per kept weight
    # plus log2(15) bits for its code (15 nonzero centroids)
    weight = result.model.fc1.decode_weight()
    kept = int(weight.count_nonzero())
    p = kept / weight.numel()
    position_bits = -(p * math.log2(p) + (1 - p) * math.log2(1 - p)) / p
    assert parts["fc1.packed::data"] * 8 < 1.03 * kept * (position_bits + math.log2(15)) + 8 * 64

    x = task.single_example()
    with torch.inference_mode():
        torch.testing.assert_close(nc.load(path)(x), result.model(x), rtol=0, atol=0)

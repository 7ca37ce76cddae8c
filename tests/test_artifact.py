"""Artifact save/load: exact round trips, sparse storage that shrinks, clear errors on damage."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
import zlib

import pytest
import torch
from conftest import SMALL_MODELS, init_model
from torch import nn

import nncompress as nc
from nncompress.io import encodings
from nncompress.io.artifact import read_manifest


@pytest.mark.parametrize("name", list(SMALL_MODELS))
def test_round_trip_gives_identical_outputs(name, tmp_path):
    model = init_model(name)
    if name == "resnet":  # non-trivial BatchNorm statistics must travel too
        model.train()
        with torch.no_grad():
            model(torch.randn(16, 1, 28, 28))
        model.eval()
    x = torch.randn(4, 1, 28, 28)
    path = nc.save(model, tmp_path / "m.ncz")
    loaded = nc.load(path)
    assert type(loaded) is type(model)
    assert not loaded.training
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    for (n1, t1), (n2, t2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(t1, t2)


def test_requires_grad_and_tied_weights_survive(tmp_path):
    emb = nn.Embedding(50, 8)
    head = nn.Linear(8, 50, bias=False)
    head.weight = emb.weight
    model = nn.ModuleDict({"emb": emb, "head": head})
    emb.weight.requires_grad_(False)
    loaded = nc.load(nc.save(model, tmp_path / "t.ncz"))
    assert loaded["head"].weight is loaded["emb"].weight
    assert not loaded["emb"].weight.requires_grad


def test_sparse_layers_shrink_the_file(tmp_path):
    torch.manual_seed(0)
    dense = nn.Linear(512, 512)
    sizes = {}
    for sparsity in (0.0, 0.5, 0.9, 0.99):
        model = nn.Linear(512, 512)
        model.load_state_dict(dense.state_dict())
        with torch.no_grad():
            w = model.weight
            w.mul_(w.abs() > w.abs().flatten().quantile(sparsity) if sparsity else 1)
        path = nc.save(model, tmp_path / f"s{sparsity}.ncz")
        sizes[sparsity] = os.path.getsize(path)
        torch.testing.assert_close(nc.load(path).weight, model.weight, rtol=0, atol=0)
    dense_bytes = 512 * 512 * 4
    assert sizes[0.0] < dense_bytes * 1.01
    # bitmask (1 bit/weight) + surviving fp32 values
    assert sizes[0.5] < dense_bytes * (0.5 + 1 / 32) + 4096
    assert sizes[0.9] < dense_bytes * (0.1 + 1 / 32) + 4096
    # at 1% density flat int32 indices beat the bitmask: 8 bytes per survivor
    assert sizes[0.99] < 512 * 512 * 0.01 * 8 + 4096 + 512 * 4


@pytest.mark.parametrize("name", ["sparse-bitmask", "sparse-indices"])
def test_sparse_encodings_round_trip_exactly(name):
    torch.manual_seed(1)
    t = torch.randn(37, 53) * (torch.rand(37, 53) > 0.8)
    parts, header = encodings.ENCODINGS[name].encode(t)
    back = encodings.decode(name, parts, {**header, "shape": list(t.shape)})
    assert torch.equal(back, t)


def test_index_dtype_is_smallest_that_fits():
    assert encodings._index_dtype(100) == torch.int8
    assert encodings._index_dtype(30_000) == torch.int16
    assert encodings._index_dtype(1_000_000) == torch.int32


def test_manifest_records_metadata(tmp_path):
    path = nc.save(nn.Linear(3, 3), tmp_path / "m.ncz", metadata={"recipe": [{"kind": "x"}]})
    from nncompress.io import read_manifest

    manifest = read_manifest(path)
    assert manifest["format"] == "nncompress-artifact" and manifest["version"] == 1
    assert manifest["metadata"]["recipe"] == [{"kind": "x"}]
    assert manifest["tensors"]["weight"]["encoding"] == "dense"


def _corrupt(path, tmp_path, how):
    out = tmp_path / f"bad-{how}.ncz"
    data = path.read_bytes()
    if how == "truncated":
        out.write_bytes(data[: len(data) // 2])
    elif how == "random":
        out.write_bytes(os.urandom(1000))
    elif how == "empty":
        out.write_bytes(b"")
    elif how == "flipped":
        with zipfile.ZipFile(path) as zin:
            tensors = bytearray(zin.read("tensors.safetensors"))
            manifest, skeleton = zin.read("manifest.json"), zin.read("skeleton.pkl")
        tensors[-5] ^= 0xFF
        with zipfile.ZipFile(out, "w") as zout:
            zout.writestr("manifest.json", manifest)
            zout.writestr("tensors.safetensors", bytes(tensors[:-20]))  # shortened payload
            zout.writestr("skeleton.pkl", skeleton)
    elif how == "no-manifest":
        with zipfile.ZipFile(out, "w") as zout:
            zout.writestr("other.txt", "hello")
    elif how == "bad-format":
        with zipfile.ZipFile(out, "w") as zout:
            zout.writestr("manifest.json", json.dumps({"format": "something-else"}))
    return out


@pytest.mark.parametrize("how", ["truncated", "random", "empty", "flipped", "no-manifest", "bad-format"])
def test_corrupt_artifacts_raise_artifact_error(how, tmp_path):
    path = nc.save(init_model("lenet5"), tmp_path / "ok.ncz")
    with pytest.raises(nc.ArtifactError):
        nc.load(_corrupt(path, tmp_path, how))


def test_missing_artifact_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ncz"):
        nc.load(tmp_path / "nope.ncz")


def test_failed_save_leaves_no_file(tmp_path, monkeypatch):
    import nncompress.io.artifact as artifact

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(artifact.safetensors.torch, "save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        nc.save(nn.Linear(2, 2), tmp_path / "m.ncz")
    assert list(tmp_path.iterdir()) == []


def test_save_does_not_touch_the_model():
    model = init_model("mlp")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        nc.save(model, os.path.join(d, "m.ncz"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) and v.device.type == "cpu"


def test_artifacts_with_a_torch_save_skeleton_still_load(tmp_path):
    """Artifacts written before the plain-pickle skeleton (``skeleton.pt``, torch.save) load."""
    model = init_model("lenet5").eval()
    path = nc.save(model, tmp_path / "new.ncz")
    legacy = tmp_path / "legacy.ncz"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(legacy, "w") as zout:
        for name in ("manifest.json", "tensors.safetensors"):
            zout.writestr(name, zin.read(name))
        buffer = io.BytesIO()
        torch.save(pickle.loads(zin.read("skeleton.pkl")), buffer)
        zout.writestr("skeleton.pt", buffer.getvalue())
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(nc.load(legacy)(x), model(x))


def test_floats_on_16_bit_and_int8_grids_are_stored_narrow_and_exact(tmp_path):
    """fp16-exact and power-of-two int8-grid float32 tensors take 2 and 1 bytes, and load bit-exact."""
    model = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 256), nn.Linear(256, 256))
    with torch.no_grad():
        model[1].weight.copy_(model[1].weight.half().float())
        model[2].weight.copy_(torch.randint(-127, 128, (256, 256)).float() * 2.0**-10)
    manifest_dtypes = {}
    path = nc.save(model, tmp_path / "m.ncz")
    for name, entry in read_manifest(path)["tensors"].items():
        manifest_dtypes[name] = entry["header"].get("narrowed", {}).get("data")
    assert manifest_dtypes["0.weight"] is None
    assert manifest_dtypes["1.weight"] == "float16"
    assert manifest_dtypes["2.weight"] == "int8*2^-10"
    loaded = nc.load(path)
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b)


def test_each_member_takes_its_smallest_zip_method(tmp_path):
    torch.manual_seed(0)
    dense = nn.Linear(256, 256)
    sparse = nn.Linear(256, 256)
    with torch.no_grad():
        sparse.weight.mul_(sparse.weight.abs() > 0.05)
    for model in (dense, sparse):
        path = nc.save(model, tmp_path / "m.ncz")
        with zipfile.ZipFile(path) as zf:
            infos = {i.filename: i for i in zf.infolist()}
            assert infos["manifest.json"].compress_type != zipfile.ZIP_STORED  # JSON always shrinks
            if model is sparse:  # bitmask-encoded: compresses
                assert infos["tensors.safetensors"].compress_type != zipfile.ZIP_STORED
            for info in infos.values():  # no method would have stored the member smaller by 2% or more
                data = zf.read(info.filename)  # (stored members load fastest: a smaller gain is not taken)
                assert info.compress_size <= min(len(zlib.compress(data, 6)) / 0.98, len(data)) + 16
        manifest = read_manifest(path)
        assert "requires_grad" not in manifest["tensors"]["weight"]  # the default (parameters train) is implied
        assert nc.load(path).weight.requires_grad

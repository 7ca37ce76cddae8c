"""Loading an artifact runs no code from it, refuses untrusted classes by name, and checks what it reads."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile

import pytest
import torch
from conftest import init_model
from torch import nn

import nncompress as nc
from nncompress.io import trust_modules, untrust_modules
from nncompress.io.artifact import SKELETON, TENSORS


class Custom(nn.Module):
    """A model class that lives in this test module (not nncompress, not torch.nn)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).relu()


def _rewrite(path, out, **members: bytes):
    """Copy an artifact with some members replaced (manifest hashes kept unless given)."""
    with zipfile.ZipFile(path) as zin:
        data = {n: zin.read(n) for n in zin.namelist()}
    data.update(members)
    with zipfile.ZipFile(out, "w") as zout:
        for name, value in data.items():
            zout.writestr(name, value)
    return out


def _manifest(path) -> dict:
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("manifest.json"))


class _Evil:
    """Unpickles as a call to ``func(*args)``: what a crafted artifact would do."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("how", ["os.system", "exec", "eval", "getattr", "subprocess"])
def test_a_crafted_skeleton_runs_no_code(how, tmp_path):
    import subprocess

    marker = tmp_path / "pwned"
    payload = {
        "os.system": _Evil(os.system, f"touch {marker}"),
        "exec": _Evil(exec, f"open({str(marker)!r}, 'w').close()"),
        "eval": _Evil(eval, f"open({str(marker)!r}, 'w').close()"),
        "getattr": _Evil(getattr, int, "real"),
        "subprocess": _Evil(subprocess.call, ["touch", str(marker)]),
    }[how]
    path = nc.save(init_model("mlp"), tmp_path / "ok.ncz")
    # the payload runs first, then the real skeleton loads as usual: a tuple (payload, model)
    crafted = pickle.dumps((payload, 0))
    evil = _rewrite(path, tmp_path / "evil.ncz", **{SKELETON: crafted})
    manifest = _manifest(evil)
    manifest.pop("sha256")  # as an attacker would: no hash to trip over
    evil = _rewrite(evil, tmp_path / "evil2.ncz", **{"manifest.json": json.dumps(manifest).encode()})
    with pytest.raises(nc.ArtifactError, match=r"not allowed to load") as err:
        nc.load(evil)
    assert not marker.exists()
    assert str(evil) in str(err.value)


def test_a_crafted_legacy_skeleton_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    path = nc.save(init_model("mlp"), tmp_path / "ok.ncz")
    legacy = tmp_path / "skeleton.pt"
    torch.save(_Evil(os.system, f"touch {marker}"), legacy)
    with zipfile.ZipFile(path) as zin:
        members = {n: zin.read(n) for n in zin.namelist() if n != SKELETON}
    manifest = json.loads(members["manifest.json"])
    manifest.pop("sha256")
    members["manifest.json"] = json.dumps(manifest).encode()
    members["skeleton.pt"] = legacy.read_bytes()
    out = tmp_path / "legacy.ncz"
    with zipfile.ZipFile(out, "w") as zout:
        for name, value in members.items():
            zout.writestr(name, value)
    with pytest.raises(nc.ArtifactError, match=r"posix\.system|os\.system"):
        nc.load(out)
    assert not marker.exists()


def test_untrusted_classes_are_refused_by_name_and_trust_loads_them(tmp_path):
    torch.manual_seed(0)
    model = Custom().eval()
    path = nc.save(model, tmp_path / "c.ncz")
    with pytest.raises(nc.ArtifactError, match=r"test_artifact_safety\.Custom.*trust=\('test_artifact_safety',\)"):
        nc.load(path)
    x = torch.randn(4, 3)
    assert torch.equal(nc.load(path, trust=("test_artifact_safety",))(x), model(x))
    assert torch.equal(nc.load(path, trust="test_artifact_safety")(x), model(x))
    trust_modules("test_artifact_safety")
    try:
        assert torch.equal(nc.load(path)(x), model(x))
    finally:
        untrust_modules("test_artifact_safety")
    with pytest.raises(nc.ArtifactError):
        nc.load(path)


@pytest.mark.parametrize("module", ["os", "builtins", "subprocess", "torch", "", "a b"])
def test_trusting_system_modules_is_refused(module):
    with pytest.raises(ValueError, match="trust"):
        trust_modules(module)


def test_a_trusted_module_does_not_lend_trust_to_what_it_imports(tmp_path):
    """``test_artifact_safety.os`` is the os module; ``...pickle`` names re-exported functions: refused."""
    path = nc.save(init_model("mlp"), tmp_path / "ok.ncz")
    # GLOBAL 'test_artifact_safety hashlib.sha256' / dunder walks, resolved through the trusted module
    for name in (b"hashlib.sha256", b"Custom.__init__.__globals__", b"os.system"):
        crafted = b"\x80\x04c" + b"test_artifact_safety\n" + name + b"\n."
        evil = _rewrite(path, tmp_path / "evil.ncz", **{SKELETON: crafted})
        manifest = _manifest(evil)
        manifest.pop("sha256")
        evil = _rewrite(evil, tmp_path / "evil2.ncz", **{"manifest.json": json.dumps(manifest).encode()})
        with pytest.raises(nc.ArtifactError):
            nc.load(evil, trust=("test_artifact_safety",))


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_recurrent_models_round_trip_bit_exactly(cls, bidirectional, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(cls(5, 7, num_layers=2, batch_first=True, bidirectional=bidirectional)).eval()
    x = torch.randn(3, 4, 5)
    loaded = nc.load(nc.save(model, tmp_path / "rnn.ncz"))
    out, expected = loaded(x), model(x)
    assert torch.equal(out[0], expected[0])
    h, h0 = (out[1][0], expected[1][0]) if cls is nn.LSTM else (out[1], expected[1])
    assert torch.equal(h, h0)
    assert all(not w.is_meta for w in loaded[0]._flat_weights)


def test_every_member_is_hashed_and_checked(tmp_path):
    path = nc.save(init_model("lenet5"), tmp_path / "m.ncz")
    manifest = _manifest(path)
    with zipfile.ZipFile(path) as zf:
        for member in (TENSORS, SKELETON):
            assert manifest["sha256"][member] == hashlib.sha256(zf.read(member)).hexdigest()
        tensors = bytearray(zf.read(TENSORS))
    tensors[-3] ^= 0x01  # one flipped bit in a weight: still valid safetensors, but not the file saved
    bad = _rewrite(path, tmp_path / "bad.ncz", **{TENSORS: bytes(tensors)})
    with pytest.raises(nc.ArtifactError, match=f"{TENSORS} is damaged"):
        nc.load(bad)


def test_artifacts_without_hashes_still_load(tmp_path):
    model = init_model("lenet5")
    path = nc.save(model, tmp_path / "m.ncz")
    manifest = _manifest(path)
    manifest.pop("sha256")
    old = _rewrite(path, tmp_path / "old.ncz", **{"manifest.json": json.dumps(manifest).encode()})
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(nc.load(old)(x), model(x))


def _edited(path, tmp_path, edit):
    manifest = _manifest(path)
    edit(manifest)
    return _rewrite(path, tmp_path / "edited.ncz", **{"manifest.json": json.dumps(manifest).encode()})


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m["tensors"].pop("fc1.weight"), "'fc1.weight::data', which belongs to no stored tensor"),
        (lambda m: m["tensors"]["fc1.weight"].update(shape=[300, 783]), "fc1.weight"),
        (lambda m: m["tensors"]["fc1.weight"].update(dtype="float64"), "fc1.weight"),
        (lambda m: m["tensors"]["fc1.bias"].update(kind="buffer"), "fc1.bias"),
        (lambda m: m["tensors"]["fc1.bias"].update(kind="weights"), "kind 'weights'"),
        (lambda m: m["tensors"]["fc2.bias"].update(alias_of="fc1.bias"), "alias of 'fc1.bias'"),
        (
            lambda m: m["tensors"].update(
                extra={"kind": "param", "shape": [1], "dtype": "float32", "encoding": "dense", "header": {}}
            ),
            "extra",
        ),
        (lambda m: m.update(version=[1]), "version"),
        (lambda m: m.update(tensors=[]), "'tensors' must be a table"),
    ],
)
def test_manifest_edits_are_refused_naming_the_problem(edit, match, tmp_path):
    path = nc.save(init_model("mlp"), tmp_path / "m.ncz")
    with pytest.raises(nc.ArtifactError, match=match):
        nc.load(_edited(path, tmp_path, edit))


def test_a_parameter_left_unset_is_refused(tmp_path):
    """The issue's case: a manifest (and tensors member) missing one entry left a weight on meta."""
    import safetensors.torch

    path = nc.save(init_model("mlp"), tmp_path / "m.ncz")
    with zipfile.ZipFile(path) as zf:
        stored = safetensors.torch.load(zf.read(TENSORS))
    stored = {k: v for k, v in stored.items() if not k.startswith("fc1.weight::")}
    manifest = _manifest(path)
    manifest.pop("sha256")
    manifest["tensors"].pop("fc1.weight")
    bad = _rewrite(
        path,
        tmp_path / "bad.ncz",
        **{TENSORS: safetensors.torch.save(stored), "manifest.json": json.dumps(manifest).encode()},
    )
    with pytest.raises(nc.ArtifactError, match="no tensor for the skeleton's fc1.weight"):
        nc.load(bad)


def test_a_zip_bomb_member_is_refused_before_it_is_inflated(tmp_path):
    path = nc.save(init_model("mlp"), tmp_path / "m.ncz")
    bomb = tmp_path / "bomb.ncz"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zout:
        for name in zin.namelist():
            data = zin.read(name)
            zout.writestr(name, data + b"\0" * (200 << 20) if name == SKELETON else data)
    assert bomb.stat().st_size < 2 << 20
    with pytest.raises(nc.ArtifactError, match=f"member {SKELETON} claims"):
        nc.load(bomb)


def huffman_model() -> nn.Module:
    """A pruned k-means (codebook) layer: its codes are stored Huffman-coded (sparse layout)."""
    from nncompress.quantize.codebook import kmeans_codebook
    from nncompress.quantize.layers import codebook_module

    torch.manual_seed(0)
    layer = nn.Linear(300, 100)
    with torch.no_grad():
        layer.weight[torch.rand_like(layer.weight) < 0.92] = 0
    centroids, codes = kmeans_codebook(layer.weight, 5, keep_zero=True)
    return nn.Sequential(codebook_module(layer, centroids, codes, 5)).eval()


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("count", 10**8, "do not pack into shape"),
        ("nonzero", 10**8, "'nonzero' must be an integer"),
        ("gap_symbols", 10**9, "'gap_symbols' must be an integer"),
        ("gap_width", 40, "'gap_width'"),
        ("background", 99, "'background'"),
        ("bits", 1.5, "'bits'"),
    ],
)
def test_huffman_counts_are_checked_before_decoding(key, value, match, tmp_path):
    path = nc.save(huffman_model(), tmp_path / "k.ncz")
    manifest = _manifest(path)
    assert manifest["tensors"]["0.packed"]["encoding"] == "huffman"
    manifest["tensors"]["0.packed"]["header"][key] = value
    bad = _rewrite(path, tmp_path / "bad.ncz", **{"manifest.json": json.dumps(manifest).encode()})
    with pytest.raises(nc.ArtifactError, match=match):
        nc.load(bad)


def _hf_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=32, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)


def _hf_llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=100,
        bos_token_id=0,
        eos_token_id=0,
    )
    return LlamaForCausalLM(config)


@pytest.mark.parametrize(
    ("build", "package", "x"),
    [
        (_hf_gpt2, "transformers", lambda: torch.randint(0, 100, (2, 9))),
        (_hf_llama, "transformers", lambda: torch.randint(0, 100, (2, 9))),
        (
            lambda: __import__("timm").create_model("test_efficientnet", num_classes=4),
            "timm",
            lambda: torch.randn(2, 3, 64, 64),
        ),
        (
            lambda: __import__("torchvision").models.mobilenet_v3_small(width_mult=0.25, num_classes=4),
            "torchvision",
            lambda: torch.randn(2, 3, 64, 64),
        ),
    ],
    ids=["gpt2", "llama", "timm", "torchvision"],
)
def test_models_of_other_packages_load_when_trusted_bit_exactly(build, package, x, tmp_path):
    pytest.importorskip(package)
    torch.manual_seed(0)
    model = build().eval()
    path = nc.save(model, tmp_path / "m.ncz")
    with pytest.raises(nc.ArtifactError, match=f"names {package}\\..*trust=\\('{package}',\\)"):
        nc.load(path)
    loaded = nc.load(path, trust=(package,))
    inputs = x()
    with torch.inference_mode():
        out, expected = loaded(inputs), model(inputs)
    if hasattr(expected, "logits"):
        out, expected = out.logits, expected.logits
    assert torch.equal(out, expected)


@pytest.mark.parametrize(
    "body",
    [
        "return open('/tmp/x')",
        "return torch.load('/tmp/x')",
        "return torch.save(x, '/tmp/x')",
        "return getattr(torch, 'load')('/tmp/x')",
        "return x.__class__",
        "return getattr(x, '__class__')",
        "return x.numpy().tofile('/tmp/x')",
        "import os\n    return os.system('x')",
        "return (lambda: 1)()",
        "return [y for y in x]",
        "return torch.utils.data",
        "return eval('1')",
        "return 'abc'.format(x)",
    ],
)
def test_fx_graph_code_that_is_not_tensor_ops_is_refused(body):
    from nncompress.io.fx_safe import check_forward_source

    with pytest.raises(ValueError, match="graph code"):
        check_forward_source(f"def forward(self, x):\n    {body}")


def test_fx_graph_code_of_tensor_ops_is_accepted():
    from nncompress.io.fx_safe import check_forward_source

    check_forward_source(
        "def forward(self, x : torch.Tensor):\n"
        "    a = getattr(self.blocks, '1').fc(x);  x = None\n"
        "    b = torch.quantize_per_tensor(a, self._scale_0, self._zero_point_0, torch.quint8)\n"
        "    c = torch.ops.quantized.add(b, b, 1.0, 0)\n"
        "    d = torch._C._nn.gelu(c.dequantize())[(slice(None, None, None), 0)]\n"
        "    return d.view(-1, 2) + 1"
    )

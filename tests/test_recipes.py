"""Recipes: ordering rules between steps, and every shipped recipe validated (the cheap ones run).

Like NVIDIA Model Optimizer's chaining test: many allowed orders run on a tiny model, save, load
into a fresh process-independent module and give the same outputs; forbidden orders fail before
anything runs, with one line naming both steps.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import SMALL_MODELS, init_model, make_task
from llm_archs import lm_task, tiny_lm

import nncompress as nc
from nncompress.core.recipe import builtin_recipes, check_order, load_recipe, parse_recipe, steps_accepting, tomllib
from nncompress.core.step import FLOAT, WEIGHT_FORMATS, builtin_steps

STEPS = builtin_steps()
NO_LATENCY = nc.MeasureConfig(latency=False)


def make(kind: str, **settings) -> nc.Step:
    return STEPS[kind](**settings)


def cheap(step: nc.Step) -> nc.Step:
    """The step with its training capped at two optimizer steps (when it trains)."""
    names = {f.name for f in dataclasses.fields(step)}
    changes = {k: v for k, v in {"max_steps": 2, "calibration_batches": 1, "val_batches": 1}.items() if k in names}
    return dataclasses.replace(step, **changes)


ALLOWED = {
    "prune-finetune-kmeans": lambda: [
        make("magnitude-prune", sparsity=0.8),
        make("finetune", max_steps=2),
        make("kmeans-quantize", max_steps=2),
    ],
    "channel-svd-distill-int4": lambda: [
        make("channel-prune", sparsity=0.25),
        make("svd", rank=0.5),
        make("distill", max_steps=2),
        make("weight-quantize", bits=4),
    ],
    "svd-prune-finetune-int8dyn": lambda: [
        make("svd", rank=0.5),
        make("magnitude-prune", sparsity=0.5),
        make("finetune", max_steps=2),
        make("int8-dynamic"),
    ],
    "gradual-tucker-qat": lambda: [
        make("gradual-prune", sparsity=0.5, max_steps=3),
        make("tucker", rank=0.5),
        make("qat", bits=4, max_steps=2),
    ],
    "nm-distill-fp16": lambda: [make("nm-prune"), make("distill", max_steps=2), make("fp16")],
    "iterative-binarize": lambda: [
        make("iterative-prune", sparsity=0.5, rounds=2, max_steps=1),
        make("binarize", max_steps=2),
    ],
    "prune-lowrank-int8-static": lambda: [
        make("magnitude-prune", sparsity=0.5),
        make("spatial-svd", rank=0.5),
        make("int8-static", calibration_batches=1),
    ],
    "finetune-prune-gptq": lambda: [
        make("finetune", max_steps=2),
        make("magnitude-prune", sparsity=0.5),
        make("gptq", group_size=16, calibration_batches=1),
    ],
}


@pytest.mark.parametrize("name", list(ALLOWED))
def test_allowed_orders_run_save_and_load_to_the_same_outputs(name, tmp_path, one_thread):
    task = make_task(SMALL_MODELS["lenet5"], n_train=128)
    recipe = ALLOWED[name]()
    check_order(recipe)
    result = nc.compress(init_model("lenet5"), recipe, task, measure_config=NO_LATENCY)
    assert [s.kind for s in result.report.steps] == [s.kind for s in recipe]
    x = task.single_example()
    with torch.inference_mode():
        out = result.model(x)
    assert torch.isfinite(out).all()
    loaded = nc.load(nc.save(result.model, tmp_path / "m.ncz"))
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), out, rtol=0, atol=0)


FORBIDDEN = [
    ("kmeans-quantize", "magnitude-prune", "codebook"),
    ("kmeans-quantize", "finetune", "codebook"),
    ("int8-static", "kmeans-quantize", "int8-runtime"),
    ("int8-dynamic", "distill", "int8-runtime"),
    ("weight-quantize", "svd", "int-codes"),
    ("gptq", "channel-prune", "int-codes"),
    ("qat", "kmeans-quantize", "int-codes"),
    ("binarize", "finetune", "binary"),
    ("fp16", "tucker", "float16"),
    ("weight-quantize", "weight-quantize", "int-codes"),
]


@pytest.mark.parametrize(("first", "then", "fmt"), FORBIDDEN)
def test_forbidden_orders_fail_naming_both_steps(first, then, fmt):
    steps = [{"kind": "magnitude-prune", "sparsity": 0.5}, {"kind": first}, {"kind": "fp16"}]
    steps[2] = {"kind": then}
    with pytest.raises(ValueError) as err:
        parse_recipe({"steps": steps}, source="my.toml")
    message = str(err.value)
    assert "\n" not in message
    assert f"my.toml: step 3 {then!r} cannot follow step 2 {first!r}" in message
    assert f"{first} leaves {fmt} weights" in message
    assert "accepts float weights" in message
    after = "scale-tune" if fmt == "int-codes" else "none"  # only their step sizes can still train
    assert f"steps accepted after {first}: {after}" in message


def test_compress_refuses_a_bad_order_before_any_work(task):
    recipe = [make("kmeans-quantize"), make("magnitude-prune", sparsity=0.5)]
    calls = []

    def baseline():
        calls.append(1)
        return SMALL_MODELS["mlp"]()

    with pytest.raises(ValueError, match="'magnitude-prune' cannot follow step 1 'kmeans-quantize'"):
        nc.compress(init_model("mlp"), recipe, dataclasses.replace(task, baseline=baseline))


def test_a_recipe_file_with_a_bad_order_fails_on_load(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[[steps]]\nkind = "int8-dynamic"\n[[steps]]\nkind = "finetune"\n')
    with pytest.raises(ValueError, match=r"bad\.toml: step 2 'finetune' cannot follow step 1 'int8-dynamic'"):
        load_recipe(path)


def test_steps_that_keep_the_format_do_not_reset_it():
    # finetune keeps "float"; after kmeans-quantize the format stays "codebook" through nothing
    recipe = [make("magnitude-prune", sparsity=0.5), make("finetune"), make("kmeans-quantize")]
    check_order(recipe)
    with pytest.raises(ValueError, match="step 4 'finetune' cannot follow step 3 'kmeans-quantize'"):
        check_order([*recipe, make("finetune")])


def test_every_step_declares_known_formats_and_quantizers_pack():
    for kind, cls in STEPS.items():
        assert cls.accepts and cls.accepts <= set(WEIGHT_FORMATS), kind
        assert cls.produces is None or cls.produces in WEIGHT_FORMATS, kind
        if cls.family == "quantize":
            assert cls.produces not in (None, FLOAT), f"{kind} packs weights: it must declare what it leaves"
        else:
            assert cls.produces in (None, FLOAT), kind
    assert "finetune" in steps_accepting(FLOAT)
    assert steps_accepting("codebook") == []


def test_unknown_formats_are_refused_at_registration():
    with pytest.raises(ValueError, match="unknown weight format 'int3'"):
        nc.core.step.register_step("never-registered", family="quantize", produces="int3")


# --- shipped recipes ------------------------------------------------------------------------------

SHIPPED = builtin_recipes()


def test_the_expected_recipes_ship():
    assert {"prune-finetune", "deep-compression", "edge-int8", "fast-cpu", "llm-w4"} <= set(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_recipe_is_valid_and_documented(name):
    path = SHIPPED[name]
    text = path.read_text()
    assert text.startswith("#"), f"{path.name} should open with a comment saying what it does"
    data = tomllib.loads(text)
    assert data.get("name") == name
    steps = load_recipe(name)
    check_order(steps)
    assert [s.kind for s in steps] == [d["kind"] for d in data["steps"]]


CHEAP = {
    "prune-finetune": "lenet5",
    "deep-compression": "lenet5",
    "edge-int8": "lenet5",
    "fast-cpu": "lenet5",
}


@pytest.mark.parametrize("name", sorted(CHEAP))
def test_cheap_shipped_recipes_run_on_a_tiny_task(name, tmp_path, one_thread):
    model_name = CHEAP[name]
    task = make_task(SMALL_MODELS[model_name], n_train=128)
    recipe = [cheap(s) for s in load_recipe(name)]
    result = nc.compress(init_model(model_name), recipe, task, measure_config=NO_LATENCY)
    x = task.single_example()
    loaded = nc.load(nc.save(result.model, tmp_path / "m.ncz"))
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), result.model(x), rtol=0, atol=0)
    assert result.report.final.size_bytes < result.report.baseline.size_bytes


def test_llm_w4_runs_on_a_tiny_transformer(tmp_path, one_thread):
    task = lm_task()
    recipe = [cheap(s) for s in load_recipe("llm-w4")]
    result = nc.compress(tiny_lm(), recipe, task, measure_config=NO_LATENCY)
    assert result.report.final.size_bytes < result.report.baseline.size_bytes
    ids = task.single_example()
    loaded = nc.load(nc.save(result.model, tmp_path / "m.ncz"))
    with torch.inference_mode():
        torch.testing.assert_close(loaded(ids), result.model(ids), rtol=0, atol=0)


def test_deep_compression_stores_codes_huffman_coded(tmp_path, one_thread):
    task = make_task(SMALL_MODELS["lenet5"], n_train=128)
    recipe = [cheap(s) for s in load_recipe("deep-compression")]
    result = nc.compress(init_model("lenet5"), recipe, task, measure_config=NO_LATENCY)
    manifest = nc.io.artifact.read_manifest(nc.save(result.model, tmp_path / "m.ncz"))
    encodings = {k: v["encoding"] for k, v in manifest["tensors"].items() if k.endswith(".packed")}
    assert encodings["fc1.packed"] == encodings["fc2.packed"] == "huffman"  # conv1's 150 codes may stay packed
    biases = [v for k, v in manifest["tensors"].items() if k.endswith(".bias")]
    assert biases and all(v["header"]["narrowed"]["data"].startswith("int8*2^") for v in biases)  # bias_dtype="int8"

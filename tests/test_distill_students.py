"""Student builders (shallower, narrower, student_for), teacher assistants and the distill-student step."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import SMALL_MODELS, init_model, make_task
from torch import nn

import nncompress as nc
from nncompress.distill import (
    DistillStudent,
    assistant_chain,
    assistant_sizes,
    narrower,
    shallower,
    student_for,
)
from nncompress.measure.flops import count_macs
from nncompress.measure.size import count_params
from nncompress.models import LeNet5, ResNet, VisionTransformer

X = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def vit(depth: int = 4) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(patch_size=7, dim=16, depth=depth, num_heads=2, mlp_hidden=32, num_classes=4).eval()


def same_tensors(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def l1_kept(layer: nn.Linear | nn.Conv2d, keep: int) -> torch.Tensor:
    """The rows ChannelPrune's l1 criterion keeps: the largest |W_row|_1 + |b|."""
    score = layer.weight.detach().abs().flatten(1).sum(1)
    if layer.bias is not None:
        score = score + layer.bias.detach().abs()
    return torch.sort(torch.argsort(score, descending=True)[:keep]).values


# --- shallower --------------------------------------------------------------------------
def test_shallower_vit_keeps_every_other_block_with_the_teachers_weights():
    teacher = vit(depth=4)
    student = shallower(teacher)
    assert len(student.blocks) == 2 and len(teacher.blocks) == 4
    assert same_tensors(student.blocks[0], teacher.blocks[0])
    assert same_tensors(student.blocks[1], teacher.blocks[2])
    for name in ("patch_embed", "norm", "head"):
        assert same_tensors(getattr(student, name), getattr(teacher, name))
    assert torch.equal(student.pos_embed, teacher.pos_embed) and torch.equal(student.cls_token, teacher.cls_token)
    # a copy: training the student leaves the teacher alone
    assert student.blocks[0].attn.q.weight.data_ptr() != teacher.blocks[0].attn.q.weight.data_ptr()
    out = student(X)
    assert out.shape == (4, 4) and torch.isfinite(out).all()
    assert count_params(student) < count_params(teacher)


def test_shallower_explicit_blocks_and_resnet_stages():
    teacher = vit(depth=4)
    student = shallower(teacher, keep=[1, 3])
    assert len(student.blocks) == 2
    assert same_tensors(student.blocks[0], teacher.blocks[1]) and same_tensors(student.blocks[1], teacher.blocks[3])
    torch.manual_seed(0)
    resnet = ResNet(widths=(4, 8), blocks_per_stage=3, num_classes=4).eval()
    small = shallower(resnet)  # every other block of each stage: 0 and 2
    assert [len(s) for s in small.stages] == [2, 2]
    assert same_tensors(small.stages[1][0], resnet.stages[1][0])
    assert same_tensors(small.stages[1][1], resnet.stages[1][2])
    assert small(X).shape == (4, 4)


def test_shallower_errors():
    with pytest.raises(ValueError, match="`blocks`"):
        shallower(init_model("mlp"))
    with pytest.raises(ValueError, match="every_other"):
        shallower(vit(), keep="every_third")
    with pytest.raises(ValueError, match=r"integers in \[0, 4\)"):
        shallower(vit(), keep=[0, 4])
    with pytest.raises(ValueError, match="twice"):
        shallower(vit(), keep=[1, 1])
    with pytest.raises(ValueError, match="non-empty"):
        shallower(vit(), keep=[])
    resnet = ResNet(widths=(4, 8), blocks_per_stage=2, num_classes=4)
    with pytest.raises(ValueError, match=r"stages\.1\.0 .*changes the shape"):
        shallower(resnet, keep=[0, 1, 3])  # block 2 is stage 1's stride-2 projection block


# --- narrower ---------------------------------------------------------------------------
def test_narrower_mlp_halves_hidden_widths_and_keeps_the_teachers_top_channels():
    teacher = init_model("mlp")
    student = narrower(teacher, 0.5, example_inputs=X)
    assert (student.fc1.out_features, student.fc2.out_features, student.fc3.out_features) == (150, 50, 4)
    assert student.fc1.in_features == 784
    k1, k2 = l1_kept(teacher.fc1, 150), l1_kept(teacher.fc2, 50)
    assert torch.equal(student.fc1.weight, teacher.fc1.weight[k1])
    assert torch.equal(student.fc1.bias, teacher.fc1.bias[k1])
    assert torch.equal(student.fc2.weight, teacher.fc2.weight[k2][:, k1])
    assert torch.equal(student.fc3.weight, teacher.fc3.weight[:, k2])
    assert torch.equal(student.fc3.bias, teacher.fc3.bias)
    assert teacher.fc1.out_features == 300  # teacher untouched


def test_narrower_lenet5_resnet_vit_widths():
    lenet = narrower(LeNet5(num_classes=4), 0.5, example_inputs=X)
    widths = (lenet.conv1.out_channels, lenet.conv2.out_channels, lenet.fc1.out_features, lenet.fc2.out_features)
    assert widths == (3, 8, 60, 42)
    resnet = narrower(ResNet(widths=(8, 16), num_classes=4), 0.5, example_inputs=X)
    assert resnet.stem[0].out_channels == 4 and resnet.stages[1][0].conv2.out_channels == 8
    assert resnet.fc.in_features == 8 and resnet.fc.out_features == 4
    v = narrower(
        VisionTransformer(patch_size=7, dim=16, depth=2, num_heads=2, mlp_hidden=32, num_classes=4),
        0.5,
        example_inputs=X,
    )
    assert v.patch_embed.out_channels == 8 and v.blocks[0].mlp.fc1.out_features == 16
    assert v.blocks[0].attn.num_heads == 1 and v.head.out_features == 4
    for m in (lenet, resnet, v):
        assert m(X).shape == (4, 4)


def test_narrower_random_init_same_shape_fresh_weights():
    teacher = init_model("lenet5")
    kept = narrower(teacher, 0.5, example_inputs=X)
    fresh = narrower(teacher, 0.5, "random", example_inputs=X)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in kept.state_dict().items()}
    for name in ("conv1", "conv2", "fc1", "fc2", "fc3"):
        assert not torch.equal(getattr(fresh, name).weight, getattr(kept, name).weight), name
    again = narrower(teacher, 0.5, "random", example_inputs=X)
    assert same_tensors(fresh, again)  # seeded
    # width 1: a copy (teacher) or the same shape re-initialized (random)
    assert same_tensors(narrower(teacher, 1.0, example_inputs=X), teacher)
    assert not torch.equal(narrower(teacher, 1.0, "random", example_inputs=X).fc1.weight, teacher.fc1.weight)


def test_narrower_errors():
    for bad in (0, 1.5, -0.2, True, "half"):
        with pytest.raises(ValueError, match="width"):
            narrower(init_model("mlp"), bad, example_inputs=X)
    with pytest.raises(ValueError, match="init"):
        narrower(init_model("mlp"), 0.5, "zeros", example_inputs=X)
    with pytest.raises(ValueError, match="no hidden width"):
        narrower(nn.Sequential(nn.Flatten(), nn.Linear(784, 4)), 0.5, example_inputs=X)


# --- student_for ------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SMALL_MODELS))
def test_student_for_fits_the_budget_and_is_the_widest_that_does(name):
    teacher = init_model(name)
    student, how = student_for(teacher, 0.25, example_inputs=X, shape="uniform")
    n, total = count_params(student), count_params(teacher)
    assert n <= 0.25 * total
    assert f"{n:,} params" in how
    assert student(X).shape == (4, 4)
    base = shallower(teacher) if name == "vit" else teacher
    if name == "vit":
        assert "every other block (2 -> 1)" in how and len(student.blocks) == 1
    width = float(how.split("width ")[1].split(":")[0])
    # the next width up on the grid would not fit: the search stops at the largest that does
    assert count_params(narrower(base, round(width + 0.05, 2), example_inputs=X)) > 0.25 * total


@pytest.mark.parametrize("name", list(SMALL_MODELS))
def test_student_for_most_macs_keeps_at_least_the_uniform_students_macs(name):
    teacher = init_model(name)
    uniform, _ = student_for(teacher, 0.25, example_inputs=X, shape="uniform")
    student, how = student_for(teacher, 0.25, example_inputs=X)
    assert count_params(student) <= 0.25 * count_params(teacher)
    assert count_macs(student, X) >= count_macs(uniform, X)
    if name == "lenet5":  # conv channels are cheap in parameters: they stay, the fc layers narrow
        assert "conv1 and conv2 whole" in how
        assert (student.conv1.out_channels, student.conv2.out_channels) == (6, 16)
        assert student.fc1.out_features < teacher.fc1.out_features
        assert count_macs(student, X) > 2 * count_macs(uniform, X)
    with pytest.raises(ValueError, match="shape must be one of"):
        student_for(teacher, 0.25, example_inputs=X, shape="deep")


def test_student_for_vit_shallower_alone_when_it_fits():
    teacher = vit(depth=4)
    student, how = student_for(teacher, 0.6, example_inputs=X)
    assert len(student.blocks) == 2 and "width" not in how
    assert same_tensors(student, shallower(teacher))


def test_student_for_errors():
    for bad in (0, 1, 1.2, True):
        with pytest.raises(ValueError, match="max_param_ratio"):
            student_for(init_model("mlp"), bad, example_inputs=X)
    with pytest.raises(ValueError, match="no student"):
        student_for(init_model("mlp"), 0.001, example_inputs=X)


# --- assistants -------------------------------------------------------------------------
def test_assistant_sizes_are_geometric():
    (one,) = assistant_sizes(10_000, 100, steps=1)
    assert one == pytest.approx(1_000) and 100 < one < 10_000
    two = assistant_sizes(8_000, 1_000, steps=2)
    assert two == pytest.approx([4_000, 2_000])
    assert assistant_sizes(8_000, 1_000, steps=0) == []
    with pytest.raises(ValueError, match="student_params < teacher_params"):
        assistant_sizes(100, 100)
    with pytest.raises(ValueError, match="steps"):
        assistant_sizes(100, 10, steps=-1)


@pytest.mark.parametrize("name", ["mlp", "vit"])
def test_assistant_chain_lies_between_teacher_and_student(name):
    teacher = init_model(name)
    student, _ = student_for(teacher, 0.25, example_inputs=X)
    total, small = count_params(teacher), count_params(student)
    ((ta, how),) = assistant_chain(teacher, student, 1, example_inputs=X)
    n = count_params(ta)
    assert small < n < total
    assert n <= math.sqrt(total * small)  # the largest within the geometric mean ...
    assert n >= 0.8 * math.sqrt(total * small)  # ... and close to it
    assert f"{n:,} params" in how
    with pytest.raises(ValueError, match="strictly between"):
        assistant_chain(teacher, student, 40, example_inputs=X)


# --- the distill-student step -----------------------------------------------------------
def test_distill_student_step_with_one_assistant(tmp_path):
    task = make_task(SMALL_MODELS["vit"], n_train=128)
    model = init_model("vit")
    step = DistillStudent(max_param_ratio=0.25, assistants=1, max_steps=2)
    result = nc.compress(model, [step], task, measure_config=nc.MeasureConfig(latency=False))
    total = count_params(model)
    assert count_params(result.model) <= 0.25 * total
    assert result.report.steps[0].params == count_params(result.model)
    notes = result.report.steps[0].notes
    stages = [n for n in notes if "stage" in n]
    assert len(stages) == 2, notes
    assert "stage 1/2: assistant 1" in stages[0] and "stage 2/2: student" in stages[1]
    ta_params = int(stages[0].split(": ")[-1].split(" params")[0].replace(",", ""))
    assert count_params(result.model) < ta_params < total
    assert sum("distill-student: 2 steps" in n for n in notes) == 2  # each stage trained, 2 steps
    x = task.single_example()
    loaded = nc.load(nc.save(result.model, tmp_path / "student.ncz"))
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), result.model(x), rtol=0, atol=0)
    assert len(loaded.blocks) == 1


def test_distill_student_trains_the_student():
    task = make_task(SMALL_MODELS["mlp"], n_train=128)
    teacher = init_model("mlp")
    ctx = nc.StepContext(task=task)
    untrained = student_for(teacher, 0.25, example_inputs=X)[0]
    trained = DistillStudent(max_steps=3).apply(teacher, ctx)
    assert trained.fc1.weight.shape == untrained.fc1.weight.shape
    assert not torch.equal(trained.fc1.weight, untrained.fc1.weight)
    assert sum("stage" in line for line in ctx.log) == 1


def test_distill_student_settings_errors_and_recipe():
    for kwargs, match in [
        ({"max_param_ratio": 0}, "max_param_ratio"),
        ({"max_param_ratio": 1.0}, "max_param_ratio"),
        ({"assistants": -1}, "assistants"),
        ({"assistants": 1.5}, "assistants"),
        ({"init": "zeros"}, "init"),
        ({"kd_alpha": 2.0}, "kd_alpha"),
        ({"lr": 0}, "lr"),
    ]:
        with pytest.raises(ValueError, match=match):
            DistillStudent(**kwargs)
    step = nc.core.recipe.parse_recipe({"steps": [{"kind": "distill-student", "assistants": 2, "init": "random"}]})[0]
    assert step == DistillStudent(assistants=2, init="random")
    assert nc.DistillStudent is DistillStudent and nc.STEPS["distill-student"] is DistillStudent


def test_docstring_examples():
    import doctest

    from nncompress.distill import assistants, students

    for module in (students, assistants):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0 and result.attempted > 0, module.__name__

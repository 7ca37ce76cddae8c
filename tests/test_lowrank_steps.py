"""Low-rank steps: settings validation, layer selection, break-even skips, logs, save/load, budgets."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import make_task
from torch import nn

import nncompress as nc
from nncompress.base.checks import NothingToDo
from nncompress.core.step import StepContext
from nncompress.lowrank.decompose import relative_error
from nncompress.measure.flops import count_macs
from nncompress.measure.size import count_params
from nncompress.models import LeNet5, LeNet300100, ResNet
from nncompress.tasks.batches import TensorBatches

FAST = nc.MeasureConfig(latency=False)


pytestmark = pytest.mark.usefixtures("one_thread")


def model_and_task(factory, seed: int = 0) -> tuple[nn.Module, nc.Task]:
    torch.manual_seed(seed)
    return factory().eval(), make_task(factory, n_train=128)


def mlp() -> nn.Module:
    return LeNet300100(num_classes=4)


def lenet5() -> nn.Module:
    return LeNet5(num_classes=4)


def resnet() -> nn.Module:
    return ResNet(widths=(4, 8), num_classes=4)


# --- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [0, -2, 1.5, 0.0, "energy:1.2", "error:-0.1", "energy:0", "nonsense", True, None])
@pytest.mark.parametrize("step", ["SVDFactorize", "TuckerFactorize", "SpatialSVDFactorize"])
def test_bad_ranks_raise_a_clear_error(step, rank):
    with pytest.raises(ValueError, match="rank .* is not accepted.*a rank is an integer >= 1"):
        getattr(nc, step)(rank=rank)


def test_cp_accepts_only_fixed_and_parameter_ranks():
    assert nc.CPFactorize(rank="params:0.3").rank == "params:0.3"
    for rank in ("vbmf", 0.5, "energy:0.9"):
        with pytest.raises(ValueError, match="is not supported here; accepted: fixed, params"):
            nc.CPFactorize(rank=rank)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"calibration_batches": 0}, "calibration_batches must be an integer >= 1"),
        ({"activation_aware": "yes"}, "activation_aware must be True or False"),
        ({"layers": (3,)}, "layers takes module names or regexes"),
        ({"exclude": ("fc[",)}, "exclude entry 'fc\\[' is not a valid regex"),
    ],
)
def test_bad_settings_raise_a_clear_error(settings, message):
    with pytest.raises(ValueError, match=message):
        nc.SVDFactorize(**settings)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"target": 1.5}, r"target must be a fraction in \(0, 1\)"),
        ({"target": 0}, r"target must be a fraction in \(0, 1\)"),
        ({"resource": "flops"}, "resource must be one of macs, params"),
        ({"criterion": "accuracy"}, "criterion must be one of loss, metric"),
        ({"keep": ()}, r"keep must list fractions in \(0, 1\)"),
        ({"keep": (0.2, 1.0)}, r"keep must list fractions in \(0, 1\)"),
        ({"methods": ("svd", "tensor-train")}, "methods must name factorizations among svd, tucker, cp, spatial-svd"),
        ({"methods": ("tucker", "cp")}, "one factorization per layer type"),
        ({"val_batches": 0}, "val_batches must be an integer >= 1"),
    ],
)
def test_bad_budget_settings_raise_a_clear_error(settings, message):
    with pytest.raises(ValueError, match=message):
        nc.LowRankBudget(**settings)


def test_layer_names_that_match_nothing_are_reported():
    model, task = model_and_task(mlp)
    with pytest.raises(ValueError, match="layers entry 'fc9' names no module"):
        nc.compress(model, [nc.SVDFactorize(layers=("fc9",))], task, measure_config=FAST)


# --- svd ---------------------------------------------------------------------------------------


def test_svd_factorizes_selected_layers_and_skips_those_at_break_even():
    model, task = model_and_task(mlp)
    ctx = StepContext(task=task)
    # fc1 784->300 breaks even at rank 217, fc2 300->100 at 75, fc3 100->4 at 4 (rank 90 is clipped to 4)
    out = nc.SVDFactorize(rank=90, keep_classifier=False).apply(model, ctx)
    assert isinstance(out.fc1, nn.Sequential) and out.fc1[0].weight.shape == (90, 784)
    assert isinstance(out.fc2, nn.Linear) and isinstance(out.fc3, nn.Linear)
    assert any(line.startswith("svd: skipped fc2: rank 90 >= break-even 75") for line in ctx.log)
    assert any(line.startswith("svd: skipped fc3: rank 4 >= break-even 4") for line in ctx.log)
    assert any(line.startswith("svd: fc1 rank 90 of 300 (break-even 217), relative error 0.") for line in ctx.log)


def test_layers_and_exclude_select_what_is_factorized():
    model, task = model_and_task(mlp)
    only = nc.SVDFactorize(layers=("fc1",)).apply(model, StepContext(task=task))
    assert isinstance(only.fc1, nn.Sequential) and isinstance(only.fc2, nn.Linear)
    model, _ = model_and_task(mlp)
    rest = nc.SVDFactorize(exclude=("f.1",)).apply(model, StepContext(task=task))  # a regex
    assert isinstance(rest.fc1, nn.Linear) and isinstance(rest.fc2, nn.Sequential)
    assert isinstance(rest.fc3, nn.Linear)  # keep_classifier


def test_full_rank_ratio_leaves_every_layer_and_says_why():
    model, task = model_and_task(mlp)
    ctx = StepContext(task=task)
    with pytest.raises(NothingToDo, match=r"svd: factorized none of 2 Linear layer\(s\).*break-even"):
        nc.SVDFactorize(rank=1.0).apply(model, ctx)  # changing nothing is an error, not a success
    assert sum("skipped" in line for line in ctx.log) == 2


def test_energy_rank_keeps_the_fraction_of_each_layer():
    model, task = model_and_task(mlp)
    w = model.fc1.weight.detach().clone()
    out = nc.SVDFactorize(rank="energy:0.5", layers=("fc1",)).apply(model, StepContext(task=task))
    r = out.fc1[0].weight.shape[0]
    s = torch.linalg.svdvals(w.double()).square()
    assert s[:r].sum() / s.sum() >= 0.5 > s[: r - 1].sum() / s.sum()


def test_activation_aware_svd_lowers_the_layers_output_error_on_calibration_data():
    model, task = model_and_task(mlp)
    x = torch.cat([b[0] for b, _ in zip(task.train, range(4))]).flatten(1)
    reference = model.fc1(x).detach()
    errors = {}
    for aware in (False, True):
        fresh, _ = model_and_task(mlp)
        out = nc.SVDFactorize(rank=20, layers=("fc1",), activation_aware=aware).apply(fresh, StepContext(task=task))
        errors[aware] = relative_error(reference, out.fc1(x).detach())
    assert errors[True] < 0.8 * errors[False]


def test_pruning_masks_of_factorized_layers_are_dropped():
    model, task = model_and_task(mlp)
    ctx = StepContext(task=task, masks={"fc1.weight": torch.ones(300, 784, dtype=torch.bool)})
    nc.SVDFactorize(layers=("fc1",)).apply(model, ctx)
    assert "fc1.weight" not in ctx.masks
    assert any("fc1 was pruned; its mask is dropped" in line for line in ctx.log)


# --- conv steps --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "factory"),
    [
        (nc.SVDFactorize(), mlp),
        (nc.SVDFactorize(activation_aware=True, calibration_batches=1), lenet5),
        (nc.TuckerFactorize(), resnet),
        (nc.CPFactorize(rank=4), lenet5),
        (nc.SpatialSVDFactorize(), resnet),
    ],
    ids=["svd", "svd-aware", "tucker", "cp", "spatial-svd"],
)
def test_factorized_model_saves_and_loads_to_identical_outputs(step, factory, tmp_path):
    model, task = model_and_task(factory)
    result = nc.compress(model, [step], task, measure_config=FAST)
    assert result.report.final.params < result.report.baseline.params
    notes = result.report.steps[0].notes
    assert any(" rank " in n and "relative error" in n for n in notes)  # per-layer rank and error in the report
    x = task.single_example()
    loaded = nc.load(nc.save(result.model, tmp_path / "m.ncz"))
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), result.model(x), rtol=0, atol=0)
    assert not any(type(m).__module__.startswith("nncompress.lowrank") for m in loaded.modules())


LOAD_WITHOUT_LOWRANK = """
import sys, torch, nncompress
model = nncompress.load(sys.argv[1])
torch.save(model(torch.load(sys.argv[2])), sys.argv[3])
loaded = sorted(m for m in sys.modules if m.startswith("nncompress.lowrank") or m.startswith("tensorly"))
assert not loaded, loaded
"""


def test_factorized_artifact_runs_in_a_process_without_lowrank_code(tmp_path):
    model, task = model_and_task(resnet)
    out = nc.TuckerFactorize(rank=0.5).apply(model, StepContext(task=task))
    path = nc.save(out, tmp_path / "m.ncz")
    x = task.single_example()
    torch.save(x, tmp_path / "x.pt")
    subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_LOWRANK, str(path), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    with torch.inference_mode():
        torch.testing.assert_close(torch.load(tmp_path / "y.pt"), out(x), rtol=0, atol=0)


def test_grouped_convs_are_skipped_and_logged():
    class Grouped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=2)
            self.c, self.head = nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 4)

        def forward(self, x):
            return self.head(self.c(self.b(self.a(x))).mean((2, 3)))

    task = make_task(Grouped, n_train=64)
    torch.manual_seed(0)
    model, ctx = Grouped().eval(), StepContext(task=task)
    out = nc.TuckerFactorize(rank=0.5).apply(model, ctx)
    assert isinstance(out.b, nn.Conv2d) and isinstance(out.c, nn.Sequential) and isinstance(out.a, nn.Conv2d)
    assert "tucker: skipped b: grouped convolution (groups=2) is not factorized" in ctx.log


@pytest.mark.parametrize("step", [nc.CPFactorize(rank=4)])
def test_one_by_one_convs_are_left_to_spatial_svd(step):
    class Pointwise(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 16, 1)
            self.c, self.head = nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 4)

        def forward(self, x):
            return self.head(self.c(self.b(self.a(x))).mean((2, 3)))

    task = make_task(Pointwise, n_train=64)
    torch.manual_seed(0)
    ctx = StepContext(task=task)
    out = step.apply(Pointwise().eval(), ctx)
    assert isinstance(out.b, nn.Conv2d) and isinstance(out.c, nn.Sequential)
    assert (
        f"{step.kind}: skipped b: a 1x1 convolution: {step.kind} only adds layers to a low-rank matrix split; "
        "use spatial-svd" in ctx.log
    )
    ctx = StepContext(task=task)
    out = nc.SpatialSVDFactorize(rank=0.25).apply(Pointwise().eval(), ctx)
    assert isinstance(out.b, nn.Sequential) and [m.kernel_size for m in out.b] == [(1, 1), (1, 1)]


def test_conv_steps_refuse_a_model_without_convs():
    model, task = model_and_task(mlp)
    with pytest.raises(NothingToDo, match="cp: no Conv2d layer to factorize"):
        nc.CPFactorize().apply(model, StepContext(task=task))
    with pytest.raises(NothingToDo, match="tucker: no Conv2d/Conv1d layer to factorize"):
        nc.TuckerFactorize().apply(model, StepContext(task=task))


# --- budget ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "settings"),
    [
        (lenet5, {"target": 0.45}),
        (resnet, {"target": 0.6, "methods": ("spatial-svd",)}),
        (lenet5, {"target": 0.3, "resource": "params", "criterion": "metric"}),
    ],
    ids=["lenet5-macs", "resnet-spatial-macs", "lenet5-params"],
)
def test_budget_meets_its_target(factory, settings, tmp_path):
    model, task = model_and_task(factory)
    x = task.single_example()
    before = count_macs(model, x) if settings.get("resource") != "params" else count_params(model)
    step = nc.LowRankBudget(val_batches=1, **settings)
    result = nc.compress(model, [step], task, measure_config=FAST)
    after = count_macs(result.model, x) if step.resource == "macs" else count_params(result.model)
    assert after <= step.target * before
    summary = f"lowrank-budget: {step.resource} {before:,} -> {after:,}"
    assert any(n.startswith(summary) for n in result.report.steps[0].notes)
    loaded = nc.load(nc.save(result.model, tmp_path / "m.ncz"))
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), result.model(x), rtol=0, atol=0)


def test_budget_factorizes_the_layer_that_hurts_least():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)).eval()
    with torch.no_grad():  # layer 0 has rank 4: factorizing it at rank 8 loses nothing; layer 2 is full rank
        model[0].weight.copy_(torch.randn(64, 4) @ torch.randn(4, 64) / 8)
    x = torch.randn(128, 64)
    with torch.no_grad():
        y = model(x)  # the loss is the distance to the model's own outputs: every change costs
    batches = TensorBatches(x, y, batch_size=64)
    task = nc.Task(
        "self",
        train=batches,
        val=batches,
        test=batches,
        baseline=lambda: model,
        loss=nn.functional.mse_loss,
        metric="neg_mse",
    )
    ctx = StepContext(task=task)
    # each layer has 4,096 MACs; at keep 0.25 (rank 8) 1,024: the target leaves room for one of them
    out = nc.LowRankBudget(target=0.7, keep=(0.25,), val_batches=1).apply(model, ctx)
    assert isinstance(out[0], nn.Sequential) and out[0][0].weight.shape == (8, 64)
    assert isinstance(out[2], nn.Linear)
    assert "lowrank-budget: kept 2 (least loss for the budget)" in ctx.log


def test_budget_out_of_reach_raises():
    model, task = model_and_task(lenet5)  # the kept first conv alone holds 28% of the MACs
    with pytest.raises(ValueError, match="target=0.2 is out of reach"):
        nc.LowRankBudget(target=0.2, val_batches=1).apply(model, StepContext(task=task))


@pytest.mark.parametrize(
    "conv",
    [nn.Conv2d(16, 24, 1), nn.Conv2d(16, 24, 1, stride=2, bias=False)],
    ids=["1x1", "1x1-stride2"],
)
def test_tucker_splits_a_one_by_one_conv_into_two_by_svd(conv):
    """A 1x1 convolution's kernel is a matrix: tucker gives two 1x1 convs (the stride on the first,
    the bias on the second), exact at full rank and smaller at half."""
    from nncompress.lowrank.layers import LayerIO, Tucker2

    torch.manual_seed(0)
    x = torch.randn(2, 16, 8, 8)
    method = Tucker2()
    assert method.skip_reason(conv) is None
    full, err = method.build(conv, (24, 16))
    assert [m.kernel_size for m in full] == [conv.kernel_size] * 2 and full[0].stride == conv.stride
    assert err < 1e-5 and torch.allclose(full(x), conv(x), atol=1e-5)
    assert torch.allclose(full.weight, conv.weight, atol=1e-5)  # the recomposed view
    half, _ = method.build(conv, (12, 8))
    assert sum(p.numel() for p in half.parameters() if p.dim() > 1) == 8 * (16 + 24) < conv.weight.numel()
    io = LayerIO((8, 8), (4, 4))
    assert method.cost(conv, (12, 8), io).params == 8 * (16 + 24)


def test_svd_splits_one_by_one_convs_when_asked_and_names_the_rest():
    """With convs=True a conv net's 1x1 convolutions become two 1x1 convs; its 3x3 and depthwise
    convs are named in the notes; without it the net has nothing for svd (NothingToDo)."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.dw = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1, groups=16)
            self.pw, self.head = nn.Conv2d(16, 32, 1, stride=2), nn.Linear(32, 4)

        def forward(self, x):
            return self.head(self.pw(self.dw(self.a(x))).mean((2, 3)))

    task = make_task(Net, n_train=64)
    torch.manual_seed(0)
    with pytest.raises(NothingToDo, match="svd: no Linear layer to factorize"):
        nc.SVDFactorize(rank=0.25).apply(Net().eval(), StepContext(task=task))
    model, ctx = Net().eval(), StepContext(task=task)
    x = task.single_example()
    from nncompress.lowrank.layers import LinearSVD

    full, error = LinearSVD().build(model.pw, (16,))  # full rank: exact
    with torch.no_grad():
        h = model.dw(model.a(x))
        assert error < 1e-5 and torch.allclose(full(h), model.pw(h), atol=1e-5)
    out = nc.SVDFactorize(rank=0.25, convs=True).apply(model, ctx)
    assert isinstance(out.pw, nn.Sequential) and [m.stride for m in out.pw] == [(2, 2), (1, 1)]
    assert isinstance(out.a, nn.Conv2d) and isinstance(out.dw, nn.Conv2d) and isinstance(out.head, nn.Linear)
    assert "svd: skipped a: a 3x3 convolution: svd splits 1x1 convolutions only (use tucker or spatial-svd)" in ctx.log
    assert "svd: skipped dw: a 3x3 convolution: svd splits 1x1 convolutions only (use tucker or spatial-svd)" in ctx.log

"""mixed-precision: per-layer sensitivity, exact bit allocation under a budget, the step end to end."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import init_model, make_task

from nncompress.core.step import StepContext
from nncompress.quantize.layers import QuantizedConv2d, QuantizedLinear
from nncompress.quantize.mixed import MixedPrecisionQuantize, allocate_bits, layer_sensitivity, quantized_weight
from nncompress.quantize.primitives import QuantSpec


def _brute_force(sens, sizes, avg_bits):
    names, best = list(sens), (float("inf"), None)
    budget = avg_bits * sum(sizes.values())
    for combo in itertools.product(*(sorted(sens[n]) for n in names)):
        if sum(b * sizes[n] for n, b in zip(names, combo)) <= budget:
            err = sum(sens[n][b] for n, b in zip(names, combo))
            best = min(best, (err, combo), key=lambda t: t[0])
    return best


@pytest.mark.parametrize("seed", range(5))
def test_allocation_is_the_brute_force_optimum_within_budget(seed):
    g = torch.Generator().manual_seed(seed)
    names = [f"l{i}" for i in range(4)]
    sizes = {n: int(torch.randint(100, 5000, (1,), generator=g)) for n in names}
    sens = {}
    for n in names:  # error falls with bits, at a layer-specific rate
        rate = float(torch.rand(1, generator=g)) * 10
        sens[n] = {b: rate * 4.0 ** (-b) for b in (2, 3, 4, 8)}
    resolution, total = 2000, sum(sizes.values())
    chosen = allocate_bits(sens, sizes, 3.5, resolution=resolution)
    assert sum(chosen[n] * sizes[n] for n in names) <= 3.5 * total
    got = sum(sens[n][chosen[n]] for n in names)
    # optimal among assignments a grid unit per layer under the budget (the documented guarantee)
    spare = 3.5 * total - 2 * total
    tighter = 3.5 - len(names) * spare / resolution / total
    err, _ = _brute_force(sens, sizes, tighter)
    assert got <= err + 1e-12


def test_allocation_rejects_a_budget_below_the_smallest_width():
    with pytest.raises(ValueError, match="avg_bits=1.5 is below"):
        allocate_bits({"a": {2: 1.0, 4: 0.1}}, {"a": 10}, 1.5)


def test_sensitivity_falls_with_bits_and_leaves_the_model_unchanged():
    torch.manual_seed(0)
    model = init_model("lenet5").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = [torch.randn(8, 1, 28, 28)]
    sens = layer_sensitivity(
        model, inputs, ["conv2", "fc1"], (2, 4, 8), lambda b: QuantSpec(bits=b, granularity="channel")
    )
    for layer in ("conv2", "fc1"):
        assert sens[layer][2] > sens[layer][4] > sens[layer][8] >= 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_step_meets_the_budget_and_beats_uniform_bits_at_the_same_size():
    torch.manual_seed(0)
    task = make_task(lambda: init_model("lenet5"), n_train=128)
    model = init_model("lenet5").eval()
    with torch.no_grad():  # make one layer much more sensitive than the rest
        model.fc2.weight[:, :4] *= 30
    ctx = StepContext(task=task)
    step = MixedPrecisionQuantize(
        avg_bits=3.0, bits_options=(2, 3, 4, 8), calibration_batches=1, criterion="output-mse"
    )
    q = step.apply(copy.deepcopy(model), ctx)
    packed = {n: m for n, m in q.named_modules() if isinstance(m, (QuantizedLinear, QuantizedConv2d))}
    bits = {n: m.describe()["bits"] for n, m in packed.items()}
    sizes = {n: math.prod(m.weight_shape) for n, m in packed.items()}
    assert sum(bits[n] * sizes[n] for n in bits) <= 3.0 * sum(sizes.values())
    assert "mixed-precision:" in "\n".join(ctx.log)
    assert len(set(bits.values())) > 1, bits  # not one width for all
    # the allocation's summed sensitivity is no worse than uniform 3 bits (which also fits)
    inputs = [next(iter(task.train))[0]]
    sens = layer_sensitivity(model, inputs, list(bits), (2, 3, 4, 8), step.weight_quantize({}).spec)
    assert sum(sens[n][bits[n]] for n in bits) <= sum(sens[n][3] for n in bits) + 1e-12


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"avg_bits": 1.0}, "avg_bits=1.0 is below the smallest"),
        ({"bits_options": (1, 4)}, "bits_options must be an integer in"),
        ({"calibration_batches": 0}, "calibration_batches must be an integer >= 1, got 0"),
        ({"granularity": "row"}, "granularity must be one of"),
    ],
)
def test_bad_settings_get_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MixedPrecisionQuantize(**kwargs)


def test_loss_criterion_is_the_task_loss_increase():
    torch.manual_seed(0)
    model = init_model("mlp").eval()
    x = torch.randn(16, 1, 28, 28)
    y = torch.randint(0, model(x).shape[1], (16,))
    spec = QuantSpec(bits=2, granularity="channel")
    sens = layer_sensitivity(model, [x], ["fc1"], (2,), lambda b: spec, targets=[y], loss_fn=F.cross_entropy)
    with torch.no_grad():
        base = F.cross_entropy(model(x), y)
        q = copy.deepcopy(model)
        q.fc1.weight.copy_(quantized_weight(model.fc1.weight, spec, "mse"))
        expected = float(F.cross_entropy(q(x), y) - base)
    assert sens["fc1"][2] == pytest.approx(expected, rel=1e-5, abs=1e-7)

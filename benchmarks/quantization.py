"""Quantization benchmark on the reference tasks: prints a table, writes benchmarks/results/quantization.json.

Rows (method names are stable; see shared DESIGN.md):
- fmnist-lenet5, fmnist-resnet  int8-static: our static int8 PTQ (onnxruntime QDQ, per-channel
  weights; convs with under 4 input channels stay fp32), timed in one interleaved run beside the
  fp32 model and the peers' int8 paths on the same model:
  torch.ao (FX graph mode, x86 default qconfig) and ONNX Runtime (quantize_static defaults, run
  with onnxruntime's own threading)
- fmnist-resnet, fmnist-vit  w4: 4-bit weight-only PTQ (per-channel, MSE ranges, packed two
  codes per byte; first conv and classifier float). The ViT's other float parameters (biases,
  norms, position table: 6% of its 143k parameters) are rounded to 8-bit grids (rest_bits=8),
  or the small model's overhead keeps it above 15% of fp32. torchao peers on the ViT (int8
  weight-only, int4 weight-only per group of 32)
- fmnist-resnet  w3, w3-bias-corrected, w3-mixed: uniform 3-bit, the same with empirical bias
  correction, and mixed precision at an average of 3 bits per weight (2/3/4/8 bits per layer by
  task-loss sensitivity, exact knapsack)
- fmnist-lenet5  kmeans: 5-bit conv / 4-bit linear codebooks, centroids fine-tuned 1 epoch
- fmnist-mlp  binary: hidden layers 1-bit (XNOR-Net scaling), trained with KD
- fmnist-resnet  lsq4: LSQ 4-bit QAT at the same layer choice as the w4 row (same run)

Usage: python benchmarks/quantization.py [--quick]
torchao is optional: pip install torchao==0.18.0 -c <(echo torch==2.13.0)
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
import warnings
from dataclasses import replace
from typing import Any

import torch
from _common import RESULTS, contract_fields, parse_args, peer_row, print_table, run_recipe, write_results
from torch import nn

import nncompress as nc
from nncompress.base.data import calibration_inputs
from nncompress.measure.flops import mark_reference_macs
from nncompress.measure.report import add_latency

FAMILY = "quantization"
CALIBRATION_BATCHES = 8
INT8_TIMING = nc.MeasureConfig(runs=60, rounds=8, min_seconds=2.0)  # int8 speed is the headline: time longer


# --- our rows ---------------------------------------------------------------------------------


def ours(quick: bool) -> list[dict]:
    """Every row of ours but int8 (those are timed with their peers)."""
    rows = []
    resnet, vit = nc.tasks.get("fmnist-resnet"), nc.tasks.get("fmnist-vit")
    rows.append(run_recipe(FAMILY, resnet, "w4", [nc.WeightQuantize(bits=4)]))
    rows.append(run_recipe(FAMILY, vit, "w4", [nc.WeightQuantize(bits=4, rest_bits=8)]))
    rows.append(run_recipe(FAMILY, resnet, "w3", [nc.WeightQuantize(bits=3)]))
    corrected = nc.WeightQuantize(bits=3, bias_correction=True, calibration_batches=8)
    rows.append(run_recipe(FAMILY, resnet, "w3-bias-corrected", [corrected]))
    mixed = nc.MixedPrecisionQuantize(avg_bits=3.0, bits_options=(2, 3, 4, 8))
    rows.append(run_recipe(FAMILY, resnet, "w3-mixed", [mixed]))
    qat = nc.QuantizationAwareTraining(bits=4, method="lsq", epochs=0.1 if quick else 1.0)
    rows.append(run_recipe(FAMILY, resnet, "lsq4", [qat]))
    kmeans = nc.KMeansQuantize(bits_conv=5, bits_linear=4, epochs=0.1 if quick else 1.0)
    rows.append(run_recipe(FAMILY, nc.tasks.get("fmnist-lenet5"), "kmeans-5-4", [kmeans]))
    binary = nc.Binarize(epochs=0.2 if quick else 2.0)
    rows.append(run_recipe(FAMILY, nc.tasks.get("fmnist-mlp"), "binary", [binary]))
    return rows


# --- int8: ours and the peers' int8 paths, timed together -------------------------------------


class OnnxRuntimePeer(nn.Module):
    """An ONNX model run the way onnxruntime's docs show: one session, its own intra-op threads
    (set to torch's thread count at call time, so that the timing's thread sweep applies)."""

    def __init__(self, model_bytes: bytes) -> None:
        super().__init__()
        self.model_bytes = model_bytes
        self._sessions: dict[int, Any] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import onnxruntime as ort

        threads = torch.get_num_threads()
        if threads not in self._sessions:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.add_session_config_entry(
                "session.intra_op.allow_spinning", "0"
            )  # PEERS.md: when timed beside torch
            self._sessions[threads] = ort.InferenceSession(
                self.model_bytes, options, providers=["CPUExecutionProvider"]
            )
        session = self._sessions[threads]
        name = session.get_inputs()[0].name
        return torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def onnx_bytes(model: nn.Module, example: torch.Tensor, path: str) -> bytes:
    """The fp32 model exported to ONNX (dynamic batch), as a user of onnxruntime would."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            path,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    with open(path, "rb") as f:
        return f.read()


def onnxruntime_peer(
    model: nn.Module, calibration: list[tuple[Any, ...]], example: torch.Tensor
) -> tuple[nn.Module, int, int]:
    """onnxruntime.quantization.quantize_static with its defaults (QDQ, per-tensor int8 weights and
    activations, MinMax) after quant_pre_process; returns (module, int8 file bytes, fp32 file bytes)."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calibration)

        def get_next(self) -> dict[str, Any] | None:
            batch = next(self._it, None)
            return None if batch is None else {"input": batch[0].numpy()}

    with tempfile.TemporaryDirectory() as d:
        fp32, pre, q = (os.path.join(d, n) for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        onnx_bytes(model, example, fp32)
        quant_pre_process(fp32, pre, skip_symbolic_shape=True)
        quantize_static(pre, q, Reader())
        with open(q, "rb") as f:
            module = OnnxRuntimePeer(f.read())
        return module, os.path.getsize(q), os.path.getsize(fp32)


def torch_ao_peer(model: nn.Module, calibration: list[tuple[Any, ...]]) -> nn.Module:
    """torch.ao FX graph-mode static int8 with the x86 backend's default qconfig mapping."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), calibration[0])
        with torch.inference_mode():
            for args in calibration:
                prepared(*args)
        return convert_fx(prepared)


def int8_rows(task_name: str) -> list[dict]:
    """Our int8-static row and the torch.ao / ONNX Runtime peer rows, all timed in one
    interleaved run with the fp32 model (each model at its fastest thread count)."""
    task = nc.tasks.get(task_name)
    ours_row = run_recipe(FAMILY, task, "int8-static", [nc.StaticInt8Quantize(calibration_batches=CALIBRATION_BATCHES)])
    baseline = task.baseline().eval()
    calibration = calibration_inputs(task.train, CALIBRATION_BATCHES, task.name)
    example = task.single_example()

    t0 = time.perf_counter()
    ao = mark_reference_macs(torch_ao_peer(baseline, calibration), baseline, example)
    ao_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    ort_model, ort_bytes, ort_fp32_bytes = onnxruntime_peer(baseline, calibration, example)
    ort_model = mark_reference_macs(ort_model, baseline, example)
    ort_seconds = time.perf_counter() - t0

    no_latency = replace(INT8_TIMING, latency=False)
    loaded = nc.load(RESULTS.parent.parent / ours_row["result"]["artifact"])  # time the artifact as users load it
    models = [baseline, loaded, ao, ort_model]
    reports = [nc.measure(m, task, config=no_latency, size_bytes=0) for m in models]
    add_latency(reports, models, task, INT8_TIMING)
    for key in ("latency_ms", "latency"):
        ours_row["baseline"][key] = getattr(reports[0], key)
        ours_row["result"][key] = getattr(reports[1], key)

    def peer(
        method: str, tool: str, report: nc.Report, size: int, fp32_size: int, settings: dict, seconds: float
    ) -> dict:
        base, res = contract_fields(reports[0]), contract_fields(report)
        base["size_bytes"], res["size_bytes"] = fp32_size, size
        return {
            "task": task.name,
            "method": method,
            "tool": tool,
            "settings": settings,
            "baseline": base,
            "result": {**res, "compress_seconds": round(seconds, 2)},
        }

    with tempfile.TemporaryDirectory() as d:
        sizes = []
        for i, m in enumerate((baseline, ao)):
            torch.save(m.state_dict(), os.path.join(d, f"{i}.pt"))
            sizes.append(os.path.getsize(os.path.join(d, f"{i}.pt")))
    return [
        ours_row,
        peer(
            "int8-static",
            "torch.ao",
            reports[2],
            sizes[1],
            sizes[0],
            {
                "api": "prepare_fx/convert_fx",
                "qconfig_mapping": "x86 default",
                "calibration_batches": CALIBRATION_BATCHES,
                "saved": "torch.save(state_dict)",
            },
            ao_seconds,
        ),
        peer(
            "int8-static",
            "ONNX Runtime",
            reports[3],
            ort_bytes,
            ort_fp32_bytes,
            {
                "api": "quant_pre_process + quantize_static (defaults: QDQ, QInt8, per-tensor, MinMax)",
                "calibration_batches": CALIBRATION_BATCHES,
                "saved": ".onnx file",
            },
            ort_seconds,
        ),
    ]


# --- torchao weight-only peers (Linear layers: the ViT) ---------------------------------------


def torchao_rows() -> list[dict]:
    """torchao's int8 and int4 weight-only configs on the ViT's Linear layers (torchao quantizes
    nn.Linear only), measured like our rows, saved with torch.save(state_dict)."""
    try:
        from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
        from torchao.quantization.granularity import PerGroup
    except ImportError:
        print("torchao is not installed: no torchao rows (pip install torchao==0.18.0)")
        return []
    task = nc.tasks.get("fmnist-vit")
    baseline = task.baseline().eval()
    configs = {
        "w8": Int8WeightOnlyConfig(),
        "w4": IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)),
    }
    rows = []
    for method, config in configs.items():
        t0 = time.perf_counter()
        model = copy.deepcopy(baseline)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_(model, config)
        seconds = time.perf_counter() - t0
        rows.append(
            peer_row(
                task,
                method,
                "torchao",
                baseline,
                model,
                lambda m, p: torch.save(m.state_dict(), p),
                {"config": repr(config)},
                seconds,
            )
        )
    return rows


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    rows = int8_rows("fmnist-lenet5") + int8_rows("fmnist-resnet")
    rows += ours(args.quick) + torchao_rows()
    print_table(rows)
    print(f"wrote {write_results(FAMILY, rows, args.out)}")


if __name__ == "__main__":
    main()

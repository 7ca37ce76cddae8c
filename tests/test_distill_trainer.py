"""The general distillation trainer: feature hooks, layer mapping, the weighted loss, the frozen
teacher, checkpoint/resume equivalence, and DDP (2 CPU processes, gloo) equivalence."""

from __future__ import annotations

import copy
import dataclasses
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import init_model, make_task, synthetic_data
from torch import nn

from nncompress.distill import (
    DistillConfig,
    FeatureCapture,
    attention_map_loss,
    attention_probs,
    auto_layer_pairs,
    distill,
    hidden_state_loss,
    hint_loss,
    mse_logits,
    rkd_angle,
    rkd_distance,
    soft_kl,
)
from nncompress.distill import attention_transfer as at_loss
from nncompress.distill.features import layer_names, resolve_layers, uniform_map
from nncompress.distill.trainer import checkpoints
from nncompress.models import LeNet5, ResNet, VisionTransformer
from nncompress.tasks.batches import TensorBatches
from nncompress.train.loop import TrainConfig, make_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")


def vit(depth: int, dim: int = 16, heads: int = 2, seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(patch_size=7, dim=dim, depth=depth, num_heads=heads, mlp_hidden=32, num_classes=4)


def no_hooks(*models: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for model in models for m in model.modules())


def state_close(a: nn.Module, b: nn.Module, tol: float) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.allclose(sa[k].float(), sb[k].float(), atol=tol, rtol=0) for k in sa)


# --- features ------------------------------------------------------------------------------------


def test_feature_capture_records_outputs_and_removes_hooks_also_on_exceptions():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(5, 3)
    with FeatureCapture(model, ["0", "1"]) as cap:
        out = model(x)
        assert torch.equal(cap["1"], torch.relu(model[0](x)))
        assert cap.outputs["0"].requires_grad  # the graph is kept (detach=False)
        assert out.shape == (5, 2)
        cap.clear()
        assert cap.outputs == {}
    assert no_hooks(model) and cap.outputs == {}
    with pytest.raises(RuntimeError, match="boom"), FeatureCapture(model, ["0", "2"]):
        assert len(model[0]._forward_hooks) == 1
        raise RuntimeError("boom")
    assert no_hooks(model)
    with pytest.raises(ValueError, match="no module named 'nope'"):
        FeatureCapture(model, ["0", "nope"])
    assert no_hooks(model)


def test_auto_mapping_picks_the_documented_layers():
    student, teacher = vit(2), vit(4)
    assert layer_names(teacher, "blocks") == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    # student block i -> teacher block round((i + 1) * 4 / 2) - 1
    assert auto_layer_pairs(student, teacher) == {"blocks.0": "blocks.1", "blocks.1": "blocks.3"}
    assert auto_layer_pairs(student, teacher, "blocks") == auto_layer_pairs(student, teacher)
    assert uniform_map(4, 12) == [2, 5, 8, 11] and uniform_map(3, 2) == [0, 0, 1] and uniform_map(2, 2) == [0, 1]
    # CNNs: the last block of each ResNet stage; plain CNNs: the pooling layer ending each stage
    resnet3 = ResNet(widths=(4, 8, 16), blocks_per_stage=2, num_classes=4)
    assert layer_names(resnet3, "stages") == ["stages.0.1", "stages.1.1", "stages.2.1"]
    assert auto_layer_pairs(ResNet(widths=(4, 8), num_classes=4), resnet3) == {
        "stages.0.0": "stages.1.1",
        "stages.1.0": "stages.2.1",
    }
    assert auto_layer_pairs(LeNet5(num_classes=4), LeNet5(num_classes=4)) == {"pool1": "pool1", "pool2": "pool2"}
    assert auto_layer_pairs(init_model("mlp"), init_model("mlp")) == {}
    assert resolve_layers(student, teacher, {"blocks.1.mlp": "blocks.2.mlp"}) == {"blocks.1.mlp": "blocks.2.mlp"}
    with pytest.raises(ValueError, match="no module named 'blocks.7'"):
        resolve_layers(student, teacher, {"blocks.0": "blocks.7"})


# --- the trainer ---------------------------------------------------------------------------------


def test_only_the_student_learns_and_the_teacher_comes_back_as_it_was():
    task = make_task()
    student, teacher = vit(2, seed=1), vit(4, dim=24, heads=3)
    teacher.train()
    teacher.head.requires_grad_(True)
    teacher.blocks.requires_grad_(False)  # mixed flags, restored exactly
    flags = [p.requires_grad for p in teacher.parameters()]
    t_before = copy.deepcopy(teacher.state_dict())
    s_before = copy.deepcopy(student.state_dict())
    n_params = sum(p.numel() for p in student.parameters())
    seen_modes = []
    cfg = DistillConfig(kd=1.0, ce=0.5, hint=1.0, attn=1.0, train=TrainConfig(max_steps=3))
    history = distill(
        student, teacher, task, cfg, after_step=lambda m: seen_modes.append((m.training, teacher.training))
    )
    assert seen_modes == [(True, False)] * 3
    assert history.steps == 3 and history.layers == {"blocks.0": "blocks.1", "blocks.1": "blocks.3"}
    assert all(torch.equal(t_before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())
    assert [p.requires_grad for p in teacher.parameters()] == flags and teacher.training
    assert any(not torch.equal(s_before[k], v) for k, v in student.state_dict().items())
    assert not student.training and no_hooks(student, teacher)
    # adapters (16 -> 24 wide) were trained alongside, then discarded: the student is unchanged in shape
    assert sum(p.numel() for p in student.parameters()) == n_params


def test_hooks_removed_and_teacher_restored_after_an_exception():
    task = make_task()
    student, teacher = vit(2, seed=1), vit(4)

    def crash(_m: nn.Module) -> None:
        raise RuntimeError("crash inside training")

    cfg = DistillConfig(hint=1.0, attn=1.0, train=TrainConfig(max_steps=3))
    with pytest.raises(RuntimeError, match="crash inside training"):
        distill(student, teacher, task, cfg, after_step=crash)
    assert no_hooks(student, teacher)
    assert all(p.requires_grad for p in teacher.parameters()) and teacher.training


@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_one_step_loss_is_the_weighted_sum_of_the_terms(arch):
    """Same widths on both sides, so every adapter is the identity and the loss can be rebuilt by hand."""
    task = make_task()
    if arch == "vit":
        student, teacher = vit(2, seed=1), vit(4, heads=4)  # head counts differ: attention maps head-averaged
        weights = dict(
            kd=0.7, temperature=2.0, ce=0.3, mse=0.2, hint=0.5, hidden=0.25, attn=0.6, rkd_distance=0.4, rkd_angle=0.3
        )
    else:
        torch.manual_seed(1)
        student = ResNet(widths=(4, 8), num_classes=4)
        torch.manual_seed(0)
        teacher = ResNet(widths=(4, 8), blocks_per_stage=2, num_classes=4).eval()
        weights = dict(kd=0.5, hint=0.7, at=0.9, at_p=2.0, rkd_distance=0.6, rkd_source="features")
    cfg = DistillConfig(**weights, log_every=1, train=TrainConfig(max_steps=1, lr=0.05, optimizer="sgd"))
    pairs = auto_layer_pairs(student, teacher)
    reference = copy.deepcopy(student)
    history = distill(student, teacher, task, cfg)

    x, y = next(iter(make_task().train))  # the same first batch
    s_names = list(pairs) + [f"{s}.attn.{p}" for s in pairs for p in "qk"]
    t_names = list(pairs.values()) + [f"{t}.attn.{p}" for t in pairs.values() for p in "qk"]
    if arch == "resnet":
        s_names, t_names = list(pairs), list(pairs.values())
    reference.train()
    teacher.eval()
    with FeatureCapture(reference, s_names) as sc, FeatureCapture(teacher, t_names) as tc:
        with torch.no_grad():
            t_out = teacher(x)
        s_out = reference(x)
        feats = [(sc[s], tc[t]) for s, t in pairs.items()]
        terms = {}
        if arch == "vit":
            terms["kd"] = soft_kl(s_out, t_out, 2.0)
            terms["ce"] = nn.functional.cross_entropy(s_out, y)
            terms["mse"] = mse_logits(s_out, t_out)
            terms["hint"] = sum(hint_loss(s, t) for s, t in feats) / 2
            terms["hidden"] = sum(hidden_state_loss(s, t) for s, t in feats) / 2
            terms["attn"] = (
                sum(
                    attention_map_loss(
                        attention_probs(sc[f"{s}.attn.q"], sc[f"{s}.attn.k"], 2),
                        attention_probs(tc[f"{t}.attn.q"], tc[f"{t}.attn.k"], 4),
                    )
                    for s, t in pairs.items()
                )
                / 2
            )
            terms["rkd_distance"] = rkd_distance(s_out, t_out)
            terms["rkd_angle"] = rkd_angle(s_out, t_out)
        else:
            terms["kd"] = soft_kl(s_out, t_out, 4.0)
            terms["hint"] = sum(hint_loss(s, t) for s, t in feats) / 2
            terms["at"] = sum(at_loss(s, t, 2.0) for s, t in feats) / 2
            terms["rkd_distance"] = rkd_distance(feats[-1][0], feats[-1][1])
        total = sum(cfg.weights()[name] * value for name, value in terms.items())
    assert set(history.terms[0]) == set(terms)
    for name, value in terms.items():
        assert history.terms[0][name] == pytest.approx(value.item(), rel=1e-5, abs=1e-7), name
    assert history.losses == [pytest.approx(total.item(), rel=1e-6)]
    optimizer = make_optimizer(reference.parameters(), cfg.train)  # lr factor of step 0 of 1 is 1
    total.backward()
    optimizer.step()
    assert state_close(student, reference, 1e-6)


def resume_config(tmp_path, **kw) -> DistillConfig:
    # 8 batches an epoch: 12 steps cross an epoch boundary; adapters (16 -> 24) are in the checkpoint
    return DistillConfig(
        kd=0.9,
        ce=0.1,
        hint=1.0,
        log_every=1,
        checkpoint_dir=str(tmp_path / "ckpt"),
        train=TrainConfig(epochs=1.5, lr=2e-3, seed=3),
        **kw,
    )


def test_resume_after_an_interruption_ends_where_an_uninterrupted_run_does(tmp_path):
    teacher = vit(4, dim=24, heads=3)
    straight = vit(2, seed=1)
    full = distill(straight, teacher, make_task(), dataclasses.replace(resume_config(tmp_path), checkpoint_dir=None))
    assert full.steps == 12

    calls = []

    def crash_at_11(_m: nn.Module) -> None:
        calls.append(1)
        if len(calls) == 11:
            raise KeyboardInterrupt  # a killed job: the checkpoint of step 10 (epoch 1, batch 2) survives

    interrupted = vit(2, seed=1)
    with pytest.raises(KeyboardInterrupt):
        distill(interrupted, teacher, make_task(), resume_config(tmp_path, checkpoint_every=5), after_step=crash_at_11)
    files = checkpoints(tmp_path / "ckpt")
    assert [f.name for f in files] == ["step-00000005.pt", "step-00000010.pt"]
    assert not [p for p in (tmp_path / "ckpt").iterdir() if p.name.endswith(".tmp")]

    resumed = vit(2, seed=7)  # a fresh process's student: weights come from the checkpoint
    history = distill(resumed, teacher, make_task(), resume_config(tmp_path, checkpoint_every=5, resume=True))
    assert history.resumed_from == 10 and history.steps == 12
    assert state_close(resumed, straight, 1e-6)
    assert history.losses == pytest.approx(full.losses, rel=1e-6)
    assert [f.name for f in checkpoints(tmp_path / "ckpt")] == ["step-00000010.pt", "step-00000012.pt"]

    done = vit(2, seed=9)  # resuming a finished run only loads its final weights
    assert distill(done, teacher, make_task(), resume_config(tmp_path, resume=True)).steps == 12
    assert state_close(done, straight, 0.0)
    with pytest.raises(ValueError, match=r"config differs in \['hint'\]"):
        distill(
            vit(2),
            teacher,
            make_task(),
            dataclasses.replace(resume_config(tmp_path, resume=True), hint=2.0),
        )


def test_amp_on_cpu_trains_in_bfloat16_and_keeps_float32_weights():
    task = make_task()
    student, teacher = vit(2, seed=1), vit(4)
    ref = copy.deepcopy(student)
    cfg = dict(kd=1.0, ce=0.5, hint=1.0, log_every=1, train=TrainConfig(max_steps=2))
    amp = distill(student, teacher, task, DistillConfig(**cfg, amp=True))
    plain = distill(ref, teacher, make_task(), DistillConfig(**cfg))
    assert all(p.dtype == torch.float32 for p in student.parameters())
    assert amp.losses == pytest.approx(plain.losses, rel=0.05)
    assert amp.losses != plain.losses  # it did run in reduced precision


def test_config_and_layer_errors():
    with pytest.raises(ValueError, match="every loss weight is 0"):
        DistillConfig(kd=0.0)
    with pytest.raises(ValueError, match="loss weight hint must be a finite number >= 0, got -1"):
        DistillConfig(hint=-1)
    with pytest.raises(ValueError, match="resume=True needs a checkpoint_dir"):
        DistillConfig(resume=True)
    with pytest.raises(ValueError, match="layers must be a dict or 'auto'"):
        DistillConfig(layers="everything")
    with pytest.raises(ValueError, match="rkd_source must be"):
        DistillConfig(rkd_source="pixels")
    with pytest.raises(ValueError, match=r"feature terms \['hint'\] need layer pairs"):
        distill(init_model("mlp"), init_model("mlp"), make_task(), DistillConfig(hint=1.0))


# --- DDP -----------------------------------------------------------------------------------------

DDP_CONFIG = dict(
    kd=0.8, ce=0.2, hint=1.0, attn=0.5, log_every=1, train=TrainConfig(max_steps=2, lr=0.05, optimizer="sgd")
)


def ddp_batches() -> TensorBatches:
    x, y = synthetic_data(66, 5)
    return TensorBatches(x, y, batch_size=33)  # 33 splits into 17 + 16: unequal shards


def _ddp_worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        student, teacher = vit(2, seed=1), vit(4, dim=24, heads=3)
        history = distill(student, teacher, make_task(), DistillConfig(**DDP_CONFIG), batches=ddp_batches())
        assert no_hooks(student, teacher)
        if rank == 0:
            torch.save({"losses": history.losses, "state": student.state_dict()}, out)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_equal_one_process_on_the_whole_batch(tmp_path):
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_ddp_worker, args=(free_port(), out), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)

    student, teacher = vit(2, seed=1), vit(4, dim=24, heads=3)
    single = distill(student, teacher, make_task(), DistillConfig(**DDP_CONFIG), batches=ddp_batches())
    assert ddp["losses"] == pytest.approx(single.losses, abs=1e-5)
    state = student.state_dict()
    assert all(torch.allclose(ddp["state"][k], state[k], atol=1e-5, rtol=0) for k in state)
    moved = vit(2, seed=1).state_dict()
    assert any(not torch.allclose(moved[k], state[k], atol=1e-3) for k in state)  # the steps did something

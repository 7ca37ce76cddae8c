"""The general distillation trainer: a frozen teacher, a trained student, any weighted mix of losses.

``distill(student, teacher, task, DistillConfig(...))`` trains the student in place on
``task.train`` toward the teacher's logits (``kd``, ``mse``), the task's hard labels (``ce``), the
teacher's intermediate features at mapped layers (``hint``, ``hidden``, ``at``), its attention
maps (``attn``) and the relations between samples (``rkd_distance``, ``rkd_angle``).

- The teacher runs in eval mode under ``torch.no_grad`` with ``requires_grad`` off; its mode and
  flags are restored afterwards, also when training raises.
- Layers: ``DistillConfig.layers`` maps student layer names to teacher layer names, or names a
  kind for ``auto_layer_pairs`` (``"auto"``, ``"blocks"``, ``"stages"``). Feature hooks exist only
  while ``distill`` runs. Attention maps use the q/k projections of the attention module inside
  each mapped layer (``attention_probs`` with that module's ``num_heads``).
- Adapters (``make_adapter``, one per layer pair, shared by ``hint`` and ``hidden``) are built from
  the first batch's feature shapes, trained with the student and discarded at the end.
- Each feature term is the mean over the layer pairs; the loss is ``sum(weight * term)``.
- Training runs on the one engine (``train.engine``) that ``fit`` uses: same optimizer, schedule,
  step count, seeding, hooks, AMP, DDP and checkpoints; distillation is its objective
  (``DistillObjective``).
- ``amp=True``: CUDA autocasts to float16 with a GradScaler; elsewhere (CPU) to bfloat16. Losses
  are computed in float32.
- Checkpoints (``checkpoint_dir``, every ``checkpoint_every`` steps and at the end) hold the
  student, adapters, optimizer, scaler, RNG states, data position, history and config; they are
  written atomically. ``resume=True`` continues from the latest one and ends where an
  uninterrupted run would (the data iterable is replayed to the saved position, so it must give
  the same batches on each pass, as ``TensorBatches`` and seeded DataLoaders do).
- ``torch.distributed``: when a process group is initialized (e.g. under ``torchrun``), the student
  is wrapped in ``DistributedDataParallel``, every rank takes its slice of each batch
  (``shard_batches``), gradients (the adapters' too) are averaged, and each rank's loss is weighted
  by its slice's share of the batch, so one step equals a single-process step on the whole batch
  for losses that are means over samples (RKD terms relate the samples of one slice only). The
  teacher runs locally on each rank. Rank 0 writes the checkpoints; resuming reads them on every
  rank, so ``checkpoint_dir`` must be visible to all ranks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nncompress.distill import losses
from nncompress.distill.features import FeatureCapture, attention_pairs, find_module, resolve_layers
from nncompress.tasks.task import Task, call_model, primary_output
from nncompress.train.engine import (
    AmpContext,
    RunSettings,
    StepHooks,
    TrainHistory,
    TrainingRun,
    checkpoints,
    device_of,
    latest_checkpoint,
    shard_batch,
    to_device,
)
from nncompress.train.loop import TrainConfig

Hook = Callable[[nn.Module], None]

LOGIT_TERMS = ("kd", "ce", "mse")
FEATURE_TERMS = ("hint", "hidden", "at", "attn")
RKD_TERMS = ("rkd_distance", "rkd_angle")
TERMS = LOGIT_TERMS + FEATURE_TERMS + RKD_TERMS
__all__ = [
    "DistillConfig",
    "DistillHistory",
    "DistillLoss",
    "checkpoints",
    "distill",
    "latest_checkpoint",
    "shard_batch",
]


@dataclass(frozen=True)
class DistillConfig:
    """What to distill and how to train.

    Loss weights (0 turns a term off): ``kd`` soft-label KL at ``temperature`` (``soft_kl``), ``ce``
    the task's hard-label loss, ``mse`` logit regression (``mse_logits``), ``hint`` FitNets
    (``hint_loss``), ``hidden`` TinyBERT hidden states (``hidden_state_loss``, (B, T, C) features),
    ``at`` attention transfer with exponent ``at_p`` ((B, C, H, W) features), ``attn`` attention maps
    (``attention_map_loss``), ``rkd_distance``/``rkd_angle`` relational KD on ``rkd_source``
    (``"logits"``, or ``"features"``: the last mapped layer pair's outputs, flattened per sample).

    ``layers``: ``{"student.name": "teacher.name"}`` or a kind for ``auto_layer_pairs``
    (``"auto"``, ``"blocks"``, ``"stages"``); used only by feature terms. ``train``: optimizer,
    schedule and length (``TrainConfig``). ``amp``: mixed precision. ``checkpoint_dir`` /
    ``checkpoint_every`` (steps; 0 = only at the end) / ``checkpoint_keep`` (newest files kept) /
    ``resume``. ``shard_batches``: under ``torch.distributed``, each rank keeps its slice of every
    batch (turn off when the data is already sharded per rank). ``log_every``: steps per entry of
    the history's ``losses``.

    Example:
        >>> DistillConfig(kd=0.9, ce=0.1, hint=1.0, layers="auto", train=TrainConfig(max_steps=100))
        ... # doctest: +ELLIPSIS
        DistillConfig(kd=0.9, temperature=4.0, ce=0.1, ...)
    """

    kd: float = 1.0
    temperature: float = 4.0
    ce: float = 0.0
    mse: float = 0.0
    hint: float = 0.0
    hidden: float = 0.0
    at: float = 0.0
    at_p: float = 2.0
    attn: float = 0.0
    rkd_distance: float = 0.0
    rkd_angle: float = 0.0
    rkd_source: str = "logits"
    layers: Mapping[str, str] | str = "auto"
    train: TrainConfig = field(default_factory=TrainConfig)
    amp: bool = False
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    checkpoint_keep: int = 2
    resume: bool = False
    shard_batches: bool = True
    log_every: int = 50

    def __post_init__(self) -> None:
        for name in TERMS:
            w = getattr(self, name)
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0 or math.isinf(w):
                raise ValueError(f"loss weight {name} must be a finite number >= 0, got {w!r}")
        if not any(getattr(self, name) > 0 for name in TERMS):
            raise ValueError(f"every loss weight is 0; give at least one of {TERMS} a weight > 0")
        for name in ("temperature", "at_p"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{name} must be > 0, got {v!r}")
        if self.rkd_source not in ("logits", "features"):
            raise ValueError(f"rkd_source must be 'logits' or 'features', got {self.rkd_source!r}")
        if isinstance(self.layers, str):
            if self.layers not in ("auto", "blocks", "stages"):
                raise ValueError(f"layers must be a dict or 'auto', 'blocks', 'stages', got {self.layers!r}")
        elif not isinstance(self.layers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.layers.items()
        ):
            raise ValueError(f"layers must map student layer names to teacher layer names, got {self.layers!r}")
        if not isinstance(self.train, TrainConfig):
            raise TypeError(f"train must be a TrainConfig, got {type(self.train).__name__}")
        self.run_settings()  # validates the checkpoint, resume and logging settings

    def weights(self) -> dict[str, float]:
        """The active terms and their weights."""
        return {name: float(getattr(self, name)) for name in TERMS if getattr(self, name) > 0}

    @property
    def uses_features(self) -> bool:
        """Whether any term reads intermediate features (so layers are mapped and hooked)."""
        rkd_features = self.rkd_source == "features" and any(getattr(self, n) > 0 for n in RKD_TERMS)
        return rkd_features or any(getattr(self, n) > 0 for n in FEATURE_TERMS)

    @property
    def uses_logits(self) -> bool:
        """Whether any term reads the student's outputs (else DDP must expect unused parameters)."""
        rkd_logits = self.rkd_source == "logits" and any(getattr(self, n) > 0 for n in RKD_TERMS)
        return rkd_logits or any(getattr(self, n) > 0 for n in LOGIT_TERMS)

    def run_settings(self) -> RunSettings:
        """How the engine runs this distillation: precision, checkpoints, sharding, logging."""
        return RunSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(RunSettings)})

    def to_dict(self) -> dict[str, Any]:
        """Plain values (as stored in checkpoints)."""
        d = dataclasses.asdict(self)
        d["layers"] = self.layers if isinstance(self.layers, str) else dict(self.layers)
        return d


@dataclass
class DistillHistory(TrainHistory):
    """``TrainHistory`` (``losses`` is the weighted total per logged interval, ``terms`` each term's
    unweighted mean, ``steps`` counts all steps including those before a resume) plus the layer pairs used."""

    layers: dict[str, str] = field(default_factory=dict)


class DistillLoss(nn.Module):
    """The weighted sum of the configured terms for one batch; holds the layer pairs and adapters.

    ``forward(s_out, t_out, targets, s_feats, t_feats)`` returns ``(total, {term: value})``; the
    feature dicts map module names to captured outputs (``FeatureCapture.outputs``).
    """

    def __init__(
        self,
        config: DistillConfig,
        task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        pairs: Mapping[str, str],
        attn_pairs: Mapping[str, tuple[str, int, int]],
    ) -> None:
        super().__init__()
        self.config, self.task_loss = config, task_loss
        self.pairs, self.attn_pairs = dict(pairs), dict(attn_pairs)
        self.adapters = nn.ModuleList()
        self.built = False

    def student_names(self) -> list[str]:
        names = list(self.pairs)
        for s in self.attn_pairs:
            names += [f"{s}.q", f"{s}.k"]
        return names

    def teacher_names(self) -> list[str]:
        names = list(self.pairs.values())
        for t, _, _ in self.attn_pairs.values():
            names += [f"{t}.q", f"{t}.k"]
        return names

    def build(self, s_feats: Mapping[str, Any], t_feats: Mapping[str, Any], seed: int) -> None:
        """One adapter per layer pair (``nn.Identity`` when no term needs one or widths agree), with
        weights drawn from ``seed`` (so every rank and every resume builds the same ones)."""
        cfg = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for s, t in self.pairs.items():
                if cfg.hint > 0 or cfg.hidden > 0:
                    sf, tf = _feature(s_feats, s, "student"), _feature(t_feats, t, "teacher")
                    adapter = losses.make_adapter(tuple(sf.shape), tuple(tf.shape)).to(sf.device)
                else:
                    adapter = nn.Identity()
                self.adapters.append(adapter)
        self.built = True

    def forward(
        self,
        s_out: torch.Tensor,
        t_out: torch.Tensor,
        targets: torch.Tensor,
        s_feats: Mapping[str, Any],
        t_feats: Mapping[str, Any],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.config
        s_raw, s_out, t_out = s_out, primary_output(s_out).float(), primary_output(t_out).float()
        t_out = t_out.to(s_out.device)
        terms: dict[str, torch.Tensor] = {}
        if cfg.kd > 0:
            terms["kd"] = losses.soft_kl(s_out, t_out, cfg.temperature)
        if cfg.ce > 0:
            terms["ce"] = self.task_loss(s_raw if not isinstance(s_raw, torch.Tensor) else s_out, targets)
        if cfg.mse > 0:
            terms["mse"] = losses.mse_logits(s_out, t_out)
        feats = (
            [
                (_feature(s_feats, s, "student").float(), _feature(t_feats, t, "teacher").float().to(s_out.device), a)
                for (s, t), a in zip(self.pairs.items(), self.adapters)
            ]
            if cfg.uses_features
            else []
        )
        if cfg.hint > 0:
            terms["hint"] = _mean([losses.hint_loss(sf, tf, a) for sf, tf, a in feats])
        if cfg.hidden > 0:
            terms["hidden"] = _mean([losses.hidden_state_loss(sf, tf, a) for sf, tf, a in feats])
        if cfg.at > 0:
            terms["at"] = _mean([losses.attention_transfer(sf, tf, cfg.at_p) for sf, tf, _ in feats])
        if cfg.attn > 0:
            maps = []
            for s, (t, s_heads, t_heads) in self.attn_pairs.items():
                sp = losses.attention_probs(
                    _feature(s_feats, f"{s}.q", "student").float(),
                    _feature(s_feats, f"{s}.k", "student").float(),
                    s_heads,
                )
                tp = losses.attention_probs(
                    _feature(t_feats, f"{t}.q", "teacher").float(),
                    _feature(t_feats, f"{t}.k", "teacher").float(),
                    t_heads,
                )
                maps.append(losses.attention_map_loss(sp, tp.to(sp.device)))
            terms["attn"] = _mean(maps)
        if cfg.rkd_distance > 0 or cfg.rkd_angle > 0:
            if cfg.rkd_source == "logits":
                s_emb, t_emb = s_out, t_out
            else:
                s_emb, t_emb = feats[-1][0], feats[-1][1]
            if cfg.rkd_distance > 0:
                terms["rkd_distance"] = losses.rkd_distance(s_emb, t_emb)
            if cfg.rkd_angle > 0:
                terms["rkd_angle"] = losses.rkd_angle(s_emb, t_emb)
        weights = cfg.weights()
        total = sum(weights[name] * value for name, value in terms.items())
        return total, terms  # type: ignore[return-value]


def _mean(values: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(values).mean() if len(values) > 1 else values[0]


def _feature(feats: Mapping[str, Any], name: str, side: str) -> torch.Tensor:
    out = feats.get(name)
    if not isinstance(out, torch.Tensor):
        raise ValueError(
            f"the {side}'s layer {name!r} produced no tensor in this forward "
            f"(got {type(out).__name__}); map layers that the forward runs through"
        )
    return out


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode with ``requires_grad`` off for the block; its mode and each parameter's
    flag are restored on exit (also when the block raises)."""
    training, flags = model.training, [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)
    try:
        yield model
    finally:
        model.train(training)
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)


class DistillObjective:
    """The engine's objective for distillation: teacher and student forwards, captured features,
    adapters built from the first batch's feature shapes, and ``DistillLoss``'s weighted terms."""

    def __init__(
        self,
        teacher: nn.Module,
        criterion: DistillLoss,
        s_cap: FeatureCapture,
        t_cap: FeatureCapture,
        seed: int,
    ) -> None:
        self.teacher, self.criterion, self.s_cap, self.t_cap, self.seed = teacher, criterion, s_cap, t_cap, seed
        self.t_device = device_of(teacher) if next(teacher.parameters(), None) is not None else None
        self.term_names = tuple(criterion.config.weights())
        self.find_unused_parameters = not criterion.config.uses_logits
        self.pending_state: Mapping[str, Any] | None = None  # a checkpoint's adapters, until they are built

    def __call__(
        self, model: nn.Module, inputs: Any, targets: Any, amp: AmpContext
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self.s_cap.clear()
        self.t_cap.clear()
        with amp():
            with torch.no_grad():
                t_out = call_model(self.teacher, inputs if self.t_device is None else to_device(inputs, self.t_device))
            s_out = call_model(model, inputs)
        if not self.criterion.built:
            self.criterion.build(self.s_cap.outputs, self.t_cap.outputs, seed=self.seed + 1)
            if self.pending_state is not None:  # resuming: the checkpoint's adapters
                self.criterion.adapters.load_state_dict(self.pending_state)
                self.pending_state = None
        loss, terms = self.criterion(s_out, t_out, targets, self.s_cap.outputs, self.t_cap.outputs)
        self.s_cap.clear()
        self.t_cap.clear()
        return loss, terms

    def parameters(self) -> list[nn.Parameter]:
        return list(self.criterion.adapters.parameters())

    def state_dict(self) -> dict[str, Any]:
        return self.criterion.adapters.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.criterion.built:
            self.criterion.adapters.load_state_dict(state)
        else:
            self.pending_state = state


def distill(
    student: nn.Module,
    teacher: nn.Module,
    task: Task,
    config: DistillConfig | None = None,
    *,
    batches: Iterable[Any] | None = None,
    before_step: Hook | None = None,
    after_step: Hook | None = None,
    description: str = "distill",
) -> DistillHistory:
    """Train ``student`` in place toward the frozen ``teacher`` on ``batches`` (default ``task.train``).

    ``before_step(student)`` runs after the backward pass (before clipping and the optimizer step),
    ``after_step(student)`` after the optimizer step, as in ``fit`` (pruning masks, for example).
    The student is left in eval mode; the teacher's mode and ``requires_grad`` flags are restored.

    Example:
        >>> history = distill(student, teacher, task, DistillConfig(kd=0.9, ce=0.1,
        ...                   train=TrainConfig(epochs=2, lr=1e-3)))  # doctest: +SKIP
    """
    config = config or DistillConfig()
    batches = task.train if batches is None else batches
    criterion = _criterion(student, teacher, task, config)
    with (
        frozen(teacher),
        FeatureCapture(student, criterion.student_names()) as s_cap,
        FeatureCapture(teacher, criterion.teacher_names(), detach=True) as t_cap,
    ):
        objective = DistillObjective(teacher, criterion, s_cap, t_cap, config.train.seed)
        run = TrainingRun(
            student,
            batches,
            config.train,
            objective,
            settings=config.run_settings(),
            run_config=config.to_dict(),
            hooks=StepHooks(before_step, after_step),
            history=DistillHistory(layers=dict(criterion.pairs)),
        )
        return run.run(description)  # type: ignore[return-value]


def _criterion(student: nn.Module, teacher: nn.Module, task: Task, config: DistillConfig) -> DistillLoss:
    """The loss with its layer pairs and attention pairs resolved (errors before anything trains)."""
    pairs = resolve_layers(student, teacher, config.layers) if config.uses_features else {}
    if config.uses_features and not pairs:
        raise ValueError(
            f"the feature terms {[n for n in FEATURE_TERMS if getattr(config, n) > 0]} need layer pairs, but "
            f"layers={config.layers!r} found none for {type(student).__name__} and {type(teacher).__name__}; "
            "give layers={'student.name': 'teacher.name', ...}"
        )
    attn: dict[str, tuple[str, int, int]] = {}  # student attention -> (teacher attention, heads, heads)
    if config.attn > 0:
        for s, t in attention_pairs(student, teacher, pairs).items():
            attn[s] = (t, find_module(student, s).num_heads, find_module(teacher, t).num_heads)
        if not attn:
            raise ValueError(
                f"attn > 0 but no mapped layer pair {pairs} contains an attention module with q/k "
                "projections on both sides"
            )
    return DistillLoss(config, task.loss, pairs, attn)

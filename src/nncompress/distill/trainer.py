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
- Training mirrors ``nncompress.train.fit``: same optimizer, schedule, step count, seeding.
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
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from nncompress.base.checks import check_count
from nncompress.distill import losses
from nncompress.distill.features import FeatureCapture, attention_pairs, find_module, resolve_layers
from nncompress.io.atomic import atomic_path
from nncompress.tasks.task import Task, call_model, primary_output
from nncompress.train.loop import TrainConfig, TrainHistory, lr_factor, make_optimizer, total_steps
from nncompress.train.progress import progress

Hook = Callable[[nn.Module], None]

LOGIT_TERMS = ("kd", "ce", "mse")
FEATURE_TERMS = ("hint", "hidden", "at", "attn")
RKD_TERMS = ("rkd_distance", "rkd_angle")
TERMS = LOGIT_TERMS + FEATURE_TERMS + RKD_TERMS
CHECKPOINT_FORMAT = "nncompress.distill/1"
# settings that may change between an interrupted run and its resumption
_RESUMABLE_CHANGES = ("checkpoint_dir", "checkpoint_every", "checkpoint_keep", "resume", "log_every")


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
        for name, low in (("checkpoint_every", 0), ("checkpoint_keep", 1), ("log_every", 1)):
            check_count(name, getattr(self, name), low)
        if self.resume and not self.checkpoint_dir:
            raise ValueError("resume=True needs a checkpoint_dir")

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

    def to_dict(self) -> dict[str, Any]:
        """Plain values (as stored in checkpoints)."""
        d = dataclasses.asdict(self)
        d["layers"] = self.layers if isinstance(self.layers, str) else dict(self.layers)
        return d


@dataclass
class DistillHistory(TrainHistory):
    """``TrainHistory`` (``losses`` is the weighted total per logged interval, ``steps`` counts all
    steps including those before a resume) plus each term's unweighted mean per logged interval,
    the step this run resumed from (None when it started fresh) and the layer pairs used."""

    terms: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int | None = None
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


# --- batches and devices -------------------------------------------------------------------------


def _map_tensors(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map_tensors(x, fn) for x in obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    return obj


def _to(obj: Any, device: torch.device) -> Any:
    return _map_tensors(obj, lambda t: t.to(device, non_blocking=True))


def _batch_len(obj: Any) -> int | None:
    found: list[int] = []
    _map_tensors(obj, lambda t: found.append(len(t)) if t.dim() else None)
    return found[0] if found else None


def shard_batch(batch: Any, rank: int, world: int) -> Any:
    """Rank ``rank``'s slice of every tensor in a batch (``torch.tensor_split`` along dim 0, so slice
    sizes differ by at most one)."""
    return _map_tensors(batch, lambda t: torch.tensor_split(t, world)[rank] if t.dim() else t)


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    if not amp:
        return contextlib.nullcontext()
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast(device.type, dtype=torch.bfloat16)


# --- checkpoints ---------------------------------------------------------------------------------

_CKPT = re.compile(r"^step-(\d+)\.pt$")


def checkpoints(directory: str | Path) -> list[Path]:
    """The checkpoint files in ``directory``, oldest step first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _CKPT.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest checkpoint in ``directory`` (None when there is none)."""
    found = checkpoints(directory)
    return found[-1] if found else None


def _save_checkpoint(config: DistillConfig, state: dict[str, Any]) -> Path:
    directory = Path(config.checkpoint_dir)  # type: ignore[arg-type]
    path = directory / f"step-{state['step']:08d}.pt"
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    for old in checkpoints(directory)[: -config.checkpoint_keep]:
        old.unlink(missing_ok=True)
    return path


def _check_resumable(saved: Mapping[str, Any], config: DistillConfig, path: Path) -> None:
    now = config.to_dict()
    differ = sorted(k for k in now if k not in _RESUMABLE_CHANGES and saved.get(k) != now[k])
    if differ:
        raise ValueError(
            f"cannot resume from {path}: the config differs in {differ} "
            f"(saved {[saved.get(k) for k in differ]}, now {[now[k] for k in differ]})"
        )


# --- the trainer ---------------------------------------------------------------------------------


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


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _replay(batches: Iterable[Any], epoch: int, pos: int, epoch_rng: torch.Tensor, rng: torch.Tensor) -> Iterator:
    """The data iterator positioned where a checkpoint left off: ``epoch`` passes started (one batch
    each), then the current pass started from its saved RNG state and advanced ``pos`` batches."""
    for _ in range(epoch):
        next(iter(batches), None)
    torch.set_rng_state(epoch_rng)
    it = iter(batches)
    for _ in range(pos):
        next(it)
    torch.set_rng_state(rng)
    return it


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
    resume = _load_resume(config)
    if resume is not None:
        student.load_state_dict(resume["student"])
    with (
        frozen(teacher),
        FeatureCapture(student, criterion.student_names()) as s_cap,
        FeatureCapture(teacher, criterion.teacher_names(), detach=True) as t_cap,
    ):
        run = _Run(student, teacher, criterion, config, batches, s_cap, t_cap, before_step, after_step)
        return run.train(resume, description)


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


def _load_resume(config: DistillConfig) -> dict[str, Any] | None:
    path = latest_checkpoint(config.checkpoint_dir) if config.resume else None  # type: ignore[arg-type]
    if path is None:
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a distillation checkpoint ({CHECKPOINT_FORMAT})")
    _check_resumable(state["config"], config, path)
    return state


class _Run:
    """One training run's state: position (step, epoch, batch in epoch), optimizer, running sums."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        criterion: DistillLoss,
        config: DistillConfig,
        batches: Iterable[Any],
        s_cap: FeatureCapture,
        t_cap: FeatureCapture,
        before_step: Hook | None,
        after_step: Hook | None,
    ) -> None:
        self.student, self.teacher, self.criterion, self.config = student, teacher, criterion, config
        self.batches, self.s_cap, self.t_cap = batches, s_cap, t_cap
        self.before_step, self.after_step = before_step, after_step
        self.train_cfg = config.train
        self.total = total_steps(batches, config.train)
        self.rank, self.world = _distributed()
        self.shard = self.world > 1 and config.shard_batches
        self.device = _device_of(student)
        self.t_device = _device_of(teacher) if next(teacher.parameters(), None) is not None else self.device
        self.scaler = torch.amp.GradScaler("cuda") if config.amp and self.device.type == "cuda" else None
        self.optimizer: torch.optim.Optimizer | None = None
        self.trainable: list[nn.Parameter] = []
        self.resume_state: dict[str, Any] | None = None  # until the optimizer has taken its part
        self.history = DistillHistory(layers=dict(criterion.pairs))
        self.step = self.epoch = self.pos = 0
        self.running, self.running_n = 0.0, 0
        self.running_terms = dict.fromkeys(config.weights(), 0.0)
        self.epoch_rng = torch.get_rng_state()

    def train(self, resume: dict[str, Any] | None, description: str) -> DistillHistory:
        torch.manual_seed(self.train_cfg.seed)
        self.model: nn.Module = self.student
        if self.world > 1:
            self.model = nn.parallel.DistributedDataParallel(
                self.student,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=not self.config.uses_logits,
            )
        it = self._restore(resume) if resume is not None else None
        start = time.perf_counter()
        bar = progress(total=self.total, desc=description) if self.rank == 0 else None
        if bar is not None and self.step:
            bar.update(self.step)
        try:
            self.model.train()
            while self.step < self.total:
                if it is None:
                    self.epoch_rng = torch.get_rng_state()
                    it = iter(self.batches)
                seen = False
                for inputs, targets in it:
                    seen = True
                    self._train_step(inputs, targets)
                    if bar is not None:
                        bar.update(1)
                        if self.history.losses:
                            bar.set_postfix(loss=f"{self.history.losses[-1]:.4f}")
                    if self.step >= self.total:
                        break
                else:
                    if not seen and self.pos == 0:
                        raise ValueError("the training batches are empty")
                    self.epoch, self.pos, it = self.epoch + 1, 0, None
        finally:
            if bar is not None:
                bar.close()
            del self.model  # drops the DDP wrapper (and its reducer) with it
        self.student.eval()
        self.history.steps, self.history.seconds = self.step, time.perf_counter() - start
        return self.history

    def _restore(self, state: dict[str, Any]) -> Iterator | None:
        """Position, history and RNG from a checkpoint (the student's weights are already loaded;
        adapters and optimizer follow once the first batch has built them)."""
        self.resume_state = state
        self.step, self.epoch, self.pos = state["step"], state["epoch"], state["pos"]
        h = state["history"]
        self.history.losses, self.history.terms = list(h["losses"]), list(h["terms"])
        self.history.resumed_from = self.step
        self.running, self.running_terms, self.running_n = h["running"], dict(h["running_terms"]), h["running_n"]
        self.epoch_rng = state["epoch_rng"]
        if self.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        if self.step >= self.total:
            return None
        return _replay(self.batches, self.epoch, self.pos, self.epoch_rng, state["rng"])

    def _setup_optimizer(self) -> None:
        """Adapters from the first batch's feature shapes, then the optimizer over student + adapters."""
        criterion = self.criterion
        if not criterion.built:
            criterion.build(self.s_cap.outputs, self.t_cap.outputs, seed=self.train_cfg.seed + 1)
            if self.world > 1:
                for p in criterion.adapters.parameters():
                    dist.broadcast(p.data, 0)
        params = [*self.student.parameters(), *criterion.adapters.parameters()]
        self.trainable = [p for p in params if p.requires_grad]
        if not self.trainable:
            raise ValueError("the student has no trainable parameters (all have requires_grad=False)")
        self.optimizer = make_optimizer(self.trainable, self.train_cfg)
        state = self.resume_state
        if state is not None:
            criterion.adapters.load_state_dict(state["adapters"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scaler is not None and state.get("scaler") is not None:
                self.scaler.load_state_dict(state["scaler"])
            self.resume_state = None

    def _train_step(self, inputs: Any, targets: Any) -> None:
        config, train = self.config, self.train_cfg
        share = 1.0  # this rank's slice as a fraction of the batch, times the world size
        if self.shard:
            n = _batch_len(targets) or _batch_len(inputs)
            if n is not None and n < self.world:
                raise ValueError(f"a batch of {n} cannot be split over {self.world} ranks")
            inputs = shard_batch(inputs, self.rank, self.world)
            targets = shard_batch(targets, self.rank, self.world)
            if n:
                share = self.world * (_batch_len(targets) or _batch_len(inputs) or 0) / n
        self.s_cap.clear()
        self.t_cap.clear()
        with _autocast(self.device, config.amp):
            with torch.no_grad():
                t_out = call_model(self.teacher, _to(inputs, self.t_device))
            s_out = call_model(self.model, _to(inputs, self.device))
        if self.optimizer is None:
            self._setup_optimizer()
        optimizer = self.optimizer
        assert optimizer is not None
        for group in optimizer.param_groups:
            group["lr"] = train.lr * lr_factor(self.step, self.total, train)
        optimizer.zero_grad(set_to_none=True)
        loss, terms = self.criterion(s_out, t_out, _to(targets, self.device), self.s_cap.outputs, self.t_cap.outputs)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"distillation loss became {loss.item()} at step {self.step}")
        scaled = loss * share  # DDP averages gradients over ranks: sum of share/world = 1
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        self.s_cap.clear()
        self.t_cap.clear()
        if self.world > 1:  # adapters live outside the DDP wrapper: average their gradients as DDP does
            for p in self.criterion.adapters.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world
        if self.before_step is not None:
            self.before_step(self.student)
        if train.grad_clip is not None:
            if self.scaler is not None:
                self.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(self.trainable, train.grad_clip)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        if self.after_step is not None:
            self.after_step(self.student)
        self._record(loss, terms, share)
        self.step += 1
        self.pos += 1
        if self.step % config.log_every == 0 or self.step == self.total:
            n = self.running_n
            self.history.losses.append(self.running / n)
            self.history.terms.append({name: v / n for name, v in self.running_terms.items()})
            self.running, self.running_terms, self.running_n = 0.0, dict.fromkeys(self.running_terms, 0.0), 0
        every = config.checkpoint_every
        if config.checkpoint_dir and (self.step == self.total or (every and self.step % every == 0)):
            self._checkpoint()

    def _record(self, loss: torch.Tensor, terms: Mapping[str, torch.Tensor], share: float) -> None:
        """Add this step's loss and terms (averaged over ranks, weighted by slice) to the running sums."""
        values = torch.stack([loss.detach(), *(terms[n].detach().float() for n in self.running_terms)])
        if self.world > 1:
            values = values * (share / self.world)
            dist.all_reduce(values)
        loss_value, *term_values = values.tolist()
        self.running += loss_value
        for name, v in zip(self.running_terms, term_values):
            self.running_terms[name] += v
        self.running_n += 1

    def _checkpoint(self) -> None:
        if self.rank == 0:
            _save_checkpoint(self.config, self._state_dict())
        if self.world > 1:
            dist.barrier()

    def _state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "epoch": self.epoch,
            "pos": self.pos,
            "epoch_rng": self.epoch_rng,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "student": self.student.state_dict(),
            "adapters": self.criterion.adapters.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "config": self.config.to_dict(),
            "history": {
                "losses": list(self.history.losses),
                "terms": list(self.history.terms),
                "running": self.running,
                "running_terms": dict(self.running_terms),
                "running_n": self.running_n,
            },
        }

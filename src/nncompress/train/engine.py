"""The one training engine: optimizer and schedule, AMP, DDP, hooks, logging, checkpoints and exact resume.

Every training in nncompress runs here: ``fit`` (fine-tuning, QAT, pruning schedules, lottery
rounds, baseline training) with a plain loss, and ``distill`` with a teacher, feature hooks and
adapters. What differs is the **objective** (``Objective``): it computes a batch's loss and its
named terms, and may own parameters of its own (distillation's adapters), built on its first
batch and trained with the model.

- Optimizer, schedule, step count and seeding follow ``TrainConfig`` (``make_optimizer``,
  ``lr_factor``, ``total_steps``). The optimizer is built after the first forward, so that an
  objective's lazily built parameters join it.
- ``RunSettings.amp``: CUDA autocasts to float16 with a GradScaler; elsewhere (CPU) to bfloat16.
- Checkpoints (``checkpoint_dir``, every ``checkpoint_every`` steps and at the end) hold the
  model, the objective's state, optimizer, scaler, RNG states, data position, history and the
  run's settings; they are written atomically. ``resume=True`` continues from the latest one and
  ends where an uninterrupted run would (the data iterable is replayed to the saved position, so
  it must give the same batches on each pass, as ``TensorBatches`` and seeded DataLoaders do).
- ``torch.distributed``: when a process group is initialized (e.g. under ``torchrun``), the model
  is wrapped in ``DistributedDataParallel``, every rank takes its slice of each batch
  (``shard_batches``), gradients (the objective's parameters' too) are averaged, and each rank's
  loss is weighted by its slice's share of the batch, so one step equals a single-process step on
  the whole batch for losses that are means over samples. Rank 0 writes the checkpoints.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from nncompress.base.checks import check_count
from nncompress.base.train_config import TrainConfig
from nncompress.io.atomic import atomic_path
from nncompress.train.progress import progress

Hook = Callable[[nn.Module], None]
AmpContext = Callable[[], contextlib.AbstractContextManager]
CHECKPOINT_FORMAT = "nncompress.train/1"
LEGACY_FORMATS = {"nncompress.distill/1": ("student", "adapters")}  # older checkpoints: (model key, objective key)
# settings that may change between an interrupted run and its resumption
RESUMABLE_CHANGES = ("checkpoint_dir", "checkpoint_every", "checkpoint_keep", "resume", "log_every")


@dataclass
class TrainHistory:
    """What happened: loss per logged interval (and each named term's mean, for objectives that have
    terms), steps taken (including those before a resume), seconds spent, the step resumed from."""

    losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    terms: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int | None = None


@dataclass(frozen=True)
class RunSettings:
    """How a run executes beside its optimizer and length: precision, checkpoints, sharding, logging."""

    amp: bool = False
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0  # steps between checkpoints; 0 = only at the end
    checkpoint_keep: int = 2  # newest files kept
    resume: bool = False
    shard_batches: bool = True  # under torch.distributed, each rank keeps its slice of every batch
    log_every: int = 50  # steps per entry of the history's losses

    def __post_init__(self) -> None:
        for name, low in (("checkpoint_every", 0), ("checkpoint_keep", 1), ("log_every", 1)):
            check_count(name, getattr(self, name), low)
        if self.resume and not self.checkpoint_dir:
            raise ValueError("resume=True needs a checkpoint_dir")


class Objective(Protocol):
    """A batch's loss: ``objective(model, inputs, targets, amp) -> (loss, {term: value})``.

    ``amp()`` is the autocast context the objective wraps its forward passes in. ``term_names``
    are the keys of the terms dict; ``parameters()`` the objective's own trainable parameters
    (valid after its first call); ``state_dict``/``load_state_dict`` their checkpointed state (a
    state loaded before the parameters exist applies when the first call builds them);
    ``find_unused_parameters`` whether DDP must expect model parameters without gradients.
    """

    term_names: tuple[str, ...]
    find_unused_parameters: bool

    def __call__(
        self, model: nn.Module, inputs: Any, targets: Any, amp: AmpContext
    ) -> tuple[torch.Tensor, Mapping[str, torch.Tensor]]: ...

    def parameters(self) -> Iterable[nn.Parameter]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> Any: ...


class LossObjective:
    """A plain loss ``(model, inputs, targets) -> loss``: no terms, no parameters of its own."""

    term_names: tuple[str, ...] = ()
    find_unused_parameters = False

    def __init__(self, loss_fn: Callable[[nn.Module, Any, Any], torch.Tensor]) -> None:
        self.loss_fn = loss_fn

    def __call__(
        self, model: nn.Module, inputs: Any, targets: Any, amp: AmpContext
    ) -> tuple[torch.Tensor, Mapping[str, torch.Tensor]]:
        with amp():
            return self.loss_fn(model, inputs, targets), {}

    def parameters(self) -> list[nn.Parameter]:
        return []

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore."""


# --- batches and devices -------------------------------------------------------------------------


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """``fn`` applied to every tensor of a nested tuple / list / dict batch."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(x, fn) for x in obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    return obj


def to_device(obj: Any, device: torch.device) -> Any:
    """A batch with every tensor on ``device``."""
    return map_tensors(obj, lambda t: t.to(device, non_blocking=True))


def _batch_len(obj: Any) -> int | None:
    found: list[int] = []
    map_tensors(obj, lambda t: found.append(len(t)) if t.dim() else None)
    return found[0] if found else None


def shard_batch(batch: Any, rank: int, world: int) -> Any:
    """Rank ``rank``'s slice of every tensor in a batch (``torch.tensor_split`` along dim 0, so slice
    sizes differ by at most one)."""
    return map_tensors(batch, lambda t: torch.tensor_split(t, world)[rank] if t.dim() else t)


def device_of(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def autocast_for(device: torch.device, amp: bool) -> AmpContext:
    """The autocast context of a run: none, float16 on CUDA, bfloat16 elsewhere."""
    if not amp:
        return contextlib.nullcontext
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return lambda: torch.autocast(device.type, dtype=dtype)


def distributed() -> tuple[int, int]:
    """(rank, world size) of the initialized process group, or (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# --- optimizer and schedule ----------------------------------------------------------------------


def make_optimizer(params: Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD with momentum (nesterov), per the config."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            nesterov=True,
        )
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def lr_factor(step: int, total: int, config: TrainConfig) -> float:
    """Multiplier of the base learning rate at ``step`` of ``total`` (warmup, then the schedule)."""
    warmup = int(total * (0.3 if config.schedule == "onecycle" else config.warmup_fraction))
    if step < warmup:
        return (step + 1) / warmup
    if config.schedule == "constant":
        return 1.0
    progress_ = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_)))


def total_steps(batches: Iterable[Any], config: TrainConfig) -> int:
    """How many optimizer steps a run over ``batches`` takes: epochs x len, capped by max_steps."""
    per_epoch = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
    if per_epoch is None:
        if config.max_steps is None:
            raise ValueError("batches has no len(); give TrainConfig.max_steps")
        return config.max_steps
    total = math.ceil(config.epochs * per_epoch)
    return min(total, config.max_steps) if config.max_steps is not None else total


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


def load_resume(settings: RunSettings, run_config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The latest checkpoint's state when resuming (None otherwise); ValueError when its run differs
    from ``run_config`` in anything but the resumable settings."""
    path = latest_checkpoint(settings.checkpoint_dir) if settings.resume else None  # type: ignore[arg-type]
    if path is None:
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    fmt = state.get("format")
    if fmt in LEGACY_FORMATS:
        model_key, objective_key = LEGACY_FORMATS[fmt]
        state["model"], state["objective"] = state.pop(model_key), state.pop(objective_key)
    elif fmt != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a training checkpoint ({CHECKPOINT_FORMAT})")
    saved = state["config"]
    differ = sorted(k for k in run_config if k not in RESUMABLE_CHANGES and saved.get(k) != run_config[k])
    if differ:
        raise ValueError(
            f"cannot resume from {path}: the config differs in {differ} "
            f"(saved {[saved.get(k) for k in differ]}, now {[run_config[k] for k in differ]})"
        )
    return state


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


# --- the run -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepHooks:
    """Callbacks on the model around each optimizer step (pruning masks, fake-quant ranges, ...)."""

    before_step: Hook | None = None  # after backward, before clipping and the optimizer step
    after_step: Hook | None = None  # after the optimizer step


class TrainingRun:
    """One run's state: position (step, epoch, batch in epoch), optimizer, scaler, running sums."""

    def __init__(
        self,
        model: nn.Module,
        batches: Iterable[Any],
        config: TrainConfig,
        objective: Objective,
        *,
        settings: RunSettings | None = None,
        run_config: Mapping[str, Any] | None = None,
        hooks: StepHooks | None = None,
        params: Iterable[nn.Parameter] | None = None,
        history: TrainHistory | None = None,
    ) -> None:
        self.module, self.batches, self.config, self.objective = model, batches, config, objective
        self.settings = settings or RunSettings()
        self.run_config = dict(run_config) if run_config is not None else {"train": asdict(config)}
        self.hooks = hooks or StepHooks()
        self.params = list(params) if params is not None else None
        self.history = history if history is not None else TrainHistory()
        self.total = total_steps(batches, config)
        self.rank, self.world = distributed()
        self.shard = self.world > 1 and self.settings.shard_batches
        self.device = device_of(model)
        self.amp = autocast_for(self.device, self.settings.amp)
        self.scaler = torch.amp.GradScaler("cuda") if self.settings.amp and self.device.type == "cuda" else None
        self.optimizer: torch.optim.Optimizer | None = None
        self.trainable: list[nn.Parameter] = []
        self.resume_state: dict[str, Any] | None = None  # until the optimizer has taken its part
        self.step = self.epoch = self.pos = 0
        self.running, self.running_n = 0.0, 0
        self.running_terms = dict.fromkeys(objective.term_names, 0.0)
        self.epoch_rng = torch.get_rng_state()

    def run(self, description: str = "train") -> TrainHistory:
        """Train to the configured length (resuming when asked); the model is left in eval mode."""
        torch.manual_seed(self.config.seed)
        resume = load_resume(self.settings, self.run_config)
        if resume is not None:
            self.module.load_state_dict(resume["model"])
        self.model: nn.Module = self.module
        if self.world > 1:
            self.model = nn.parallel.DistributedDataParallel(
                self.module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.objective.find_unused_parameters,
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
        self.module.eval()
        self.history.steps, self.history.seconds = self.step, time.perf_counter() - start
        return self.history

    def _restore(self, state: dict[str, Any]) -> Iterator | None:
        """Position, history, RNG and the objective's state from a checkpoint (the model's weights are
        already loaded; the optimizer's state follows once the first batch has built it)."""
        self.resume_state = state
        self.objective.load_state_dict(state["objective"])  # applied when the objective builds its parameters
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
        """The optimizer over the model's (or the given) parameters plus the objective's own."""
        if self.world > 1:  # the objective's parameters start equal on every rank
            for p in self.objective.parameters():
                dist.broadcast(p.data, 0)
        params = [*(self.params if self.params is not None else self.module.parameters()), *self.objective.parameters()]
        self.trainable = [p for p in params if p.requires_grad]
        if not self.trainable:
            raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
        self.optimizer = make_optimizer(self.trainable, self.config)
        state = self.resume_state
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scaler is not None and state.get("scaler") is not None:
                self.scaler.load_state_dict(state["scaler"])
            self.resume_state = None

    def _shard(self, inputs: Any, targets: Any) -> tuple[Any, Any, float]:
        """This rank's slice of the batch and its share of the batch times the world size (1 unsharded)."""
        if not self.shard:
            return inputs, targets, 1.0
        n = _batch_len(targets) or _batch_len(inputs)
        if n is not None and n < self.world:
            raise ValueError(f"a batch of {n} cannot be split over {self.world} ranks")
        inputs, targets = shard_batch(inputs, self.rank, self.world), shard_batch(targets, self.rank, self.world)
        share = self.world * (_batch_len(targets) or _batch_len(inputs) or 0) / n if n else 1.0
        return inputs, targets, share

    def _train_step(self, inputs: Any, targets: Any) -> None:
        config = self.config
        inputs, targets, share = self._shard(inputs, targets)
        loss, terms = self.objective(
            self.model, to_device(inputs, self.device), to_device(targets, self.device), self.amp
        )
        if self.optimizer is None:
            self._setup_optimizer()
        optimizer = self.optimizer
        assert optimizer is not None
        for group in optimizer.param_groups:
            group["lr"] = config.lr * lr_factor(self.step, self.total, config)
        optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} at step {self.step}")
        scaled = loss * share  # DDP averages gradients over ranks: sum of share/world = 1
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        if self.world > 1:  # the objective's parameters live outside the DDP wrapper: average as DDP does
            for p in self.objective.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world
        if self.hooks.before_step is not None:
            self.hooks.before_step(self.module)
        if config.grad_clip is not None:
            if self.scaler is not None:
                self.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(self.trainable, config.grad_clip)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        if self.hooks.after_step is not None:
            self.hooks.after_step(self.module)
        self._record(loss, terms, share)
        self.step += 1
        self.pos += 1
        self._log_and_checkpoint()

    def _log_and_checkpoint(self) -> None:
        settings = self.settings
        if self.step % settings.log_every == 0 or self.step == self.total:
            n = self.running_n
            self.history.losses.append(self.running / n)
            if self.running_terms:
                self.history.terms.append({name: v / n for name, v in self.running_terms.items()})
            self.running, self.running_terms, self.running_n = 0.0, dict.fromkeys(self.running_terms, 0.0), 0
        every = settings.checkpoint_every
        if settings.checkpoint_dir and (self.step == self.total or (every and self.step % every == 0)):
            if self.rank == 0:
                self._save_checkpoint()
            if self.world > 1:
                dist.barrier()

    def _record(self, loss: torch.Tensor, terms: Mapping[str, torch.Tensor], share: float) -> None:
        """Add this step's loss and terms (averaged over ranks, weighted by slice) to the running sums."""
        values = torch.stack([loss.detach().float(), *(terms[n].detach().float() for n in self.running_terms)])
        if self.world > 1:
            values = values * (share / self.world)
            dist.all_reduce(values)
        loss_value, *term_values = values.tolist()
        self.running += loss_value
        for name, v in zip(self.running_terms, term_values):
            self.running_terms[name] += v
        self.running_n += 1

    def _save_checkpoint(self) -> Path:
        directory = Path(self.settings.checkpoint_dir)  # type: ignore[arg-type]
        path = directory / f"step-{self.step:08d}.pt"
        with atomic_path(path) as tmp:
            torch.save(self.state_dict(), tmp)
        for old in checkpoints(directory)[: -self.settings.checkpoint_keep]:
            old.unlink(missing_ok=True)
        return path

    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs."""
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "epoch": self.epoch,
            "pos": self.pos,
            "epoch_rng": self.epoch_rng,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "model": self.module.state_dict(),
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "config": dict(self.run_config),
            "history": {
                "losses": list(self.history.losses),
                "terms": list(self.history.terms),
                "running": self.running,
                "running_terms": dict(self.running_terms),
                "running_n": self.running_n,
            },
        }

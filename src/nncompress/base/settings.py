"""Settings blocks: frozen ``kw_only`` dataclass mixins that steps are composed of, each checking itself.

A step lists the blocks it uses as bases (``class QAT(TrainSettings, KDSettings, LayerSelection, Step)``),
so a setting is declared and validated once, and recipe files stay flat (``epochs = 2`` sits beside
``bits = 4``). A step that wants another default for a block's setting redeclares it with
:func:`default` (``lr: float = default(1e-5)``). Every block's ``__post_init__`` calls ``super()``, so
all of a step's blocks and ``Step.__post_init__`` (the check of every field against its annotation)
run when the step is built, before any model or data is touched.

Example:
    >>> TrainSettings(epochs=float("inf"))
    Traceback (most recent call last):
    ...
    ValueError: epochs must be a number > 0 and <= 1e+06, got inf
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from nncompress.base.checks import check_choice, check_count, check_flag, check_number
from nncompress.base.selection import normalize_patterns

OPTIMIZERS = ("adamw", "sgd")
MAX_EPOCHS = 1e6  # beyond this a step count overflows; nobody trains a compression step this long


def default(value: Any) -> Any:
    """A keyword-only field default: how a step overrides a block's default (``lr: float = default(1e-5)``)."""
    return field(default=value, kw_only=True)


class SettingsBlock:
    """Base of the blocks: ``__post_init__`` runs the next block's check (cooperative ``super()``)."""

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()


@dataclass(frozen=True, kw_only=True)
class TrainSettings(SettingsBlock):
    """A training run: length (``epochs``, capped by ``max_steps``), optimizer, learning rate, weight decay."""

    epochs: float = 1.0
    lr: float = 5e-4
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    max_steps: int | None = None

    # True where epochs = 0 means "no training" (k-means centroid fine-tuning) rather than a mistake.
    zero_epochs_allowed: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        zero_ok = self.zero_epochs_allowed
        epochs = check_number("epochs", self.epochs, low=0, high=MAX_EPOCHS, low_open=not zero_ok)
        object.__setattr__(self, "epochs", epochs)
        check_number("lr", self.lr, low=0, low_open=True)
        check_number("weight_decay", self.weight_decay, low=0)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        if self.max_steps is not None:
            check_count("max_steps", self.max_steps)


@dataclass(frozen=True, kw_only=True)
class SoftLabels(SettingsBlock):
    """Soft labels from a teacher: ``kd_alpha * T^2 KL + (1 - kd_alpha) * task loss``, T = ``kd_temperature``."""

    kd_alpha: float = 0.9
    kd_temperature: float = 4.0

    def __post_init__(self) -> None:
        super().__post_init__()
        alpha = self.kd_alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ValueError(f"kd_alpha must be in [0, 1] (the soft-label weight; 0 = task loss only), got {alpha!r}")
        t = self.kd_temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < math.inf:
            raise ValueError(f"kd_temperature must be > 0 (and finite), got {t!r}")


@dataclass(frozen=True, kw_only=True)
class KDSettings(SoftLabels):
    """Knowledge distillation while training (``SoftLabels``), with the model before compression as
    teacher when ``distill`` is set."""

    distill: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_flag("distill", self.distill)


@dataclass(frozen=True, kw_only=True)
class Exclusions(SettingsBlock):
    """``exclude``: module names or regexes (``base.selection``) left as they are, with their children."""

    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "exclude", normalize_patterns(self.exclude, "exclude"))


@dataclass(frozen=True, kw_only=True)
class KeepFirstConv(SettingsBlock):
    """``keep_first_conv``: leave the first convolution (small, and it sees the raw input) as it is."""

    keep_first_conv: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_flag("keep_first_conv", self.keep_first_conv)


@dataclass(frozen=True, kw_only=True)
class KeepClassifier(SettingsBlock):
    """``keep_classifier``: leave the last Linear (the classifier or LM head, small and sensitive) as it is."""

    keep_classifier: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_flag("keep_classifier", self.keep_classifier)


@dataclass(frozen=True, kw_only=True)
class LayerSelection(KeepFirstConv, KeepClassifier, Exclusions):
    """``exclude`` plus the edge layers kept: the first convolution and the last Linear (the classifier)."""


@dataclass(frozen=True, kw_only=True)
class LayerPatterns(Exclusions):
    """``layers`` (names or regexes, ``base.selection``; empty: every layer the step handles) minus ``exclude``."""

    layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "layers", normalize_patterns(self.layers, "layers"))


@dataclass(frozen=True, kw_only=True)
class LinearSelection(KeepClassifier, LayerPatterns):
    """The Linear layers of a one-shot (LLM) step: ``layers`` minus ``exclude``, and the last Linear
    (the LM head) kept unless ``keep_classifier`` is False. ``convs``: Conv1d/Conv2d layers (groups 1)
    are compressed too, as the matrices they multiply (``base.conv_as_linear``)."""

    convs: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_flag("convs", self.convs)


@dataclass(frozen=True, kw_only=True)
class CalibrationSettings(SettingsBlock):
    """``calibration_batches``: how many train batches a data-driven step reads."""

    calibration_batches: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        check_count("calibration_batches", self.calibration_batches)


_SCALARS = {"bool", "int", "float", "str", "None"}
_ACCEPTED = {"bool": "True or False", "int": "an integer", "float": "a finite number", "str": "a string"}


def _fits(value: Any, kind: str) -> bool:
    """Whether ``value`` is a real ``kind`` (no bool for int/float, no nan/inf for float)."""
    if kind == "None":
        return value is None
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, str)


def check_fields(obj: Any) -> None:
    """Raise ValueError for a dataclass field whose value does not fit its scalar annotation (``bool``,
    ``int``, ``float``, ``str``, unions of them with None): "yes" for a bool, 1.5 or True for an int,
    nan or inf for a float. Other annotations (tuples, mappings) are left to the step's own checks."""
    for f in dataclasses.fields(obj):
        annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        kinds = [k.strip() for k in annotation.split("|")]
        if not set(kinds) <= _SCALARS:
            continue
        value = getattr(obj, f.name)
        if any(_fits(value, k) for k in kinds):
            continue
        accepted = " or ".join(_ACCEPTED.get(k, "None") for k in kinds)
        raise ValueError(f"{f.name} must be {accepted}, got {value!r}")


def check_exclusive(obj: Any, pairs: tuple[tuple[str, str], ...]) -> None:
    """Raise ValueError when both settings of a pair are given (not None): they contradict each other."""
    for a, b in pairs:
        if getattr(obj, a) is not None and getattr(obj, b) is not None:
            raise ValueError(
                f"give {a} or {b}, not both (got {a}={getattr(obj, a)!r}, {b}={getattr(obj, b)!r}); "
                f"set the other to None"
            )


@dataclass(frozen=True, kw_only=True)
class BlockCalibration(CalibrationSettings):
    """Calibration of the one-shot steps that run a model block by block (GPTQ, AWQ, SmoothQuant,
    Wanda, SparseGPT): ``calibration_batches`` train batches, and ``blocks``, the block list (None:
    found automatically; "" the whole model is one block)."""

    calibration_batches: int = 8
    blocks: str | None = None

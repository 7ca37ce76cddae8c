"""Step: a frozen dataclass of settings whose ``apply`` transforms a model, plus the registry.

Registering a step (``@register_step``) makes it available to the Python API, recipe files,
the CLI (``nncompress steps``) and the registry-wide contract tests.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from torch import nn

from nncompress.base.settings import SettingsBlock, check_exclusive, check_fields
from nncompress.core.catalog import step_modules

if TYPE_CHECKING:
    from nncompress.tasks.task import Task


@dataclass
class StepContext:
    """What a step may use besides the model: the task, the original model, shared state.

    ``masks`` maps parameter names to boolean keep-masks; every step that trains re-applies them,
    so weights pruned earlier stay zero. ``teacher`` is the model before compression began.
    """

    task: Task
    teacher: nn.Module | None = None
    seed: int = 0
    masks: dict[str, Any] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class WeightFormat:
    """What the weight layers are after a step: recipes check each step accepts what came before."""

    name: str
    description: str


FLOAT, INT_CODES = "float", "int-codes"
WEIGHT_FORMATS: dict[str, WeightFormat] = {
    f.name: f
    for f in (
        WeightFormat(FLOAT, "float nn.Linear/nn.Conv2d weights that can be trained, pruned and factorized"),
        WeightFormat(INT_CODES, "low-bit integer codes packed in buffers; only their step sizes train (scale-tune)"),
        WeightFormat("codebook", "k-means cluster codes packed in buffers, not trainable"),
        WeightFormat("binary", "1-bit signs packed in buffers, not trainable"),
        WeightFormat("float16", "float16 weights in buffers, not trainable"),
        WeightFormat("int8-runtime", "int8 kernels of torch.ao or ONNX Runtime, not PyTorch layers"),
    )
}


@dataclass(frozen=True)
class Step:
    """Base class of every compression step. Subclasses are frozen dataclasses of settings.

    ``kind`` is the step's stable name in recipes and reports; ``family`` groups steps
    (prune, quantize, distill, lowrank, train). ``accepts`` names the weight formats the step can
    start from and ``produces`` the one it leaves (None: the format it was given), so a recipe
    that, e.g., prunes after packing weights to low-bit codes is refused before anything runs
    (``core/recipe.py``, ``check_order``).
    """

    kind: ClassVar[str] = ""
    family: ClassVar[str] = ""
    accepts: ClassVar[frozenset[str]] = frozenset({FLOAT})
    produces: ClassVar[str | None] = None
    # Pairs of settings that contradict each other when both are given (not None).
    exclusive: ClassVar[tuple[tuple[str, str], ...]] = ()
    # Old setting name -> new one: recipe files written before a rename still load (``step_from_dict``).
    renamed_settings: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        """Run the checks of the settings blocks the step is composed of (``base.settings``); a
        subclass's ``__post_init__`` calls ``super().__post_init__()`` first."""
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()

    def check_settings(self) -> None:
        """The checks every step gets, run when it is built (after its own ``__post_init__``, whose
        messages are more specific): each field against its annotation (real bools, integers, finite
        numbers) and no two ``exclusive`` settings given together."""
        check_fields(self)
        check_exclusive(self, self.exclusive)

    def apply(self, model: nn.Module, ctx: StepContext) -> nn.Module:
        """Return the transformed model (may modify ``model`` in place and return it)."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """The step's settings as plain JSON-able values: its own first, then its blocks'."""
        return {name: getattr(self, name) for name in setting_names(type(self))}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.settings().items())})"

    def describe(self) -> dict[str, Any]:
        """``{"kind": ..., "settings": {...}}`` as written into reports and artifacts."""
        return {"kind": self.kind, "settings": self.settings()}


def setting_names(cls: type) -> list[str]:
    """A step's field names, those it declares first and then those of its settings blocks
    (``base.settings``), so a repr or a report leads with what is particular to the step."""
    names = [f.name for f in dataclasses.fields(cls)]
    blocks = {
        f.name
        for base in cls.__mro__
        if issubclass(base, SettingsBlock) and not issubclass(base, Step) and dataclasses.is_dataclass(base)
        for f in dataclasses.fields(base)
    }
    return [n for n in names if n not in blocks] + [n for n in names if n in blocks]


STEPS: dict[str, type[Step]] = {}
S = TypeVar("S", bound=type[Step])

# Modules whose import registers the built-in steps (from the step table, ``core/catalog.py``). They
# are imported on first lookup, not with the package, so loading an artifact does not pull in
# compression code.
BUILTIN_STEP_MODULES = step_modules()


def builtin_steps() -> dict[str, type[Step]]:
    """The registry with every built-in step registered (imports their modules once)."""
    import importlib

    for module in BUILTIN_STEP_MODULES:
        importlib.import_module(module)
    return STEPS


def register_step(
    kind: str, family: str, *, produces: str | None = None, accepts: tuple[str, ...] | None = None
) -> Callable[[S], S]:
    """Class decorator: give the step its recipe name and add it to the registry.

    ``produces``/``accepts`` declare the weight formats (``WEIGHT_FORMATS``) the step leaves and
    can start from. Quantize-family steps that declare none leave ``"int-codes"``; other steps
    keep the format they were given. Every step accepts ``"float"`` only unless it says otherwise.
    """
    for name in ((produces,) if produces else ()) + (accepts or ()):
        if name not in WEIGHT_FORMATS:
            raise ValueError(f"unknown weight format {name!r}; known: {', '.join(WEIGHT_FORMATS)}")

    def deco(cls: S) -> S:
        if kind in STEPS:
            raise ValueError(f"step kind {kind!r} is already registered by {STEPS[kind].__name__}")
        _check_after_init(cls)
        cls.kind, cls.family = kind, family
        if produces is not None:
            cls.produces = produces
        elif family == "quantize" and cls.produces is None:
            cls.produces = INT_CODES
        if accepts is not None:
            cls.accepts = frozenset(accepts)
        STEPS[kind] = cls
        return cls

    return deco


def _check_after_init(cls: type[Step]) -> None:
    """Make ``cls(...)`` run ``check_settings`` once its dataclass ``__init__`` (and ``__post_init__``) is done."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self: Step, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.check_settings()

    cls.__init__ = __init__  # type: ignore[method-assign]
    cls.__repr__ = Step.__repr__  # type: ignore[method-assign]  # the dataclass repr puts block fields first


def step_from_dict(data: dict[str, Any]) -> Step:
    """Build a step from ``{"kind": name, **settings}`` (the form used in recipe files)."""
    data = dict(data)
    builtin_steps()
    kind = data.pop("kind", None) or data.pop("type", None)
    if kind is None:
        raise ValueError(f"a step needs a 'kind' (one of: {', '.join(sorted(STEPS))}); got {data}")
    if kind not in STEPS:
        raise ValueError(f"unknown step kind {kind!r}; known: {', '.join(sorted(STEPS))}")
    cls = STEPS[kind]
    for old, new in cls.renamed_settings.items():  # recipe files written before a rename
        if old in data and new not in data:
            data[new] = data.pop(old)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(
            f"step {kind!r} has no setting(s) {', '.join(sorted(unknown))}; "
            f"accepted: {', '.join(sorted(names)) or '(none)'}"
        )
    try:
        return cls(**data)
    except TypeError as e:
        raise ValueError(f"step {kind!r}: {e}") from e

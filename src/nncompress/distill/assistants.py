"""Teacher assistants (Mirzadeh et al. 2020, "Improved Knowledge Distillation via Teacher
Assistant"): when the student is much smaller than the teacher, distill through intermediate
models, teacher -> TA_1 -> ... -> student, each stage taught by the previous stage's trained model.

Assistant sizes are spaced geometrically in parameter count between teacher and student (one TA:
the geometric mean), and each assistant is the largest ``student_for`` the teacher within its size.
The ``distill-student`` step builds the student (and assistants) from the model it is given and
runs the chain with the ``distill`` step's loss and training loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from nncompress.base.checks import check_count
from nncompress.core.step import StepContext, register_step
from nncompress.distill.recovery import Distill
from nncompress.distill.students import INITS, student_for
from nncompress.measure.size import count_params
from nncompress.prune.structured import example_inputs as task_example_inputs


def assistant_sizes(teacher_params: float, student_params: float, steps: int = 1) -> list[float]:
    """Target parameter counts of ``steps`` assistants, largest first, spaced geometrically:
    ``teacher * (student / teacher) ** (k / (steps + 1))`` for ``k = 1..steps``.

    One assistant gets ``sqrt(teacher * student)``; every size lies strictly between the two.

    Example:
        >>> assistant_sizes(1_000_000, 10_000, steps=1)
        [100000.0]
    """
    check_count("steps", steps, 0)
    if not 0 < student_params < teacher_params:
        raise ValueError(
            f"need 0 < student_params < teacher_params, got student {student_params!r}, teacher {teacher_params!r}"
        )
    ratio = student_params / teacher_params
    return [float(teacher_params * ratio ** (k / (steps + 1))) for k in range(1, steps + 1)]


def assistant_chain(
    teacher: nn.Module,
    student: nn.Module | int,
    steps: int = 1,
    *,
    example_inputs: Any,
    init: str = "teacher",
    grid: float = 0.05,
    seed: int = 0,
) -> list[tuple[nn.Module, str]]:
    """``steps`` assistants between ``teacher`` and ``student`` (a model or its parameter count),
    largest first: for each size of ``assistant_sizes``, the ``student_for`` the teacher within it,
    initialized from the teacher's weights (``init="teacher"``) or afresh (``"random"``).

    Returns ``[(assistant, description), ...]``. ValueError when the sizes do not come out
    strictly decreasing between teacher and student (too many assistants for the grid).

    Example:
        >>> [how for _, how in assistant_chain(vit, student, 1, example_inputs=x)]  # doctest: +SKIP
        ['every other block (4 -> 2), width 0.95: 67,250 params (48.4% of 139,018)']
    """
    total = count_params(teacher)
    small = student if isinstance(student, int) and not isinstance(student, bool) else None
    if small is None:
        if not isinstance(student, nn.Module):
            raise TypeError(f"student must be an nn.Module or a parameter count, got {type(student).__name__}")
        small = count_params(student)
    chain, previous = [], total
    for k, size in enumerate(assistant_sizes(total, small, steps), 1):
        model, how = student_for(teacher, size / total, example_inputs=example_inputs, init=init, grid=grid, seed=seed)
        n = count_params(model)
        if not small < n < previous:
            raise ValueError(
                f"assistant {k} of {steps} has {n:,} params, not strictly between {small:,} (the student) "
                f"and {previous:,} (the model before it): use fewer assistants or a finer grid"
            )
        chain.append((model, how))
        previous = n
    return chain


@register_step("distill-student", family="distill")
@dataclass(frozen=True)
class DistillStudent(Distill):
    """Replace the model by a smaller student derived from it, trained by knowledge distillation,
    optionally through teacher assistants (Mirzadeh et al. 2020).

    The student is ``student_for(model, max_param_ratio)``: a transformer keeps every other
    block, then (like any CNN or MLP) the largest width on a 0.05 grid within the budget; with
    ``init="teacher"`` it starts from the model's weights (DistilBERT-style), with ``"random"``
    from fresh ones. ``assistants`` intermediate models, sized geometrically in parameters, come
    between: the model teaches TA_1, TA_1 (trained) teaches TA_2, ..., the last teaches the student.
    Every stage trains with ``distill``'s loss and settings (epochs, lr, optimizer, weight_decay,
    max_steps, kd_alpha, kd_temperature), each for the full length. Earlier pruning masks are dropped:
    the student has new shapes.

    Args:
        max_param_ratio: the student's largest parameter count, as a fraction of the model's, in (0, 1).
        assistants: how many teacher assistants (0: distill the student directly).
        init: ``"teacher"`` or ``"random"``.

    Example:
        >>> DistillStudent(max_param_ratio=0.25, assistants=1, max_steps=100)  # doctest: +ELLIPSIS
        DistillStudent(max_param_ratio=0.25, assistants=1, init='teacher', epochs=1.0, ...)
    """

    max_param_ratio: float = 0.25
    assistants: int = 0
    init: str = "teacher"

    def __post_init__(self) -> None:
        super().__post_init__()
        r = self.max_param_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 1:
            raise ValueError(f"max_param_ratio must be a fraction in (0, 1), got {r!r}")
        check_count("assistants", self.assistants, 0)
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(map(repr, INITS))}; got {self.init!r}")

    def apply(self, model: nn.Module, ctx: StepContext) -> nn.Module:
        inputs = task_example_inputs(model, ctx.task)
        student, how = student_for(model, self.max_param_ratio, example_inputs=inputs, init=self.init, seed=ctx.seed)
        chain = assistant_chain(model, student, self.assistants, example_inputs=inputs, init=self.init, seed=ctx.seed)
        stages = [*chain, (student, how)]
        if ctx.masks:
            ctx.log.append(f"{self.kind}: dropped {len(ctx.masks)} pruning masks (the student has new shapes)")
            ctx.masks.clear()
        teacher = model
        for i, (stage, desc) in enumerate(stages, 1):
            role = "student" if i == len(stages) else f"assistant {i}"
            ctx.log.append(f"{self.kind}: stage {i}/{len(stages)}: {role}, {desc}")
            sub = StepContext(task=ctx.task, teacher=teacher, seed=ctx.seed, log=ctx.log)
            stage = super().apply(stage, sub)
            teacher = stage
        return teacher

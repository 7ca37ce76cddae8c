"""Which weights a pruning step may touch: Linear and Conv weights, minus configured exclusions."""

from __future__ import annotations

from torch import nn

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_weights(
    model: nn.Module,
    *,
    keep_first_conv: bool = True,
    keep_classifier: bool = True,
    exclude: tuple[str, ...] = (),
) -> dict[str, nn.Parameter]:
    """``{"<module>.weight": parameter}`` for the Linear/Conv layers a pruner may sparsify."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE)]
    skip = set(exclude)
    known = {n for n, _ in layers}
    unknown = skip - {n for n, _ in model.named_modules()}
    if unknown:
        raise ValueError(
            f"exclude names no module: {', '.join(sorted(unknown))}; Linear/Conv modules are: "
            f"{', '.join(sorted(known))}"
        )
    convs = [n for n, m in layers if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    linears = [n for n, m in layers if isinstance(m, nn.Linear)]
    if keep_first_conv and convs:
        skip.add(convs[0])
    if keep_classifier and linears:
        skip.add(linears[-1])
    return {f"{n}.weight": m.weight for n, m in layers if n not in skip}

"""In-memory mini-batch iterables: the cheap, reproducible DataLoader for tensors already in RAM."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import torch

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class TensorBatches:
    """Iterates ``(inputs, targets)`` batches over two tensors, optionally shuffled and augmented.

    Each epoch's shuffle order comes from ``seed`` and the epoch number, so a run is reproducible
    however many times the iterable is consumed (unlike a DataLoader with a global generator).
    ``inputs`` may be a tuple of tensors of equal length (e.g. token ids and attention mask): each
    batch's inputs are then the tuple of their rows, which ``call_model`` passes as positional args.

    Example:
        >>> batches = TensorBatches(torch.zeros(10, 3), torch.zeros(10), batch_size=4)
        >>> [len(x) for x, _ in batches]
        [4, 4, 2]
    """

    def __init__(
        self,
        inputs: torch.Tensor | tuple[torch.Tensor, ...],
        targets: torch.Tensor,
        *,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        augment: Augment | None = None,
        drop_last: bool = False,
    ) -> None:
        lengths = [len(x) for x in inputs] if isinstance(inputs, tuple) else [len(inputs)]
        if any(n != len(targets) for n in lengths):
            raise ValueError(f"inputs and targets differ in length ({lengths} vs {len(targets)})")
        if isinstance(inputs, tuple) and augment is not None:
            raise ValueError("augment applies to a single input tensor, not a tuple of inputs")
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        self.inputs, self.targets = inputs, targets
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.augment, self.drop_last = augment, drop_last
        self._epoch = 0

    def __len__(self) -> int:
        n = len(self.targets)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self._epoch)
        self._epoch += 1
        n = len(self.targets)
        order = torch.randperm(n, generator=gen) if self.shuffle else None
        for b in range(len(self)):
            sl = slice(b * self.batch_size, min(n, (b + 1) * self.batch_size))
            rows = order[sl] if order is not None else sl
            x = tuple(t[rows] for t in self.inputs) if isinstance(self.inputs, tuple) else self.inputs[rows]
            y = self.targets[rows]
            if self.augment is not None:
                x = self.augment(x, gen)
            yield x, y

    def reset(self) -> None:
        """Restart the epoch counter, so the next pass repeats the first epoch's order."""
        self._epoch = 0

    def reseeded(self, seed: int) -> TensorBatches:
        """The same batches, shuffled and augmented in an order that also depends on ``seed`` (a
        run's seed: without it, every seed of a fine-tuning run would see the data in one order).
        Seed 0 gives these batches themselves, so seed-0 runs keep their order."""
        if seed == 0:
            return self
        out = copy.copy(self)  # shares the tensors
        out.seed = self.seed * 1_000_003 + seed
        return out

    def subset(self, count: int) -> TensorBatches:
        """The first ``count`` samples as unshuffled, unaugmented batches (for calibration)."""
        inputs = tuple(t[:count] for t in self.inputs) if isinstance(self.inputs, tuple) else self.inputs[:count]
        return TensorBatches(inputs, self.targets[:count], batch_size=self.batch_size)


def random_crop_flip(padding: int = 2, flip: bool = True) -> Augment:
    """Batch-level random translation (pad + crop) and horizontal flip for image tensors (N,C,H,W)."""

    def apply(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        padded = torch.nn.functional.pad(x, (padding,) * 4)
        dy, dx = torch.randint(0, 2 * padding + 1, (2,), generator=gen).tolist()
        out = padded[:, :, dy : dy + h, dx : dx + w]
        if flip:
            mask = torch.rand(n, generator=gen) < 0.5
            out = torch.where(mask[:, None, None, None], out.flip(3), out)
        return out.contiguous()

    return apply

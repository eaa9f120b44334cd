"""The batch order of a ``torch.utils.data.DataLoader``, as the (T, B) index array a recipe needs.

Two ways, one mechanism (the loader's own sampler is wrapped so that every index it hands out
is recorded):

* :func:`record_batches` around the user's own training loop records the order that loop saw::

      with record_batches(loader) as order:
          for epoch in range(epochs):
              for xb, yb in loader:
                  ...
      batches = order.batches                     # (T, B)

* :func:`loader_batches` replays ``epochs`` passes without training and restores every random
  number generator involved, so a loop run afterwards draws the same order.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np
import torch


class _RecordingSampler:
    """Wraps a sampler: yields its indices unchanged and appends each epoch's to ``log``."""

    def __init__(self, sampler: Any, log: list) -> None:
        self.sampler, self.log = sampler, log

    def __iter__(self) -> Iterator[int]:
        epoch: list[int] = []
        self.log.append(epoch)
        for i in self.sampler:
            epoch.append(int(i))
            yield i

    def __len__(self) -> int:
        return len(self.sampler)


class BatchOrder:
    """The indices a DataLoader handed out, epoch by epoch (filled by :func:`record_batches`).

    Attributes:
        epochs: one list of sample indices per pass over the loader.
        batch_size, drop_last: the loader's batching.
    """

    def __init__(self, batch_size: int, drop_last: bool) -> None:
        self.epochs: list[list[int]] = []
        self.batch_size, self.drop_last = int(batch_size), bool(drop_last)

    @property
    def batches(self) -> np.ndarray:
        """(T, B) int64: the batches of every recorded epoch, in order."""
        rows = []
        for e, idx in enumerate(self.epochs):
            n_full, rem = divmod(len(idx), self.batch_size)
            if rem and not self.drop_last:
                raise ValueError(f"epoch {e} ends with a batch of {rem} < {self.batch_size} samples; trainmap "
                                 "needs batches of one size: build the DataLoader with drop_last=True")
            if n_full:
                rows.append(np.asarray(idx[: n_full * self.batch_size], np.int64).reshape(n_full, self.batch_size))
        if not rows:
            raise ValueError("no batch was recorded: iterate the loader inside the record_batches block")
        return np.concatenate(rows)


@contextlib.contextmanager
def record_batches(loader: Any) -> Iterator[BatchOrder]:
    """Record the sample indices ``loader`` hands out while the block runs (see the module doc).

    Args:
        loader: a ``torch.utils.data.DataLoader`` with automatic batching (``batch_size`` set) over a
            map-style dataset.

    Yields:
        A :class:`BatchOrder`; read ``.batches`` ((T, B) int64) after the block.
    """
    bs = getattr(loader, "batch_sampler", None)
    if not isinstance(loader, torch.utils.data.DataLoader) or bs is None or not hasattr(bs, "sampler"):
        raise ValueError("record_batches needs a torch DataLoader built with batch_size=... (automatic "
                         "batching over a map-style dataset); pass the batch order as a (T, B) index array instead")
    order = BatchOrder(loader.batch_size, loader.drop_last)
    original = bs.sampler
    bs.sampler = _RecordingSampler(original, order.epochs)
    try:
        yield order
    finally:
        bs.sampler = original


def loader_batches(loader: Any, epochs: int) -> np.ndarray:
    """The (T, B) batch order of ``epochs`` passes over ``loader``, without changing what it draws next.

    The loader is iterated (its data loaded) ``epochs`` times inside :func:`record_batches`; torch's
    global generator and the loader's and sampler's own generators are then restored, so a
    training loop started afterwards sees exactly these batches.
    """
    if int(epochs) < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    gens = [g for g in (getattr(loader, "generator", None),
                        getattr(getattr(loader, "sampler", None), "generator", None)) if g is not None]
    saved_global, saved = torch.get_rng_state(), [g.get_state() for g in gens]
    try:
        with record_batches(loader) as order:
            for _ in range(int(epochs)):
                for _ in loader:
                    pass
    finally:
        torch.set_rng_state(saved_global)
        for g, s in zip(gens, saved):
            g.set_state(s)
    return order.batches

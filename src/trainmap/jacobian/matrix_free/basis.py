"""Where a block Lanczos run keeps its Krylov basis: in memory, or in files on disk.

A basis is an append-only sequence of (b, P) blocks (the orthonormal blocks Q_j, or their
images J Q_j). The Lanczos step only needs two things from it: append a block, and sweep over
all blocks in order (reorthogonalisation, Ritz vectors). Both stores do that in the operator's
dtype, without converting a block to another precision:

* :class:`MemoryBlocks` keeps one contiguous (capacity, P) array, so a sweep is one matrix
  product with the whole basis;
* :class:`DiskBlocks` keeps each block in its own ``.npy`` file (the run's checkpoint files) and
  maps one block at a time during a sweep, so the resident memory of the basis is one block,
  however long the run. The files are written atomically; their checksums are verified when a
  run resumes (:class:`~trainmap.jacobian.matrix_free.pipeline.LanczosCheckpoint`), not on every
  sweep, since the run itself wrote them;
* :class:`HalfBlocks` keeps the last two blocks exactly and every older one in float16: a quarter
  of the memory of a float32 basis with its J-side blocks, and a loss of orthogonality bounded by
  the rounding of the stored copies (about 2⁻¹¹);
* :class:`WindowBlocks` keeps only the last few blocks: a run that needs no Ritz vectors (SLQ
  counts) then orthogonalises each new block against its neighbours only, at a memory of a few
  blocks for any number of steps, and loses global orthogonality (reported by
  :func:`~trainmap.jacobian.matrix_free.lanczos.orthogonality_loss`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np

from trainmap._io import atomic_save_npy


class BlockStore(Protocol):
    """An append-only list of (b, P) blocks with an in-order sweep."""

    def __len__(self) -> int: ...

    @property
    def rows(self) -> int:
        """Rows in all blocks together."""
        ...

    def append(self, block: np.ndarray) -> None: ...

    def __getitem__(self, j: int) -> np.ndarray: ...

    def sweep(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_row, rows)``: consecutive row groups (g, P) covering the whole basis."""
        ...


class MemoryBlocks:
    """Blocks in one contiguous, growing (capacity, P) array (rows appended in place).

    Args:
        capacity_blocks: blocks to reserve room for (the array grows by doubling past it).
    """

    def __init__(self, capacity_blocks: int = 0) -> None:
        self._rows: np.ndarray | None = None
        self._n = 0  # filled rows
        self._b = 0
        self._capacity_blocks = max(int(capacity_blocks), 1)

    def __len__(self) -> int:
        return self._n // self._b if self._b else 0

    @property
    def rows(self) -> int:
        return self._n

    def append(self, block: np.ndarray) -> None:
        block = np.asarray(block)
        if self._rows is None:
            self._b = block.shape[0]
            self._rows = np.empty((self._capacity_blocks * self._b, block.shape[1]), dtype=block.dtype)
        if block.shape[0] != self._b:
            raise ValueError(f"blocks must all have {self._b} rows, got {block.shape[0]}")
        if self._n + self._b > self._rows.shape[0]:
            grown = np.empty((2 * self._rows.shape[0], self._rows.shape[1]), dtype=self._rows.dtype)
            grown[: self._n] = self._rows[: self._n]
            self._rows = grown
        self._rows[self._n:self._n + self._b] = block
        self._n += self._b

    def __getitem__(self, j: int) -> np.ndarray:
        j = _index(j, len(self))
        assert self._rows is not None
        return self._rows[j * self._b:(j + 1) * self._b]

    def sweep(self) -> Iterator[tuple[int, np.ndarray]]:
        if self._n:
            assert self._rows is not None
            yield 0, self._rows[: self._n]


class DiskBlocks:
    """Blocks stored as ``folder/{prefix}_{j:04d}.npy``, mapped one at a time when read.

    ``append`` writes the file atomically unless it already exists (a checkpoint may have written
    it as the run's next block); ``j < len(self)`` are the blocks of the run.
    """

    def __init__(self, folder: Path, prefix: str, block_rows: int, count: int = 0) -> None:
        self.folder, self.prefix, self._b, self._n = Path(folder), prefix, int(block_rows), int(count)

    def path(self, j: int) -> Path:
        return self.folder / f"{self.prefix}_{j:04d}.npy"

    def __len__(self) -> int:
        return self._n

    @property
    def rows(self) -> int:
        return self._n * self._b

    def append(self, block: np.ndarray) -> None:
        p = self.path(self._n)
        if not p.exists():
            atomic_save_npy(p, np.asarray(block))
        self._n += 1

    def __getitem__(self, j: int) -> np.ndarray:
        j = _index(j, self._n)
        return np.load(self.path(j), mmap_mode="r", allow_pickle=False)

    def sweep(self) -> Iterator[tuple[int, np.ndarray]]:
        row = 0
        for j in range(self._n):
            block = self[j]
            yield row, block
            row += block.shape[0]
            del block  # unmap before the next one: resident memory stays one block


class WindowBlocks:
    """Only the last ``keep`` blocks, in memory; the earlier ones are forgotten.

    ``len`` and ``rows`` count every block appended, so coefficient arrays keep their place in
    the projected matrix (zero against the forgotten blocks, as in exact arithmetic); a sweep
    covers the kept blocks only, and reading a forgotten block raises ``IndexError``.

    Args:
        keep: blocks kept (2 is what the block three-term recurrence reads; 0 keeps none).
        count: blocks already appended before ``blocks`` (a resumed run).
        blocks: the last blocks of a resumed run, oldest first (at most ``keep``).
    """

    def __init__(self, keep: int = 2, count: int = 0, blocks: list | None = None) -> None:
        self.keep = int(keep)
        self._kept: list[np.ndarray] = [np.asarray(b) for b in (blocks or [])][-self.keep:] if self.keep else []
        self._n = int(count) + len(blocks or [])
        self._b = int(self._kept[0].shape[0]) if self._kept else 0

    def __len__(self) -> int:
        return self._n

    @property
    def rows(self) -> int:
        return self._n * self._b

    @property
    def first_kept(self) -> int:
        """Index of the oldest block still held."""
        return self._n - len(self._kept)

    def append(self, block: np.ndarray) -> None:
        block = np.asarray(block)
        if self._b and block.shape[0] != self._b:
            raise ValueError(f"blocks must all have {self._b} rows, got {block.shape[0]}")
        self._b = block.shape[0]
        self._n += 1
        if self.keep:
            self._kept = [*self._kept, block][-self.keep:]

    def __getitem__(self, j: int) -> np.ndarray:
        j = _index(j, self._n)
        if j < self.first_kept:
            raise IndexError(f"block {j} was not stored (the run keeps its last {self.keep} blocks only)")
        return self._kept[j - self.first_kept]

    def sweep(self) -> Iterator[tuple[int, np.ndarray]]:
        for i, block in enumerate(self._kept):
            yield (self.first_kept + i) * self._b, block


class HalfBlocks:
    """The last ``keep`` blocks exactly, every older block rounded to float16, all in memory.

    The block three-term recurrence reads its two neighbours at full precision, so the projected
    matrix's large entries are exact; the older blocks serve only to keep the basis orthogonal,
    and for that half precision is enough: orthogonalising against a copy q̃ with
    ‖q − q̃‖ ≤ δ leaves |qᵀw| ≤ |q̃ᵀw| + δ‖w‖, so the loss of orthogonality stays near δ ≈ 2⁻¹¹
    (``rounding``, the largest ‖q − q̃‖ of any stored row, measured when it is rounded) instead of
    growing to 1 as it does with the neighbours alone (:class:`WindowBlocks`). Memory: 2 bytes per
    entry of the basis, a quarter of a float32 basis with its J-side blocks.

    A sweep yields one block at a time, converted to the exact blocks' dtype.

    Args:
        keep: blocks kept exactly (2: the recurrence's).
        half: a resumed run's older blocks in float16, oldest first.
        blocks: a resumed run's last exact blocks, oldest first (at most ``keep``).
    """

    def __init__(self, keep: int = 2, half: list | None = None, blocks: list | None = None) -> None:
        self.keep = int(keep)
        self._half: list[np.ndarray] = [np.asarray(h, dtype=np.float16) for h in (half or [])]
        self._exact: list[np.ndarray] = [np.asarray(b) for b in (blocks or [])]
        if len(self._exact) > self.keep:
            raise ValueError(f"a resumed store holds at most {self.keep} exact blocks, got {len(self._exact)}")
        first = (self._exact or self._half or [np.zeros((0, 0))])[0]
        self._b = int(first.shape[0])
        self.rounding = 0.0

    def __len__(self) -> int:
        return len(self._half) + len(self._exact)

    @property
    def rows(self) -> int:
        return len(self) * self._b

    @property
    def half_count(self) -> int:
        """Blocks held in float16 (the oldest ones)."""
        return len(self._half)

    def append(self, block: np.ndarray) -> None:
        block = np.asarray(block)
        if self._b and block.shape[0] != self._b:
            raise ValueError(f"blocks must all have {self._b} rows, got {block.shape[0]}")
        self._b = block.shape[0]
        self._exact.append(block)
        while len(self._exact) > self.keep:
            self.push_half(self._exact.pop(0))

    def push_half(self, block: np.ndarray) -> None:
        """Round ``block`` to float16 as the next older block (``rounding`` records its error)."""
        h = np.asarray(block).astype(np.float16)
        err = np.linalg.norm(np.asarray(block, dtype=np.float64) - h.astype(np.float64), axis=1)
        self.rounding = max(self.rounding, float(err.max()) if err.size else 0.0)
        self._half.append(h)

    @property
    def dtype(self) -> np.dtype:
        """The exact blocks' dtype, which the float16 ones are converted to when read."""
        return self._exact[0].dtype if self._exact else np.dtype(np.float32)

    def half_block(self, j: int) -> np.ndarray:
        """The float16 copy of older block ``j`` (``j < half_count``)."""
        return self._half[j]

    def __getitem__(self, j: int) -> np.ndarray:
        j = _index(j, len(self))
        if j < len(self._half):
            return self._half[j].astype(self.dtype)
        return self._exact[j - len(self._half)]

    def sweep(self) -> Iterator[tuple[int, np.ndarray]]:
        for j, h in enumerate(self._half):
            yield j * self._b, h.astype(self.dtype)
        for i, block in enumerate(self._exact):
            yield (len(self._half) + i) * self._b, block


def _index(j: int, n: int) -> int:
    if not -n <= j < n:
        raise IndexError(f"block {j} of {n}")
    return j % n


def _remove(W: np.ndarray, G: np.ndarray, total: np.ndarray, start: int) -> None:
    h = G @ W.T  # (g, b)
    W -= h.T.astype(W.dtype, copy=False) @ G
    total[start:start + G.shape[0]] += h


def _sweep(W: np.ndarray, basis: BlockStore, total: np.ndarray) -> None:
    for start, G in basis.sweep():
        _remove(W, G, total, start)


def project_out(W: np.ndarray, basis: BlockStore, local: int = 2) -> np.ndarray:
    """Remove from the rows of W (b, P), in place, their components along every basis row.

    First, twice, along the last ``local`` blocks (a Lanczos block A Q_j lies mostly in the span
    of Q_j and Q_{j−1}); then one sweep over the whole basis, and a second sweep only where the
    first removed a large part of a row (some row norm fell below 1/√2 of its value before the
    sweep: Kahan and Parlett's "twice is enough" test). Each sweep is one matrix product per row
    group in the basis dtype: in memory the whole basis is one group, on disk each block file is,
    so a sweep reads every block once. A :class:`WindowBlocks` basis is swept twice (it holds
    only the neighbours).

    Returns:
        (n, b) float64 coefficients ``Q Wᵀ`` summed over all projections (n basis rows), i.e. the
        projection of the original W on the basis.
    """
    total = np.zeros((basis.rows, W.shape[0]))
    n = len(basis)
    if isinstance(basis, WindowBlocks):  # only the neighbours exist: twice against them
        for _ in range(2):
            _sweep(W, basis, total)
        return total
    for _ in range(2):
        for j in range(max(n - local, 0), n):
            G = basis[j]
            _remove(W, G, total, j * G.shape[0])
    before = np.linalg.norm(W, axis=1)
    _sweep(W, basis, total)
    if np.any(np.linalg.norm(W, axis=1) < before / np.sqrt(2.0)):
        _sweep(W, basis, total)
    return total


def combine(coords: np.ndarray, basis: BlockStore, dtype: Any) -> np.ndarray:
    """Rows ``coordsᵀ Q`` (k, P) for coordinate columns ``coords`` (n, k), in ``dtype``."""
    out: np.ndarray | None = None
    for start, G in basis.sweep():
        part = coords[start:start + G.shape[0]].T.astype(dtype) @ G
        if out is None:
            out = part
        else:
            out += part
    if out is None:
        raise ValueError("the basis is empty")
    return out


def max_overlap(W: np.ndarray, basis: BlockStore) -> float:
    """max |q · w| over the basis rows q and the rows w of W (b, P), in W's dtype: one sweep.

    For the next Lanczos block this measures its loss of orthogonality against the stored basis
    (against the stored copies, for :class:`HalfBlocks`: add its ``rounding`` for a bound on the
    exact rows)."""
    worst = 0.0
    for _, G in basis.sweep():
        h = G @ W.T
        worst = max(worst, float(np.abs(h).max()) if h.size else 0.0)
    return worst

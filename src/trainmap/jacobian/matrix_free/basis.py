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

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np
from threadpoolctl import threadpool_limits

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


#: bytes of one converted tile of float16 rows (about a core's L2 cache)
_TILE_BYTES = 1 << 21
_TWO_112 = np.float32(2.0 ** 112)
_CLEAR_EXTENSION = np.int32(0x8FFFFFFF - (1 << 32))  # keep the sign bit, clear bits 28-30


def _cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def half_to_single(src: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Write the finite float16 values ``src`` (any shape, any strides) into float32 ``out``, exactly.

    The bits of a float16 value, sign-extended to 32 bits and shifted left by 13, are those of
    the float32 value times 2⁻¹¹² once the three bits that the sign extension set above the
    exponent (for negative values) are cleared; multiplying by 2¹¹² is then exact for every
    finite float16, subnormals and signed zeros included. That is four vectorised passes over
    ``out``; numpy's own float16 cast is a scalar loop, several times slower than a float32
    matrix product over the same entries. Inf and NaN are not converted (a Krylov basis has
    neither: :meth:`HalfBlocks.push_half` refuses them).

    Returns:
        ``out``.
    """
    x = out.view(np.int32)
    np.copyto(x, src.view(np.int16), casting="unsafe")
    np.left_shift(x, 13, out=x)
    np.bitwise_and(x, _CLEAR_EXTENSION, out=x)
    np.multiply(out, _TWO_112, out=out)
    return out


class HalfBlocks:
    """The last ``keep`` blocks exactly, every older block rounded to float16, all in memory.

    The block three-term recurrence reads its two neighbours at full precision, so the projected
    matrix's large entries are exact; the older blocks serve only to keep the basis orthogonal,
    and for that half precision is enough: orthogonalising against a copy q̃ with
    ‖q − q̃‖ ≤ δ leaves |qᵀw| ≤ |q̃ᵀw| + δ‖w‖, so the loss of orthogonality stays near δ ≈ 2⁻¹¹
    (``rounding``, the largest ‖q − q̃‖ of any stored row, measured when it is rounded) instead of
    growing to 1 as it does with the neighbours alone (:class:`WindowBlocks`). Memory: 2 bytes per
    entry of the basis, a quarter of a float32 basis with its J-side blocks.

    The float16 rows live in one contiguous array. :meth:`products` and :meth:`accumulate`
    (what reorthogonalisation and the Ritz vectors need) convert them a column tile at a time
    (:data:`_TILE_BYTES`, with :func:`half_to_single`), one column range per core in threads, so
    a converted copy never exceeds a tile per core and each entry is read once per call;
    :meth:`sweep` yields one converted block at a time.

    Args:
        keep: blocks kept exactly (2: the recurrence's).
        half: a resumed run's older blocks in float16, oldest first.
        blocks: a resumed run's last exact blocks, oldest first (at most ``keep``).
        capacity_blocks: float16 blocks to reserve address space for (the array grows past it).
    """

    def __init__(self, keep: int = 2, half: list | None = None, blocks: list | None = None,
                 capacity_blocks: int = 0) -> None:
        self.keep = int(keep)
        self._half = MemoryBlocks(capacity_blocks)
        for h in half or []:
            self._half.append(np.asarray(h, dtype=np.float16))
        self._exact: list[np.ndarray] = [np.asarray(b) for b in (blocks or [])]
        if len(self._exact) > self.keep:
            raise ValueError(f"a resumed store holds at most {self.keep} exact blocks, got {len(self._exact)}")
        first = (self._exact or list(half or []) or [np.zeros((0, 0))])[0]
        self._b = int(np.shape(first)[0])
        self.rounding = 0.0

    def __len__(self) -> int:
        return len(self._half) + len(self._exact)

    @property
    def rows(self) -> int:
        return len(self) * self._b

    @property
    def columns(self) -> int:
        """P, the length of every row."""
        return int((self._exact or [self._half[0]])[0].shape[1]) if len(self) else 0

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
        block = np.asarray(block)
        if block.size and not float(np.abs(block).max()) <= float(np.finfo(np.float16).max):  # NaN too
            raise ValueError("a block has entries beyond float16's range (|x| > 65504) or not finite; "
                             "a Krylov basis is orthonormal, so its rows cannot: use basis='full'")
        h = block.astype(np.float16)
        back = self._convert(h, np.empty(h.shape, dtype=self.dtype))
        # block − back is exact in the block's dtype (back is block rounded to fewer bits)
        err = np.linalg.norm((block - back).astype(np.float64), axis=1)
        self.rounding = max(self.rounding, float(err.max()) if err.size else 0.0)
        self._half.append(h)

    @property
    def dtype(self) -> np.dtype:
        """The exact blocks' dtype, which the float16 ones are converted to when read."""
        return self._exact[0].dtype if self._exact else np.dtype(np.float32)

    def half_block(self, j: int) -> np.ndarray:
        """The float16 copy of older block ``j`` (``j < half_count``), a view."""
        return self._half[j]

    def _convert(self, src: np.ndarray, out: np.ndarray) -> np.ndarray:
        if out.dtype == np.float32:
            return half_to_single(src, out)
        np.copyto(out, src)
        return out

    def _tiles(self, cols: slice) -> Iterator[tuple[slice, np.ndarray]]:
        """(columns, converted float16 rows (n_half, width)) for consecutive tiles of ``cols``."""
        H = next(self._half.sweep())[1]
        width = max(256, _TILE_BYTES // (self.dtype.itemsize * H.shape[0]))
        buf = np.empty((H.shape[0], min(width, cols.stop - cols.start)), dtype=self.dtype)
        for c in range(cols.start, cols.stop, width):
            tile = slice(c, min(c + width, cols.stop))
            yield tile, self._convert(H[:, tile], buf[:, : tile.stop - c])

    def _over_columns(self, work: Callable[[slice], Any]) -> list:
        """``work(cols)`` on one contiguous column range per core, in threads, each with a
        single-threaded BLAS (numpy releases the GIL, so the conversions run in parallel too)."""
        P = self.columns
        parts = max(1, min(_cores(), P // 4096))
        edges = [P * i // parts for i in range(parts + 1)]
        ranges = [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]
        if parts == 1:
            return [work(ranges[0])]
        with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(parts) as pool:
            return list(pool.map(work, ranges))

    def products(self, W: np.ndarray) -> np.ndarray:
        """(rows, b) float64 ``Q Wᵀ`` against every stored row (the float16 ones as stored), W (b, P)."""
        h = np.zeros((self.rows, W.shape[0]))
        n = len(self._half) * self._b

        def part(cols: slice) -> np.ndarray:
            acc = np.zeros((n, W.shape[0]))
            for tile, q in self._tiles(cols):
                acc += q @ W[:, tile].T
            return acc

        if n:
            h[:n] = sum(self._over_columns(part))
        for i, block in enumerate(self._exact):
            h[n + i * self._b:n + (i + 1) * self._b] = block @ W.T
        return h

    def accumulate(self, C: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``out += Cᵀ Q`` in place, for coefficients C (rows, k) and out (k, P); returns ``out``."""
        C = np.asarray(C, dtype=out.dtype)
        n = len(self._half) * self._b
        Ct = np.ascontiguousarray(C[:n].T)

        def part(cols: slice) -> None:
            for tile, q in self._tiles(cols):
                out[:, tile] += Ct @ q

        if n:
            self._over_columns(part)
        for i, block in enumerate(self._exact):
            out += C[n + i * self._b:n + (i + 1) * self._b].T @ block
        return out

    def __getitem__(self, j: int) -> np.ndarray:
        j = _index(j, len(self))
        if j < len(self._half):
            h = self._half[j]
            return self._convert(h, np.empty(h.shape, dtype=self.dtype))
        return self._exact[j - len(self._half)]

    def sweep(self) -> Iterator[tuple[int, np.ndarray]]:
        for j in range(len(self)):
            yield j * self._b, self[j]


def _index(j: int, n: int) -> int:
    if not -n <= j < n:
        raise IndexError(f"block {j} of {n}")
    return j % n


def _remove(W: np.ndarray, G: np.ndarray, total: np.ndarray, start: int) -> None:
    h = G @ W.T  # (g, b)
    W -= h.T.astype(W.dtype, copy=False) @ G
    total[start:start + G.shape[0]] += h


def _sweep(W: np.ndarray, basis: BlockStore, total: np.ndarray) -> None:
    if isinstance(basis, HalfBlocks):  # the whole store at once, a column tile at a time
        h = basis.products(W)
        basis.accumulate(-h, W)
        total += h
        return
    for start, G in basis.sweep():
        _remove(W, G, total, start)


def project_out(W: np.ndarray, basis: BlockStore, local: int = 2) -> np.ndarray:
    """Remove from the rows of W (b, P), in place, their components along every basis row.

    First, twice, along the last ``local`` blocks (a Lanczos block A Q_j lies mostly in the span
    of Q_j and Q_{j−1}); then one sweep over the whole basis, and a second sweep only where the
    first removed a large part of a row (some row norm fell below 1/√2 of its value before the
    sweep: Kahan and Parlett's "twice is enough" test). Each sweep is one matrix product per row
    group in the basis dtype: in memory the whole basis is one group, on disk each block file is,
    so a sweep reads every block once; a :class:`HalfBlocks` sweep is one pass over its column
    tiles for the coefficients and one for the update. A :class:`WindowBlocks` basis is swept
    twice (it holds only the neighbours).

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
    if isinstance(basis, HalfBlocks):
        return basis.accumulate(coords, np.zeros((coords.shape[1], basis.columns), dtype=dtype))
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
    if isinstance(basis, HalfBlocks):
        h = basis.products(W)
        return float(np.abs(h).max()) if h.size else 0.0
    worst = 0.0
    for _, G in basis.sweep():
        h = G @ W.T
        worst = max(worst, float(np.abs(h).max()) if h.size else 0.0)
    return worst

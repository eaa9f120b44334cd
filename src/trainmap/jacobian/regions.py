"""SVD of the training Jacobian and its chaotic / bulk / stable regions.

Regions (Scherlis & Belrose 2024), with the default thresholds:

* **chaotic**: σ > 1.1 — perturbations along v_i grow during training;
* **bulk**: 0.9 ≤ σ ≤ 1.1 (|σ − 1| ≤ 0.1) — training leaves them (nearly) unchanged,
  and u_i ≈ v_i;
* **stable**: σ < 0.9 — training shrinks them.

Precision: in float32, singular values carry absolute errors of about 1e-7·σ_max (≈1e-6 for the
reference run), so thresholds on |σ − 1| below ~1e-5 need ``float64``.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import scipy.linalg
import scipy.linalg.blas
import scipy.linalg.lapack

from trainmap._io import release_memory

REGIONS = ("chaotic", "bulk", "stable")
STABLE, BULK, CHAOTIC = 0, 1, 2
_CODE = {"stable": STABLE, "bulk": BULK, "chaotic": CHAOTIC}


@dataclass(frozen=True)
class Thresholds:
    """Region boundaries on σ: stable σ < ``low``, bulk ``low`` ≤ σ ≤ ``high``, chaotic σ > ``high``."""

    low: float = 0.9
    high: float = 1.1

    def __post_init__(self) -> None:
        if not 0 <= self.low <= 1 <= self.high:
            raise ValueError(f"need 0 <= low <= 1 <= high, got low={self.low}, high={self.high}")

    @classmethod
    def symmetric(cls, tol: float) -> "Thresholds":
        """Bulk = |σ − 1| ≤ tol."""
        return cls(1.0 - tol, 1.0 + tol)


def classify(s: np.ndarray, thresholds: Thresholds = Thresholds()) -> np.ndarray:
    """Region code per singular value: 0 stable, 1 bulk, 2 chaotic. s: (P,) -> (P,) int8."""
    s = np.asarray(s)
    codes = np.full(s.shape, BULK, dtype=np.int8)
    codes[s < thresholds.low] = STABLE
    codes[s > thresholds.high] = CHAOTIC
    return codes


def region_mask(codes: np.ndarray, region: str) -> np.ndarray:
    """Boolean mask of the indices in ``region`` ('chaotic', 'bulk' or 'stable')."""
    if region not in _CODE:
        raise ValueError(f"unknown region {region!r}; use one of {REGIONS}")
    return np.asarray(codes) == _CODE[region]


@dataclass
class JacobianSVD:
    """J = U diag(S) Vᵀ with region labels.

    Attributes:
        U: (P, P) left singular vectors, column i is u_i (directions in θ_T space).
        S: (P,) singular values, descending.
        Vt: (P, P) right singular vectors as rows, row i is v_i (directions in θ₀ space).
        codes: (P,) region code per index (see :func:`classify`).
        cos_uv: (P,) cos(u_i, v_i) = u_i · v_i.
        thresholds: the region boundaries used.
        decoupled: how many indices training never couples to any other (:func:`decoupled`;
            split off before the dense SVD), or None when not known (a loaded SVD).
    """

    U: np.ndarray
    S: np.ndarray
    Vt: np.ndarray
    codes: np.ndarray
    cos_uv: np.ndarray
    thresholds: Thresholds
    decoupled: int | None = None

    def basis(self, region: str) -> np.ndarray:
        """(P, k) orthonormal basis (right singular vectors) of a region's subspace."""
        return self.Vt[region_mask(self.codes, region)].T


def _gesdd(make: Callable[[], np.ndarray], dt: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """U, S, Vt of a square matrix in ``dt``, by LAPACK's divide and conquer (gesdd).

    Args:
        make: returns a fresh copy of the matrix in ``dt`` each time it is called; gesdd overwrites
            it (one copy of the matrix in memory instead of two).

    gesdd occasionally fails to converge in float32 (it fails on J of the published setup, after
    10 s, and on Jᵀ succeeds in 10 s). So it runs on Jᵀ first (J = (V Sᵀ Uᵀ)ᵀ: the factors swap),
    then on J, then in float64 (as accurate, 2.5x slower, twice the memory), and last the slower but
    robust gesvd.
    """
    for transposed in (True, False):
        a = make()
        try:
            U, S, Vt = scipy.linalg.svd(a.T if transposed else a, lapack_driver="gesdd", check_finite=False,
                                        overwrite_a=True)
            return (Vt.T, S, U.T) if transposed else (U, S, Vt)
        except np.linalg.LinAlgError:
            continue
    try:
        return tuple(x.astype(dt) for x in scipy.linalg.svd(make().astype(np.float64), lapack_driver="gesdd",
                                                             check_finite=False))  # type: ignore[return-value]
    except np.linalg.LinAlgError:
        return scipy.linalg.svd(make(), lapack_driver="gesvd", check_finite=False, overwrite_a=True)


#: rows of J read at a time by the passes over it (a memory-mapped J is never resident as a whole)
SLAB_BYTES = 32 * 2**20


def _row_slabs(J: np.ndarray, slab_bytes: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows) of J in slabs of about ``slab_bytes`` (default :data:`SLAB_BYTES`).

    For a memory-mapped J (``np.load(..., mmap_mode="r")``) each slab's pages are dropped from
    the process once it has been read (``madvise(MADV_DONTNEED)``; the file stays in the page
    cache), so reading J adds one slab to the resident memory, not the whole matrix.
    """
    rows, row_bytes = J.shape[0], max(J.shape[1] * J.itemsize, 1)
    step = max(1, (slab_bytes or SLAB_BYTES) // row_bytes)
    mm = getattr(J, "_mmap", None) if isinstance(J, np.memmap) else None
    if not (hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED")):
        mm = None
    base = J.offset % mmap.ALLOCATIONGRANULARITY if mm is not None else 0  # where row 0 starts in the mapping
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        yield r0, np.asarray(J[r0:r1])
        if mm is not None:
            a = (base + r0 * row_bytes) // mmap.PAGESIZE * mmap.PAGESIZE
            try:
                mm.madvise(mmap.MADV_DONTNEED, a, base + r1 * row_bytes - a)
            except (OSError, ValueError):
                pass


def _scan(J: np.ndarray) -> tuple[bool, np.ndarray]:
    """One pass over J: (all entries finite, :func:`decoupled` indices)."""
    P = J.shape[0]
    col, row, diag = np.zeros(P, np.int64), np.zeros(P, np.int64), np.zeros(P, bool)
    finite = True
    for r0, slab in _row_slabs(J):
        r1 = r0 + slab.shape[0]
        finite = finite and bool(np.isfinite(slab).all())
        nz = slab != 0
        col += nz.sum(axis=0)
        row[r0:r1] = nz.sum(axis=1)
        diag[r0:r1] = nz[np.arange(r1 - r0), np.arange(r0, r1)]
    return finite, np.flatnonzero((col - diag == 0) & (row - diag == 0))


def decoupled(J: np.ndarray) -> np.ndarray:
    """Indices j whose row and column of J are zero off the diagonal: J e_j = J_jj e_j and
    e_jᵀ J = J_jj e_jᵀ (a parameter that training never couples to any other, such as the
    first-layer weights of an input feature that is zero in every training sample). (k,) int64."""
    return _scan(J)[1]


def _block_slabs(J: np.ndarray, idx: np.ndarray, slab_bytes: int | None = None
                 ) -> Iterator[tuple[int, int, np.ndarray]]:
    """Rows ``lo:hi`` of J[idx][:, idx] (idx sorted), read slab by slab: (lo, hi, (hi − lo, n) rows)."""
    for r0, slab in _row_slabs(J, slab_bytes):
        lo, hi = np.searchsorted(idx, [r0, r0 + slab.shape[0]])
        if hi > lo:
            yield int(lo), int(hi), slab[idx[lo:hi] - r0][:, idx]


def _block(J: np.ndarray, idx: np.ndarray, dt: np.dtype) -> np.ndarray:
    """A fresh (n, n) array J[idx][:, idx] in ``dt``, read slab by slab (idx sorted)."""
    A = np.empty((idx.size, idx.size), dt)
    for lo, hi, rows in _block_slabs(J, idx):
        A[lo:hi] = rows
    return A


#: below this fraction of σ_max the Gram route's u_i come from a float64 product J v_i,
#: orthonormalised (above it: J v_i / σ_i in float32)
GRAM_FLOAT64_BELOW = 2.0 ** -8


#: rows of J read at a time by the Gram route's two passes (its float64 copies are twice this)
GRAM_SLAB_BYTES = 8 * 2**20


def _gram_svd(J: np.ndarray, idx: np.ndarray, dt: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """U, S, Vt of A = J[idx][:, idx] (n, n) in ``dt`` from the eigendecomposition of the float64
    Gram matrix AᵀA (LAPACK dsyevr: O(n) workspace); None if dsyevr fails.

    The float32 route of :func:`svd`: at most 2 n² float64 in memory (AᵀA and its eigenvectors),
    where gesdd holds the matrix, U, Vᵀ and a 3 n² workspace (6 n² float32, about as much). A is
    read from J slab by slab, twice (for AᵀA, then for U). Accuracy: σ_i to about ε₆₄ σ_max² / σ_i
    absolute, V orthonormal to ε₆₄; u_i = A v_i / σ_i (a float32 product) for σ_i ≥
    :data:`GRAM_FLOAT64_BELOW` σ_max; below, where the rounding of A v_i / σ_i grows as
    σ_max / σ_i, the u_i are A v_i from a float64 product orthonormalised against the other u and
    among themselves (Gram–Schmidt twice, in descending σ).
    """
    n = idx.size
    G = np.zeros((n, n), np.float64, order="F")
    for _, _, rows in _block_slabs(J, idx, GRAM_SLAB_BYTES):
        G = scipy.linalg.blas.dsyrk(1.0, rows.astype(np.float64).T, beta=1.0, c=G, trans=0, lower=1,
                                    overwrite_c=1)
    release_memory(collect=False)  # the slabs' float64 copies, before dsyevr allocates its n² eigenvectors
    w, z, _, _, info = scipy.linalg.lapack.dsyevr(G, compute_v=1, range="A", lower=1, overwrite_a=1)
    del G
    if info != 0:
        return None
    S = np.sqrt(np.maximum(w[::-1], 0.0))
    V = z[:, ::-1]  # float64, columns by descending σ
    smax = float(S[0]) if n else 0.0
    m = int(np.count_nonzero(S >= GRAM_FLOAT64_BELOW * smax)) if smax > 0 else 0
    Vt = np.ascontiguousarray(V.T, dtype=dt)
    V_small = np.array(V[:, m:])
    del z, V
    U = np.empty((n, n), dt)  # A v_i: float32 products for the large σ_i, float64 for the small
    for lo, hi, rows in _block_slabs(J, idx, GRAM_SLAB_BYTES):
        U[lo:hi, :m] = np.asarray(rows, dt) @ Vt[:m].T
        U[lo:hi, m:] = rows.astype(np.float64) @ V_small
    del V_small
    U[:, :m] /= S[:m].astype(dt)
    if m < n:
        U[:, m:] = _complement(U[:, :m], U[:, m:])
    return U, S.astype(dt), Vt


def _complement(Ub: np.ndarray, W: np.ndarray) -> np.ndarray:
    """An orthonormal basis (n, k) of span(W) with the span of the orthonormal Ub (n, t) projected
    out, twice (Gram–Schmidt, CGS2); each column signed to point along its column of W."""
    Q = W.astype(np.float64)
    for _ in range(2):
        Q -= Ub @ (Ub.T @ Q.astype(Ub.dtype))
        Q, R = np.linalg.qr(Q)
        Q *= np.where(np.diag(R) < 0, -1.0, 1.0)
    return Q.astype(Ub.dtype)


def _dense_svd(J: np.ndarray, idx: np.ndarray, dt: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """U, S, Vt of J[idx][:, idx] in ``dt``: float32 by the Gram route (:func:`_gram_svd`), float64
    (and float32 where dsyevr fails) by gesdd (:func:`_gesdd`)."""
    if dt == np.float32:
        out = _gram_svd(J, idx, dt)
        if out is not None:
            return out
    return _gesdd(lambda: _block(J, idx, dt), dt)


def _svd_deflated(J: np.ndarray, dt: np.dtype, dead: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """U, S, Vt of J with its decoupled indices ``dead`` (:func:`decoupled`) split off exactly.

    After a permutation J is block diagonal, the coupled block and a diagonal; each decoupled j
    contributes σ = |J_jj| with u = sign(J_jj) e_j and v = e_j, and only the coupled block goes
    through the dense SVD (192 of the 4,810 indices on the published setup: its cost falls by
    about 11%). The factors are merged in descending σ.
    """
    P = J.shape[0]
    live = np.setdiff1d(np.arange(P), dead)
    if dead.size == 0:
        return _dense_svd(J, live, dt)
    diag = np.asarray(J[dead, dead]).astype(dt)
    if live.size:
        Ul, Sl, Vtl = _dense_svd(J, live, dt)
    else:
        Ul = Vtl = np.zeros((0, 0), dt)
        Sl = np.zeros(0, dt)
    S_all = np.concatenate([Sl, np.abs(diag)])
    order = np.argsort(-S_all, kind="stable")  # position of every singular value after the merge
    slot = np.empty(P, np.int64)
    slot[order] = np.arange(P)
    cols = slot[: live.size]
    U = np.zeros((P, P), dt)  # each factor is placed and its block freed before the next is allocated
    U[np.ix_(live, cols)] = Ul
    del Ul
    Vt = np.zeros((P, P), dt)
    Vt[np.ix_(cols, live)] = Vtl
    del Vtl
    at = slot[live.size:]
    U[dead, at] = np.where(diag < 0, -1, 1).astype(dt)
    Vt[at, dead] = 1
    return U, S_all[order], Vt


def svd(J: np.ndarray, thresholds: Thresholds = Thresholds(), dtype: Any = None) -> JacobianSVD:
    """Full SVD of J with regions and cos(u_i, v_i).

    Indices that training never couples to any other (:func:`decoupled`) are split off exactly
    before the dense SVD, which then runs on the remaining block only. J may be a memory map of
    its ``.npy`` file: it is read in slabs and never resident as a whole.

    Args:
        J: (P, P) training Jacobian.
        thresholds: region boundaries.
        dtype: precision of the SVD (default: J's dtype; float64 for |σ − 1| below ~1e-5).
    """
    if not isinstance(J, np.memmap):
        J = np.asarray(J)
    if J.ndim != 2 or J.shape[0] != J.shape[1]:
        raise ValueError(f"J must be square (P, P), got {J.shape}")
    if J.flags.f_contiguous and not J.flags.c_contiguous:
        # column-major (the forward engine's J.npy): decompose Jᵀ = V Σ Uᵀ, whose rows are J's
        # contiguous columns, so that every pass reads J slab by slab. The factors are then copied
        # to row-major, as for any other J (after the decomposition's peak of two n² float64);
        # each of Jᵀ's factors is dropped as soon as its copy exists
        t = svd(J.T, thresholds, dtype)
        U_of_t, S, codes, cos_uv, k = t.U, t.S, t.codes, t.cos_uv, t.decoupled
        U = np.ascontiguousarray(t.Vt.T)
        del t
        Vt = np.ascontiguousarray(U_of_t.T)
        del U_of_t
        return JacobianSVD(U, S, Vt, codes, cos_uv, thresholds, k)
    finite, dead = _scan(J)
    release_memory(collect=False)
    if not finite:
        raise ValueError("J contains NaN/inf; recompute it (the training run may have diverged)")
    dt = np.dtype(dtype or J.dtype)
    U, S, Vt = _svd_deflated(J, dt, dead)
    cos_uv = np.einsum("ij,ji->i", Vt, U)
    return JacobianSVD(U, S, Vt, classify(S, thresholds), cos_uv, thresholds, int(dead.size))


#: the bulk tolerances at which Scherlis & Belrose (2024) count singular values near 1
BULK_TOLERANCES = (0.1, 0.01, 0.001)
#: their |σ − 1| cutoff for the median |cos(u_i, v_i)| of the bulk
COS_TOL = 1e-3


def authors_statistics(S: np.ndarray, cos_uv: np.ndarray | None,
                       tolerances: Sequence[float] = BULK_TOLERANCES, cos_tol: float = COS_TOL) -> dict[str, Any]:
    """The statistics Scherlis & Belrose quote: bulk counts #{|σ−1| ≤ tol} at several tolerances,
    and the median |cos(u_i, v_i)| over |σ−1| < ``cos_tol`` (JSON-able).

    Args:
        S: (P,) singular values; cos_uv: (P,) cos(u_i, v_i) or None.
        tolerances: bulk tolerances (each > 0).
    """
    tols = sorted({float(t) for t in tolerances}, reverse=True)
    if not tols or min(tols) <= 0:
        raise ValueError(f"bulk tolerances must be > 0, got {list(tolerances)}")
    dist = np.abs(np.asarray(S, dtype=np.float64) - 1.0)
    P = int(dist.size)
    out: dict[str, Any] = {"bulk_counts": {f"{t:g}": {"count": int((dist <= t).sum()),
                                                       "fraction": float((dist <= t).sum() / P)} for t in tols}}
    near = dist < cos_tol
    out["near_one"] = {"tol": cos_tol, "count": int(near.sum()),
                       "median_abs_cos_uv": (float(np.median(np.abs(cos_uv[near])))
                                             if cos_uv is not None and near.any() else None)}
    return out


def region_summary(dec: JacobianSVD, tolerances: Sequence[float] = BULK_TOLERANCES) -> dict[str, Any]:
    """Counts, fractions, σ ranges and median |cos(u_i, v_i)| per region, and the authors'
    statistics (:func:`authors_statistics`) under ``"authors"`` (JSON-able)."""
    P = dec.S.size
    out: dict[str, Any] = {"num_params": P, "sigma_max": float(dec.S[0]), "sigma_min": float(dec.S[-1]),
                           "thresholds": {"stable_below": dec.thresholds.low,
                                          "chaotic_above": dec.thresholds.high}}
    for name in REGIONS:
        m = region_mask(dec.codes, name)
        n = int(m.sum())
        out[name] = {
            "count": n,
            "fraction": n / P,
            "sigma_range": [float(dec.S[m].min()), float(dec.S[m].max())] if n else None,
            "median_abs_cos_uv": float(np.median(np.abs(dec.cos_uv[m]))) if n else None,
        }
    out["authors"] = authors_statistics(dec.S, dec.cos_uv, tolerances)
    if dec.decoupled is not None:
        out["decoupled"] = {"count": dec.decoupled,
                            "meaning": "indices j with J e_j = J_jj e_j and e_j^T J = J_jj e_j^T (never coupled to "
                                       "another parameter, e.g. weights of an input that is always zero)"}
    return out


def project_change(Vt: np.ndarray, theta0: np.ndarray, thetaT: np.ndarray) -> np.ndarray:
    """Coordinates of θ_T − θ₀ in the right-singular basis: (P,) array c_i = v_iᵀ(θ_T − θ₀)."""
    return np.asarray(Vt) @ (np.asarray(thetaT, dtype=Vt.dtype) - np.asarray(theta0, dtype=Vt.dtype))

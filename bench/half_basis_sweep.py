"""What a float16 Krylov basis costs outside the products: the conversion, and a whole run.

Two measurements in one process, on this machine's cores:

* per entry, converting float16 rows to float32 with numpy's cast and with
  ``basis.half_to_single``, against a float32 matrix product ``Q Wᵀ`` (b = 8) over the same
  entries, on a (384, 65,536) tile of a 1M-parameter run's final basis size;
* 48 block steps of 8 probes of block Lanczos at P = 1,000,000 on a diagonal operator (its
  products cost almost nothing, so the time is the bookkeeping: reorthogonalisation, QR, the
  float16 rounding), with the full float32 basis and with the float16 one (``basis="half"``).

    python bench/half_basis_sweep.py            # about a minute
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _per_entry(fn, entries: int, repeats: int = 10) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats / entries * 1e9


def conversion(rows: int = 384, width: int = 65_536) -> dict:
    from trainmap.jacobian.matrix_free.basis import half_to_single

    rng = np.random.default_rng(0)
    H = (rng.standard_normal((rows, width)) / 1000).astype(np.float16)
    out = np.empty((rows, width), np.float32)
    W = rng.standard_normal((8, width)).astype(np.float32)
    Q = H.astype(np.float32)
    assert np.array_equal(half_to_single(H, out), Q)
    n = rows * width
    return {"entries": n,
            "numpy_cast_ns_per_entry": _per_entry(lambda: np.copyto(out, H), n),
            "half_to_single_ns_per_entry": _per_entry(lambda: half_to_single(H, out), n),
            "float32_product_ns_per_entry": _per_entry(lambda: Q @ W.T, n)}


def lanczos_run(P: int, steps: int) -> dict:
    from trainmap.jacobian.matrix_free.lanczos import block_lanczos, rademacher

    lam = np.linspace(0.0, 3.0, P, dtype=np.float32) ** 2
    V0 = rademacher(8, P, 0)
    row = {}
    for basis in ("full", "half"):
        t0 = time.perf_counter()
        block_lanczos(lambda X: (X * lam, None), V0, steps, basis=basis)
        row[f"{basis}_s"] = time.perf_counter() - t0
    row["half_over_full"] = row["half_s"] / row["full_s"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, default=1_000_000)
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--json", default=str(HERE / "results" / "half_basis_sweep.json"))
    args = ap.parse_args()
    res = {"benchmark": __doc__.splitlines()[0],
           "command": "python bench/half_basis_sweep.py",
           "machine": {"platform": platform.platform(), "numpy": np.__version__},
           "conversion": conversion(),
           "block_lanczos": {"params": args.params, "probes": 8, "steps": args.steps,
                             **lanczos_run(args.params, args.steps)}}
    Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

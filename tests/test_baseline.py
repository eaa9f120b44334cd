"""The numbers of every engine route are pinned bit for bit (``tests/data/make_baseline.py``).

A refactoring that changes any bit of J fails here (its SHA-256), and so does one that moves a
singular value by more than float64 LAPACK's own rounding (1e-13 σ_max; LAPACK differs between
CPUs by about 1e-15 σ_max, while one changed last bit of a large entry of the float32 J moves σ by
1e-12 to 1e-11 σ_max); a change that is meant to alter the numbers regenerates the file and says so.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "data"))
import make_baseline  # noqa: E402

BASELINE = np.load(Path(__file__).parent / "data" / "baseline_singular_values.npz")


@pytest.mark.parametrize("route", sorted(make_baseline.ROUTES))
def test_jacobian_bit_identical_and_singular_values_equal(route):
    J = make_baseline.jacobian(route)
    assert make_baseline.array_sha256(J) == str(BASELINE[f"{route}_sha256"]), route
    ref = BASELINE[route]
    np.testing.assert_allclose(make_baseline.singular_values(J), ref, rtol=0, atol=1e-13 * ref[0])


def test_matrix_free_products_bit_identical():
    np.testing.assert_array_equal(make_baseline.gram_products(), BASELINE["matrix_free_gram"])

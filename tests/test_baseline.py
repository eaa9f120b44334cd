"""The numbers of every engine route are pinned bit for bit (``tests/data/make_baseline.py``).

A refactoring that changes a singular value in its last bit fails here; a change that is meant to
alter the numbers regenerates the file and says so.
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
def test_singular_values_bit_identical(route):
    np.testing.assert_array_equal(make_baseline.singular_values(route), BASELINE[route])


def test_matrix_free_products_bit_identical():
    np.testing.assert_array_equal(make_baseline.gram_products(), BASELINE["matrix_free_gram"])

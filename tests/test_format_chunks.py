"""format/chunks.py: the reader's row check of a decoded chunk."""

import numpy as np
import pytest

from softtargets.errors import StoreError
from softtargets.format.chunks import check_chunk


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan, -np.nan])
def test_a_non_finite_float16_value_anywhere_is_refused(value):
    logits = np.linspace(-65504, 65504, 4 * 6).astype(np.float16).reshape(4, 6)  # (R, C)
    check_chunk("s.zarr", 10, slice(4, 8), np.arange(4, 8), logits, index=1)  # all finite
    logits[2, 5] = value
    with pytest.raises(StoreError, match=r"chunk 1 \(rows 4..7\) of 'logits': rows \[6\] are "
                                         "missing or invalid"):
        check_chunk("s.zarr", 10, slice(4, 8), np.arange(4, 8), logits, index=1)


def test_a_sample_id_out_of_range_is_refused():
    with pytest.raises(StoreError, match=r"rows \[3\] are missing or invalid"):
        check_chunk("s.zarr", 4, slice(0, 4), np.array([0, 1, 2, 4]),
                    np.zeros((4, 2), np.float16))

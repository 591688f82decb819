"""``fusionnet_tf.checks.check_int``: the one integer validator."""

import numpy as np
import pytest

from fusionnet_tf.checks import check_int


@pytest.mark.parametrize("value", [1, 7, np.int64(3), np.uint8(2)])
def test_accepts_python_and_numpy_integers(value):
    assert check_int("n", value) == int(value)
    assert type(check_int("n", value)) is int


@pytest.mark.parametrize("value, minimum", [(0, 1), (-1, 0), (True, 0), (2.0, 1), ("3", 1),
                                            (None, 0), (1, 2)])
def test_rejects_with_name_value_and_type(value, minimum):
    with pytest.raises(ValueError, match=rf"`n` must be an integer >= {minimum}; received n="):
        check_int("n", value, minimum)


def test_minimum_is_inclusive():
    assert check_int("n", 0, 0) == 0
    assert check_int("n", 2, 2) == 2


def test_callers_share_the_message():
    from fusionnet_tf.inference.tiling import check_tile_args
    from fusionnet_tf.models.validation import check_positive_int

    for call in (lambda: check_tile_args(2.5, 0), lambda: check_positive_int("tile", 2.5)):
        with pytest.raises(ValueError, match=r"`tile` must be an integer >= 1; received tile=2.5 "
                                             r"\(of type float\)"):
            call()

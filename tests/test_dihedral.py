import numpy as np
import pytest
import tensorflow as tf

from fusionnet_tf.dihedral import dihedral_np, dihedral_tf, inverse_dihedral_np


def test_eight_distinct_transforms_and_inverses():
    x = np.arange(2 * 3 * 4 * 1).reshape(2, 3, 4, 1)
    outs = [dihedral_np(x, k) for k in range(8)]
    assert len({o.tobytes() + bytes(o.shape) for o in outs}) == 8
    for k, o in enumerate(outs):
        np.testing.assert_array_equal(inverse_dihedral_np(o, k), x)


@pytest.mark.parametrize("k", range(8))
def test_tf_matches_numpy(k):
    x = np.random.default_rng(k).random((2, 5, 7, 1)).astype("float32")
    np.testing.assert_array_equal(dihedral_tf(tf.constant(x), k).numpy(), dihedral_np(x, k))
    np.testing.assert_array_equal(dihedral_tf(tf.constant(x[0]), k).numpy(), dihedral_np(x[0], k))


def test_bad_index():
    with pytest.raises(ValueError, match="k=8"):
        dihedral_np(np.zeros((1, 2, 2, 1)), 8)

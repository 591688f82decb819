"""The 8 dihedral transforms of the square (rotations by 90 degrees, flips).

Transform ``k`` (0-7) rotates by ``k % 4`` quarter turns counter-clockwise in
the (H, W) plane, then, for ``k >= 4``, flips W. One definition serves the
training augmentation (TensorFlow tensors) and test-time augmentation (NumPy
arrays); ``tests/test_dihedral.py`` checks that both agree.
"""

import numpy as np

NUM_TRANSFORMS = 8


def _check_k(k):
    if not 0 <= int(k) < NUM_TRANSFORMS:
        raise ValueError(f"dihedral transform index must be in 0..7; received k={k!r}")
    return int(k)


def dihedral_np(x, k, axes=(-3, -2)):
    """Apply transform ``k`` to a NumPy array over ``axes`` (H, W).

    Args:
        x: array, e.g. (batch, H, W, C) with the default ``axes``.
        k: int in 0..7.
        axes: the (H, W) axes.

    Returns:
        Array with H and W swapped for odd ``k % 4``.
    """
    k = _check_k(k)
    y = np.rot90(x, k % 4, axes=axes)
    if k >= 4:
        y = np.flip(y, axis=axes[1])
    return y


def inverse_dihedral_np(x, k, axes=(-3, -2)):
    """Undo ``dihedral_np(., k, axes)``."""
    k = _check_k(k)
    if k >= 4:
        x = np.flip(x, axis=axes[1])
    return np.rot90(x, -(k % 4), axes=axes)


def dihedral_tf(x, k):
    """Apply transform ``k`` (a Python int or a scalar int tensor) to a TF tensor.

    Args:
        x: tensor of shape (H, W, C) or (batch, H, W, C).
        k: int or scalar int32 tensor in 0..7.

    Returns:
        Tensor of the same rank; H and W swap for odd ``k % 4``.
    """
    import tensorflow as tf

    k = tf.convert_to_tensor(k, tf.int32)
    y = tf.image.rot90(x, k=k % 4)
    return tf.cond(k >= 4, lambda: tf.image.flip_left_right(y), lambda: y)

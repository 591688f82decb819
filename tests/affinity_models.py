"""Tiny hand-built Keras 3D models for the 3D inference tests (no training)."""

import keras
import numpy as np

OFFSETS = [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (-2, 0, 0), (0, -3, 0), (0, 0, -3)]


def pointwise_model(channels=3, seed=0):
    """Strictly translation-equivariant (1x1x1 kernels): tiling cannot change any voxel."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, None, 1))
    x = keras.layers.Conv3D(4, 1, activation="tanh")(inputs)
    outputs = keras.layers.Conv3D(channels, 1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs)


def conv_model(seed=0):
    """Conv3D with (1, 2, 2) pooling (input multiple (1, 2, 2)), 3 output channels."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, None, 1))
    x = keras.layers.Conv3D(4, (1, 3, 3), padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPooling3D((1, 2, 2))(x)
    x = keras.layers.Conv3D(4, (3, 1, 1), padding="same", activation="relu")(x)
    x = keras.layers.UpSampling3D((1, 2, 2))(x)
    outputs = keras.layers.Conv3D(3, 1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs)


def affinity_model(offsets):
    """Fixed weights: channel c = 1 - |x(p) - x(p + offsets[c])| (zero outside), exactly.

    A difference kernel per offset, |.| as relu(d) + relu(-d), then 1 - sum: the
    prediction of a transformed volume is the transformed affinities, so TTA must
    give back the plain prediction exactly when (and only when) it maps every
    channel to its direction and shifts the reversed ones.
    """
    radius = [max(abs(o[axis]) for o in offsets) for axis in range(3)]
    size = tuple(2 * r + 1 for r in radius)
    channels = len(offsets)
    inputs = keras.Input((None, None, None, 1))
    diff = keras.layers.Conv3D(2 * channels, size, padding="same", use_bias=False,
                               activation="relu")
    x = diff(inputs)
    combine = keras.layers.Conv3D(channels, 1)
    outputs = combine(x)
    kernel = np.zeros(size + (1, 2 * channels), np.float32)
    for c, offset in enumerate(offsets):
        centre = tuple(radius)
        neighbour = tuple(r + o for r, o in zip(radius, offset))
        kernel[centre + (0, 2 * c)], kernel[neighbour + (0, 2 * c)] = 1, -1
        kernel[centre + (0, 2 * c + 1)], kernel[neighbour + (0, 2 * c + 1)] = -1, 1
    diff.set_weights([kernel])
    weights = np.zeros((1, 1, 1, 2 * channels, channels), np.float32)
    for c in range(channels):
        weights[0, 0, 0, 2 * c, c] = weights[0, 0, 0, 2 * c + 1, c] = -1
    combine.set_weights([weights, np.ones(channels, np.float32)])
    return keras.Model(inputs, outputs)


def true_affinities(volume, offsets):
    """(C, Z, Y, X) 1 - |x(p) - x(p + o)| with zero outside the volume, in NumPy."""
    padded_shape = [n + 2 * 3 for n in volume.shape]
    padded = np.zeros(padded_shape, np.float32)
    padded[3:-3, 3:-3, 3:-3] = volume
    result = []
    for offset in offsets:
        neighbour = padded[tuple(slice(3 + o, 3 + o + n) for o, n in zip(offset, volume.shape))]
        result.append(1 - np.abs(volume - neighbour))
    return np.stack(result)

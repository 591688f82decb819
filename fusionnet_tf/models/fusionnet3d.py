"""Anisotropic 3D FusionNet predicting affinities (Lee et al. 2017 style).

Same design as ``fusionnet_tf.models.fusionnet``: conv-res-conv blocks, max
pooling, Conv3DTranspose upsampling and long skips by summation (``Add``),
built from the shared ``fusionnet_tf.models.blocks`` with 3D layers. Serial
section EM is anisotropic (SNEMI3D: 6 x 6 x 30 nm), so the first
``anisotropic_levels`` levels convolve in-plane only ((1, 3, 3) kernels) and
pool / upsample in-plane only ((1, 2, 2)); deeper levels and the bridge, where
the voxels have become near-isotropic, use (3, 3, 3) kernels and (2, 2, 2)
pooling.

Input multiple: Z must divide by ``2**(depth - anisotropic_levels)`` (the
number of isotropic pooling levels) and Y, X by ``2**depth``.
"""

import keras
from keras import layers

from fusionnet_tf.models import blocks
from fusionnet_tf.models import validation

ANISOTROPIC_KERNEL = (1, 3, 3)
ISOTROPIC_KERNEL = (3, 3, 3)
ANISOTROPIC_POOL = (1, 2, 2)
ISOTROPIC_POOL = (2, 2, 2)


def level_geometry(level, anisotropic_levels):
    """(kernel, pool) of level ``level`` (1-based; the bridge is ``depth + 1``)."""
    if level <= anisotropic_levels:
        return ANISOTROPIC_KERNEL, ANISOTROPIC_POOL
    return ISOTROPIC_KERNEL, ISOTROPIC_POOL


def input_multiple_3d(depth, anisotropic_levels):
    """(z, y, x) side multiples the model needs: ``(2**(depth - aniso), 2**depth, 2**depth)``."""
    isotropic = max(depth - anisotropic_levels, 0)
    return (2**isotropic, 2**depth, 2**depth)


def _check_input_shape(input_shape, depth, anisotropic_levels):
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 4:
        raise ValueError("`input_shape` must be (Z, Y, X, C) for the 3D FusionNet; "
                         f"received input_shape={input_shape!r}")
    multiples = input_multiple_3d(depth, anisotropic_levels)
    for axis, size, multiple in zip("ZYX", input_shape[:3], multiples):
        if size is not None and (not isinstance(size, int) or size < 1 or size % multiple):
            raise ValueError(
                f"`input_shape` {axis} must be None or a multiple of {multiple} "
                f"(depth={depth}, anisotropic_levels={anisotropic_levels}); "
                f"received input_shape={tuple(input_shape)!r}")
    return tuple(input_shape)


def build_fusionnet3d(
    input_shape=(None, None, None, 1),
    out_channels=3,
    base_filters=8,
    depth=4,
    residual_convs=3,
    anisotropic_levels=2,
    output_activation="sigmoid",
    dropout=0.0,
    normalization="batch",
    name="fusionnet3d",
):
    """Build the anisotropic 3D FusionNet as a functional ``keras.Model``.

    Encoder: ``depth`` levels of conv-res-conv + max-pool; a bridge
    conv-res-conv; decoder: ``depth`` levels of Conv3DTranspose (kernel =
    stride = the level's pool) + BN + ReLU, ``Add`` with the encoder feature
    of the same level, conv-res-conv. Level ``i`` (1-based) has
    ``base_filters * 2**(i-1)`` filters, the bridge ``base_filters * 2**depth``.
    Levels ``1..anisotropic_levels`` use (1, 3, 3) kernels and (1, 2, 2)
    pooling; deeper levels and the bridge (3, 3, 3) and (2, 2, 2). Layer
    names: ``enc{i}_*``, ``enc{i}_pool``, ``bridge_*``, ``dec{i}_up``,
    ``dec{i}_skip_add``, ``dec{i}_*``, ``output_conv``, ``output``.
    Layer counts: ``depth`` MaxPooling3D, ``depth`` Conv3DTranspose,
    ``(2 * depth + 1) * (residual_convs + 2) + 1`` Conv3D.

    Args:
        input_shape: tuple ``(Z, Y, X, C)``; sides may be None (see
            ``input_multiple_3d``). Defaults to ``(None, None, None, 1)``.
        out_channels: int. Output channels (one per affinity offset).
        base_filters: int. Filters of the first level.
        depth: int. Pooling levels.
        residual_convs: int. Convolutions in each residual block.
        anisotropic_levels: int in [0, depth]. Levels with in-plane kernels and pooling.
        output_activation: ``"sigmoid"`` (affinities), ``"softmax"`` or None;
            always computed in float32 (mixed precision too).
        dropout: float. Dropout on the bridge output.
        normalization: ``"batch"``, ``"group"`` or ``"none"``.
        name: str. Model name.

    Returns:
        ``keras.Model`` mapping (B, Z, Y, X, C) float32 to (B, Z, Y, X,
        out_channels) float32.

    Raises:
        ValueError: for any invalid argument, naming it and its value.

    Example:
    >>> model = build_fusionnet3d(base_filters=4, depth=3, anisotropic_levels=2)
    >>> model(np.zeros((1, 4, 32, 32, 1), "float32")).shape
    TensorShape([1, 4, 32, 32, 3])
    """
    validation.check_positive_int("depth", depth)
    validation.check_positive_int("base_filters", base_filters)
    validation.check_positive_int("residual_convs", residual_convs)
    validation.check_positive_int("anisotropic_levels", anisotropic_levels, minimum=0)
    if anisotropic_levels > depth:
        raise ValueError(f"`anisotropic_levels` must be <= depth={depth}; "
                         f"received anisotropic_levels={anisotropic_levels!r}")
    validation.check_head(out_channels, output_activation)
    validation.check_dropout(dropout)
    blocks.normalization_layer(normalization, base_filters, "probe")
    input_shape = _check_input_shape(input_shape, depth, anisotropic_levels)

    def crc(x, filters, prefix, level):
        kernel, _ = level_geometry(level, anisotropic_levels)
        return blocks.conv_res_conv(x, filters, prefix, residual_convs, normalization,
                                    kernel, layers.Conv3D)

    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    skips = []
    for level in range(1, depth + 1):
        x = crc(x, base_filters * 2 ** (level - 1), f"enc{level}", level)
        skips.append(x)
        _, pool = level_geometry(level, anisotropic_levels)
        x = layers.MaxPooling3D(pool, name=f"enc{level}_pool")(x)

    x = crc(x, base_filters * 2**depth, "bridge", depth + 1)
    if dropout:
        x = layers.Dropout(dropout, name="bridge_dropout")(x)

    for level in range(depth, 0, -1):
        filters = base_filters * 2 ** (level - 1)
        _, pool = level_geometry(level, anisotropic_levels)
        x = blocks.upsample(x, filters, f"dec{level}_up", normalization, pool,
                            layers.Conv3DTranspose)
        x = layers.Add(name=f"dec{level}_skip_add")([x, skips[level - 1]])
        x = crc(x, filters, f"dec{level}", level)

    outputs = blocks.output_head(x, out_channels, output_activation, layers.Conv3D)
    return keras.Model(inputs, outputs, name=name)

"""U-Net baseline with 'same' padding, for side-by-side comparison.

Reference: Ronneberger, Fischer & Brox (2015), "U-Net: Convolutional Networks
for Biomedical Image Segmentation", https://arxiv.org/abs/1505.04597
"""

import keras
from keras import layers

from fusionnet_tf.models import blocks
from fusionnet_tf.models.fusionnet import check_builder_args


def build_unet(
    input_shape=(None, None, 1),
    num_classes=1,
    base_filters=64,
    depth=4,
    output_activation="sigmoid",
    dropout=0.0,
    normalization="batch",
    name="unet",
):
    """Build a U-Net with the same knobs as ``build_fusionnet``.

    Each level is two conv3x3-BN-ReLU layers (no residual block); decoder
    levels upsample with Conv2DTranspose and join the encoder feature by
    concatenation (``dec{i}_skip_concat``), as in Ronneberger et al. 2015 but
    with 'same' padding so the output has the input's size.

    Args:
        input_shape: tuple ``(H, W, C)``; H, W None or divisible by ``2**depth``.
        num_classes: int. Output channels. Defaults to 1.
        base_filters: int. Filters of the first level. Defaults to 64.
        depth: int. Number of pooling levels. Defaults to 4.
        output_activation: ``"sigmoid"``, ``"softmax"`` or ``None`` (logits).
        dropout: float. Dropout rate on the bridge output. Defaults to 0.
        normalization: ``"batch"``, ``"group"`` or ``"none"``.
        name: str. Model name.

    Returns:
        ``keras.Model`` mapping (batch, H, W, C) float32 to
        (batch, H, W, num_classes) float32.

    Raises:
        ValueError: for any invalid argument.

    Example:
    >>> model = build_unet(base_filters=8, depth=2)
    """
    input_shape = check_builder_args(input_shape, base_filters, depth, num_classes,
                                     output_activation, dropout, normalization)
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    skips = []
    for level in range(1, depth + 1):
        x = blocks.double_conv(x, base_filters * 2 ** (level - 1), f"enc{level}", normalization)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)

    x = blocks.double_conv(x, base_filters * 2**depth, "bridge", normalization)
    if dropout:
        x = layers.Dropout(dropout, name="bridge_dropout")(x)

    for level in range(depth, 0, -1):
        filters = base_filters * 2 ** (level - 1)
        x = blocks.upsample(x, filters, f"dec{level}_up", normalization)
        x = layers.Concatenate(name=f"dec{level}_skip_concat")([x, skips[level - 1]])
        x = blocks.double_conv(x, filters, f"dec{level}", normalization)

    outputs = blocks.output_head(x, num_classes, output_activation)
    return keras.Model(inputs, outputs, name=name)

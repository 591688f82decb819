"""FusionNet: a deep, fully residual U-Net-like network for EM segmentation.

Reference: Quan, Hildebrand & Jeong (2016), "FusionNet: A deep fully residual
convolutional neural network for image segmentation in connectomics",
https://arxiv.org/abs/1612.05360
"""

import keras
from keras import layers

from fusionnet_tf.models import blocks
from fusionnet_tf.models import validation


def check_builder_args(input_shape, base_filters, depth, num_classes,
                       output_activation, dropout, normalization):
    """Validate the knobs shared by ``build_fusionnet`` and ``build_unet``."""
    validation.check_positive_int("depth", depth)
    validation.check_positive_int("base_filters", base_filters)
    validation.check_head(num_classes, output_activation)
    validation.check_dropout(dropout)
    blocks.normalization_layer(normalization, base_filters, "probe")
    return validation.check_input_shape(input_shape, depth)


def build_fusionnet(
    input_shape=(None, None, 1),
    num_classes=1,
    base_filters=64,
    depth=4,
    residual_convs=3,
    output_activation="sigmoid",
    dropout=0.0,
    normalization="batch",
    name="fusionnet",
):
    """Build FusionNet as a functional ``keras.Model``.

    Encoder: ``depth`` levels of conv-res-conv + 2x2 max-pool; a bridge
    conv-res-conv; decoder: ``depth`` levels of Conv2DTranspose (2x2, stride 2)
    + BN + ReLU, a long skip by summation (``Add``) with the encoder feature of
    the same level, and conv-res-conv. Level ``i`` (1-based) has
    ``base_filters * 2**(i-1)`` filters, the bridge ``base_filters * 2**depth``.
    'same' padding everywhere, so the output has the input's H and W; a 1x1
    conv maps to ``num_classes`` channels.

    Args:
        input_shape: tuple ``(H, W, C)``. H and W may be None (any size
            divisible by ``2**depth``). Defaults to ``(None, None, 1)``.
        num_classes: int. Output channels. Defaults to 1 (membrane).
        base_filters: int. Filters of the first level. Defaults to 64 (paper).
        depth: int. Number of pooling levels. Defaults to 4 (paper).
        residual_convs: int. Convolutions in each residual block. Defaults to 3.
        output_activation: ``"sigmoid"``, ``"softmax"`` or ``None`` (logits).
            Always computed in float32. Defaults to ``"sigmoid"``.
        dropout: float. Dropout rate applied to the bridge output. Defaults to 0.
        normalization: ``"batch"``, ``"group"`` or ``"none"``. Defaults to
            ``"batch"``.
        name: str. Model name.

    Returns:
        ``keras.Model`` mapping (batch, H, W, C) float32 to
        (batch, H, W, num_classes) float32 (probabilities unless
        ``output_activation`` is None).

    Raises:
        ValueError: for any invalid argument, naming it and its value.

    Example:
    >>> model = build_fusionnet(base_filters=8, depth=2)
    >>> model(np.zeros((1, 64, 64, 1), "float32")).shape
    TensorShape([1, 64, 64, 1])
    """
    input_shape = check_builder_args(input_shape, base_filters, depth, num_classes,
                                     output_activation, dropout, normalization)
    validation.check_positive_int("residual_convs", residual_convs)

    def crc(x, filters, prefix):
        return blocks.conv_res_conv(x, filters, prefix, residual_convs, normalization)

    # === Encoder ===
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    skips = []
    for level in range(1, depth + 1):
        x = crc(x, base_filters * 2 ** (level - 1), f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)

    # === Bridge ===
    x = crc(x, base_filters * 2**depth, "bridge")
    if dropout:
        x = layers.Dropout(dropout, name="bridge_dropout")(x)

    # === Decoder ===
    for level in range(depth, 0, -1):
        filters = base_filters * 2 ** (level - 1)
        x = blocks.upsample(x, filters, f"dec{level}_up", normalization)
        x = layers.Add(name=f"dec{level}_skip_add")([x, skips[level - 1]])
        x = crc(x, filters, f"dec{level}")

    outputs = blocks.output_head(x, num_classes, output_activation)
    return keras.Model(inputs, outputs, name=name)

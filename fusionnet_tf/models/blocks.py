"""Building blocks shared by the FusionNet and U-Net builders.

Every block is a plain function that wires built-in Keras layers, so a saved
``.keras`` file reloads without custom objects and exports cleanly to
SavedModel, LiteRT and ONNX. Every layer gets a stable name derived from the
``name`` prefix passed in (``enc2_res_conv1``, ``dec3_skip_add``...).
"""

import math

from keras import layers

from fusionnet_tf.checks import check_choice

NORMALIZATIONS = ("batch", "group", "none")


def normalization_layer(normalization, filters, name):
    """Return the normalization layer for ``normalization``, or None.

    Args:
        normalization: str. One of ``"batch"``, ``"group"`` or ``"none"``.
        filters: int. Channels of the tensor being normalized.
        name: str. Layer name.

    Returns:
        A ``keras.layers.Layer`` or ``None`` for ``"none"``.
    """
    check_choice("normalization", normalization, NORMALIZATIONS)
    if normalization == "batch":
        return layers.BatchNormalization(name=name)
    if normalization == "group":
        return layers.GroupNormalization(groups=math.gcd(8, filters), name=name)
    return None  # "none"


def conv_bn_relu(x, filters, name, normalization="batch", kernel_size=3, conv=layers.Conv2D):
    """Conv (3x3, 'same') -> normalization -> ReLU.

    The convolution has no bias when a normalization layer follows it (the
    normalization's offset plays that role).

    Args:
        x: tensor of shape (batch, H, W, C).
        filters: int. Output channels.
        name: str. Prefix for the three layer names (``name``,
            ``name + "_bn"``, ``name + "_relu"``).
        normalization: str. ``"batch"``, ``"group"`` or ``"none"``.
        kernel_size: int or tuple. Kernel size (a tuple such as (1, 3, 3)
            for a 3D ``conv``).
        conv: the convolution layer class: ``layers.Conv2D`` (default) or
            ``layers.Conv3D`` (then x is (batch, Z, H, W, C)).

    Returns:
        Tensor of shape (batch, H, W, filters) (or (batch, Z, H, W, filters)).
    """
    norm = normalization_layer(normalization, filters, f"{name}_bn")
    x = conv(
        filters,
        kernel_size,
        padding="same",
        use_bias=norm is None,
        kernel_initializer="he_normal",
        name=name,
    )(x)
    if norm is not None:
        x = norm(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def residual_block(x, filters, name, residual_convs=3, normalization="batch", kernel_size=3,
                   conv=layers.Conv2D):
    """``residual_convs`` conv-BN-ReLU layers whose output is added to ``x``.

    Args:
        x: tensor of shape (batch, H, W, filters).
        filters: int. Channels (must equal the channels of ``x``).
        name: str. Prefix: layers are ``{name}_conv{i}`` and ``{name}_add``.
        residual_convs: int. Number of convolutions inside the block.
        normalization: str. See ``conv_bn_relu``.
        kernel_size, conv: see ``conv_bn_relu`` (2D 3x3 by default).

    Returns:
        Tensor of shape (batch, H, W, filters).
    """
    y = x
    for i in range(1, residual_convs + 1):
        y = conv_bn_relu(y, filters, f"{name}_conv{i}", normalization, kernel_size, conv)
    return layers.Add(name=f"{name}_add")([x, y])


def conv_res_conv(x, filters, name, residual_convs=3, normalization="batch", kernel_size=3,
                  conv=layers.Conv2D):
    """FusionNet's conv-res-conv block.

    conv3x3-BN-ReLU, then a residual block of ``residual_convs`` such layers
    added to the first conv's output, then conv3x3-BN-ReLU.

    Args:
        x: tensor of shape (batch, H, W, C).
        filters: int. Output channels.
        name: str. Prefix: ``{name}_conv_in``, ``{name}_res_conv{i}``,
            ``{name}_res_add``, ``{name}_conv_out``.
        residual_convs: int. Convolutions in the residual block.
        normalization: str. See ``conv_bn_relu``.
        kernel_size, conv: see ``conv_bn_relu`` (2D 3x3 by default; the 3D
            FusionNet passes ``layers.Conv3D`` and (1, 3, 3) or (3, 3, 3)).

    Returns:
        Tensor of shape (batch, H, W, filters).
    """
    x = conv_bn_relu(x, filters, f"{name}_conv_in", normalization, kernel_size, conv)
    x = residual_block(x, filters, f"{name}_res", residual_convs, normalization, kernel_size, conv)
    return conv_bn_relu(x, filters, f"{name}_conv_out", normalization, kernel_size, conv)


def double_conv(x, filters, name, normalization="batch"):
    """U-Net's two conv3x3-BN-ReLU layers (``{name}_conv1``, ``{name}_conv2``).

    Args:
        x: tensor of shape (batch, H, W, C).
        filters: int. Output channels.
        name: str. Layer name prefix.
        normalization: str. See ``conv_bn_relu``.

    Returns:
        Tensor of shape (batch, H, W, filters).
    """
    x = conv_bn_relu(x, filters, f"{name}_conv1", normalization)
    return conv_bn_relu(x, filters, f"{name}_conv2", normalization)


def upsample(x, filters, name, normalization="batch", strides=2,
             transpose=layers.Conv2DTranspose):
    """Conv2DTranspose 2x2 stride 2 -> normalization -> ReLU.

    Args:
        x: tensor of shape (batch, H, W, C).
        filters: int. Output channels.
        name: str. Prefix: ``{name}``, ``{name}_bn``, ``{name}_relu``.
        normalization: str. See ``conv_bn_relu``.
        strides: int or tuple. Kernel size and stride (e.g. (1, 2, 2) for 3D).
        transpose: ``layers.Conv2DTranspose`` (default) or ``layers.Conv3DTranspose``.

    Returns:
        Tensor of shape (batch, 2H, 2W, filters).
    """
    norm = normalization_layer(normalization, filters, f"{name}_bn")
    x = transpose(
        filters,
        strides,
        strides=strides,
        padding="same",
        use_bias=norm is None,
        kernel_initializer="he_normal",
        name=name,
    )(x)
    if norm is not None:
        x = norm(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def output_head(x, num_classes, output_activation, conv=layers.Conv2D):
    """1x1 conv to ``num_classes`` channels and a float32 activation.

    The activation layer always computes in float32, so under a mixed
    precision policy the model output is float32.

    Args:
        x: tensor of shape (batch, H, W, C).
        num_classes: int. Output channels.
        output_activation: ``"sigmoid"``, ``"softmax"`` or ``None`` (logits).
        conv: ``layers.Conv2D`` (default) or ``layers.Conv3D``.

    Returns:
        float32 tensor of shape (batch, H, W, num_classes).
    """
    x = conv(num_classes, 1, name="output_conv")(x)
    return layers.Activation(
        output_activation or "linear", dtype="float32", name="output"
    )(x)

"""FCN-32s/16s/8s: the fully convolutional network on a VGG16 backbone.

Reference: Long, Shelhamer & Darrell (2015), "Fully Convolutional Networks for
Semantic Segmentation", https://arxiv.org/abs/1411.4038

Padding. The original Caffe model pads the input by 100 pixels and runs
'valid' convolutions, so that its 7x7 ``fc6`` fits small images, and then
crops every score map by a hand-computed offset before each fusion. Here every
convolution uses 'same' padding instead: for inputs whose sides are multiples
of 32, pool3/pool4/pool5 are exactly 1/8, 1/16 and 1/32 of the input, and a
``Conv2DTranspose`` with kernel ``2f``, stride ``f`` and 'same' padding maps
output pixel ``y`` to the source position ``(y + 0.5) / f - 0.5`` (the
centre of the pooled cell that covers it), so the score maps line up to the
pixel with no crop, no offset to get wrong and about half the compute (a
512x512 slice would otherwise run as 712x712). The cost is that ``fc6`` sees
zero padding near the image border; tiled prediction with overlap hides it.
"""

import functools

import numpy as np
import keras
from keras import layers

from fusionnet_tf.checks import check_choice
from fusionnet_tf.models import validation

VARIANTS = ("32s", "16s", "8s")
INPUT_MULTIPLE = 32  # five 2x2 poolings
# VGG16 configuration "D": convolutions per block and width in units of base_filters.
VGG16_BLOCKS = ((2, 1), (2, 2), (3, 4), (3, 8), (3, 8))
# FCN layer -> names of the fully connected VGG16 layer it convolutionalizes
# (keras.applications.VGG16 calls them fc1/fc2; Caffe fc6/fc7).
VGG16_DENSE = {"fc6": ("fc1", "fc6"), "fc7": ("fc2", "fc7")}


def bilinear_kernel(factor, channels=1):
    """Conv2DTranspose kernel that upsamples by ``factor`` with bilinear interpolation.

    The kernel is ``2 * factor`` wide and the separable tent
    ``(1 - |i - c| / factor) * (1 - |j - c| / factor)`` centred at
    ``c = factor - 0.5``; channel ``k`` maps to channel ``k`` only.

    Args:
        factor: int >= 1. Upsampling factor (the stride).
        channels: int. Input and output channels.

    Returns:
        float32 array of shape (2 * factor, 2 * factor, channels, channels)
        (Keras's Conv2DTranspose layout: height, width, out, in).
    """
    validation.check_positive_int("factor", factor)
    size = 2 * factor
    tent = 1.0 - np.abs(np.arange(size) - (factor - 0.5)) / factor
    kernel = np.zeros((size, size, channels, channels), np.float32)
    for k in range(channels):
        kernel[:, :, k, k] = np.outer(tent, tent)
    return kernel


def _check_variant(variant):
    check_choice("variant", variant, VARIANTS)


def _conv(x, filters, kernel_size, name, activation="relu"):
    return layers.Conv2D(filters, kernel_size, padding="same", activation=activation,
                         kernel_initializer="he_normal", name=name)(x)


def _score(x, num_classes, name):
    """Zero-initialized 1x1 class-score convolution (as in the paper)."""
    return layers.Conv2D(num_classes, 1, kernel_initializer="zeros", bias_initializer="zeros",
                         name=name)(x)


def _upscore(x, factor, num_classes, name):
    """Trainable Conv2DTranspose initialized to bilinear upsampling by ``factor``.

    The kernel comes from a ``keras.initializers.Constant`` holding the
    bilinear array, so the layer config (and a model rebuilt from it) carries
    the initialization and a ``.keras`` file reloads without custom objects.
    """
    kernel = keras.initializers.Constant(bilinear_kernel(factor, num_classes))
    return layers.Conv2DTranspose(num_classes, 2 * factor, strides=factor, padding="same",
                                  use_bias=False, kernel_initializer=kernel, name=name)(x)


def _vgg16_features(x, base_filters):
    """The five VGG16 blocks; returns ``{"pool3": ..., "pool4": ..., "pool5": ...}``."""
    pools = {}
    for block, (convs, width) in enumerate(VGG16_BLOCKS, start=1):
        for conv in range(1, convs + 1):
            x = _conv(x, base_filters * width, 3, f"block{block}_conv{conv}")
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
        pools[f"pool{block}"] = x
    return pools


def build_fcn(
    input_shape=(None, None, 1),
    variant="8s",
    num_classes=1,
    base_filters=64,
    fc_filters=None,
    dropout=0.5,
    output_activation="sigmoid",
    vgg16_weights=None,
    name=None,
):
    """Build FCN-32s, FCN-16s or FCN-8s (Long et al. 2015) as a functional ``keras.Model``.

    Backbone: VGG16 (blocks of 2, 2, 3, 3, 3 conv3x3-ReLU with ``base_filters``
    x 1, 2, 4, 8, 8 filters, each followed by 2x2 max pooling; layers
    ``block{b}_conv{c}``, ``block{b}_pool`` as in ``keras.applications.VGG16``).
    Convolutionalized classifier: ``fc6`` (7x7 conv-ReLU) and ``fc7`` (1x1
    conv-ReLU), ``fc_filters`` wide, each followed by dropout, then the 1x1
    class scores ``score_fr``. Decoder by variant (fusion by summation):

    - ``"32s"``: ``upscore32`` (x32) of ``score_fr``;
    - ``"16s"``: ``upscore2`` (x2) + ``score_pool4`` -> ``fuse_pool4``,
      then ``upscore16`` (x16);
    - ``"8s"``: as 16s up to ``fuse_pool4``, then ``upscore_pool4`` (x2) +
      ``score_pool3`` -> ``fuse_pool3``, then ``upscore8`` (x8).

    The upsampling layers are trainable bias-free ``Conv2DTranspose`` layers
    initialized to bilinear interpolation; the score layers (``score_fr``,
    ``score_pool4``, ``score_pool3``) start at zero, as in the paper, so a
    fresh network outputs logit 0 (probability 0.5) everywhere and learning
    starts from the coarse prediction. All convolutions use 'same' padding
    (module docstring), so inputs whose sides are multiples of 32 give an
    output of the same size. The output activation computes in float32 under
    any mixed-precision policy.

    Args:
        input_shape: tuple ``(H, W, C)``; H, W None or multiples of 32.
            Defaults to ``(None, None, 1)``.
        variant: ``"32s"``, ``"16s"`` or ``"8s"``. Defaults to ``"8s"``.
        num_classes: int. Output channels. Defaults to 1 (membrane).
        base_filters: int. Filters of the first VGG block. Defaults to 64 (VGG16).
        fc_filters: int or None. Width of fc6/fc7; None = ``64 * base_filters``
            (4096 at base 64, as in VGG16).
        dropout: float in [0, 1). Dropout after fc6 and fc7 (no layer if 0).
            Defaults to 0.5 (paper).
        output_activation: ``"sigmoid"``, ``"softmax"`` or ``None`` (logits).
        vgg16_weights: path or None. Initialize the backbone (and fc6/fc7 when
            the file has them) from VGG16 weights in a local file; see
            ``load_vgg16_weights``. Nothing is ever downloaded.
        name: str or None. Model name; None = ``"fcn" + variant``.

    Returns:
        ``keras.Model`` mapping (batch, H, W, C) float32 to
        (batch, H, W, num_classes) float32.

    Raises:
        ValueError: for any invalid argument, naming it and its value, or a
            weights file that does not fit.

    Example:
    >>> model = build_fcn(variant="8s", base_filters=4, fc_filters=16)
    >>> model(np.zeros((1, 64, 96, 1), "float32")).shape
    TensorShape([1, 64, 96, 1])
    """
    _check_variant(variant)
    input_shape = validation.check_input_sides(
        input_shape, INPUT_MULTIPLE, f"{INPUT_MULTIPLE} (FCN pools five times by 2)")
    validation.check_positive_int("base_filters", base_filters)
    if fc_filters is None:
        fc_filters = 64 * base_filters
    validation.check_positive_int("fc_filters", fc_filters)
    validation.check_head(num_classes, output_activation)
    validation.check_dropout(dropout)

    # === Backbone ===
    inputs = keras.Input(shape=input_shape, name="image")
    pools = _vgg16_features(inputs, base_filters)

    # === Convolutionalized classifier ===
    x = pools["pool5"]
    for layer_name, kernel_size in (("fc6", 7), ("fc7", 1)):
        x = _conv(x, fc_filters, kernel_size, layer_name)
        if dropout:
            x = layers.Dropout(dropout, name=f"{layer_name}_dropout")(x)
    score = _score(x, num_classes, "score_fr")

    # === Skip fusions and upsampling ===
    if variant == "32s":
        score = _upscore(score, 32, num_classes, "upscore32")
    else:
        score = _upscore(score, 2, num_classes, "upscore2")
        score = layers.Add(name="fuse_pool4")(
            [score, _score(pools["pool4"], num_classes, "score_pool4")])
        if variant == "16s":
            score = _upscore(score, 16, num_classes, "upscore16")
        else:
            score = _upscore(score, 2, num_classes, "upscore_pool4")
            score = layers.Add(name="fuse_pool3")(
                [score, _score(pools["pool3"], num_classes, "score_pool3")])
            score = _upscore(score, 8, num_classes, "upscore8")

    outputs = layers.Activation(output_activation or "linear", dtype="float32",
                                name="output")(score)
    model = keras.Model(inputs, outputs, name=name or f"fcn{variant}")
    if vgg16_weights is not None:
        load_vgg16_weights(model, vgg16_weights)
    return model


build_fcn32s = functools.partial(build_fcn, variant="32s")
build_fcn16s = functools.partial(build_fcn, variant="16s")
build_fcn8s = functools.partial(build_fcn, variant="8s")


# ---------------------------------------------------------------- VGG16 weights


def _legacy_h5_weights(group):
    """``{layer: [arrays]}`` from a Keras 2 / legacy HDF5 weights group."""
    result = {}
    for layer in group.attrs["layer_names"]:
        layer = layer.decode() if isinstance(layer, bytes) else str(layer)
        names = group[layer].attrs.get("weight_names", [])
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        if names:
            result[layer] = [np.asarray(group[layer][n]) for n in names]
    return result


def _keras3_h5_weights(group):
    """``{layer: [arrays]}`` from a Keras 3 ``.weights.h5`` file."""
    result = {}
    for entry in group["layers"].values():
        variables = entry.get("vars")
        if variables is None or not len(variables):
            continue
        name = variables.attrs.get("name", entry.name.rsplit("/", 1)[-1])
        result[str(name)] = [np.asarray(variables[str(i)]) for i in range(len(variables))]
    return result


def read_vgg16_weights(path):
    """Read the per-layer weights of a VGG16-shaped model from a local file.

    Accepts a ``.keras`` model (e.g. ``keras.applications.VGG16(...).save``),
    a Keras 3 ``.weights.h5`` file, or a legacy HDF5 model/weights file such
    as Keras's ``vgg16_weights_tf_dim_ordering_tf_kernels[_notop].h5``.

    Args:
        path: str or Path.

    Returns:
        dict ``{layer name: [kernel, bias, ...]}`` of NumPy arrays.

    Raises:
        ValueError: the file does not exist or is in none of these formats.
    """
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"`vgg16_weights`: no such file: {path}")
    if path.suffix == ".keras":
        source = keras.saving.load_model(path, compile=False)
        return {layer.name: layer.get_weights() for layer in source.layers if layer.weights}
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            for group in (handle, handle.get("model_weights")):
                if group is not None and "layer_names" in group.attrs:
                    return _legacy_h5_weights(group)
            if "layers" in handle:
                return _keras3_h5_weights(handle)
    except OSError as exc:
        raise ValueError(f"`vgg16_weights`: cannot read {path} as HDF5 ({exc})") from exc
    raise ValueError(f"`vgg16_weights`: {path} holds no Keras layer weights "
                     "(expected a .keras, .weights.h5 or legacy .h5 file)")


def _adapt_weights(layer, arrays, path, source_name):
    """Reshape source weights to ``layer``'s shapes, or raise naming the mismatch."""
    if len(arrays) != 2:
        raise ValueError(f"`vgg16_weights` {path}: layer '{source_name}' has {len(arrays)} "
                         "weight arrays; expected a kernel and a bias")
    kernel, bias = arrays
    expected = tuple(layer.kernel.shape)
    if layer.name == "block1_conv1" and kernel.ndim == 4 and kernel.shape[2] == 3 \
            and expected[2] == 1:
        kernel = kernel.sum(axis=2, keepdims=True)  # RGB -> one grey channel
    if layer.name in VGG16_DENSE and kernel.ndim == 2 and kernel.size == np.prod(expected):
        kernel = kernel.reshape(expected)  # Dense (h*w*c, out) -> conv (h, w, c, out)
    if tuple(kernel.shape) != expected or tuple(bias.shape) != tuple(layer.bias.shape):
        raise ValueError(
            f"`vgg16_weights` {path}: layer '{source_name}' has kernel {tuple(kernel.shape)} "
            f"and bias {tuple(bias.shape)}; FCN layer '{layer.name}' needs {expected} and "
            f"{tuple(layer.bias.shape)} (check base_filters / fc_filters)"
        )
    return [kernel, bias]


def load_vgg16_weights(model, path):
    """Initialize an FCN's VGG16 layers from a local VGG16 weights file.

    Every ``block{b}_conv{c}`` layer must be in the file; its first conv is
    adapted to a one-channel input by summing the kernel over RGB. ``fc6`` /
    ``fc7`` are loaded from the file's ``fc1``/``fc2`` (or ``fc6``/``fc7``)
    when present, reshaping the dense kernels into 7x7 and 1x1 convolutions;
    a file without them (``include_top=False``) leaves fc6/fc7 as initialized.
    Score and upsampling layers keep their initialization. Note that VGG16
    expects Caffe-preprocessed inputs (0-255, mean subtracted), not [0, 1].

    Args:
        model: a model from ``build_fcn`` (layer names as there).
        path: str or Path to a file ``read_vgg16_weights`` accepts.

    Returns:
        list of the FCN layer names that were loaded, in model order.

    Raises:
        ValueError: a missing backbone layer or shapes that do not fit, naming
            the file, the layer and both shapes.

    Example:
    >>> keras.applications.VGG16(weights=None, include_top=False).save("vgg16.keras")
    >>> fcn = build_fcn(vgg16_weights="vgg16.keras")
    """
    source = read_vgg16_weights(path)
    updates = []
    for layer in model.layers:
        if layer.name.startswith("block") and layer.weights:
            if layer.name not in source:
                raise ValueError(f"`vgg16_weights` {path} has no layer '{layer.name}'; "
                                 f"found {sorted(source)}")
            updates.append((layer, _adapt_weights(layer, source[layer.name], path, layer.name)))
        elif layer.name in VGG16_DENSE:
            found = [n for n in VGG16_DENSE[layer.name] if n in source]
            if found:
                updates.append((layer, _adapt_weights(layer, source[found[0]], path, found[0])))
    for layer, arrays in updates:  # only after every layer was checked
        layer.set_weights(arrays)
    return [layer.name for layer, _ in updates]

"""Inference-only graph optimization: fold BatchNormalization, choose the compute precision.

In inference mode a BatchNormalization layer is a per-channel affine map,
``y = gamma * (x - mean) / sqrt(var + eps) + beta``. When it directly follows
a convolution whose output nothing else reads, it can be folded into that
convolution's kernel and bias. The folded model then runs
Conv2D + BiasAdd + ReLU, which TensorFlow's grappler remapper fuses into one
oneDNN kernel, instead of a convolution followed by four elementwise passes
over the feature map.

The folded copy has the same layer names as the original (the convolutions
gain a bias; the BatchNormalization layers disappear) and agrees with it to
float32 rounding (about 1e-6).

``inference_copy`` makes that copy and can also give its layers a mixed
precision policy: ``mixed_bfloat16`` runs the convolutions on the bfloat16
units of CPUs that have them (AMX or AVX512-BF16, e.g. Intel Sapphire Rapids
and later: several times faster than float32 there) and of GPUs, while
weights, the output activation and the output stay float32.

``inference_function`` runs such a copy in a ``tf.function`` with its weights
as graph constants, so that oneDNN reorders each kernel once into its blocked
layout and caches it; with variable weights TensorFlow hands oneDNN the HWIO
layout at batch 1 (and reorders every call at larger batches), which slows
the wide (256-1024 channel) convolutions on AVX-512 CPUs by up to 1.8x.
"""

import numpy as np

from fusionnet_tf._compat import call_count, consumer_count, producer, run_through_graph
from fusionnet_tf.checks import check_choice
# the Keras dtype policies a model can compute in, for training and inference alike
from fusionnet_tf.choices import PRECISIONS as INFERENCE_PRECISIONS

FOLDABLE = ("Conv2D", "Conv2DTranspose")
# weights larger than this stay variables in ``inference_function`` (a graph holds at most 2 GB)
MAX_CONSTANT_BYTES = 1 << 30


def _channel_axis_of_kernel(conv):
    # Conv2D kernels are (kh, kw, in, out); Conv2DTranspose kernels (kh, kw, out, in).
    return 2 if type(conv).__name__ == "Conv2DTranspose" else 3


def _is_linear(conv):
    """True if the conv layer applies no activation (BN can only fold into an affine map)."""
    import keras

    return conv.activation in (None, keras.activations.linear)


def foldable_pairs(model):
    """Map conv layer name -> the BatchNormalization layer that follows it.

    A pair qualifies when the BatchNormalization normalizes the last axis, is
    called once, and its input is the only output use of a Conv2D or
    Conv2DTranspose layer (channels_last, linear activation, called once,
    not itself a model output).

    Args:
        model: a functional ``keras.Model``.

    Returns:
        dict ``{conv_name: bn_layer}``; empty if nothing can be folded.
    """
    from keras import layers

    pairs = {}
    outputs = _output_layer_names(model)
    for layer in getattr(model, "layers", []):
        if not isinstance(layer, layers.BatchNormalization) or call_count(layer) != 1:
            continue
        if layer.axis not in (-1, len(layer.input.shape) - 1):
            continue
        conv = producer(layer.input)
        if (
            type(conv).__name__ in FOLDABLE
            and getattr(conv, "data_format", "channels_last") == "channels_last"
            and _is_linear(conv)
            and call_count(conv) == 1
            and consumer_count(conv) == 1
            and conv.name not in outputs  # a model output must keep its un-normalized value
        ):
            pairs[conv.name] = layer
    return pairs


def folded_conv_weights(conv, bn):
    """Kernel and bias of ``conv`` with ``bn`` (inference mode) folded in.

    Args:
        conv: built Conv2D or Conv2DTranspose layer.
        bn: built BatchNormalization layer on the conv output.

    Returns:
        ``(kernel, bias)`` float32 arrays with the conv's kernel shape and
        (filters,) shape.
    """
    kernel = np.asarray(conv.kernel.numpy(), np.float64)
    filters = kernel.shape[_channel_axis_of_kernel(conv)]
    bias = np.asarray(conv.bias.numpy(), np.float64) if conv.use_bias else np.zeros(filters)
    mean = np.asarray(bn.moving_mean.numpy(), np.float64)
    variance = np.asarray(bn.moving_variance.numpy(), np.float64)
    gamma = np.asarray(bn.gamma.numpy(), np.float64) if bn.scale else np.ones(filters)
    beta = np.asarray(bn.beta.numpy(), np.float64) if bn.center else np.zeros(filters)
    scale = gamma / np.sqrt(variance + bn.epsilon)
    shape = [1, 1, 1, 1]
    shape[_channel_axis_of_kernel(conv)] = filters
    kernel = kernel * scale.reshape(shape)
    bias = (bias - mean) * scale + beta
    return kernel.astype(np.float32), bias.astype(np.float32)


def fold_batchnorm(model):
    """Return an inference copy of ``model`` with BatchNormalization folded away.

    Same as ``inference_copy(model)``.

    Example:
    >>> fast = fold_batchnorm(build_fusionnet(base_filters=8, depth=2))
    """
    return inference_copy(model)


def _as_functional(model):
    """A built ``keras.Sequential`` as a functional model over the same layers; others as is."""
    import keras

    if isinstance(model, keras.Sequential):
        try:
            return keras.Model(model.inputs, model.outputs, name=model.name)
        except (AttributeError, ValueError):  # not built: no inputs yet
            return model
    return model


def _check_flat(model, precision):
    """Refuse nested models for a precision change: their layers would keep float32 silently."""
    import keras

    nested = [layer.name for layer in getattr(model, "layers", []) if isinstance(layer, keras.Model)]
    if nested:
        raise ValueError(
            f"precision={precision!r} needs a model without nested models; {model.name!r} "
            f"contains {', '.join(repr(n) for n in nested)} (build the network as one functional "
            "model, as build_fusionnet does)"
        )


def _output_layer_names(model):
    return {producer(tensor).name for tensor in model.outputs if producer(tensor) is not None}


def _unoptimized(model, reason):
    """Return ``model`` itself after warning that BatchNormalization stays unfolded, and why."""
    import warnings

    warnings.warn(f"inference_copy: BatchNormalization is not folded into {model.name!r} because "
                  f"{reason}; predictions run on the unoptimized model (same numbers, slower)",
                  RuntimeWarning, stacklevel=3)
    return model


def inference_copy(model, fold=True, precision="float32"):
    """Return a copy of ``model`` for inference: BatchNorm folded, any compute precision.

    Args:
        model: a functional ``keras.Model`` (other models are returned as is).
        fold: bool. Fold every BatchNormalization that directly follows a
            convolution into its kernel and bias (see ``foldable_pairs``).
            Defaults to True.
        precision: ``"float32"``, ``"mixed_bfloat16"`` or ``"mixed_float16"``:
            the Keras dtype policy of the copy's layers (weights stay
            float32; convolutions, pooling and additions compute in the half
            type). The layers that produce the model's outputs keep their own
            policy, so FusionNet's sigmoid still computes in float32 and the
            output is float32. Defaults to ``"float32"`` (the model's own
            policies).

    Returns:
        A new ``keras.Model`` with the same inputs, outputs and layer names
        minus the folded BatchNormalization layers, or ``model`` itself when
        there is nothing to change. Only valid for inference (``training=False``).
        When ``fold`` is asked for a model whose graph cannot be read or
        cloned, ``model`` itself is returned with a ``RuntimeWarning`` that
        names the reason.

    Raises:
        ValueError: unknown ``precision``, or a ``precision`` other than
            float32 for a model that cannot be cloned.

    Example:
    >>> fast = inference_copy(build_fusionnet(base_filters=8, depth=2), precision="mixed_bfloat16")
    """
    import keras

    check_choice("precision", precision, INFERENCE_PRECISIONS)
    recast = precision != "float32"
    model = _as_functional(model)
    if recast:
        _check_flat(model, precision)
    try:
        pairs = foldable_pairs(model) if fold else {}
        keep_policy = _output_layer_names(model)
    except (AttributeError, ValueError) as exc:
        if recast:
            raise ValueError(f"precision={precision!r} needs a functional keras.Model; "
                             f"received {type(model).__name__}") from exc
        return _unoptimized(model, f"its layer graph cannot be read ({exc})")
    if not pairs and not recast:
        return model
    skipped = {bn.name for bn in pairs.values()}

    def clone_layer(layer):
        config = layer.get_config()
        if layer.name in pairs:
            config["use_bias"] = True
        if recast and layer.name not in keep_policy:
            config["dtype"] = keras.DTypePolicy(precision)
        return layer.__class__.from_config(config)

    def call_layer(layer, *args, **kwargs):
        if layer.name in skipped:
            return args[0]
        return layer(*args, **kwargs)

    try:
        copy = keras.models.clone_model(model, clone_function=clone_layer,
                                        call_function=call_layer if skipped else None)
    except (ValueError, TypeError) as exc:
        if recast:
            raise ValueError(f"precision={precision!r}: could not clone the model ({exc})") from exc
        return _unoptimized(model, f"it cannot be cloned ({exc})")
    for layer in copy.layers:
        if not layer.weights:  # e.g. input layers, which the clone may rename
            continue
        original = model.get_layer(layer.name)
        if layer.name in pairs:
            layer.set_weights(list(folded_conv_weights(original, pairs[layer.name])))
        elif original.weights:
            layer.set_weights(original.get_weights())
    return copy


def _weight_bytes(model):
    # "bfloat16" is a NumPy dtype once TensorFlow (ml_dtypes) is imported
    return sum(int(np.prod(v.shape)) * np.dtype(str(v.dtype)).itemsize for v in model.weights)


def inference_function(model, tile=None, jit_compile=False, constant_weights=None):
    """A ``tf.function`` running ``model`` for inference, its weights baked in as constants.

    TensorFlow's oneDNN convolution keeps a variable kernel in TensorFlow's
    HWIO layout when the batch holds one image, and reorders it into
    oneDNN's blocked layout on every call otherwise. A kernel that is a graph
    constant is reordered once and the blocked copy is cached
    (``is_filter_const``). On a 2-core AVX-512 CPU (Zen 5) the blocked
    kernels make the 1024-channel convolutions of FusionNet base 64 1.8x and
    the 256-channel ones 1.2x as fast, the whole float32 512 x 512 pass
    12-14% faster (more when other processes share the caches); layers of
    64-128 channels gain nothing (BENCHMARKS.md,
    ``benchmarks/profile_inference.py``). The price is set-up: the first
    call takes seconds longer for wide models (base 64: about +9-13 s on 2
    busy cores; base 16: no difference), so it pays off on many tiles.

    The constants are a snapshot of the weights when the function is made;
    later changes to ``model`` do not reach it (use it on an inference copy,
    not on a model being trained). TensorFlow caches oneDNN primitives per
    process by shape only: where the same convolution already ran with
    variable weights at batch 1, the constant one reuses that primitive and
    gains nothing.

    Args:
        model: a built ``keras.Model`` with one (B, H, W, C) input, e.g.
            ``inference_copy(model)``.
        tile: int, tuple or None. Spatial side of the inputs (square), one
            side per spatial axis (e.g. ``(tz, ty, tx)`` for a 3D model), or
            None: any size along each spatial axis. Defaults to None.
        jit_compile: bool. Compile with XLA. Defaults to False.
        constant_weights: bool or None. Bake the weights in as constants.
            None (default): yes unless ``jit_compile`` (XLA lays out its own
            kernels and compiles longer with constants) or the weights take
            more than ``MAX_CONSTANT_BYTES`` (a graph holds at most 2 GB).

    Returns:
        A ``tf.function`` mapping a (B, tile, tile, C) float32 tensor to the
        model output cast to float32; traced once (any batch size).

    Example:
    >>> run = inference_function(inference_copy(build_fusionnet(base_filters=8, depth=2)), 64)
    >>> run(np.zeros((1, 64, 64, 1), np.float32)).shape
    TensorShape([1, 64, 64, 1])
    """
    import tensorflow as tf

    channels = model.input_shape[-1]
    if isinstance(tile, (tuple, list)):  # one side per spatial axis, e.g. (tz, ty, tx)
        spatial = tuple(tile)
    else:  # a square 2D side, or None: any size along each spatial axis of the model
        spatial = (None,) * (len(model.input_shape) - 2) if tile is None else (tile, tile)
    signature = [tf.TensorSpec((None,) + spatial + (channels,), tf.float32)]
    if constant_weights is None:
        constant_weights = not jit_compile and _weight_bytes(model) <= MAX_CONSTANT_BYTES

    def as_float32(outputs):
        return tf.nest.map_structure(lambda y: tf.cast(y, tf.float32), outputs)

    if not constant_weights:
        def run(x):
            return as_float32(model(x, training=False))
    else:
        trainable = [v.numpy() for v in model.trainable_variables]
        non_trainable = [v.numpy() for v in model.non_trainable_variables]

        def run(x):
            # tf.constant inside the trace makes Const nodes: the kernels oneDNN sees as constant
            outputs, _ = model.stateless_call([tf.constant(w) for w in trainable],
                                              [tf.constant(w) for w in non_trainable],
                                              x, training=False)
            return as_float32(outputs)

    return tf.function(run, input_signature=signature, jit_compile=bool(jit_compile))


# layers whose FLOPs ``conv_flops`` counts
COUNTED_CONVS = ("Conv2D", "Conv2DTranspose", "Conv3D", "Conv3DTranspose")


def conv_flops(model, height, width, batch=1, depth=None):
    """Analytic FLOPs of the convolutions of one forward pass.

    Counts ``2 * kernel volume * cin / groups * cout`` per output pixel (voxel)
    of each Conv2D/Conv3D and ``2 * kernel volume * cin * cout`` per input
    pixel (voxel) of each Conv2DTranspose/Conv3DTranspose (a multiply-add =
    2 FLOPs); normalization, activations, additions and pooling are not
    counted (they are memory bound and cost well under 1%).

    Args:
        model: functional ``keras.Model`` taking (batch, H, W, C), or
            (batch, Z, H, W, C) with ``depth``.
        height, width: int. Input size.
        batch: int. Batch size. Defaults to 1.
        depth: int or None. Input depth Z of a 3D model. Defaults to None (2D).

    Returns:
        int FLOPs: the sum of ``conv_flops_by_layer``.

    Example:
    >>> conv_flops(build_fusionnet(base_filters=64), 512, 512) / 1e9   # about 829 GFLOP
    """
    return sum(conv_flops_by_layer(model, height, width, batch, depth).values())


def conv_flops_by_layer(model, height, width, batch=1, depth=None):
    """FLOPs of each convolution layer of one forward pass (as counted by ``conv_flops``).

    Args:
        model, height, width, batch, depth: as for ``conv_flops``.

    Returns:
        dict ``{layer name: int FLOPs}`` of the Conv2D, Conv3D and
        transposed layers, in call order (a layer called twice: summed).

    Example:
    >>> conv_flops_by_layer(build_fusionnet3d(), 256, 256, depth=16)["enc1_res_conv1"]
    1207959552
    """
    import math

    import keras

    flops = {}

    def count(layer, *args, **kwargs):
        spec = layer.compute_output_spec(*args, **kwargs)
        kind = type(layer).__name__
        if kind in COUNTED_CONVS:
            taps = math.prod(layer.kernel_size)
            cin, cout = args[0].shape[-1], spec.shape[-1]
            if kind.endswith("Transpose"):
                total = 2 * taps * cin * cout * math.prod(args[0].shape[:-1])
            else:
                total = 2 * taps * (cin // layer.groups) * cout * math.prod(spec.shape[:-1])
            flops[layer.name] = flops.get(layer.name, 0) + int(total)
        return spec

    spatial = (height, width) if depth is None else (depth, height, width)
    inputs = keras.KerasTensor((batch,) + spatial + (model.input_shape[-1],), dtype="float32")
    run_through_graph(model, inputs, count)
    return flops

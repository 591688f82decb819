"""Training with TensorFlow's fused BatchNormalization kernel.

Keras 3's ``BatchNormalization`` computes batch moments and the normalization
as separate ops (``ops.moments`` + ``ops.batch_normalization``), so a training
step runs several full passes over every activation forwards and more in the
gradient. TensorFlow's fused kernel (``FusedBatchNormV3`` and its gradient,
oneDNN-accelerated on CPU, cuDNN on GPU) does each direction in one op. On
this project's 2-core CPU a base-16 FusionNet training step on 512 x 512
tiles gets about 1.25x faster in float32 and 1.5-1.8x in mixed_bfloat16
(``benchmarks/bench_train.py``; see BENCHMARKS.md).

``use_fused_batchnorm(model)`` switches the *computation* of every eligible
BatchNormalization layer of a model, in place. The layers stay
``keras.layers.BatchNormalization``: same class, config and weights, so a
saved ``.keras`` file is identical in form and loads anywhere without this
package. Only plain cases are switched: float32, bfloat16 or float16 inputs,
channels-last 4-D tensors normalized over the last axis, no mask, no
``renorm``, not ``synchronized``, training mode; anything else (inference
included, so predictions equal those of the reloaded model) runs Keras's own
code.

Mixed precision (``mixed_bfloat16``, ``mixed_float16``): the kernel takes the
half-precision activations as they come (no cast to float32 and back, which
Keras's layer does), with float32 ``gamma``/``beta``; it accumulates the
batch moments in float32 and returns them in float32, so the moving
statistics stay float32 like Keras's. Its output is in the layer's compute
dtype. On this project's AVX512-BF16 CPU the bfloat16 kernel, forward and
backward, takes a quarter (512 x 512 x 16 activation) to a half (64 x 64 x
128) of the time of Keras's float32 round trip, and about 0.6x the time of
casting to float32 for the float32 kernel. float16 runs too, on a slow
generic CPU kernel (about 2x the cast round trip): it is for GPUs, where
cuDNN serves it.

The maths are Keras's: normalization by the biased batch variance during
training, moving statistics updated with the biased variance
(``moving = moving * momentum + batch * (1 - momentum)``).
"""

import keras
import tensorflow as tf

from fusionnet_tf._compat import replace_call

# Input dtypes of the fused kernel (FusedBatchNormV3: x in T, statistics in float32).
FUSED_DTYPES = (tf.float32, tf.bfloat16, tf.float16)


def _is_eligible(layer, inputs, mask):
    axis = layer.axis if isinstance(layer.axis, int) else (
        layer.axis[0] if len(layer.axis) == 1 else None)
    return (mask is None and not layer.renorm and not layer.synchronized
            and inputs.shape.rank in (4, 5) and axis in (inputs.shape.rank - 1, -1)
            and inputs.shape[-1] is not None
            and inputs.dtype in FUSED_DTYPES)


def _fused_call(layer, inputs, training=None, mask=None):
    """``BatchNormalization.call`` with the fused kernel in training (NHWC inputs).

    Args:
        layer: the ``keras.layers.BatchNormalization`` (float32 variables).
        inputs: (B, H, W, C) tensor, float32, bfloat16 or float16; fed to the
            kernel in its own dtype (no cast).
        training: bool or None.
        mask: must be None for the fused path.

    Returns:
        (B, H, W, C) tensor in the layer's compute dtype (a cast only when
        that differs from the input dtype).
    """
    inputs = tf.convert_to_tensor(inputs)
    if not (training and layer.trainable) or not _is_eligible(layer, inputs, mask):
        # inference stays on Keras's code: a trained model then predicts
        # exactly like the same model reloaded from its .keras file
        return type(layer).call(layer, inputs, training=training, mask=mask)
    channels = inputs.shape[-1]
    shape_5d = None
    if inputs.shape.rank == 5:  # (B, Z, H, W, C) as (B, Z * H, W, C): same per-channel statistics
        shape_5d = tf.shape(inputs)
        inputs = tf.reshape(inputs, [shape_5d[0], shape_5d[1] * shape_5d[2], shape_5d[3], channels])
    gamma = layer.gamma if layer.scale else tf.ones([channels], tf.float32)
    beta = layer.beta if layer.center else tf.zeros([channels], tf.float32)
    gamma, beta = tf.convert_to_tensor(gamma), tf.convert_to_tensor(beta)
    # half-precision inputs: the kernel's mean/variance come out float32
    outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
        inputs, gamma, beta, epsilon=layer.epsilon, is_training=True)
    # the kernel returns the Bessel-corrected variance; Keras keeps the biased one
    variance = variance * _bessel_inverse(inputs)
    momentum = layer.momentum
    layer.moving_mean.assign(layer.moving_mean * momentum + mean * (1.0 - momentum))
    layer.moving_variance.assign(layer.moving_variance * momentum + variance * (1.0 - momentum))
    if shape_5d is not None:
        outputs = tf.reshape(outputs, shape_5d)
    return tf.cast(outputs, layer.compute_dtype)


def _bessel_inverse(inputs):
    """``(n - 1) / n`` for the ``n = B * H * W`` values per channel of ``inputs`` (float32).

    A Python float when the shape is static (one constant in the graph), else
    computed from the runtime shape. ``n = 1`` gives 0 (Keras's biased
    variance of one value).
    """
    count = inputs.shape[:3].num_elements()
    if count is not None:
        return (count - 1.0) / max(count, 1.0)
    count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:3]), tf.float32)
    return (count - 1.0) / tf.maximum(count, 1.0)


def use_fused_batchnorm(model):
    """Compute every BatchNormalization layer of ``model`` with the fused kernel.

    Args:
        model: a built ``keras.Model`` (functional or nested); changed in place.

    Returns:
        int: the number of BatchNormalization layers switched (already
        switched ones are counted, nothing is switched twice).

    Example:
    >>> model = build_fusionnet(base_filters=16)
    >>> use_fused_batchnorm(model)
    41
    """
    if keras.backend.backend() != "tensorflow":
        return 0
    count = 0
    for layer in _all_layers(model):
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        replace_call(layer, _fused_call)  # the layer stays a plain BatchNormalization
        count += 1
    return count


def _all_layers(model):
    """Every layer of ``model``, nested models included (each once, depth first)."""
    seen = set()
    stack = list(reversed(model.layers))
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer
        stack.extend(reversed(getattr(layer, "layers", [])))

"""Training with TensorFlow's fused BatchNormalization kernel.

Keras 3's ``BatchNormalization`` computes batch moments and the normalization
as separate ops (``ops.moments`` + ``ops.batch_normalization``), so a training
step runs several full passes over every activation forwards and more in the
gradient. TensorFlow's fused kernel (``FusedBatchNormV3`` and its gradient,
oneDNN-accelerated on CPU, cuDNN on GPU) does each direction in one op. On
this project's 2-core CPU a base-16 FusionNet training step on 512 x 512
tiles gets about 19% faster (``benchmarks/bench_train.py --variant fused_bn``;
see BENCHMARKS.md).

``use_fused_batchnorm(model)`` switches the *computation* of every eligible
BatchNormalization layer of a model, in place. The layers stay
``keras.layers.BatchNormalization``: same class, config and weights, so a
saved ``.keras`` file is identical in form and loads anywhere without this
package. Only plain cases are switched: float32 inputs (so not under the
``mixed_float16`` / ``mixed_bfloat16`` policies, whose BN inputs arrive in half
precision: those keep Keras's code and gain nothing),
channels-last 4-D tensors normalized over the last axis, no mask, no
``renorm``, not ``synchronized``, training mode; anything else (inference
included, so predictions equal those of the reloaded model) runs Keras's own
code.

The maths are Keras's: normalization by the biased batch variance during
training, moving statistics updated with the biased variance
(``moving = moving * momentum + batch * (1 - momentum)``).
"""

import keras
import tensorflow as tf

from fusionnet_tf._compat import replace_call


def _is_eligible(layer, inputs, mask):
    axis = layer.axis if isinstance(layer.axis, int) else (
        layer.axis[0] if len(layer.axis) == 1 else None)
    return (mask is None and not layer.renorm and not layer.synchronized
            and inputs.shape.rank == 4 and axis in (3, -1) and inputs.shape[-1] is not None
            and inputs.dtype == tf.float32)


def _fused_call(layer, inputs, training=None, mask=None):
    """``BatchNormalization.call`` with the fused kernel in training (float32 NHWC inputs).

    Args:
        layer: the ``keras.layers.BatchNormalization``.
        inputs: (B, H, W, C) tensor.
        training: bool or None.
        mask: must be None for the fused path.

    Returns:
        (B, H, W, C) tensor in the layer's compute dtype.
    """
    inputs = tf.convert_to_tensor(inputs)
    if not (training and layer.trainable) or not _is_eligible(layer, inputs, mask):
        # inference stays on Keras's code: a trained model then predicts
        # exactly like the same model reloaded from its .keras file
        return type(layer).call(layer, inputs, training=training, mask=mask)
    channels = inputs.shape[-1]
    gamma = layer.gamma if layer.scale else tf.ones([channels], tf.float32)
    beta = layer.beta if layer.center else tf.zeros([channels], tf.float32)
    gamma, beta = tf.convert_to_tensor(gamma), tf.convert_to_tensor(beta)
    outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
        inputs, gamma, beta, epsilon=layer.epsilon, is_training=True)
    # the kernel returns the Bessel-corrected variance; Keras keeps the biased one
    count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:3]), tf.float32)
    variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
    momentum = layer.momentum
    layer.moving_mean.assign(layer.moving_mean * momentum + mean * (1.0 - momentum))
    layer.moving_variance.assign(layer.moving_variance * momentum + variance * (1.0 - momentum))
    return tf.cast(outputs, layer.compute_dtype)


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

"""Model builders: FusionNet (2D and anisotropic 3D), the U-Net baseline and FCN-32s/16s/8s."""

import functools

from keras import layers

from fusionnet_tf.checks import check_choice

from fusionnet_tf.models.fcn import build_fcn, build_fcn8s, build_fcn16s, build_fcn32s
from fusionnet_tf.models.fusionnet import build_fusionnet
from fusionnet_tf.models.fusionnet3d import build_fusionnet3d
from fusionnet_tf.models.unet import build_unet

BUILDERS = {"fusionnet": build_fusionnet, "unet": build_unet, "fcn8s": build_fcn8s,
            "fcn16s": build_fcn16s, "fcn32s": build_fcn32s, "fusionnet3d": build_fusionnet3d}
# Knobs of the shared training config that an architecture does not have;
# build_model drops them (FCN's VGG16 has a fixed depth and no normalization).
_FCN_UNUSED = ("depth", "residual_convs", "normalization")
UNUSED_KNOBS = {"fusionnet": ("fc_filters",), "unet": ("residual_convs", "fc_filters"),
                "fcn8s": _FCN_UNUSED, "fcn16s": _FCN_UNUSED, "fcn32s": _FCN_UNUSED,
                "fusionnet3d": ("fc_filters",)}


def build_model(architecture="fusionnet", **kwargs):
    """Build ``architecture`` (a key of ``BUILDERS``) with ``kwargs``.

    Knobs the architecture does not have (``UNUSED_KNOBS``, e.g. ``depth``
    for an FCN) are dropped, so one training config fits every architecture.
    """
    check_choice("architecture", architecture, sorted(BUILDERS))
    for knob in UNUSED_KNOBS[architecture]:
        kwargs.pop(knob, None)
    return BUILDERS[architecture](**kwargs)


# base_filters of the three small builds that determine ``count_parameters``
_SAMPLE_BASES = (4, 8, 12)


def count_parameters(architecture="fusionnet", base_filters=64, **kwargs):
    """``build_model(architecture, base_filters=..., **kwargs).count_params()``, cheaply.

    Every weight tensor holds a constant times at most two layer widths (a
    kernel: k x k x in x out; a bias or BatchNormalization: one width), and
    every width is ``base_filters`` times a constant (FCN's default
    ``fc_filters`` is ``64 * base_filters``; an explicit one is a constant). So
    the count is a quadratic polynomial in ``base_filters``; three builds at
    base 4, 8 and 12 (cached; at most a few million weights each) fix it
    exactly. At base 64 this avoids allocating 75-134M weights (seconds and
    gigabytes) just to print their number.

    Args:
        architecture: a key of ``BUILDERS``.
        base_filters: int >= 1.
        **kwargs: other ``build_model`` arguments (``depth``, ``fc_filters``, ...);
            hashable values.

    Returns:
        int: the number of parameters (trainable and not) of the built model.

    Example:
    >>> count_parameters("fcn8s", base_filters=64)
    134264547
    """
    from fractions import Fraction

    from fusionnet_tf.models.validation import check_positive_int

    check_positive_int("base_filters", base_filters)
    c0, c1, c2 = _sample_counts(architecture, tuple(sorted(kwargs.items())))
    x0, step = _SAMPLE_BASES[0], _SAMPLE_BASES[1] - _SAMPLE_BASES[0]
    t = Fraction(base_filters - x0, step)  # Newton form on the equally spaced samples
    count = c0 + (c1 - c0) * t + (c2 - 2 * c1 + c0) * t * (t - 1) / 2
    if count.denominator != 1:  # not a quadratic: a builder rounds a width
        raise ValueError(f"cannot count the parameters of {architecture!r} at "
                         f"base_filters={base_filters} from small builds; build the model")
    return int(count)


@functools.lru_cache(maxsize=32)
def _sample_counts(architecture, knobs):
    """Parameter counts of ``architecture`` at ``_SAMPLE_BASES`` (``knobs``: sorted kwargs)."""
    return tuple(build_model(architecture, base_filters=base, **dict(knobs)).count_params()
                 for base in _SAMPLE_BASES)


def model_depth(model):
    """Number of pooling levels of a built model (H, W must divide 2**depth; 3D models too)."""
    return sum(isinstance(layer, (layers.MaxPooling2D, layers.MaxPooling3D))
               for layer in model.layers)


def input_multiple(model):
    """Side multiple a built model needs: the product of its pooling strides.

    H and W must be multiples of it for the output to have the input's size
    and for tiles to share the pooling grid of the whole image: ``2**depth``
    for FusionNet and U-Net (16 at depth 4), 32 for the FCNs.
    """
    multiple = 1
    for layer in model.layers:
        if isinstance(layer, (layers.MaxPooling2D, layers.AveragePooling2D)):
            multiple *= int(layer.strides[0])
    return multiple


__all__ = ["build_fusionnet", "build_fusionnet3d", "build_unet", "build_fcn", "build_model", "model_depth",
           "input_multiple", "count_parameters", "BUILDERS"]

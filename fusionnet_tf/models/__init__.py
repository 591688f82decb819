"""Model builders: FusionNet, the U-Net baseline and FCN-32s/16s/8s."""

from keras import layers

from fusionnet_tf.models.fcn import build_fcn, build_fcn8s, build_fcn16s, build_fcn32s
from fusionnet_tf.models.fusionnet import build_fusionnet
from fusionnet_tf.models.unet import build_unet

BUILDERS = {"fusionnet": build_fusionnet, "unet": build_unet, "fcn8s": build_fcn8s,
            "fcn16s": build_fcn16s, "fcn32s": build_fcn32s}
# Knobs of the shared training config that an architecture does not have;
# build_model drops them (FCN's VGG16 has a fixed depth and no normalization).
_FCN_UNUSED = ("depth", "residual_convs", "normalization")
UNUSED_KNOBS = {"fusionnet": ("fc_filters",), "unet": ("residual_convs", "fc_filters"),
                "fcn8s": _FCN_UNUSED, "fcn16s": _FCN_UNUSED, "fcn32s": _FCN_UNUSED}


def build_model(architecture="fusionnet", **kwargs):
    """Build ``architecture`` (a key of ``BUILDERS``) with ``kwargs``.

    Knobs the architecture does not have (``UNUSED_KNOBS``, e.g. ``depth``
    for an FCN) are dropped, so one training config fits every architecture.
    """
    if architecture not in BUILDERS:
        raise ValueError(
            f"`architecture` must be one of {sorted(BUILDERS)}; received "
            f"architecture={architecture!r}"
        )
    for knob in UNUSED_KNOBS[architecture]:
        kwargs.pop(knob, None)
    return BUILDERS[architecture](**kwargs)


def model_depth(model):
    """Number of 2x2 pooling levels of a built model (H, W must divide 2**depth)."""
    return sum(isinstance(layer, layers.MaxPooling2D) for layer in model.layers)


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


__all__ = ["build_fusionnet", "build_unet", "build_fcn", "build_model", "model_depth",
           "input_multiple", "BUILDERS"]

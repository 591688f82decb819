"""Model builders: FusionNet and the U-Net baseline."""

from keras import layers

from fusionnet_tf.models.fusionnet import build_fusionnet
from fusionnet_tf.models.unet import build_unet

BUILDERS = {"fusionnet": build_fusionnet, "unet": build_unet}


def build_model(architecture="fusionnet", **kwargs):
    """Build ``architecture`` (``"fusionnet"`` or ``"unet"``) with ``kwargs``."""
    if architecture not in BUILDERS:
        raise ValueError(
            f"`architecture` must be one of {sorted(BUILDERS)}; received "
            f"architecture={architecture!r}"
        )
    if architecture == "unet":
        kwargs.pop("residual_convs", None)
    return BUILDERS[architecture](**kwargs)


def model_depth(model):
    """Number of 2x2 pooling levels of a built model (H, W must divide 2**depth)."""
    return sum(isinstance(layer, layers.MaxPooling2D) for layer in model.layers)


__all__ = ["build_fusionnet", "build_unet", "build_model", "model_depth", "BUILDERS"]

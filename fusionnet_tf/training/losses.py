"""Segmentation losses on membrane probabilities.

Every loss takes ``y_true`` (batch, H, W, 1) in {0, 1} (1 = membrane) and
``y_pred`` (batch, H, W, 1) sigmoid probabilities in [0, 1] (the model's
float32 output), returns one value per sample, and Keras averages over the
batch. All are registered Keras serializables, so a checkpoint's compile
config names them (``fusionnet_tf>SoftDiceLoss``...).

Membranes cover ~22% of ISBI 2012 pixels, which is why a class-weighted BCE
is offered: ``membrane_weight`` = 0.78 / 0.22 ~ 3.5 balances the classes.
"""

import keras
from keras import ops

from fusionnet_tf.checks import check_choice

EPSILON = 1e-7


def _as_float32(y_true, y_pred):
    y_pred = ops.cast(y_pred, "float32")
    y_true = ops.cast(y_true, "float32")
    return y_true, y_pred


def pixel_bce(y_true, y_pred):
    """Per-pixel binary cross-entropy.

    Args:
        y_true: (B, H, W, 1) float in {0, 1}.
        y_pred: (B, H, W, 1) float probabilities.

    Returns:
        (B, H, W) float32, ``-(y log p + (1-y) log(1-p))`` with p clipped to
        ``[1e-7, 1 - 1e-7]``.
    """
    y_true, y_pred = _as_float32(y_true, y_pred)
    p = ops.clip(y_pred, EPSILON, 1.0 - EPSILON)
    bce = -(y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p))
    return ops.mean(bce, axis=-1)


def soft_dice_loss(y_true, y_pred, smooth=1.0):
    """Per-sample soft Dice loss of the membrane class.

    ``1 - (2 sum(p y) + smooth) / (sum(p) + sum(y) + smooth)`` over each
    sample's pixels.

    Args:
        y_true: (B, H, W, 1) float in {0, 1}.
        y_pred: (B, H, W, 1) float probabilities.
        smooth: float. Added to numerator and denominator (empty masks -> 0).

    Returns:
        (B,) float32 in [0, 1].
    """
    y_true, y_pred = _as_float32(y_true, y_pred)
    axes = tuple(range(1, len(y_pred.shape)))
    intersection = ops.sum(y_true * y_pred, axis=axes)
    total = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes)
    return 1.0 - (2.0 * intersection + smooth) / (total + smooth)


def _per_sample_mean(values):
    return ops.mean(ops.reshape(values, (ops.shape(values)[0], -1)), axis=1)


@keras.saving.register_keras_serializable(package="fusionnet_tf")
class BinaryCrossentropy(keras.losses.Loss):
    """Mean per-pixel binary cross-entropy of each sample. Returns (B,)."""

    def __init__(self, name="bce", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        return _per_sample_mean(pixel_bce(y_true, y_pred))


@keras.saving.register_keras_serializable(package="fusionnet_tf")
class WeightedBinaryCrossentropy(keras.losses.Loss):
    """BCE with membrane pixels (label 1) weighted by ``membrane_weight``.

    Per sample: ``mean(w * bce)`` with ``w = 1 + (membrane_weight - 1) * y``.

    Args:
        membrane_weight: float >= 0. Weight of membrane pixels; background
            pixels weigh 1.
    """

    def __init__(self, membrane_weight=1.0, name="weighted_bce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.membrane_weight = float(membrane_weight)

    def call(self, y_true, y_pred):
        y_true, y_pred = _as_float32(y_true, y_pred)
        weight = 1.0 + (self.membrane_weight - 1.0) * ops.mean(y_true, axis=-1)
        return _per_sample_mean(weight * pixel_bce(y_true, y_pred))

    def get_config(self):
        return {**super().get_config(), "membrane_weight": self.membrane_weight}


@keras.saving.register_keras_serializable(package="fusionnet_tf")
class SoftDiceLoss(keras.losses.Loss):
    """Soft Dice loss of the membrane class, per sample. See ``soft_dice_loss``."""

    def __init__(self, smooth=1.0, name="dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        return soft_dice_loss(y_true, y_pred, self.smooth)

    def get_config(self):
        return {**super().get_config(), "smooth": self.smooth}


@keras.saving.register_keras_serializable(package="fusionnet_tf")
class BceDiceLoss(keras.losses.Loss):
    """``BCE + dice_weight * soft Dice`` per sample.

    Args:
        dice_weight: float >= 0. Weight of the Dice term.
        smooth: float. Dice smoothing.
    """

    def __init__(self, dice_weight=1.0, smooth=1.0, name="bce_dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.dice_weight = float(dice_weight)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        bce = _per_sample_mean(pixel_bce(y_true, y_pred))
        return bce + self.dice_weight * soft_dice_loss(y_true, y_pred, self.smooth)

    def get_config(self):
        return {**super().get_config(), "dice_weight": self.dice_weight,
                "smooth": self.smooth}


def get_loss(name, membrane_weight=1.0, dice_weight=1.0, smooth=1.0):
    """Return the ``keras.losses.Loss`` called ``name``.

    Args:
        name: ``"bce"``, ``"dice"``, ``"bce_dice"`` or ``"weighted_bce"``.
        membrane_weight: float. Membrane pixel weight for ``weighted_bce``.
        dice_weight: float. Dice weight for ``bce_dice``.
        smooth: float. Dice smoothing for ``dice`` and ``bce_dice``.

    Returns:
        A ``keras.losses.Loss`` instance.

    Raises:
        ValueError: unknown ``name``.

    Example:
    >>> loss = get_loss("weighted_bce", membrane_weight=3.5)
    """
    check_choice("name", name, ("bce", "dice", "bce_dice", "weighted_bce"))
    if name == "bce":
        return BinaryCrossentropy()
    if name == "weighted_bce":
        return WeightedBinaryCrossentropy(membrane_weight)
    if name == "dice":
        return SoftDiceLoss(smooth)
    return BceDiceLoss(dice_weight, smooth)  # "bce_dice"


# ---------------------------------------------------------------- affinities (3D)

AFFINITY_LOSSES = ("bce", "dice", "bce_dice")


def split_affinity_target(y_true):
    """(B, ..., 2C) packed target -> (affinities, mask), each (B, ..., C) float32.

    The 3D pipeline (``fusionnet_tf.data.pipeline3d``) packs the C affinity
    channels first, then the C mask channels (1 = the pair is inside the patch).
    """
    y_true = ops.cast(y_true, "float32")
    channels = y_true.shape[-1] // 2
    return y_true[..., :channels], y_true[..., channels:]


@keras.saving.register_keras_serializable(package="fusionnet_tf")
class MaskedAffinityLoss(keras.losses.Loss):
    """Masked BCE and/or soft Dice on affinities, per sample.

    ``y_true`` is (B, Z, Y, X, 2C): affinities then mask; ``y_pred`` is
    (B, Z, Y, X, C) sigmoid affinities. Per sample:
    ``bce_weight * sum(mask * bce) / max(sum(mask), 1)
    + dice_weight * (1 - (2 sum(m p y) + s) / (sum(m p) + sum(m y) + s))``.
    Voxels whose pair leaves the patch (mask 0) do not count.

    Args:
        bce_weight: float >= 0.
        dice_weight: float >= 0.
        smooth: float. Dice smoothing.
    """

    def __init__(self, bce_weight=1.0, dice_weight=1.0, smooth=1.0, name="affinity_loss",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        affs, mask = split_affinity_target(y_true)
        pred = ops.cast(y_pred, "float32")
        axes = tuple(range(1, len(pred.shape)))
        loss = 0.0
        if self.bce_weight:
            p = ops.clip(pred, EPSILON, 1.0 - EPSILON)
            bce = -(affs * ops.log(p) + (1.0 - affs) * ops.log(1.0 - p))
            counted = ops.maximum(ops.sum(mask, axis=axes), 1.0)
            loss = loss + self.bce_weight * ops.sum(mask * bce, axis=axes) / counted
        if self.dice_weight:
            intersection = ops.sum(mask * pred * affs, axis=axes)
            total = ops.sum(mask * pred, axis=axes) + ops.sum(mask * affs, axis=axes)
            dice = 1.0 - (2.0 * intersection + self.smooth) / (total + self.smooth)
            loss = loss + self.dice_weight * dice
        return loss

    def get_config(self):
        return {**super().get_config(), "bce_weight": self.bce_weight,
                "dice_weight": self.dice_weight, "smooth": self.smooth}


def get_affinity_loss(name, dice_weight=1.0, smooth=1.0):
    """The masked affinity loss for ``name`` in ``AFFINITY_LOSSES`` (``bce``, ``dice``, ``bce_dice``)."""
    weights = {"bce": (1.0, 0.0), "dice": (0.0, 1.0), "bce_dice": (1.0, dice_weight)}
    check_choice("name", name, AFFINITY_LOSSES, "for affinities")
    return MaskedAffinityLoss(*weights[name], smooth=smooth)


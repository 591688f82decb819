"""Metrics shown during ``fit``: pixel accuracy, membrane Dice and IoU.

These are the ``keras.metrics`` form; the stateless NumPy form is
``fusionnet_tf.metrics.dice`` / ``iou``, with the same rule. The Keras
metrics accumulate true/false positive counts over an epoch, so the epoch
value is the Dice of all pixels seen, not a mean of per-batch Dice values.

Predictions are membrane probabilities; a pixel is membrane where
``prediction > threshold`` (0.5), as in ``fusionnet_tf.metrics`` and
``keras.metrics.BinaryAccuracy``; labels are {0, 1} with 1 = membrane.
"""

import keras
from keras import ops

from fusionnet_tf.training.losses import split_affinity_target


class _MembraneCounts(keras.metrics.Metric):
    """Accumulates TP, FP, FN of the membrane class over an epoch."""

    def __init__(self, threshold=0.5, name=None, dtype="float32"):
        super().__init__(name=name, dtype=dtype)
        self.threshold = float(threshold)
        self.true_positives = self.add_variable((), initializer="zeros", name="tp")
        self.false_positives = self.add_variable((), initializer="zeros", name="fp")
        self.false_negatives = self.add_variable((), initializer="zeros", name="fn")

    def update_state(self, y_true, y_pred, sample_weight=None):
        pred = ops.cast(ops.cast(y_pred, "float32") > self.threshold, "float32")
        true = ops.cast(ops.cast(y_true, "float32") > 0.5, "float32")
        self.true_positives.assign_add(ops.sum(pred * true))
        self.false_positives.assign_add(ops.sum(pred * (1.0 - true)))
        self.false_negatives.assign_add(ops.sum((1.0 - pred) * true))

    def reset_state(self):
        for variable in self.variables:
            variable.assign(0.0)

    def get_config(self):
        return {"threshold": self.threshold, "name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="fusionnet_tf")
class MembraneDice(_MembraneCounts):
    """Epoch-level membrane Dice ``2TP / (2TP + FP + FN)`` (1 if empty).

    Args:
        threshold: float. Probability above which a pixel is membrane.
        name: str. Log name; defaults to ``"dice"`` (``val_dice`` in validation).
    """

    def __init__(self, threshold=0.5, name="dice", dtype="float32"):
        super().__init__(threshold, name, dtype)

    def result(self):
        tp, fp, fn = self.true_positives, self.false_positives, self.false_negatives
        denominator = 2.0 * tp + fp + fn
        return ops.where(denominator > 0, 2.0 * tp / ops.maximum(denominator, 1.0), 1.0)


@keras.saving.register_keras_serializable(package="fusionnet_tf")
class MembraneIoU(_MembraneCounts):
    """Epoch-level membrane IoU ``TP / (TP + FP + FN)`` (1 if empty)."""

    def __init__(self, threshold=0.5, name="iou", dtype="float32"):
        super().__init__(threshold, name, dtype)

    def result(self):
        tp, fp, fn = self.true_positives, self.false_positives, self.false_negatives
        denominator = tp + fp + fn
        return ops.where(denominator > 0, tp / ops.maximum(denominator, 1.0), 1.0)


def fit_metrics(threshold=0.5):
    """The metrics ``train`` compiles with: accuracy, dice, iou.

    Returns:
        list of ``keras.metrics.Metric``: ``BinaryAccuracy`` named
        ``"accuracy"``, :class:`MembraneDice` and :class:`MembraneIoU`.
    """
    return [
        keras.metrics.BinaryAccuracy(name="accuracy", threshold=threshold),
        MembraneDice(threshold),
        MembraneIoU(threshold),
    ]


@keras.saving.register_keras_serializable(package="fusionnet_tf")
class MaskedAffinityAccuracy(keras.metrics.Metric):
    """Fraction of masked affinity voxels predicted on the right side of 0.5, over an epoch."""

    def __init__(self, name="accuracy", dtype="float32"):
        super().__init__(name=name, dtype=dtype)
        self.correct = self.add_variable((), initializer="zeros", name="correct")
        self.counted = self.add_variable((), initializer="zeros", name="counted")

    def update_state(self, y_true, y_pred, sample_weight=None):
        affs, mask = split_affinity_target(y_true)
        right = ops.cast(ops.equal(ops.cast(y_pred, "float32") > 0.5, affs > 0.5), "float32")
        self.correct.assign_add(ops.sum(mask * right))
        self.counted.assign_add(ops.sum(mask))

    def result(self):
        return self.correct / ops.maximum(self.counted, 1.0)

    def reset_state(self):
        for variable in self.variables:
            variable.assign(0.0)


def affinity_fit_metrics():
    """The metrics ``train`` compiles a 3D affinity model with: masked ``accuracy``."""
    return [MaskedAffinityAccuracy()]

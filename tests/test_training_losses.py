"""Losses, fit metrics, learning-rate schedules and strategy helpers."""

import math

import keras
import numpy as np
import pytest

from fusionnet_tf.training import fit_metrics, losses, strategy
from fusionnet_tf.training.config import OptimizerConfig
from fusionnet_tf.training.run import make_learning_rate, make_optimizer


def batch(values, shape=(1, 2, 2, 1)):
    return np.asarray(values, dtype="float32").reshape(shape)


# 1 sample, 4 pixels: two membrane pixels (label 1), two background.
Y_TRUE = batch([1, 1, 0, 0])
Y_PRED = batch([0.9, 0.4, 0.2, 0.6])


def hand_bce(y, p):
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_bce_matches_hand_computation():
    expected = np.mean([hand_bce(y, p) for y, p in zip([1, 1, 0, 0], [0.9, 0.4, 0.2, 0.6])])
    value = float(losses.get_loss("bce")(Y_TRUE, Y_PRED))
    assert value == pytest.approx(expected, rel=1e-5)
    # and Keras's own binary cross-entropy agrees
    keras_value = float(keras.losses.BinaryCrossentropy()(Y_TRUE, Y_PRED))
    assert value == pytest.approx(keras_value, rel=1e-4)


def test_weighted_bce_weights_membrane_pixels():
    w = 3.0
    terms = [hand_bce(y, p) * (w if y else 1.0)
             for y, p in zip([1, 1, 0, 0], [0.9, 0.4, 0.2, 0.6])]
    value = float(losses.get_loss("weighted_bce", membrane_weight=w)(Y_TRUE, Y_PRED))
    assert value == pytest.approx(np.mean(terms), rel=1e-5)
    # weight 1 is plain BCE
    plain = float(losses.get_loss("weighted_bce", membrane_weight=1.0)(Y_TRUE, Y_PRED))
    assert plain == pytest.approx(float(losses.get_loss("bce")(Y_TRUE, Y_PRED)), rel=1e-6)


def test_soft_dice_matches_hand_computation():
    intersection = 0.9 + 0.4
    total = 2 + (0.9 + 0.4 + 0.2 + 0.6)
    expected = 1 - (2 * intersection + 1.0) / (total + 1.0)
    value = float(losses.get_loss("dice", smooth=1.0)(Y_TRUE, Y_PRED))
    assert value == pytest.approx(expected, rel=1e-5)


def test_dice_is_per_sample_and_zero_for_perfect_prediction():
    y_true = np.stack([Y_TRUE[0], 1 - Y_TRUE[0]])
    perfect = float(losses.get_loss("dice", smooth=0.0)(y_true, y_true))
    assert perfect == pytest.approx(0.0, abs=1e-6)
    # sample-wise mean: sample 0 perfect, sample 1 fully wrong (dice 0 -> loss 1)
    y_pred = np.stack([Y_TRUE[0], Y_TRUE[0]])
    assert float(losses.get_loss("dice", smooth=0.0)(y_true, y_pred)) == pytest.approx(0.5)


def test_bce_dice_is_the_weighted_sum():
    bce = float(losses.get_loss("bce")(Y_TRUE, Y_PRED))
    dice = float(losses.get_loss("dice")(Y_TRUE, Y_PRED))
    combined = float(losses.get_loss("bce_dice", dice_weight=0.5)(Y_TRUE, Y_PRED))
    assert combined == pytest.approx(bce + 0.5 * dice, rel=1e-5)


def test_losses_are_finite_at_saturated_probabilities():
    y_pred = batch([1.0, 0.0, 1.0, 0.0])
    for name in ("bce", "weighted_bce", "dice", "bce_dice"):
        assert np.isfinite(float(losses.get_loss(name)(Y_TRUE, y_pred)))


def test_unknown_loss_raises():
    with pytest.raises(ValueError, match="received name='focal'"):
        losses.get_loss("focal")


def test_loss_serialization_round_trip():
    loss = losses.get_loss("bce_dice", dice_weight=0.25, smooth=2.0)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, losses.BceDiceLoss)
    assert restored.dice_weight == 0.25 and restored.smooth == 2.0


# ---------------------------------------------------------------- metrics


def test_keras_metrics_threshold_like_the_numpy_metrics():
    """One rule (``prediction > threshold``) for the fit metrics and fusionnet_tf.metrics."""
    from fusionnet_tf import metrics

    rng = np.random.default_rng(0)
    pred = rng.choice([0.0, 0.3, 0.5, 0.5, 0.7, 1.0], size=(2, 8, 8, 1)).astype("float32")
    label = (rng.random((2, 8, 8, 1)) > 0.5).astype("float32")
    for metric, reference in ((fit_metrics.MembraneDice(), metrics.dice),
                              (fit_metrics.MembraneIoU(), metrics.iou)):
        metric.update_state(label, pred)
        assert float(metric.result()) == pytest.approx(reference(pred, label))
    exactly_half = fit_metrics.MembraneDice()
    exactly_half.update_state(batch([1, 0, 0, 0]), batch([0.5, 0.5, 0.0, 0.0]))
    assert float(exactly_half.result()) == 0.0  # 0.5 is not membrane


def test_keras_metrics_accumulate_counts_over_batches():
    dice, iou = fit_metrics.MembraneDice(), fit_metrics.MembraneIoU()
    second_true, second_pred = batch([1, 0, 0, 0]), batch([0.7, 0.1, 0.1, 0.1])  # TP=1
    for metric in (dice, iou):
        metric.update_state(Y_TRUE, Y_PRED)
        metric.update_state(second_true, second_pred)
    # totals: TP=2 FP=1 FN=1
    assert float(dice.result()) == pytest.approx(4 / 6)
    assert float(iou.result()) == pytest.approx(2 / 4)
    dice.reset_state()
    assert float(dice.result()) == 1.0  # empty


def test_fit_metric_names():
    assert [m.name for m in fit_metrics.fit_metrics()] == ["accuracy", "dice", "iou"]


# ---------------------------------------------------------------- schedules


def lr_at(schedule, step):
    return float(schedule(step)) if callable(schedule) else schedule


def test_constant_learning_rate_without_warmup_is_a_float():
    assert make_learning_rate(OptimizerConfig(learning_rate=0.01), 100) == 0.01


def test_constant_with_warmup_ramps_then_stays():
    schedule = make_learning_rate(OptimizerConfig(learning_rate=0.01, warmup_steps=10), 100)
    assert lr_at(schedule, 0) == pytest.approx(0.0, abs=1e-9)
    assert lr_at(schedule, 5) == pytest.approx(0.005, rel=1e-4)
    for step in (10, 50, 100, 500):
        assert lr_at(schedule, step) == pytest.approx(0.01, rel=1e-5)


def test_cosine_with_warmup_peaks_and_decays_to_floor():
    opt = OptimizerConfig(learning_rate=0.01, schedule="cosine", warmup_steps=10,
                          min_lr_ratio=0.1)
    schedule = make_learning_rate(opt, 110)
    assert lr_at(schedule, 10) == pytest.approx(0.01, rel=1e-5)
    # half-way through the 100 decay steps: (1 + cos(pi/2)) / 2 = 0.5 of the range
    assert lr_at(schedule, 60) == pytest.approx(0.001 + 0.5 * 0.009, rel=1e-4)
    assert lr_at(schedule, 110) == pytest.approx(0.001, rel=1e-4)


def test_adamw_gets_weight_decay_and_clipnorm():
    optimizer = make_optimizer(OptimizerConfig(name="adamw", weight_decay=0.05, clipnorm=1.0),
                               100)
    assert isinstance(optimizer, keras.optimizers.AdamW)
    assert optimizer.weight_decay == pytest.approx(0.05) and optimizer.clipnorm == 1.0
    assert isinstance(make_optimizer(OptimizerConfig(), 100), keras.optimizers.Adam)


# ---------------------------------------------------------------- strategy helpers


def test_global_batch_size():
    assert strategy.global_batch_size(4, False, 2) == 8
    assert strategy.global_batch_size(8, True, 2) == 8
    with pytest.raises(ValueError, match="must divide by the 3 replicas"):
        strategy.global_batch_size(8, True, 3)


def test_tf_config_checks(monkeypatch):
    with pytest.raises(ValueError, match="needs the TF_CONFIG"):
        strategy.check_tf_config(None)
    with pytest.raises(ValueError, match="not valid JSON"):
        strategy.check_tf_config("{nope")
    with pytest.raises(ValueError, match="must hold 'cluster'"):
        strategy.check_tf_config('{"task": {"index": 0}}')
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:2"]}, '
                                    '"task": {"type": "worker", "index": 1}}')
    assert strategy.worker_index() == 1


def test_set_precision_rejects_unknown_policy():
    with pytest.raises(ValueError, match="received precision='float16'"):
        strategy.set_precision("float16")
    strategy.set_precision("mixed_bfloat16")
    assert keras.mixed_precision.dtype_policy().name == "mixed_bfloat16"

"""``train(config)`` end to end on a tiny synthetic stack: outputs, resume, precision."""

import conftest
import keras
import numpy as np
import pytest
import yaml

from fusionnet_tf.training import callbacks as cb
from fusionnet_tf.training.config import config_from_dict, load_config
from fusionnet_tf.training.run import train

STEPS, EPOCHS = conftest.TRAINING_STEPS, conftest.TRAINING_EPOCHS
tiny_config = conftest.tiny_training_config


@pytest.fixture(scope="module")
def stack_files(training_stack):
    return training_stack


class Interrupt(keras.callbacks.Callback):
    """Raise after ``at_step`` training steps (counted across epochs)."""

    def __init__(self, at_step=None, at_epoch_begin=None):
        super().__init__()
        self.at_step, self.at_epoch_begin, self.seen = at_step, at_epoch_begin, 0

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at_epoch_begin:
            raise KeyboardInterrupt(f"killed at the start of epoch {epoch}")

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at_step:
            raise KeyboardInterrupt(f"killed after step {self.seen}")


@pytest.fixture(scope="module")
def reference_run(trained_run):
    """The session's uninterrupted run (tests/conftest.py), shared by the tests below."""
    return trained_run


def test_run_lowers_loss_and_writes_outputs(reference_run):
    config, result = reference_run
    history = result.history
    assert history["epoch"] == [0.0, 1.0]
    assert history["loss"][-1] < history["loss"][0]
    for key in ("val_loss", "val_dice", "dice", "iou", "accuracy"):
        assert len(history[key]) == EPOCHS
    out = result.output_dir
    for name in ("config.yaml", "latest.keras", "best.keras", "best.json", "log.csv",
                 "curves.png"):
        assert (out / name).is_file(), name
    assert yaml.safe_load((out / "config.yaml").read_text()) == \
        yaml.safe_load(yaml.safe_dump(__import__("dataclasses").asdict(config)))
    state = cb.read_backup_state(out / "backup")
    assert (state["epoch"], state["step"], state["global_step"]) == (EPOCHS, 0, EPOCHS * STEPS)
    assert int(result.model.optimizer.iterations.numpy()) == EPOCHS * STEPS
    # latest.keras is the final model and reloads without custom objects
    reloaded = keras.models.load_model(out / "latest.keras", compile=False)
    x = np.random.default_rng(1).random((1, 32, 32, 1)).astype("float32")
    np.testing.assert_allclose(reloaded.predict(x, verbose=0),
                               result.model.predict(x, verbose=0), atol=1e-6)
    # best.keras is the epoch with the lowest val_loss
    best = __import__("json").loads((out / "best.json").read_text())
    assert best["value"] == pytest.approx(min(history["val_loss"]))
    assert best["epoch"] == int(np.argmin(history["val_loss"])) + 1


def assert_same_run(result, reference):
    assert result.history["epoch"] == reference.history["epoch"]
    for key in ("loss", "dice", "val_loss"):
        np.testing.assert_allclose(result.history[key], reference.history[key], rtol=1e-4,
                                   err_msg=key)
    assert int(result.model.optimizer.iterations.numpy()) == EPOCHS * STEPS
    for got, want in zip(result.model.get_weights(), reference.model.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("interrupt", [
    {"at_step": STEPS + 2},        # mid-epoch: epoch 1, after its 2nd step
    {"at_epoch_begin": 1},         # between epochs
], ids=["mid_epoch", "epoch_boundary"])
def test_kill_and_resume_matches_uninterrupted_run(stack_files, tmp_path, reference_run,
                                                   interrupt):
    _, reference = reference_run
    config = tiny_config(stack_files, tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[Interrupt(**interrupt)], verbose=0)
    state = cb.read_backup_state(tmp_path / "run" / "backup")
    assert 0 < state["global_step"] < EPOCHS * STEPS
    keras.backend.clear_session()
    resumed = train(config, verbose=0)
    # resumed where the backup stopped: nothing redone, nothing lost
    assert resumed.initial_epoch * STEPS + resumed.initial_step == state["global_step"]
    if "at_step" in interrupt:
        assert (resumed.initial_epoch, resumed.initial_step) == (1, 1)
    assert_same_run(resumed, reference)
    if "at_step" in interrupt:
        # a further call finds the run complete and trains nothing
        keras.backend.clear_session()
        again = train(config, verbose=0)
        assert again.initial_epoch == EPOCHS and again.history["epoch"] == [0.0, 1.0]


def test_different_config_in_used_folder_is_refused(stack_files, reference_run):
    config, _ = reference_run
    changed = tiny_config(stack_files, config.output_dir, batch_size=2)
    with pytest.raises(FileExistsError, match="differs in: batch_size"):
        train(changed, verbose=0)


def test_resume_with_other_steps_per_epoch_is_refused(stack_files, tmp_path):
    config = tiny_config(stack_files, tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[Interrupt(at_step=2)], verbose=0)
    backup = cb.ResumableBackup(tmp_path / "run" / "backup", 1, STEPS + 1)
    with pytest.raises(ValueError, match="steps_per_epoch=3, the config has steps_per_epoch=4"):
        backup.restore(keras.Model())


@pytest.mark.parametrize("precision, compute_dtype", [("mixed_bfloat16", "bfloat16"),
                                                      ("mixed_float16", "float16")])
def test_mixed_precision_run_lowers_the_loss(stack_files, tmp_path, precision, compute_dtype):
    """Both half precisions train on the CPU with fused BatchNorm in the half dtype;
    float16 (only) with loss scaling."""
    epochs, steps = 3, 4
    config = tiny_config(stack_files, tmp_path / "run", precision=precision, epochs=epochs,
                         steps_per_epoch=steps, fused_batchnorm=True, checkpoint_monitor="loss")
    result = train(config, verbose=0)
    model, losses = result.model, result.history["loss"]
    assert len(losses) == epochs and np.isfinite(losses).all()
    assert losses[-1] < 0.9 * losses[0], losses
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(bn.compute_dtype == compute_dtype for bn in bns)
    assert all(getattr(bn, "_fusionnet_patched", False) for bn in bns)
    assert all(bn.moving_variance.dtype == "float32" for bn in bns)
    assert model.get_layer("enc1_conv_in").compute_dtype == compute_dtype
    assert model.output.dtype == "float32"
    scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (precision == "mixed_float16")
    assert int(model.optimizer.iterations.numpy()) == epochs * steps
    if scaled:
        scale = float(model.optimizer.dynamic_scale.numpy())
        assert np.isfinite(scale) and scale >= 1.0


def test_plot_and_csv_helpers(tmp_path):
    csv_path = tmp_path / "log.csv"
    csv_path.write_text("epoch,loss,val_loss\n0,1.0,1.1\n1,0.8,0.9\n2,0.7,0.95\n")
    cb.truncate_csv_log(csv_path, 2)
    log = cb.read_csv_log(csv_path)
    assert log == {"epoch": [0.0, 1.0], "loss": [1.0, 0.8], "val_loss": [1.1, 0.9]}
    png = cb.plot_training_curves(csv_path, tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cb.plot_training_curves(tmp_path / "missing.csv", tmp_path / "x.png") is None


def test_shipped_smoke_config_loads():
    config = load_config("training/configs/smoke.yaml")
    assert config.model.base_filters == 4


def test_isbi_callback_adds_scores_every_n_epochs(trained_run):
    rng = np.random.default_rng(0)
    labels = np.zeros((1, 64, 64), np.uint8)
    labels[:, 30:33, :] = 1
    images = np.where(labels, 0.1, 0.9).astype("float32") + rng.normal(0, 0.01, labels.shape)
    callback = cb.IsbiEvaluation(np.clip(images, 0, 1).astype("float32"), labels, every=2,
                                 tile_shape=32)
    callback.set_model(trained_run[1].model)
    logs = {}
    callback.on_epoch_end(0, logs)
    assert np.isnan(logs["val_v_rand"]) and np.isnan(logs["val_v_info"])
    callback.on_epoch_end(1, logs)
    assert 0.0 <= logs["val_v_rand"] <= 1.0 and 0.0 <= logs["val_v_info"] <= 1.0

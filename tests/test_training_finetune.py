"""Fine-tuning: ``model.init`` / ``--init``, ``model.freeze`` / ``--freeze``, and resume."""

import keras
import numpy as np
import pytest
import tifffile

from fusionnet_tf.cli import main
from fusionnet_tf.models import build_model
from fusionnet_tf.training.config import config_from_dict, load_config
from fusionnet_tf.training.run import train

MODEL = {"architecture": "fusionnet", "base_filters": 2, "depth": 2, "residual_convs": 1}


@pytest.fixture(scope="module")
def stack_files(tmp_path_factory):
    """4 x 32 x 32 synthetic EM (dark lines on bright noise), ISBI-convention labels."""
    folder = tmp_path_factory.mktemp("finetune")
    rng = np.random.default_rng(0)
    membrane = np.zeros((4, 32, 32), bool)
    membrane[:, 10:12, :] = membrane[:, :, 20:22] = True
    image = np.where(membrane, 60, 190) + rng.normal(0, 12, membrane.shape)
    tifffile.imwrite(folder / "img.tif", np.clip(image, 0, 255).astype(np.uint8),
                     photometric="minisblack")
    tifffile.imwrite(folder / "lab.tif", np.where(membrane, 0, 255).astype(np.uint8),
                     photometric="minisblack")
    return folder / "img.tif", folder / "lab.tif"


@pytest.fixture(scope="module")
def init_file(tmp_path_factory):
    """A model of the configured architecture whose weights (BN statistics too) differ from a fresh build."""
    keras.utils.set_random_seed(123)
    model = build_model(**MODEL)
    rng = np.random.default_rng(1)
    for variable in model.weights:
        value = variable.numpy()
        variable.assign(value + rng.normal(0, 0.1, value.shape).astype(value.dtype)
                        if "variance" not in variable.path else value * 1.5)
    path = tmp_path_factory.mktemp("init") / "init.keras"
    model.save(path)
    return path


def config(stack_files, output_dir, epochs=1, **model):
    images, labels = stack_files
    return config_from_dict({
        "model": dict(MODEL, **model),
        "data": {"train_images": str(images), "train_labels": str(labels),
                 "train_slices": "0-2", "val_slices": "3", "tile_size": 32},
        "augment": False, "optimizer": {"learning_rate": 0.01},
        "epochs": epochs, "steps_per_epoch": 3, "batch_size": 2, "backup_every_steps": 1,
        "output_dir": str(output_dir), "tensorboard": False,
    })


PROBE = np.random.default_rng(2).random((1, 32, 32, 1)).astype(np.float32)


class AtStart(keras.callbacks.Callback):
    """Records the model's prediction of ``PROBE`` and its weights when training begins."""

    def on_train_begin(self, logs=None):
        self.prediction = np.asarray(self.model(PROBE, training=False))
        self.weights = [w.numpy().copy() for w in self.model.weights]


def test_init_starts_from_the_given_models_outputs(stack_files, init_file, tmp_path):
    init = keras.saving.load_model(init_file, compile=False)
    expected = np.asarray(init(PROBE, training=False))
    probe = AtStart()
    train(config(stack_files, tmp_path / "run", init=str(init_file)), callbacks=[probe],
          verbose=0)
    np.testing.assert_array_equal(probe.prediction, expected)
    fresh = AtStart()  # without init the start differs, so the check above means something
    train(config(stack_files, tmp_path / "scratch"), callbacks=[fresh], verbose=0)
    assert np.abs(fresh.prediction - expected).max() > 1e-3


def test_a_resumed_run_keeps_its_weights_and_does_not_reapply_init(stack_files, init_file,
                                                                   tmp_path):
    first = train(config(stack_files, tmp_path / "run", init=str(init_file)), verbose=0)
    trained = [w.numpy().copy() for w in first.model.weights]
    probe = AtStart()
    train(config(stack_files, tmp_path / "run", epochs=2, init=str(init_file)),
          callbacks=[probe], verbose=0)
    init = keras.saving.load_model(init_file, compile=False)
    for resumed, ours, original in zip(probe.weights, trained, init.weights):
        np.testing.assert_array_equal(resumed, ours)
    assert any(not np.array_equal(resumed, original.numpy())
               for resumed, original in zip(probe.weights, init.weights))


def test_freeze_encoder_keeps_encoder_weights_bit_identical(stack_files, init_file, tmp_path):
    result = train(config(stack_files, tmp_path / "run", init=str(init_file), freeze="encoder"),
                   verbose=0)
    init = keras.saving.load_model(init_file, compile=False)
    encoder = decoder = 0
    for ours, original in zip(result.model.layers, init.layers):
        if not ours.weights:
            continue
        same = all(np.array_equal(a.numpy(), b.numpy())
                   for a, b in zip(ours.weights, original.weights))
        if ours.name.startswith("enc"):
            assert same, f"encoder layer {ours.name} changed"
            encoder += 1
        elif ours.name.startswith("dec") and not same:
            decoder += 1
    assert encoder >= 4 and decoder >= 4


def test_mismatched_init_is_refused_naming_the_layer(stack_files, tmp_path):
    wider = tmp_path / "wider.keras"
    build_model(**dict(MODEL, base_filters=4)).save(wider)
    with pytest.raises(ValueError, match=r"model.init .*wider.keras does not match.*'enc1"):
        train(config(stack_files, tmp_path / "run", init=str(wider)), verbose=0)
    assert not (tmp_path / "run").exists()  # nothing written


def _cli(stack_files, tmp_path, *extra):
    images, labels = stack_files
    return main(["train", "--quiet", "--output-dir", str(tmp_path / "cli"),
                 "--set", f"data.train_images={images}", "--set", f"data.train_labels={labels}",
                 "--set", "model.base_filters=2", "--set", "model.depth=2",
                 "--set", "data.tile_size=32", "--set", "epochs=1", "--set", "steps_per_epoch=1",
                 "--set", "checkpoint_monitor=loss",
                 *extra])


def test_cli_refuses_a_mismatched_model_and_a_non_model_file(stack_files, tmp_path, capsys):
    deeper = tmp_path / "deeper.keras"
    build_model(**dict(MODEL, depth=3)).save(deeper)
    assert _cli(stack_files, tmp_path, "--init", str(deeper)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not match" in err and "layer " in err
    text = tmp_path / "notes.keras"
    text.write_text("not a model")
    assert _cli(stack_files, tmp_path, "--init", str(text)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "notes.keras: not a Keras model file" in err
    assert _cli(stack_files, tmp_path, "--init", "nonexistent-name") == 2
    assert "not a shipped model name (isbi2012, snemi3d)" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()


def test_finetune_defaults_and_explicit_settings(tmp_path):
    assert load_config(None, []).optimizer.learning_rate == 1e-3
    tuned = load_config(None, ["model.init=isbi2012"])
    assert (tuned.optimizer.learning_rate, tuned.optimizer.warmup_steps) == (1e-4, 50)
    explicit = load_config(None, ["model.init=isbi2012", "optimizer.learning_rate=3e-4"])
    assert (explicit.optimizer.learning_rate, explicit.optimizer.warmup_steps) == (3e-4, 50)
    # a training config file's from-scratch rate yields to the fine-tuning default ...
    base = tmp_path / "base.yaml"
    base.write_text("optimizer: {learning_rate: 1.0e-3, warmup_steps: 200}\n")
    assert load_config(base, ["model.init=isbi2012"]).optimizer.learning_rate == 1e-4
    # ... but not in a file that sets init itself
    own = tmp_path / "own.yaml"
    own.write_text("model: {init: isbi2012}\noptimizer: {learning_rate: 2.0e-4}\n")
    assert load_config(own).optimizer.learning_rate == 2e-4
    with pytest.raises(ValueError, match="model.freeze"):
        load_config(None, ["model.freeze=decoder"])


def test_init_isbi2012_resolves_to_the_shipped_model():
    from fusionnet_tf.pretrained import PRETRAINED_FILE
    from fusionnet_tf.training.finetune import resolve_init

    assert resolve_init("isbi2012") == PRETRAINED_FILE


def test_init_snemi3d_resolves_to_the_shipped_3d_model():
    from fusionnet_tf.pretrained import REGISTRY
    from fusionnet_tf.training.finetune import resolve_init

    assert resolve_init("snemi3d") == REGISTRY["snemi3d"].weights_path
    with pytest.raises(FileNotFoundError, match="isbi2012, snemi3d"):
        resolve_init("no-such-model")

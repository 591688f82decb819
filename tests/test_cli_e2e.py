"""The ``fusionnet`` commands end to end, with the options no other test runs.

Tiny models (base 4, depth 2), 32-64 px images and 1-2 epochs of 2 steps, so
each test checks that an option reaches the code that honours it: the result
must equal the library call with that option and differ from the default.
"""

import json

import numpy as np
import pytest
import tifffile

from fusionnet_tf.cli import main
from fusionnet_tf.data import normalize, read_stack
from fusionnet_tf.inference import Predictor

SMALL = ["--tile-size", "32", "--overlap", "8", "--tta", "1", "--quiet"]


@pytest.fixture(scope="module")
def model_file(tiny_model_file):
    """The session's tiny model (seed 0): its int8 error is reproducible (see below)."""
    return tiny_model_file


def two_range_stack(shape=(2, 40, 70), seed=0):
    """uint8 stack whose slices span different intensity ranges (20-80 and 100-250).

    70 px wide, so with 32 px tiles the tile origins depend on the alignment.
    """
    texture = np.random.default_rng(seed).random(shape)
    return np.stack([20 + texture[0] * 60, 100 + texture[1] * 150]).astype(np.uint8)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("image") / "two_ranges.tif"
    tifffile.imwrite(path, two_range_stack())
    return path


def cli_predict(image_file, model_file, out, *options):
    assert main(["predict", str(image_file), "-o", str(out), "--model", str(model_file)]
                + SMALL + list(options)) == 0
    return tifffile.imread(out)


def library_predict(image_file, model_file, normalization="slice", **kwargs):
    import keras

    model = keras.saving.load_model(model_file, compile=False)
    images = normalize(read_stack(image_file), mode=normalization)
    return Predictor(model, tile_shape=32, overlap=8, tta=1, **kwargs).predict(images)


# === predict ===

def test_predict_normalization_modes(image_file, model_file, tmp_path):
    outputs = {}
    for mode in ("slice", "global", "dtype"):
        outputs[mode] = cli_predict(image_file, model_file, tmp_path / f"{mode}.tif",
                                    "--normalization", mode)
        np.testing.assert_allclose(outputs[mode],
                                   library_predict(image_file, model_file, normalization=mode),
                                   atol=1e-6, err_msg=mode)
    # the image tells the modes apart
    for first, second in (("slice", "global"), ("slice", "dtype"), ("global", "dtype")):
        assert np.abs(outputs[first] - outputs[second]).max() > 1e-3, (first, second)


def test_predict_blending_and_align(image_file, model_file, tmp_path):
    default = cli_predict(image_file, model_file, tmp_path / "default.tif")
    for blending in ("cosine", "constant"):
        got = cli_predict(image_file, model_file, tmp_path / f"{blending}.tif",
                          "--blending", blending)
        np.testing.assert_allclose(got, library_predict(image_file, model_file,
                                                        blending=blending), atol=1e-6)
        assert np.abs(got - default).max() > 1e-4, blending
    # --align 1 moves the middle tile of the 70 px width (origin 19 instead of 16)
    got = cli_predict(image_file, model_file, tmp_path / "align1.tif", "--align", "1")
    np.testing.assert_allclose(got, library_predict(image_file, model_file, align=1), atol=1e-6)
    assert np.abs(got - default).max() > 1e-4


# === evaluate ===

def test_evaluate_label_threshold(tmp_path, capsys):
    """Soft ISBI labels (0 and 10, 128 on membranes, 240 inside) binarized as label > T."""
    membrane = np.zeros((1, 32, 32), np.float32)
    membrane[:, 15, :] = 1
    membrane[:, :, 9] = 1
    labels = np.where(membrane > 0, 10, 240).astype(np.uint8)
    labels[:, 15, :4] = 0
    labels[:, 15, 20:] = 128  # == T: still membrane, since only label > T is interior
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    tifffile.imwrite(tmp_path / "pred.tif", membrane)
    base = ["evaluate", "--labels", str(tmp_path / "labels.tif"), "--pred",
            str(tmp_path / "pred.tif"), "--json"]
    assert main(base) == 2  # four label values: not binary without a threshold
    assert "[0, 10, 128, 240]" in capsys.readouterr().err
    assert main(base + ["--label-threshold", "128"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert (scores["v_rand"], scores["v_info"], scores["pixel_error"]) == (1.0, 1.0, 0.0)


# === info ===

def test_info_table_and_model_summary(capsys):
    from fusionnet_tf.models import build_unet

    assert main(["info"]) == 0
    table = capsys.readouterr().out
    assert "4,703,457" in table and "1,945,953" in table  # FusionNet / U-Net, base 16
    assert main(["info", "--architecture", "unet", "--base-filters", "4", "--depth", "2"]) == 0
    summary = capsys.readouterr().out
    count = build_unet(base_filters=4, depth=2).count_params()
    assert f"{count:,}" in summary


# === train ===

def write_training_stack(folder):
    """(3, 64, 64) uint8 stack with dark membrane lines and ISBI labels (0 = membrane)."""
    rng = np.random.default_rng(0)
    membrane = np.zeros((3, 64, 64), bool)
    for n in range(3):
        for line in rng.choice(60, 3, replace=False):
            membrane[n, line:line + 2, :] = True
            membrane[n, :, (line * 7) % 60:(line * 7) % 60 + 2] = True
    image = np.where(membrane, 60, 190) + rng.normal(0, 12, membrane.shape)
    tifffile.imwrite(folder / "img.tif", np.clip(image, 0, 255).astype(np.uint8))
    tifffile.imwrite(folder / "lab.tif", np.where(membrane, 0, 255).astype(np.uint8))


def write_config(folder, **top):
    import yaml

    write_training_stack(folder)
    config = {
        "model": {"base_filters": 4, "depth": 2, "residual_convs": 1},
        "data": {"train_images": str(folder / "img.tif"), "train_labels": str(folder / "lab.tif"),
                 "train_slices": "0-1", "val_slices": "2", "tile_size": 32,
                 "val_tile_size": 32},
        "augment": False, "optimizer": {"learning_rate": 0.01},
        "epochs": 2, "steps_per_epoch": 2, "batch_size": 2, "tensorboard": False,
        "output_dir": str(folder / "run"),
    }
    for key, value in top.items():
        if isinstance(value, dict):
            config[key].update(value)
        else:
            config[key] = value
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def read_log(run_dir):
    from fusionnet_tf.training.callbacks import read_csv_log

    return read_csv_log(run_dir / "log.csv")


@pytest.mark.large
def test_train_cli_unet_mirrored_xla_with_isbi_scores(tmp_path, capsys, monkeypatch):
    """architecture: unet, strategy: mirrored, jit_compile: true, isbi_eval_every: 1."""
    import keras

    from fusionnet_tf.training import run as run_module
    from fusionnet_tf.training import strategy as strategy_lib

    seen = {}
    make_strategy, build_and_compile = strategy_lib.make_strategy, run_module.build_and_compile

    def spy_strategy(name):
        seen["strategy"] = make_strategy(name)
        return seen["strategy"]

    def spy_compile(config):
        seen["model"] = build_and_compile(config)
        return seen["model"]

    monkeypatch.setattr(strategy_lib, "make_strategy", spy_strategy)
    monkeypatch.setattr(run_module, "build_and_compile", spy_compile)
    config = write_config(tmp_path, model={"architecture": "unet"}, strategy="mirrored",
                          jit_compile=True, isbi_eval_every=1)
    assert main(["train", "--config", str(config), "--quiet"]) == 0
    assert "trained 2 epoch(s)" in capsys.readouterr().out
    assert type(seen["strategy"]).__name__ == "MirroredStrategy"
    assert seen["model"].jit_compile is True
    log = read_log(tmp_path / "run")
    assert log["epoch"] == [0.0, 1.0]
    assert all(0.0 <= v <= 1.0 for v in log["val_v_rand"] + log["val_v_info"])
    model = keras.models.load_model(tmp_path / "run" / "latest.keras", compile=False)
    kinds = {type(layer).__name__ for layer in model.layers}
    assert "Concatenate" in kinds and "Add" not in kinds  # a U-Net, not a FusionNet


@pytest.mark.large
def test_train_cli_early_stopping_then_resume_does_nothing(tmp_path, capsys):
    # learning rate 3: the first steps overshoot, val_loss gets worse, patience 1 stops at epoch 2
    config = write_config(tmp_path, epochs=6, early_stopping_patience=1,
                          optimizer={"learning_rate": 3.0})
    command = ["train", "--config", str(config), "--quiet"]
    assert main(command) == 0
    assert "trained 2 epoch(s)" in capsys.readouterr().out
    latest = (tmp_path / "run" / "latest.keras").read_bytes()
    assert main(command) == 0
    out = capsys.readouterr().out
    assert "stopped early at epoch 2; nothing to do" in out and "trained 2 epoch(s)" in out
    assert read_log(tmp_path / "run")["epoch"] == [0.0, 1.0]
    assert (tmp_path / "run" / "latest.keras").read_bytes() == latest


# === export --format litert ===

# The errors depend on the weights: on the session's model (seed 0) they are 5e-4 (fp16),
# 6e-3 (dynamic-int8) and 0.023 (int8), the same on every run (conversion and calibration
# tiles are deterministic). This test once failed at 0.104 (int8) when the model was built
# unseeded: over seeds 0-9 the int8 error of this tiny untrained net ranges 0.019-0.146.
@pytest.mark.large
@pytest.mark.parametrize("quantize,atol", [("none", 1e-5), ("fp16", 1e-2),
                                           ("dynamic-int8", 0.1), ("int8", 0.1)])
def test_export_litert_each_quantization(model_file, image_file, tmp_path, monkeypatch,
                                         quantize, atol):
    import keras

    from fusionnet_tf.export import calibration
    from fusionnet_tf.export.litert import litert_file_name
    from fusionnet_tf.inference.backends.litert_runner import LiteRTRunner

    seen = []
    representative_tiles = calibration.representative_tiles

    def spy(images, *args, **kwargs):
        seen.append(np.array(images))
        return representative_tiles(images, *args, **kwargs)

    monkeypatch.setattr(calibration, "representative_tiles", spy)
    command = ["export", "--model", str(model_file), "--format", "litert", "--output",
               str(tmp_path), "--name", "tiny", "--quantize", quantize, "--tile-size", "32"]
    if quantize == "int8":
        command += ["--calibration-data", str(image_file), "--calibration-tiles", "8"]
    assert main(command) == 0
    path = tmp_path / litert_file_name("tiny", quantize)
    card = json.loads((tmp_path / f"{path.stem}.model_card.json").read_text())
    assert card["quantization"] == quantize
    if quantize == "int8":  # calibrated on the given images, normalized per slice
        assert len(seen) == 1
        np.testing.assert_array_equal(seen[0], normalize(read_stack(image_file)))
    else:
        assert seen == []
    x = normalize(two_range_stack((2, 32, 32), seed=1))[..., None]
    expected = keras.saving.load_model(model_file, compile=False)(x, training=False).numpy()
    np.testing.assert_allclose(LiteRTRunner(path)(x), expected, atol=atol)


# === serve ===

@pytest.mark.e2e
@pytest.mark.large
def test_serve_options_reach_the_server(tiny_serving_base, capsys, monkeypatch):
    """--model-name, --port 0, --max-request-mb and --log-requests, on a live server."""
    import http.client

    from fusionnet_tf.cli import serve as serve_cli
    from fusionnet_tf.export.server import ModelServer

    answers = {}

    def one_request(server, method, path, body=None):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        connection.request(method, path, body=body)
        response = connection.getresponse()
        response.read()
        connection.close()
        return response.status

    def exercise(server):
        """Instead of blocking: serve in a thread, send requests, return (as Ctrl-C would)."""
        server.start()
        answers["host"] = server.httpd.server_address[0]
        answers["status"] = one_request(server, "GET", "/v1/models/custom")
        answers["default_name"] = one_request(server, "GET", "/v1/models/membranes")
        answers["too_large"] = one_request(server, "POST", "/v1/models/custom:predict",
                                           b"x" * 20000)

    monkeypatch.setattr(ModelServer, "serve_forever", exercise)
    monkeypatch.setattr(serve_cli, "_stop_on_sigterm", lambda: None)
    assert main(["serve", "--model-base", str(tiny_serving_base), "--model-name", "custom",
                 "--port", "0", "--host", "127.0.0.1", "--max-request-mb", "0.01",
                 "--log-requests"]) == 0
    err = capsys.readouterr().err
    assert answers == {"host": "127.0.0.1", "status": 200, "default_name": 404, "too_large": 413}
    assert "/v1/models/custom (versions 1" in err
    assert '"GET /v1/models/custom HTTP/1.1" 200' in err  # --log-requests


# === predict-volume ===

@pytest.mark.e2e
@pytest.mark.large
def test_predict_volume_block_z_zarr_format_and_workers(model_file, tmp_path, capsys,
                                                        monkeypatch, dask_cluster):
    """--workers 2 reaches the executor, which runs the blocks on the session's cluster of 2
    (a cluster started from ``workers`` is tested in test_volumes.py)."""
    zarr = pytest.importorskip("zarr")
    import contextlib

    import distributed
    import keras

    from fusionnet_tf.volumes import executors

    asked = []

    @contextlib.contextmanager
    def on_the_session_cluster(workers=1, scheduler=None):
        asked.append((workers, scheduler))
        with distributed.Client(dask_cluster) as client:
            yield executors.DaskExecutor(client)

    monkeypatch.setattr(executors, "dask_executor", on_the_session_cluster)

    volume = np.concatenate([two_range_stack((2, 40, 70)), two_range_stack((2, 40, 70), 1)])
    source = zarr.open_array(str(tmp_path / "in.zarr"), mode="w", shape=volume.shape,
                             chunks=(1, 40, 70), dtype=volume.dtype, zarr_format=3)
    source[:] = volume
    out = tmp_path / "out.zarr"
    assert main(["predict-volume", str(tmp_path / "in.zarr"), str(out), "--model",
                 str(model_file), "--block", "32", "--block-z", "2", "--zarr-format", "2",
                 "--workers", "2", "--tile-size", "32", "--overlap", "8", "--tta", "1",
                 "--quiet"]) == 0
    assert asked == [(2, None)]
    assert "on 2 worker(s)" in capsys.readouterr().err
    result = zarr.open_array(str(out), mode="r")
    assert result.metadata.zarr_format == 2 and result.chunks == (2, 32, 32)
    model = keras.saving.load_model(model_file, compile=False)
    expected = Predictor(model, tile_shape=32, overlap=8, tta=1).predict(normalize(volume))
    np.testing.assert_allclose(result[:], expected, atol=1e-5)

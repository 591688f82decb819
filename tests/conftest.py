"""Shared pytest set-up: quiet TensorFlow, test kinds, Keras state reset between tests.

Test kinds (markers, ``-m unit`` etc.):

- ``unit``: no Keras model is built (numpy, I/O, argument checks, CLI errors);
- ``integration``: tiny models, the CLI run in-process;
- ``e2e``: subprocesses, Dask clusters, servers, bioimage.io packages, a browser.

Each test file has a kind in ``TEST_KINDS``; a test may carry its own kind
marker instead (an e2e test in an integration file). ``tests/test_markers.py``
checks that every test file is listed, and a ``unit`` test that builds a Keras
layer fails.
"""

import gc
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Every Keras process the tests start (training workers, Dask workers) runs on TensorFlow,
# whatever a library imported in this process may set (bioimageio.core defaults to torch).
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import pytest  # noqa: E402

KINDS = ("unit", "integration", "e2e")

# The kind of each test file's tests (those without a kind marker of their own).
TEST_KINDS = {
    "test_affinities.py": "unit",
    "test_affinity_io.py": "unit",
    "test_affinity_segmentation.py": "unit",
    "test_autotune.py": "integration",
    "test_backends.py": "integration",
    "test_checks.py": "unit",
    "test_cli_e2e.py": "integration",
    "test_cli_errors.py": "unit",
    "test_cli_export_dispatch.py": "unit",
    "test_cli_predict_3d.py": "integration",
    "test_cli_predict_evaluate.py": "integration",
    "test_cli_quiet.py": "unit",
    "test_cli_segment.py": "integration",
    "test_cli_slices.py": "integration",
    "test_cli_tile_size.py": "integration",
    "test_compat.py": "integration",
    "test_conv_flops_3d.py": "integration",
    "test_data_pipeline.py": "unit",
    "test_data_readers.py": "unit",
    "test_dihedral.py": "unit",
    "test_edge_classifier.py": "unit",
    "test_export.py": "integration",
    "test_export_3d.py": "integration",
    "test_export_bioimageio.py": "e2e",
    "test_hdf5_spec.py": "unit",
    "test_instance_labels.py": "unit",
    "test_io_spec.py": "unit",
    "test_layering.py": "unit",
    "test_markers.py": "unit",
    "test_metrics.py": "unit",
    "test_metrics_segmentation.py": "unit",
    "test_metrics_volume.py": "unit",
    "test_models.py": "integration",
    "test_models_3d.py": "integration",
    "test_models_fcn.py": "integration",
    "test_n5_input.py": "integration",
    "test_napari_plugin.py": "e2e",
    "test_ome_zarr.py": "integration",
    "test_optimize.py": "integration",
    "test_output_safety.py": "e2e",
    "test_pipeline3d.py": "integration",
    "test_precomputed.py": "unit",
    "test_predict_options.py": "integration",
    "test_predict_volume_3d.py": "integration",
    "test_predictor.py": "integration",
    "test_predictor_3d.py": "integration",
    "test_pretrained.py": "integration",
    "test_pretrained_registry.py": "integration",
    "test_quickstart.py": "e2e",
    "test_segment_volume.py": "unit",
    "test_segment_volume_affinities.py": "unit",
    "test_segmentation.py": "unit",
    "test_serving.py": "e2e",
    "test_tiling.py": "unit",
    "test_training_backup.py": "unit",
    "test_training_config.py": "unit",
    "test_training_finetune.py": "integration",
    "test_training_fused_batchnorm.py": "integration",
    "test_training_losses.py": "unit",
    "test_training_multiworker.py": "e2e",
    "test_training_run.py": "integration",
    "test_tune_cv.py": "unit",
    "test_viewer.py": "e2e",
    "test_volumes.py": "integration",
}


def kind_of_test(item):
    """The kind of a collected test: its own kind marker, else its file's."""
    own = [mark.name for mark in item.iter_markers() if mark.name in KINDS]
    if len(own) > 1:
        raise pytest.UsageError(f"{item.nodeid} has more than one kind: {own}")
    if own:
        return own[0]
    try:
        return TEST_KINDS[item.path.name]
    except KeyError:
        raise pytest.UsageError(f"{item.path.name} is not in tests/conftest.py TEST_KINDS; "
                                f"add it as one of {KINDS}") from None


# The tests that use ``dask_cluster``: with -n they run together on one worker, which
# starts the cluster once (``pytest_xdist_make_scheduler``); collection fails for a test
# that uses the fixture and is missing here.
DASK_CLUSTER_TESTS = {
    "test_cli_e2e.py::test_predict_volume_block_z_zarr_format_and_workers",
    "test_predict_volume_3d.py::test_cli_predict_volume_3d_on_dask",
    "test_segment_volume.py::test_dask_cluster_of_two_workers_matches_in_process",
    "test_segment_volume_affinities.py::test_dask_workers_match_in_process",
    "test_volumes.py::test_cli_scheduler_two_workers_then_resume",
}
# With -n, the order work is handed out in: the cluster's tests, then e2e, integration and
# unit files (roughly slowest first, so the quick files even out the two workers' ends)
KIND_ORDER = {"e2e": 1, "integration": 2, "unit": 3}


def short_test_name(nodeid):
    """``file.py::function`` of a node id (folders and parameters dropped)."""
    path, _, name = nodeid.partition("::")
    return f"{path.rsplit('/', 1)[-1]}::{name.split('[')[0]}"


def xdist_scope(nodeid):
    """The unit of work of a test with -n: ``"dask"`` or its file."""
    return "dask" if short_test_name(nodeid) in DASK_CLUSTER_TESTS else nodeid.partition("::")[0]


def scheduling_rank(item):
    if xdist_scope(item.nodeid) == "dask":
        return 0
    return KIND_ORDER[TEST_KINDS[item.path.name]]


@pytest.hookimpl(tryfirst=True)  # before -m selects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        kind = kind_of_test(item)
        if not any(mark.name == kind for mark in item.iter_markers()):
            item.add_marker(kind)
        if ("dask_cluster" in getattr(item, "fixturenames", ())
                and short_test_name(item.nodeid) not in DASK_CLUSTER_TESTS):
            raise pytest.UsageError(f"{short_test_name(item.nodeid)} uses dask_cluster: add it to "
                                    f"tests/conftest.py DASK_CLUSTER_TESTS")
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: the controller hands out
        items.sort(key=scheduling_rank)  # work in this order (stable: files stay together)


def pytest_xdist_make_scheduler(config, log):
    """With -n (``--dist load``): a file's tests on one worker, so its module fixtures are
    built once, not on each worker; the tests of the Dask cluster on one worker.

    Work goes out in the order of the workers' collection (``scheduling_rank``).
    Another ``--dist`` mode given on the command line applies as usual.
    """
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FilesAndCluster(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return xdist_scope(nodeid)

    config.option.loadscopereorder = False  # keep the collection's order
    return FilesAndCluster(config, log)


def pytest_collection_finish(session):
    """Move what the imports made (TensorFlow's million objects) out of the collector's view.

    Each test's ``keras.backend.clear_session()`` runs a full garbage collection;
    over TensorFlow's objects that took ~0.5 s, per test. Frozen objects are
    not scanned, so a collection sees what the tests made since.
    """
    keras.backend.clear_session()  # layers built at import count for no test
    gc.collect()
    gc.freeze()


def keras_layers_named():
    """Keras layers and symbolic tensors named since the last ``clear_session``.

    Empty unless a layer or model was built or loaded: a functional model names
    its ``keras_tensor``s, a layer without an explicit name is named after its
    class. Optimizers and ops (``cond``) are named the same way and left out.
    """
    from keras.src.backend.common import global_state
    from keras.src.utils.naming import to_snake_case

    kinds = {to_snake_case(name) for module in (keras.layers, keras.models)
             for name, value in vars(module).items() if isinstance(value, type)}
    named = global_state.get_global_attribute("object_name_uids") or {}
    return {name: count for name, count in named.items()
            if name == "keras_tensor" or name in kinds}


@pytest.fixture(autouse=True)
def _private_autotune_cache(tmp_path, monkeypatch):
    """The auto engine's choices go to the test's folder, never the user's ~/.cache."""
    monkeypatch.setenv("FUSIONNET_TF_CACHE_DIR", str(tmp_path / "autotune-cache"))


@pytest.fixture(autouse=True)
def _reset_keras_state(request):
    """Each test starts with float32 policy and a fresh name scope; unit tests build no layers.

    Layers built by the fixtures a test asks for count as the test's: a unit test
    that asks for a model fails.
    """
    yield
    built = keras_layers_named()
    keras.mixed_precision.set_dtype_policy("float32")
    keras.backend.clear_session()
    if built and request.node.get_closest_marker("unit"):
        pytest.fail(f"a unit test built Keras layers {sorted(built)}: mark it integration "
                    f"(tests/conftest.py TEST_KINDS)", pytrace=False)


# === Shared session fixtures: build, save, export and start each thing once ===
# Read-only: a test that changes one of these objects or folders copies it first.

TINY_2D = {"base_filters": 4, "depth": 2}


@pytest.fixture(scope="session")
def tiny_model():
    """The tiny 2D FusionNet (base 4, depth 2, seed 0, untrained) the tests share.

    Seed 0 keeps its outputs in (0.5, 1) on [0, 1] inputs (untrained nets saturate),
    and its int8 quantization error small (see ``test_cli_e2e``).
    """
    from fusionnet_tf.models import build_fusionnet

    keras.utils.set_random_seed(0)
    return build_fusionnet(**TINY_2D)


@pytest.fixture(scope="session")
def tiny_model_file(tiny_model, tmp_path_factory):
    """``tiny.keras``: ``tiny_model`` saved, alone in its folder."""
    path = tmp_path_factory.mktemp("tiny_model") / "tiny.keras"
    tiny_model.save(path)
    return path


@pytest.fixture(scope="session")
def tiny_serving_base(tiny_model, tmp_path_factory):
    """``tiny_model`` as a TF-Serving model base ``.../membranes`` (version 1; tiles of 32,
    overlap 8, batch 2, all signatures)."""
    from fusionnet_tf.export.saved_model import export_saved_model

    base = tmp_path_factory.mktemp("serving")
    export_saved_model(tiny_model, base, "membranes", tile_size=32, overlap=8, batch_size=2)
    return base / "membranes"


@pytest.fixture(scope="session")
def tiny_onnx(tiny_model, tmp_path_factory):
    """``tiny_model`` exported to ``tiny.onnx``."""
    from fusionnet_tf.export.onnx import export_onnx

    return export_onnx(tiny_model, tmp_path_factory.mktemp("onnx"), "tiny")


@pytest.fixture(scope="session")
def tiny_tflite(tiny_model, tmp_path_factory):
    """``tiny_model`` exported to a float32 LiteRT ``tiny.tflite``."""
    from fusionnet_tf.export.litert import export_litert

    return export_litert(tiny_model, tmp_path_factory.mktemp("litert"), "tiny")


AFFINITY_OFFSETS_3D = ((-1, 0, 0), (0, -1, 0), (0, 0, -3))


@pytest.fixture(scope="session")
def tiny_affinity_model(tmp_path_factory):
    """The tiny 3D affinity FusionNet: ``(model, .keras path with MODEL.offsets.json,
    a (1, 4, 16, 16, 1) batch, its Keras output)``.

    Base 2, depth 2, one anisotropic level, ``AFFINITY_OFFSETS_3D``; the batch
    normalization statistics are random, so channels and voxels differ.
    """
    import json

    import numpy as np

    from fusionnet_tf.models import build_fusionnet3d

    keras.utils.set_random_seed(0)
    model = build_fusionnet3d(base_filters=2, depth=2, anisotropic_levels=1, residual_convs=1,
                              out_channels=len(AFFINITY_OFFSETS_3D))
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            mean, var = layer.moving_mean, layer.moving_variance
            mean.assign(rng.normal(0, 0.1, mean.shape).astype("float32"))
            var.assign(rng.uniform(0.5, 1.5, var.shape).astype("float32"))
    folder = tmp_path_factory.mktemp("affinity_model")
    path = folder / "aff.keras"
    model.save(path)
    offsets = [list(o) for o in AFFINITY_OFFSETS_3D]
    (folder / "aff.offsets.json").write_text(json.dumps({"offsets": offsets}))
    batch = rng.random((1, 4, 16, 16, 1)).astype("float32")
    return model, path, batch, np.asarray(model(batch, training=False))


@pytest.fixture(scope="session")
def dask_cluster():
    """One local Dask cluster (2 worker processes, 1 thread each) for every test that needs one.

    Tests pass ``scheduler=dask_cluster.scheduler_address`` (``--scheduler``);
    with -n they run on one pytest-xdist worker (``DASK_CLUSTER_TESTS``), so one
    cluster starts per run. Starting a cluster from ``workers=N`` is tested
    once, in ``test_volumes.py``.
    """
    distributed = pytest.importorskip("distributed")
    import logging

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=logging.ERROR) as cluster:
        with distributed.Client(cluster) as client:
            client.wait_for_workers(2)
        yield cluster


# === One tiny trained run ===

TRAINING_STEPS, TRAINING_EPOCHS = 3, 2


@pytest.fixture(scope="session")
def training_stack(tmp_path_factory):
    """``(img.tif, lab.tif)``: a 4 x 64 x 64 synthetic EM-like stack, dark membrane lines
    on a bright, noisy background, and its labels (ISBI convention: 0 = membrane)."""
    import numpy as np
    import tifffile

    folder = tmp_path_factory.mktemp("training_stack")
    rng = np.random.default_rng(0)
    membrane = np.zeros((4, 64, 64), bool)
    for n in range(4):
        for row in rng.choice(60, 3, replace=False):
            membrane[n, row:row + 2, :] = True
        for col in rng.choice(60, 3, replace=False):
            membrane[n, :, col:col + 2] = True
    image = np.where(membrane, 60, 190) + rng.normal(0, 12, membrane.shape)
    tifffile.imwrite(folder / "img.tif", np.clip(image, 0, 255).astype(np.uint8))
    tifffile.imwrite(folder / "lab.tif", np.where(membrane, 0, 255).astype(np.uint8))
    return folder / "img.tif", folder / "lab.tif"


def tiny_training_config(stack, output_dir, **top):
    """The config of the tiny run: FusionNet base 4, depth 2, one residual conv, 32 px tiles,
    ``TRAINING_EPOCHS`` epochs of ``TRAINING_STEPS`` steps of 4, a backup every step;
    ``top`` overrides top-level keys."""
    from fusionnet_tf.training.config import config_from_dict

    images, labels = stack
    mapping = {
        "model": {"base_filters": 4, "depth": 2, "residual_convs": 1},
        "data": {"train_images": str(images), "train_labels": str(labels),
                 "train_slices": "0-2", "val_slices": "3", "tile_size": 32,
                 "val_tile_size": 32},
        "augment": False,
        "optimizer": {"learning_rate": 0.01},
        "epochs": TRAINING_EPOCHS, "steps_per_epoch": TRAINING_STEPS, "batch_size": 4,
        "backup_every_steps": 1, "output_dir": str(output_dir), "tensorboard": False,
    }
    mapping.update(top)
    return config_from_dict(mapping)


@pytest.fixture(scope="session")
def trained_run(training_stack, tmp_path_factory):
    """ONE tiny trained run, uninterrupted: ``(config, TrainResult)``; its folder
    ``config.output_dir`` holds config.yaml, latest/best.keras, log.csv and the backup.

    Read-only: the resume tests compare their runs with it; a test that would
    write into the folder copies it first.
    """
    from fusionnet_tf.training.run import train

    config = tiny_training_config(training_stack, tmp_path_factory.mktemp("trained") / "run")
    return config, train(config, verbose=0)

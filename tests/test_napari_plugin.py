"""The napari plugin (fusionnet_tf/napari): manifest, sample, the three widgets, HDF5 I/O.

The viewer tests need napari (``pip install -e ".[napari]"``) and a display
with OpenGL: CI runs this file on its own under ``xvfb-run`` with Mesa. They
are skipped without napari or a display, unless FUSIONNET_REQUIRE_NAPARI=1
(set by .ci/run), which turns that into a failure; and they skip themselves
in a session that also runs other test files (see below).

Mesa's OpenGL driver and TensorFlow both carry LLVM, and its symbols clash
in one process. The plugin never loads TensorFlow in the viewer's process
(Predict runs the model in a worker process of its own), and
``test_viewer_first_then_predict_with_no_special_settings`` runs a viewer
exactly as a user's ``napari`` does, with Mesa's default llvmpipe and no
settings. This test process itself is different: it imports TensorFlow
(conftest, the ``fusionnet`` comparisons) next to its own viewers. So, for
this process only, Mesa uses its softpipe rasterizer without LLVM vertex
shaders (set below, before any GL context), the viewer tests stay away from
the XLA of other test files, and the process ends with ``os._exit`` after
pytest is done (LLVM's static destructors abort in that combination).
"""

import atexit
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

# this process only (see above); the viewer a user starts needs none of it
TEST_PROCESS_GL = {"GALLIUM_DRIVER": "softpipe", "DRAW_USE_LLVM": "0"}
for _name, _value in TEST_PROCESS_GL.items():
    os.environ.setdefault(_name, _value)

from fusionnet_tf.cli import main  # noqa: E402

PLUGIN = "fusionnet-tf"
REQUIRED = os.environ.get("FUSIONNET_REQUIRE_NAPARI") == "1"


def _skip(reason):
    if REQUIRED:
        pytest.fail(f"{reason} (FUSIONNET_REQUIRE_NAPARI=1)")
    pytest.skip(reason)


def _require_napari():
    try:
        import napari  # noqa: F401
    except ImportError:
        if REQUIRED:
            raise
    return pytest.importorskip("napari")


# --------------------------------------------------------------------------- #
# Without napari
# --------------------------------------------------------------------------- #


def test_package_and_cli_import_without_napari_or_qt(tmp_path):
    membrane, _ = cell_grid(count=2, size=32)
    tifffile.imwrite(tmp_path / "pred.tif", membrane)
    code = (
        "import sys\n"
        "sys.modules['napari'] = None\n"  # any 'import napari' raises ImportError
        "import fusionnet_tf, fusionnet_tf.napari\n"
        "from fusionnet_tf.cli import build_parser\n"
        "build_parser()\n"
        "from fusionnet_tf.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, "segment", str(tmp_path / "pred.tif"),
                          "-o", str(tmp_path / "seg.tif"), "--quiet"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Error" not in out.stderr, out.stderr
    assert tifffile.imread(tmp_path / "seg.tif").shape == (2, 32, 32)
    code = ("import sys, fusionnet_tf, fusionnet_tf.napari\n"
            "from fusionnet_tf.cli import build_parser\n"
            "build_parser()\n"
            "print(sorted(m for m in ('napari', 'magicgui', 'qtpy', 'PyQt5', 'PyQt6', 'PySide6')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- #
# Fixtures
# --------------------------------------------------------------------------- #


def _exit_status_plugin():
    """Remember pytest's exit status and end the process with it, skipping C++ destructors."""

    class ExitStatus:
        status = None

        @pytest.hookimpl(trylast=True)
        def pytest_sessionfinish(self, session, exitstatus):
            self.status = int(exitstatus)

    recorder = ExitStatus()

    def exit_now():
        if recorder.status is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(recorder.status)

    atexit.register(exit_now)
    return recorder


@pytest.fixture(scope="module", autouse=True)
def _keep_the_prediction_engine():
    """One prediction worker process for the whole file, not one per test's viewer.

    Each viewer's Predict widget holds the shared engine while it lives, and
    the last one to close stops its process; holding it here too keeps one
    process (and TensorFlow's start-up) for all tests.
    """
    from fusionnet_tf.napari.engine import acquire_engine, release_engine

    engine = acquire_engine()
    yield engine
    release_engine()


def _require_display():
    _require_napari()
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                 or os.environ.get("WAYLAND_DISPLAY")):
        _skip("no display: run the napari tests under xvfb-run")


@pytest.fixture
def viewer(request, make_napari_viewer_if_available):
    """A napari viewer (hidden) with the plugin's manifest registered."""
    return make_napari_viewer_if_available()


@pytest.fixture
def qt(make_napari_viewer_if_available, request):
    """pytest-qt's ``qtbot``, requested only once a display is known to exist.

    Asking for ``qtbot`` directly would make its session-wide QApplication
    before the display check, and Qt aborts the process without a display.
    """
    return request.getfixturevalue("qtbot")


@pytest.fixture
def make_napari_viewer_if_available(request):
    _require_display()
    if any(item.path != request.path for item in request.session.items):
        pytest.skip("the viewer tests run in a process of their own (xvfb-run -a python -m "
                    "pytest tests/test_napari_plugin.py): once a canvas has loaded Mesa's LLVM, "
                    "XLA in other tests would crash the process")
    config = request.config
    if not hasattr(config, "_fusionnet_exit_status"):
        config._fusionnet_exit_status = _exit_status_plugin()
        config.pluginmanager.register(config._fusionnet_exit_status, "fusionnet-exit-status")
    return request.getfixturevalue("make_napari_viewer")


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    import keras

    from fusionnet_tf import build_fusionnet

    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("napari_model") / "tiny.keras"
    build_fusionnet(base_filters=4, depth=2).save(path)
    return path


def dock(viewer, name):
    """Open the plugin widget ``name`` the way Plugins > fusionnet-tf does; return it."""
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def wait_for(qtbot, widget, timeout=300_000):
    qtbot.waitUntil(lambda: widget.worker is None, timeout=timeout)


def error_notifications():
    from napari.utils.notifications import NotificationSeverity, notification_manager

    return [n.message for n in notification_manager.records
            if n.severity == NotificationSeverity.ERROR]


def cell_grid(count=2, size=64, period=16, seed=0):
    """Synthetic (count, size, size) membrane map of square cells, and its ISBI labels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    maps, labels = [], []
    for n in range(count):
        shift = n * 3
        lines = ((y + shift) % period < 2) | ((x + 2 * shift) % period < 2)
        prob = np.where(lines, 0.9, 0.05) + rng.uniform(0, 0.05, (size, size))
        maps.append(np.clip(prob, 0, 1).astype(np.float32))
        labels.append(np.where(lines, 0, 255).astype(np.uint8))
    return np.stack(maps), np.stack(labels)


# --------------------------------------------------------------------------- #
# Manifest and sample
# --------------------------------------------------------------------------- #


def test_manifest_validates_and_names_the_contributions():
    _require_napari()
    from pathlib import Path

    from npe2 import PluginManifest

    import fusionnet_tf.napari

    path = Path(fusionnet_tf.napari.__file__).parent / "napari.yaml"
    manifest = PluginManifest.from_file(path)
    manifest.validate_imports()
    assert manifest.name == PLUGIN
    assert [w.display_name for w in manifest.contributions.widgets] == [
        "Predict membranes", "Segment neurons", "Evaluate"]
    assert [s.key for s in manifest.contributions.sample_data] == ["isbi2012"]
    installed = PluginManifest.from_distribution("fusionnet-tf")  # the napari.manifest entry point
    assert installed.name == PLUGIN


def test_sample_opens(viewer):
    from fusionnet_tf.data import read_stack
    from fusionnet_tf.pretrained import example_path

    layers = viewer.open_sample(PLUGIN, "isbi2012")
    assert len(viewer.layers) == 1 and layers[0].name == "isbi2012"
    np.testing.assert_array_equal(viewer.layers[0].data, read_stack(example_path()))


# --------------------------------------------------------------------------- #
# Predict membranes
# --------------------------------------------------------------------------- #


def test_predict_on_the_sample_equals_fusionnet_predict(viewer, qt, tiny_model_path,
                                                        tmp_path, capsys):
    from fusionnet_tf.pretrained import example_path

    viewer.open_sample(PLUGIN, "isbi2012")
    widget = dock(viewer, "Predict membranes")
    widget.model_path.value = tiny_model_path
    widget.tile_size.value, widget.overlap.value, widget.tta.value = 128, 32, 4
    widget.engine.value = "plain"
    worker = widget()
    assert worker is not None
    assert not widget.call_button.enabled  # one run at a time
    wait_for(qt, widget)
    assert widget.call_button.enabled
    layer = viewer.layers["isbi2012 membranes"]
    assert layer.data.dtype == np.float32 and layer.data.shape == (3, 512, 512)
    assert widget.progress.value == widget.progress.max > 1
    assert widget.prediction_engine.pid not in (None, os.getpid())  # another process

    out = tmp_path / "membranes.tif"
    assert main(["predict", str(example_path()), "-o", str(out), "--model", str(tiny_model_path),
                 "--tile-size", "128", "--overlap", "32", "--tta", "4", "--engine", "plain",
                 "--quiet"]) == 0
    np.testing.assert_allclose(layer.data, tifffile.imread(out), atol=1e-6)


def test_predict_with_the_shipped_model_on_a_2d_crop(viewer, qt):
    from fusionnet_tf import Predictor, load_pretrained
    from fusionnet_tf.data import normalize, read_stack
    from fusionnet_tf.pretrained import example_path

    crop = read_stack(example_path())[0, 100:164, 200:264]
    viewer.add_image(crop, name="crop")
    widget = dock(viewer, "Predict membranes")
    widget.tile_size.value, widget.overlap.value, widget.tta.value = 64, 16, 1
    widget.engine.value = "plain"
    widget()
    wait_for(qt, widget)
    result = viewer.layers["crop membranes"].data
    expected = Predictor(load_pretrained(), tile_shape=64, overlap=16, tta=1,
                         engine="plain").predict(
        normalize(crop))
    assert result.shape == (64, 64) and result.dtype == np.float32
    np.testing.assert_allclose(result, expected, atol=1e-6)


def test_cancel_adds_no_layer_and_the_worker_process_is_reused(viewer, qt, tiny_model_path):
    from fusionnet_tf.napari.engine import PredictionCancelled

    rng = np.random.default_rng(0)
    viewer.add_image(rng.integers(0, 255, (4, 256, 256), dtype=np.uint8), name="em")
    widget = dock(viewer, "Predict membranes")
    widget.model_path.value = tiny_model_path
    widget.tile_size.value, widget.overlap.value, widget.tta.value = 32, 8, 8
    widget.engine.value = "plain"
    seen = {"steps": 0, "returned": [], "pids": set()}

    def step(counts):
        seen["steps"] += 1
        seen["pids"].add(widget.prediction_engine.pid)
        if counts[0] > 0:
            widget.cancel_button.native.click()  # the user presses Cancel

    worker = widget()
    worker.yielded.connect(step)
    worker.returned.connect(seen["returned"].append)
    assert widget.cancel_button.enabled
    wait_for(qt, widget)
    qt.wait(50)
    assert len(seen["returned"]) == 1 and isinstance(seen["returned"][0], PredictionCancelled)
    assert [layer.name for layer in viewer.layers] == ["em"]
    assert widget.progress.value < widget.progress.max
    assert not widget.cancel_button.enabled

    # the next run goes to the same worker process: it stopped between tile groups
    widget.tile_size.value, widget.overlap.value, widget.tta.value = 128, 16, 1
    widget()
    wait_for(qt, widget)
    assert [layer.name for layer in viewer.layers] == ["em", "em membranes"]
    assert seen["pids"] == {widget.prediction_engine.pid}


def test_a_killed_worker_process_gives_one_notification_then_a_new_one_runs(viewer, qt,
                                                                            tiny_model_path):
    import signal

    viewer.add_image(np.random.default_rng(0).random((4, 256, 256), dtype=np.float32),
                     name="em")
    widget = dock(viewer, "Predict membranes")
    widget.model_path.value = tiny_model_path
    widget.tile_size.value, widget.overlap.value, widget.tta.value = 32, 8, 8
    widget.engine.value = "plain"
    killed = []

    def step(counts):
        if counts[0] > 0 and not killed:  # the system kills it (out of memory, say)
            killed.append(widget.prediction_engine.pid)
            os.kill(killed[0], signal.SIGKILL)

    before = len(error_notifications())
    worker = widget()
    worker.yielded.connect(step)
    wait_for(qt, widget)
    qt.wait(50)
    messages = error_notifications()[before:]
    assert len(messages) == 1 and "stopped unexpectedly" in messages[0], messages
    assert [layer.name for layer in viewer.layers] == ["em"]
    widget.tile_size.value, widget.tta.value = 256, 1
    widget()
    wait_for(qt, widget)
    assert [layer.name for layer in viewer.layers] == ["em", "em membranes"]
    assert widget.prediction_engine.pid not in (None, killed[0])


@pytest.mark.parametrize("case", ["rgb", "4d", "missing_model"])
def test_bad_input_gives_a_notification_and_no_layer(viewer, tmp_path, case):
    rng = np.random.default_rng(0)
    if case == "rgb":
        viewer.add_image(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), name="bad", rgb=True)
    elif case == "4d":
        viewer.add_image(rng.random((2, 2, 32, 32), dtype=np.float32), name="bad")
    else:
        viewer.add_image(rng.random((32, 32), dtype=np.float32), name="bad")
    before = len(error_notifications())
    widget = dock(viewer, "Predict membranes")
    if case == "missing_model":
        widget.model_path.value = tmp_path / "nowhere.keras"
    assert widget() is None
    assert widget.worker is None
    messages = error_notifications()[before:]
    assert len(messages) == 1
    assert ("nowhere.keras" if case == "missing_model" else "'bad'") in messages[0]
    if case != "missing_model":
        segment = dock(viewer, "Segment neurons")
        assert segment() is None
        assert len(error_notifications()) == before + 2
    assert [layer.name for layer in viewer.layers] == ["bad"]


@pytest.mark.parametrize("case", ["overlap_past_the_alignment", "corrupt_model"])
def test_errors_in_the_worker_give_one_notification_and_no_layer(viewer, qt, tiny_model_path,
                                                                   tmp_path, case):
    viewer.add_image(np.random.default_rng(0).random((64, 64), dtype=np.float32), name="em")
    widget = dock(viewer, "Predict membranes")
    widget.tile_size.value, widget.overlap.value, widget.tta.value = 32, 8, 1
    if case == "overlap_past_the_alignment":
        widget.model_path.value = tiny_model_path
        # PredictOptions takes 30 < 32; the model's 2**depth = 4 alignment allows at most 28,
        # which only the worker knows (it loads the model)
        widget.overlap.value = 30
    else:
        corrupt = tmp_path / "corrupt.keras"
        corrupt.write_bytes(b"not a zip file")
        widget.model_path.value = corrupt
    before = len(error_notifications())
    relayed = []
    worker = widget()
    assert worker is not None
    worker.errored.connect(relayed.append)
    wait_for(qt, widget)
    qt.wait(50)
    assert relayed == []  # napari would show it again, with a traceback
    messages = error_notifications()[before:]
    assert len(messages) == 1, messages
    assert messages[0].startswith("Predict membranes: ")
    assert ("overlap" if case == "overlap_past_the_alignment" else "corrupt.keras") in messages[0]
    assert [layer.name for layer in viewer.layers] == ["em"]


# --------------------------------------------------------------------------- #
# Segment neurons and Evaluate
# --------------------------------------------------------------------------- #


def segment_now(qtbot, widget):
    """Run the "Segment neurons" widget and wait for its worker; return the worker."""
    worker = widget()
    assert worker is not None
    wait_for(qtbot, widget)
    return worker


def test_segment_equals_fusionnet_segment_and_rerun_replaces(viewer, qt, tmp_path, capsys):
    from napari.layers import Labels

    from fusionnet_tf.segmentation import default_params, segment

    membrane, _ = cell_grid()
    viewer.add_image(membrane, name="membranes")
    widget = dock(viewer, "Segment neurons")
    assert widget.merge_threshold.value == default_params().merge_threshold
    segment_now(qt, widget)
    layer = viewer.layers["membranes neurons"]
    assert isinstance(layer, Labels)
    assert np.issubdtype(layer.data.dtype, np.integer) and layer.data.max() > 1

    tifffile.imwrite(tmp_path / "pred.tif", membrane)
    assert main(["segment", str(tmp_path / "pred.tif"), "-o", str(tmp_path / "seg.tif"),
                 "--quiet"]) == 0
    np.testing.assert_array_equal(layer.data, tifffile.imread(tmp_path / "seg.tif"))

    count = len(viewer.layers)
    widget.merge_threshold.value = 0.0
    widget.min_size.value = 0
    segment_now(qt, widget)
    assert len(viewer.layers) == count, [layer.name for layer in viewer.layers]
    expected, _ = segment(membrane, default_params().replace(merge_threshold=0.0, min_size=0))
    np.testing.assert_array_equal(layer.data, expected)


def test_evaluate_shows_the_numbers_of_fusionnet_evaluate(viewer, qt, tmp_path, capsys):
    membrane, labels = cell_grid(seed=1)
    noisy = np.clip(membrane + np.random.default_rng(2).normal(0, 0.3, membrane.shape),
                    0, 1).astype(np.float32)
    viewer.add_image(noisy, name="membranes")
    viewer.add_labels(labels, name="gt")
    segment_now(qt, dock(viewer, "Segment neurons"))
    segments = viewer.layers["membranes neurons"]
    widget = dock(viewer, "Evaluate")
    tifffile.imwrite(tmp_path / "gt.tif", labels)
    tifffile.imwrite(tmp_path / "pred.tif", noisy)
    tifffile.imwrite(tmp_path / "seg.tif", segments.data)
    for layer_name, option, path in (("membranes", "--pred", "pred.tif"),
                                     ("membranes neurons", "--seg", "seg.tif")):
        capsys.readouterr()
        assert main(["evaluate", "--labels", str(tmp_path / "gt.tif"), option,
                     str(tmp_path / path), "--json"]) == 0
        expected = json.loads(capsys.readouterr().out)
        widget.layer.value = viewer.layers[layer_name]
        widget.ground_truth.value = viewer.layers["gt"]
        assert widget() == expected
        rows = widget.table.to_dict("records")
        assert rows[0]["metric"] == "V_rand"
        assert rows[0]["score"] == f"{expected['v_rand']:.4f}"
        assert rows[1]["score"] == f"{expected['v_info']:.4f}"
        if option == "--pred":
            assert rows[0]["threshold"] == f"{expected['v_rand_threshold']:.1f}"
        else:
            assert [row["metric"] for row in rows][2] == "adapted Rand error"
            assert rows[2]["score"] == f"{expected['adapted_rand_error']:.4f}"


# --------------------------------------------------------------------------- #
# HDF5 reader and writers
# --------------------------------------------------------------------------- #


def test_hdf5_writers_and_reader_round_trip(tmp_path):
    _require_napari()
    from fusionnet_tf.napari.hdf5 import (get_reader, write_image_hdf5, write_labels_hdf5)

    membrane, _ = cell_grid()
    labels = (np.arange(2 * 64 * 64).reshape(2, 64, 64) // 700).astype(np.uint32)
    path = tmp_path / "out.h5"
    write_image_hdf5(str(path), membrane, {"name": "membranes"})
    write_labels_hdf5(str(path), labels, {"name": "neurons"})
    assert get_reader(str(tmp_path / "x.tif")) is None
    layers = get_reader(str(path))(str(path))
    kinds = {meta["name"]: (kind, data) for data, meta, kind in layers}
    assert kinds["out:prediction"][0] == "image"
    np.testing.assert_array_equal(kinds["out:prediction"][1], membrane)
    assert kinds["out:segmentation"][0] == "labels"
    np.testing.assert_array_equal(kinds["out:segmentation"][1], labels)
    (data, meta, kind), = get_reader(f"{path}:/segmentation")(f"{path}:/segmentation")
    assert kind == "labels" and meta["name"] == "out:segmentation"
    with pytest.raises(ValueError):
        write_image_hdf5(str(tmp_path / "raw.h5"), labels.astype(np.float32) * 2, {})




# --------------------------------------------------------------------------- #
# The viewer's process never runs TensorFlow; workers; remembered settings
# --------------------------------------------------------------------------- #

# A user's session: napari.Viewer() first (its canvas loads Mesa's OpenGL driver and, with
# llvmpipe, Mesa's LLVM), then the sample and "Predict membranes" with the widget's defaults.
# The guard matters: the worker process is spawned, and spawn imports the main script again.
VIEWER_FIRST_SCRIPT = '''
import json
import os
import sys
import time


def main(model, out):
    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer()
    for _ in range(10):
        QApplication.processEvents()
        time.sleep(0.02)
    with open("/proc/self/maps") as maps:
        mesa_llvm = "libLLVM" in maps.read()
    viewer.open_sample("fusionnet-tf", "isbi2012")
    _, widget = viewer.window.add_plugin_dock_widget("fusionnet-tf", "Predict membranes")
    defaults = {name: getattr(widget, name).value
                for name in ("tile_size", "overlap", "tta", "precision", "engine")}
    widget.model_path.value = model
    worker = widget()
    steps = []
    worker.yielded.connect(steps.append)
    started = time.monotonic()
    while widget.worker is not None and time.monotonic() - started < 600:
        QApplication.processEvents()
        time.sleep(0.02)
    layers = [layer.name for layer in viewer.layers]
    if "isbi2012 membranes" in layers:
        np.save(out, viewer.layers["isbi2012 membranes"].data)
    engine = widget.prediction_engine
    worker_pid = engine.pid
    viewer.close()
    for _ in range(50):
        QApplication.processEvents()
        time.sleep(0.02)
    print(json.dumps({"mesa_llvm": mesa_llvm, "layers": layers, "defaults": defaults,
                      "steps": [list(step) for step in steps],
                      "tensorflow": "tensorflow" in sys.modules, "keras": "keras" in sys.modules,
                      "viewer_pid": os.getpid(), "worker_pid": worker_pid,
                      "worker_after_close": engine.pid}))


if __name__ == "__main__":
    main(*sys.argv[1:])
'''


def test_viewer_first_then_predict_with_no_special_settings(tiny_model_path, tmp_path):
    """Issue 26: Mesa, a viewer made first, no settings: Predict adds the layer of `predict`."""
    from fusionnet_tf.pretrained import example_path

    _require_display()
    script = tmp_path / "session.py"
    script.write_text(VIEWER_FIRST_SCRIPT)
    env = {name: value for name, value in os.environ.items()
           if name not in TEST_PROCESS_GL and not name.startswith(("GALLIUM", "LIBGL", "MESA"))}
    out = subprocess.run([sys.executable, str(script), str(tiny_model_path),
                          str(tmp_path / "layer.npy")], capture_output=True, text=True, env=env,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]  # no crash, no abort at exit
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["mesa_llvm"], "no Mesa LLVM in the viewer: this test needs Mesa's llvmpipe"
    assert not report["tensorflow"] and not report["keras"]
    assert report["defaults"] == {"tile_size": 512, "overlap": 64, "tta": 8,
                                  "precision": "float32", "engine": "auto"}  # as the CLI's
    assert report["layers"] == ["isbi2012", "isbi2012 membranes"]
    assert report["steps"][-1][0] == report["steps"][-1][1] > 0
    assert report["worker_pid"] not in (None, report["viewer_pid"])
    assert report["worker_after_close"] is None  # closing the viewer stopped the process

    assert main(["predict", str(example_path()), "-o", str(tmp_path / "cli.tif"),
                 "--model", str(tiny_model_path), "--quiet"]) == 0
    layer = np.load(tmp_path / "layer.npy")
    assert layer.dtype == np.float32 and layer.shape == (3, 512, 512)
    np.testing.assert_allclose(layer, tifffile.imread(tmp_path / "cli.tif"), atol=1e-6)


class FakeWorkerEnd:
    """The viewer's end of the worker's pipe, replaying replies (for ``PredictionEngine``)."""

    def __init__(self, replies):
        self.replies = list(replies)

    def poll(self, timeout):
        return bool(self.replies)

    def recv(self):
        return self.replies.pop(0)


class FakeProcess:
    def is_alive(self):
        return True


@pytest.mark.parametrize("cancelled", [False, True])
def test_the_engine_relays_its_job_and_drops_a_result_after_cancel(cancelled):
    """Replies of an earlier (abandoned) job are skipped; a result after Cancel is no result."""
    from types import SimpleNamespace

    from fusionnet_tf.napari.engine import PredictionCancelled, PredictionEngine

    result = np.ones((2, 2), np.float32)
    replies = [("progress", 1, (3, 4)), ("result", 1, np.zeros(1)), ("started", 2, 123),
               ("progress", 2, (0, 2)), ("progress", 2, (2, 2)), ("result", 2, result)]
    steps = PredictionEngine()._replies(2, FakeWorkerEnd(replies), FakeProcess(),
                                        SimpleNamespace(value=2 if cancelled else 1))
    seen = []
    with pytest.raises(StopIteration) as stop:
        while True:
            seen.append(next(steps))
    assert seen == [(0, 2), (2, 2)]
    if cancelled:
        assert isinstance(stop.value.value, PredictionCancelled)
    else:
        assert stop.value.value is result


def test_segment_runs_in_a_worker_thread(viewer, qt, monkeypatch):
    import threading

    import fusionnet_tf.napari.segment as segment_module

    threads = []
    run = segment_module.run_segmentation

    def recording(*args):
        threads.append(threading.current_thread())
        return run(*args)

    monkeypatch.setattr(segment_module, "run_segmentation", recording)
    membrane, _ = cell_grid(count=1)
    viewer.add_image(membrane, name="membranes")
    widget = dock(viewer, "Segment neurons")
    worker = widget()
    assert worker is not None and not widget.call_button.enabled
    wait_for(qt, widget)
    assert len(threads) == 1 and threads[0] is not threading.main_thread()
    assert "membranes neurons" in viewer.layers and widget.call_button.enabled


def test_the_widget_normalizes_as_its_normalization_says(viewer, monkeypatch):
    from fusionnet_tf.data import normalize
    from fusionnet_tf.napari.predict import PredictWidget

    started = []
    monkeypatch.setattr(PredictWidget, "start",
                        lambda self, viewer, image, images, model, options:
                        started.append((images, options)))
    rng = np.random.default_rng(0)
    raw = np.stack([rng.integers(10, 60, (32, 32)), rng.integers(60, 200, (32, 32))]
                   ).astype(np.uint8)
    viewer.add_image(raw, name="em")
    widget = dock(viewer, "Predict membranes")
    widget.tile_z.value = 4
    widget()  # the default: per slice
    widget.normalization.value = "global"
    widget()
    (by_slice, first), (whole, second) = started
    np.testing.assert_allclose(by_slice, normalize(raw, mode="slice"))
    np.testing.assert_allclose(whole, normalize(raw, mode="global"))
    assert np.abs(by_slice - whole).max() > 0.05
    assert (first["normalization"], second["normalization"]) == ("slice", "global")
    assert first["tile_z"] == second["tile_z"] == 4


def test_widgets_remember_their_settings(qt, tiny_model_path, tmp_path, monkeypatch):
    from fusionnet_tf.napari.evaluate import make_evaluate_widget
    from fusionnet_tf.napari.predict import SETTINGS, make_predict_widget
    from fusionnet_tf.napari.segment import make_segment_widget
    from fusionnet_tf.napari.settings import settings_path

    changes = {
        make_predict_widget: {"model_path": tiny_model_path, "tile_size": 256, "overlap": 32,
                              "tta": 4, "precision": "mixed_bfloat16", "engine": "xla",
                              "normalization": "global"},
        make_segment_widget: {"mode": "3d", "keep_boundaries": True, "merge_threshold": 0.25,
                              "min_size": 7, "seed_method": "distance"},
        make_evaluate_widget: {"label_convention": "membrane"},
    }
    for make, values in changes.items():
        first = make()
        defaults = {name: getattr(first, name).value for name in values}
        assert defaults != values
        for name, value in values.items():
            getattr(first, name).value = value
        first.close()
        again = make()
        assert {name: getattr(again, name).value for name in values} == values, make
        again.close()
    assert set(json.loads(settings_path("predict").read_text())) == set(SETTINGS)

    monkeypatch.setenv("FUSIONNET_TF_CACHE_DIR", str(tmp_path / "elsewhere"))
    fresh = make_predict_widget()
    assert fresh.engine.value == "auto" and fresh.tile_size.value == 512
    fresh.close()


# --------------------------------------------------------------------------- #
# 3D: affinity models, affinity layers, 3D neurons
# --------------------------------------------------------------------------- #

NN_OFFSETS = [(-1, 0, 0), (0, -1, 0), (0, 0, -1)]


@pytest.fixture(scope="module")
def tiny_3d_model_path(tmp_path_factory):
    """A tiny 3D affinity model (5D input, 3 channels) saved with its offsets sidecar."""
    from affinity_models import conv_model

    path = tmp_path_factory.mktemp("napari_model_3d") / "tiny3d.keras"
    conv_model(seed=0).save(path)
    path.with_name("tiny3d.offsets.json").write_text(json.dumps({"offsets": NN_OFFSETS}))
    return path


def two_cubes(shape=(6, 16, 16), cut=8):
    """(3, Z, Y, X) nearest-neighbour affinities of two boxes that meet at x = ``cut``."""
    affs = np.full((3,) + shape, 0.95, np.float32)
    affs[2, :, :, cut] = 0.05  # offset (0, 0, -1): the pair (x - 1, x) is stored at x
    return affs


def fake_layer(name, data, metadata=None):
    from types import SimpleNamespace

    return SimpleNamespace(name=name, data=data, metadata=dict(metadata or {}), multiscale=False,
                           rgb=False, ndim=np.ndim(data))


def test_affinity_layers_keep_the_offsets_and_show_the_boundary_map():
    _require_napari()
    from fusionnet_tf.napari.affinities import affinity_layer_data, holds_affinities
    from fusionnet_tf.segmentation.affinities import boundary_map

    affs = two_cubes()
    (data, kwargs, kind), (boundary, boundary_kwargs, _) = affinity_layer_data(
        "em", affs, NN_OFFSETS, {"model": "tiny"})
    assert kind == "image" and data is affs and kwargs["name"] == "em affinities"
    assert kwargs["metadata"] == {"model": "tiny", "kind": "affinities",
                                  "offsets": [list(o) for o in NN_OFFSETS]}
    assert boundary_kwargs["name"] == "em boundaries" and boundary.shape == affs.shape[1:]
    np.testing.assert_array_equal(boundary, boundary_map(affs, NN_OFFSETS))
    assert boundary[:, :, 7:9].min() > 0.15 and boundary[:, 2:-2, 2:6].max() < 0.1
    assert holds_affinities(fake_layer("a", affs, kwargs["metadata"]))
    assert not holds_affinities(fake_layer("m", boundary))


def test_segment_layer_makes_3d_neurons_from_an_affinity_layer():
    _require_napari()
    from fusionnet_tf.napari.segment import default_affinity_params, prepare_segmentation, \
        segment_layer
    from fusionnet_tf.pretrained import pretrained_params_path
    from fusionnet_tf.segmentation.affinities import segment_affinities

    shipped = json.loads(pretrained_params_path("snemi3d").read_text())["params"]
    assert default_affinity_params().to_dict() == shipped
    affs = two_cubes()
    layer = fake_layer("em affinities", affs, {"kind": "affinities",
                                               "offsets": [list(o) for o in NN_OFFSETS]})
    (data, offsets), params = prepare_segmentation(layer, {"merge_threshold": 0.0})
    assert params.to_dict() == shipped  # the membrane fields do not apply to affinities
    assert offsets == NN_OFFSETS
    for method in ("agglomeration", "mws"):
        labels = segment_layer(layer, affinity_method=method)
        assert labels.shape == affs.shape[1:] and np.issubdtype(labels.dtype, np.integer)
        assert len(np.unique(labels)) == 2, method
        assert len(np.unique(labels[:, :, :8])) == len(np.unique(labels[:, :, 8:])) == 1
        expected, _ = segment_affinities(affs, NN_OFFSETS, params.replace(method=method))
        np.testing.assert_array_equal(labels, expected)
    joined = two_cubes()
    joined[2, :, :, 8] = 0.9  # a weak face above the merge threshold: one neuron
    labels = segment_layer(fake_layer("j", joined, layer.metadata))
    assert len(np.unique(labels)) == 1


@pytest.mark.parametrize("metadata, match", [
    ({}, "affinity layer 'bad' .* has no offsets"),
    ({"offsets": [[-1, 0, 0], [0, -1, 0]]}, "2 offsets in the metadata but 3 affinity channels"),
])
def test_an_affinity_layer_without_matching_offsets_is_refused_in_one_line(metadata, match):
    _require_napari()
    from fusionnet_tf.napari.segment import prepare_segmentation

    with pytest.raises(ValueError, match=match) as error:
        prepare_segmentation(fake_layer("bad", two_cubes(), metadata), {})
    assert "\n" not in str(error.value)


def test_predict_refuses_a_2d_image_for_a_3d_model_before_the_worker(tiny_3d_model_path,
                                                                     tiny_model_path):
    _require_napari()
    from fusionnet_tf.napari.engine import predictor_options
    from fusionnet_tf.napari.predict import (check_image_for_model, model_spatial_dims,
                                             model_spec, prepare_images)
    from fusionnet_tf.pretrained import pretrained_path

    assert model_spec("", "isbi2012") is None
    assert model_spec("", "snemi3d") == model_spec("snemi3d") == pretrained_path("snemi3d")
    assert [model_spatial_dims(m) for m in (None, model_spec("", "snemi3d"), tiny_3d_model_path,
                                            tiny_model_path)] == [2, 3, 3, 2]
    layer = fake_layer("em", np.zeros((4, 32, 32), np.float32))
    check_image_for_model(np.zeros((4, 32, 32), np.float32), 3, layer)
    for shape in ((32, 32), (1, 32, 32)):
        with pytest.raises(ValueError, match=r"image layer 'em' is a single 2D image \(shape "
                                             r"\(32, 32\)\); a 3D model needs a \(Z, Y, X\)"):
            check_image_for_model(np.zeros(shape, np.float32), 3, layer)
        check_image_for_model(np.zeros(shape, np.float32), 2, layer)  # a 2D model takes it
    with pytest.raises(ValueError, match="image layer 'a' holds affinities"):
        prepare_images(fake_layer("a", two_cubes(), {"offsets": NN_OFFSETS}), "slice")

    # a model whose kind only loading tells (.onnx, SavedModel): the worker refuses it
    from types import SimpleNamespace

    from fusionnet_tf.napari.engine import check_model_input

    with pytest.raises(ValueError, match=r"the image layer is a single 2D image"):
        check_model_input(SimpleNamespace(spatial_dims=3), np.zeros((1, 32, 32), np.float32))
    check_model_input(SimpleNamespace(spatial_dims=2), np.zeros((1, 32, 32), np.float32))

    from fusionnet_tf.predict_options import PredictOptions

    options = PredictOptions(tile_shape=64, overlap=16, tile_z=8, tta=1).to_dict()
    assert predictor_options(options, 2, tiny_model_path) == options
    assert predictor_options(options, 3, tiny_3d_model_path) == {**options,
                                                                 "offsets": NN_OFFSETS}
    # the widget's tile_z reaches the 3D tiles: (tile_z, T, T), z overlap tile_z // 4
    three_d = PredictOptions.from_dict(options)
    assert (three_d.tile(3), three_d.overlaps(3)) == ((8, 64, 64), (2, 16, 16))
    bare = tiny_3d_model_path.with_name("bare.keras")
    bare.write_bytes(tiny_3d_model_path.read_bytes())
    with pytest.raises(ValueError, match=r"offsets of the 3D model .*bare.keras are unknown"):
        predictor_options(options, 3, bare)


def test_hdf5_and_zarr_readers_open_affinity_files_with_their_offsets(tmp_path):
    _require_napari()
    import h5py

    from fusionnet_tf.data.affinity_io import read_affinities, write_affinities
    from fusionnet_tf.napari.affinities import get_zarr_reader
    from fusionnet_tf.napari.hdf5 import get_reader, write_image_hdf5

    affs = two_cubes((3, 8, 8), cut=4)
    write_affinities(tmp_path / "aff.h5", affs, NN_OFFSETS, {"model": "snemi3d"})
    write_affinities(tmp_path / "aff.zarr", affs, NN_OFFSETS, {"model": "snemi3d"})
    for path, reader in ((tmp_path / "aff.h5", get_reader), (tmp_path / "aff.zarr",
                                                            get_zarr_reader)):
        layers = reader(str(path))(str(path))
        (data, meta, kind), (boundary, boundary_meta, _) = layers
        assert kind == "image" and meta["name"].endswith("affinities"), meta
        np.testing.assert_array_equal(data, affs)
        assert meta["metadata"]["offsets"] == [list(o) for o in NN_OFFSETS]
        assert meta["metadata"]["kind"] == "affinities" and meta["metadata"]["model"] == "snemi3d"
        assert boundary.shape == affs.shape[1:] and boundary_meta["name"].endswith("boundaries")
        # saved again from the viewer: the offsets go with it
        out = tmp_path / f"saved_{path.stem}.h5"
        write_image_hdf5(str(out), data, meta)
        saved, offsets = read_affinities(str(out))
        assert offsets == NN_OFFSETS
        np.testing.assert_array_equal(saved, affs)
    plain = tmp_path / "plain.zarr"
    import zarr
    zarr.open_array(str(plain), mode="w", shape=(4, 8, 8), dtype="float32")
    assert get_zarr_reader(str(plain)) is None  # napari's own reader opens it
    with h5py.File(tmp_path / "bare.h5", "w") as handle:
        handle["affinities"] = affs
    with pytest.raises(ValueError, match="bare.h5"):
        get_reader(str(tmp_path / "bare.h5"))(str(tmp_path / "bare.h5"))


def test_predict_3d_adds_affinities_and_boundaries_then_segment_makes_3d_neurons(
        viewer, qt, tiny_3d_model_path, tmp_path, capsys):
    from napari.layers import Labels

    from fusionnet_tf.data.affinity_io import read_affinities
    from fusionnet_tf.segmentation.affinities import boundary_map, segment_affinities

    volume = (np.random.default_rng(3).random((6, 32, 32)) * 255).astype(np.uint8)
    viewer.add_image(volume, name="em", scale=(30, 6, 6))
    widget = dock(viewer, "Predict membranes")
    widget.model_path.value = tiny_3d_model_path
    widget.tile_size.value, widget.overlap.value, widget.tile_z.value = 32, 8, 4
    widget.tta.value, widget.engine.value = 1, "plain"
    widget()
    wait_for(qt, widget)
    affinities = viewer.layers["em affinities"]
    boundaries = viewer.layers["em boundaries"]
    assert affinities.data.shape == (3, 6, 32, 32) and affinities.data.dtype == np.float32
    assert affinities.metadata["offsets"] == [list(o) for o in NN_OFFSETS]
    assert affinities.metadata["kind"] == "affinities"
    assert tuple(affinities.scale) == (1, 30, 6, 6) and tuple(boundaries.scale) == (30, 6, 6)
    np.testing.assert_allclose(boundaries.data, boundary_map(affinities.data, NN_OFFSETS))

    tifffile.imwrite(tmp_path / "em.tif", volume)
    assert main(["predict", str(tmp_path / "em.tif"), "-o", str(tmp_path / "aff.h5"), "--model",
                 str(tiny_3d_model_path), "--tile-size", "32", "--overlap", "8", "--tile-z", "4",
                 "--tta", "1", "--engine", "plain", "--quiet"]) == 0
    expected, offsets = read_affinities(str(tmp_path / "aff.h5"))
    assert offsets == NN_OFFSETS
    np.testing.assert_allclose(affinities.data, expected, atol=1e-6)

    segment = dock(viewer, "Segment neurons")
    segment.membrane.value = affinities

    def shown(name):  # not hidden by the widget (the test viewer itself is never shown)
        return not getattr(segment, name).native.isHidden()

    assert shown("affinity_method") and not shown("mode")
    assert not shown("merge_threshold") and shown("affinity_merge_threshold")
    segment.affinity_method.value = "mws"
    segment_now(qt, segment)
    neurons = viewer.layers["em neurons"]
    assert isinstance(neurons, Labels) and neurons.data.shape == (6, 32, 32)
    assert tuple(neurons.scale) == (30, 6, 6)
    from fusionnet_tf.napari.segment import default_affinity_params

    labels, _ = segment_affinities(expected, offsets, default_affinity_params().replace(
        method="mws"))
    np.testing.assert_array_equal(neurons.data, labels)
    segment.membrane.value = boundaries
    assert shown("mode") and not shown("affinity_method")

    # a 2D image to the 3D model, an affinity layer to any model: one line, no worker, no layer
    viewer.add_image(volume[0], name="section")
    names = [layer.name for layer in viewer.layers]
    for layer, match in (("section", "image layer 'section' is a single 2D image"),
                         ("em affinities", "image layer 'em affinities' holds affinities")):
        before = len(error_notifications())
        widget.image.value = viewer.layers[layer]
        assert widget() is None and widget.worker is None
        messages = error_notifications()[before:]
        assert len(messages) == 1 and match in messages[0] and "\n" not in messages[0], messages
    assert [layer.name for layer in viewer.layers] == names


def test_predict_with_the_shipped_snemi3d_model_on_a_small_crop(viewer, qt):
    from fusionnet_tf.data import read_stack
    from fusionnet_tf.inference.predictor import read_model_offsets
    from fusionnet_tf.pretrained import example_path, pretrained_path

    crop = read_stack(example_path())[:, 100:148, 200:248]  # 3 ISBI sections as a volume
    viewer.add_image(crop, name="crop")
    widget = dock(viewer, "Predict membranes")
    widget.pretrained.value = "snemi3d"
    widget.tile_size.value, widget.overlap.value, widget.tta.value = 64, 16, 1
    widget.engine.value = "plain"
    widget()
    wait_for(qt, widget)
    layer = viewer.layers["crop affinities"]
    offsets = read_model_offsets(pretrained_path("snemi3d"))
    assert layer.data.shape == (len(offsets), 3, 48, 48)
    assert layer.metadata["offsets"] == [list(o) for o in offsets]
    assert layer.metadata["model"] == "snemi3d"
    assert 0 <= layer.data.min() and layer.data.max() <= 1 and layer.data.std() > 0.01
    assert viewer.layers["crop boundaries"].data.shape == (3, 48, 48)

"""``fusionnet predict`` / ``fusionnet evaluate`` round trips and error paths."""

import json
import types

import h5py
import numpy as np
import pytest
import tifffile

from fusionnet_tf.cli import main
from fusionnet_tf.data import normalize, read_stack
from fusionnet_tf.inference import Predictor
from fusionnet_tf.inference import writers

SMALL = ["--tile-size", "32", "--overlap", "8", "--quiet"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model_file):
    """The session's tiny saved FusionNet, a 2 x 40 x 50 uint8 stack and ISBI-convention labels."""
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    tifffile.imwrite(root / "image.tif", rng.integers(0, 256, (2, 40, 50), dtype=np.uint8))
    labels = np.full((2, 40, 50), 255, np.uint8)  # ISBI: 0 = membrane
    labels[:, 20, :] = 0
    labels[:, :, 25] = 0
    tifffile.imwrite(root / "labels.tif", labels)
    return types.SimpleNamespace(root=root, model=str(tiny_model_file),
                                 image=str(root / "image.tif"), labels=str(root / "labels.tif"),
                                 membrane=(labels == 0).astype(np.float32))


def expected_prediction(files, tta):
    images = normalize(read_stack(files.image), mode="slice")
    return Predictor(files.model, tile_shape=32, overlap=8, tta=tta).predict(images)


def test_predict_tiff_round_trip(files, tmp_path):
    out = tmp_path / "pred.tif"
    assert main(["predict", files.image, "-o", str(out), "--model", files.model, "--tta", "4"]
                + SMALL) == 0
    written = tifffile.imread(out)
    assert written.shape == (2, 40, 50) and written.dtype == np.float32
    np.testing.assert_allclose(written, expected_prediction(files, tta=4), atol=1e-6)
    assert json.loads(tifffile.TiffFile(out).pages[0].description)["tta"] == 4
    assert [p.name for p in tmp_path.iterdir()] == ["pred.tif"]  # no temporary file left


def test_predict_isbi_uint8_hdf5_png_and_overlay(files, tmp_path):
    expected = expected_prediction(files, tta=1)
    common = ["--model", files.model, "--tta", "1"] + SMALL
    assert main(["predict", files.image, "-o", str(tmp_path / "p.tif"), "--isbi",
                 "--dtype", "uint8"] + common) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "p.tif"),
                                  np.round((1 - expected) * 255).astype(np.uint8))
    assert main(["predict", files.image, "-o", f"{tmp_path / 'p.h5'}:/maps/membrane",
                 "--overlay", str(tmp_path / "overlays")] + common) == 0
    with h5py.File(tmp_path / "p.h5", "r") as handle:
        np.testing.assert_allclose(handle["maps/membrane"][...], expected, atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "overlays").iterdir()) == [
        "slice_0000.png", "slice_0001.png"]
    from PIL import Image

    overlay = np.asarray(Image.open(tmp_path / "overlays" / "slice_0000.png"))
    assert overlay.shape == (40, 50, 3) and overlay.dtype == np.uint8
    tinted = expected[0] > 0.5  # membrane pixels are tinted red, the rest stays grey
    assert np.all(overlay[tinted, 0] >= overlay[tinted, 1])
    assert np.array_equal(overlay[~tinted, 0], overlay[~tinted, 1])
    assert main(["predict", files.image, "-o", str(tmp_path / "pngs")] + common) == 0
    pngs = read_stack(tmp_path / "pngs")
    np.testing.assert_array_equal(pngs, np.round(expected * 255).astype(np.uint8))


def test_hdf5_output_keeps_other_datasets(tmp_path):
    path = tmp_path / "existing.h5"
    raw = np.arange(2 * 8 * 8, dtype=np.uint16).reshape(2, 8, 8)
    with h5py.File(path, "w") as handle:
        handle["raw"] = raw
        handle["raw"].attrs["resolution"] = 4.0
        handle["labels/membrane"] = raw > 50
        handle.attrs["sample"] = "A"
    first, second = np.full((2, 8, 8), 0.25, np.float32), np.full((2, 8, 8), 0.75, np.float32)
    writers.write_prediction(f"{path}:/pred", first, metadata={"tta": 8})
    writers.write_prediction(f"{path}:/pred", second)  # an existing key is replaced
    with h5py.File(path, "r") as handle:
        np.testing.assert_array_equal(handle["raw"][...], raw)
        assert handle["raw"].attrs["resolution"] == 4.0 and handle.attrs["sample"] == "A"
        np.testing.assert_array_equal(handle["labels/membrane"][...], raw > 50)
        np.testing.assert_array_equal(handle["pred"][...], second)
        assert "tta" not in handle["pred"].attrs  # the old dataset's attributes went with it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.h5"]
    with pytest.raises(ValueError, match=r"existing.h5:/labels is a group"):
        writers.write_prediction(f"{path}:/labels", first)
    with pytest.raises(ValueError, match=r"existing.h5:/raw/pred.*'raw' is a dataset"):
        writers.write_prediction(f"{path}:/raw/pred", first)
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match=r"text.h5 exists and is not an HDF5 file"):
        writers.write_prediction(tmp_path / "text.h5", first)
    assert (tmp_path / "text.h5").read_text() == "not hdf5"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.h5", "text.h5"]


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_tiff_prediction_of_three_or_four_slices_stays_a_stack(tmp_path, dtype):
    """tifffile stores (3|4, H, W) as planar RGB(A) by default; the writer must not."""
    for count in (3, 4):
        prob = np.full((count, 8, 8), 0.5, np.float32)  # equal slices: would read as one RGB image
        writers.write_prediction(tmp_path / f"p{count}.tif", prob, dtype=dtype)
        assert read_stack(tmp_path / f"p{count}.tif").shape == (count, 8, 8)
        np.testing.assert_allclose(writers.read_probability_map(tmp_path / f"p{count}.tif"), prob,
                                   atol=1 / 255)


def test_failed_hdf5_write_keeps_the_existing_file(tmp_path, monkeypatch):
    path = tmp_path / "existing.h5"
    with h5py.File(path, "w") as handle:
        handle["raw"] = np.ones((1, 4, 4), np.uint8)
    before = path.read_bytes()
    real_file = h5py.File

    class FailingFile(real_file):
        def create_dataset(self, *args, **kwargs):
            super().create_dataset(*args, **kwargs)
            raise OSError("disk full")

    monkeypatch.setattr(h5py, "File", FailingFile)
    with pytest.raises(OSError, match="disk full"):
        writers.write_prediction(f"{path}:/raw", np.zeros((1, 4, 4), np.float32))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.h5"]


def test_predict_into_the_input_hdf5_file(files, tmp_path):
    path = tmp_path / "vol.h5"
    raw = tifffile.imread(files.image)
    with h5py.File(path, "w") as handle:
        handle["raw"] = raw
    assert main(["predict", f"{path}:/raw", "-o", f"{path}:/pred", "--model", files.model,
                 "--tta", "1"] + SMALL) == 0
    with h5py.File(path, "r") as handle:
        np.testing.assert_array_equal(handle["raw"][...], raw)
        np.testing.assert_allclose(handle["pred"][...], expected_prediction(files, tta=1),
                                   atol=1e-6)


def test_predict_refuses_to_overwrite_its_input(files, tmp_path, capsys, monkeypatch):
    import fusionnet_tf.cli.predict as predict_cli

    def no_model(args):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(predict_cli, "resolve_model", no_model)
    path = tmp_path / "vol.h5"
    with h5py.File(path, "w") as handle:
        handle["raw"] = tifffile.imread(files.image)
    before = path.read_bytes()
    for input_spec, output in ((f"{path}:/raw", f"{path}:/raw"), (f"{path}:raw", f"{path}:/raw"),
                               (str(path), f"{path}://raw"), (f"{path}:/raw", f"{path}:raw/"),
                               (files.image, files.image)):
        code, err = run_cli(["predict", input_spec, "-o", output] + SMALL, capsys)
        assert code == 2 and "--output" in err and "INPUT" in err, (input_spec, output)
    assert path.read_bytes() == before
    with h5py.File(path, "a") as handle:  # an alias of /raw is still /raw
        handle["alias"] = h5py.SoftLink("/raw")
    before = path.read_bytes()
    for input_spec, output in ((f"{path}:/alias", f"{path}:/raw"), (f"{path}:/raw", f"{path}:/alias")):
        code, err = run_cli(["predict", input_spec, "-o", output] + SMALL, capsys)
        assert code == 2 and "is the INPUT dataset" in err, (input_spec, output)
    assert path.read_bytes() == before
    code, err = run_cli(["predict", files.image, "-o", str(tmp_path / "q.tif"), "--serving-url",
                         "http://127.0.0.1:9/v1/models/x", "--precision", "mixed_bfloat16"], capsys)
    assert code == 2 and "--precision 'mixed_bfloat16' applies to Keras models only; the serving endpoint " \
        "http://127.0.0.1:9/v1/models/x" in err
    assert not (tmp_path / "q.tif").exists()
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "in.png")
    code, err = run_cli(["predict", str(tmp_path / "in.png"), "-o", str(tmp_path / "p.tif"),
                         "--overlay", str(tmp_path / "in.png")] + SMALL, capsys)
    assert code == 2 and "--overlay" in err and "INPUT" in err
    code, err = run_cli(["predict", files.image, "-o", str(tmp_path / "pngs"), "--overlay",
                         str(tmp_path / "pngs")] + SMALL, capsys)
    assert code == 2 and "--overlay" in err and "--output" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "vol.h5"]


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_predict_refuses_non_finite_input(files, tmp_path, capsys, value):
    image = np.random.default_rng(5).random((2, 40, 50)).astype(np.float32)
    image[1, 7, 9] = value
    tifffile.imwrite(tmp_path / "bad.tif", image)
    code, err = run_cli(["predict", str(tmp_path / "bad.tif"), "-o", str(tmp_path / "p.tif"),
                         "--model", files.model] + SMALL, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"INPUT {tmp_path / 'bad.tif'} contains 1 NaN or infinite value(s)" in err
    assert "(1, 7, 9)" in err and not (tmp_path / "p.tif").exists()
    with pytest.raises(ValueError, match="`stack` contains 1 NaN"):  # never silently zeros
        normalize(image)


def test_overlay_must_be_png_or_folder(files, tmp_path, capsys):
    for overlay in ("out.tif", "out.h5:/overlay", "out.jpg"):
        code, err = run_cli(["predict", files.image, "-o", str(tmp_path / "p.tif"), "--model",
                             files.model, "--overlay", str(tmp_path / overlay)] + SMALL, capsys)
        assert code == 2 and "--overlay" in err and overlay.split(":")[0] in err, overlay
        assert ".png" in err and "folder" in err
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match=r"out.tif.*\.png.*folder"):
        writers.write_overlays(tmp_path / "out.tif", np.zeros((8, 8)), np.zeros((8, 8)))
    assert list(tmp_path.iterdir()) == []


def test_predict_without_model_uses_pretrained(files, tmp_path, monkeypatch):
    import keras

    import fusionnet_tf.pretrained as pretrained

    monkeypatch.setattr(pretrained, "load_pretrained",
                        lambda: keras.saving.load_model(files.model, compile=False))
    assert main(["predict", files.image, "-o", str(tmp_path / "p.tif"), "--tta", "1"] + SMALL) == 0
    np.testing.assert_allclose(tifffile.imread(tmp_path / "p.tif"),
                               expected_prediction(files, tta=1), atol=1e-6)
    # --engine xla compiles the same network with XLA: same maps to float tolerance
    assert main(["predict", files.image, "-o", str(tmp_path / "x.tif"), "--tta", "1",
                 "--engine", "xla"] + SMALL) == 0
    np.testing.assert_allclose(tifffile.imread(tmp_path / "x.tif"),
                               expected_prediction(files, tta=1), atol=1e-5)


@pytest.mark.e2e
@pytest.mark.large
def test_predict_through_serving_url_matches_local_prediction(files, tiny_model,
                                                              tiny_serving_base, tmp_path):
    """``--serving-url`` against the real local server (TTA 8) equals local prediction."""
    from fusionnet_tf.export.server import ModelServer

    model = tiny_model
    image = tmp_path / "wide.tif"  # 70 px wide: tile origins depend on --align
    tifffile.imwrite(image, np.random.default_rng(3).integers(0, 256, (2, 40, 70), np.uint8))
    server = ModelServer(tiny_serving_base, port=0).start()
    try:
        assert main(["predict", str(image), "-o", str(tmp_path / "remote.tif"), "--serving-url",
                     server.url, "--tta", "8", "--batch-size", "8", "--align", "4"] + SMALL) == 0
    finally:
        server.shutdown()
    local = Predictor(model, tile_shape=32, overlap=8, tta=8, align=4).predict(
        normalize(read_stack(image)))
    assert local.std() > 1e-3  # structured output: the comparison means something
    np.testing.assert_allclose(tifffile.imread(tmp_path / "remote.tif"), local, atol=1e-5)


def test_evaluate_table_and_json(files, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "perfect.tif", files.membrane)
    assert main(["evaluate", "--labels", files.labels, "--pred", str(tmp_path / "perfect.tif"),
                 "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["v_rand"] == 1.0 and scores["v_info"] == 1.0 and scores["pixel_error"] == 0.0
    assert {"v_rand_threshold", "v_info_threshold", "pixel_error_threshold"} <= set(scores)

    # ISBI-convention uint8 prediction of "all interior" against membrane-convention labels
    tifffile.imwrite(tmp_path / "interior.tif", np.full((2, 40, 50), 255, np.uint8))
    tifffile.imwrite(tmp_path / "membrane_labels.tif", (files.membrane * 7).astype(np.uint8))
    assert main(["evaluate", "--labels", str(tmp_path / "membrane_labels.tif"),
                 "--label-convention", "membrane", "--pred", str(tmp_path / "interior.tif"),
                 "--pred-convention", "isbi"]) == 0
    table = capsys.readouterr().out
    assert "V_rand" in table and "V_info" in table and "pixel error" in table
    # one proposal segment per slice over 4 GT segments (20x25, 20x24, 19x25, 19x24 px)
    sizes = np.array([500, 480, 475, 456])
    expected = 2 * 2 * (sizes**2).sum() / (2 * (sizes**2).sum() + 2 * sizes.sum() ** 2)
    assert f"{expected:.4f}" in table


def run_cli(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr().err


def test_engine_choice_is_validated_and_recorded(files, tmp_path, capsys):
    out = tmp_path / "p.tif"
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", files.image, "-o", str(out), "--model", files.model,
              "--engine", "fast"] + SMALL)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.replace("'", "")  # Python versions quote the choices or not
    assert "--engine: invalid choice: fast (choose from auto, plain, frozen, xla)" in err
    assert main(["predict", files.image, "-o", str(out), "--model", files.model, "--tta", "1",
                 "--engine", "plain"] + SMALL) == 0
    metadata = json.loads(tifffile.TiffFile(out).pages[0].description)
    assert (metadata["engine"], metadata["precision"]) == ("plain", "float32")
    assert main(["predict", files.image, "-o", str(out), "--model", files.model, "--tta", "1",
                 "--precision", "auto"] + SMALL) == 0  # a short job: plain, float32 here
    metadata = json.loads(tifffile.TiffFile(out).pages[0].description)
    assert metadata["engine"] in ("plain", "xla") and metadata["precision"] != "auto"


def test_unreadable_input(files, tmp_path, capsys):
    code, err = run_cli(["predict", str(tmp_path / "nope.tif"), "-o", str(tmp_path / "p.tif"),
                         "--model", files.model] + SMALL, capsys)
    assert code == 2 and "nope.tif" in err and "fusionnet predict: error:" in err
    (tmp_path / "garbage.tif").write_bytes(b"not a tiff at all")
    code, err = run_cli(["predict", str(tmp_path / "garbage.tif"), "-o", str(tmp_path / "p.tif"),
                         "--model", files.model] + SMALL, capsys)
    assert code == 2 and err.count("\n") == 1
    assert not (tmp_path / "p.tif").exists()


def test_shape_mismatch_between_labels_and_prediction(files, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "short.tif", np.zeros((1, 40, 50), np.float32))
    code, err = run_cli(["evaluate", "--labels", files.labels, "--pred",
                         str(tmp_path / "short.tif")], capsys)
    assert code == 2 and "(2, 40, 50)" in err and "(1, 40, 50)" in err


def test_tile_not_divisible_by_two_to_the_depth(files, tmp_path, capsys):
    code, err = run_cli(["predict", files.image, "-o", str(tmp_path / "p.tif"), "--model",
                         files.model, "--tile-size", "30", "--overlap", "8", "--quiet"], capsys)
    assert code == 2 and "2**depth = 4" in err and "30" in err
    assert list(tmp_path.iterdir()) == []


def test_output_that_cannot_be_written(files, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    for output, message in ((tmp_path / "missing" / "p.tif", "missing"),
                            (blocker / "p.tif", "file.txt"), (tmp_path / "p.zarr", "p.zarr")):
        code, err = run_cli(["predict", files.image, "-o", str(output), "--model", files.model]
                            + SMALL, capsys)
        assert code == 2 and message in err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.png").write_bytes(b"")
    code, err = run_cli(["predict", files.image, "-o", str(tmp_path / "full"), "--model",
                         files.model] + SMALL, capsys)
    assert code == 2 and "holds files this command did not write" in err
    code, err = run_cli(["predict", files.image, "-o", str(tmp_path / "two.png"), "--model",
                         files.model] + SMALL, capsys)
    assert code == 2 and "one slice" in err and "2" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "full"]


@pytest.mark.parametrize("output", ["p.tif", "p.h5", "pngs"])
def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch, output):
    """A writer that fails half-way leaves no partial file and keeps an old one intact."""
    import PIL.Image

    def broken(*args, **kwargs):
        path = args[0] if args else kwargs.get("fp")
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", broken)
    monkeypatch.setattr(h5py, "File", broken)
    monkeypatch.setattr(PIL.Image.Image, "save", lambda self, path, **kw: broken(path))
    (tmp_path / "old.tif").write_bytes(b"old")
    with pytest.raises(OSError, match="disk full"):
        writers.write_prediction(tmp_path / output, np.zeros((2, 8, 8), np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.tif"]
    with pytest.raises(OSError, match="disk full"):
        writers.write_prediction(tmp_path / "old.tif", np.zeros((2, 8, 8), np.float32))
    assert (tmp_path / "old.tif").read_bytes() == b"old"


@pytest.mark.e2e
def test_cli_modules_import_without_tensorflow():
    import subprocess
    import sys

    # building the whole parser is what `fusionnet --help` does: it must stay this cheap
    code = ("import sys, fusionnet_tf.cli; fusionnet_tf.cli.build_parser(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} "
            "& {'tensorflow', 'keras', 'numpy'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_choices_match_the_library_checks():
    import importlib

    from fusionnet_tf import choices
    from fusionnet_tf.data import labels
    from fusionnet_tf.inference import optimize, predictor, tiling

    # fusionnet_tf.data.normalize is also the name of the function
    normalize_module = importlib.import_module("fusionnet_tf.data.normalize")
    assert labels.LABEL_CONVENTIONS is choices.LABEL_CONVENTIONS
    assert writers.PRED_CONVENTIONS is choices.PRED_CONVENTIONS
    assert writers.DTYPES is choices.DTYPES
    assert normalize_module.NORMALIZATION_MODES is choices.NORMALIZATION_MODES
    assert tiling.BLENDINGS is choices.BLENDINGS
    assert optimize.INFERENCE_PRECISIONS is choices.PRECISIONS
    assert tuple(predictor.TTA_TRANSFORMS) == choices.TTA_VALUES == (1, 4, 8)


def test_hdf5_output_through_a_symlink_updates_the_target(tmp_path):
    target = tmp_path / "data" / "vol.h5"
    target.parent.mkdir()
    with h5py.File(target, "w") as handle:
        handle["raw"] = np.arange(12, dtype=np.uint8).reshape(1, 3, 4)
    link = tmp_path / "link.h5"
    link.symlink_to(target)
    prob = np.full((1, 3, 4), 0.25, np.float32)
    writers.write_prediction(f"{link}:/pred", prob)
    assert link.is_symlink() and link.resolve() == target.resolve()
    with h5py.File(target, "r") as handle:
        assert sorted(handle) == ["pred", "raw"]
        np.testing.assert_array_equal(handle["pred"][...], prob)
    assert sorted(p.name for p in target.parent.iterdir()) == ["vol.h5"]  # no temporary left

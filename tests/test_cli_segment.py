"""``fusionnet segment`` / ``tune-segment`` / ``evaluate --seg`` / ``predict --segment``."""

import json

import h5py
import numpy as np
import pytest
import tifffile

from fusionnet_tf.cli import main
from fusionnet_tf.segmentation import SegmentParams, default_params, segment

METRIC_KEYS = {"v_rand", "v_info", "adapted_rand_error", "voi_split", "voi_merge", "cremi_score"}


def cells_map(slices=2, size=48, seed=0):
    """(N, H, W) float32 map: a 3 x 3 grid of cells (membranes at 16, 32), mild noise."""
    membrane = np.zeros((slices, size, size), np.float32)
    for line in (15, 31):
        membrane[:, line:line + 2, :] = 1.0
        membrane[:, :, line:line + 2] = 1.0
    noise = np.random.default_rng(seed).normal(0, 0.02, membrane.shape)
    return np.clip(membrane + noise, 0, 1).astype(np.float32)


@pytest.fixture()
def files(tmp_path):
    membrane = cells_map()
    tifffile.imwrite(tmp_path / "pred.tif", membrane, photometric="minisblack")
    labels = np.where(cells_map() > 0.5, 0, 255).astype(np.uint8)  # ISBI: 0 = membrane
    tifffile.imwrite(tmp_path / "labels.tif", labels, photometric="minisblack")
    image = (255 * (1 - membrane)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "image.tif", image, photometric="minisblack")
    return tmp_path, membrane


def run_cli(argv, capsys):
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_segment_tiff_round_trip_equals_the_library(files, capsys):
    root, membrane = files
    code, _, err = run_cli(["segment", root / "pred.tif", "-o", root / "seg.tif"], capsys)
    assert code == 0, err
    written = tifffile.imread(root / "seg.tif")
    assert written.dtype == np.uint32 and written.shape == membrane.shape
    expected, max_id = segment(membrane, default_params())
    np.testing.assert_array_equal(written, expected)
    assert max_id == 18  # 9 cells in each of the 2 slices
    assert f"{max_id} segments" in err


@pytest.mark.parametrize("output, read", [
    ("seg.h5:/neurons", lambda p: h5py.File(p.split(":")[0], "r")["neurons"][...]),
    ("seg.zarr", lambda p: np.asarray(__import__("zarr").open_array(p, mode="r")[...])),
])
def test_segment_hdf5_and_zarr_outputs(files, capsys, output, read):
    root, membrane = files
    spec = str(root / output)
    code, _, err = run_cli(["segment", root / "pred.tif", "-o", spec, "--mode", "3d"], capsys)
    assert code == 0, err
    expected, _ = segment(membrane, default_params(), mode="3d")
    np.testing.assert_array_equal(read(spec), expected)


def test_segment_params_file_set_and_keep_boundaries(files, capsys):
    root, membrane = files
    params = SegmentParams(sigma=0.0, merge_threshold=0.0, min_size=0)
    (root / "p.json").write_text(json.dumps(params.to_dict()))
    code, _, err = run_cli(["segment", root / "pred.tif", "-o", root / "seg.tif", "--params",
                            root / "p.json", "--set", "seed_threshold=0.2",
                            "--keep-boundaries"], capsys)
    assert code == 0, err
    expected, _ = segment(membrane, params.replace(seed_threshold=0.2), keep_boundaries=True)
    written = tifffile.imread(root / "seg.tif")
    np.testing.assert_array_equal(written, expected)
    assert (written == 0).sum() == (membrane >= 0.5).sum()


def test_segment_overlay_writes_one_png_per_slice(files, capsys):
    root, _ = files
    code, _, err = run_cli(["segment", root / "pred.tif", "-o", root / "seg.tif", "--image",
                            root / "image.tif", "--overlay", root / "overlays"], capsys)
    assert code == 0, err
    from PIL import Image

    pngs = sorted((root / "overlays").glob("*.png"))
    assert [p.name for p in pngs] == ["slice_0000.png", "slice_0001.png"]
    rgb = np.asarray(Image.open(pngs[0]))
    assert rgb.shape == (48, 48, 3)
    # two cells get different colours
    assert not np.array_equal(rgb[5, 5], rgb[5, 40])


def test_evaluate_seg_json_and_table(files, capsys):
    root, membrane = files
    assert main(["segment", str(root / "pred.tif"), "-o", str(root / "seg.tif")]) == 0
    capsys.readouterr()
    code, out, err = run_cli(["evaluate", "--labels", root / "labels.tif", "--seg",
                              root / "seg.tif", "--json"], capsys)
    assert code == 0, err
    scores = json.loads(out)
    assert METRIC_KEYS <= set(scores) and scores["slices"] == 2
    assert scores["v_rand"] == pytest.approx(1.0) and scores["adapted_rand_error"] == 0
    # a label image that merges everything: VOI merge = log2(9 cells) bits
    tifffile.imwrite(root / "one.tif", np.ones(membrane.shape, np.uint32),
                     photometric="minisblack")
    code, out, _ = run_cli(["evaluate", "--labels", root / "labels.tif", "--seg",
                            root / "one.tif"], capsys)
    assert code == 0 and "CREMI score" in out and "VOI merge" in out


def test_tune_segment_writes_params_that_segment_reads(files, capsys):
    root, membrane = files
    code, out, err = run_cli(["tune-segment", "--pred", root / "pred.tif", "--labels",
                              root / "labels.tif", "-o", root / "tuned.json", "--budget", "4"],
                             capsys)
    assert code == 0, err
    document = json.loads((root / "tuned.json").read_text())
    assert document["settings_tried"] <= 4 and document["v_rand"] > 0.9
    assert "V_rand" in out and "settings tried" in out
    code, _, err = run_cli(["segment", root / "pred.tif", "-o", root / "seg.tif", "--params",
                            root / "tuned.json"], capsys)
    assert code == 0, err
    tuned = SegmentParams.from_dict(document["params"])
    np.testing.assert_array_equal(tifffile.imread(root / "seg.tif"), segment(membrane, tuned)[0])


def _write(path, array):
    tifffile.imwrite(path, array, photometric="minisblack")
    return path


@pytest.mark.parametrize("bad, message", [
    (np.full((2, 8, 8), 1.5, np.float32), "[0, 1]"),
    (np.full((2, 8, 8), np.nan, np.float32), "NaN"),
    (np.ones((2, 8, 8), np.uint16), "uint16"),
])
def test_segment_refuses_bad_maps_with_one_line(tmp_path, capsys, bad, message):
    pred = _write(tmp_path / "bad.tif", bad)
    code, _, err = run_cli(["segment", pred, "-o", tmp_path / "seg.tif"], capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "seg.tif").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.tif"]  # nothing half-written


def test_segment_refuses_unknown_params_key_before_reading(files, capsys):
    root, _ = files
    (root / "p.json").write_text(json.dumps({"seed_threshold": 0.1, "flood_level": 2}))
    code, _, err = run_cli(["segment", root / "pred.tif", "-o", root / "seg.tif", "--params",
                            root / "p.json"], capsys)
    assert code == 2 and "flood_level" in err and "p.json" in err
    code, _, err = run_cli(["segment", root / "pred.tif", "-o", root / "seg.tif", "--set",
                            "flood_level=2"], capsys)
    assert code == 2 and "flood_level" in err
    assert not (root / "seg.tif").exists()


def test_segment_refuses_output_over_input(files, capsys):
    root, _ = files
    before = (root / "pred.tif").read_bytes()
    code, _, err = run_cli(["segment", root / "pred.tif", "-o", root / "pred.tif"], capsys)
    assert code == 2 and "would overwrite PRED" in err
    assert (root / "pred.tif").read_bytes() == before


def test_segment_refuses_unknown_output_format_and_image_shape(files, capsys):
    root, _ = files
    code, _, err = run_cli(["segment", root / "pred.tif", "-o", root / "seg.png"], capsys)
    assert code == 2 and ".tif" in err
    _write(root / "small.tif", np.zeros((2, 8, 8), np.uint8))
    code, _, err = run_cli(["segment", root / "pred.tif", "-o", root / "seg.tif", "--image",
                            root / "small.tif", "--overlay", root / "ov"], capsys)
    assert code == 2 and "shape" in err
    assert not (root / "seg.tif").exists() and not (root / "ov").exists()


def test_evaluate_seg_refuses_float_labels_and_shape_mismatch(files, capsys):
    root, membrane = files
    _write(root / "float_seg.tif", membrane)
    code, _, err = run_cli(["evaluate", "--labels", root / "labels.tif", "--seg",
                            root / "float_seg.tif"], capsys)
    assert code == 2 and "integer" in err and "--seg" in err
    _write(root / "small_seg.tif", np.ones((2, 8, 8), np.uint32))
    code, _, err = run_cli(["evaluate", "--labels", root / "labels.tif", "--seg",
                            root / "small_seg.tif"], capsys)
    assert code == 2 and "shape" in err


def test_tune_segment_refuses_shape_mismatch_and_bad_budget(files, capsys):
    root, _ = files
    _write(root / "small.tif", np.full((2, 8, 8), 255, np.uint8))
    code, _, err = run_cli(["tune-segment", "--pred", root / "pred.tif", "--labels",
                            root / "small.tif", "-o", root / "t.json"], capsys)
    assert code == 2 and "shape" in err
    code, _, err = run_cli(["tune-segment", "--pred", root / "pred.tif", "--labels",
                            root / "labels.tif", "-o", root / "t.json", "--budget", "0"],
                           capsys)
    assert code == 2 and "--budget" in err
    assert not (root / "t.json").exists()


def test_predict_segment_in_one_go_equals_predict_then_segment(tmp_path, capsys,
                                                               tiny_model_file):
    image = _write(tmp_path / "image.tif",
                   np.random.default_rng(0).integers(0, 256, (2, 32, 40), dtype=np.uint8))
    common = ["--model", tiny_model_file, "--tile-size", "32", "--overlap", "8", "--tta",
              "1", "--quiet"]
    code, _, err = run_cli(["predict", image, "-o", tmp_path / "pred.tif", "--segment",
                            tmp_path / "seg.tif", "--set", "min_size=4"] + common, capsys)
    assert code == 0, err
    code, _, err = run_cli(["segment", tmp_path / "pred.tif", "-o", tmp_path / "seg2.tif",
                            "--set", "min_size=4"], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "seg.tif"),
                                  tifffile.imread(tmp_path / "seg2.tif"))
    # --segment over the input is refused before predicting
    code, _, err = run_cli(["predict", image, "-o", tmp_path / "p3.tif", "--segment", image]
                           + common, capsys)
    assert code == 2 and "--segment" in err and not (tmp_path / "p3.tif").exists()


def test_segment_never_overwrites_the_store_or_file_holding_its_input(files, capsys):
    import zarr

    root, membrane = files
    group = zarr.open_group(str(root / "vol.zarr"), mode="w")
    group.create_array("pred", data=membrane)
    group.create_array("raw", data=np.zeros(membrane.shape, np.uint8))
    for output in (root / "vol.zarr", root / "vol.zarr" / "pred"):
        code, _, err = run_cli(["segment", f"{root / 'vol.zarr'}:/pred", "-o", output], capsys)
        assert code == 2 and "would overwrite PRED" in err, output
    reopened = zarr.open_group(str(root / "vol.zarr"), mode="r")
    assert sorted(reopened.array_keys()) == ["pred", "raw"]
    np.testing.assert_array_equal(reopened["pred"][...], membrane)
    code, _, err = run_cli(["segment", root / "pred.tif", "-o", f"{root / 'out.zarr'}:/seg"],
                           capsys)
    assert code == 2 and "whole store" in err and not (root / "out.zarr").exists()


def test_segment_into_the_hdf5_file_holding_its_input_keeps_the_input(files, capsys):
    root, membrane = files
    with h5py.File(root / "vol.h5", "w") as handle:
        handle["pred"] = membrane
    code, _, err = run_cli(["segment", f"{root / 'vol.h5'}:/pred", "-o",
                            f"{root / 'vol.h5'}:/seg"], capsys)
    assert code == 0, err
    with h5py.File(root / "vol.h5", "r") as handle:
        np.testing.assert_array_equal(handle["pred"][...], membrane)
        np.testing.assert_array_equal(handle["seg"][...], segment(membrane, default_params())[0])
    code, _, err = run_cli(["segment", f"{root / 'vol.h5'}:/pred", "-o",
                            f"{root / 'vol.h5'}:/pred"], capsys)
    assert code == 2 and "is the PRED dataset" in err


def test_tune_segment_checks_its_output_before_tuning(files, capsys, monkeypatch):
    import fusionnet_tf.segmentation.tune as tune_module

    def no_tuning(*args, **kwargs):
        raise AssertionError("tuning must not start")

    monkeypatch.setattr(tune_module, "tune", no_tuning)
    root, _ = files
    common = ["tune-segment", "--pred", root / "pred.tif", "--labels", root / "labels.tif"]
    code, _, err = run_cli(common + ["-o", root / "nodir" / "p.json"], capsys)
    assert code == 2 and "does not exist" in err
    code, _, err = run_cli(common + ["-o", root / "p.txt"], capsys)
    assert code == 2 and ".json" in err


def test_tune_segment_reads_isbi_convention_maps(files, capsys):
    root, membrane = files
    tifffile.imwrite(root / "isbi.tif", 1 - membrane, photometric="minisblack")
    scores = []
    for pred, convention in (("pred.tif", "membrane"), ("isbi.tif", "isbi")):
        code, _, err = run_cli(["tune-segment", "--pred", root / pred, "--labels",
                                root / "labels.tif", "-o", root / f"{convention}.json",
                                "--budget", "1", "--pred-convention", convention], capsys)
        assert code == 0, err
        scores.append(json.loads((root / f"{convention}.json").read_text())["v_rand"])
    assert scores[0] == pytest.approx(scores[1], abs=1e-6) and scores[0] > 0.9

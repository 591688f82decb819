"""``--slices`` on ``predict``, ``evaluate``, ``segment`` and ``tune-segment``."""

import json
import shutil

import numpy as np
import pytest
import tifffile

from fusionnet_tf.cli import main
from fusionnet_tf.data import normalize, read_stack
from fusionnet_tf.inference import Predictor
from fusionnet_tf.metrics import isbi_scores, segmentation_scores_report
from fusionnet_tf.segmentation import default_params, segment

SMALL = ["--tile-size", "32", "--overlap", "8", "--quiet", "--tta", "1", "--engine", "plain"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model_file):
    """The tiny saved FusionNet, a 4 x 32 x 40 stack, labels and a membrane map that differ per slice."""
    root = tmp_path_factory.mktemp("slices")
    shutil.copy(tiny_model_file, root / "model.keras")
    rng = np.random.default_rng(0)
    tifffile.imwrite(root / "image.tif", rng.integers(0, 256, (4, 32, 40), dtype=np.uint8))
    labels = np.full((4, 32, 40), 255, np.uint8)  # ISBI: 0 = membrane
    for index in range(4):  # slice k has walls at column 8 + 6k and row 16
        labels[index, :, 8 + 6 * index] = 0
        labels[index, 16, :] = 0
    tifffile.imwrite(root / "labels.tif", labels)
    membrane = (labels == 0).astype(np.float32)
    membrane[2] = np.roll(membrane[2], 3, axis=1)  # slice 2 predicted off by 3 px
    membrane = np.clip(membrane + rng.normal(0, 0.05, membrane.shape), 0, 1).astype(np.float32)
    tifffile.imwrite(root / "pred.tif", membrane, photometric="minisblack")
    return root, labels, membrane


def run_cli(argv, capsys):
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_predict_slices_predicts_only_those(files, capsys, tmp_path):
    root = files[0]
    code, _, err = run_cli(["predict", root / "image.tif", "-o", tmp_path / "p.tif", "--model",
                            root / "model.keras", "--slices", "1-2"] + SMALL, capsys)
    assert code == 0, err
    images = normalize(read_stack(root / "image.tif"), mode="slice")
    expected = Predictor(str(root / "model.keras"), tile_shape=32, overlap=8, tta=1,
                         engine="plain").predict(images[1:3])
    np.testing.assert_allclose(tifffile.imread(tmp_path / "p.tif"), expected, atol=1e-6)


def test_segment_slices_segments_only_those(files, capsys, tmp_path):
    root, _, membrane = files
    code, _, err = run_cli(["segment", root / "pred.tif", "-o", tmp_path / "s.tif", "--slices",
                            "0,3", "--quiet"], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "s.tif"),
                                  segment(membrane[[0, 3]], default_params())[0])


@pytest.mark.parametrize("stored", ["whole", "selected"])
def test_evaluate_slices_scores_only_those(files, capsys, tmp_path, stored):
    root, labels, membrane = files
    pred = root / "pred.tif"
    if stored == "selected":  # as predict --slices writes it
        pred = tmp_path / "selected.tif"
        tifffile.imwrite(pred, membrane[2:4], photometric="minisblack")
    code, out, err = run_cli(["evaluate", "--labels", root / "labels.tif", "--pred", pred,
                              "--slices", "2-3", "--json"], capsys)
    assert code == 0, err
    scores = json.loads(out)
    expected = isbi_scores(membrane[2:4], (labels[2:4] == 0).astype(np.uint8))
    assert scores["slices"] == 2
    assert scores["v_rand"] == pytest.approx(expected["v_rand"])
    whole = isbi_scores(membrane, (labels == 0).astype(np.uint8))
    assert scores["v_rand"] != pytest.approx(whole["v_rand"])  # the selection matters


def test_evaluate_seg_slices(files, capsys, tmp_path):
    root, labels, membrane = files
    segments = segment(membrane, default_params())[0]
    tifffile.imwrite(tmp_path / "seg.tif", segments)
    code, out, err = run_cli(["evaluate", "--labels", root / "labels.tif", "--seg",
                              tmp_path / "seg.tif", "--slices", "2", "--json"], capsys)
    assert code == 0, err
    expected = segmentation_scores_report((labels[2:3] == 0).astype(np.uint8), segments[2:3])
    assert json.loads(out)["v_rand"] == pytest.approx(expected["v_rand"])


def test_tune_segment_slices_tunes_on_those(files, capsys, tmp_path):
    root = files[0]
    code, _, err = run_cli(["tune-segment", "--pred", root / "pred.tif", "--labels",
                            root / "labels.tif", "-o", tmp_path / "t.json", "--budget", "2",
                            "--slices", "0-1"], capsys)
    assert code == 0, err
    document = json.loads((tmp_path / "t.json").read_text())
    assert document["slices"] == 2 and document["slice_spec"] == "0-1"


@pytest.mark.parametrize("command", [
    ["predict", "{root}/image.tif", "-o", "{tmp}/out.tif", "--model", "{root}/model.keras"] + SMALL,
    ["segment", "{root}/pred.tif", "-o", "{tmp}/out.tif", "--quiet"],
    ["evaluate", "--labels", "{root}/labels.tif", "--pred", "{root}/pred.tif"],
    ["tune-segment", "--pred", "{root}/pred.tif", "--labels", "{root}/labels.tif",
     "-o", "{tmp}/out.json"],
])
def test_slices_outside_the_stack_is_one_line_exit_2(files, capsys, tmp_path, command):
    argv = [arg.format(root=files[0], tmp=tmp_path) for arg in command] + ["--slices", "3-4"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and "--slices" in err and "[4]" in err and "4 slices" in err
    assert not list(tmp_path.iterdir())  # nothing written

"""Cross-validated tuning: ``cross_validate`` and ``fusionnet tune-segment --cv``."""

import json

import numpy as np
import pytest
import tifffile

from fusionnet_tf.cli import main
from fusionnet_tf.segmentation import SegmentParams, save_params, segment
from fusionnet_tf.segmentation.tune import (cross_validate, make_folds, score_segmentation,
                                            tune)

# merge_threshold 0.5 is the best setting in-sample (it wins on 6 of 8 slices) but
# fails badly on one fold; 0.0 is a little worse everywhere else and never fails
START = SegmentParams(sigma=0.0, seed_threshold=0.1, min_seed_size=0, min_size=0,
                      merge_threshold=0.0)
SPACE = {"merge_threshold": (0.0, 0.5)}
SPLIT_V_RAND = 2 * 0.625 / 1.625  # a cell cut 1/4 : 3/4, per slice (recall 10/16, precision 1)
MERGED_V_RAND = 2 * 0.5 / 1.5     # two equal cells merged (precision 1/2, recall 1)


def spurious_line_slice():
    """Two cells behind a sure wall, each cut by a faint false line (0.35) at row 8."""
    membrane = np.zeros((32, 32), np.float32)
    labels = np.zeros((32, 32), np.uint8)
    membrane[:, 15:17] = 1.0
    labels[:, 15:17] = 1
    membrane[8, :15] = membrane[8, 17:] = 0.35
    return membrane, labels


def faint_wall_slice():
    """Two cells behind a true wall that the map shows faintly (0.4)."""
    membrane = np.zeros((32, 32), np.float32)
    labels = np.zeros((32, 32), np.uint8)
    membrane[:, 15:17] = 0.4
    labels[:, 15:17] = 1
    return membrane, labels


def stack():
    """8 slices in 4 folds of 2: folds 0-2 have false lines, fold 3 faint walls."""
    pairs = [spurious_line_slice()] * 6 + [faint_wall_slice()] * 2
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def test_cv_chooses_the_setting_that_holds_up_held_out_not_the_in_sample_best():
    membrane, labels = stack()
    in_sample, _ = tune(membrane, labels, budget=4, start=START, space=SPACE)
    assert in_sample.merge_threshold == 0.5  # the premise: in-sample prefers 0.5

    best, report = cross_validate(membrane, labels, folds=4, budget=4, start=START,
                                  space=SPACE)
    assert best.merge_threshold == 0.0
    assert report["rule"] == "worst_fold"
    assert report["chosen"]["fold_v_rand"] == pytest.approx([SPLIT_V_RAND] * 3 + [1.0])
    assert report["chosen"]["worst_fold_v_rand"] == pytest.approx(SPLIT_V_RAND)
    # nested held-out figures: folds 0-2 are tuned with fold 3 inside (-> 0.0), fold 3
    # is tuned on false-line slices only (-> 0.5, which then merges its walls)
    held = report["folds"]
    assert [row["slices"] for row in held] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert [row["params"]["merge_threshold"] for row in held] == [0.0, 0.0, 0.0, 0.5]
    assert [row["v_rand"] for row in held] == pytest.approx([SPLIT_V_RAND] * 3 + [MERGED_V_RAND])
    assert held[3]["train_v_rand"] == pytest.approx(1.0)
    # pooled held-out = each fold segmented with its own fold's parameters, scored together
    pooled = np.concatenate([segment(membrane[row["slices"]],
                                     SegmentParams(**row["params"]))[0] for row in held])
    v_rand, v_info = score_segmentation(labels, pooled)
    assert report["pooled_held_out"]["v_rand"] == pytest.approx(v_rand)
    assert report["pooled_held_out"]["v_info"] == pytest.approx(v_info)


def test_make_folds_splits_contiguously_and_refuses_more_folds_than_slices():
    assert make_folds(25, 5) == [list(range(k, k + 5)) for k in range(0, 25, 5)]
    assert make_folds(5, 2) == [[0, 1, 2], [3, 4]]
    with pytest.raises(ValueError, match="more folds than slices"):
        make_folds(3, 4)
    with pytest.raises(ValueError, match="folds"):
        make_folds(3, 1)


@pytest.fixture()
def files(tmp_path):
    membrane, labels = stack()
    tifffile.imwrite(tmp_path / "pred.tif", membrane, photometric="minisblack")
    tifffile.imwrite(tmp_path / "labels.tif", np.where(labels == 1, 0, 255).astype(np.uint8),
                     photometric="minisblack")
    save_params(tmp_path / "start.json", START)
    return tmp_path, membrane, labels


def run_cli(argv, capsys):
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_tune_segment_cv_prints_and_records_held_out_figures(files, capsys):
    root, membrane, labels = files
    code, out, err = run_cli(["tune-segment", "--pred", root / "pred.tif", "--labels",
                              root / "labels.tif", "-o", root / "cv.json", "--cv", "4",
                              "--budget", "3", "--start", root / "start.json"], capsys)
    assert code == 0, err
    document = json.loads((root / "cv.json").read_text())
    assert "v_rand" not in document  # no in-sample figure
    cv = document["cv"]
    assert cv["k"] == 4 and len(cv["folds"]) == 4
    for row in cv["folds"]:  # each held-out figure is its fold's params on its own slices
        segments, _ = segment(membrane[row["slices"]], SegmentParams(**row["params"]))
        v_rand, v_info = score_segmentation(labels[row["slices"]], segments)
        assert row["v_rand"] == pytest.approx(v_rand) and row["v_info"] == pytest.approx(v_info)
        assert f"{row['v_rand']:.4f}" in out
    assert f"pooled held-out: V_rand {cv['pooled_held_out']['v_rand']:.4f}" in out
    SegmentParams.from_dict(document["params"])
    code, out, err = run_cli(["segment", root / "pred.tif", "-o", root / "seg.tif", "--params",
                              root / "cv.json", "--quiet"], capsys)
    assert code == 0, err
    assert "v_rand" not in (out + err).lower()  # segment prints no tuning scores


def test_tune_segment_refuses_more_folds_than_slices(files, capsys):
    root, _, _ = files
    code, out, err = run_cli(["tune-segment", "--pred", root / "pred.tif", "--labels",
                              root / "labels.tif", "-o", root / "cv.json", "--cv", "9"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "--cv 9" in err and "8 slices" in err
    assert not (root / "cv.json").exists()
    code, _, err = run_cli(["tune-segment", "--pred", root / "pred.tif", "--labels",
                            root / "labels.tif", "-o", root / "cv.json", "--cv", "3",
                            "--slices", "6-7"], capsys)
    assert code == 2 and "--cv 3" in err and "2 slices" in err

"""Whole-volume 3D scores against contingency tables worked out by hand."""

import json
import math

import numpy as np
import pytest
import tifffile

from fusionnet_tf.cli import main
from fusionnet_tf.metrics import volume_scores

KEYS = {"adapted_rand_error", "rand_precision", "rand_recall", "voi_split", "voi_merge",
        "cremi_score"}


def test_a_split_through_two_sections():
    # gt: id 1 fills section 0, id 2 fills section 1 (4 voxels each).
    # seg: section 0 is cut into ids 1 | 2 (2 + 2 voxels), section 1 is id 3.
    gt = np.array([[[1, 1, 1, 1]], [[2, 2, 2, 2]]])
    seg = np.array([[[1, 1, 2, 2]], [[3, 3, 3, 3]]])
    # table n_ij: gt1 x seg1 = 2, gt1 x seg2 = 2, gt2 x seg3 = 4; N = 8
    # sum n^2 = 4 + 4 + 16 = 24; sum s_i^2 = 16 + 16 = 32; sum t_j^2 = 4 + 4 + 16 = 24
    # precision = 24/24 = 1, recall = 24/32 = 3/4, F = 2 * 3/4 / (7/4) = 6/7
    # VOI split = H(seg | gt) = p(gt1) * 1 bit = 1/2; merge = H(gt | seg) = 0
    scores = volume_scores(gt, seg)
    assert set(scores) == KEYS
    assert scores["rand_precision"] == pytest.approx(1.0)
    assert scores["rand_recall"] == pytest.approx(0.75)
    assert scores["adapted_rand_error"] == pytest.approx(1 / 7)
    assert scores["voi_split"] == pytest.approx(0.5)
    assert scores["voi_merge"] == pytest.approx(0.0)
    assert scores["cremi_score"] == pytest.approx(math.sqrt(0.5 / 7))


def test_a_2x2_table_with_ground_truth_zero_left_out():
    # gt ids 1 and 2 (3 voxels each) plus 4 voxels of id 0 (not counted);
    # seg: a = {gt1: 2, gt2: 1}, b = {gt1: 1, gt2: 2}; the zeros fall in a third segment.
    gt = np.array([[[1, 1, 1, 0, 0]], [[2, 2, 2, 0, 0]]])
    seg = np.array([[[5, 5, 6, 9, 9]], [[5, 6, 6, 9, 9]]])
    # n = [[2, 1], [1, 2]], N = 6; sum n^2 = 10; sum s_i^2 = 18; sum t_j^2 = 18
    # P = R = 10/18 = 5/9, error = 4/9
    # H(gt) = H(seg) = 1 bit; H(joint) = -(2 * 1/3 log2 1/3 + 2 * 1/6 log2 1/6)
    h_joint = -(2 * (1 / 3) * math.log2(1 / 3) + 2 * (1 / 6) * math.log2(1 / 6))
    scores = volume_scores(gt, seg)
    assert scores["rand_precision"] == pytest.approx(5 / 9)
    assert scores["rand_recall"] == pytest.approx(5 / 9)
    assert scores["adapted_rand_error"] == pytest.approx(4 / 9)
    assert scores["voi_split"] == pytest.approx(h_joint - 1)
    assert scores["voi_merge"] == pytest.approx(h_joint - 1)


def test_a_merge_is_one_bit_and_ids_are_shared_across_sections():
    # gt: id 7 runs through both sections (2 voxels each), id 8 likewise; seg merges all.
    gt = np.array([[[7, 7, 8, 8]], [[7, 7, 8, 8]]])
    seg = np.full(gt.shape, 3)
    # n = [4, 4]; P = 32/64 = 1/2, R = 1; error = 1 - (2 * 1/2) / (3/2) = 1/3
    scores = volume_scores(gt, seg)
    assert scores["adapted_rand_error"] == pytest.approx(1 / 3)
    assert scores["voi_merge"] == pytest.approx(1.0) and scores["voi_split"] == 0
    # the same ids per section are one object in 3D: a perfect seg scores 0
    assert volume_scores(gt, gt + 100)["adapted_rand_error"] == pytest.approx(0.0)
    # but a seg that renames id 7 in the second section splits it
    renamed = gt.copy()
    renamed[1][renamed[1] == 7] = 9
    assert volume_scores(gt, renamed)["voi_split"] == pytest.approx(0.5)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="same"):
        volume_scores(np.ones((2, 3, 3), int), np.ones((2, 3, 4), int))


def _write(path, array):
    tifffile.imwrite(path, np.asarray(array, np.uint16), photometric="minisblack")
    return str(path)


def test_cli_evaluate_volume_json_and_table(tmp_path, capsys):
    gt = _write(tmp_path / "gt.tif", [[[1, 1, 1, 1]], [[2, 2, 2, 2]]])
    seg = _write(tmp_path / "seg.tif", [[[1, 1, 2, 2]], [[3, 3, 3, 3]]])
    assert main(["evaluate", "--labels", gt, "--seg", seg, "--volume", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert KEYS <= set(scores) and scores["adapted_rand_error"] == pytest.approx(1 / 7)
    assert main(["evaluate", "--labels", gt, "--seg", seg, "--volume"]) == 0
    assert "Rand recall" in capsys.readouterr().out


@pytest.mark.parametrize("labels, seg, extra, message", [
    ([[[1, 2]], [[1, 2]]], [[[1, 2, 3]], [[1, 2, 3]]], [], "differ in shape"),
    ([[[1, 2, 3]]], [[[1, 2, 3]]], [], "--volume needs a 3D stack"),
])
def test_cli_evaluate_volume_bad_input(tmp_path, capsys, labels, seg, extra, message):
    gt = _write(tmp_path / "gt.tif", labels)
    segments = _write(tmp_path / "seg.tif", seg)
    code = main(["evaluate", "--labels", gt, "--seg", segments, "--volume"] + extra)
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_cli_evaluate_volume_needs_seg(tmp_path, capsys):
    gt = _write(tmp_path / "gt.tif", [[[1, 2]], [[1, 2]]])
    pred = tmp_path / "pred.tif"
    tifffile.imwrite(pred, np.zeros((2, 1, 2), np.float32))
    code = main(["evaluate", "--labels", gt, "--pred", str(pred), "--volume"])
    assert code == 2 and "give --seg" in capsys.readouterr().err

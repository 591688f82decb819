"""Whole-volume 3D scores against contingency tables worked out by hand."""

import json
import math

import numpy as np
import pytest
import tifffile

from fusionnet_tf.cli import main
from fusionnet_tf import metrics
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


# --- ground truth cut out of a larger volume: its connected pieces (--gt-components)

def test_ground_truth_components_face_connectivity_by_hand():
    # id 1 in two pieces (joined only "outside" this cut-out); id 2 touches 1 diagonally;
    # id 3 is one piece through both sections (face-connected along z)
    labels = np.array([[[1, 0, 1, 3]],
                       [[0, 2, 0, 3]]])
    pieces = metrics.ground_truth_components(labels)
    assert pieces.tolist() == [[[1, 0, 2, 3]], [[0, 4, 0, 3]]]
    # diagonal contact between two voxels of ONE id does not join them
    diagonal = metrics.ground_truth_components(np.array([[[1, 0], [0, 1]]]))
    assert sorted(np.unique(diagonal).tolist()) == [0, 1, 2]
    # nor does a z-diagonal contact (one section up, one voxel over): 30 nm sections join by faces
    z_diagonal = metrics.ground_truth_components(np.array([[[1, 0]], [[0, 1]]]))
    assert z_diagonal.tolist() == [[[1, 0]], [[0, 2]]]


def test_a_perfect_segmentation_of_a_cut_out_scores_zero_only_against_its_pieces():
    # one ground-truth id in two pieces of 2 voxels; the segmentation gives each piece an id
    gt = np.array([[[1, 1, 0, 1, 1]], [[1, 1, 0, 1, 1]]])
    seg = np.array([[[5, 5, 0, 6, 6]], [[5, 5, 0, 6, 6]]])
    # raw ids: n = [[4, 4]]: precision 1, recall (16 + 16) / 64 = 1/2, ARE = 1 - 1 / 1.5 = 1/3
    assert volume_scores(gt, seg)["adapted_rand_error"] == pytest.approx(1 / 3)
    against_pieces = volume_scores(metrics.ground_truth_components(gt), seg)
    assert against_pieces["adapted_rand_error"] == pytest.approx(0.0)
    assert against_pieces["voi_split"] == pytest.approx(0.0)


def test_cli_evaluate_volume_gt_components(tmp_path, capsys):
    gt = _write(tmp_path / "gt.tif", [[[1, 1, 0, 1, 1]], [[1, 1, 0, 1, 1]]])
    seg = _write(tmp_path / "seg.tif", [[[5, 5, 0, 6, 6]], [[5, 5, 0, 6, 6]]])
    assert main(["evaluate", "--labels", gt, "--seg", seg, "--volume", "--json"]) == 0
    raw = json.loads(capsys.readouterr().out)
    assert raw["adapted_rand_error"] == pytest.approx(1 / 3) and raw["ground_truth"] == "ids"
    assert main(["evaluate", "--labels", gt, "--seg", seg, "--volume", "--json",
                 "--gt-components"]) == 0
    pieces = json.loads(capsys.readouterr().out)
    assert pieces["adapted_rand_error"] == pytest.approx(0.0)
    assert pieces["ground_truth"] == "components"
    assert main(["evaluate", "--labels", gt, "--seg", seg, "--volume", "--gt-components"]) == 0
    assert "connected pieces" in capsys.readouterr().out


def test_cli_gt_components_needs_volume_and_affinities(tmp_path, capsys):
    gt = _write(tmp_path / "gt.tif", [[[1, 1]], [[1, 1]]])
    seg = _write(tmp_path / "seg.tif", [[[1, 1]], [[1, 1]]])
    code = main(["evaluate", "--labels", gt, "--seg", seg, "--gt-components",
                 "--label-convention", "instance"])
    err = capsys.readouterr().err
    assert code == 2 and "add --volume" in err and len(err.strip().splitlines()) == 1, err
    pred = tmp_path / "pred.tif"
    tifffile.imwrite(pred, np.zeros((2, 1, 2), np.float32))
    code = main(["tune-segment", "--pred", str(pred), "--labels", gt, "-o",
                 str(tmp_path / "p.json"), "--gt-components"])
    err = capsys.readouterr().err
    assert code == 2 and "--gt-components applies to affinity files" in err, err


def test_cli_evaluate_volume_scores_only_the_selected_sections(tmp_path, capsys):
    # sections 0-1 segmented perfectly; in sections 2-3 id 1 is split in two
    gt = np.array([[[1, 1, 2, 2]]] * 4)
    seg = np.array([[[7, 7, 8, 8]]] * 2 + [[[7, 9, 8, 8]]] * 2)
    gt_path, seg_path = _write(tmp_path / "gt.tif", gt), _write(tmp_path / "seg.tif", seg)
    only_seg = _write(tmp_path / "seg23.tif", seg[2:])
    scores = {}
    for name, spec, segments in (("all", None, seg_path), ("0-1", "0-1", seg_path),
                                 ("2-3", "2-3", seg_path), ("2-3 only", "2-3", only_seg)):
        extra = ["--slices", spec] if spec else []
        assert main(["evaluate", "--labels", gt_path, "--seg", segments, "--volume",
                     "--json"] + extra) == 0
        scores[name] = json.loads(capsys.readouterr().out)
    assert scores["0-1"]["adapted_rand_error"] == pytest.approx(0.0)
    assert scores["0-1"]["slices"] == 2
    # sections 2-3: n(1,7) = n(1,9) = 2, n(2,8) = 4; precision 24/24 = 1; recall
    # (4 + 4 + 16) / (16 + 16) = 3/4; ARE = 1 - 2 * 3/4 / (1 + 3/4)
    assert scores["2-3"]["adapted_rand_error"] == pytest.approx(1 - 1.5 / 1.75)
    assert scores["2-3 only"] == scores["2-3"]
    assert 0 < scores["all"]["adapted_rand_error"] < scores["2-3"]["adapted_rand_error"]


def test_cli_evaluate_volume_refuses_sections_with_gaps(tmp_path, capsys):
    gt = _write(tmp_path / "gt.tif", [[[1, 2]]] * 4)
    seg = _write(tmp_path / "seg.tif", [[[1, 2]]] * 4)
    code = main(["evaluate", "--labels", gt, "--seg", seg, "--volume", "--slices", "0,2-3"])
    err = capsys.readouterr().err
    assert code == 2 and "--slices 0,2-3" in err and "contiguous" in err, err
    assert len(err.strip().splitlines()) == 1, err

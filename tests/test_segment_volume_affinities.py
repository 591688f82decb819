"""Block-wise segmentation of affinity volumes (``segment_volume`` / ``segment-volume AFF``).

Hand-built affinities: boxes that touch (affinity 0 across their face), boxes
cut by a weak face inside a block or exactly on a block face, objects spanning
many blocks; and noisy affinities of random 3D Voronoi cells. Block-wise
results are compared with in-memory ``segment_affinities`` (what ``fusionnet
segment AFF`` runs) on the same affinities.
"""

import json

import numpy as np
import pytest

from fusionnet_tf.cli import main
from fusionnet_tf.data.affinities import affinity_targets
from fusionnet_tf.data.affinity_io import write_affinities
from fusionnet_tf.metrics import segmentation_scores_report
from fusionnet_tf.segmentation import SegmentParams
from fusionnet_tf.segmentation.affinities import segment_affinities
from fusionnet_tf.segmentation.affinity_params import AffinityParams
from fusionnet_tf.segmentation.blockwise import seam_splits, segment_volume
from fusionnet_tf.volumes import BlockFailures

zarr = pytest.importorskip("zarr")

OFFSETS = ((-1, 0, 0), (0, -1, 0), (0, 0, -1), (-2, 0, 0), (0, -3, 0), (0, 0, -3))
# seeds where the boundary map (1 - mean of the 6 nearest-neighbour affinities) is < 0.1: a
# face of affinity 0 (or 0.2) gives 1/6 (0.13) on both sides, so fragments do not cross it
PARAMS = AffinityParams(merge_threshold=0.5, min_size=0, anisotropy=2.0, seed_threshold=0.1)
BOXES_SHAPE = (8, 40, 40)
BOXES_BLOCKS = (4, 16, 16)  # faces at z 4, y 16 and 32, x 16 and 32
VORONOI_SHAPE = (12, 64, 64)
VORONOI_BLOCKS = (6, 24, 24)
HALO = 16


# ------------------------------------------------------------------ data

def weaken(affs, axis, cut, value, offsets=OFFSETS):
    """Set the affinity of same-object pairs across the plane before ``cut`` on ``axis``."""
    for channel, offset in enumerate(offsets):
        step = offset[axis]
        if step == 0:
            continue
        index = np.arange(affs.shape[1 + axis])
        crossing = (index >= cut) & (index + step < cut) if step < 0 else \
            (index < cut) & (index + step >= cut)
        shape = [1, 1, 1]
        shape[axis] = -1
        affs[channel] = np.where(crossing.reshape(shape) & (affs[channel] > 0), value,
                                 affs[channel])
    return affs


def boxes():
    """(labels, affs): touching boxes, weak cuts inside a block and on a block face.

    Box 1 (y < 20) spans every block; boxes 2 and 3 (y >= 20) touch across
    x = 20 with affinity 0. Pairs across x = 26 (inside a block) and across
    y = 32 (a block face) are weak (0.2), so box 1 and 3 are cut at x = 26 and
    box 2 and 3 at y = 32: eight objects in all, most of them crossing block
    faces. Pairs across z = 4 (a block face) are strong but not 1 (0.8): no cut.
    """
    labels = np.ones(BOXES_SHAPE, np.int64)
    labels[:, 20:, :20] = 2
    labels[:, 20:, 20:] = 3
    affs, _ = affinity_targets(labels, OFFSETS)
    weaken(affs, 2, 26, 0.2)
    weaken(affs, 1, 32, 0.2)
    weaken(affs, 0, 4, 0.8)
    expected = labels * 10 + (np.arange(40)[None, None, :] >= 26) * (labels != 2) \
        + 2 * (np.arange(40)[None, :, None] >= 32)
    return expected, affs


def voronoi_affinities(seed=0, cells=25, noise=0.1):
    """(labels, affs): random 3D Voronoi cells (z twice as coarse), uniform noise +-``noise``."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(0, VORONOI_SHAPE, size=(cells, 3))
    z, y, x = np.indices(VORONOI_SHAPE)
    distance = ((2 * (z[..., None] - points[:, 0])) ** 2 + (y[..., None] - points[:, 1]) ** 2
                + (x[..., None] - points[:, 2]) ** 2)
    labels = np.argmin(distance, axis=-1) + 1
    affs, _ = affinity_targets(labels, OFFSETS)
    affs = np.clip(affs + rng.uniform(-noise, noise, affs.shape), 0, 1).astype(np.float32)
    return labels, affs


def same_partition(a, b):
    """True if ``a`` and ``b`` are equal up to renaming the ids (a bijection)."""
    pairs = np.unique(np.stack([np.ravel(a), np.ravel(b)]).astype(np.int64), axis=1)
    return pairs.shape[1] == np.unique(a).size == np.unique(b).size


def adapted_rand(reference, labels):
    return segmentation_scores_report(reference, labels, ground_truth="segments",
                                      mode="3d")["adapted_rand_error"]


def read(path):
    return zarr.open_array(str(path), mode="r")[...]


@pytest.fixture(scope="module")
def boxes_file(tmp_path_factory):
    expected, affs = boxes()
    path = tmp_path_factory.mktemp("boxes") / "aff.zarr"
    return str(write_affinities(path, affs, OFFSETS)), expected, affs


@pytest.fixture(scope="module")
def voronoi_file(tmp_path_factory):
    _, affs = voronoi_affinities()
    path = tmp_path_factory.mktemp("voronoi") / "aff.zarr"
    return str(write_affinities(path, affs, OFFSETS)), affs


def run(spec, out, params=PARAMS, block_shape=VORONOI_BLOCKS, halo=HALO, **kwargs):
    summary = segment_volume(spec, str(out), params, block_shape=block_shape, halo=halo,
                             progress=False, **kwargs)
    return read(out), summary


# ------------------------------------------------------------------ agreement with in-memory

@pytest.mark.parametrize("method", ["agglomeration", "mws"])
def test_hand_built_boxes_equal_in_memory_exactly(tmp_path, boxes_file, method):
    spec, expected, affs = boxes_file
    params = PARAMS.replace(method=method)
    reference, max_id = segment_affinities(affs, OFFSETS, params)
    assert same_partition(reference, expected)  # the hand-built answer, in memory
    labels, summary = run(spec, tmp_path / "out.zarr", params, block_shape=BOXES_BLOCKS, halo=8)
    assert same_partition(labels, reference)
    assert summary["segments"] == max_id == 8 and summary["mode"] == "3d"
    assert sorted(np.unique(labels)) == list(range(1, 9))
    assert summary["halo"] == (4, 8, 8)  # z: max(2, ceil(8 / anisotropy 2))
    assert seam_splits(reference, labels, BOXES_BLOCKS) == []
    # the weak cut on the block face y = 32 is kept, the strong z face is not a cut
    assert not set(np.unique(labels[:, 31, 30:])) & set(np.unique(labels[:, 32, 30:]))
    assert np.array_equal(labels[3], labels[4])


@pytest.mark.parametrize("method", ["agglomeration", "mws"])
def test_noisy_cells_within_0_01_of_in_memory_without_seams(tmp_path, voronoi_file, method):
    spec, affs = voronoi_file
    params = PARAMS.replace(method=method, min_size=20)
    reference, _ = segment_affinities(affs, OFFSETS, params)
    labels, summary = run(spec, tmp_path / "out.zarr", params)
    assert seam_splits(reference, labels, VORONOI_BLOCKS) == []
    assert adapted_rand(reference, labels) <= 0.01
    assert labels.dtype == np.uint64
    assert summary["blocks_total"] == 18 and summary["joins"] > 0
    assert summary["input_kind"] == "affinities" and summary["method"] == method
    assert sorted(np.unique(labels)) == list(range(1, labels.max() + 1))


def test_one_block_equals_in_memory(tmp_path, voronoi_file):
    spec, affs = voronoi_file
    reference, max_id = segment_affinities(affs, OFFSETS, PARAMS)
    labels, summary = run(spec, tmp_path / "out.zarr", block_shape=VORONOI_SHAPE)
    assert same_partition(reference, labels) and summary["segments"] == max_id
    assert summary["faces"] == 0


# ------------------------------------------------------------------ resume and refusals

def test_fault_then_resume_gives_identical_output(tmp_path, voronoi_file):
    spec, _ = voronoi_file
    expected, _ = run(spec, tmp_path / "clean.zarr")
    seen = []

    def fault(pass_name, block):
        if pass_name == "watershed":
            seen.append(block.name)
            if len(seen) == 7:
                raise RuntimeError("simulated kill")

    out = tmp_path / "out.zarr"
    with pytest.raises(BlockFailures, match="1 of 18 blocks failed"):
        run(spec, out, block_hook=fault)
    labels, summary = run(spec, out)
    np.testing.assert_array_equal(labels, expected)
    assert summary["blocks_segmented"] == 1  # only the failed block is redone
    assert not (out / ".fusionnet-segment").exists()


def test_resume_from_the_other_input_kind_is_refused(tmp_path, voronoi_file):
    spec, affs = voronoi_file
    membrane = tmp_path / "membrane.zarr"
    store = zarr.open_array(str(membrane), mode="w", shape=affs.shape[1:], dtype="float32",
                            chunks=(6, 24, 24))
    store[...] = 1 - affs[:3].mean(axis=0)
    membrane_params = SegmentParams(min_size=5)
    out = tmp_path / "out.zarr"
    run(str(membrane), out, membrane_params, halo=8)
    with pytest.raises(ValueError, match="started from a membrane input.*holds affinities"):
        run(spec, out)
    # stores of earlier versions do not record the kind: they hold membrane segmentations
    array = zarr.open_array(str(out), mode="r+")
    settings = dict(array.attrs["fusionnet_volume"])
    del settings["input_kind"]
    array.attrs["fusionnet_volume"] = settings
    with pytest.raises(ValueError, match="started from a membrane input"):
        run(spec, out)
    assert run(str(membrane), out, membrane_params, halo=8)[1]["blocks_skipped"] == 18
    labels, summary = run(spec, out, overwrite=True)
    assert summary["input_kind"] == "affinities" and summary["blocks_skipped"] == 0
    with pytest.raises(ValueError, match="started from a affinities input.*holds membrane"):
        run(str(membrane), out, membrane_params, halo=8)


def test_params_of_the_other_kind_are_refused(tmp_path, voronoi_file):
    spec, _ = voronoi_file
    with pytest.raises(ValueError, match="AffinityParams or None"):
        run(spec, tmp_path / "out.zarr", SegmentParams())
    assert not (tmp_path / "out.zarr").exists()


# ------------------------------------------------------------------ CLI

def test_cli_segments_affinities_like_the_library(tmp_path, voronoi_file, capsys):
    spec, _ = voronoi_file
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"params": PARAMS.to_dict()}))
    out = tmp_path / "out.zarr"
    argv = ["segment-volume", spec, str(out), "--params", str(params), "--method", "mws",
            "--set", "min_size=20", "--block", "24", "--block-z", "6", "--halo", str(HALO),
            "--workers", "0", "--quiet"]
    assert main(argv) == 0
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("segment-volume: 18 blocks (18 segmented, 0 already done)")
    assert "affinities (mws), halo (8, 16, 16)" in line
    expected, _ = run(spec, tmp_path / "library.zarr", PARAMS.replace(method="mws", min_size=20))
    np.testing.assert_array_equal(read(out), expected)
    assert main(argv) == 0
    assert "(0 segmented, 18 already done)" in capsys.readouterr().err


def write_raw_zarr(path, affs, attrs):
    store = zarr.open_array(str(path), mode="w", shape=affs.shape, dtype=affs.dtype,
                            chunks=(1, 6, 24, 24))
    store[...] = affs
    store.attrs.update(attrs)
    return str(path)


def test_cli_bad_affinity_inputs_exit_2_with_one_line(tmp_path, voronoi_file, capsys):
    spec, affs = voronoi_file
    offsets = [list(o) for o in OFFSETS]
    cases = [
        (write_raw_zarr(tmp_path / "no_offsets.zarr", affs, {"kind": "affinities"}), [],
         "without offsets"),
        (write_raw_zarr(tmp_path / "five.zarr", affs, {"kind": "affinities",
                                                      "offsets": offsets[:5]}), [],
         "5 offsets in the metadata but 6 affinity channels"),
        (write_raw_zarr(tmp_path / "high.zarr", affs * 2, {"kind": "affinities",
                                                          "offsets": offsets}), [],
         "affinities must be in [0, 1]"),
        (spec, ["--mode", "2d"], "--mode 2d applies to membrane maps"),
        (spec, ["--set", "merge_threshold=2"], "merge_threshold"),
    ]
    for number, (source, extra, message) in enumerate(cases):
        out = tmp_path / f"o{number}.zarr"
        code = main(["segment-volume", source, str(out), "--workers", "0", "--quiet"] + extra)
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and message in err, (source, err)
        assert not out.exists()


def test_cli_method_with_a_membrane_map_exits_2(tmp_path, voronoi_file, capsys):
    _, affs = voronoi_file
    membrane = tmp_path / "membrane.zarr"
    zarr.open_array(str(membrane), mode="w", shape=affs.shape[1:], dtype="float32")[...] = 0.5
    code = main(["segment-volume", str(membrane), str(tmp_path / "out.zarr"), "--method", "mws",
                 "--workers", "0", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--method applies to affinity files" in err
    assert not (tmp_path / "out.zarr").exists()


# ------------------------------------------------------------------ Dask

@pytest.mark.e2e
@pytest.mark.large
def test_dask_workers_match_in_process(tmp_path, voronoi_file, dask_cluster):
    spec, _ = voronoi_file
    expected, _ = run(spec, tmp_path / "local.zarr")
    labels, summary = run(spec, tmp_path / "dask.zarr", scheduler=dask_cluster.scheduler_address)
    np.testing.assert_array_equal(labels, expected)
    assert summary["executor"].startswith("dask")
    assert sum(summary["blocks_per_worker"].values()) == 18

"""Block-wise segmentation of affinity volumes (``segment_volume`` / ``segment-volume AFF``).

Hand-built affinities: boxes that touch (affinity 0 across their face), boxes
cut by a weak face inside a block or exactly on a block face, objects spanning
many blocks; three objects whose merge depends on a chain of merges across
block faces (where agglomerating each block's crop gives another answer);
and noisy affinities of random 3D Voronoi cells. Block-wise results are
compared with in-memory ``segment_affinities`` (what ``fusionnet segment
AFF`` runs) on the same affinities: agglomeration (one graph of the volume's
fragments) equals it exactly.
"""

import json

import numpy as np
import pytest

from fusionnet_tf.cli import main
from fusionnet_tf.data.affinities import affinity_targets
from fusionnet_tf.data.affinity_io import write_affinities
from fusionnet_tf.metrics import segmentation_scores_report
from fusionnet_tf.segmentation import SegmentParams
from fusionnet_tf.segmentation.affinities import fragments, segment_affinities
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
# the shipped snemi3d recipe on a small scale: fragments from the lowest affinity smoothed
# by 1 px (without smoothing, the plateaus of affinities clipped to 0 are flooded in an order
# that depends on the crop, and a fragment can differ), seeds at its minima, merging on the
# median face affinity (64-bin histograms)
SHIPPED_LIKE = PARAMS.replace(boundary="min", sigma=1.0, seed_method="minima",
                              seed_threshold=0.5, merge_threshold=0.7,
                              merge_statistic="quantile")
CHAIN_SHAPE = (4, 24, 64)
CHAIN_BLOCKS = (2, 12, 16)  # faces at z 2, y 12, x 16, 32 and 48
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


def face_affinities(labels, table, offsets=OFFSETS):
    """Ground-truth affinities with nearest-neighbour pairs across faces set by ``table``.

    ``table[(a, b)]`` (a < b) is the affinity of every 6-neighbour pair of
    objects ``a`` and ``b``; pairs inside an object keep 1.
    """
    affs, _ = affinity_targets(labels, offsets)
    for channel, offset in enumerate(offsets):
        if sum(abs(v) for v in offset) != 1:
            continue
        axis = [abs(v) for v in offset].index(1)
        later = [slice(None)] * 3
        earlier = [slice(None)] * 3
        later[axis], earlier[axis] = slice(1, None), slice(None, -1)
        a, b = labels[tuple(later)], labels[tuple(earlier)]  # (-e_axis): value at the later voxel
        view = affs[channel][tuple(later)]
        for (u, v), value in table.items():
            view[((a == u) & (b == v)) | ((a == v) & (b == u))] = value
    return affs


def chain():
    """(labels, affs): three objects whose merge is decided by a chain over block faces.

    X (1) is the top (y < 12 for x < 16, y < 10 beyond), Y (2) the bottom-left
    (y >= 12, x < 16), Z (3) the rest. Affinities across faces: Y-Z 0.95 (all
    its pairs cross the block face x = 16), X-Y 0.9 (on the block face y =
    12), X-Z 0.6 (mostly inside blocks). Y and Z merge first; then the face
    X-YZ has mean affinity 0.67 (median 0.6) in the whole volume: no merge at
    0.7, two objects. A crop of block (0, 1, 0) plus halo 4 (x < 20) sees
    little of X-Z: mean 0.82, median 0.9, and merges X too.
    """
    labels = np.full(CHAIN_SHAPE, 3, np.int64)
    labels[:, :12, :16] = 1
    labels[:, :10, 16:] = 1
    labels[:, 12:, :16] = 2
    return labels, face_affinities(labels, {(1, 2): 0.9, (1, 3): 0.6, (2, 3): 0.95})


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
def chain_file(tmp_path_factory):
    labels, affs = chain()
    path = tmp_path_factory.mktemp("chain") / "aff.zarr"
    return str(write_affinities(path, affs, OFFSETS)), labels, affs


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


@pytest.mark.parametrize("statistic", ["mean", "quantile"])
def test_a_chain_of_merges_across_block_faces_equals_in_memory(tmp_path, chain_file, statistic):
    spec, objects, affs = chain_file
    params = SHIPPED_LIKE.replace(sigma=0.0, merge_statistic=statistic)  # fragments = objects
    reference, max_id = segment_affinities(affs, OFFSETS, params)
    assert same_partition(reference, np.where(objects == 1, 1, 2))  # X | Y+Z
    # the premise: agglomerating a block's crop alone merges X as well
    crop, _ = segment_affinities(affs[:, :, :, :20], OFFSETS, params)
    assert np.unique(crop).size == 1
    labels, summary = run(spec, tmp_path / "out.zarr", params, block_shape=CHAIN_BLOCKS, halo=4)
    np.testing.assert_array_equal(labels, reference)
    assert summary["segments"] == max_id == 2
    assert seam_splits(reference, labels, CHAIN_BLOCKS) == []
    # fragments cut by the block faces (2 x 2 x 4 blocks) are joined back into those of the volume
    _, count = fragments(affs, OFFSETS, params)
    assert summary["fragments"] == count and summary["joins"] > summary["blocks_total"]
    assert summary["edges"] >= 3 and summary["blocks_graphed"] == 16


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


# min_size 500 merges away some segments (fragment sizes summed over blocks decide which)
@pytest.mark.parametrize("params", [PARAMS.replace(min_size=500),
                                    SHIPPED_LIKE.replace(min_size=20),
                                    SHIPPED_LIKE.replace(fragments="2d", min_size=500)],
                         ids=["mean", "shipped-like", "shipped-like-2d"])
def test_noisy_cells_agglomerated_globally_equal_in_memory(tmp_path, voronoi_file, params):
    spec, affs = voronoi_file
    reference, max_id = segment_affinities(affs, OFFSETS, params)
    if params.min_size == 500:
        assert max_id < segment_affinities(affs, OFFSETS, params.replace(min_size=0))[1]
    labels, summary = run(spec, tmp_path / "out.zarr", params)
    np.testing.assert_array_equal(labels, reference)
    assert summary["segments"] == max_id and summary["fragments"] > max_id


@pytest.mark.parametrize("fragments_mode", ["2d", "3d"])
def test_fragment_seeds_start_inside_their_fragment_in_id_order(voronoi_file, fragments_mode):
    _, affs = voronoi_file
    params = SHIPPED_LIKE.replace(fragments=fragments_mode)
    labels, count, seeds = fragments(affs, OFFSETS, params, return_seeds=True)
    assert np.array_equal(labels, fragments(affs, OFFSETS, params)[0])
    assert seeds.shape == (count + 1,) and seeds[0] == -1
    assert np.all(np.diff(seeds[1:]) > 0)  # ids follow the seeds in raster order
    np.testing.assert_array_equal(labels.ravel()[seeds[1:]], np.arange(1, count + 1))


def test_block_graphs_sum_to_the_graph_of_the_volume(voronoi_file):
    from fusionnet_tf.segmentation.affinities import affinity_face_pairs, affinity_graph
    from fusionnet_tf.segmentation.agglomeration import sum_graphs
    from fusionnet_tf.segmentation.blockwise.graph import block_graph
    from fusionnet_tf.volumes.geometry import block_grid

    _, affs = voronoi_file
    labels, count = fragments(affs, OFFSETS, SHIPPED_LIKE)
    whole = affinity_graph(*affinity_face_pairs(labels, affs, OFFSETS), count + 1, SHIPPED_LIKE)
    parts = []
    for block in block_grid(VORONOI_SHAPE, (5, 24, 20)):  # uneven: 3 x 3 x 4 blocks
        region = tuple(slice(start, min(stop + 1, size)) for (start, stop), size in
                       zip((block.z, block.y, block.x), VORONOI_SHAPE))
        parts.append(block_graph(labels[region], affs[(slice(None),) + region], OFFSETS,
                                 block.shape, count + 1, SHIPPED_LIKE))
    summed = sum_graphs(parts, count + 1)
    for key in ("u", "v", "length", "hist"):
        np.testing.assert_array_equal(summed[key], whole[key], err_msg=key)
    np.testing.assert_allclose(summed["total"], whole["total"], rtol=1e-12)
    assert len(parts) == 36


def test_one_block_equals_in_memory(tmp_path, voronoi_file):
    spec, affs = voronoi_file
    reference, max_id = segment_affinities(affs, OFFSETS, PARAMS)
    labels, summary = run(spec, tmp_path / "out.zarr", block_shape=VORONOI_SHAPE)
    assert same_partition(reference, labels) and summary["segments"] == max_id
    assert summary["faces"] == 0


# ------------------------------------------------------------------ resume and refusals

@pytest.mark.parametrize("failing_pass", ["watershed", "edges", "relabel"])
def test_fault_then_resume_gives_identical_output(tmp_path, voronoi_file, failing_pass):
    spec, _ = voronoi_file
    expected, _ = run(spec, tmp_path / "clean.zarr")
    seen = []

    def fault(pass_name, block):
        if pass_name == failing_pass:
            seen.append(block.name)
            if len(seen) == 7:
                raise RuntimeError("simulated kill")

    out = tmp_path / "out.zarr"
    with pytest.raises(BlockFailures, match="1 of 18 blocks failed"):
        run(spec, out, block_hook=fault)
    work = out / ".fusionnet-segment"
    assert (work / "fragments.npz").is_file() == (failing_pass != "watershed")
    labels, summary = run(spec, out)
    np.testing.assert_array_equal(labels, expected)
    # only the failed block's part of the failed pass is redone
    assert summary["blocks_segmented"] == (failing_pass == "watershed")
    assert summary.get("blocks_graphed", 0) == {"watershed": 18, "edges": 1,
                                                "relabel": 0}[failing_pass]
    assert summary["blocks_skipped"] == (17 if failing_pass == "relabel" else 0)
    assert not work.exists()


def test_outputs_of_per_block_agglomeration_are_not_resumed(tmp_path, voronoi_file):
    spec, _ = voronoi_file
    out = tmp_path / "out.zarr"

    def fault(pass_name, block):
        if pass_name == "relabel":
            raise RuntimeError("simulated kill")

    with pytest.raises(BlockFailures):
        run(spec, out, block_hook=fault)
    array = zarr.open_array(str(out), mode="r+")
    settings = dict(array.attrs["fusionnet_volume"])
    assert settings.pop("agglomeration") == "global"
    array.attrs["fusionnet_volume"] = settings  # as written by versions without the graph
    with pytest.raises(ValueError, match="started with other settings.*agglomeration"):
        run(spec, out)


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

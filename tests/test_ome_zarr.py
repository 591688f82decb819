"""OME-Zarr (NGFF 0.4 / 0.5) in and out: round trips with the metadata checked field by
field, JSON-schema validation (ngff-zarr's bundled NGFF schemas), ome_zarr's reader,
pyramids against a hand-computed reference, bad input, and CLI round trips."""

import json
from pathlib import Path

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
pytest.importorskip("ome_zarr")

from fusionnet_tf import cli  # noqa: E402
from fusionnet_tf.io import ome_zarr as oz  # noqa: E402

VOXEL = (30.0, 6.0, 6.0)
RNG = np.random.default_rng(7)
IMAGE = (RNG.random((3, 20, 27)) * 255).astype(np.uint8)
PROB = RNG.random((3, 20, 27)).astype(np.float32)
LABELS = RNG.integers(0, 4, (3, 20, 27)).astype(np.uint32)
DATA = {"image": IMAGE, "probability": PROB, "labels": LABELS}


def ngff(path):
    return oz.ngff_attributes(path)


def validate(path, version, model):
    """Validate the group's attributes with the NGFF JSON schema (ngff-zarr bundles them)."""
    ngff_zarr = pytest.importorskip("ngff_zarr")
    ngff_zarr.validate(oz.zarr_attributes(path), version=version, model=model)


# ----------------------------------------------------------------- reference downsampling

def reference_mean(data, factors):
    """Mean over each window, written out with loops (partial windows: voxels present)."""
    shape = [-(-n // f) for n, f in zip(data.shape, factors)]
    out = np.zeros(shape)
    for index in np.ndindex(*shape):
        window = data[tuple(slice(i * f, (i + 1) * f) for i, f in zip(index, factors))]
        out[index] = window.astype(np.float64).mean()
    return np.rint(out).astype(data.dtype) if data.dtype.kind in "ui" else out.astype(data.dtype)


def reference_mode(data, factors):
    """Most frequent id in each window, ties to the smallest id, with loops."""
    shape = [-(-n // f) for n, f in zip(data.shape, factors)]
    out = np.zeros(shape, data.dtype)
    for index in np.ndindex(*shape):
        window = data[tuple(slice(i * f, (i + 1) * f) for i, f in zip(index, factors))]
        ids, counts = np.unique(window, return_counts=True)
        out[index] = ids[counts == counts.max()].min()
    return out


# ----------------------------------------------------------------- round trips

@pytest.mark.parametrize("version", oz.NGFF_VERSIONS)
@pytest.mark.parametrize("kind", ["image", "probability", "labels"])
def test_round_trip_metadata_and_pyramid(tmp_path, version, kind):
    data = DATA[kind]
    path = tmp_path / f"{kind}.ome.zarr"
    plan = oz.OutputPlan(kind=kind, ngff_version=version, voxel_size=VOXEL, levels=3)
    oz.write_ome_zarr(path, data, plan, chunks=(1, 8, 8))

    validate(path, version, "label" if kind == "labels" else "image")
    attrs = oz.zarr_attributes(path)
    meta = ngff(path)
    if version == "0.5":
        assert attrs["ome"]["version"] == "0.5" and "multiscales" not in attrs
        assert json.loads((path / "0" / "zarr.json").read_text())["dimension_names"] == \
            ["z", "y", "x"]
    else:
        assert meta["multiscales"][0]["version"] == "0.4"
        assert json.loads((path / "0" / ".zarray").read_text())["dimension_separator"] == "/"
    multiscale = meta["multiscales"][0]
    assert multiscale["axes"] == [{"name": a, "type": "space", "unit": "nanometer"}
                                  for a in "zyx"]
    assert [d["path"] for d in multiscale["datasets"]] == ["0", "1", "2"]
    scales = [d["coordinateTransformations"][0] for d in multiscale["datasets"]]
    assert scales == [{"type": "scale", "scale": [30.0, 6.0 * f, 6.0 * f]} for f in (1, 2, 4)]
    translations = [d["coordinateTransformations"][1:] for d in multiscale["datasets"]]
    assert translations == [[], [{"type": "translation", "translation": [0.0, 3.0, 3.0]}],
                            [{"type": "translation", "translation": [0.0, 9.0, 9.0]}]]

    level0 = oz.read_ome_zarr(path, 0)
    assert level0.voxel_size == VOXEL and level0.unit == "nanometer"
    assert level0.axes == ("z", "y", "x") and level0.version == version
    np.testing.assert_array_equal(np.asarray(level0.array[...]), data)
    assert level0.array.dtype == data.dtype

    reference = reference_mode if kind == "labels" else reference_mean
    expected = data
    for level in (1, 2):
        expected = reference(expected, (1, 2, 2))
        stored = oz.read_ome_zarr(path, level)
        assert stored.voxel_size == (30.0, 6.0 * 2 ** level, 6.0 * 2 ** level)
        if kind == "probability":
            np.testing.assert_allclose(stored.array[...], expected, rtol=1e-6)
        else:
            np.testing.assert_array_equal(stored.array[...], expected)
    if kind == "labels":
        colours = meta["image-label"]["colors"]
        assert colours[0] == {"label-value": 0, "rgba": [0, 0, 0, 0]}
        assert [c["label-value"] for c in colours] == list(range(int(LABELS.max()) + 1))
        assert all(len(c["rgba"]) == 4 and c["rgba"][3] == 255 for c in colours[1:])


@pytest.mark.parametrize("version", oz.NGFF_VERSIONS)
def test_labels_under_an_image_and_ome_zarr_reader(tmp_path, version):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    image = tmp_path / "em.ome.zarr"
    oz.write_ome_zarr(image, IMAGE, oz.OutputPlan("image", version, VOXEL, levels=2))
    oz.write_ome_zarr(image / "labels" / "neurons", LABELS,
                      oz.OutputPlan("labels", version, VOXEL, levels=2))
    assert ngff(image / "labels") == {"labels": ["neurons"]}
    validate(image / "labels" / "neurons", version, "label")
    validate(image, version, "image")

    nodes = list(Reader(parse_url(str(image)))())
    by_path = {str(n.zarr.path).rstrip("/").split("/")[-1]: n for n in nodes}
    em, neurons = by_path["em.ome.zarr"], by_path["neurons"]
    assert [tuple(a.shape) for a in em.data] == [(3, 20, 27), (3, 10, 14)]
    transforms = em.metadata["coordinateTransformations"]
    assert transforms[0][0]["scale"] == [30.0, 6.0, 6.0]
    assert transforms[1][0]["scale"] == [30.0, 12.0, 12.0]
    assert [a["unit"] for a in em.metadata["axes"]] == ["nanometer"] * 3
    assert "color" in neurons.metadata  # read as an image-label with colours
    np.testing.assert_array_equal(np.asarray(neurons.data[0]), LABELS)


def test_affinities_have_a_channel_axis(tmp_path):
    affs = RNG.random((3, 4, 16, 16)).astype(np.float32)
    path = tmp_path / "aff.ome.zarr"
    oz.write_ome_zarr(path, affs, oz.OutputPlan("affinities", "0.5", VOXEL, levels=2))
    validate(path, "0.5", "image")
    multiscale = ngff(path)["multiscales"][0]
    assert multiscale["axes"][0] == {"name": "c", "type": "channel"}
    assert [a["name"] for a in multiscale["axes"]] == ["c", "z", "y", "x"]
    assert multiscale["datasets"][1]["coordinateTransformations"][0]["scale"] == \
        [1.0, 30.0, 12.0, 12.0]
    level1 = zarr.open_array(str(path / "1"), mode="r")
    np.testing.assert_allclose(level1[...], np.stack([reference_mean(c, (1, 2, 2))
                                                      for c in affs]), rtol=1e-6)


def test_validation_is_not_vacuous(tmp_path):
    """The schema check fails on metadata without axes (so a passing check means something)."""
    jsonschema = pytest.importorskip("jsonschema")
    path = tmp_path / "img.ome.zarr"
    oz.write_ome_zarr(path, IMAGE, oz.OutputPlan("image", "0.4", VOXEL, levels=1))
    attrs = oz.zarr_attributes(path)
    del attrs["multiscales"][0]["axes"]
    ngff_zarr = pytest.importorskip("ngff_zarr")
    with pytest.raises(jsonschema.ValidationError):
        ngff_zarr.validate(attrs, version="0.4", model="image")


# ----------------------------------------------------------------- pyramid functions

def test_downsampling_functions_equal_loops_on_odd_shapes():
    data = RNG.integers(0, 5, (5, 9, 11)).astype(np.uint16)
    for factors in ((1, 2, 2), (2, 2, 2)):
        np.testing.assert_array_equal(oz.downsample_mode(data, factors),
                                      reference_mode(data, factors))
        np.testing.assert_array_equal(oz.downsample_mean(data, factors),
                                      reference_mean(data, factors))
    np.testing.assert_array_equal(oz.downsample_nearest(data, (1, 2, 2)), data[:, ::2, ::2])
    # a window of ids [5, 5, 1, 9]: mode 5 (nearest would give the first voxel, also 5;
    # [1, 5, 5, 9]: mode 5, nearest 1)
    window = np.array([[[1, 5], [5, 9]]], np.uint32)
    assert oz.downsample_mode(window, (1, 2, 2)).item() == 5
    assert oz.downsample_nearest(window, (1, 2, 2)).item() == 1


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64])
def test_mode_fast_paths_equal_the_loop_reference(dtype):
    """Whole-window blocks take the fast paths (x-neighbours compared as one wider integer
    for items of <= 4 bytes, the 4-voxel sorting network, the row arithmetic for the
    window starts); strided and odd blocks the general ones. All equal the loops."""
    data = RNG.integers(0, 3, (4, 12, 16)).astype(dtype)  # few ids: many ties and mixes
    for factors in ((1, 2, 2), (2, 2, 2), (1, 1, 2), (1, 2, 1), (2, 1, 2), (1, 3, 4)):
        for block in (data, data[:, ::-1], data[:3, :11, :15]):
            np.testing.assert_array_equal(oz.downsample_mode(block, factors),
                                          reference_mode(block, factors),
                                          err_msg=f"{factors} {block.shape}")


def test_mode_of_every_two_by_two_window():
    """All 4**4 windows of ids 1..4 (each id in each place, every tie): the mode, ties to
    the smallest id, as the loop reference."""
    import itertools

    windows = np.array(list(itertools.product([1, 2, 3, 4], repeat=4)), np.uint32)
    block = windows.reshape(1, -1, 2, 2).transpose(0, 2, 1, 3).reshape(1, 2, -1)
    expected = reference_mode(block, (1, 2, 2))
    np.testing.assert_array_equal(oz.downsample_mode(block, (1, 2, 2)), expected)
    np.testing.assert_array_equal(oz.downsample_mode(block.astype(np.uint64), (1, 2, 2)),
                                  expected)
    # the window [1, 1, 2, 2] (a tie) gives 1; [2, 3, 3, 1] gives 3
    assert expected[0, 0, int(np.flatnonzero((windows == [1, 1, 2, 2]).all(1))[0])] == 1
    assert expected[0, 0, int(np.flatnonzero((windows == [2, 3, 3, 1]).all(1))[0])] == 3


def test_coarse_levels_get_chunks_of_about_level_0s_size():
    assert oz.coarse_chunks((32, 256, 256), (1, 1024, 1024)) == (16, 256, 256)
    assert oz.coarse_chunks((3, 256, 256), (1, 1024, 1024)) == (3, 256, 256)  # all of z
    assert oz.coarse_chunks((64, 1024, 1024), (1, 1024, 1024)) == (1, 1024, 1024)
    assert oz.coarse_chunks((3, 8, 64, 64), (3, 1, 128, 128)) == (3, 4, 64, 64)  # c kept


@pytest.mark.parametrize("version", oz.NGFF_VERSIONS)
def test_chunk_writer_writes_the_files_zarr_python_writes(tmp_path, version):
    """io.zarr_chunks: the same chunk files, byte for byte, as zarr-python for whole-chunk
    regions (edge chunks padded, an all-fill chunk removed); other regions through zarr."""
    from fusionnet_tf.io.zarr_chunks import chunk_writer

    options = oz.array_options(version, ("z", "y", "x"))
    data = RNG.integers(1, 9, (3, 20, 27)).astype(np.uint32)
    data[1, :8, 8:16] = 0  # one chunk of fill values only
    arrays = {}
    for name in ("zarr", "writer"):
        arrays[name] = zarr.open_array(str(tmp_path / name), mode="w", shape=data.shape,
                                       chunks=(1, 8, 8), dtype="uint32", fill_value=0,
                                       **options)
        arrays[name][...] = 7  # every chunk exists before the writes
    arrays["zarr"][1:3, 0:16, 8:27] = data[1:3, 0:16, 8:27]
    writer = chunk_writer(tmp_path / "writer")
    assert writer.encoder is not None  # the default codecs take the fast path
    writer.write((1, 0, 8), data[1:3, 0:16, 8:27])  # whole chunks, the x edge included

    def files(name):
        root = tmp_path / name
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
                if p.is_file() and p.name not in ("zarr.json", ".zarray", ".zattrs")}

    assert files("writer") == files("zarr")
    assert len(files("writer")) == 3 * 3 * 4 - 1  # the all-fill chunk is not stored
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "writer"))[1:3, 0:16, 8:27],
                                  data[1:3, 0:16, 8:27])
    writer.write((0, 3, 5), data[0, 3:11, 5:9][None])  # not whole chunks: through zarr
    arrays["zarr"][0:1, 3:11, 5:9] = data[0:1, 3:11, 5:9]
    assert files("writer") == files("zarr")


def test_pyramid_factors_keep_z_until_in_plane_voxels_catch_up():
    assert oz.pyramid_factors((64, 2048, 2048), (30, 6, 6), 5) == \
        [(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)]
    assert oz.pyramid_factors((1, 512, 512), (30, 6, 6)) == [(1, 2, 2)]  # auto: to <= 256 px
    assert oz.pyramid_factors((8, 64, 64), (6, 6, 6), 2) == [(2, 2, 2)]


# ----------------------------------------------------------------- bad input

def test_bad_input_is_refused(tmp_path):
    plain = tmp_path / "plain.ome.zarr"
    zarr.open_group(str(plain), mode="w").create_array("0", shape=(2, 4, 4), dtype="u1")
    with pytest.raises(ValueError, match="no 'multiscales'"):
        oz.read_ome_zarr(plain)
    image = tmp_path / "img.ome.zarr"
    oz.write_ome_zarr(image, IMAGE, oz.OutputPlan("image", "0.5", VOXEL, levels=2))
    with pytest.raises(ValueError, match="has 2 resolution levels"):
        oz.read_ome_zarr(image, 2)
    for text in ("30,6", "30,6,-6", "a,b,c", "30,6,0", "30,6,6,6", "nan,6,6"):
        with pytest.raises(ValueError, match="--voxel-size must be 3 positive numbers"):
            oz.parse_voxel_size(text)
    mine = tmp_path / "mine.ome.zarr"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="never replaced"):
        oz.write_ome_zarr(mine, IMAGE, oz.OutputPlan("image", command="predict"))
    assert (mine / "notes.txt").read_text() == "keep me"
    # another command's output is not replaced either
    with pytest.raises(FileExistsError):
        oz.check_output(image, "segment-volume")


@pytest.fixture(scope="module")
def em_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("em") / "em.ome.zarr"
    volume = (np.random.default_rng(1).random((2, 64, 96)) * 255).astype(np.uint8)
    oz.write_ome_zarr(path, volume, oz.OutputPlan("image", "0.4", VOXEL, levels=2))
    return path


def run_cli(args, capsys):
    code = cli.main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_cli_bad_input_one_line_exit_2_before_work(tmp_path, em_image, tiny_model_file,
                                                  capsys):
    plain = tmp_path / "plain.ome.zarr"
    zarr.open_group(str(plain), mode="w").create_array("0", shape=(2, 64, 64), dtype="u1")
    mine = tmp_path / "mine.ome.zarr"
    mine.mkdir()
    (mine / "notes.txt").write_text("x")
    small_pred = tmp_path / "small_pred.zarr"
    zarr.open_array(str(small_pred), mode="w", shape=(2, 64, 64), dtype="f4")[...] = 0.5
    model = ["--model", tiny_model_file, "--workers", "0", "--quiet"]
    cases = [
        (["predict-volume", plain, tmp_path / "o1.ome.zarr"] + model, "no 'multiscales'"),
        (["predict-volume", em_image, tmp_path / "o2.ome.zarr", "--level", "5"] + model,
         "--level 5"),
        (["predict-volume", em_image, tmp_path / "o3.ome.zarr", "--voxel-size", "30,6"] + model,
         "--voxel-size"),
        (["predict-volume", em_image, mine] + model, "never replaced"),
        (["segment-volume", em_image, tmp_path / "o4.ome.zarr", "--voxel-size", "0,6,6",
          "--workers", "0"], "--voxel-size"),
        (["predict", em_image, "-o", tmp_path / "o5.ome.zarr", "--level", "2", "--model",
          tiny_model_file], "--level 2"),
        (["segment", plain, "-o", tmp_path / "o6.ome.zarr"], "no 'multiscales'"),
        # block-wise labels into the image's labels/ group: the image's shape (2, 64, 96)
        (["segment-volume", small_pred, em_image / "labels" / "wrong", "--workers", "0"],
         "labels of shape (2, 64, 64) do not match the image"),
    ]
    for args, message in cases:
        code, err = run_cli(args, capsys)
        assert code == 2, (args, err)
        assert message in err and err.strip().count("\n") == 0, err
    assert not any((tmp_path / f"o{i}.ome.zarr").exists() for i in range(1, 7))
    assert not (em_image / "labels" / "wrong").exists()
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_cli_predict_and_segment_volume_round_trip(tmp_path, em_image, tiny_model_file,
                                                   capsys):
    pred = tmp_path / "pred.ome.zarr"
    tiling = ["--tile-size", "64", "--overlap", "16", "--engine", "plain", "--quiet"]
    code, err = run_cli(["predict", em_image, "-o", pred, "--model", tiny_model_file,
                         "--pyramid-levels", "2"] + tiling, capsys)
    assert code == 0, err
    validate(pred, "0.5", "image")
    stored = oz.read_ome_zarr(pred, 0)
    assert stored.voxel_size == VOXEL and stored.array.shape == (2, 64, 96)  # from the input
    assert stored.array.dtype == np.float32
    assert oz.read_ome_zarr(pred, 1).voxel_size == (30.0, 12.0, 12.0)

    # block-wise prediction equals in-memory prediction, written into OUTPUT/0
    blockwise = tmp_path / "pred_bw.ome.zarr"
    code, err = run_cli(["predict-volume", em_image, blockwise, "--model", tiny_model_file,
                         "--workers", "0", "--block", "64", "--pyramid-levels", "2",
                         "--ngff-version", "0.4"] + tiling, capsys)
    assert code == 0, err
    validate(blockwise, "0.4", "image")
    np.testing.assert_allclose(oz.read_ome_zarr(blockwise, 0).array[...], stored.array[...],
                               atol=1e-5)
    # rerunning resumes (every block done) and keeps a valid image
    code, err = run_cli(["predict-volume", em_image, blockwise, "--model", tiny_model_file,
                         "--workers", "0", "--block", "64", "--pyramid-levels", "2",
                         "--ngff-version", "0.4"] + tiling, capsys)
    assert code == 0 and "0 computed" in err, err

    # segmentation of the prediction, as labels under the EM image
    labels = em_image / "labels" / "neurons"
    code, err = run_cli(["segment-volume", pred, labels, "--workers", "0", "--block", "64",
                         "--pyramid-levels", "2", "--quiet"], capsys)
    assert code == 0, err
    validate(labels, "0.4", "label")  # the image's version
    assert ngff(em_image / "labels")["labels"] == ["neurons"]
    seg = oz.read_ome_zarr(labels, 0)
    assert seg.voxel_size == VOXEL and seg.array.shape == (2, 64, 96)
    values = np.asarray(seg.array[...])
    assert values.max() >= 1
    np.testing.assert_array_equal(oz.read_ome_zarr(labels, 1).array[...],
                                  reference_mode(values, (1, 2, 2)))
    # in-memory segment of the same map gives the same partition size
    code, err = run_cli(["segment", pred, "-o", tmp_path / "seg.ome.zarr", "--quiet",
                         "--voxel-size", "40,4,4"], capsys)
    assert code == 0, err
    assert oz.read_ome_zarr(tmp_path / "seg.ome.zarr").voxel_size == (40.0, 4.0, 4.0)
    assert "image-label" in ngff(tmp_path / "seg.ome.zarr")


# ----------------------------------------------------------------- pyramid from the blocks

def test_pyramid_layout_derives_levels_while_blocks_align():
    factors = oz.pyramid_factors((64, 2048, 2048), VOXEL)  # (1,2,2), (1,2,2), (2,2,2)
    layout = oz.pyramid_layout((64, 2048, 2048), (1, 1024, 1024), factors)
    assert layout["cascade"] == 2  # z halves at level 3: one-slice blocks stop there
    assert layout["chunks"] == [[1, 1024, 1024], [1, 512, 512], [1, 256, 256], [1, 256, 256]]
    assert layout["shapes"][-1] == [32, 256, 256]
    assert oz.pyramid_layout((64, 2048, 2048), (2, 1024, 1024), factors)["cascade"] == 3
    # a block that does not divide by the factor (and does not span the axis) derives nothing
    assert oz.pyramid_layout((4, 30, 30), (1, 15, 16), [(1, 2, 2)])["cascade"] == 0
    # write_ome_zarr groups chunks into blocks from which every level derives
    assert oz.pyramid_block((64, 2048, 2048), (1, 1024, 1024), factors) == (2, 1024, 1024)
    assert oz.pyramid_block((64, 2048, 2048), (1, 1024, 1024), factors, max_chunks=1) == \
        (1, 1024, 1024)
    assert oz.pyramid_block((3, 20, 27), (1, 8, 8), [(2, 2, 2)] * 3) == (3, 8, 8)  # z spanned
    # affinities: the channel axis stays
    assert oz.pyramid_layout((3, 4, 64, 64), (3, 4, 32, 32), [(1, 1, 2, 2)])["chunks"][1] == \
        [3, 4, 16, 16]


@pytest.mark.parametrize("block_z", [2, 4])
def test_blockwise_pyramid_equals_reference_after_a_resumed_run(tmp_path, block_z):
    """Levels written from the blocks in memory (and the rest by finish_output) equal the
    loop reference, also when the run stops half way and a second run writes the rest."""
    from fusionnet_tf.segmentation.blockwise import create_label_array
    from fusionnet_tf.volumes import storage
    from fusionnet_tf.volumes.geometry import block_grid

    labels = RNG.integers(0, 6, (4, 40, 36)).astype(np.uint32)
    path = tmp_path / "seg.ome.zarr"
    plan = oz.OutputPlan("labels", "0.5", (6.0, 6.0, 6.0), levels=4, command="segment-volume")
    level0 = oz.start_output(path, plan)
    block_shape = (block_z, 16, 16)
    create_label_array(level0, labels.shape, block_shape, "uint32")
    blocks = block_grid(labels.shape, block_shape)
    for number, block in enumerate(blocks):
        if number % 2 == 0:  # the first run: every other block, then "killed"
            storage.write_block(level0, block, labels[slice(*block.z), slice(*block.y), slice(*block.x)])
            storage.mark_done(level0, block, {})
    level0 = oz.start_output(path, plan)  # the second run resumes
    for block in blocks:
        if not storage.is_done(level0, block):
            storage.write_block(level0, block, labels[slice(*block.z), slice(*block.y), slice(*block.x)])
            storage.mark_done(level0, block, {})
    shapes = oz.finish_output(path)
    assert shapes == [(4, 40, 36), (2, 20, 18), (1, 10, 9), (1, 5, 5)]
    cascade = oz.zarr_attributes(path)[oz.PYRAMID_LAYOUT]["cascade"]
    assert cascade == {2: 1, 4: 3}[block_z]
    expected = labels
    for level, factors in enumerate(oz.pyramid_factors(labels.shape, (6, 6, 6), 4), start=1):
        expected = reference_mode(expected, factors)
        np.testing.assert_array_equal(oz.read_ome_zarr(path, level).array[...], expected,
                                      err_msg=f"level {level}")
    validate(path, "0.5", "label")


def test_write_ome_zarr_blocks_of_several_chunks_equal_the_reference(tmp_path):
    """Isotropic voxels halve z at every level: blocks of 4 one-slice chunks derive both
    coarser levels in memory; the levels equal the loop reference and the chunks stay."""
    labels = RNG.integers(0, 3, (5, 20, 27)).astype(np.uint16)
    path = tmp_path / "iso.ome.zarr"
    oz.write_ome_zarr(path, labels, oz.OutputPlan("labels", "0.4", (8.0, 8.0, 8.0), levels=3),
                      chunks=(1, 8, 8))
    layout = oz.zarr_attributes(path)[oz.PYRAMID_LAYOUT]
    assert layout["chunks"][:2] == [[4, 8, 8], [2, 4, 4]] and layout["cascade"] == 2
    assert zarr.open_array(str(path / "0"), mode="r").chunks == (1, 8, 8)
    expected = labels
    for level in (1, 2):
        expected = reference_mode(expected, (2, 2, 2))
        np.testing.assert_array_equal(oz.read_ome_zarr(path, level).array[...], expected)


@pytest.mark.parametrize("version", oz.NGFF_VERSIONS)
def test_napari_reader_reads_the_scale_units_and_labels(tmp_path, version):
    """napari's OME-Zarr reader (the napari-ome-zarr plugin, through npe2, no viewer)."""
    npe2 = pytest.importorskip("npe2")
    pytest.importorskip("napari_ome_zarr")
    image = tmp_path / "em.ome.zarr"
    oz.write_ome_zarr(image, IMAGE, oz.OutputPlan("image", version, VOXEL, levels=2))
    oz.write_ome_zarr(image / "labels" / "cells", LABELS,
                      oz.OutputPlan("labels", version, VOXEL, levels=2))
    npe2.PluginManager.instance().discover()
    layers = npe2.read([str(image)], stack=False, plugin_name="napari-ome-zarr")
    assert [kind for _, _, kind in layers] == ["image", "labels"]
    for (data, meta, _), expected in zip(layers, (IMAGE, LABELS)):
        assert [tuple(level.shape) for level in data] == [(3, 20, 27), (3, 10, 14)]
        np.testing.assert_array_equal(np.asarray(data[0]), expected)
        assert list(meta["scale"]) == list(VOXEL)  # napari derives the coarser levels' own
        assert tuple(meta["units"]) == ("nanometer",) * 3
        assert tuple(meta["axis_labels"]) == ("z", "y", "x")
    assert "colormap" in layers[1][1]  # the image-label colours


# ----------------------------------------------------------------- levels after the blocks

def tail_sources(monkeypatch):
    """Record, per chunk of a level built after the blocks, its target level and whether
    its data were read from disk (a str source) rather than passed in memory."""
    calls = []
    original = oz._region_data

    def spy(region, sources):
        calls.append(any(isinstance(data, str) for _, _, data in sources))
        return original(region, sources)

    monkeypatch.setattr(oz, "_region_data", spy)
    return calls


def expected_levels(data, kind, factors):
    reference = reference_mode if kind == "labels" else reference_mean
    levels = [data]
    for step in factors:
        levels.append(reference(levels[-1], step))
    return levels


def chunk_files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and p.name not in ("zarr.json", ".zarray", ".zattrs")}


@pytest.mark.parametrize("version", oz.NGFF_VERSIONS)
@pytest.mark.parametrize("kind", ["labels", "image"])
def test_levels_after_the_blocks_come_from_memory_with_zarr_pythons_bytes(
        tmp_path, monkeypatch, version, kind):
    """One-slice Dask blocks derive levels 1-2; levels 3-4 (z halves) are built from the
    blocks' level-2 tiles in memory (never read back), in chunks of about level 0's size
    assembled from many tiles (edge windows included). Every level equals the loop
    reference, and its chunk files are the bytes zarr-python writes for that array."""
    da = pytest.importorskip("dask.array")
    rng = np.random.default_rng(3)
    shape = (9, 70, 66)
    data = rng.integers(0, 4, shape).astype(np.uint32) if kind == "labels" else \
        (rng.random(shape) * 255).astype(np.uint8)
    calls = tail_sources(monkeypatch)
    path = tmp_path / "out.ome.zarr"
    plan = oz.OutputPlan(kind, version, VOXEL, levels=5)
    oz.write_ome_zarr(path, da.from_array(data, chunks=(1, 8, 8)), plan, chunks=(1, 8, 8))
    factors = oz.pyramid_factors(shape, VOXEL, 5)
    assert factors == [(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)]
    assert oz.zarr_attributes(path)[oz.PYRAMID_LAYOUT]["cascade"] == 2
    shapes = oz.level_shapes(shape, factors)
    chunks = {3: oz.coarse_chunks(shapes[3], (1, 8, 8)), 4: oz.coarse_chunks(shapes[4], (1, 8, 8))}
    assert chunks == {3: (1, 8, 8), 4: (3, 5, 5)}
    # 20 chunks of level 3 and 1 of level 4, all from memory
    assert len(calls) == 5 * 2 * 2 + 1 and not any(calls)
    assert not (path / oz.PYRAMID_DONE).exists()
    options = oz.array_options(version, ("z", "y", "x"))
    for level, expected in enumerate(expected_levels(data, kind, factors)):
        stored = zarr.open_array(str(path / str(level)), mode="r")
        np.testing.assert_array_equal(stored[...], expected, err_msg=f"level {level}")
        reference = zarr.open_array(str(tmp_path / "zarr" / str(level)), mode="w",
                                    shape=expected.shape, chunks=stored.chunks,
                                    dtype=expected.dtype, fill_value=0, **options)
        reference[...] = expected
        if level in chunks:
            assert stored.chunks == chunks[level]
        assert chunk_files(path / str(level)) == chunk_files(tmp_path / "zarr" / str(level)), \
            f"level {level}"
    validate(path, version, "label" if kind == "labels" else "image")


def blockwise_labels(tmp_path, labels, block_shape, levels):
    """A block-wise labels output (every block written and done), not finished."""
    from fusionnet_tf.segmentation.blockwise import create_label_array
    from fusionnet_tf.volumes import storage
    from fusionnet_tf.volumes.geometry import block_grid

    path = tmp_path / "seg.ome.zarr"
    plan = oz.OutputPlan("labels", "0.5", VOXEL, levels=levels, command="segment-volume")
    level0 = oz.start_output(path, plan)
    create_label_array(level0, labels.shape, block_shape, "uint32")
    for block in block_grid(labels.shape, block_shape):
        storage.write_block(level0, block,
                            labels[slice(*block.z), slice(*block.y), slice(*block.x)])
        storage.mark_done(level0, block, {})
    return path


def test_finish_output_resumes_after_a_kill_in_the_levels_after_the_blocks(tmp_path,
                                                                           monkeypatch):
    """Block-wise output: level 3 is read once from level 2 on disk, level 4 from level 3's
    chunks in memory. A kill half way through them leaves no metadata and no done-marker;
    the next run builds them again; a level marked done is kept and only the levels after
    it are built (from it, on disk)."""
    labels = RNG.integers(0, 5, (8, 64, 60)).astype(np.uint32)
    path = blockwise_labels(tmp_path, labels, (1, 8, 8), levels=5)
    factors = oz.pyramid_factors(labels.shape, VOXEL, 5)
    expected = expected_levels(labels, "labels", factors)
    original, made = oz.tail_chunk, []

    def killed(target, *args):
        if len(made) == 3:
            raise KeyboardInterrupt("killed")
        made.append(target)
        return original(target, *args)

    monkeypatch.setattr(oz, "tail_chunk", killed)
    with pytest.raises(KeyboardInterrupt):
        oz.finish_output(path)
    assert not oz.is_ome_zarr(path)
    assert not list((path / oz.PYRAMID_DONE).glob("*.json"))
    monkeypatch.setattr(oz, "tail_chunk", original)
    calls = tail_sources(monkeypatch)
    assert oz.finish_output(path) == [tuple(e.shape) for e in expected]
    assert calls == [True] * 4 + [False]  # level 3 (4 chunks) from disk, level 4 in memory
    for level, array in enumerate(expected):
        np.testing.assert_array_equal(oz.read_ome_zarr(path, level).array[...], array,
                                      err_msg=f"level {level}")
    validate(path, "0.5", "label")

    # a run killed after level 3 was done: level 4 only, from level 3 on disk
    (path / oz.PYRAMID_DONE).mkdir()
    (path / oz.PYRAMID_DONE / "3.json").write_text("{}")
    level3 = chunk_files(path / "3")
    for chunk in (path / "4").rglob("c/*"):
        if chunk.is_file():
            chunk.unlink()
    calls.clear()
    oz.finish_output(path)
    assert calls == [True]
    assert chunk_files(path / "3") == level3
    np.testing.assert_array_equal(oz.read_ome_zarr(path, 4).array[...], expected[4])


def test_write_ome_zarr_killed_in_the_levels_after_the_blocks_leaves_nothing(tmp_path,
                                                                           monkeypatch):
    da = pytest.importorskip("dask.array")
    labels = RNG.integers(0, 5, (4, 32, 32)).astype(np.uint32)
    path = tmp_path / "seg.ome.zarr"
    plan = oz.OutputPlan("labels", "0.4", VOXEL, levels=4)

    def killed(*args):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(oz, "tail_chunk", killed)
    with pytest.raises(KeyboardInterrupt):
        oz.write_ome_zarr(path, da.from_array(labels, chunks=(1, 16, 16)), plan,
                          chunks=(1, 16, 16))
    assert list(tmp_path.iterdir()) == []  # neither the output nor its temporary folder
    monkeypatch.undo()
    oz.write_ome_zarr(path, da.from_array(labels, chunks=(1, 16, 16)), plan,
                      chunks=(1, 16, 16))
    for level, array in enumerate(expected_levels(labels, "labels",
                                                  oz.pyramid_factors(labels.shape, VOXEL, 4))):
        np.testing.assert_array_equal(oz.read_ome_zarr(path, level).array[...], array)


# ----------------------------------------------------------------- metadata in one write

def group_files(path):
    return {name: (path / name).read_bytes() for name in ("zarr.json", ".zattrs", ".zgroup")
            if (path / name).is_file()}


def strip_ngff(path, version):
    """Reset a group's attributes to what they were before its NGFF metadata."""
    group = zarr.open_group(str(path), mode="a", zarr_format=oz.ZARR_FORMAT[version])
    group.attrs.put({k: v for k, v in group.attrs.asdict().items()
                     if k in (oz.MARKER, oz.PYRAMID_LAYOUT)})


def legacy_metadata(path, plan, factors, max_id):
    """ome_zarr.writer's calls straight on the group on disk (each rewrites the file)."""
    from ome_zarr import writer

    fmt = oz._format(plan.ngff_version)
    group = zarr.open_group(str(path), mode="a", zarr_format=oz.ZARR_FORMAT[plan.ngff_version])
    axes = [{"name": n, "type": "space", "unit": plan.unit} for n in "zyx"]
    writer.write_multiscales_metadata(group, oz._datasets(plan.kind, plan.voxel_size, factors,
                                                          plan.label_method),
                                      fmt=fmt, axes=axes, name=plan.name)
    if plan.kind == "labels":
        label = {"colors": oz.label_colours(max_id), "version": plan.ngff_version}
        if oz.parent_image(path) is not None:
            label["source"] = {"image": "../../"}
        writer.add_metadata(group, {"image-label": label}, fmt=fmt)


@pytest.mark.parametrize("version", oz.NGFF_VERSIONS)
@pytest.mark.parametrize("under_image", [False, True])
def test_metadata_are_written_once_and_equal_ome_zarr_writers(tmp_path, monkeypatch, version,
                                                              under_image):
    import shutil

    labels = RNG.integers(0, 5000, (3, 20, 27)).astype(np.uint32)  # > MAX_COLOURS ids
    root = tmp_path / "em.ome.zarr"
    if under_image:
        oz.write_ome_zarr(root, IMAGE, oz.OutputPlan("image", version, VOXEL, levels=2))
        path = root / "labels" / "cells"
    else:
        path = root
    plan = oz.OutputPlan("labels", version, VOXEL, levels=3, name="cells")
    oz.write_ome_zarr(path, labels, plan)
    written = group_files(path)
    assert len(ngff(path)["image-label"]["colors"]) == oz.MAX_COLOURS + 1
    factors = oz.pyramid_factors(labels.shape, VOXEL, 3)
    legacy = tmp_path / "legacy"
    shutil.copytree(root, legacy)
    legacy_path = legacy / path.relative_to(root)
    strip_ngff(legacy_path, version)
    again = tmp_path / "again"
    shutil.copytree(legacy, again)
    again_path = again / path.relative_to(root)
    legacy_metadata(legacy_path, plan, factors, oz.MAX_COLOURS)
    assert group_files(legacy_path) == written  # the same bytes as the writer's own calls

    import zarr.storage

    writes, original = [], zarr.storage.LocalStore.set

    async def counting(self, key, value):
        writes.append((str(self.root), key))
        return await original(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", counting)
    oz.write_metadata(again_path, plan, factors, oz.MAX_COLOURS)
    mine = [key for root_, key in writes if Path(root_) == again_path.absolute()]
    # one update of the group's metadata (zarr 2 rewrites .zgroup with .zattrs)
    assert sorted(mine) == {"0.4": [".zattrs", ".zgroup"], "0.5": ["zarr.json"]}[version]
    assert group_files(again_path) == written

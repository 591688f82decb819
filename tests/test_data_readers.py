"""Readers, label conventions and normalization (NumPy only, no TensorFlow)."""

import h5py
import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from fusionnet_tf.data import (LazyStack, get_isbi2012_paths, intensity_range, normalize,
                               open_stack, read_labels, read_stack, to_membrane)


@pytest.fixture
def stack_u8():
    return np.random.default_rng(0).integers(0, 256, (3, 16, 20), dtype=np.uint8)


@pytest.fixture
def stack_u16():
    return np.random.default_rng(1).integers(0, 65536, (2, 12, 10), dtype=np.uint16)


# --------------------------------------------------------------------------- #
# Readers
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("fixture", ["stack_u8", "stack_u16"])
def test_tiff_stack_round_trip(tmp_path, request, fixture):
    stack = request.getfixturevalue(fixture)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack)
    out = read_stack(path)
    assert out.dtype == stack.dtype and out.shape == stack.shape
    np.testing.assert_array_equal(out, stack)
    np.testing.assert_array_equal(read_stack(str(path)), stack)
    lazy = open_stack(path)
    np.testing.assert_array_equal(lazy[1, 2:5, 3:7], stack[1, 2:5, 3:7])


def test_single_tiff_page_is_one_slice(tmp_path, stack_u16):
    tifffile.imwrite(tmp_path / "one.tiff", stack_u16[0])
    out = read_stack(tmp_path / "one.tiff")
    assert out.shape == (1, 12, 10) and out.dtype == np.uint16
    np.testing.assert_array_equal(out[0], stack_u16[0])


def test_png_folder_natural_order(tmp_path, stack_u8):
    for index, name in zip(range(3), ["z2.png", "z10.png", "z1.png"]):
        iio.imwrite(tmp_path / name, stack_u8[index])
    (tmp_path / "notes.txt").write_text("not an image")
    out = read_stack(tmp_path)
    # natural order: z1, z2, z10
    np.testing.assert_array_equal(out, stack_u8[[2, 0, 1]])
    lazy = open_stack(tmp_path)
    assert isinstance(lazy, LazyStack) and lazy.shape == (3, 16, 20)
    np.testing.assert_array_equal(lazy[2, 1:4], stack_u8[1, 1:4])
    np.testing.assert_array_equal(lazy[0:2, :, 5], stack_u8[[2, 0], :, 5])


def test_uint16_png_folder(tmp_path, stack_u16):
    for index in range(2):
        iio.imwrite(tmp_path / f"s{index}.png", stack_u16[index])
    out = read_stack(tmp_path)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, stack_u16)


def test_single_png_and_grey_rgb(tmp_path, stack_u8):
    iio.imwrite(tmp_path / "a.png", stack_u8[0])
    np.testing.assert_array_equal(read_stack(tmp_path / "a.png"), stack_u8[:1])
    rgb = np.repeat(stack_u8[0][..., None], 3, axis=-1)
    iio.imwrite(tmp_path / "rgb.png", rgb)
    np.testing.assert_array_equal(read_stack(tmp_path / "rgb.png"), stack_u8[:1])


def test_hdf5_with_key(tmp_path, stack_u16):
    path = tmp_path / "vol.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("volumes/raw", data=stack_u16)
        f.create_dataset("volumes/labels", data=stack_u16 > 30000)
    np.testing.assert_array_equal(read_stack(f"{path}:/volumes/raw"), stack_u16)
    np.testing.assert_array_equal(read_stack(f"{path}:volumes/raw"), stack_u16)
    lazy = open_stack(f"{path}:/volumes/raw")
    assert isinstance(lazy, h5py.Dataset)
    np.testing.assert_array_equal(lazy[1, 3:6, 2:4], stack_u16[1, 3:6, 2:4])


def test_hdf5_single_dataset_needs_no_key(tmp_path, stack_u8):
    path = tmp_path / "one.hdf5"
    with h5py.File(path, "w") as f:
        f["raw"] = stack_u8
    np.testing.assert_array_equal(read_stack(path), stack_u8)


def test_hdf5_2d_dataset_is_lazy_single_slice(tmp_path, stack_u8):
    path = tmp_path / "plane.h5"
    with h5py.File(path, "w") as f:
        f["plane"] = stack_u8[0]
    lazy = open_stack(f"{path}:/plane")
    assert lazy.shape == (1, 16, 20)
    np.testing.assert_array_equal(lazy[0], stack_u8[0])


def test_planar_and_interleaved_rgb_tiff_are_one_grey_slice(tmp_path, stack_u8):
    grey = stack_u8[0]
    rgb = np.stack([grey] * 3)  # (3, H, W), all channels equal
    tifffile.imwrite(tmp_path / "planar.tif", rgb, photometric="rgb", planarconfig="separate")
    tifffile.imwrite(tmp_path / "interleaved.tif", np.moveaxis(rgb, 0, -1), photometric="rgb")
    with tifffile.TiffFile(tmp_path / "planar.tif") as tif:
        assert tif.series[0].axes == "SYX"
    for name in ("planar.tif", "interleaved.tif"):
        out = read_stack(tmp_path / name)
        assert out.shape == (1, 16, 20), name
        np.testing.assert_array_equal(out[0], grey)
        np.testing.assert_array_equal(open_stack(tmp_path / name), out)
    # a stack of planar RGB pages: one grey slice per page
    tifffile.imwrite(tmp_path / "planar_stack.tif", np.stack([rgb, rgb[:, ::-1]]),
                     photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_stack(tmp_path / "planar_stack.tif"),
                                  np.stack([grey, grey[::-1]]))
    # different planes: the bytes of a 3-slice stack saved with tifffile's old default
    tifffile.imwrite(tmp_path / "three.tif", stack_u8, photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_stack(tmp_path / "three.tif"), stack_u8)
    colour = np.moveaxis(stack_u8, 0, -1)
    tifffile.imwrite(tmp_path / "colour.tif", colour, photometric="rgb")
    with pytest.raises(ValueError, match="colour.tif: colour image"):
        read_stack(tmp_path / "colour.tif")


def test_hdf5_file_closed_after_failed_open(tmp_path):
    path = tmp_path / "bad.h5"

    def write_bad():  # mode "w" fails while another handle keeps the file open
        with h5py.File(path, "w") as f:
            f["rgb"] = np.zeros((2, 2, 4, 4), np.uint8)
            f["empty"] = np.zeros((0, 4, 4), np.uint8)
            f["complex"] = np.zeros((1, 4, 4), np.complex64)

    write_bad()
    for key, message in (("rgb", r"\(2, 2, 4, 4\)"), ("empty", "empty"), ("complex", "complex64"),
                         ("missing", "'/missing'")):
        with pytest.raises(ValueError, match=message) as info:
            open_stack(f"{path}:{key}")
        write_bad()  # even while the traceback (and its frames) is still alive
        del info


def test_hdf5_2d_dataset_is_closed_by_read_and_close(tmp_path, stack_u8):
    path = tmp_path / "plane.h5"
    with h5py.File(path, "w") as f:
        f["plane"] = stack_u8[0]
    np.testing.assert_array_equal(read_stack(f"{path}:/plane"), stack_u8[:1])
    with h5py.File(path, "a"):  # read_stack released its handle
        pass
    lazy = open_stack(f"{path}:/plane")
    assert isinstance(lazy, LazyStack) and lazy.file.id.valid
    lazy.close()
    assert not lazy.file.id.valid
    with h5py.File(path, "w"):
        pass


def test_ndarray_passes_through(stack_u8):
    np.testing.assert_array_equal(read_stack(stack_u8[0]), stack_u8[:1])


# --------------------------------------------------------------------------- #
# Reader errors
# --------------------------------------------------------------------------- #


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tif"):
        read_stack(tmp_path / "nope.tif")
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        read_stack(f"{tmp_path}/nope.h5:/raw")


def test_unknown_extension(tmp_path):
    path = tmp_path / "volume.xyz"
    path.write_bytes(b"12345")
    with pytest.raises(ValueError, match=r"'\.xyz'"):
        read_stack(path)


def test_hdf5_missing_key_lists_available(tmp_path, stack_u8):
    path = tmp_path / "vol.h5"
    with h5py.File(path, "w") as f:
        f["raw"] = stack_u8
        f["labels"] = stack_u8
    with pytest.raises(ValueError, match="'/missing'.*labels, raw"):
        read_stack(f"{path}:/missing")
    with pytest.raises(ValueError, match="2 datasets: labels, raw"):
        read_stack(path)


def test_empty_inputs(tmp_path):
    with pytest.raises(ValueError, match="no image slices"):
        read_stack(tmp_path)
    with pytest.raises(ValueError, match="empty"):
        read_stack(np.zeros((0, 4, 4), np.uint8))
    path = tmp_path / "empty.h5"
    with h5py.File(path, "w") as f:
        f["raw"] = np.zeros((0, 8, 8), np.uint8)
    with pytest.raises(ValueError, match=r"empty \(shape \(0, 8, 8\)\)"):
        read_stack(f"{path}:/raw")


def test_4d_arrays_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 5\)"):
        read_stack(np.zeros((2, 3, 4, 5), np.uint8))
    path = tmp_path / "vol4d.h5"
    with h5py.File(path, "w") as f:
        f["raw"] = np.zeros((2, 2, 4, 4), np.uint8)
    with pytest.raises(ValueError, match=r"\(2, 2, 4, 4\)"):
        open_stack(f"{path}:/raw")
    tifffile.imwrite(tmp_path / "vol4d.tif", np.zeros((2, 3, 8, 8), np.uint8), metadata={"axes": "TZYX"})
    with pytest.raises(ValueError, match=r"\(2, 3, 8, 8\)"):
        read_stack(tmp_path / "vol4d.tif")


def test_colour_image_rejected(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200
    iio.imwrite(tmp_path / "colour.png", rgb)
    with pytest.raises(ValueError, match="colour"):
        read_stack(tmp_path / "colour.png")


def test_folder_with_mismatched_slices(tmp_path):
    iio.imwrite(tmp_path / "a1.png", np.zeros((8, 8), np.uint8))
    iio.imwrite(tmp_path / "a2.png", np.zeros((8, 9), np.uint8))
    with pytest.raises(ValueError, match=r"a2.png has shape \(8, 9\)"):
        read_stack(tmp_path)


def test_complex_dtype_rejected():
    with pytest.raises(ValueError, match="dtype complex64"):
        read_stack(np.zeros((1, 4, 4), np.complex64))


# --------------------------------------------------------------------------- #
# Labels
# --------------------------------------------------------------------------- #


def test_isbi_and_membrane_conventions(tmp_path):
    raw = np.array([[[0, 255], [255, 0]]], np.uint8)
    tifffile.imwrite(tmp_path / "labels.tif", raw)
    isbi = read_labels(tmp_path / "labels.tif")  # default: ISBI, 0 = membrane
    assert isbi.dtype == np.uint8
    np.testing.assert_array_equal(isbi, [[[1, 0], [0, 1]]])
    np.testing.assert_array_equal(read_labels(raw, convention="membrane"), [[[0, 1], [1, 0]]])
    np.testing.assert_array_equal(read_labels(raw == 255, convention="membrane"), [[[0, 1], [1, 0]]])
    np.testing.assert_array_equal(to_membrane(np.array([[0, 1]]), "membrane"), [[0, 1]])


def test_bool_hdf5_labels(tmp_path):
    mask = np.array([[[True, False], [False, True]]])
    path = tmp_path / "labels.h5"
    with h5py.File(path, "w") as f:
        f["membrane"] = mask
        f["plane"] = mask[0]
    with h5py.File(path, "r") as f:
        assert f["membrane"].dtype == bool
    out = read_labels(f"{path}:/membrane", convention="membrane")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, mask.astype(np.uint8))
    np.testing.assert_array_equal(read_labels(f"{path}:/membrane"), (~mask).astype(np.uint8))
    np.testing.assert_array_equal(read_labels(f"{path}:/plane", "membrane", threshold=0), mask)
    with pytest.raises(ValueError, match="unsupported dtype bool"):  # images stay non-bool
        read_stack(f"{path}:/membrane")


def test_single_valued_labels_are_fine():
    np.testing.assert_array_equal(read_labels(np.full((1, 2, 2), 255, np.uint8)), np.zeros((1, 2, 2)))


def test_non_binary_labels_name_the_values(tmp_path):
    raw = np.array([[[0, 3], [128, 255]]], np.uint8)
    tifffile.imwrite(tmp_path / "soft.tif", raw)
    with pytest.raises(ValueError, match=r"soft.tif.*4 values: \[0, 3, 128, 255\].*threshold"):
        read_labels(tmp_path / "soft.tif")
    with pytest.raises(ValueError, match=r"\[1, 2\]"):
        read_labels(np.array([[[1, 2]]], np.uint8), convention="membrane")
    # with a threshold: > 100 counts as nonzero (interior for ISBI)
    np.testing.assert_array_equal(read_labels(raw, threshold=100), [[[1, 1], [0, 0]]])
    np.testing.assert_array_equal(read_labels(raw, "membrane", threshold=100), [[[0, 0], [1, 1]]])


def test_unknown_convention():
    with pytest.raises(ValueError, match="'cremi'"):
        read_labels(np.zeros((1, 2, 2), np.uint8), convention="cremi")


# --------------------------------------------------------------------------- #
# Normalization
# --------------------------------------------------------------------------- #


def test_intensity_range_modes():
    stack = np.array([[[10, 20], [30, 50]], [[0, 100], [100, 100]]], np.uint8)
    lo, hi = intensity_range(stack)
    assert lo.dtype == np.float32 and lo.shape == (2,)
    np.testing.assert_array_equal(lo, [10, 0])
    np.testing.assert_array_equal(hi, [50, 100])
    np.testing.assert_array_equal(intensity_range(stack, "global"), [[0, 0], [100, 100]])
    np.testing.assert_array_equal(intensity_range(stack.astype(np.uint16), "dtype"),
                                  [[0, 0], [65535, 65535]])
    with pytest.raises(ValueError, match="'percentile'"):
        intensity_range(stack, "percentile")


def test_normalize_per_slice_global_dtype():
    stack = np.array([[[10, 20], [30, 50]], [[0, 100], [100, 100]]], np.uint8)
    out = normalize(stack)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], [[0, 0.25], [0.5, 1.0]])
    np.testing.assert_allclose(out[1], [[0, 1], [1, 1]])
    np.testing.assert_allclose(normalize(stack, "global")[0], [[0.1, 0.2], [0.3, 0.5]])
    np.testing.assert_allclose(normalize(stack, "dtype")[1], [[0, 100 / 255], [100 / 255, 100 / 255]],
                               rtol=1e-6)


def test_normalize_uint16_and_constant_slice():
    stack = np.array([[[0, 65535]], [[7, 7]]], np.uint16)
    out = normalize(stack)
    np.testing.assert_array_equal(out, [[[0, 1]], [[0, 0]]])
    assert np.isfinite(out).all()


def test_normalize_block_like_whole_slice():
    stack = np.random.default_rng(3).integers(0, 4096, (2, 30, 30)).astype(np.uint16)
    lo, hi = intensity_range(stack)
    block = normalize(stack[:, 5:12, 20:30], lo=lo, hi=hi)
    np.testing.assert_array_equal(block, normalize(stack)[:, 5:12, 20:30])
    with pytest.raises(ValueError, match=r"lo must be a scalar or have shape \(2,\)"):
        normalize(stack, lo=np.zeros(3), hi=hi)


def test_normalize_2d_image():
    out = normalize(np.array([[1.0, 3.0]]))
    assert out.shape == (1, 2)
    np.testing.assert_array_equal(out, [[0, 1]])


# --------------------------------------------------------------------------- #
# ISBI 2012 paths
# --------------------------------------------------------------------------- #


def test_isbi2012_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-volume.tif"):
        get_isbi2012_paths(tmp_path)
    for name in ("train-volume.tif", "train-labels.tif"):
        tifffile.imwrite(tmp_path / name, np.zeros((2, 8, 8), np.uint8))
    paths = get_isbi2012_paths(tmp_path)
    assert paths["train_images"] == tmp_path / "train-volume.tif"
    assert paths["test_images"] == tmp_path / "test-volume.tif"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_isbi2012_paths(tmp_path / "missing")

"""Readers that turn EM image files into (N, H, W) stacks.

Supported specs (``str`` or ``pathlib.Path``):

- a multi-page TIFF (``stack.tif``, ``stack.tiff``): one page per slice;
- a single 2D image (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.tif``): N = 1;
- a folder of 2D slices, sorted naturally (``z2.png`` before ``z10.png``);
- an HDF5 dataset, ``file.h5:/key`` (also ``.hdf5``, ``.hdf``); the key may be
  left out when the file holds exactly one dataset;
- a zarr array: ``store.zarr``, ``store.zarr:key`` or ``store.zarr/key`` (an
  OME-Zarr image reads as its level 0, or the level named).

Specs are split by ``fusionnet_tf.io.spec.parse_spec`` (the rule every command
follows); HDF5 and zarr are opened with ``fusionnet_tf.io.files``.

``read_stack`` loads the whole stack in its native dtype; ``open_stack`` keeps
it on disk where possible (HDF5 dataset, uncompressed TIFF via memory map,
folder read slice by slice) and returns an array-like supporting NumPy slicing.
An opened HDF5 stack keeps its file open until ``stack.file.close()`` (an
``h5py.Dataset`` or ``LazyStack``; ``LazyStack.close()`` does the same).

Colour: an RGB(A) image whose colour channels are all equal is read as one grey
slice, whether it is a PNG, an interleaved TIFF (axes ``YXS``) or a planar TIFF
(``SYX``; there all planes, alpha included, must be equal); other colour PNGs
and interleaved TIFFs are refused. A planar TIFF whose planes differ is read
as one slice per plane: its bytes are those of a
(3 or 4, H, W) grey stack saved by ``tifffile.imwrite`` without
``photometric="minisblack"`` (tifffile's default until now), which is far more
common in EM work than real planar colour.
"""

import contextlib
import logging
import re
from pathlib import Path

import numpy as np

from fusionnet_tf.io.files import open_hdf5_dataset, open_zarr
# the suffix lists live with the spec parser (HDF5_SUFFIXES: re-exported for callers)
from fusionnet_tf.io.spec import (HDF5_SUFFIXES, IMAGE_SUFFIXES,  # noqa: F401
                                  TIFF_SUFFIXES, parse_spec)


# --------------------------------------------------------------------------- #
# Validation
# --------------------------------------------------------------------------- #


def natural_key(name):
    """Sort key that orders ``"z2"`` before ``"z10"`` (numbers compared as ints)."""
    parts = re.split(r"(\d+)", str(name))
    return [int(p) if p.isdigit() else p.lower() for p in parts]


def check_stack(array, name="stack", allow_bool=False):
    """Validate a stack and return it as (N, H, W).

    A 2D (H, W) array becomes (1, H, W).

    Args:
        array: NumPy array or array-like with ``shape`` and ``dtype``.
        name: what to call the array in error messages (e.g. its file name).
        allow_bool: bool. Accept a boolean dtype (label masks). Defaults to
            False: images must be integer or float.

    Returns:
        The array, with a leading slice axis added for 2D input.

    Raises:
        ValueError: for arrays that are not 2D or 3D, empty arrays and
            non-numeric or complex dtypes (and boolean unless ``allow_bool``).
    """
    shape = tuple(array.shape)
    if len(shape) not in (2, 3):
        raise ValueError(
            f"{name}: expected a 2D (H, W) image or a 3D (N, H, W) stack; "
            f"received an array of shape {shape} (multi-channel or 4-D data is not supported)"
        )
    if 0 in shape:
        raise ValueError(f"{name}: the stack is empty (shape {shape})")
    dtype = np.dtype(array.dtype)
    if dtype.kind not in ("uifb" if allow_bool else "uif"):
        raise ValueError(f"{name}: unsupported dtype {dtype}; expected an integer or float image")
    if len(shape) == 2:
        return array[np.newaxis] if isinstance(array, np.ndarray) else LazyStack.from_2d(array)
    return array


def _check_exists(path):
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")


# --------------------------------------------------------------------------- #
# Single files
# --------------------------------------------------------------------------- #


def _is_grey(array, channels=3):
    """True if the first ``channels`` channels of the last axis are all equal (3: alpha ignored)."""
    return all(np.array_equal(array[..., 0], array[..., i]) for i in range(1, channels))


def _grey(array, name):
    """Drop a last colour axis whose channels are all equal; refuse real colour."""
    if array.ndim >= 3 and array.shape[-1] in (3, 4):
        if not _is_grey(array):
            raise ValueError(
                f"{name}: colour image of shape {array.shape}; EM images must be greyscale"
            )
        return np.ascontiguousarray(array[..., 0])
    return array


@contextlib.contextmanager
def _tiff_errors(path):
    """Name ``path`` in any error while reading it; keep tifffile's log lines off stderr.

    A truncated or fake TIFF makes tifffile log a dozen lines and raise
    errors such as ``not a TIFF file: header=b'hell'`` that do not say which
    file; the error raised here does.
    """
    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    except (OSError, ValueError, RuntimeError, IndexError, KeyError, EOFError) as error:
        if isinstance(error, FileNotFoundError) or str(path) in str(error):
            raise
        text = " ".join(str(error).split())
        raise ValueError(f"{path}: cannot read this TIFF file ({text})") from error
    finally:
        logger.setLevel(level)


def _read_tiff(path):
    import tifffile

    with _tiff_errors(path), tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise ValueError(f"{path}: the TIFF file holds no images")
        series = tif.series[0]
        array = series.asarray()
        axes = series.axes
    if "S" not in axes:
        return array
    axis = axes.index("S")  # samples per pixel: interleaved (...YXS) or planar (...SYX)
    samples = array.shape[axis]
    channels_last = np.moveaxis(array, axis, -1)
    if axis != array.ndim - 1:  # planar: all planes equal are one grey image, else slices
        if _is_grey(channels_last, channels=samples):
            return np.ascontiguousarray(channels_last[..., 0])
        return array
    if samples == 1:
        return array[..., 0]
    if samples in (3, 4):
        return _grey(array, path)
    raise ValueError(
        f"{path}: {samples} samples per pixel (TIFF axes {axes}, shape {array.shape}); "
        f"EM images must be greyscale"
    )


def _read_image(path):
    """Read a 2D PNG/JPEG/BMP (or single-page TIFF) as a 2D array."""
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        array = _read_tiff(path)
    else:
        import imageio.v3 as iio

        try:
            array = iio.imread(path)
        except Exception as error:  # corrupt/unreadable file: name it
            raise ValueError(f"{path}: cannot read image ({error})") from error
        array = _grey(np.asarray(array), path)
    if array.ndim != 2:
        raise ValueError(f"{path}: expected a 2D slice; received shape {array.shape}")
    return array


def _list_slices(folder):
    files = [p for p in folder.iterdir()
             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
    if not files:
        raise ValueError(
            f"folder {folder} contains no image slices (looked for {', '.join(IMAGE_SUFFIXES)})"
        )
    return sorted(files, key=lambda p: natural_key(p.name))


def close_stack(stack):
    """Close the file behind a stack from ``open_stack`` (h5py dataset, LazyStack), if any."""
    handle = getattr(stack, "file", None)
    if handle is not None and hasattr(handle, "close"):
        handle.close()


# --------------------------------------------------------------------------- #
# Lazy stacks
# --------------------------------------------------------------------------- #


class LazyStack:
    """A read-only (N, H, W) array-like that loads slices on demand.

    Supports ``shape``, ``dtype``, ``ndim``, ``len()``, ``np.asarray`` and NumPy
    basic indexing (ints and slices, e.g. ``stack[3, 100:200, :50]``).

    Args:
        shape: (N, H, W).
        dtype: NumPy dtype of the slices.
        load_slice: callable ``i -> (H, W) array`` for slice ``i``.
        name: shown in error messages.
        file: the open file the slices come from (e.g. an ``h5py.File``), or
            None. ``close()`` closes it. Defaults to None.
    """

    def __init__(self, shape, dtype, load_slice, name="stack", file=None):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = 3
        self._load_slice = load_slice
        self.name = name
        self.file = file

    @classmethod
    def from_2d(cls, array):
        """Wrap a lazy 2D (H, W) array-like (e.g. an ``h5py.Dataset``) as a (1, H, W) stack."""
        return cls((1,) + tuple(array.shape), array.dtype, lambda i: np.asarray(array[()]),
                   name=getattr(array, "name", "stack"), file=getattr(array, "file", None))

    def close(self):
        """Close the file behind the stack, if any (as ``dataset.file.close()`` for h5py)."""
        close_stack(self)

    def __len__(self):
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        first, rest = key[0], key[1:]
        if isinstance(first, (int, np.integer)):
            index = int(first)
            if not -self.shape[0] <= index < self.shape[0]:
                raise IndexError(f"{self.name}: slice index {index} out of range for {self.shape[0]} slices")
            return np.asarray(self._load_slice(index % self.shape[0]))[rest]
        if isinstance(first, slice):
            indices = range(*first.indices(self.shape[0]))
            if len(indices) == 0:
                return np.empty((0,) + self.shape[1:], self.dtype)[(slice(None),) + rest]
            return np.stack([np.asarray(self._load_slice(i))[rest] for i in indices])
        raise TypeError(f"{self.name}: LazyStack supports int and slice indexing; received {key!r}")


def _lazy_folder(folder):
    files = _list_slices(folder)
    first = _read_image(files[0])

    def load_slice(i):
        array = _read_image(files[i])
        if array.shape != first.shape or array.dtype != first.dtype:
            raise ValueError(
                f"folder {folder}: slice {files[i].name} has shape {array.shape} and dtype "
                f"{array.dtype}, but {files[0].name} has shape {first.shape} and dtype {first.dtype}"
            )
        return array

    return LazyStack((len(files),) + first.shape, first.dtype, load_slice, name=str(folder))


def _lazy_tiff(path):
    import tifffile

    with _tiff_errors(path), tifffile.TiffFile(path) as tif:
        colour = bool(tif.series) and "S" in tif.series[0].axes
    if colour:
        return _read_tiff(path)
    try:
        with _tiff_errors(path):
            return tifffile.memmap(path, mode="r")
    except Exception:  # compressed or otherwise not memory-mappable: load it
        return _read_tiff(path)


# --------------------------------------------------------------------------- #
# Public API
# --------------------------------------------------------------------------- #


def _open_zarr(spec):
    """A (Z, Y, X) or (Y, X) zarr array: a level of an OME-Zarr image or a plain array."""
    from fusionnet_tf.io import ome_zarr

    _check_exists(spec.path)
    if ome_zarr.is_ome_zarr_name(spec.path) and not ome_zarr.is_ome_zarr(spec.path):
        ome_zarr.read_multiscale(spec.path)  # raises: no multiscales metadata
    if ome_zarr.is_ome_zarr(spec.path) and spec.key is not None:
        if ome_zarr.open_level(spec.path, spec.key) is None \
                and not ome_zarr.is_ome_zarr(spec.path / spec.key):
            raise ValueError(f"{spec}: {spec.path} has no resolution level '{spec.key}'")
    try:
        return open_zarr(spec.path, spec.key)[0]
    except KeyError as error:
        raise ValueError(error.args[0]) from None


def read_stack(spec, allow_bool=False):
    """Read an EM stack into memory as an (N, H, W) array in its native dtype.

    Args:
        spec: a ``.tif``/``.tiff`` stack, a single ``.png``/``.jpg``/``.tif``
            image, a folder of 2D slices (natural order), ``"file.h5:/key"`` or
            a zarr array (``store.zarr[:key]``); see ``io.spec.parse_spec``.
            A NumPy array is validated and returned as (N, H, W).
        allow_bool: bool. Accept boolean data (label masks). Defaults to False.

    Returns:
        np.ndarray of shape (N, H, W), dtype as stored (e.g. uint8, uint16).

    Raises:
        FileNotFoundError: if the file or folder does not exist.
        ValueError: unknown extension, missing HDF5 key, colour or 4-D data,
            empty stack, slices of different shapes.

    Example:
    >>> stack = read_stack("train-volume.tif")   # (30, 512, 512) uint8
    >>> stack = read_stack("sample_A.h5:/volumes/raw")
    """
    if isinstance(spec, np.ndarray):
        return check_stack(spec, "array", allow_bool)
    lazy = open_stack(spec, allow_bool)
    try:
        data = lazy[:]
        if isinstance(data, np.memmap):
            data = np.array(data)
    finally:
        close_stack(lazy)  # h5py: release the file
    return np.asarray(data)


def open_stack(spec, allow_bool=False):
    """Open an EM stack lazily where the format allows it.

    Args:
        spec: as for ``read_stack``.
        allow_bool: as for ``read_stack``.

    Returns:
        An (N, H, W) array-like supporting NumPy slicing: an ``h5py.Dataset``
        for 3-D HDF5 data, a ``LazyStack`` for 2-D HDF5 data and folders
        (one file read per slice), a read-only ``np.memmap`` for uncompressed
        TIFFs, or an in-memory ``np.ndarray`` otherwise. HDF5 stacks keep the
        file open: close it with ``stack.file.close()`` when done.

    Raises:
        as ``read_stack``.

    Example:
    >>> raw = open_stack("sample_A.h5:/volumes/raw")
    >>> block = raw[0:4, 0:256, 0:256]
    """
    if isinstance(spec, np.ndarray):
        return check_stack(spec, "array", allow_bool)
    if not isinstance(spec, (str, Path)):
        raise ValueError(f"stack spec must be a path string, Path or ndarray; received {type(spec).__name__}")
    parsed = parse_spec(spec)
    path = parsed.path
    if parsed.kind == "hdf5":
        _check_exists(path)
        dataset = open_hdf5_dataset(path, parsed.key)
        try:
            return check_stack(dataset, f"{path}:{parsed.key or ''}", allow_bool)
        except BaseException:
            close_stack(dataset)
            raise
    if parsed.kind == "zarr":
        return check_stack(_open_zarr(parsed), str(spec), allow_bool)
    if parsed.kind == "n5":
        raise ValueError(f"{spec}: N5 containers are read block-wise by predict-volume and "
                         f"segment-volume; give a TIFF, an image, a folder, file.h5:/key or zarr")
    _check_exists(path)
    if path.is_dir():
        return check_stack(_lazy_folder(path), str(path), allow_bool)
    if parsed.kind == "tiff":
        return check_stack(_lazy_tiff(path), str(path), allow_bool)
    return check_stack(_read_image(path), str(path), allow_bool)

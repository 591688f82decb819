"""Affinity files: (C, Z, Y, X) float32 arrays that carry their offsets.

An affinity file holds one channel per offset ``(dz, dy, dx)``: channel ``c``
at voxel ``p`` is the probability that ``p`` and ``p + offsets[c]`` belong to
the same object (see ``fusionnet_tf.data.affinities`` and the project's
affinity conventions). The metadata ``{"kind": "affinities", "offsets":
[[dz, dy, dx], ...]}`` travels with the array:

- ``aff.tif``: JSON in the ImageDescription of the first page; the pages are
  the C x Z sections, channel-major, and the JSON also records ``shape``;
- ``aff.h5[:/key]`` (key default ``affinities``): dataset attributes ``kind``
  (str) and ``offsets`` (a JSON string); other datasets in the file are kept;
- ``aff.zarr``: the array's ``.attrs`` (``kind`` and ``offsets`` as a list).

Writes go to a temporary file (or store) that is renamed when complete.
``affinity_metadata(spec)`` tells affinity files from other files by their
metadata, so ``fusionnet segment`` can choose its path; ``read_affinities``
returns ``(affs, offsets)`` and refuses, in one line, an affinity file without
offsets and offsets that do not match the channel count.
"""

import json

import numpy as np

from fusionnet_tf.io.files import resolve_hdf5_key, write_hdf5, write_tiff, write_zarr
from fusionnet_tf.io.spec import parse_spec

KIND = "affinities"
DEFAULT_HDF5_KEY = "affinities"


# --------------------------------------------------------------------------- #
# Specs and checks
# --------------------------------------------------------------------------- #


def affinity_format(spec):
    """``("tiff" | "hdf5" | "zarr", path, key_or_None)`` for an affinity file spec.

    ``x.zarr:/key`` (or ``x.zarr/key``) names an array inside a zarr group;
    ``x.h5:/key`` a dataset. Split by ``io.spec.parse_spec``.

    Raises:
        ValueError: any other suffix, naming ``spec``.
    """
    try:
        parsed = parse_spec(spec)
    except ValueError:
        parsed = None
    if parsed is not None and parsed.kind in ("tiff", "hdf5", "zarr"):
        return parsed.kind, parsed.path, parsed.key
    raise ValueError(f"affinity file {spec}: give a .tif/.tiff, .h5[:/key] or .zarr path")


def check_offsets(offsets, channels=None, name="offsets"):
    """Validate offsets and return them as a list of ``(dz, dy, dx)`` int tuples.

    Args:
        offsets: sequence of 3-sequences of ints.
        channels: int or None; when given, ``len(offsets)`` must equal it.
        name: how the message names the source (e.g. the file).

    Raises:
        ValueError: not a list of integer triples, an all-zero offset, or a
            count different from ``channels``.
    """
    try:
        parsed = [tuple(int(v) for v in offset) for offset in offsets]
        exact = all(float(v) == int(v) for offset in offsets for v in offset)
    except (TypeError, ValueError):
        parsed, exact = None, False
    if not parsed or not exact or any(len(offset) != 3 for offset in parsed):
        raise ValueError(f"{name}: offsets must be a non-empty list of [dz, dy, dx] integer "
                         f"triples; received {offsets!r}")
    if any(offset == (0, 0, 0) for offset in parsed):
        raise ValueError(f"{name}: offset [0, 0, 0] links a voxel to itself; received {offsets!r}")
    if channels is not None and len(parsed) != channels:
        raise ValueError(f"{name}: {len(parsed)} offsets in the metadata but {channels} "
                         f"affinity channels; give one [dz, dy, dx] offset per channel")
    return parsed


def check_affinities(affs, offsets, name="affinities"):
    """Validate a (C, Z, Y, X) affinity array against its offsets.

    Args:
        affs: (C, Z, Y, X) float array in [0, 1].
        offsets: C offsets ``(dz, dy, dx)``.
        name: how the message names the array.

    Returns:
        ``(affs as float32, offsets as a list of int tuples)``.

    Raises:
        ValueError: another number of dimensions, an empty axis, a non-float
            dtype, NaN/inf or values outside [0, 1], offsets that do not match.
    """
    affs = np.asarray(affs)
    if affs.ndim != 4 or 0 in affs.shape:
        raise ValueError(f"{name}: affinities must be a non-empty (C, Z, Y, X) array; received "
                         f"shape {affs.shape}")
    if not np.issubdtype(affs.dtype, np.floating):
        raise ValueError(f"{name}: affinities must be float in [0, 1]; received dtype {affs.dtype}")
    offsets = check_offsets(offsets, affs.shape[0], name)
    if not np.all(np.isfinite(affs)):
        raise ValueError(f"{name}: the affinities contain NaN or inf")
    low, high = float(affs.min()), float(affs.max())
    if low < 0 or high > 1:
        raise ValueError(f"{name}: affinities must be in [0, 1]; received values in "
                         f"[{low:g}, {high:g}]")
    return affs.astype(np.float32, copy=False), offsets


# --------------------------------------------------------------------------- #
# Writing
# --------------------------------------------------------------------------- #


def check_affinity_output(spec, option="--output"):
    """Fail before any work if the affinity output ``spec`` may not be written.

    The project's one output guard (``io.outputs.check_output_path``): a
    ``.zarr`` output may replace only a missing or empty folder or an earlier
    affinity store; a TIFF/HDF5 output never replaces a folder.

    Returns:
        ``"tiff"``, ``"hdf5"`` or ``"zarr"``.

    Raises:
        ValueError: unknown format, a key inside a zarr output, or an HDF5
            target that cannot take the dataset.
        FileExistsError / IsADirectoryError / FileNotFoundError /
        PermissionError: see ``io.outputs.check_output_path``.
    """
    from fusionnet_tf.io.outputs import check_hdf5_target, check_output_path

    try:
        kind, path, key = affinity_format(spec)
    except ValueError:
        raise ValueError(f"{option} {spec}: affinities are written to a .tif/.tiff, .h5[:/key] "
                         "or .zarr") from None
    if kind == "zarr" and key is not None:
        raise ValueError(f"{option} {spec}: a zarr output is a whole store (e.g. aff.zarr), "
                         "not a key inside one")
    check_output_path(path, f"{option} {spec}", folder_output=kind == "zarr",
                      earlier_output=is_affinity_store)
    if kind == "hdf5":
        check_hdf5_target(path, key or DEFAULT_HDF5_KEY)
    return kind


def is_affinity_store(path):
    """True if ``path`` is a zarr store holding earlier affinities (``kind`` attribute)."""
    from fusionnet_tf.io.outputs import zarr_attributes

    return zarr_attributes(path).get("kind") == KIND


def write_affinities(spec, affs, offsets, metadata=None):
    """Write (C, Z, Y, X) affinities with their offsets, atomically.

    Args:
        spec: ``.tif``/``.tiff``, ``.h5[:/key]`` (key default
            ``affinities``) or ``.zarr`` path.
        affs: (C, Z, Y, X) float array in [0, 1].
        offsets: C offsets ``(dz, dy, dx)``.
        metadata: optional JSON-able dict stored alongside ``kind`` and
            ``offsets``.

    Returns:
        Path written.

    Raises:
        ValueError: bad array or offsets (``check_affinities``), unknown format.

    Example:
    >>> write_affinities("aff.h5", affs, DEFAULT_OFFSETS_3D)
    """
    kind, path, key = affinity_format(spec)
    affs, offsets = check_affinities(affs, offsets, f"affinity output {spec}")
    document = dict(metadata or {}, kind=KIND, offsets=[list(offset) for offset in offsets])
    if kind == "tiff":  # the pages: the C x Z sections, channel-major
        return write_tiff(path, affs.reshape((-1,) + affs.shape[2:]),
                          dict(document, shape=list(affs.shape)))
    if kind == "hdf5":
        return write_hdf5(path, key or DEFAULT_HDF5_KEY, affs, document,
                          chunks=affinity_chunks(affs.shape))
    if key is not None:
        raise ValueError(f"affinity output {spec}: a zarr output is a whole store (e.g. "
                         f"aff.zarr), not a key inside one")
    return write_zarr(path, affs, document, chunks=affinity_chunks(affs.shape),
                      what=f"affinity output {spec}", earlier_output=is_affinity_store)


def affinity_chunks(shape):
    """One channel and at most (16, 256, 256) voxels per chunk of a (C, Z, Y, X) array.

    The layout of ``predict``'s affinity writer, so block-wise readers see the
    same chunks whoever wrote the file.
    """
    return (1,) + tuple(min(n, c) for n, c in zip(shape[1:], (16, 256, 256)))


# --------------------------------------------------------------------------- #
# Reading
# --------------------------------------------------------------------------- #


def _tiff_metadata(path):
    import tifffile

    with tifffile.TiffFile(path) as tiff:
        description = tiff.pages[0].description if len(tiff.pages) else ""
        pages = len(tiff.pages)
    try:
        document = json.loads(description) if description else {}
    except json.JSONDecodeError:
        document = {}
    return (document if isinstance(document, dict) else {}), pages


def _hdf5_dataset_name(path, key):
    if key is None:
        import h5py

        with h5py.File(path, "r") as handle:
            if isinstance(handle.get(DEFAULT_HDF5_KEY), h5py.Dataset):
                return DEFAULT_HDF5_KEY
    return resolve_hdf5_key(path, key)


def _hdf5_metadata(path, key):
    import h5py

    name = _hdf5_dataset_name(path, key)
    with h5py.File(path, "r") as handle:
        dataset = handle[name]
        document = {}
        for attr, value in dataset.attrs.items():
            value = value.decode() if isinstance(value, bytes) else value
            if attr == "offsets" and isinstance(value, str):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    pass
            document[attr] = value
        return document, tuple(dataset.shape)


def _open_zarr_array(path, key):
    import zarr

    if not path.exists():
        raise FileNotFoundError(f"affinity file not found: {path}")
    node = zarr.open(str(path), mode="r")
    if key is not None:
        node = node[key]
    if not hasattr(node, "shape"):
        arrays = [name for name, _ in node.arrays()]
        if len(arrays) != 1:
            raise ValueError(f"{path}: give the array as {path}:/KEY; the store holds "
                             f"{len(arrays)} arrays: {', '.join(arrays) or 'none'}")
        node = node[arrays[0]]
    return node


def _metadata_and_shape(spec):
    """``(format, metadata dict, stored shape)`` of ``spec`` without reading the data."""
    kind, path, key = affinity_format(spec)
    if kind != "zarr" and not path.is_file():
        raise FileNotFoundError(f"affinity file not found: {path}")
    if kind == "tiff":
        document, pages = _tiff_metadata(path)
        return kind, document, (pages,)
    if kind == "hdf5":
        document, shape = _hdf5_metadata(path, key)
        return kind, document, shape
    array = _open_zarr_array(path, key)
    return kind, dict(array.attrs), tuple(array.shape)


def affinity_metadata(spec):
    """The affinity metadata of ``spec``, or None if it is not an affinity file.

    A file is an affinity file when its metadata says ``"kind":
    "affinities"``, or (HDF5, zarr) when it stores a 4D array: the only
    (C, Z, Y, X) data this package writes. Anything that is not a TIFF, HDF5
    or zarr file is not an affinity file. Reads metadata only.

    Returns:
        dict (``kind``, ``offsets`` if present, ...) or None.
    """
    try:
        _, document, shape = _metadata_and_shape(spec)
    except (ValueError, OSError, KeyError):
        return None
    if document.get("kind") == KIND or len(shape) == 4:
        return dict(document, kind=KIND)
    return None


def _check_affinity_document(spec, document, shape):
    """Refuse a file that is not affinities, or affinities without offsets (one line, ValueError)."""
    if document.get("kind") != KIND and len(shape) != 4:
        raise ValueError(f"{spec}: not an affinity file (no metadata \"kind\": \"affinities\" "
                         f"and not a 4D (C, Z, Y, X) array)")
    if "offsets" not in document:
        raise ValueError(f"{spec}: an affinity file without offsets; its metadata needs "
                         f"\"offsets\": [[dz, dy, dx], ...], one per channel")


def read_affinities(spec):
    """Read an affinity file.

    Args:
        spec: ``.tif``, ``.h5[:/key]`` or ``.zarr[:/key]`` written by
            ``write_affinities`` (or any file with the same metadata).

    Returns:
        ``(affs, offsets)``: (C, Z, Y, X) float32 in [0, 1] and a list of C
        ``(dz, dy, dx)`` int tuples.

    Raises:
        FileNotFoundError: missing file.
        ValueError: one line naming ``spec``: not an affinity file, an
            affinity file without offsets, offsets that do not match the
            channel count, or bad values.
    """
    kind, document, shape = _metadata_and_shape(spec)
    _check_affinity_document(spec, document, shape)
    offsets = document["offsets"]
    if len(shape) == 4:  # HDF5 / zarr: refuse mismatched offsets before reading the data
        check_offsets(offsets, shape[0], str(spec))
    if kind == "tiff":
        channels = len(offsets) if isinstance(offsets, (list, tuple)) else None
        affs = _read_tiff_affinities(spec, document, shape[0], channels)
    else:
        affs = _read_array(kind, spec)
    return check_affinities(affs, offsets, str(spec))


def _read_tiff_affinities(spec, document, pages, channels):
    """Pages of a TIFF as (C, Z, Y, X), using the recorded shape or the offset count."""
    import tifffile

    _, path, _ = affinity_format(spec)
    stored = tifffile.imread(path)
    stored = stored[None] if stored.ndim == 2 else stored
    shape = document.get("shape")
    if isinstance(shape, list) and len(shape) == 4 and int(np.prod(shape[:2])) == pages:
        return stored.reshape(shape)
    if channels and pages % channels == 0:
        return stored.reshape((channels, pages // channels) + stored.shape[-2:])
    raise ValueError(f"{spec}: {channels} offsets in the metadata but {pages} TIFF pages, which "
                     f"is not a whole number of sections per channel")


def _read_array(kind, spec):
    _, path, key = affinity_format(spec)
    if kind == "hdf5":
        import h5py

        with h5py.File(path, "r") as handle:
            return np.asarray(handle[_hdf5_dataset_name(path, key)][...])
    return np.asarray(_open_zarr_array(path, key)[...])


# --------------------------------------------------------------------------- #
# Lazy access (block-wise readers)
# --------------------------------------------------------------------------- #


def open_affinities(spec):
    """Open a zarr or HDF5 affinity file lazily, checking its metadata only.

    Args:
        spec: ``aff.zarr[:/key]`` or ``aff.h5[:/key]`` (as ``read_affinities``).

    Returns:
        ``(array, offsets, name)``: a zarr array or h5py dataset of shape
        (C, Z, Y, X) supporting NumPy slicing (close an h5py dataset's file
        with ``data.readers.close_stack``), the C ``(dz, dy, dx)`` int tuples,
        and ``"ABSOLUTE_PATH[:/key]"`` naming it in messages and settings.

    Raises:
        FileNotFoundError: missing file.
        ValueError: one line naming ``spec``: a TIFF (not readable block by
            block), not an affinity file, no offsets, offsets that do not
            match the channel count, not a non-empty 4D float array.
    """
    kind, document, shape = _metadata_and_shape(spec)
    if kind == "tiff":
        raise ValueError(f"{spec}: block-wise segmentation reads affinities from a .zarr or "
                         f".h5 file, not a TIFF (rewrite it with write_affinities)")
    _check_affinity_document(spec, document, shape)
    if len(shape) != 4 or 0 in shape:
        raise ValueError(f"{spec}: affinities must be a non-empty (C, Z, Y, X) array; received "
                         f"shape {shape}")
    offsets = check_offsets(document["offsets"], shape[0], str(spec))
    _, path, key = affinity_format(spec)
    if kind == "hdf5":
        import h5py

        name = _hdf5_dataset_name(path, key)
        array = h5py.File(path, "r")[name]
        key = name
    else:
        array = _open_zarr_array(path, key)
    if not np.issubdtype(np.dtype(array.dtype), np.floating):
        if kind == "hdf5":
            array.file.close()
        raise ValueError(f"{spec}: affinities must be float in [0, 1]; received dtype "
                         f"{array.dtype}")
    path = path.absolute()
    return array, offsets, f"{path}:/{key.strip('/')}" if key else str(path)

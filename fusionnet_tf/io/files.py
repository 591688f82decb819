"""Read and write TIFF, HDF5 and zarr arrays: the format code every stage shares.

Writers (each atomic, each behind the output guard ``io.outputs.check_output_path``):

- :func:`write_tiff`: a multi-page TIFF with a JSON description;
- :func:`write_hdf5`: one gzip-compressed dataset, keeping the file's other
  objects (the file is copied to a temporary file first);
- :func:`write_zarr`: a whole zarr store (one array at its root), written to a
  temporary folder and renamed over the old one.

Readers (lazy; the caller slices what it needs):

- :func:`open_hdf5_dataset` / :func:`resolve_hdf5_key`: an HDF5 dataset by key,
  or the file's only dataset;
- :func:`open_zarr`: an array of a zarr store (a level of an OME-Zarr image,
  an array at the root or inside a group).

h5py, tifffile and zarr are imported on first use. Specs (``file.h5:/key``)
are split by ``io.spec.parse_spec``; these functions take the parts.
"""

import json
from pathlib import Path

from fusionnet_tf.io.outputs import (atomic_path, check_hdf5_key, check_hdf5_target,
                                     check_output_path, hdf5_key, staged_folder)

EXTRA_HINT = "install the volumes extra: pip install 'fusionnet-tf[volumes]'"


def import_zarr(what="zarr stores"):
    """Import zarr, or raise ImportError naming ``what`` and the ``[volumes]`` extra."""
    try:
        import zarr
    except ImportError as exc:
        raise ImportError(f"{what} needs zarr ({exc}); {EXTRA_HINT}") from exc
    return zarr


# --------------------------------------------------------------------------- #
# Writing
# --------------------------------------------------------------------------- #


def write_tiff(path, data, metadata):
    """Write ``data`` as a multi-page TIFF, atomically.

    Args:
        path: str or Path of the ``.tif``/``.tiff`` file.
        data: (N, H, W) array (any dtype tifffile stores: uint8, uint32, float32, ...).
        metadata: JSON-able dict, stored as the ImageDescription of page 0.

    Returns:
        Path written.

    Raises:
        IsADirectoryError / FileNotFoundError / PermissionError: see
            ``io.outputs.check_output_path``.
    """
    import tifffile

    path = Path(path)
    check_output_path(path, f"output {path}")
    with atomic_path(path, fsync=True) as tmp:
        # minisblack: without it tifffile stores 3- and 4-slice stacks as planar RGB(A)
        tifffile.imwrite(tmp, data, photometric="minisblack", description=json.dumps(metadata),
                         metadata=None)
    return path


def write_hdf5(path, key, data, metadata, chunks=None):
    """Store ``data`` as dataset ``key`` of ``path``, keeping the file's other objects.

    A dataset already stored under ``key`` is replaced (with its attributes).

    Args:
        path: str or Path of the HDF5 file (created if missing).
        key: dataset key, e.g. ``"prediction"`` or ``"/a/b"``.
        data: (N, H, W) or (C, Z, Y, X) array; stored gzip-compressed.
        metadata: dict stored as dataset attributes (str/int/float/bool as is,
            anything else as a JSON string).
        chunks: the HDF5 chunk shape; None = one slice (``(1,) + data.shape[1:]``).

    Returns:
        Path written.

    Raises:
        ValueError: an HDF5 target that ``io.outputs.check_hdf5_target`` refuses.
    """
    import h5py

    path = Path(path)
    check_output_path(path, f"output {path}")
    check_hdf5_target(path, key)
    name = hdf5_key(key)
    with atomic_path(path, copy_existing=True, fsync=True) as tmp:
        copied = tmp.stat().st_size > 0  # the existing file, as it was when the copy was made
        with h5py.File(tmp, "r+" if copied else "w") as handle:
            check_hdf5_key(handle, path, name)  # the file may have changed since the check
            if name in handle:
                del handle[name]  # HDF5 does not reuse the space; h5repack reclaims it
            dataset = handle.create_dataset(name, data=data, compression="gzip",
                                            chunks=chunks or (1,) + data.shape[1:])
            for attr, value in metadata.items():
                plain = isinstance(value, (str, int, float, bool))
                dataset.attrs[attr] = value if plain else json.dumps(value)
    return path


def write_zarr(path, data, attributes, chunks=None, what=None, earlier_output=None):
    """Write ``data`` as the array at the root of a new zarr store, then rename it over ``path``.

    Args:
        path: str or Path of the store (a folder).
        data: array (its dtype is kept).
        attributes: dict added to the array attributes.
        chunks: chunk shape; None = one slice (``(1,) + data.shape[1:]``).
        what: how the guard's messages name the output (default ``"output PATH"``).
        earlier_output: callable ``Path -> bool``: an existing store it accepts
            is replaced; any other non-empty folder is refused
            (``io.outputs.check_output_path``).

    Returns:
        Path written.
    """
    zarr = import_zarr()
    path = Path(path)
    check_output_path(path, what or f"output {path}", folder_output=True,
                      earlier_output=earlier_output)
    with staged_folder(path) as tmp:
        array = zarr.open_array(str(tmp), mode="w", shape=data.shape, dtype=data.dtype,
                                chunks=chunks or (1,) + data.shape[1:], fill_value=0)
        array[...] = data
        array.attrs.update(attributes)
    return path


# --------------------------------------------------------------------------- #
# Reading
# --------------------------------------------------------------------------- #


def open_hdf5_file(path):
    """Open ``path`` read-only; ValueError naming it if it is no readable HDF5 file."""
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path}: not a readable HDF5 file ({error})") from error


def find_hdf5_dataset(handle, path, key):
    """Full name (``"/volumes/raw"``) of dataset ``key`` in the open file ``handle``.

    ``key`` None: the file's only dataset.

    Raises:
        ValueError: no key for a file with several datasets, or no dataset ``key``
            (the message lists the datasets).
    """
    import h5py

    datasets = []
    handle.visititems(lambda name, obj: datasets.append(name)
                      if isinstance(obj, h5py.Dataset) else None)
    if key is None:
        if len(datasets) != 1:
            raise ValueError(
                f"{path}: give the dataset as {path}:/KEY; the file holds "
                f"{len(datasets)} datasets: {', '.join(datasets) or 'none'}"
            )
        key = datasets[0]
    dataset = handle.get(key)
    if not isinstance(dataset, h5py.Dataset):
        raise ValueError(f"{path}: no dataset with key '/{key.strip('/')}'; available datasets: "
                         f"{', '.join(datasets) or 'none'}")
    return dataset.name


def open_hdf5_dataset(path, key):
    """The h5py dataset ``key`` of ``path`` (its file left open; closed on error)."""
    handle = open_hdf5_file(path)
    try:
        return handle[find_hdf5_dataset(handle, path, key)]
    except BaseException:
        handle.close()
        raise


def resolve_hdf5_key(path, key=None):
    """Name of the dataset that ``path:key`` reads, e.g. ``"/volumes/raw"``.

    Args:
        path: str or Path of an HDF5 file.
        key: dataset key, or None when the file holds exactly one dataset.

    Returns:
        str, the absolute dataset name. The file is closed again.

    Raises:
        ValueError: unreadable file, missing key, or no key for a file with
            several datasets.
    """
    with open_hdf5_file(path) as handle:
        return find_hdf5_dataset(handle, path, key)


def zarr_arrays(group):
    """Paths of all arrays below a zarr group (zarr-python 3, or 2 as a fallback)."""
    if hasattr(group, "members"):
        return [name for name, member in group.members(max_depth=None) if hasattr(member, "shape")]
    names = []
    group.visititems(lambda name, obj: names.append(name) if hasattr(obj, "shape") else None)
    return names


def open_zarr(path, key=None):
    """Open an array of the zarr store ``path`` lazily.

    Args:
        path: Path of the store.
        key: None (the OME-Zarr image's level 0, the array at the root, or the
            group's only array), a level of an OME-Zarr image (``"1"``), an
            array inside a group (``"volumes/raw"``) or an OME-Zarr image
            inside the store (``"labels/cells"``: its level 0).

    Returns:
        ``(array, key)``: a zarr array (OME-Zarr levels as (Z, Y, X)) and the
        key it was found under (None for a root array).

    Raises:
        ValueError: not a zarr store, or a group of several arrays and no key.
        KeyError: no such array (the message lists the arrays).
    """
    from fusionnet_tf.io import ome_zarr

    path = Path(path)
    level = ome_zarr.open_level(path, key)  # an OME-Zarr image: level 0, or the level named
    if level is not None:
        return level
    if key is not None and ome_zarr.is_ome_zarr(path / key):  # e.g. IMAGE/labels/NAME
        array, level_key = ome_zarr.open_level(path / key, None)
        return array, f"{key}/{level_key}"
    zarr = import_zarr()
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for "not a zarr store"
        raise ValueError(f"cannot open {path} as a zarr store or HDF5 file: {exc}") from exc
    if hasattr(node, "shape"):
        if key is not None:
            raise KeyError(f"{path} is a zarr array, not a group; it has no key '/{key}'")
        return node, None
    names = zarr_arrays(node)
    if key is None:
        if len(names) != 1:
            raise ValueError(f"zarr group {path} holds {len(names)} arrays {names}; name one "
                             f"as '{path}:/KEY'")
        key = names[0]
    if key not in names:
        raise KeyError(f"array key '/{key}' not found in zarr group {path}; arrays: "
                       f"{['/' + n for n in names]}")
    return node[key], key

"""Lazy volume input (zarr v2/v3, HDF5) and the resumable zarr output store.

Input specs (split by ``io.spec.parse_spec``, as every command does):
``volume.zarr`` (an array at the store root), ``volume.zarr:/raw`` or
``volume.zarr/raw`` (an array inside a zarr group), ``volume.h5:/raw`` (an HDF5 dataset; the key
may be left out when the file holds a single dataset), ``volume.n5:/raw`` or
``volume.n5/raw`` (an N5 dataset, read with ``tensorstore``; the key may be left
out when the container holds one dataset). Arrays must be ``(Z, Y, X)``; N5
lists its ``dimensions`` x first (the Java/ImgLib2 order), so an N5 dataset of
dimensions ``[X, Y, Z]`` reads as ``(Z, Y, X)``.

Output: a zarr array (format 2 or 3) of float32 membrane probabilities at the
root of the OUTPUT directory, chunked exactly like the blocks, so two blocks
never write the same chunk. Each finished block gets a done-marker file
``OUTPUT/.fusionnet-done/<iz>.<iy>.<ix>.json``, written (atomically) only after
the block's chunk is in the store; the run's settings are kept in the array
attributes under ``"fusionnet_volume"`` so a resumed run can check it continues
the same computation.

zarr and h5py are imported inside the functions; zarr belongs to the
``fusionnet-tf[volumes]`` extra.
"""

import json
from pathlib import Path

import numpy as np

from fusionnet_tf.io import files
from fusionnet_tf.io.files import EXTRA_HINT  # noqa: F401 - named by executors
from fusionnet_tf.io.outputs import zarr_attributes
from fusionnet_tf.io.spec import HDF5_SUFFIXES, N5_ATTRIBUTES, parse_spec

DONE_DIR = ".fusionnet-done"
ATTRS_KEY = "fusionnet_volume"


def import_zarr():
    """Import zarr, or raise ImportError naming the ``[volumes]`` extra."""
    return files.import_zarr("block-wise volume prediction")


def zarr_major_version():
    """Major version of the installed zarr-python (2 or 3)."""
    return int(import_zarr().__version__.split(".")[0])


def existing_spec(spec):
    """``io.spec.parse_spec(spec)``, checked to name an existing file or folder.

    Raises:
        FileNotFoundError: if no such file or folder exists (or ``spec`` is no spec).
    """
    try:
        parsed = parse_spec(spec)
    except ValueError:
        parsed = None
    if parsed is None or not parsed.path.exists():
        raise FileNotFoundError(f"input volume not found: {str(spec)!r} (expected a zarr "
                                f"folder, 'volume.zarr:/key', 'volume.n5:/key' or "
                                f"'volume.h5:/key')")
    return parsed


def is_hdf5(path):
    """True for an existing HDF5 file (by signature, falling back to the suffix)."""
    path = Path(path)
    if not path.is_file():
        return False
    import h5py

    try:
        return bool(h5py.is_hdf5(path))
    except OSError:
        return path.suffix.lower() in HDF5_SUFFIXES


def _hdf5_datasets(group):
    names = []
    group.visititems(lambda name, obj: names.append(name) if hasattr(obj, "shape") else None)
    return names


def _open_hdf5(path, key):
    import h5py

    handle = h5py.File(path, "r")
    names = _hdf5_datasets(handle)
    if key is None:
        if len(names) != 1:
            handle.close()
            raise ValueError(f"HDF5 file {path} holds {len(names)} datasets {names}; name one "
                             f"as '{path}:/KEY'")
        key = names[0]
    if key not in handle or not hasattr(handle[key], "shape"):
        handle.close()
        raise KeyError(f"dataset key '/{key}' not found in HDF5 file {path}; "
                       f"datasets: {['/' + n for n in names]}")
    return handle[key], key


def is_n5(path):
    """True for an N5 container or dataset folder: ``*.n5``, or a folder with
    ``attributes.json`` and no zarr metadata."""
    path = Path(path)
    if not path.is_dir() or _looks_like_zarr(path):
        return False
    return path.suffix.lower() == ".n5" or (path / N5_ATTRIBUTES).is_file()


def _n5_attributes(path):
    try:
        attributes = json.loads((Path(path) / N5_ATTRIBUTES).read_text())
    except (OSError, ValueError):
        return {}
    return attributes if isinstance(attributes, dict) else {}


def _n5_datasets(root):
    """Paths (relative to ``root``) of the N5 datasets below a group (not into datasets)."""
    names, pending = [], [Path(root)]
    while pending:
        folder = pending.pop()
        for child in sorted(p for p in folder.iterdir() if p.is_dir()):
            if "dimensions" in _n5_attributes(child):
                names.append(child.relative_to(root).as_posix())
            elif (child / N5_ATTRIBUTES).is_file() or any(
                    (grandchild / N5_ATTRIBUTES).is_file() for grandchild in child.iterdir()
                    if grandchild.is_dir()):
                pending.append(child)
    return sorted(names)


class N5Array:
    """A read-only (Z, Y, X) NumPy view of an N5 dataset opened with tensorstore.

    Supports ``shape``, ``dtype``, ``ndim``, ``chunks`` and basic NumPy
    indexing (each read fetches only the chunks it touches).
    """

    def __init__(self, store):
        self.store = store.T  # N5 dimensions are x first: present them z first
        self.shape = tuple(int(n) for n in self.store.shape)
        self.dtype = np.dtype(self.store.dtype.numpy_dtype)
        self.ndim = len(self.shape)
        self.chunks = tuple(int(n) for n in self.store.chunk_layout.read_chunk.shape)

    def __getitem__(self, key):
        return np.asarray(self.store[key].read().result())

    def __array__(self, dtype=None, copy=None):
        data = self[...]
        return data if dtype is None else data.astype(dtype)


def _open_n5(path, key):
    """``(N5Array, key)`` of the dataset ``key`` of the N5 container ``path`` (or ``path``
    itself when it is a dataset)."""
    try:
        import tensorstore
    except ImportError as exc:
        raise ImportError(f"N5 input needs tensorstore ({exc}); {EXTRA_HINT}") from exc
    target = path / key if key else path
    if "dimensions" not in _n5_attributes(target):
        names = _n5_datasets(path)
        if key is not None:
            raise KeyError(f"dataset key '/{key}' not found in N5 container {path}; "
                           f"datasets: {['/' + n for n in names]}")
        if len(names) != 1:
            raise ValueError(f"N5 container {path} holds {len(names)} datasets {names}; name "
                             f"one as '{path}:/KEY'")
        key, target = names[0], path / names[0]
    try:
        store = tensorstore.open({"driver": "n5", "kvstore": {
            "driver": "file", "path": str(target.absolute())}}, read=True).result()
    except Exception as exc:  # noqa: BLE001 - tensorstore raises ValueError and others
        raise ValueError(f"cannot open N5 dataset {target}: {exc}") from exc
    return N5Array(store), key


def open_volume(spec):
    """Open a ``(Z, Y, X)`` volume lazily.

    Args:
        spec: str or Path: ``volume.zarr``, ``volume.zarr:/key`` /
            ``volume.zarr/key``, ``volume.n5:/key`` / ``volume.n5/key`` (N5 via tensorstore) or
            ``volume.h5:/key`` (zarr format 2 or 3; the key is optional when
            the file holds one dataset).

    Returns:
        ``(array, name)``: a zarr array or h5py dataset of shape ``(Z, Y, X)``
        supporting NumPy slicing (native dtype), and ``"ABSOLUTE_PATH[:/key]"``
        naming it in messages and in the output's settings. Keep the array's file open only
        as long as needed (h5py datasets hold the file open).

    Raises:
        FileNotFoundError: if the path does not exist.
        KeyError: if the key is not in the file (the message lists the keys).
        ValueError: if the file holds several datasets and no key was given,
            the path is neither zarr nor HDF5, or the array is not 3D or not numeric.

    Example:
    >>> volume, name = open_volume("em.h5:/raw")
    >>> volume.shape
    (3, 300, 500)
    """
    parsed = existing_spec(spec)
    path, key = parsed.path, parsed.key
    if is_hdf5(path):
        array, key = _open_hdf5(path, key)
    elif is_n5(path):
        array, key = _open_n5(path, key)
    elif path.is_dir():
        array, key = files.open_zarr(path, key)
    else:
        raise ValueError(f"input volume {path} is neither an HDF5 file nor a zarr folder")
    path = path.absolute()  # the name is recorded in the output: same from any folder
    name = f"{path}:/{key}" if key else str(path)
    check_volume(array, name)
    return array, name


def check_volume(array, name):
    """Raise ValueError unless ``array`` is a numeric ``(Z, Y, X)`` array."""
    import numpy as np

    shape = tuple(array.shape)
    if len(shape) != 3:
        hint = " (a single 2D image: add a Z axis of size 1)" if len(shape) == 2 else ""
        raise ValueError(f"input volume {name} has shape {shape} ({len(shape)}D); expected a "
                         f"3D (Z, Y, X) volume{hint}")
    if min(shape) < 1:
        raise ValueError(f"input volume {name} is empty: shape {shape}")
    dtype = np.dtype(array.dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
            or dtype == np.bool_):
        raise ValueError(f"input volume {name} has non-numeric dtype {dtype}")


# ---------------------------------------------------------------- output store

def _looks_like_zarr(path):
    return any((path / name).exists() for name in ("zarr.json", ".zarray", ".zgroup"))


def is_volume_output(path):
    """True if ``path`` is a zarr store a block-wise command wrote (it carries ``ATTRS_KEY``).

    Only such a store may be resumed or replaced (``--overwrite``); another
    zarr store or folder of the user's is never touched.
    """
    return ATTRS_KEY in zarr_attributes(path)


def open_output_for_resume(path, shape, chunks, settings, overwrite=False):
    """Reopen an existing output to continue the same run, if there is one.

    Args:
        path: output folder (a zarr store whose root is the array).
        shape: ``(Z, Y, X)`` of the input volume.
        chunks: ``(block_z, block_y, block_x)``; one chunk per block.
        settings: JSON-serialisable dict of everything that determines the
            output values (model, tiling, normalization, ...).
        overwrite: if True, never resume (an existing zarr output will be
            replaced by ``create_output``).

    Returns:
        the zarr array opened for writing, or None if there is nothing to
        resume (no output yet, an empty folder, or ``overwrite``).

    Raises:
        FileExistsError: ``path`` exists but is a file or a non-empty folder
            that is not an earlier output of a block-wise command (never
            replaced, even with ``overwrite``; see ``io.outputs.check_output_path``).
        ValueError: the existing output has another shape, chunking or settings.
    """
    from fusionnet_tf.io.outputs import check_output_path

    zarr = import_zarr()
    path = Path(path)
    check_output_path(path, f"output {path}", folder_output=True, earlier_output=is_volume_output)
    if not path.exists():
        return None
    if overwrite or not _looks_like_zarr(path):
        return None
    try:
        array = zarr.open_array(str(path), mode="r+")
    except Exception as exc:  # a zarr group, or unreadable metadata
        raise FileExistsError(f"output {path} exists and is not a zarr array ({exc}); choose "
                              f"another path or pass --overwrite") from exc
    check_resumable(array, path, shape, chunks, settings)
    return array


def create_output(path, shape, chunks, settings, zarr_format=3):
    """Create (or replace) the float32 output array and clear its done-markers.

    Args:
        path: output folder; its parent must exist.
        shape: ``(Z, Y, X)``.
        chunks: ``(block_z, block_y, block_x)``.
        settings: JSON-serialisable dict stored in the attributes under
            ``"fusionnet_volume"``.
        zarr_format: 2 or 3.

    Returns:
        the new zarr array (fill value 0 until blocks are written).

    Raises:
        ValueError: bad ``zarr_format``.
        FileNotFoundError: the parent folder does not exist.
    """
    zarr = import_zarr()
    path = Path(path)
    if zarr_format not in (2, 3):
        raise ValueError(f"`zarr_format` must be 2 or 3; received zarr_format={zarr_format!r}")
    if not path.absolute().parent.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {path.absolute().parent} "
                                f"(for {path})")
    kwargs = dict(mode="w", shape=tuple(shape), chunks=tuple(chunks), dtype="float32",
                  fill_value=0.0, **array_options(path, zarr_format))
    clear_done_markers(path)
    prepare_levels(path, shape, chunks, "float32")
    array = zarr.open_array(str(path), **kwargs)
    array.attrs[ATTRS_KEY] = settings
    return array


def prepare_levels(path, shape, chunks, dtype):
    """Create the pyramid levels that blocks write with level 0 of an OME-Zarr output.

    Nothing for other outputs (see ``io.ome_zarr.prepare_pyramid``); call
    before the level-0 array is created, so a resumed output always has them.
    """
    from fusionnet_tf.io.ome_zarr import prepare_pyramid

    prepare_pyramid(path, shape, chunks, dtype)


def array_options(path, zarr_format=3):
    """zarr creation options of a new output array at ``path``.

    Level 0 of an OME-Zarr output (``OUTPUT/0`` under a group that
    ``io.ome_zarr.start_output`` made) takes the group's zarr format, chunk
    keys and dimension names; any other output ``zarr_format`` (2 or 3).
    """
    from fusionnet_tf.io.ome_zarr import level_array_options

    options = level_array_options(path) or {"zarr_format": zarr_format}
    if zarr_major_version() < 3:
        if options["zarr_format"] != 2:
            raise ValueError(f"zarr-python {import_zarr().__version__} writes only "
                             f"zarr_format=2; received zarr_format={options['zarr_format']}")
        options = {k: v for k, v in options.items() if k in ("dimension_separator",)}
    return options


def check_resumable(array, path, shape, chunks, settings):
    """Raise ValueError if an existing output cannot continue this run."""
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"output {path} exists with shape {tuple(array.shape)}, but the input "
                         f"volume has shape {tuple(shape)}; choose another output or pass "
                         f"--overwrite")
    if tuple(array.chunks) != tuple(chunks):
        raise ValueError(f"output {path} exists with chunks {tuple(array.chunks)}, but this run "
                         f"uses blocks {tuple(chunks)}; use the same --block/--block-z or "
                         f"pass --overwrite")
    previous = {**SETTINGS_BEFORE_THEY_WERE_RECORDED, **(array.attrs.get(ATTRS_KEY) or {})}
    settings = {**SETTINGS_BEFORE_THEY_WERE_RECORDED, **settings}
    if same_input_name(previous.get("input"), settings.get("input")):
        previous["input"] = settings.get("input")  # one array, named the way of another version
    different = sorted(k for k in set(previous) | set(settings)
                       if k not in IGNORED_ON_RESUME and previous.get(k) != settings.get(k)
                       and not (k in COMPARED_ONLY_WHEN_RECORDED and k not in previous))
    if different:
        detail = "; ".join(f"{k}: {previous.get(k)!r} -> {settings.get(k)!r}"
                           for k in different[:4])
        raise ValueError(f"output {path} was started with other settings ({detail}); resume "
                         f"with the same settings or pass --overwrite")


def same_input_name(first, second):
    """True if two recorded input names (``open_volume``'s) name the same array.

    Older versions named ``store.zarr/raw`` (key given with ``/``) as the
    folder ``ABS/store.zarr/raw``; this one as ``ABS/store.zarr:/raw``, as the
    ``:`` spelling always was. Both split by ``io.spec.parse_spec`` into the
    same container and key.
    """
    if not (isinstance(first, str) and isinstance(second, str)):
        return False
    try:
        one, other = parse_spec(first), parse_spec(second)
    except ValueError:
        return False

    def parts(key):
        return tuple(p for p in (key or "").replace(":", "/").split("/") if p)

    return one.path == other.path and parts(one.key) == parts(other.key)


# stored with the settings, but taken from the store on resume (not compared)
IGNORED_ON_RESUME = ("intensity_lo", "intensity_hi")
# settings that outputs of earlier versions do not record, and the value they ran with
# (input_kind: segment-volume read only membrane maps before it took affinities)
SETTINGS_BEFORE_THEY_WERE_RECORDED = {"precision": "float32", "input_kind": "membrane"}
# settings that outputs of earlier versions do not record, with a value that is not known
# (the engine: plain or xla); such an output resumes with any
COMPARED_ONLY_WHEN_RECORDED = ("engine",)


def recorded_settings(path):
    """The settings dict an existing output array at ``path`` recorded, or None.

    None when there is no zarr array at ``path`` (nothing to resume; the
    checks of ``open_output_for_resume`` report the details).
    """
    path = Path(path)
    if not path.is_dir() or not _looks_like_zarr(path):
        return None
    try:
        array = import_zarr().open_array(str(path), mode="r")
    except Exception:  # noqa: BLE001 - a group or unreadable metadata: open_output_for_resume says
        return None
    return dict(array.attrs.get(ATTRS_KEY) or {})


def done_marker(path, block):
    """Path of ``block``'s done-marker inside the output store ``path``."""
    return Path(path) / DONE_DIR / f"{block.name}.json"


def is_done(path, block):
    """True if ``block`` was completely written by an earlier (or this) run."""
    return done_marker(path, block).is_file()


def write_block(path, block, data):
    """Store ``block``'s prediction in the output array at ``path`` (its own chunk).

    At level 0 of an OME-Zarr output the block's share of the coarser levels
    is written too (``io.ome_zarr.write_block_levels``), before the caller's
    done-marker.

    Args:
        path: the output zarr store.
        block: ``geometry.Block``.
        data: float32 array of ``block.shape`` (or (C,) + ``block.shape`` for
            affinities).
    """
    from fusionnet_tf.io.ome_zarr import write_block_levels

    output = import_zarr().open_array(str(path), mode="r+")
    # (Z, Y, X) membranes or (C, Z, Y, X) affinities: the block spans all leading axes
    output[..., slice(*block.z), slice(*block.y), slice(*block.x)] = data
    # level 0 of an OME-Zarr output: the coarser levels this block derives, from memory
    lead = (0,) * (len(output.shape) - 3)
    write_block_levels(path, lead + (block.z[0], block.y[0], block.x[0]), data)


def mark_done(path, block, info):
    """Write ``block``'s done-marker atomically (call after its data is stored)."""
    from fusionnet_tf.io.outputs import atomic_path

    marker = done_marker(path, block)
    marker.parent.mkdir(parents=True, exist_ok=True)
    record = {"index": list(block.index), "z": list(block.z), "y": list(block.y),
              "x": list(block.x), **info}
    with atomic_path(marker) as tmp:
        tmp.write_text(json.dumps(record))


def clear_done_markers(path):
    """Remove all done-markers of the output store ``path``."""
    folder = Path(path) / DONE_DIR
    if folder.is_dir():
        for marker in folder.iterdir():
            marker.unlink()
        folder.rmdir()


def open_any_volume(spec, what="input volume"):
    """Open a ``(Z, Y, X)`` volume lazily from zarr, HDF5, a TIFF stack or a folder of slices.

    zarr stores and HDF5 datasets go through :func:`open_volume`; TIFF files
    and folders of 2D slices through ``data.readers.open_stack`` (memory-mapped
    or slice by slice where the format allows it).

    Args:
        spec: str or Path: ``volume.zarr[:/key]``, ``volume.h5[:/key]``,
            ``stack.tif`` or a folder of slices.
        what: how messages name it (e.g. ``"LABELS labels.tif"``).

    Returns:
        ``(array, name)``: an array-like of shape ``(Z, Y, X)`` supporting
        NumPy slicing, in its native dtype, and the text naming it.

    Raises:
        FileNotFoundError / KeyError / ValueError: as :func:`open_volume` and
        ``open_stack``, prefixed with ``what``.
    """
    from fusionnet_tf.data.readers import open_stack

    text = str(spec)
    try:
        path = existing_spec(text).path
    except FileNotFoundError:
        raise FileNotFoundError(f"{what}: no such file or folder") from None
    try:
        if is_hdf5(path) or (path.is_dir() and _looks_like_zarr(path)) or is_n5(path):
            return open_volume(text)
        array = open_stack(text, allow_bool=True)
    except (ValueError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        raise ValueError(f"{what}: {message}") from None
    return array, str(Path(text).absolute())

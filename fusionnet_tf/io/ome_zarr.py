"""OME-Zarr (NGFF) in and out: multiscale images, probabilities, affinities and labels.

Reading (any NGFF 0.4 / 0.5 image; only this module parses the metadata):

- :func:`read_multiscale` parses an image group's ``multiscales`` (axes, units,
  per-level paths and scales); :func:`read_ome_zarr` opens one level lazily
  and returns it with its voxel size; :func:`level_spec` turns
  ``image.ome.zarr`` + ``--level N`` into the ``path:/dataset`` spec the
  block-wise readers (``volumes.storage.open_volume``) already understand.
- Leading axes of size 1 (``t``, ``c``) are dropped, so (1, 1, Z, Y, X) data
  read as (Z, Y, X); a 2D (Y, X) image reads as (1, Y, X).

Writing (NGFF 0.4 = zarr format 2 with ``/`` chunk keys, NGFF 0.5 = zarr
format 3 with ``dimension_names``):

- ``image`` (raw EM), ``probability`` (float32 membranes) and ``labels``
  (segment ids) are ``(z, y, x)``; ``affinities`` are ``(c, z, y, x)`` with a
  channel axis. Spatial axes carry the unit (``nanometer`` unless the input
  said otherwise) and a ``scale`` = voxel size x the level's downsampling,
  plus the ``translation`` of a coarse voxel's centre (none for ``nearest``).
- The pyramid: ``mean`` for images, probabilities and affinities (summed
  in float32 where that is exact or the data are float32), ``mode``
  (most frequent id in each window; ties go to the smallest id; vectorised:
  strided views, x-neighbours compared as one wider integer to find the
  windows of one id, a sorting network on the mixed windows) or
  ``nearest`` (the window's first voxel) for labels. Each level-0 block
  writes the coarser levels it derives while it is in memory, as long as
  the block divides by the factors (``pyramid_layout``: one chunk per level
  per block, so blocks never share a chunk); the levels after that (e.g. z
  halving under one-slice blocks: the *tail*, ``plan_tail``) are built in
  chunks of about level 0's size (``coarse_chunks``), each chunk from the
  region of the level before it covers (``tail_tasks``): by
  ``write_ome_zarr`` from the blocks' coarsest levels in memory, in the
  same Dask computation as the blocks (nothing is read back); by
  ``finish_output`` (block-wise commands, resumable) from the last level on
  disk, read once, the coarser tail levels again in memory. Blocks (and
  tail chunks) store whole chunks with ``io.zarr_chunks`` (the bytes
  zarr-python writes, without its ~2 ms of CPU per call); the codecs are
  zarr-python's defaults, as for plain outputs. In-plane axes halve at
  every level; ``z`` halves once the in-plane voxels have grown
  to at least half of it (``pyramid_factors``), so a 30 x 6 x 6 nm volume gets
  (1, 2, 2), (1, 2, 2), (2, 2, 2), ...
- Labels are an NGFF *image-label* (``image-label`` metadata with a colour per
  id up to ``MAX_COLOURS``, 0 transparent): as a container of their own
  (``neurons.ome.zarr``, the label multiscales at its root), or under an
  existing image's ``labels/`` group when the output path is
  ``IMAGE.ome.zarr/labels/NAME`` (NAME is added to ``labels/``' list).
- Metadata are written by ``ome_zarr.writer`` (``write_multiscales_metadata``,
  ``add_metadata``), not by hand, into a copy of the group in memory, then
  stored in one write (``write_metadata``).

Every output carries the attribute ``MARKER`` (``{"command", "kind", ...}``)
at its root; only a folder with the marker of the same command may be resumed
or replaced. The ``multiscales`` metadata are written last, so an interrupted
output is never mistaken for a finished image. Block-wise commands write level
0 into ``OUTPUT/0`` with the machinery of ``volumes.storage`` (done-markers,
resume): ``prepare_pyramid`` creates the derived levels before level 0, and a
block's done-marker follows its level-0 data and its derived levels, so a
killed block is redone whole. :func:`finish_output` then builds the remaining
levels (a done-marker per level once all of them are stored; a killed run
builds them again from the first level without one) and writes the metadata. In-memory writes
(:func:`write_ome_zarr`) go to a temporary folder that is renamed when
complete.
"""

import dataclasses
import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np

from fusionnet_tf.checks import check_choice
from fusionnet_tf.io.ngff import (DEFAULT_NGFF_VERSION, LABEL_METHODS, MIN_PYRAMID_EXTENT,
                                   NGFF_VERSIONS)
from fusionnet_tf.io.outputs import (atomic_path, check_output_folder, check_output_path,
                                   default_permissions,
                                   replace_folder, zarr_attributes)
from fusionnet_tf.io.zarr_chunks import chunk_writer

ZARR_FORMAT = {"0.4": 2, "0.5": 3}
KINDS = ("image", "probability", "labels", "affinities")
DEFAULT_UNIT = "nanometer"
DEFAULT_VOXEL_SIZE = (1.0, 1.0, 1.0)
SUFFIX = ".ome.zarr"
MARKER = "fusionnet_ome_zarr"
PYRAMID_DONE = ".fusionnet-pyramid"
# group attribute: the level layout of a pyramid whose first levels are written with level 0
PYRAMID_LAYOUT = "fusionnet_pyramid"
# automatic pyramids stop once the largest in-plane extent is at most this many voxels
MAX_LEVELS = 12
# image-label colours are listed for ids 1..MAX_COLOURS (viewers colour the rest themselves)
MAX_COLOURS = 4096
EXTRA_HINT = "install the volumes extra: pip install 'fusionnet-tf[volumes]'"


def _import(name):
    """Import an optional module, or raise ImportError naming the ``[volumes]`` extra."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ImportError(f"OME-Zarr needs {name} ({exc}); {EXTRA_HINT}") from exc


# ------------------------------------------------------------------ names and options

def is_ome_zarr_name(spec):
    """True if a spec asks for OME-Zarr by its name: ``*.ome.zarr`` or ``IMAGE/labels/NAME``."""
    return str(spec).lower().rstrip("/").endswith(SUFFIX) or parent_image(spec) is not None


def wants_ome_zarr(spec, output_format=None):
    """True for an OME-Zarr output: ``--format ome-zarr`` or a ``*.ome.zarr`` name."""
    return output_format == "ome-zarr" or (output_format in (None, "auto")
                                           and is_ome_zarr_name(spec))


def check_ngff_version(version):
    """Return ``version`` as ``"0.4"`` / ``"0.5"``; raise ValueError otherwise."""
    return check_choice("--ngff-version", str(version), NGFF_VERSIONS)


def parse_voxel_size(text, option="--voxel-size"):
    """``"30,6,6"`` (or 3 numbers) -> ``(30.0, 6.0, 6.0)``: (z, y, x), all positive.

    Raises:
        ValueError: not exactly 3 finite positive numbers (naming ``option``).
    """
    if text is None:
        return None
    parts = [p for p in str(text).replace("x", ",").split(",")] if isinstance(text, str) \
        else list(text)
    try:
        values = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{option} must be 3 positive numbers z,y,x (e.g. 30,6,6); "
                         f"received {text!r}")
    return values


# ------------------------------------------------------------------ reading

def ngff_attributes(path):
    """The NGFF metadata dict of a group: ``attributes["ome"]`` (0.5) or the attributes (0.4)."""
    attributes = zarr_attributes(path)
    ome = attributes.get("ome")
    return ome if isinstance(ome, dict) else attributes


def is_ome_zarr(path):
    """True if ``path`` is a zarr group with NGFF ``multiscales`` metadata."""
    return Path(path).is_dir() and "multiscales" in ngff_attributes(path)


@dataclasses.dataclass(frozen=True)
class Multiscale:
    """Parsed ``multiscales[0]`` of an NGFF image.

    Attributes:
        path: Path of the image group.
        version: NGFF version string (``"0.4"``, ``"0.5"``, ...).
        axes: axis names, e.g. ``("z", "y", "x")``.
        units: unit per axis (None where not given).
        datasets: per level ``(path, scale, translation)``; scale and
            translation are tuples over all axes (global transforms applied).
    """

    path: Path
    version: str
    axes: tuple
    units: tuple
    datasets: tuple

    def spatial(self):
        """Indices of the spatial axes z, y, x present (in order)."""
        return tuple(i for i, name in enumerate(self.axes) if name in ("z", "y", "x"))

    def voxel_size(self, level):
        """``(z, y, x)`` voxel size of ``level`` (1.0 for a missing z axis)."""
        scale = dict(zip(self.axes, self.datasets[level][1]))
        return tuple(float(scale.get(name, 1.0)) for name in ("z", "y", "x"))

    def unit(self):
        """The unit of the spatial axes (the first given), or None."""
        for index in self.spatial():
            if self.units[index]:
                return self.units[index]
        return None


def _transform(transforms, kind, ndim):
    for transform in transforms or ():
        if transform.get("type") == kind and kind in transform:
            return tuple(float(v) for v in transform[kind])
    return (1.0 if kind == "scale" else 0.0,) * ndim


def read_multiscale(path):
    """Parse the first multiscale image of the OME-Zarr group ``path``.

    Raises:
        FileNotFoundError: no such folder.
        ValueError: not a zarr group with ``multiscales`` metadata, or
            metadata that cannot be parsed (one line naming ``path``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"OME-Zarr image not found: {path}")
    meta = ngff_attributes(path)
    multiscales = meta.get("multiscales")
    if not multiscales:
        raise ValueError(f"{path} is not an OME-Zarr image: its zarr group has no "
                         f"'multiscales' metadata")
    try:
        first = multiscales[0]
        axes = [a if isinstance(a, str) else a["name"] for a in first.get("axes", [])] \
            or ["z", "y", "x"][-len(_level_shape(path, first["datasets"][0]["path"])):]
        units = [None if isinstance(a, str) else a.get("unit") for a in first.get("axes", [])] \
            or [None] * len(axes)
        ndim = len(axes)
        global_scale = _transform(first.get("coordinateTransformations"), "scale", ndim)
        datasets = []
        for dataset in first["datasets"]:
            transforms = dataset.get("coordinateTransformations")
            scale = _transform(transforms, "scale", ndim)
            translation = _transform(transforms, "translation", ndim)
            datasets.append((str(dataset["path"]),
                             tuple(s * g for s, g in zip(scale, global_scale)), translation))
        version = str(first.get("version") or meta.get("version") or "0.5")
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read its OME-Zarr 'multiscales' metadata "
                         f"({type(exc).__name__}: {exc})") from exc
    if not datasets:
        raise ValueError(f"{path}: its OME-Zarr 'multiscales' lists no datasets (levels)")
    return Multiscale(path, version, tuple(axes), tuple(units), tuple(datasets))


def _level_shape(path, dataset):
    for name, key in (("zarr.json", "shape"), (".zarray", "shape")):
        try:
            return json.loads((Path(path) / dataset / name).read_text())[key]
        except (OSError, ValueError, KeyError):
            continue
    return [0, 0, 0]


def check_level(multiscale, level, option="--level"):
    """Return ``level`` as an int if the image has it; ValueError otherwise."""
    count = len(multiscale.datasets)
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) \
            or not 0 <= level < count:
        raise ValueError(f"{option} {level}: {multiscale.path} has {count} resolution level"
                         f"{'s' if count != 1 else ''} (0..{count - 1})")
    return int(level)


class SqueezedArray:
    """A read-only (Z, Y, X) view of an array whose other axes have size 1.

    Supports ``shape``, ``dtype``, ``ndim`` and basic NumPy indexing of the
    three kept axes; reading slices the underlying (lazy) array.
    """

    def __init__(self, array, keep):
        self.array, self.keep = array, tuple(keep)
        full = tuple(array.shape)
        self.shape = (1,) * (3 - len(self.keep)) + tuple(full[i] for i in self.keep)
        self.dtype = np.dtype(array.dtype)
        self.ndim = 3

    def __array__(self, dtype=None, copy=None):
        out = self[...]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key):
        key = () if key is Ellipsis else (key if isinstance(key, tuple) else (key,))
        key = tuple(k for k in key if k is not Ellipsis)
        key = key + (slice(None),) * (3 - len(key))
        missing = 3 - len(self.keep)  # 1 for a 2D (y, x) image: a virtual z axis of size 1
        index = [0] * len(self.array.shape)
        for axis, item in zip(self.keep, key[missing:]):
            index[axis] = item
        data = np.asarray(self.array[tuple(index)])
        return np.expand_dims(data, 0)[key[:1]] if missing else data


@dataclasses.dataclass(frozen=True)
class OmeImage:
    """One level of an OME-Zarr image, opened lazily (see :func:`read_ome_zarr`).

    Attributes:
        array: (Z, Y, X) array-like (a zarr array, or ``SqueezedArray``).
        voxel_size: ``(z, y, x)`` floats in ``unit``.
        unit: unit of the spatial axes (None if the file gives none).
        axes: the stored axis names, e.g. ``("z", "y", "x")``.
        level: the level read; ``dataset``: its path inside the group.
        version: NGFF version of the file.
    """

    array: object
    voxel_size: tuple
    unit: object
    axes: tuple
    level: int
    dataset: str
    version: str


def read_ome_zarr(path, level=0):
    """Open ``level`` of the OME-Zarr image at ``path`` lazily as (Z, Y, X).

    Args:
        path: the image group (``image.ome.zarr`` or ``IMAGE/labels/NAME``).
        level: resolution level, 0 = full resolution. Defaults to 0.

    Returns:
        ``OmeImage``.

    Raises:
        FileNotFoundError, ValueError: no such folder, no ``multiscales``, a
            level that does not exist, or axes other than z, y, x that are
            not of size 1.
    """
    multiscale = read_multiscale(path)
    level = check_level(multiscale, level)
    dataset = multiscale.datasets[level][0]
    zarr = _import("zarr")
    try:
        array = zarr.open_array(str(Path(path) / dataset), mode="r")
    except Exception as exc:  # noqa: BLE001 - zarr raises several types
        raise ValueError(f"{path}: level {level} ('{dataset}') is not a readable zarr array "
                         f"({exc})") from exc
    return OmeImage(squeeze_to_zyx(array, multiscale.axes, f"{path}"),
                    multiscale.voxel_size(level), multiscale.unit(), multiscale.axes, level,
                    dataset, multiscale.version)


def squeeze_to_zyx(array, axes, name):
    """The array as (Z, Y, X): drop non-spatial axes of size 1 (ValueError otherwise)."""
    if tuple(axes) == ("z", "y", "x"):
        return array
    keep = []
    for index, (axis, size) in enumerate(zip(axes, array.shape)):
        if axis in ("z", "y", "x"):
            keep.append(index)
        elif size != 1:
            raise ValueError(f"{name}: axis '{axis}' has {size} entries; only (z, y, x) "
                             f"images (other axes of size 1) are supported")
    if len(keep) not in (2, 3):
        raise ValueError(f"{name}: axes {tuple(axes)}; expected spatial axes (z,) y, x")
    return SqueezedArray(array, keep)


def level_spec(spec, level=None):
    """The ``path:/dataset`` spec of a level of an OME-Zarr input; other specs unchanged.

    Args:
        spec: the input as typed (``image.ome.zarr`` or any other spec).
        level: ``--level`` (None: full resolution).

    Raises:
        ValueError: ``--level`` with an input that is not an OME-Zarr image,
            an OME-Zarr-named input without multiscales, or a missing level.
    """
    path = Path(str(spec))
    if not is_ome_zarr(path):
        if path.is_dir() and (is_ome_zarr_name(path) or level is not None):
            read_multiscale(path)  # raises: no multiscales
        if level is not None:
            raise ValueError(f"--level {level} applies to an OME-Zarr image; INPUT {spec} "
                             f"is not one")
        return str(spec)
    multiscale = read_multiscale(path)
    number = check_level(multiscale, 0 if level is None else level)
    if level is None:  # open_volume reads level 0 of an OME-Zarr group by itself
        return str(spec)
    return f"{path}:/{multiscale.datasets[number][0]}"


def input_metadata(spec):
    """``(voxel_size, unit)`` of an OME-Zarr input spec (``path`` or ``path:/dataset``).

    ``(None, None)`` for anything else (another format, or an array that is
    not a level of a multiscale image).
    """
    from fusionnet_tf.io.spec import parse_spec

    try:
        parsed = parse_spec(spec)
    except ValueError:
        return None, None
    path, dataset = parsed.path, parsed.key
    if dataset is not None and is_ome_zarr(path / dataset):  # IMAGE/labels/NAME
        path, dataset = path / dataset, None
    if not is_ome_zarr(path):
        return None, None
    multiscale = read_multiscale(path)
    paths = [d[0] for d in multiscale.datasets]
    level = paths.index(dataset) if dataset in paths else (0 if dataset is None else None)
    if level is None:
        return None, None
    return multiscale.voxel_size(level), multiscale.unit()


# nanometers per unit of the NGFF spatial units a connectomics volume uses
NANOMETERS_PER_UNIT = {"angstrom": 0.1, "nanometer": 1.0, "micrometer": 1e3, "millimeter": 1e6,
                       "centimeter": 1e7, "meter": 1e9}


def voxel_size_nm(text, specs, option="--voxel-size"):
    """The voxel size ``(z, y, x)`` in nanometers for a command that shows or exports volumes.

    Args:
        text: the ``--voxel-size`` option as given (None: not given).
        specs: the inputs, in order of precedence; the first OME-Zarr one
            (image, level or image-label) gives the size, converted to nm
            from its unit (a unit not in ``NANOMETERS_PER_UNIT``: as is).

    Returns:
        ``(voxel_size, source)``: the floats, and ``option``, the spec they
        came from, or ``"default"`` (``DEFAULT_VOXEL_SIZE``).

    Raises:
        ValueError: a bad ``--voxel-size`` (see ``parse_voxel_size``).
    """
    given = parse_voxel_size(text, option)
    if given is not None:
        return given, option
    for spec in specs:
        if spec is None:
            continue
        size, unit = input_metadata(spec)
        if size is not None:
            factor = NANOMETERS_PER_UNIT.get(str(unit or "nanometer").lower(), 1.0)
            return tuple(v * factor for v in size), str(spec)
    return DEFAULT_VOXEL_SIZE, "default"


def open_level(path, key):
    """The array ``open_volume`` reads from an OME-Zarr group: level 0, or the dataset ``key``.

    Returns:
        ``(array, key)`` with the array as (Z, Y, X), or None when ``path`` is
        no OME-Zarr image (the caller reads it as a plain zarr group).
    """
    if not is_ome_zarr(path):
        return None
    multiscale = read_multiscale(path)
    paths = [d[0] for d in multiscale.datasets]
    if key is None:
        key = paths[0]
    if key not in paths:
        return None
    zarr = _import("zarr")
    array = zarr.open_array(str(Path(path) / key), mode="r")
    return squeeze_to_zyx(array, multiscale.axes, f"{path}:/{key}"), key


# ------------------------------------------------------------------ pyramid math

def axes_for(kind):
    """Axis names of a kind: (c, z, y, x) for affinities, else (z, y, x)."""
    check_choice("kind", kind, KINDS)
    return ("c", "z", "y", "x") if kind == "affinities" else ("z", "y", "x")


def pyramid_factors(shape, voxel_size, levels=None):
    """Per-level downsampling factors ``(z, y, x)`` relative to the level before.

    y and x halve at every level; z halves once its voxel size is less than
    twice the in-plane one at that level; an axis of extent 1 stays.

    Args:
        shape: ``(Z, Y, X)`` of level 0.
        voxel_size: ``(z, y, x)`` of level 0.
        levels: total levels including 0; None = until the largest in-plane
            extent is at most ``MIN_PYRAMID_EXTENT`` (at most ``MAX_LEVELS``).

    Returns:
        list of ``levels - 1`` tuples of ints (1 or 2).
    """
    if levels is not None and (isinstance(levels, bool) or int(levels) != levels
                               or levels < 1):
        raise ValueError(f"--pyramid-levels must be a positive integer; received {levels!r}")
    shape, size = list(shape), list(voxel_size)
    factors = []
    while True:
        if levels is not None and len(factors) + 1 >= levels:
            break
        if levels is None and (max(shape[1:]) <= MIN_PYRAMID_EXTENT
                               or len(factors) + 1 >= MAX_LEVELS):
            break
        finest = min(size[1:])
        step = tuple(1 if n == 1 else (2 if axis > 0 or size[0] < 2 * finest else 1)
                     for axis, n in enumerate(shape))
        factors.append(step)
        shape = [-(-n // f) for n, f in zip(shape, step)]
        size = [s * f for s, f in zip(size, step)]
    return factors


def level_shapes(shape, factors):
    """Shapes of all levels: level 0 ``shape`` then ceil-divided by each factor."""
    shapes = [tuple(shape)]
    for step in factors:
        shapes.append(tuple(-(-n // f) for n, f in zip(shapes[-1], step)))
    return shapes


def _mean_dtype(dtype):
    """The accumulator of a window mean: float32 where its sums of up to 8 items are exact
    (integers of at most 2 bytes) or the data are float32 already; float64 otherwise."""
    dtype = np.dtype(dtype)
    small = (dtype.kind in "biu" and dtype.itemsize <= 2) or dtype == np.float32
    return np.float32 if small else np.float64


def _mean_of_full_windows(block, factors, accumulator):
    """Mean of each window of a block whose shape is a multiple of ``factors``: the sum of
    the windows' strided views (no padding, no copy of the block), then one division."""
    views = [block[tuple(slice(o, None, f) for o, f in zip(offset, factors))]
             for offset in np.ndindex(*factors)]
    total = views[0].astype(accumulator)
    for view in views[1:]:
        total += view
    total /= len(views)
    return total


def downsample_mean(block, factors):
    """Mean of each window (partial edge windows: of the voxels present); dtype kept.

    Integers are rounded to the nearest value. Summed in ``_mean_dtype`` (float32 for
    images, probabilities and affinities), the full windows and each partial edge
    separately.
    """
    import itertools

    block = np.asarray(block)
    accumulator = _mean_dtype(block.dtype)
    result = np.empty(tuple(-(-n // f) for n, f in zip(block.shape, factors)), accumulator)
    for parts in itertools.product(*(_axis_parts(n, f) for n, f in zip(block.shape, factors))):
        source, target, window = zip(*parts)
        result[target] = _mean_of_full_windows(block[source], window, accumulator)
    if np.issubdtype(block.dtype, np.integer):
        return np.rint(result).astype(block.dtype)
    return result.astype(block.dtype, copy=False)


def _axis_parts(extent, factor):
    """``(source slice, target slice, window)`` runs along one axis: full windows, then the
    partial edge window (``extent % factor`` voxels) if any."""
    full = extent // factor
    parts = [(slice(0, full * factor), slice(0, full), factor)] if full else []
    if extent % factor:
        parts.append((slice(full * factor, extent), slice(full, full + 1), extent % factor))
    return parts


def _sorted_columns(columns):
    """Sort ``w`` equal-length 1D arrays element-wise (odd-even transposition network):
    afterwards ``columns[0] <= columns[1] <= ...`` at every position."""
    columns = list(columns)
    for round_ in range(len(columns)):
        for i in range(round_ % 2, len(columns) - 1, 2):
            low = np.minimum(columns[i], columns[i + 1])
            columns[i + 1] = np.maximum(columns[i], columns[i + 1])
            columns[i] = low
    return columns


def _longest_run(columns):
    """Per position, the value of the longest run of sorted ``columns``; the first longest
    run wins, so ties go to the smallest value."""
    best, best_length = columns[0], np.ones(columns[0].shape, np.int32)
    length = best_length
    for before, column in zip(columns, columns[1:]):
        length = np.where(column == before, length + 1, 1)
        longer = length > best_length
        best = np.where(longer, column, best)
        best_length = np.maximum(length, best_length)
    return best


def _mode_of_four(columns):
    """Per position, the mode of 4 sorted columns ``s0 <= s1 <= s2 <= s3`` (ties: the
    smallest): ``s1`` if ``s1 == s2`` (a run of 3+, or the middle pair), else ``s0`` if
    it pairs with ``s1`` or no pair exists, else the pair ``s2 == s3``."""
    s0, s1, s2, s3 = columns
    return np.where(s1 == s2, s1, np.where((s0 == s1) | (s2 != s3), s0, s2))


# optimal sorting network of 4 inputs (5 compare-exchanges)
_NETWORK_4 = ((0, 1), (2, 3), (0, 2), (1, 3), (1, 2))


def _mode_of_columns(columns):
    """Per position, the most frequent of ``w`` equal-length columns (ties: the smallest)."""
    if len(columns) != 4:
        return _longest_run(_sorted_columns(columns))
    columns = list(columns)
    for i, j in _NETWORK_4:
        low = np.minimum(columns[i], columns[j])
        columns[j] = np.maximum(columns[i], columns[j])
        columns[i] = low
    return _mode_of_four(columns)


# a pair of neighbouring voxels along x read as one unsigned integer of twice the width
_PAIR_DTYPES = {1: np.uint16, 2: np.uint32, 4: np.uint64}


def _uniform_windows(block, factors, views):
    """True for each window whose voxels all hold one value.

    ``views`` are the window offsets' strided views (``np.ndindex`` order). With
    x halving on a C-contiguous block of items of at most 4 bytes, two x-neighbours
    are compared as one integer of twice the width: half the comparisons, each
    over contiguous rows.
    """
    pair = _PAIR_DTYPES.get(block.dtype.itemsize)
    if (factors[-1] == 2 and pair is not None and block.flags.c_contiguous
            and block.shape[-1] % 2 == 0 and block.size):
        words = block.view(pair)
        rows = [words[tuple(slice(o, None, f) for o, f in zip(offset, factors[:-1]))]
                for offset in np.ndindex(*factors[:-1])]
        uniform = views[0] == views[1]  # the two halves of the first pair
        for row in rows[1:]:
            uniform &= rows[0] == row
        return uniform
    uniform = views[0] == views[1]
    for view in views[2:]:
        uniform &= views[0] == view
    return uniform


def _window_starts(mixed, out_shape, block, factors):
    """Flat indices (into ``block``) of the first voxel of the windows ``mixed`` (flat
    indices into the output of shape ``out_shape``)."""
    width = out_shape[-1]
    if len(factors) >= 2 and all(f == 1 for f in factors[:-2]):
        rows, x = np.divmod(mixed, width)  # row = all axes but x, in output voxels
        return rows * (factors[-2] * block.shape[-1]) + x * factors[-1]
    coords = np.unravel_index(mixed, out_shape)
    strides = np.cumprod((1,) + block.shape[:0:-1])[::-1]  # elements per step of each axis
    return sum(c * (f * st) for c, f, st in zip(coords, factors, strides))


def _mode_of_full_windows(block, factors):
    """Mode of each window of a block whose shape is a multiple of ``factors``.

    The window's ``w = prod(factors)`` voxels are strided views of the block
    (no copy). Windows holding one id keep it (``_uniform_windows``); for the
    others the ``w`` voxels are gathered (``(w, n)`` columns) and the most
    frequent id wins (``_mode_of_columns``; ties: the smallest id).
    """
    block = np.asarray(block)
    views = [block[tuple(slice(o, None, f) for o, f in zip(offset, factors))]
             for offset in np.ndindex(*factors)]
    result = views[0].copy()
    if len(views) == 1:
        return result
    mixed = np.flatnonzero(~_uniform_windows(block, factors, views))
    if mixed.size:
        flat = block.reshape(-1)
        base = _window_starts(mixed, result.shape, block, factors)
        strides = np.cumprod((1,) + block.shape[:0:-1])[::-1]
        columns = [np.take(flat, base + int(np.dot(offset, strides)))
                   for offset in np.ndindex(*factors)]
        result.reshape(-1)[mixed] = _mode_of_columns(columns)
    return result


def downsample_mode(block, factors):
    """Most frequent id in each window (ties: the smallest id); edge windows as present.

    Vectorised: the full windows and each partial edge (of smaller windows)
    go through ``_mode_of_full_windows`` separately.
    """
    import itertools

    block = np.asarray(block)
    if all(n % f == 0 for n, f in zip(block.shape, factors)):
        return _mode_of_full_windows(block, factors)
    result = np.empty(tuple(-(-n // f) for n, f in zip(block.shape, factors)), block.dtype)
    for parts in itertools.product(*(_axis_parts(n, f) for n, f in zip(block.shape, factors))):
        source, target, window = zip(*parts)
        result[target] = _mode_of_full_windows(block[source], window)
    return result


def downsample_nearest(block, factors):
    """The first voxel of each window."""
    return np.asarray(block)[tuple(slice(None, None, f) for f in factors)]


def downsampler(kind, label_method="mode"):
    """The window function of a kind: mean, or (labels) mode / nearest."""
    if kind != "labels":
        return downsample_mean
    check_choice("--label-downsampling", label_method, LABEL_METHODS)
    return downsample_mode if label_method == "mode" else downsample_nearest


# ------------------------------------------------------------------ writing

def array_options(version, axes):
    """zarr array creation options for a level: format, chunk keys, dimension names."""
    if ZARR_FORMAT[version] == 2:
        return {"zarr_format": 2, "dimension_separator": "/"}
    return {"zarr_format": 3, "dimension_names": tuple(axes)}


def level_array_options(level_path):
    """Options for the array at ``OUTPUT/0`` of an OME-Zarr output being written, or ``{}``.

    ``volumes.storage`` asks this when it creates a block-wise output, so
    level 0 gets the zarr format, chunk keys and dimension names of the group.
    """
    level_path = Path(level_path)
    marker = zarr_attributes(level_path.parent).get(MARKER)
    if not isinstance(marker, dict) or level_path.name != "0":
        return {}
    return array_options(marker["ngff_version"], marker["axes"])


def _format(version):
    formats = _import("ome_zarr.format")
    return formats.FormatV04() if version == "0.4" else formats.FormatV05()


def _open_group(path, version, mode="a"):
    zarr = _import("zarr")
    return zarr.open_group(str(path), mode=mode, zarr_format=ZARR_FORMAT[version])


def _create_level(path, shape, chunks, dtype, version, axes):
    zarr = _import("zarr")
    chunks = tuple(min(c, n) for c, n in zip(chunks, shape))
    return zarr.open_array(str(path), mode="w", shape=tuple(shape), chunks=chunks,
                           dtype=dtype, fill_value=0, **array_options(version, axes))


def _spatial_factors(kind, step):
    return ((1,) if kind == "affinities" else ()) + tuple(step)


def _compute(store_call, scheduler=None, workers=1):
    """Run a dask ``store`` on a scheduler address, else on ``workers`` threads."""
    if scheduler:
        distributed = _import("distributed")
        try:  # a client of this scheduler in this process (e.g. a benchmark's): reuse it
            client = distributed.default_client()
            if client.scheduler.address == scheduler:
                return store_call({"scheduler": client.get})
        except ValueError:
            pass
        with distributed.Client(scheduler) as client:
            return store_call({"scheduler": client.get})
    return store_call({"scheduler": "threads", "num_workers": max(1, int(workers or 1))})


def pyramid_layout(shape, chunks, factors):
    """Which levels derive from level-0 blocks in memory, and their chunks.

    Level k+1 derives from a level-k block when the block's chunk is a
    multiple of the level's factors along every axis (or spans the axis):
    then each level-0 block yields exactly one chunk of each such level, so
    no two blocks write the same chunk. The first level that fails this (e.g.
    z halving under one-slice blocks) and all coarser ones are built later
    from the last derived level (``finish_output``).

    Args:
        shape: level-0 shape, all axes (``(C, Z, Y, X)`` for affinities).
        chunks: level-0 chunk (= block) shape, same axes.
        factors: per level, the factors over all axes (``_spatial_factors``).

    Returns:
        dict (JSON): ``factors``, ``shapes`` and ``chunks`` per level (level 0
        first), ``cascade``: how many levels after 0 are written with the blocks.
    """
    shapes = [tuple(int(n) for n in shape)]
    sizes = [tuple(min(int(c), n) for c, n in zip(chunks, shape))]
    cascade = 0
    for level, step in enumerate(factors, start=1):
        shapes.append(tuple(-(-n // f) for n, f in zip(shapes[-1], step)))
        aligned = all(c % f == 0 or c >= n for c, f, n in zip(sizes[-1], step, shapes[-2]))
        if aligned and cascade == level - 1:
            cascade = level
            sizes.append(tuple(min(-(-c // f), n)
                               for c, f, n in zip(sizes[-1], step, shapes[-1])))
        else:
            sizes.append(tuple(min(int(c), n) for c, n in zip(chunks, shapes[-1])))
    return {"factors": [list(f) for f in factors], "shapes": [list(s) for s in shapes],
            "chunks": [list(c) for c in sizes], "cascade": cascade}


def pyramid_block(shape, chunks, factors, max_chunks=8):
    """The block shape (whole chunks) from which every level derives in memory, if small.

    Along each axis the block grows from the chunk to a multiple of the
    cumulative downsampling factor (or to the whole axis), level by level,
    while it holds at most ``max_chunks`` chunks; e.g. chunks (1, 1024, 1024)
    with factors (1, 2, 2), (1, 2, 2), (2, 2, 2) give blocks (2, 1024, 1024).

    Args:
        shape, chunks: level 0's shape and chunks (all axes).
        factors: per level, the factors over all axes.
    """
    block = [min(int(c), int(n)) for c, n in zip(chunks, shape)]
    cumulative = [1] * len(block)
    for step in factors:
        cumulative = [c * f for c, f in zip(cumulative, step)]
        wanted = [b if b % c == 0 or b >= n else min(int(n), math.lcm(b, c))
                  for b, c, n in zip(block, cumulative, shape)]
        if math.prod(-(-w // min(int(c), int(n))) for w, c, n in zip(wanted, chunks, shape)) \
                > max_chunks:
            break
        block = wanted
    return tuple(block)


def prepare_pyramid(level0, shape, block_shape, dtype):
    """Create the levels that level-0 blocks write, before level 0 itself (no-op elsewhere).

    Call when a block-wise output's level 0 is created at ``OUTPUT/0`` of an
    OME-Zarr output (``start_output``); any other path is left alone.

    Args:
        level0: path of level 0; shape, dtype: its layout.
        block_shape: the blocks written one at a time: level 0's chunks, or
            whole multiples of them (``pyramid_block``).

    Returns:
        the ``pyramid_layout`` dict, or None (not level 0 of an OME-Zarr output).
    """
    level0 = Path(level0)
    marker = zarr_attributes(level0.parent).get(MARKER)
    if level0.name != "0" or not isinstance(marker, dict):
        return None
    plan = OutputPlan.from_marker(marker)
    steps = pyramid_factors(tuple(shape)[-3:], plan.voxel_size, plan.levels)
    layout = pyramid_layout(shape, block_shape,
                            [_spatial_factors(plan.kind, s) for s in steps])
    group = _open_group(level0.parent, plan.ngff_version)
    group.attrs[PYRAMID_LAYOUT] = layout
    for level in range(1, layout["cascade"] + 1):
        _create_level(level0.parent / str(level), layout["shapes"][level],
                      layout["chunks"][level], dtype, plan.ngff_version, axes_for(plan.kind))
    return layout


def write_block_levels(level0, start, data, keep=False):
    """Write the coarser levels of one level-0 block from its data in memory.

    Args:
        level0: path of level 0 (``OUTPUT/0``); any other path: nothing to do.
        start: the block's first voxel, all axes.
        data: the block as written to level 0 (all axes).
        keep: return the block's coarsest level written (level 0's data when
            none is) instead of the number of levels.

    Returns:
        number of levels written (0 without a ``prepare_pyramid`` layout), or
        with ``keep`` the coarsest one's array.
    """
    level0 = Path(level0)
    data = np.asarray(data)
    if level0.name != "0":
        return data if keep else 0
    attributes = zarr_attributes(level0.parent)
    layout, marker = attributes.get(PYRAMID_LAYOUT), attributes.get(MARKER)
    if not isinstance(layout, dict) or not layout.get("cascade"):
        return data if keep else 0
    plan = OutputPlan.from_marker(marker)
    function = downsampler(plan.kind, plan.label_method)
    start = tuple(int(s) for s in start)
    for level in range(1, layout["cascade"] + 1):
        step = layout["factors"][level - 1]
        data = function(data, step)
        start = tuple(s // f for s, f in zip(start, step))
        chunk_writer(level0.parent / str(level)).write(start, data)
    return data if keep else layout["cascade"]


def write_block(level0, start, data, keep=False):
    """Write one block into level 0 and, from memory, into the levels it derives
    (whole chunks by ``io.zarr_chunks``, the same bytes as zarr-python's).

    Returns:
        with ``keep``, the block's coarsest level written (for ``tail_tasks``);
        else None.
    """
    data = np.asarray(data)
    chunk_writer(level0).write(start, data)
    coarsest = write_block_levels(level0, start, data, keep=keep)
    return coarsest if keep else None


def _block_pieces(level0, starts, shapes):
    """Where each block's coarsest written level lands: ``(start, stop)`` per block at
    the level ``PYRAMID_LAYOUT``'s ``cascade`` (level 0 without a layout)."""
    layout = zarr_attributes(Path(level0).parent).get(PYRAMID_LAYOUT)
    steps = layout["factors"][:layout["cascade"]] if isinstance(layout, dict) else []
    regions = []
    for start, shape in zip(starts, shapes):
        stop = tuple(s + n for s, n in zip(start, shape))
        for step in steps:
            start = tuple(s // f for s, f in zip(start, step))
            stop = tuple(-(-e // f) for e, f in zip(stop, step))
        regions.append((start, stop))
    return regions


def store_blocks(data, level0, scheduler=None, workers=1, tail=None, function=None):
    """Write ``data`` into the level-0 array block by block on Dask, each block with the
    coarser levels it derives in memory (``prepare_pyramid``'s block shape; else the
    chunks), and, given a ``tail``, the levels after those from the blocks' coarsest
    levels in memory (``tail_tasks``; nothing is read back), in one Dask computation.

    Args:
        data: NumPy or Dask array of level 0's shape.
        level0: path of the (created) level-0 array.
        tail: ``plan_tail``'s dict whose arrays exist (``create_tail``), or None.
        function: the tail's window function (``downsampler``).
    """
    da = _import("dask.array")
    dask = _import("dask")
    layout = zarr_attributes(Path(level0).parent).get(PYRAMID_LAYOUT)
    blocks = tuple(layout["chunks"][0]) if isinstance(layout, dict) else \
        _import("zarr").open_array(str(level0), mode="r").chunks
    data = data.rechunk(blocks) if hasattr(data, "dask") else da.from_array(data, chunks=blocks)
    starts = [np.cumsum((0,) + axis[:-1]) for axis in data.chunks]
    keep = bool(tail and tail["levels"])
    block_starts = [tuple(int(s[i]) for s, i in zip(starts, index))
                    for index in np.ndindex(*data.numblocks)]
    tasks = [dask.delayed(write_block)(str(level0), start, block, keep)
             for start, block in zip(block_starts, data.to_delayed().ravel())]
    if keep:
        shapes = [tuple(axis[i] for axis, i in zip(data.chunks, index))
                  for index in np.ndindex(*data.numblocks)]
        pieces = [(s, e, task) for (s, e), task in
                  zip(_block_pieces(level0, block_starts, shapes), tasks)]
        tasks = tail_tasks(Path(level0).parent, tail, pieces, function)
    _compute(lambda kw: dask.compute(*tasks, **kw), scheduler, workers)


def _datasets(kind, voxel_size, factors, label_method):
    """The NGFF ``datasets`` list: path, scale and (for window averages) translation."""
    datasets, cumulative = [], (1, 1, 1)
    for level in range(len(factors) + 1):
        if level:
            cumulative = tuple(c * f for c, f in zip(cumulative, factors[level - 1]))
        scale = [v * c for v, c in zip(voxel_size, cumulative)]
        shift = [0.5 * (c - 1) * v for v, c in zip(voxel_size, cumulative)]
        lead = [1.0] if kind == "affinities" else []
        transforms = [{"type": "scale", "scale": lead + scale}]
        if level and (kind != "labels" or label_method == "mode"):
            transforms.append({"type": "translation", "translation": [0.0] * len(lead) + shift})
        datasets.append({"path": str(level), "coordinateTransformations": transforms})
    return datasets


def label_colours(max_id):
    """NGFF image-label ``colors``: id 0 transparent, ids 1..min(max_id, MAX_COLOURS) RGBA.

    The colours are those of ``segmentation.io.label_colours`` (the same
    golden-ratio hash), so every tool of the package shows an id alike.
    """
    ids = np.arange(1, min(int(max_id), MAX_COLOURS) + 1, dtype=np.uint64)
    mixed = ids * np.uint64(0x9E3779B97F4A7C15)
    rgb = [38 + (((mixed >> np.uint64(s)) & np.uint64(0xFF)).astype(np.int64) * 217) // 255
           for s in (16, 32, 48)]
    colours = [{"label-value": 0, "rgba": [0, 0, 0, 0]}]
    colours += [{"label-value": int(i), "rgba": [int(r), int(g), int(b), 255]}
                for i, r, g, b in zip(ids, *rgb)]
    return colours


@dataclasses.dataclass(frozen=True)
class OutputPlan:
    """Everything that decides an OME-Zarr output's layout (recorded in its ``MARKER``).

    Attributes:
        kind: one of ``KINDS``.
        ngff_version: ``"0.4"`` or ``"0.5"``.
        voxel_size: ``(z, y, x)`` of level 0; ``unit``: their unit.
        levels: total pyramid levels (None: automatic).
        label_method: ``"mode"`` or ``"nearest"`` (labels only).
        command: the command writing it (only its own outputs are replaced).
        name: the multiscale's name.
    """

    kind: str
    ngff_version: str = DEFAULT_NGFF_VERSION
    voxel_size: tuple = DEFAULT_VOXEL_SIZE
    unit: str = DEFAULT_UNIT
    levels: object = None
    label_method: str = "mode"
    command: str = "fusionnet"
    name: str = "fusionnet"

    def __post_init__(self):
        axes_for(self.kind)
        check_ngff_version(self.ngff_version)
        object.__setattr__(self, "voxel_size", parse_voxel_size(self.voxel_size))
        downsampler(self.kind, self.label_method)
        if self.levels is not None:
            pyramid_factors((1, 2, 2), (1, 1, 1), self.levels)

    def marker(self):
        """The JSON dict stored under ``MARKER``."""
        return {"command": self.command, "kind": self.kind, "ngff_version": self.ngff_version,
                "axes": list(axes_for(self.kind)), "voxel_size": list(self.voxel_size),
                "unit": self.unit, "levels": self.levels, "label_method": self.label_method,
                "name": self.name}

    @classmethod
    def from_marker(cls, marker):
        """The plan recorded by ``marker()``."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if k == "voxel_size" else v)
                      for k, v in marker.items() if k in fields})


def parent_image(path):
    """``IMAGE`` if ``path`` is ``IMAGE/labels/NAME`` with IMAGE an OME-Zarr image, else None."""
    path = Path(str(path))
    if path.parent.name == "labels" and is_ome_zarr(path.parent.parent):
        return path.parent.parent
    return None


def is_output_of(path, command):
    """True if ``path`` is an OME-Zarr output that ``command`` wrote (resumable/replaceable)."""
    marker = zarr_attributes(path).get(MARKER)
    return isinstance(marker, dict) and marker.get("command") == command


def check_labels_shape(path, shape):
    """Labels going into an image's ``labels/`` group must have its level-0 shape.

    Args:
        path: the labels output (``IMAGE/labels/NAME``, or any other path:
            nothing to check).
        shape: ``(Z, Y, X)`` of the labels (leading axes ignored).

    Returns:
        the image path, or None when ``path`` is not under an image.

    Raises:
        ValueError: one line naming both shapes.
    """
    image = parent_image(path)
    if image is not None:
        base = tuple(read_ome_zarr(image, 0).array.shape)
        if base != tuple(shape)[-3:]:
            raise ValueError(f"OUTPUT {path}: labels of shape {tuple(shape)} do not match the "
                             f"image {image} (level 0 shape {base})")
    return image


def check_output(path, command, option="OUTPUT"):
    """The output guard for an OME-Zarr output (before any work).

    A new path, an empty folder or an earlier output of ``command`` is fine;
    anything else is refused (``io.outputs.check_output_path``). Under an
    image's ``labels/`` group the NAME must be new or an earlier label output.
    """
    path = Path(path)
    if parent_image(path) is not None:
        if not path.parent.exists():  # the image's labels/ group is created with the labels
            check_output_folder(path.parent, f"{option} {path}")
            return
        if not any((path.parent / name).exists() for name in ("zarr.json", ".zgroup")):
            raise FileExistsError(f"{option} {path}: {path.parent} exists and is not a zarr "
                                  f"group")
    check_output_path(path, f"{option} {path}", folder_output=True,
                      earlier_output=lambda p: is_output_of(p, command))


def start_output(path, plan, overwrite=False):
    """Create (or reopen, to resume) an OME-Zarr output for block-wise writing of level 0.

    Args:
        path: the output group (see ``parent_image`` for labels under an image).
        plan: ``OutputPlan``.
        overwrite: start again even if an earlier run of the same plan exists.

    Returns:
        ``Path`` of level 0 (``path / "0"``), where the block-wise command
        writes; the group's ``MARKER`` records the plan.

    Raises:
        ValueError: an earlier output of other settings (resume with the
            same, or pass --overwrite), or labels whose image is another shape.
    """
    path = Path(path)
    check_output(path, plan.command)
    marker = zarr_attributes(path).get(MARKER)
    if path.exists() and isinstance(marker, dict) and not overwrite:
        if marker != plan.marker():
            different = sorted(k for k in plan.marker() if marker.get(k) != plan.marker()[k])
            raise ValueError(f"OUTPUT {path} was started with other OME-Zarr settings ("
                             + "; ".join(f"{k}: {marker.get(k)!r} -> {plan.marker()[k]!r}"
                                         for k in different[:3])
                             + "); resume with the same settings or pass --overwrite")
        return path / "0"
    if path.exists():
        shutil.rmtree(path)
    image = parent_image(path)
    if image is not None:
        labels = _open_group(path.parent, plan.ngff_version)
        del labels  # the labels/ group exists (in the image's zarr format)
    group = _open_group(path, plan.ngff_version, mode="w")
    group.attrs[MARKER] = plan.marker()
    return path / "0"


def finish_output(path, scheduler=None, workers=1):
    """Build the rest of the pyramid of a finished level 0 and write the NGFF metadata.

    Levels the blocks wrote with level 0 (``PYRAMID_LAYOUT``'s ``cascade``)
    and levels already built (done-marker in ``PATH/.fusionnet-pyramid``) are
    kept; from the first level that is neither, every level is built
    (``build_tail``: each chunk from the finer level's region, read once from
    disk, the coarser levels from the chunks in memory); the ``multiscales``
    (and ``image-label``) metadata are written last, once.

    Returns:
        list of the level shapes.
    """
    path = Path(path)
    plan = OutputPlan.from_marker(zarr_attributes(path)[MARKER])
    zarr = _import("zarr")
    base = zarr.open_array(str(path / "0"), mode="r")
    factors = pyramid_factors(tuple(base.shape[-3:]), plan.voxel_size, plan.levels)
    tail = plan_tail(path, base.shape, base.chunks, factors, plan.kind)
    if tail["levels"]:
        create_tail(path, tail, base.dtype, plan)
        source = tail["levels"][0] - 1
        reader = str(path / str(source))
        tasks = tail_tasks(path, tail, [(tuple(0 for _ in base.shape),
                                         tuple(tail["shapes"][0]), reader)],
                           downsampler(plan.kind, plan.label_method))
        _compute(lambda kw: _import("dask").compute(*tasks, **kw), scheduler, workers)
        mark_tail_done(path, tail)
    max_id = _max_label(path, len(factors)) if plan.kind == "labels" else 0
    write_metadata(path, plan, factors, max_id)
    shutil.rmtree(path / PYRAMID_DONE, ignore_errors=True)
    return [tuple(base.shape)] + [tuple(zarr.open_array(str(path / str(level)), mode="r").shape)
                                  for level in range(1, len(factors) + 1)]


def plan_tail(path, shape, chunks, factors, kind):
    """The levels still to build after the blocks: from the first level that the blocks did
    not write (``PYRAMID_LAYOUT``'s ``cascade``) and that has no done-marker, to the last.

    Args:
        path: the output group; shape, chunks: level 0's (all axes).
        factors: ``pyramid_factors`` (spatial).

    Returns:
        dict: ``levels`` (numbers, ascending; empty when all exist), ``shapes``
        (level ``levels[0] - 1`` first, then one per level), ``chunks`` (one per
        level, ``coarse_chunks``) and ``factors`` (one per level, all axes).
    """
    full = [_spatial_factors(kind, f) for f in factors]
    shapes = level_shapes(tuple(int(n) for n in shape), full)
    cascade = _cascaded_levels(path, factors, kind)
    first = cascade + 1
    while first <= len(full) and (Path(path) / PYRAMID_DONE / f"{first}.json").is_file():
        first += 1
    levels = list(range(first, len(full) + 1))
    return {"levels": levels, "shapes": [list(shapes[first - 1])] + [list(shapes[k])
                                                                        for k in levels],
            "chunks": [list(coarse_chunks(shapes[k], chunks)) for k in levels],
            "factors": [list(full[k - 1]) for k in levels]}


def create_tail(path, tail, dtype, plan):
    """Create (empty) the arrays of ``plan_tail``'s levels; drop their done-markers."""
    for level, shape, chunks in zip(tail["levels"], tail["shapes"][1:], tail["chunks"]):
        (Path(path) / PYRAMID_DONE / f"{level}.json").unlink(missing_ok=True)
        _create_level(Path(path) / str(level), shape, chunks, dtype, plan.ngff_version,
                      axes_for(plan.kind))


def mark_tail_done(path, tail):
    """Write the done-marker of every level of ``tail`` (after all of them are stored)."""
    done = Path(path) / PYRAMID_DONE
    if tail["levels"]:
        done.mkdir(exist_ok=True)
    for level, step in zip(tail["levels"], tail["factors"]):
        with atomic_path(done / f"{level}.json") as tmp:
            tmp.write_text(json.dumps({"level": level, "factors": list(step)}))


def _chunk_regions(shape, chunks):
    """``(start, stop)`` of every chunk of an array of ``shape``, C order."""
    counts = [-(-int(n) // int(c)) for n, c in zip(shape, chunks)]
    for index in np.ndindex(*counts):
        start = tuple(i * int(c) for i, c in zip(index, chunks))
        yield start, tuple(min(s + int(c), int(n)) for s, c, n in zip(start, chunks, shape))


def _overlapping(pieces, start, stop):
    """The pieces ``(start, stop, data)`` that overlap the region ``start``..``stop``."""
    return [piece for piece in pieces
            if all(a < e and s < b for a, b, s, e in zip(piece[0], piece[1], start, stop))]


def tail_tasks(path, tail, pieces, function):
    """Dask tasks that write every chunk of ``tail``'s levels, each level from the one
    before held in memory.

    A chunk of level k+1 is its window function over the region of level k it
    covers (``chunk * factors``, clipped), assembled from the ``pieces`` of
    level k that overlap it; the chunks of level k+1 are the pieces of level
    k+2 (passed from task to task, never read back).

    Args:
        path: the output group (the tail's arrays exist: ``create_tail``).
        tail: ``plan_tail``'s dict.
        pieces: the level before the tail as ``(start, stop, data)`` over all
            axes, covering it without overlap: ``data`` a Dask ``Delayed``
            (a block task's coarsest level) or a str, the path of that level's
            array, read over the region a task needs.
        function: the window function (``downsampler``).

    Returns:
        list of ``Delayed``; the last level's yield None (nothing to gather).
    """
    dask = _import("dask")
    for number, (level, step, chunks) in enumerate(zip(tail["levels"], tail["factors"],
                                                        tail["chunks"])):
        last = number == len(tail["levels"]) - 1
        target = str(Path(path) / str(level))
        made = []
        for start, stop in _chunk_regions(tail["shapes"][number + 1], chunks):
            region = (tuple(s * f for s, f in zip(start, step)),
                      tuple(min(e * f, n) for e, f, n in zip(stop, step, tail["shapes"][number])))
            task = dask.delayed(tail_chunk, pure=False)(target, start, step, function, region,
                                                         _overlapping(pieces, *region), not last)
            made.append((start, stop, task))
        pieces = made
    return [task for _, _, task in pieces]


def _region_data(region, sources):
    """The region ``(start, stop)`` of a level from ``(start, stop, data)`` sources: arrays
    in memory (copied into place; one source equal to the region is used as is) or the
    path of the level's array (read with zarr-python)."""
    start, stop = region
    shape = tuple(e - s for s, e in zip(start, stop))
    if len(sources) == 1 and isinstance(sources[0][2], str):
        zarr = _import("zarr")
        array = zarr.open_array(sources[0][2], mode="r")
        return np.asarray(array[tuple(slice(s, e) for s, e in zip(start, stop))])
    if len(sources) == 1 and tuple(sources[0][0]) == tuple(start) \
            and tuple(sources[0][1]) == tuple(stop):
        return np.asarray(sources[0][2])
    out, covered = None, 0
    for first, end, data in sources:
        data = np.asarray(data)
        out = np.empty(shape, data.dtype) if out is None else out
        low = [max(a, s) for a, s in zip(first, start)]
        high = [min(b, e) for b, e in zip(end, stop)]
        out[tuple(slice(lo - s, hi - s) for lo, hi, s in zip(low, high, start))] = \
            data[tuple(slice(lo - a, hi - a) for lo, hi, a in zip(low, high, first))]
        covered += math.prod(hi - lo for lo, hi in zip(low, high))
    if covered != math.prod(shape):
        raise RuntimeError(f"pyramid: pieces cover {covered} of the {math.prod(shape)} voxels "
                           f"of region {start}..{stop}")
    return out


def tail_chunk(target, start, factors, function, region, sources, keep):
    """Write one chunk of a tail level (``tail_tasks``); returns it if ``keep``, else None.

    Args:
        target: path of the level's array; start: the chunk's first voxel.
        factors: the level's factors (all axes); function: the window function.
        region: ``(start, stop)`` of the finer level that the chunk covers.
        sources: ``(start, stop, data)`` of the finer level (see ``_region_data``).
    """
    data = function(_region_data(region, sources), tuple(factors))
    chunk_writer(target).write(start, data)
    return data if keep else None


def coarse_chunks(shape, chunks):
    """Chunks of a level built after the blocks (``finish_output``): level 0's chunks
    clipped to the level, with z doubled while a chunk holds fewer voxels than level 0's.

    E.g. level 0 chunks (1, 1024, 1024) give (16, 256, 256) at a 32 x 256 x 256 level:
    a few chunks of about a megavoxel rather than a file (and a write) per 256 x 256
    slice.

    Args:
        shape: the level's shape; chunks: level 0's chunks (same axes, z third last).
    """
    sizes = [min(int(c), int(n)) for c, n in zip(chunks, shape)]
    wanted = math.prod(int(c) for c in chunks)
    axis = len(sizes) - 3
    while math.prod(sizes) < wanted and sizes[axis] < int(shape[axis]):
        sizes[axis] = min(2 * sizes[axis], int(shape[axis]))
    return tuple(sizes)


def _cascaded_levels(path, factors, kind):
    """How many levels the blocks wrote with level 0 (``prepare_pyramid``'s layout), or 0."""
    layout = zarr_attributes(path).get(PYRAMID_LAYOUT)
    if not isinstance(layout, dict):
        return 0
    if layout.get("factors") != [list(_spatial_factors(kind, f)) for f in factors]:
        return 0
    return int(layout.get("cascade", 0))


def _max_label(path, coarsest):
    """The largest id the colours must cover: ``min(max id, MAX_COLOURS)``.

    Read from the coarsest level first: once a level holds an id of at least
    ``MAX_COLOURS`` the finer ones cannot change the answer. Otherwise from
    the finest level of at most 2**24 voxels (a coarse level may miss small
    segments).
    """
    zarr = _import("zarr")
    coarse = np.asarray(zarr.open_array(str(Path(path) / str(coarsest)), mode="r")[...])
    if coarse.size and int(coarse.max()) >= MAX_COLOURS:
        return MAX_COLOURS
    for level in range(coarsest + 1):
        array = zarr.open_array(str(Path(path) / str(level)), mode="r")
        if level == coarsest or math.prod(array.shape) <= 2 ** 24:
            data = np.asarray(array[...])
            return min(int(data.max()), MAX_COLOURS) if data.size else 0
    return 0


def write_metadata(path, plan, factors, max_id=0):
    """Write the ``multiscales`` (and labels' ``image-label``) metadata with ``ome_zarr.writer``.

    ``ome_zarr.writer`` rewrites the group's attributes at every call (NGFF
    0.4: once per attribute), so it writes into a copy of the group in memory
    (``_staged_group``: its checks and the attributes it makes are unchanged)
    and the result is stored in one write of the group's metadata file. The
    label colours (up to ``MAX_COLOURS`` entries, which the writer passes on
    as they are) take their place in ``image-label`` only then, so the copy
    encodes them once.
    """
    writer = _import("ome_zarr.writer")
    fmt = _format(plan.ngff_version)
    group = _open_group(path, plan.ngff_version)
    staged = _staged_group(group, plan.ngff_version)
    axes = [{"name": "c", "type": "channel"}] if plan.kind == "affinities" else []
    axes += [{"name": name, "type": "space", "unit": plan.unit} for name in ("z", "y", "x")]
    writer.write_multiscales_metadata(staged, _datasets(plan.kind, plan.voxel_size, factors,
                                                        plan.label_method),
                                      fmt=fmt, axes=axes, name=plan.name or group.name)
    attributes = None
    if plan.kind == "labels":
        label = {"colors": [], "version": plan.ngff_version,
                 "source": {"image": "../../"} if parent_image(path) is not None else {}}
        if not label["source"]:
            del label["source"]
        writer.add_metadata(staged, {"image-label": label}, fmt=fmt)
        attributes = staged.attrs.asdict()
        ngff = attributes["ome"] if ZARR_FORMAT[plan.ngff_version] == 3 else attributes
        ngff["image-label"]["colors"] = label_colours(max_id)  # keeps its place (first)
    group.attrs.put(staged.attrs.asdict() if attributes is None else attributes)
    image = parent_image(path) if plan.kind == "labels" else None
    if image is not None:
        labels = _open_group(path.parent, plan.ngff_version)
        names = list(writer.get_metadata(labels).get("labels", []))
        if path.name not in names:
            writer.add_metadata(labels, {"labels": names + [path.name]}, fmt=fmt)


def _staged_group(group, version):
    """A zarr group in memory (``zarr.storage.MemoryStore``, the same zarr format) holding
    a copy of ``group``'s attributes, for ``ome_zarr.writer`` to write into."""
    zarr = _import("zarr")
    staged = zarr.open_group(store=zarr.storage.MemoryStore(), mode="w",
                             zarr_format=ZARR_FORMAT[version])
    staged.attrs.put(json.loads(json.dumps(group.attrs.asdict())))
    return staged


def write_ome_zarr(path, data, plan, chunks=None, scheduler=None, workers=1):
    """Write an in-memory (or Dask) array as a complete OME-Zarr output, atomically.

    Args:
        path: output group: ``x.ome.zarr``, or ``IMAGE.ome.zarr/labels/NAME``
            for labels under an existing image.
        data: (Z, Y, X) array (``(C, Z, Y, X)`` for affinities); for labels
            a non-negative integer array (stored as given, uint64 if signed).
        plan: ``OutputPlan``.
        chunks: chunk shape of level 0 (None: one z slice of up to 1024 x 1024).
        scheduler, workers: where the blocks and the pyramid are computed (``_compute``).

    Returns:
        Path written.
    """
    path = Path(path)
    check_output(path, plan.command)
    data = np.asarray(data) if not hasattr(data, "dask") else data
    expected = 4 if plan.kind == "affinities" else 3
    if data.ndim != expected:
        raise ValueError(f"{plan.kind} for OME-Zarr must be {expected}D "
                         f"({', '.join(axes_for(plan.kind))}); received shape {data.shape}")
    if plan.kind == "labels" and np.dtype(data.dtype).kind == "i":
        data = data.astype(np.uint64)
    if chunks is None:
        chunks = (1,) * (expected - 2) + tuple(min(1024, n) for n in data.shape[-2:])
    image = check_labels_shape(path, data.shape)
    if image is not None:
        _open_group(path.parent, plan.ngff_version)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.absolute().parent))
    try:
        group = _open_group(tmp, plan.ngff_version, mode="w")
        group.attrs[MARKER] = plan.marker()
        steps = pyramid_factors(tuple(data.shape)[-3:], plan.voxel_size, plan.levels)
        # NumPy blocks are views: group chunks so that every level derives from them; Dask
        # chunks stay where they are (grouping them would move them between workers)
        prepare_pyramid(tmp / "0", data.shape, pyramid_block(
            data.shape, chunks, [_spatial_factors(plan.kind, f) for f in steps],
            max_chunks=1 if hasattr(data, "dask") else 8), data.dtype)
        _create_level(tmp / "0", data.shape, chunks, data.dtype, plan.ngff_version,
                      axes_for(plan.kind))
        # the levels the blocks do not write, from the blocks' coarsest levels in memory
        tail = plan_tail(tmp, data.shape, tuple(min(int(c), int(n)) for c, n in
                                                zip(chunks, data.shape)), steps, plan.kind)
        create_tail(tmp, tail, data.dtype, plan)
        store_blocks(data, tmp / "0", scheduler, workers, tail,
                     downsampler(plan.kind, plan.label_method))
        mark_tail_done(tmp, tail)
        if image is not None:  # metadata refer to the final place (labels/ list)
            default_permissions(tmp, directory=True)
            replace_folder(tmp, path)
            finish_output(path, scheduler, workers)
            return path
        finish_output(tmp, scheduler, workers)
        default_permissions(tmp, directory=True)
        replace_folder(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return path


def output_plan_for(args, kind, command, input_spec=None, output=None):
    """An ``OutputPlan`` from the CLI options; the voxel size defaults to the input's.

    Args:
        args: argparse namespace with ``ngff_version``, ``voxel_size``,
            ``pyramid_levels`` and (labels) ``label_downsampling``.
        kind, command: as ``OutputPlan``.
        input_spec: the input, whose OME-Zarr metadata give the default voxel
            size and unit.
    """
    voxel_size = parse_voxel_size(getattr(args, "voxel_size", None))
    unit = DEFAULT_UNIT
    version = check_ngff_version(getattr(args, "ngff_version", DEFAULT_NGFF_VERSION))
    image = parent_image(output or getattr(args, "output", ""))
    if image is not None:  # labels under an image: its version, its voxel size by default
        version = read_multiscale(image).version
        if version not in NGFF_VERSIONS:
            raise ValueError(f"OUTPUT {output}: the image {image} is OME-Zarr {version}; "
                             f"labels can be added to {' or '.join(NGFF_VERSIONS)} images")
        input_spec = image if voxel_size is None else input_spec
    if voxel_size is None and input_spec is not None:
        voxel_size, unit = input_metadata(input_spec)
        unit = unit or DEFAULT_UNIT
    return OutputPlan(kind=kind, ngff_version=version,
        voxel_size=voxel_size or DEFAULT_VOXEL_SIZE, unit=unit,
        levels=getattr(args, "pyramid_levels", None),
        label_method=getattr(args, "label_downsampling", "mode"), command=command,
        name=Path(str(output or getattr(args, "output", None) or "fusionnet")).name.split(".")[0]
        or "fusionnet")


def check_cli_options(args, output, input_spec, kind, command):
    """Validate the OME-Zarr options before any work; return the plan or None.

    None when the output is not OME-Zarr (then OME-only options are refused
    if given).
    """
    if not wants_ome_zarr(output, getattr(args, "output_format", None)):
        for option, given in (("--voxel-size", getattr(args, "voxel_size", None)),
                              ("--pyramid-levels", getattr(args, "pyramid_levels", None))):
            if given is not None:
                raise ValueError(f"{option} applies to an OME-Zarr output (*.ome.zarr or "
                                 f"--format ome-zarr); OUTPUT {output} is not one")
        return None
    return output_plan_for(args, kind, command, input_spec, output)


__all__ = ["read_ome_zarr", "read_multiscale", "write_ome_zarr", "start_output",
           "finish_output", "OutputPlan", "OmeImage", "Multiscale", "parse_voxel_size",
           "pyramid_factors", "downsample_mean", "downsample_mode", "downsample_nearest",
           "level_spec", "is_ome_zarr", "wants_ome_zarr", "NGFF_VERSIONS"]
